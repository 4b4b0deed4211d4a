"""Fused patch gather: cubic crops (the contract's patch size) at given centres, HU window
-> [0, 1], into a reused buffer.

One numba pass per batch reads the volume once per patch voxel and writes the
normalised float32 straight into the inference input buffer: no intermediate crop,
no separate normalisation pass, no allocation per batch. Voxels outside the volume
take the value of -1000 HU (air), i.e. 0 after normalisation.

`PatchProducer` gathers the next batch in a background thread while the caller runs
inference on the current one (numba releases the GIL: ``nogil=True``).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .contract import HU_WINDOW, PATCH_SIZE
from .errors import ConfigError


@dataclass(frozen=True)
class Normalisation:
    """HU window mapped linearly to [0, 1] and clipped (the model's `InputContract`)."""

    hu_min: float = HU_WINDOW[0]
    hu_max: float = HU_WINDOW[1]
    pad_hu: float = -1000.0

    def __post_init__(self) -> None:
        if not self.hu_max > self.hu_min:
            raise ConfigError(f"HU window must have hu_max > hu_min, got [{self.hu_min}, {self.hu_max}]")


@njit(cache=True, parallel=True, nogil=True)
def _gather(vol, centres, out, lo, inv_range, pad_value, size):
    nz, ny, nx = vol.shape
    half = size // 2
    for n in prange(centres.shape[0]):
        cz, cy, cx = centres[n, 0] - half, centres[n, 1] - half, centres[n, 2] - half
        inside = cz >= 0 and cy >= 0 and cx >= 0 and cz + size <= nz and cy + size <= ny and cx + size <= nx
        for k in range(size):
            z = cz + k
            for j in range(size):
                y = cy + j
                if inside:
                    for i in range(size):
                        v = (vol[z, y, cx + i] - lo) * inv_range
                        out[n, 0, k, j, i] = min(max(v, 0.0), 1.0)
                else:
                    for i in range(size):
                        x = cx + i
                        if 0 <= z < nz and 0 <= y < ny and 0 <= x < nx:
                            v = (vol[z, y, x] - lo) * inv_range
                            out[n, 0, k, j, i] = min(max(v, 0.0), 1.0)
                        else:
                            out[n, 0, k, j, i] = pad_value


def gather(volume_hu: np.ndarray, centres_zyx: np.ndarray, out: np.ndarray | None = None,
           norm: Normalisation = Normalisation(), size: int = PATCH_SIZE) -> np.ndarray:
    """Gather patches centred at integer ``centres_zyx`` (N, 3) of a (z, y, x) HU array.

    Writes into ``out[:N]`` (shape (>=N, 1, size, size, size), float32, C-contiguous)
    when given, else allocates. Returns ``out[:N]``.
    """
    c = np.ascontiguousarray(centres_zyx, dtype=np.int64).reshape(-1, 3)
    if out is None:
        out = np.empty((len(c), 1, size, size, size), dtype=np.float32)
    if out.dtype != np.float32 or out.ndim != 5 or out.shape[0] < len(c) or out.shape[2:] != (size,) * 3:
        raise ConfigError(f"patch buffer must be float32 (>= {len(c)}, 1, {size}, {size}, {size}), "
                          f"got {out.dtype} {out.shape}")
    if not out.flags.c_contiguous:
        raise ConfigError("patch buffer must be C-contiguous")
    lo, hi = norm.hu_min, norm.hu_max
    pad = min(max((norm.pad_hu - lo) / (hi - lo), 0.0), 1.0)
    _gather(np.ascontiguousarray(volume_hu), c, out, float(lo), float(1.0 / (hi - lo)), float(pad), size)
    return out[: len(c)]


class PatchProducer:
    """Iterate (centres, patches) batches; the next batch is gathered while the caller works.

    ``patches`` is a view into one of ``n_buffers`` preallocated buffers and stays valid
    until the iteration after next (the producer never refills a buffer the consumer may
    still hold). ``overlap=False`` gathers in the caller's thread (for measuring the gain).
    """

    def __init__(self, volume_hu: np.ndarray, centres_zyx: np.ndarray, batch_size: int,
                 norm: Normalisation = Normalisation(), overlap: bool = True, n_buffers: int = 3,
                 size: int = PATCH_SIZE):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.hu = np.ascontiguousarray(volume_hu)
        self.centres = np.asarray(centres_zyx, dtype=np.int64).reshape(-1, 3)
        self.batch_size, self.norm, self.overlap, self.size = int(batch_size), norm, overlap, int(size)
        self.buffers = [np.empty((self.batch_size, 1, size, size, size), np.float32) for _ in range(n_buffers)]

    def __len__(self) -> int:
        return -(-len(self.centres) // self.batch_size)

    def _batch(self, i: int):
        c = self.centres[i * self.batch_size:(i + 1) * self.batch_size]
        return c, gather(self.hu, c, self.buffers[i % len(self.buffers)], self.norm, self.size)

    def __iter__(self):
        if not self.overlap:
            for i in range(len(self)):
                yield self._batch(i)
            return
        q: queue.Queue = queue.Queue(maxsize=len(self.buffers) - 2)
        stop = threading.Event()

        def work():
            try:
                for i in range(len(self)):
                    if stop.is_set():
                        return
                    q.put(self._batch(i))
                q.put(None)
            except BaseException as exc:  # hand the error to the consumer, never lose it
                q.put(exc)

        t = threading.Thread(target=work, name="patch-producer", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(timeout=0.05)
