"""Scoring the network's grid: which points are scored (`grid_centres`), how the dense graph's tiles
cover them (`dense_tiles`), and the logits at those points, in dense or patch mode, through any
``infer(batch, extra) -> logits`` callable (`score_dense`, `score_patch`). `GridScorer` binds them
to one backend and one contract; it never sees a `Detector`.

At the same centres the dense and the patch mode give the same logits (a test holds them to 1e-4):
the networks use valid convolutions, so the dense graph is the patch classifier evaluated at every
output-grid point of a tile.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .candidates import candidates
from .config import DENSE_TILE_OUT, MODES, CandidateRules
from .contract import InputContract
from .errors import ConfigError
from .patches import Normalisation, PatchProducer

# (batch (N, C, ...) float32, extra input or None) -> logits: a backend's `infer`, or any callable
Infer = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def grid_centres(contract: InputContract, hu_1mm: np.ndarray, mask_1mm: np.ndarray) -> np.ndarray:
    """The points the network scores on a 1 mm lung box: lung voxels on the network's output grid
    (the dense stride and offset, else the contract's rule grid) that pass the contract's candidate
    rules; with a dense graph only the points whose whole patch lies inside the box.
    -> (n, 3) int64 voxel indices (zyx)."""
    k = contract
    rules = k.candidate_rules  # the model's own: the grid points it was trained to score
    stride = k.dense_stride or rules.stride
    offset = k.dense_offset if k.dense_offset is not None else k.half
    rules = CandidateRules(stride=stride, offset=offset % stride, center_min_hu=rules.center_min_hu,
                           box_min_hu=rules.box_min_hu, box=rules.box, reach=rules.reach)
    c = candidates(hu_1mm, mask_1mm, rules)
    if k.dense_stride:  # keep the points that are output-grid points of a complete patch
        n_out = np.asarray(k.dense_output_shape(hu_1mm.shape))
        idx = (c - offset) // stride
        ok = ((c - offset) >= 0).all(1) & (idx < n_out).all(1)
        c = c[ok]
    return c


def dense_tiles(contract: InputContract, centres_zyx, volume_shape, tile_out: int):
    """The dense graph's runs for grid centres ``centres_zyx`` (n, 3) on a lung box of
    ``volume_shape``: for each tile of ``tile_out`` output points per axis that holds centres, in
    order, (indices of its centres, output box o0..o1, input box a0..a1). A tile runs only over
    the bounding box of the output points its centres need, not the whole tile (the lung's edge
    leaves most tiles partly empty; the scores are the same)."""
    s, off, p = contract.dense_stride, contract.dense_offset, contract.patch_size
    n_out = np.asarray(contract.dense_output_shape(np.asarray(volume_shape)))
    idx = (np.asarray(centres_zyx) - off) // s
    if len(idx) and ((idx < 0).any() or (idx >= n_out).any()):
        raise ConfigError(f"centres outside the dense output grid {n_out.tolist()} (see scoring.grid_centres)")
    t = tile_out
    tile_id = idx // t
    for key in np.unique(tile_id, axis=0):
        sel = np.flatnonzero((tile_id == key).all(1))
        o0 = np.maximum(key * t, idx[sel].min(0))
        o1 = np.minimum(np.minimum(key * t + t, n_out), idx[sel].max(0) + 1)
        yield sel, o0, o1, o0 * s, (o1 - 1) * s + p


def score_dense(infer: Infer, contract: InputContract, hu_1mm: np.ndarray, centres,
                tile_out: int = DENSE_TILE_OUT) -> np.ndarray:
    """Logits (n,) float64 at grid ``centres`` (n, 3) of ``hu_1mm`` (int16 HU, 1 mm), the dense graph
    run by ``infer`` on the tiles of `dense_tiles`."""
    k = contract
    s, off = k.dense_stride, k.dense_offset
    shape = np.asarray(hu_1mm.shape)
    idx = (np.asarray(centres) - off) // s
    scores = np.full(len(centres), np.nan)
    for sel, o0, o1, a0, a1 in dense_tiles(k, centres, shape, tile_out):
        tile = k.normalise(hu_1mm[a0[0]:a1[0], a0[1]:a1[1], a0[2]:a1[2]])[None, None]
        extra = None
        if k.uses_location:
            g = np.stack(np.meshgrid(*[np.arange(a, b) * s + off for a, b in zip(o0, o1)], indexing="ij"))
            extra = k.location(g.reshape(3, -1).T, shape).T.reshape(g.shape)[None]
        logits = infer(tile, extra)[0]
        local = idx[sel] - o0
        scores[sel] = logits[local[:, 0], local[:, 1], local[:, 2]]
    return scores


def score_patch(infer: Infer, contract: InputContract, hu_1mm: np.ndarray, centres, batch_size: int) -> np.ndarray:
    """Logits (n,) float64 at ``centres`` (n, 3) of ``hu_1mm``: the contract's cubic patches, gathered
    and normalised in a background thread (`PatchProducer`) while ``infer`` runs the previous batch
    of at most ``batch_size``."""
    k = contract
    out = np.empty(len(centres), np.float64)
    i = 0
    loc_all = k.location(centres, hu_1mm.shape) if k.uses_location else None
    norm = Normalisation(*k.hu_window, pad_hu=k.pad_hu)
    producer = PatchProducer(hu_1mm, centres, batch_size, norm, size=k.patch_size)
    # patch mode can take minutes on a large scan: progress on a terminal (tqdm: not when piped)
    for c, batch in tqdm(producer, desc="patches", unit="batch", disable=None if len(producer) > 20 else True,
                         leave=False):
        extra = loc_all[i:i + len(c)] if loc_all is not None else None
        out[i:i + len(c)] = infer(batch, extra)
        i += len(c)
    return out


@dataclass(frozen=True, eq=False)
class ScoredGrid:
    """The network's grid points of a scan and their logits: ``centres_zyx`` (n, 3) int64 voxels on
    the 1 mm grid, ``logits`` (n,) float64."""

    centres_zyx: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return len(self.logits)


@dataclass(frozen=True, eq=False)
class GridScorer:
    """The dense CNN of one contract through one ``infer`` callable (a backend's `infer`), in
    ``mode`` "dense" (tiles of ``tile_out`` output points) or "patch" (batches of ``batch_size``)."""

    infer: Infer
    contract: InputContract
    mode: str = "dense"
    tile_out: int = DENSE_TILE_OUT
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "dense" and self.contract.dense_stride is None:
            raise ConfigError("dense mode needs a contract with a dense stride and offset")

    @property
    def stride(self) -> int:
        """The grid step of the scored points (voxels of the 1 mm grid)."""
        return self.contract.dense_stride or self.contract.candidate_rules.stride

    def centres(self, pre) -> np.ndarray:
        """`grid_centres` of a preprocessed scan (`engine.preprocess.Preprocessed`)."""
        return grid_centres(self.contract, pre.volume.hu, pre.mask)

    def __call__(self, hu_1mm: np.ndarray, centres) -> np.ndarray:
        """Logits (n,) at ``centres`` (n, 3) of the 1 mm volume ``hu_1mm``."""
        if not len(centres):
            return np.zeros(0)
        if self.mode == "dense":
            return score_dense(self.infer, self.contract, hu_1mm, centres, self.tile_out)
        return score_patch(self.infer, self.contract, hu_1mm, centres, self.batch_size)

    def score_grid(self, pre, timings: dict | None = None) -> ScoredGrid:
        """The grid points of a preprocessed scan and their logits, timed into ``timings``
        ("candidates", "inference")."""
        timings = {} if timings is None else timings
        t = time.perf_counter()
        centres = self.centres(pre)
        timings["candidates"] = time.perf_counter() - t
        t = time.perf_counter()
        logits = np.asarray(self(pre.volume.hu, centres))
        timings["inference"] = time.perf_counter() - t
        return ScoredGrid(centres, logits)
