"""Preprocessing on the GPU: the scan uploaded once, its full-resolution work done there.

`engine.preprocess.preprocess` on the device (`preprocess_device`): the native HU volume
crosses the bus once; the lung mask's full-resolution passes (`DevicePasses`: the coarse grid's
block means, the boundary drawn voxel by voxel, the dilation, the airway cut) and the crop and
resampling to 1 mm (trilinear HU, nearest mask) run as numba-cuda kernels. The mask's topology
(components, airways, holes, closing) runs on the host on the coarse grid, as on the CPU path:
`engine.lungmask.lung_mask` drives both with the same code, so the two paths cannot drift. Only
the coarse block means (1/8 of the voxels or less) come back to the host for it, and the coarse
code goes up. The 1 mm results stay on the device for stage 2's patch gather
(`engine.patches_cuda.DeviceContextVolume` takes them without a second upload) and come back to
the host for stage 1 (numba's blob filter runs on the CPU).

Every kernel is a grid-stride loop over the voxels it writes: on a GPU launched wide (one thread
per voxel, x fastest, so neighbouring threads read neighbouring voxels), under numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``, where each thread is a Python thread) launched narrow.
Under the simulator every kernel is tested against its host counterpart; on a GPU none has been
measured yet. On a GPU the trilinear weights may be fused into FMAs by the compiler, so an int16
result can differ from the host's by 1 HU where a value falls within rounding of .5; the
simulator evaluates the host's float32 operations.
"""
from __future__ import annotations

import math
import time

import numpy as np
from numba import config as _numba_config
from numba import cuda

from .errors import ConfigError
from .resample import axis_table, grid_for, grow_box

SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)


