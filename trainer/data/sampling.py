"""Patch sampling for training (seed 000): positives at nodules, negatives among candidates.

Positives: centres inside each nodule, jittered by up to ``jitter_frac`` of the radius
(at most ``max_jitter_mm``): 3-D shifts. Rotations (limited angle) and flips are applied
to whole batches on the fly by the training loop. No zoom: size is information.
Negatives: candidate centres (the engine's candidate rules) farther than radius + 3 mm
from every nodule and excluded finding; half of them drawn among dense candidates
(vessels, walls: the hard ones), half at random. Patches are stored as uint8 (1/255
steps of the [0, 1] window) to keep a cohort in memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.candidates import CandidateRules, candidates
from engine.patches import gather
from engine.preprocess import Preprocessed


@dataclass(frozen=True)
class SamplingSpec:
    positives_per_nodule: int = 24
    negatives_per_scan: int = 120
    hard_fraction: float = 0.5
    hard_min_hu: float = -300.0
    jitter_frac: float = 0.35
    max_jitter_mm: float = 3.0
    rules: CandidateRules = CandidateRules()


def _far_from(points_zyx, findings_zyx_r, margin):
    if len(findings_zyx_r) == 0 or len(points_zyx) == 0:
        return np.ones(len(points_zyx), bool)
    d = np.linalg.norm(points_zyx[:, None, :] - findings_zyx_r[None, :, :3], axis=-1)
    return (d > findings_zyx_r[None, :, 3] + margin).all(1)


def sample_scan(pre: Preprocessed, nodules_xyzd: np.ndarray, excluded_xyzd: np.ndarray, spec: SamplingSpec,
                rng: np.random.Generator):
    """-> (patches uint8 (N, 1, 41, 41, 41), labels int8 (N,), locations float32 (N, 3), centres (N, 3))."""
    vol = pre.volume
    shape = np.asarray(vol.shape)

    def to_idx(xyzd):
        if len(xyzd) == 0:
            return np.zeros((0, 4))
        zyx = vol.world_to_voxel(xyzd[:, :3])  # 1 mm grid: voxels = mm
        return np.concatenate([zyx, xyzd[:, 3:4] / 2.0], axis=1)

    nod, exc = to_idx(nodules_xyzd), to_idx(excluded_xyzd)
    pos = []
    for z, y, x, r in nod:
        k = spec.positives_per_nodule
        dirs = rng.normal(size=(k, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        mag = rng.uniform(0, min(spec.jitter_frac * r, spec.max_jitter_mm), size=(k, 1))
        pos.append(np.round(np.array([z, y, x]) + dirs * mag).astype(np.int64))
    pos = np.concatenate(pos) if pos else np.zeros((0, 3), np.int64)
    pos = pos[((pos >= 0) & (pos < shape)).all(1)]
    cand = candidates(vol.hu, pre.mask, spec.rules)
    cand = cand[_far_from(cand, np.concatenate([nod, exc]) if len(exc) else nod, 3.0)]
    n_neg = min(spec.negatives_per_scan, len(cand))
    hard = np.flatnonzero(vol.hu[tuple(cand.T)] >= spec.hard_min_hu) if len(cand) else np.zeros(0, int)
    n_hard = min(int(spec.hard_fraction * n_neg), len(hard))
    pick = np.concatenate([rng.choice(hard, n_hard, replace=False) if n_hard else np.zeros(0, int),
                           rng.choice(len(cand), n_neg - n_hard, replace=False) if n_neg - n_hard > 0
                           else np.zeros(0, int)]).astype(int)
    neg = cand[pick]
    centres = np.concatenate([pos, neg]).astype(np.int64)
    labels = np.r_[np.ones(len(pos), np.int8), np.zeros(len(neg), np.int8)]
    patches = gather(vol.hu, centres)
    patches_u8 = np.rint(patches * 255).astype(np.uint8)
    loc = (centres / np.maximum(shape - 1, 1)).astype(np.float32)
    return patches_u8, labels, loc, centres
