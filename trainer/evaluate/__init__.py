"""Evaluation and model selection on phantom cohorts: what the training recipes run between rounds.

- `froc`: the LUNA16 scoring (FROC, CPM with bootstrap intervals, sensitivity at top-K);
- `strata`: those figures overall and per stratum (diameter band, kind, location);
- `cohort`: a package's detection on a cached cohort, scored and reported (``accuracy.md``);
- `stage1_recall`, `candidate_rules`: what the candidate generators and rules keep;
- `stage2_select`, `stage2_tuning`: the stage-2 checkpoint and settings, chosen on the tuning cohort;
- `kernels`: the detector under each reconstruction kernel of the phantoms;
- `patch_auc`: patch-level ROC AUC of checkpoints;
- `plots`: the figures of these reports.

Settings are chosen on the tuning cohort; the held-out cohort only reports. Phantoms are a
regression signal, not clinical evidence. Nothing here imports torch but `patch_auc`.
"""