def _launch(n: int) -> tuple[int, int]:
    """(blocks, threads) of a grid-stride kernel over ``n`` items: one thread per item on a GPU
    (at most 65535 x 256, the loop takes the rest), 32 threads under the simulator."""
    if SIMULATOR:
        return 1, 32
    threads = 256
    return max(1, min(-(-int(n) // threads), 65535)), threads


# -- kernels --------------------------------------------------------------------------------------
@cuda.jit
def _block_mean_k(hu, fz, fy, fx, out):
    cz, cy, cx = out.shape
    nz, ny, nx = hu.shape
    for idx in range(cuda.grid(1), cz * cy * cx, cuda.gridsize(1)):
        k = idx // (cy * cx)
        r = idx - k * cy * cx
        j = r // cx
        i = r - j * cx
        z1, y1, x1 = min(k * fz + fz, nz), min(j * fy + fy, ny), min(i * fx + fx, nx)
        s = 0
        for z in range(k * fz, z1):
            for y in range(j * fy, y1):
                for x in range(i * fx, x1):
                    s += hu[z, y, x]
        out[k, j, i] = s / ((z1 - k * fz) * (y1 - j * fy) * (x1 - i * fx))


@cuda.jit(device=True)
def _region(shape, blocks, fz, fy, fx, oz, oy, ox):
    """The fine voxels of ``blocks`` (a coarse grid's shape) placed from block (oz, oy, ox) on, in a
    fine volume of ``shape``: (z0, y0, x0, dz, dy, dx), clipped to the volume."""
    z0, y0, x0 = oz * fz, oy * fy, ox * fx
    return (z0, y0, x0, min((oz + blocks[0]) * fz, shape[0]) - z0, min((oy + blocks[1]) * fy, shape[1]) - y0,
            min((ox + blocks[2]) * fx, shape[2]) - x0)


@cuda.jit
def _blocks_k(hu, code, fz, fy, fx, oz, oy, ox, thr, clear, out):
    # the fine voxels of the coarse blocks of ``code``: with ``clear``, False where the block's code is
    # nonzero (the airway cut); else 0 leaves them as they are, 1 sets them, 2 sets them where hu < thr
    z0, y0, x0, dz, dy, dx = _region(out.shape, code.shape, fz, fy, fx, oz, oy, ox)
    if dz <= 0 or dy <= 0 or dx <= 0:
        return
    for idx in range(cuda.grid(1), dz * dy * dx, cuda.gridsize(1)):
        z = z0 + idx // (dy * dx)
        y = y0 + (idx // dx) % dy
        x = x0 + idx % dx
        c = code[z // fz - oz, y // fy - oy, x // fx - ox]
        if clear:
            if c:
                out[z, y, x] = False
        elif c == 2:
            out[z, y, x] = hu[z, y, x] < thr
        elif c == 1:
            out[z, y, x] = True


@cuda.jit
def _dilate_axis_k(src, dst, r, axis, z0, z1, y0, y1, x0, x1):
    # dst = src dilated by a (2r + 1) window along ``axis`` inside the box [z0:z1, y0:y1, x0:x1]
    # (outside the box counts as background and is not written)
    dz, dy, dx = z1 - z0, y1 - y0, x1 - x0
    for idx in range(cuda.grid(1), dz * dy * dx, cuda.gridsize(1)):
        z = z0 + idx // (dy * dx)
        rr = idx % (dy * dx)
        y = y0 + rr // dx
        x = x0 + rr % dx
        v = False
        if axis == 0:
            for t in range(max(z - r, z0), min(z + r + 1, z1)):
                if src[t, y, x]:
                    v = True
                    break
        elif axis == 1:
            for t in range(max(y - r, y0), min(y + r + 1, y1)):
                if src[z, t, x]:
                    v = True
                    break
        else:
            for t in range(max(x - r, x0), min(x + r + 1, x1)):
                if src[z, y, t]:
                    v = True
                    break
        dst[z, y, x] = v


@cuda.jit
def _zero_k(flat):
    for idx in range(cuda.grid(1), flat.shape[0], cuda.gridsize(1)):
        flat[idx] = 0


def _zeros(shape, dtype):
    """A device array of zeros, set on the device (nothing crosses the bus)."""
    d = cuda.device_array(shape, dtype=dtype)
    n = math.prod(shape)
    if n:
        _zero_k[_launch(n)](d.reshape(n))
    return d


@cuda.jit
def _copy_box_k(src, dst, z0, z1, y0, y1, x0, x1):
    dz, dy, dx = z1 - z0, y1 - y0, x1 - x0
    for idx in range(cuda.grid(1), dz * dy * dx, cuda.gridsize(1)):
        z = z0 + idx // (dy * dx)
        rr = idx % (dy * dx)
        dst[z, y0 + rr // dx, x0 + rr % dx] = src[z, y0 + rr // dx, x0 + rr % dx]


@cuda.jit
def _extent_k(mask, out):
    # out (6,) int64: min z, max z, min y, max y, min x, max x of the True voxels; each thread
    # keeps its own, then one atomic per bound
    nz, ny, nx = mask.shape
    lo_z, hi_z, lo_y, hi_y, lo_x, hi_x = nz, -1, ny, -1, nx, -1
    for idx in range(cuda.grid(1), nz * ny * nx, cuda.gridsize(1)):
        z, y, x = idx // (ny * nx), (idx // nx) % ny, idx % nx
        if mask[z, y, x]:
            lo_z, hi_z = min(lo_z, z), max(hi_z, z)
            lo_y, hi_y = min(lo_y, y), max(hi_y, y)
            lo_x, hi_x = min(lo_x, x), max(hi_x, x)
    if hi_z >= 0:
        cuda.atomic.min(out, 0, lo_z)
        cuda.atomic.max(out, 1, hi_z)
        cuda.atomic.min(out, 2, lo_y)
        cuda.atomic.max(out, 3, hi_y)
        cuda.atomic.min(out, 4, lo_x)
        cuda.atomic.max(out, 5, hi_x)


@cuda.jit
def _trilinear_k(src, oz_, oy_, ox_, out, z0, z1, wz, y0, y1, wy, x0, x1, wx, round_to_int):
    # `engine.resample._trilinear`'s arithmetic per output voxel, reading the crop of ``src`` that
    # starts at (oz_, oy_, ox_): the four input rows blended at x0 and at x1, then along x
    nz, ny, nx = out.shape
    one = np.float32(1.0)
    for idx in range(cuda.grid(1), nz * ny * nx, cuda.gridsize(1)):
        k = idx // (ny * nx)
        j = (idx // nx) % ny
        i = idx % nx
        a = (one - wz[k]) * (one - wy[j])
        b = (one - wz[k]) * wy[j]
        c = wz[k] * (one - wy[j])
        d = wz[k] * wy[j]
        za, zb, ya, yb = oz_ + z0[k], oz_ + z1[k], oy_ + y0[j], oy_ + y1[j]
        xa, xb = ox_ + x0[i], ox_ + x1[i]
        ra = a * src[za, ya, xa] + b * src[za, yb, xa] + c * src[zb, ya, xa] + d * src[zb, yb, xa]
        rb = a * src[za, ya, xb] + b * src[za, yb, xb] + c * src[zb, ya, xb] + d * src[zb, yb, xb]
        v = ra + wx[i] * (rb - ra)
        if round_to_int:
            out[k, j, i] = round(v)
        else:
            out[k, j, i] = v


@cuda.jit
def _nearest_k(src, oz_, oy_, ox_, iz, iy, ix, out):
    nz, ny, nx = out.shape
    for idx in range(cuda.grid(1), nz * ny * nx, cuda.gridsize(1)):
        k = idx // (ny * nx)
        j = (idx // nx) % ny
        i = idx % nx
        out[k, j, i] = src[oz_ + iz[k], oy_ + iy[j], ox_ + ix[i]]


# -- the passes -----------------------------------------------------------------------------------
class DevicePasses:
    """`engine.lungmask.HostPasses` on the GPU for the scan ``d_hu`` (a device array, int16):
    block means computed on the device and brought back (the coarse grid, for the topology on the
    host), the mask built, dilated and cut on the device (`lung_mask` then returns a device array)."""

    def __init__(self, d_hu):
        self.hu = d_hu

    def block_mean(self, factors):
        fz, fy, fx = (int(f) for f in factors)
        if not 1 <= fz * fy * fx <= 65536 or min(fz, fy, fx) < 1:
            raise ConfigError(f"block factors must be >= 1 with at most 65536 voxels per block, got {factors}")
        shape = tuple(-(-n // f) for n, f in zip(self.hu.shape, (fz, fy, fx)))
        d_out = cuda.device_array(shape, dtype=np.float32)
        _block_mean_k[_launch(math.prod(shape))](self.hu, fz, fy, fx, d_out)
        return d_out.copy_to_host()

    def refine(self, code, factors, threshold_hu, origin):
        d_mask = _zeros(self.hu.shape, np.bool_)
        code = np.ascontiguousarray(code, dtype=np.uint8)
        _blocks_k[_launch(code.size * math.prod(factors))](self.hu, cuda.to_device(code), *(int(f) for f in factors),
                                                        *(int(o) for o in origin), float(threshold_hu), False, d_mask)
        return d_mask

    def from_host(self, mask):
        return cuda.to_device(np.ascontiguousarray(mask, dtype=np.bool_))

    def dilate_in_box(self, d_mask, box, radius_zyx):
        """`engine.lungmask._dilate_in_box` on the device: the box grown by the radius, clipped;
        outside it the mask is neither read nor written."""
        lo = [max(int(box[2 * a]) - int(radius_zyx[a]), 0) for a in range(3)]
        hi = [min(int(box[2 * a + 1]) + int(radius_zyx[a]), d_mask.shape[a]) for a in range(3)]
        if any(h <= v for v, h in zip(lo, hi)):
            return d_mask
        bounds = (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
        n = math.prod(h - v for v, h in zip(lo, hi))
        tmp = cuda.device_array(d_mask.shape, dtype=np.bool_)
        cur, other = d_mask, tmp
        for axis, r in enumerate(radius_zyx):
            if int(r) > 0:
                _dilate_axis_k[_launch(n)](cur, other, int(r), axis, *bounds)
                cur, other = other, cur
        if cur is not d_mask:
            _copy_box_k[_launch(n)](cur, d_mask, *bounds)
        return d_mask

    def clear_blocks(self, d_mask, cut, factors, origin):
        cut = np.ascontiguousarray(cut, dtype=np.uint8)
        _blocks_k[_launch(cut.size * math.prod(factors))](self.hu, cuda.to_device(cut), *(int(f) for f in factors),
                                                        *(int(o) for o in origin), 0.0, True, d_mask)
        return d_mask


def extent(d_mask) -> tuple[int, int, int, int, int, int] | None:
    """(z0, z1, y0, y1, x0, x1), the half-open box of a device mask's True voxels, or None."""
    nz, ny, nx = d_mask.shape
    d_out = cuda.to_device(np.array([nz, -1, ny, -1, nx, -1], dtype=np.int64))
    _extent_k[_launch(nz * ny * nx)](d_mask, d_out)
    e = d_out.copy_to_host()
    if e[1] < 0:
        return None
    return int(e[0]), int(e[1]) + 1, int(e[2]), int(e[3]) + 1, int(e[4]), int(e[5]) + 1


def resample_device(d_src, spacing_zyx_mm, bbox, spacing_out, order: int):
    """`engine.resample.resample` of the crop ``bbox`` (z0, z1, y0, y1, x0, x1) of the device
    volume ``d_src`` (native spacing ``spacing_zyx_mm``) to ``spacing_out``: order 1 trilinear
    (int16 in, int16 out, rounded), 0 nearest. -> a device array on the output grid."""
    z0, z1, y0, y1, x0, x1 = (int(v) for v in bbox)
    crop_shape = (z1 - z0, y1 - y0, x1 - x0)
    shape, sp = grid_for(crop_shape, spacing_zyx_mm, spacing_out)
    scales = [s_out / float(s_in) for s_out, s_in in zip(sp, spacing_zyx_mm)]
    out = cuda.device_array(shape, dtype=d_src.dtype)
    blocks = _launch(math.prod(shape))
    if order == 0:
        idx = [np.minimum((np.arange(n_out) * sc + 0.5).astype(np.int64), n_in - 1)
               for n_out, n_in, sc in zip(shape, crop_shape, scales)]
        _nearest_k[blocks](d_src, z0, y0, x0, *(cuda.to_device(i) for i in idx), out)
    elif order == 1:
        if d_src.dtype == np.bool_:
            raise ConfigError("trilinear resampling of a boolean mask: use order=0")
        tables = [cuda.to_device(t) for n_out, n_in, sc in zip(shape, crop_shape, scales)
                  for t in axis_table(n_out, n_in, sc)]
        _trilinear_k[blocks](d_src, z0, y0, x0, out, *tables, bool(np.issubdtype(d_src.dtype, np.integer)))
    else:
        raise ConfigError(f"order must be 0 (nearest) or 1 (trilinear), got {order}")
    return out, sp


def preprocess_device(volume, spec=None):
    """`engine.preprocess.preprocess` with the scan uploaded once and its full-resolution work on
    the GPU (module doc). -> (`engine.preprocess.Preprocessed` on the host, the 1 mm HU volume as a
    device array for stage 2). Timings as the host path's ("mask", "resample"), plus "upload"."""
    from .lungmask import lung_mask
    from .preprocess import Preprocessed, PreprocessSpec
    from .resample import crop

    spec = spec or PreprocessSpec()
    if volume.hu.dtype != np.int16:
        raise ConfigError(f"preprocess_device takes an int16 HU volume (as the loaders give), got {volume.hu.dtype}")
    t = {}
    t0 = time.perf_counter()
    d_hu = cuda.to_device(np.ascontiguousarray(volume.hu))
    t["upload"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d_mask = lung_mask(volume, spec.lung, passes=DevicePasses(d_hu))
    t["mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    e = extent(d_mask)
    if e is None:
        raise ConfigError("empty mask: no bounding box")
    bbox = list(grow_box(e, volume.shape, volume.spacing_zyx_mm, spec.margin_mm + spec.lung.dilate_mm))
    d_hu1, sp = resample_device(d_hu, volume.spacing_zyx_mm, bbox, spec.target_spacing_zyx_mm, 1)
    d_mask1, _ = resample_device(d_mask, volume.spacing_zyx_mm, bbox, spec.target_spacing_zyx_mm, 0)
    vol1 = crop(volume, bbox).with_array(d_hu1.copy_to_host(), spacing_zyx_mm=sp)
    mask1 = d_mask1.copy_to_host()
    t["resample"] = time.perf_counter() - t0
    return Preprocessed(vol1, mask1, tuple(bbox), t, device_hu=d_hu1), d_hu1
