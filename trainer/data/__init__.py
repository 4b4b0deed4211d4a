"""Training data: annotations, phantom cohorts, LUNA16 folders, patch sampling (all through
the engine's own preprocessing, `engine.preprocess`)."""
