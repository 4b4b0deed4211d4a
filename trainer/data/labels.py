"""How a candidate is labelled against the findings: shared by the stage-2 data builder
(`trainer.data.stage2`) and the calibration (`trainer.stage2_calibrate`)."""
from __future__ import annotations

import numpy as np


def label_candidates(centres_zyx: np.ndarray, nodules_zyxr: np.ndarray, excluded_zyxr: np.ndarray,
                     margin_mm: float = 3.0) -> np.ndarray:
    """int8 (n,): 1 inside a nodule's radius, 0 farther than radius + margin from every nodule and
    excluded finding, -1 otherwise (1 mm grid: voxels are mm)."""
    lab = np.zeros(len(centres_zyx), np.int8)
    if len(centres_zyx) == 0:
        return lab
    for f, inside_label in ((nodules_zyxr, 1), (excluded_zyxr, -1)):
        if len(f) == 0:
            continue
        d = np.linalg.norm(centres_zyx[:, None, :] - f[None, :, :3], axis=-1)
        near = (d <= f[None, :, 3] + margin_mm).any(1)
        lab[near & (lab == 0)] = -1
        if inside_label == 1:
            lab[(d < f[None, :, 3]).any(1)] = 1
    return lab
