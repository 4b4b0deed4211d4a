"""Stage 2, false-positive reduction: each stage-1 candidate scored on its multi-scale context
patches (`Stage2Scorer`), calibrated, and ranked one per lesion (`rank_candidates`).

The scorer takes a backend (it streams batches through ``infer_many``, several at once on the CPU,
and hands device arrays to a GPU backend without a copy), never a `Detector`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .context import ContextVolume
from .contract import InputContract
from .patches import Normalisation
from .postprocess import lesion_order


@dataclass(frozen=True, eq=False)
class Ranked:
    """The final ranked candidates of a scan on the 1 mm grid: ``centres_zyx`` (n, 3) float64 voxels,
    ``prob`` (n,) float64, ``n_points`` (n,) int64 (grid points merged; 1 for a stage-2 candidate),
    ``diameter_mm`` (n,) float64 (NaN where unknown: the dense CNN's clusters)."""

    centres_zyx: np.ndarray
    prob: np.ndarray
    n_points: np.ndarray
    diameter_mm: np.ndarray

    def __len__(self) -> int:
        return len(self.prob)


@dataclass(frozen=True, eq=False)
class Stage2Scorer:
    """Stage 2's network (``backend``: an opened ``stage2`` graph) under ``contract``; batches of at
    most ``batch_size``."""

    backend: object
    contract: InputContract
    batch_size: int = 64

    def context_volume(self, pre):
        """Stage 2's context patches of a preprocessed scan: on the GPU (`engine.patches_cuda.
        DeviceContextVolume`: the volumes uploaded once, each batch gathered into device memory the
        backend reads without a copy) when the backend takes device arrays, else on the host
        (`engine.context.ContextVolume`). Both give the same patches (tested under numba's CUDA
        simulator)."""
        k = self.contract
        norm = Normalisation(*k.hu_window, pad_hu=k.pad_hu)
        if self.backend.accepts_device_arrays:
            # numba.cuda: imported only when a GPU backend is in use
            from .patches_cuda import DeviceContextVolume

            return DeviceContextVolume(pre.volume.hu, norm, k.patch_size, k.stage2.channels, d_hu_1mm=pre.device_hu)
        return ContextVolume(pre.volume.hu, norm, k.patch_size, k.stage2.channels)

    def __call__(self, pre, centres_zyx) -> np.ndarray:
        """Stage-2 logits (n,) of candidates at ``centres_zyx`` (n, 3) on ``pre``'s 1 mm grid: the mean
        logit over the contract's number of axis flips (`engine.context.flips8`, identity first;
        with ``tta_top``, the flips after the first only for the best ``tta_top`` candidates by the
        first view)."""
        st2 = self.contract.stage2
        c = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
        if not len(c):
            return np.zeros(0, np.float64)
        ctx = self.context_volume(pre)
        flips = max(1, st2.tta_flips)
        top = st2.tta_top if 0 < st2.tta_top < len(c) else len(c)
        if top == len(c):  # every flip for every candidate
            return self._sums(ctx, c, np.arange(len(c)), 0, flips) / flips
        # the first view for all, the other flips for the best ``top`` by it
        out = self._sums(ctx, c, np.arange(len(c)), 0, 1)
        if flips > 1:
            best = np.argsort(-out, kind="stable")[:top]
            out[best] = (out[best] + self._sums(ctx, c, best, 1, flips)[best]) / flips
        return out

    def _sums(self, ctx, c, which, first: int, last: int) -> np.ndarray:
        """Per candidate in ``which``, the sum of the logits over flips ``first``..``last`` - 1 (zero
        elsewhere). Chunks small enough that every stream of the backend gets at least two batches,
        at most the batch size."""
        be = self.backend
        bs = min(self.batch_size, be.max_batch, max(8, -(-len(which) // (2 * be.streams))))
        chunks = [which[i:i + bs] for i in range(0, len(which), bs)]

        def batches():
            for ch in chunks:
                yield from ctx.views(c[ch], first, last)

        sums = np.zeros(len(c), np.float64)
        logits = be.infer_many(batches())
        for ch in chunks:
            for _ in range(first, last):
                sums[ch] += next(logits)
        return sums


def rank_candidates(cand, probs, dedup_factor: float, threshold: float, top_k: int) -> Ranked:
    """Stage-1 candidates (`engine.stage1.Stage1Candidates`) with their calibrated stage-2
    probabilities ``probs`` (n,) -> the best ``top_k`` at or above ``threshold``, one per lesion
    (`lesion_order` with ``dedup_factor``)."""
    probs = np.asarray(probs, np.float64)
    order = [i for i in lesion_order(cand.centres_zyx, cand.radius_mm, probs, dedup_factor)
             if probs[i] >= threshold][:top_k]
    idx = np.asarray(order, np.int64)
    return Ranked(np.asarray(cand.centres_zyx, np.float64).reshape(-1, 3)[idx], probs[idx],
                  np.ones(len(idx), np.int64), 2.0 * np.asarray(cand.radius_mm, np.float64)[idx])
