"""Candidate centres: lung voxels on a sliding-window grid that pass HU rules (seed 000).

The seed's rules ("centre inside the lung, centre above 100 HU, the minimum of the
5x5x5 box around it above 0") read as HU would discard ground-glass and most small
solid nodules. The defaults here were chosen by the measured recall of nodule centres
against the number of candidates on tuning phantoms (the trainer's candidate-rules evaluation): the
grid point must lie in the (dilated) lung mask and its centre voxel must be denser
than aerated lung; the box rule is kept as an option.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .config import CandidateRules  # noqa: F401  (public here too)
from .errors import ConfigError


@njit(cache=True)
def _any_at_least(hu, z, y, x, reach, value):
    """Some voxel within +-``reach`` of (z, y, x) is >= ``value`` (stops at the first)."""
    nz, ny, nx = hu.shape
    for k in range(max(z - reach, 0), min(z + reach + 1, nz)):
        for j in range(max(y - reach, 0), min(y + reach + 1, ny)):
            for i in range(max(x - reach, 0), min(x + reach + 1, nx)):
                if hu[k, j, i] >= value:
                    return True
    return False


@njit(cache=True)
def _scan(hu, mask, stride, off, center_min, use_box, box_min, half, reach):
    nz, ny, nx = hu.shape
    out = np.empty((1024, 3), dtype=np.int64)
    n = 0
    for z in range(off, nz, stride):
        for y in range(off, ny, stride):
            for x in range(off, nx, stride):
                if not mask[z, y, x]:
                    continue
                if hu[z, y, x] < center_min and not _any_at_least(hu, z, y, x, reach, center_min):
                    continue
                if use_box:
                    ok = True
                    for k in range(max(z - half, 0), min(z + half + 1, nz)):
                        for j in range(max(y - half, 0), min(y + half + 1, ny)):
                            for i in range(max(x - half, 0), min(x + half + 1, nx)):
                                if hu[k, j, i] < box_min:
                                    ok = False
                    if not ok:
                        continue
                if n == out.shape[0]:
                    grown = np.empty((out.shape[0] * 2, 3), dtype=np.int64)
                    grown[:n] = out
                    out = grown
                out[n, 0], out[n, 1], out[n, 2] = z, y, x
                n += 1
    return out[:n].copy()


def candidates(hu_1mm: np.ndarray, mask_1mm: np.ndarray, rules: CandidateRules = CandidateRules()) -> np.ndarray:
    """Candidate centres (N, 3) int64 (z, y, x) on the grid ``offset + k * stride``."""
    if hu_1mm.shape != mask_1mm.shape:
        raise ConfigError(f"hu and mask shapes differ: {hu_1mm.shape} vs {mask_1mm.shape}")
    return _scan(np.ascontiguousarray(hu_1mm), np.ascontiguousarray(mask_1mm, dtype=np.bool_), int(rules.stride),
                 int(rules.offset) % int(rules.stride), float(rules.center_min_hu), rules.box_min_hu is not None,
                 float(rules.box_min_hu if rules.box_min_hu is not None else 0.0), rules.box // 2,
                 int(rules.reach))
