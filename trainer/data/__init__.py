"""Training data, all through the engine's own preprocessing (`engine.preprocess`).

- `annotations`: LUNA16-layout CSVs -> `Finding` / `Candidate` (world mm).
- `luna16`: a LUNA16 folder (subset0..9 = folds); `lidc`: LIDC-IDRI reading sessions -> findings.
- `phantoms`: phantom cohorts (in memory by seed, or a `noduleflow synth` folder).
- `sampling`: positive / negative / hard-negative centres, split by scan, balanced batches.
- `augment`: limited-angle rotations and shifts (no zoom).
- `cache`: preprocessed scans as memory-mapped .npy keyed by scan id and spec hash.
- `dataset`: the torch-free patch stream; `torch_dataset`: its torch wrapper.
"""
