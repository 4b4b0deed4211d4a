"""Patch sampling for training (seed 000).

Two paths over the same engine preprocessing:

- `sample_scan` (in-memory phantom cohorts, `trainer.data.phantoms`): positives at nodule
  centres jittered by up to ``jitter_frac`` of the radius, but at least ``min_jitter_mm``
  (the dense detector scores a stride-4 grid: a small nodule is seen only from points up to
  3.5 mm off its centre) and at most ``max_jitter_mm``;
  negatives among candidates farther than radius + 3 mm from every nodule and excluded
  finding, half of them dense (vessels, walls: the hard ones); patches stored as uint8.
- the centre selection below (`positive_centres`, `negative_centres`, used by
  `trainer.data.dataset.PatchStream`): positives are candidate centres inside nodules,
  augmented on the fly by `trainer.data.augment` (shifts, limited-angle rotations, no zoom);
  negatives are candidates outside nodules and excluded findings, subsampled, plus optional
  hard negatives (a previous model's false positives); balanced batches; splits by scan.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noduleflow.engine import ConfigError
from noduleflow.engine.candidates import CandidateRules, candidates
from noduleflow.engine.patches import gather
from noduleflow.engine.preprocess import Preprocessed


@dataclass(frozen=True)
class SamplingSpec:
    positives_per_nodule: int = 24
    negatives_per_scan: int = 120
    hard_fraction: float = 0.5
    hard_min_hu: float = -300.0
    jitter_frac: float = 0.35
    min_jitter_mm: float = 3.5  # a dense stride-4 grid point can be 2 sqrt(3) = 3.46 mm from a nodule centre
    max_jitter_mm: float = 4.0
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
        reach = min(max(spec.jitter_frac * r, spec.min_jitter_mm), spec.max_jitter_mm)
        mag = rng.uniform(0, reach, size=(k, 1))
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


# -- centre selection on a preprocessed scan (the iterable dataset's path) ---------------------

def findings_to_voxels(volume, xyzd: np.ndarray) -> np.ndarray:
    """Findings [x, y, z, diameter] mm (n, 4) -> [z, y, x, radius] on ``volume``'s 1 mm grid (n, 4)."""
    xyzd = np.asarray(xyzd, dtype=np.float64).reshape(-1, 4)
    if len(xyzd) == 0:
        return np.zeros((0, 4))
    zyx = np.asarray(volume.world_to_voxel(xyzd[:, :3])).reshape(-1, 3)
    return np.concatenate([zyx, np.maximum(xyzd[:, 3:4], 0.0) / 2.0], axis=1)


def inside_any(points_zyx: np.ndarray, findings_zyxr: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """bool (n,): point within radius + ``margin`` of some finding (1 mm grid: voxels = mm)."""
    p = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    if len(findings_zyxr) == 0 or len(p) == 0:
        return np.zeros(len(p), bool)
    d = np.linalg.norm(p[:, None, :] - findings_zyxr[None, :, :3], axis=-1)
    return (d <= findings_zyxr[None, :, 3] + margin).any(1)


def positive_centres(cand_zyx: np.ndarray, nodules_zyxr: np.ndarray, shape) -> np.ndarray:
    """Candidate centres inside a nodule; a nodule that holds no candidate (smaller than the
    grid step) contributes its rounded centre. int64 (n, 3), inside ``shape``."""
    cand = np.asarray(cand_zyx, dtype=np.int64).reshape(-1, 3)
    out = [cand[inside_any(cand, nodules_zyxr)]]
    for n in nodules_zyxr:
        if not inside_any(cand, n[None]).any():
            out.append(np.rint(n[None, :3]).astype(np.int64))
    pos = np.concatenate(out) if out else np.zeros((0, 3), np.int64)
    return pos[((pos >= 0) & (pos < np.asarray(shape))).all(1)]


def negative_centres(cand_zyx: np.ndarray, nodules_zyxr: np.ndarray, excluded_zyxr: np.ndarray, n: int | None,
                     rng: np.random.Generator, margin_mm: float = 3.0, hard_zyx: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Negatives: candidates farther than radius + ``margin_mm`` from every nodule and excluded
    finding, subsampled to ``n`` (None: all). ``hard_zyx``: a previous model's false positives
    (voxel indices), filtered the same way and all kept. -> (candidates (k, 3), hard (h, 3)) int64."""
    findings = np.concatenate([nodules_zyxr.reshape(-1, 4), excluded_zyxr.reshape(-1, 4)])
    cand = np.asarray(cand_zyx, dtype=np.int64).reshape(-1, 3)
    cand = cand[~inside_any(cand, findings, margin_mm)]
    if n is not None and len(cand) > n:
        cand = cand[np.sort(rng.choice(len(cand), n, replace=False))]
    hard = np.zeros((0, 3), np.int64) if hard_zyx is None else np.rint(np.asarray(hard_zyx)).astype(np.int64)
    hard = hard.reshape(-1, 3)
    hard = hard[~inside_any(hard, findings, margin_mm)]
    return cand, hard


def split_by_scan(scan_ids, val_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """Random split of scan ids (never patches) into (train, validation); disjoint, deterministic."""
    ids = list(dict.fromkeys(scan_ids))
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids)))
    if val_fraction > 0 and len(ids) > 1:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = {ids[i] for i in order[:n_val]}
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def balanced_batches(labels: np.ndarray, batch_size: int, rng: np.random.Generator, n_batches: int | None = None):
    """Yield index arrays, each half positives and half negatives (shuffled within the batch).
    One epoch (default ``n_batches``) covers every negative once; positives are drawn with
    replacement when fewer (augmentation makes the repeats differ)."""
    labels = np.asarray(labels)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if batch_size < 2:
        raise ConfigError(f"batch_size must be >= 2 for balanced batches, got {batch_size}")
    if len(pos) == 0 or len(neg) == 0:
        raise ConfigError(f"balanced batches need both classes, got {len(pos)} positives, {len(neg)} negatives")
    half = batch_size // 2
    if n_batches is None:
        n_batches = max(1, len(neg) // (batch_size - half))
    neg_order = rng.permutation(neg)
    for b in range(n_batches):
        nb = neg_order[np.arange(b * (batch_size - half), (b + 1) * (batch_size - half)) % len(neg)]
        pb = rng.choice(pos, half, replace=len(pos) < half)
        yield rng.permutation(np.concatenate([pb, nb]))
