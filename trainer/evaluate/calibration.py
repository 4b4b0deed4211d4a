"""Calibration error of probabilities against labels (`expected_calibration_error`): the
figure the accuracy reports and the calibration fit (`trainer.stage2_calibrate`) both give."""
from __future__ import annotations

import numpy as np


def expected_calibration_error(prob: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: the mean over equal-width probability bins of |mean probability - hit rate|, weighted
    by the bin's share of candidates."""
    p = np.asarray(prob, np.float64)
    y = np.asarray(labels, np.float64)
    if not len(p):
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.sum() / len(p) * abs(p[m].mean() - y[m].mean())
    return float(err)
