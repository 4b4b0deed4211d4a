"""Multi-scale context patches for stage 2 (false-positive reduction): around each candidate, the
contract's patch (41^3) at 1 mm (the lesion) and the same number of voxels at 2 mm (82 mm of
surroundings: the vessel it sits on, the wall it touches), stacked as channels.

One function serves training and inference (no train/serve skew). The 2 mm volume is the 1 mm
lung box averaged over 2x2x2 blocks; voxels outside the box read as the contract's padding (air),
as in the 1 mm gather.
"""
from __future__ import annotations

import itertools

import numpy as np

from .contract import PATCH_SIZE
from .errors import ConfigError
from .patches import Normalisation, gather

N_SCALES = 2


def downsample2(hu: np.ndarray) -> np.ndarray:
    """(z, y, x) -> float32 (z // 2, y // 2, x // 2): the mean of each 2x2x2 block."""
    nz, ny, nx = (s // 2 * 2 for s in hu.shape)
    if min(nz, ny, nx) == 0:
        raise ConfigError(f"volume too small to halve: {hu.shape}")
    from .blobs import block_mean2

    return block_mean2(np.ascontiguousarray(hu, dtype=np.float32))


def scale_centres(centres_zyx: np.ndarray, channels: int = N_SCALES) -> list[np.ndarray]:
    """Candidate centres (n, 3) on the 1 mm grid -> per context scale, int64 (n, 3) voxel centres:
    the nearest 1 mm voxel, then (2 scales) the nearest 2 mm block (block k covers 1 mm voxels 2k
    and 2k + 1: its centre is at 2k + 0.5)."""
    c = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
    out = [np.rint(c).astype(np.int64)]
    if channels == 2:
        out.append(np.rint((c - 0.5) / 2.0).astype(np.int64))
    return out


class ContextVolume:
    """The 1 mm lung box and its 2 mm version, prepared once per scan. ``size``: the patch edge
    (the model's contract); ``channels``: 1 (1 mm only) or 2 (1 mm + 2 mm)."""

    def __init__(self, hu_1mm: np.ndarray, norm: Normalisation = Normalisation(), size: int = PATCH_SIZE,
                 channels: int = N_SCALES):
        if channels not in (1, 2):
            raise ConfigError(f"context patches have 1 or 2 scales, got {channels!r}")
        self.hu1 = np.ascontiguousarray(hu_1mm)
        self.hu2 = downsample2(self.hu1) if channels == 2 else None
        self.norm = norm
        self.size = int(size)
        self.channels = int(channels)

    def patches(self, centres_zyx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Centres (n, 3) voxel coordinates (float or int) on the 1 mm grid ->
        float32 (n, channels, size, size, size) in [0, 1]: channel 0 at 1 mm, channel 1 at 2 mm,
        both centred on the candidate (to the nearest voxel of each grid)."""
        c = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
        n, p, ch = len(c), self.size, self.channels
        if out is None:
            out = np.empty((n, ch, p, p, p), np.float32)
        if out.shape[0] < n or out.shape[1:] != (ch, p, p, p) or out.dtype != np.float32:
            raise ConfigError(f"context buffer must be float32 (>= {n}, {ch}, {p}, {p}, {p}), got {out.dtype} "
                              f"{out.shape}")
        buf = np.empty((n, 1, p, p, p), np.float32)
        for k, (vol, idx) in enumerate(zip((self.hu1, self.hu2), scale_centres(c, ch))):
            gather(vol, idx, buf, self.norm, size=p)
            out[:n, k] = buf[:, 0]
        return out[:n]

    def views(self, centres_zyx: np.ndarray, first: int, last: int):
        """Flips ``first``..``last`` - 1 (`flips8`'s order) of the candidates' patches, one batch
        each, gathered once."""
        return itertools.islice(flips8(self.patches(centres_zyx)), first, last)


def flips8(batch: np.ndarray):
    """The 8 flip combinations of the three spatial axes of (N, C, D, H, W), identity first
    (stage 2's test-time augmentation: the mean logit over them)."""
    for f in range(8):
        axes = tuple(2 + a for a in range(3) if f >> a & 1)
        yield np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
