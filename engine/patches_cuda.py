"""The fused patch gather as a numba-cuda kernel: volume resident on the GPU, patches written
straight into the inference input buffer on the device (no host round trip per batch); stage 2's
multi-scale context patches (`DeviceContextVolume`) from the 1 mm lung box and its 2 mm version,
each uploaded once per scan.

Imported only on request. Its logic is tested on the CPU with numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``); on a GPU it has not been benchmarked yet.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .contract import PATCH_SIZE
from .errors import ConfigError
from .patches import Normalisation


@cuda.jit
def _gather_kernel(vol, centres, out, lo, inv_range, pad_value, flip):
    # one thread per output voxel of one patch: grid (patch, z) x (y, x) blocks; ``flip``: bit 0/1/2
    # mirrors the patch along z/y/x (the odd-sized patch is centred, so a mirrored patch reads the
    # voxel at the opposite offset)
    n = cuda.blockIdx.x
    k = cuda.blockIdx.y
    j, i = cuda.threadIdx.y, cuda.threadIdx.x
    size = out.shape[2]
    if n >= centres.shape[0] or k >= size:
        return
    half = size // 2
    nz, ny, nx = vol.shape
    kz = size - 1 - k if flip & 1 else k
    for jj in range(j, size, cuda.blockDim.y):
        jy = size - 1 - jj if flip & 2 else jj
        for ii in range(i, size, cuda.blockDim.x):
            ix = size - 1 - ii if flip & 4 else ii
            z = centres[n, 0] - half + kz
            y = centres[n, 1] - half + jy
            x = centres[n, 2] - half + ix
            if 0 <= z < nz and 0 <= y < ny and 0 <= x < nx:
                v = (vol[z, y, x] - lo) * inv_range
                out[n, 0, k, jj, ii] = min(max(v, 0.0), 1.0)
            else:
                out[n, 0, k, jj, ii] = pad_value


def gather_device(d_volume, d_centres, d_out, norm: Normalisation = Normalisation(), size: int = PATCH_SIZE,
                  flip: int = 0):
    """Launch the gather: ``d_volume`` (z, y, x) and ``d_centres`` (N, 3) int64 and ``d_out``
    (>= N, 1, size, size, size) float32 are device arrays. ``flip`` (0-7): the patches mirrored
    along z (bit 0), y (bit 1), x (bit 2), as `engine.context.flips8` mirrors a host batch (odd
    sizes). Returns ``d_out``."""
    if not 0 <= flip <= 7 or (flip and size % 2 == 0):
        raise ConfigError(f"flip must be in 0..7 (and the size odd to mirror), got {flip} for size {size}")
    n = d_centres.shape[0]
    if n == 0:
        return d_out
    lo, hi = norm.hu_min, norm.hu_max
    pad = min(max((norm.pad_hu - lo) / (hi - lo), 0.0), 1.0)
    threads = (min(32, size), min(8, size))
    _gather_kernel[(n, size), threads](d_volume, d_centres, d_out, np.float32(lo), np.float32(1.0 / (hi - lo)),
                                       np.float32(pad), np.int64(flip))
    return d_out


def gather_to_host(volume_hu: np.ndarray, centres: np.ndarray, norm: Normalisation = Normalisation()) -> np.ndarray:
    """Convenience for tests: copy in, gather on the device, copy out."""
    c = np.ascontiguousarray(centres, dtype=np.int64).reshape(-1, 3)
    d_vol = cuda.to_device(np.ascontiguousarray(volume_hu))
    d_c = cuda.to_device(c)
    d_out = cuda.device_array((len(c), 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
    gather_device(d_vol, d_c, d_out, norm)
    return d_out.copy_to_host()


class DeviceContextVolume:
    """`engine.context.ContextVolume` on the device: the 1 mm lung box and (2 scales) its 2 mm
    block means uploaded once; `patches` gathers every scale of a batch of candidates on the device
    into one (n, channels, size, size, size) float32 device array, the stage-2 network's input
    layout (only the candidates' int64 centres cross the bus). ``d_hu_1mm``: the 1 mm volume when it
    is on the device already (`engine.preprocess_cuda.preprocess_device` leaves it there)."""

    def __init__(self, hu_1mm: np.ndarray, norm: Normalisation = Normalisation(), size: int = PATCH_SIZE,
                 channels: int = 2, d_hu_1mm=None):
        from .context import ContextVolume

        host = ContextVolume(hu_1mm, norm, size, channels)  # the same checks and the same 2 mm volume
        self.norm, self.size, self.channels = norm, host.size, host.channels
        if d_hu_1mm is not None and tuple(d_hu_1mm.shape) != host.hu1.shape:
            raise ConfigError(f"the device volume {tuple(d_hu_1mm.shape)} is not the 1 mm volume {host.hu1.shape}")
        # ``d_hu_1mm``: the 1 mm volume already on the device (`engine.preprocess_cuda`): not uploaded again
        self.d_volumes = [d_hu_1mm if k == 0 and d_hu_1mm is not None else cuda.to_device(v)
                          for k, v in enumerate((host.hu1, host.hu2)[:host.channels])]

    def patches(self, centres_zyx: np.ndarray, d_out=None, flip: int = 0):
        """Centres (n, 3) on the 1 mm grid -> device float32 (n, channels, size, size, size), equal
        to `ContextVolume.patches` (``d_out``: a device buffer of at least n rows to fill; ``flip``:
        the patches mirrored as `engine.context.flips8`'s view ``flip``)."""
        return self._gather(self._centres(centres_zyx), d_out, flip)

    def _centres(self, centres_zyx: np.ndarray) -> list:
        """The candidates' per-scale int64 centres, uploaded (once for all the views of a batch)."""
        from .context import scale_centres

        c = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
        return [cuda.to_device(idx) for idx in scale_centres(c, self.channels)]

    def _gather(self, d_centres: list, d_out, flip: int):
        n, p, ch = d_centres[0].shape[0], self.size, self.channels
        if d_out is None:
            d_out = cuda.device_array((n, ch, p, p, p), dtype=np.float32)
        if d_out.shape[0] < n or tuple(d_out.shape[1:]) != (ch, p, p, p) or d_out.dtype != np.float32:
            raise ConfigError(f"device context buffer must be float32 (>= {n}, {ch}, {p}, {p}, {p}), got "
                              f"{d_out.dtype} {tuple(d_out.shape)}")
        for k, (d_vol, d_idx) in enumerate(zip(self.d_volumes, d_centres)):
            gather_device(d_vol, d_idx, d_out[:, k:k + 1], self.norm, p, flip)
        return d_out[:n]

    def views(self, centres_zyx: np.ndarray, first: int, last: int):
        """`ContextVolume.views` on the device: flips ``first``..``last`` - 1 of the candidates'
        patches, each gathered mirrored into its own device batch (the centres uploaded once)."""
        d_centres = self._centres(centres_zyx)
        for f in range(first, last):
            yield self._gather(d_centres, None, f)
