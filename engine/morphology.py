"""Binary morphology and grid kernels for the lung mask (numba).

Box dilation/erosion is separable, and each 1-D pass is a running count over a window,
so its cost does not grow with the radius. Every pass walks whole x rows (the
contiguous axis) and keeps one counter per x, so memory is read in order whatever the
axis. Hole filling works per axial slice (a flood fill of the background from the
slice border): vessels and nodules inside the lung are enclosed in the axial plane
even where the lung is open at the scan's top or bottom slice.

The lung mask runs its topology (components, airways, holes, closing) on a coarse grid
of f_z x f_y x f_x blocks (`block_mean`) and draws the final boundary on the scan's own
voxels (`refine_blocks`): see engine/lungmask.py.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .errors import ConfigError


@njit(cache=True, parallel=True)
def _dilate_x(mask, r):
    nz, ny, nx = mask.shape
    out = np.empty_like(mask)
    for z in prange(nz):
        for y in range(ny):
            cnt = 0
            for x in range(nx + r):
                if x < nx:
                    cnt += mask[z, y, x]
                xo = x - r
                if xo >= 0:
                    j = xo - r - 1
                    if j >= 0:
                        cnt -= mask[z, y, j]
                    out[z, y, xo] = cnt > 0
    return out


@njit(cache=True, parallel=True)
def _dilate_y(mask, r):
    nz, ny, nx = mask.shape
    out = np.empty_like(mask)
    for z in prange(nz):
        cnt = np.zeros(nx, dtype=np.int32)
        for y in range(ny + r):
            if y < ny:
                for x in range(nx):
                    cnt[x] += mask[z, y, x]
            yo = y - r
            if yo >= 0:
                j = yo - r - 1
                if j >= 0:
                    for x in range(nx):
                        cnt[x] -= mask[z, j, x]
                for x in range(nx):
                    out[z, yo, x] = cnt[x] > 0
    return out


@njit(cache=True, parallel=True)
def _dilate_z(mask, r):
    nz, ny, nx = mask.shape
    out = np.empty_like(mask)
    for y in prange(ny):
        cnt = np.zeros(nx, dtype=np.int32)
        for z in range(nz + r):
            if z < nz:
                for x in range(nx):
                    cnt[x] += mask[z, y, x]
            zo = z - r
            if zo >= 0:
                j = zo - r - 1
                if j >= 0:
                    for x in range(nx):
                        cnt[x] -= mask[j, y, x]
                for x in range(nx):
                    out[zo, y, x] = cnt[x] > 0
    return out


def dilate(mask: np.ndarray, radius_zyx) -> np.ndarray:
    """Binary dilation of a bool (z, y, x) mask by a (2r+1) box; radius in voxels per axis (z, y, x).

    Outside the volume counts as background (scipy.ndimage.binary_dilation's default).
    """
    out = np.ascontiguousarray(mask, dtype=np.bool_)
    for r, fn in zip(radius_zyx, (_dilate_z, _dilate_y, _dilate_x)):
        if r > 0:
            out = fn(out, int(r))
    return out


def erode(mask: np.ndarray, radius_zyx) -> np.ndarray:
    """Binary erosion by a box; outside the volume counts as foreground (no border shrink)."""
    return ~dilate(~np.ascontiguousarray(mask, dtype=np.bool_), radius_zyx)


def close(mask: np.ndarray, radius_zyx) -> np.ndarray:
    """Binary closing (dilate, then erode) by a box; radius in voxels per axis (z, y, x)."""
    return erode(dilate(mask, radius_zyx), radius_zyx)


@njit(cache=True, parallel=True)
def _fill_holes_2d(mask):
    nz, ny, nx = mask.shape
    out = mask.copy()
    for z in prange(nz):
        # holes lie inside the slice's bounding box of the mask: flood the background from the
        # box grown by one voxel (all background at its edge, unless clipped by the slice's own edge)
        y0, y1, x0, x1 = ny, -1, nx, -1
        for y in range(ny):
            for x in range(nx):
                if mask[z, y, x]:
                    y0 = min(y0, y)
                    y1 = max(y1, y)
                    x0 = min(x0, x)
                    x1 = max(x1, x)
        if y1 < 0:
            continue
        y0, y1, x0, x1 = max(y0 - 1, 0), min(y1 + 1, ny - 1), max(x0 - 1, 0), min(x1 + 1, nx - 1)
        h, w = y1 - y0 + 1, x1 - x0 + 1
        seen = np.zeros((h, w), dtype=np.bool_)
        stack = np.empty(h * w, dtype=np.int64)
        top = 0
        for y in range(h):
            for x in range(w):
                if (y == 0 or x == 0 or y == h - 1 or x == w - 1) and not mask[z, y0 + y, x0 + x] and not seen[y, x]:
                    seen[y, x] = True
                    stack[top] = y * w + x
                    top += 1
        while top > 0:
            top -= 1
            q = stack[top]
            y, x = q // w, q % w
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and not mask[z, y0 + yy, x0 + xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack[top] = yy * w + xx
                    top += 1
        for y in range(h):
            for x in range(w):
                if not mask[z, y0 + y, x0 + x] and not seen[y, x]:
                    out[z, y0 + y, x0 + x] = True
    return out


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not 4-connected to the border of their axial slice (bool (z, y, x))."""
    return _fill_holes_2d(np.ascontiguousarray(mask, dtype=np.bool_))


@njit(cache=True, parallel=True)
def _mean3_inplane_below(hu, mask, thr):
    """mask & (3x3 in-plane mean of hu < thr): 'true air' voxels, robust to noise."""
    nz, ny, nx = hu.shape
    out = np.zeros(hu.shape, dtype=np.bool_)
    for z in prange(nz):
        for y in range(1, ny - 1):
            for x in range(1, nx - 1):
                if mask[z, y, x]:
                    s = 0.0
                    for dy in range(-1, 2):
                        for dx in range(-1, 2):
                            s += hu[z, y + dy, x + dx]
                    out[z, y, x] = s < thr * 9.0
    return out


def smoothed_below(hu: np.ndarray, mask: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Bool (z, y, x): ``mask`` & (3x3 in-plane mean of ``hu`` < ``threshold_hu``); the outermost rows
    and columns of each slice are False. ``hu`` int16 or float32, same shape as ``mask``."""
    return _mean3_inplane_below(np.ascontiguousarray(hu), np.ascontiguousarray(mask, dtype=np.bool_),
                                float(threshold_hu))


@njit(cache=True, parallel=True)
def _block_mean(hu, fz, fy, fx, out):
    """Each plane of blocks: the scan's rows added whole into one int32 line per block row (a
    widening add over contiguous voxels, vectorised), then each line summed ``fx`` voxels at a time.
    Integer sums: exact whatever the order."""
    cz, cy, cx = out.shape
    nz, ny, nx = hu.shape
    for k in prange(cz):
        z0, z1 = k * fz, min(k * fz + fz, nz)
        lines = np.zeros((cy, nx), dtype=np.int32)  # int32: exact for blocks of up to 65536 int16 voxels
        for z in range(z0, z1):
            for y in range(ny):
                line = lines[y // fy]
                src = hu[z, y]
                for x in range(nx):
                    line[x] += src[x]
        for j in range(cy):
            ny_b = min(j * fy + fy, ny) - j * fy
            for i in range(cx):
                x0, x1 = i * fx, min(i * fx + fx, nx)
                s = np.int32(0)
                for x in range(x0, x1):
                    s += lines[j, x]
                out[k, j, i] = s / np.float32((z1 - z0) * ny_b * (x1 - x0))


def block_mean(hu: np.ndarray, factors_zyx) -> np.ndarray:
    """Mean of each f_z x f_y x f_x block of int16 ``hu`` (z, y, x), float32 of shape ceil(n / f) per axis.

    The last block along an axis may be partial; its mean is over the voxels it holds.
    """
    fz, fy, fx = (int(f) for f in factors_zyx)
    if not 1 <= fz * fy * fx <= 65536 or min(fz, fy, fx) < 1:
        raise ConfigError(f"block factors must be >= 1 with at most 65536 voxels per block, got {factors_zyx}")
    shape = tuple(-(-n // f) for n, f in zip(hu.shape, (fz, fy, fx)))
    out = np.empty(shape, dtype=np.float32)
    _block_mean(np.ascontiguousarray(hu, dtype=np.int16), fz, fy, fx, out)
    return out


@njit(cache=True, parallel=True)
def _block_stats(hu, fz, fy, fx, oz, oy, ox, thr, mean, count):
    """`_block_mean` of the blocks from block (oz, oy, ox) on, and, in the same read of the scan, the
    number of voxels below ``thr`` (int16: ``v < t`` for int16 ``v`` is ``v < ceil(threshold)``)."""
    cz, cy, cx = mean.shape
    nz, ny, nx = hu.shape
    ya, yb, xa, xb = oy * fy, min((oy + cy) * fy, ny), ox * fx, min((ox + cx) * fx, nx)
    for k in prange(cz):
        z0, z1 = (oz + k) * fz, min((oz + k) * fz + fz, nz)
        lines = np.zeros((cy, xb - xa), dtype=np.int32)
        below = np.zeros((cy, xb - xa), dtype=np.int16)  # per column at most fz * fy <= 32767 voxels
        for z in range(z0, z1):
            for y in range(ya, yb):
                line = lines[(y - ya) // fy]
                bl = below[(y - ya) // fy]
                src = hu[z, y, xa:xb]
                for x in range(xb - xa):
                    v = src[x]
                    line[x] += v
                    bl[x] += np.int16(v < thr)
        for j in range(cy):
            ny_b = min((oy + j) * fy + fy, ny) - (oy + j) * fy
            for i in range(cx):
                x0, x1 = i * fx, min(i * fx + fx, xb - xa)
                s = np.int32(0)
                c = np.int32(0)
                for x in range(x0, x1):
                    s += lines[j, x]
                    c += below[j, x]
                mean[k, j, i] = s / np.float32((z1 - z0) * ny_b * (x1 - x0))
                count[k, j, i] = c


def block_stats(hu: np.ndarray, factors_zyx, threshold_hu: float, box=None) -> tuple[np.ndarray, np.ndarray]:
    """`block_mean` of int16 ``hu`` (z, y, x) and, from the same single read, the count of voxels below
    ``threshold_hu`` in each block: (mean float32, count uint16), of shape ceil(n / f), or of the
    blocks of ``box`` = (k0, k1, j0, j1, i0, i1) (block indices) only, reading no voxel outside it.
    (The lung mask takes the count at its true-air threshold: the blocks of the airway's lumen.)"""
    fz, fy, fx = (int(f) for f in factors_zyx)
    if not 1 <= fz * fy * fx <= 65535 or fz * fy > 32767 or min(fz, fy, fx) < 1:
        raise ConfigError(f"block factors must be >= 1 with at most 65535 voxels per block and 32767 per "
                          f"column of a block, got {factors_zyx}")
    full = tuple(-(-n // f) for n, f in zip(hu.shape, (fz, fy, fx)))
    box = (0, full[0], 0, full[1], 0, full[2]) if box is None else tuple(int(v) for v in box)
    if not all(0 <= box[2 * a] < box[2 * a + 1] <= full[a] for a in range(3)):
        raise ConfigError(f"block box {box} is not inside the scan's blocks {full}")
    shape = (box[1] - box[0], box[3] - box[2], box[5] - box[4])
    mean = np.empty(shape, dtype=np.float32)
    count = np.empty(shape, dtype=np.uint16)
    # an int16 threshold keeps the comparison in the scan's own lanes (vectorised)
    thr = np.int16(min(max(math.ceil(threshold_hu), -32768), 32767))
    _block_stats(np.ascontiguousarray(hu, dtype=np.int16), fz, fy, fx, box[0], box[2], box[4], thr, mean, count)
    return mean, count


@njit(cache=True, parallel=True)
def _refine_blocks(hu, code, fz, fy, fx, oz, oy, ox, thr, out):
    nz, ny, nx = hu.shape
    cz, cy, cx = code.shape
    for k in prange(cz):
        for z in range(max((oz + k) * fz, 0), min((oz + k + 1) * fz, nz)):
            for j in range(cy):
                for y in range((oy + j) * fy, min((oy + j + 1) * fy, ny)):
                    for i in range(cx):
                        c = code[k, j, i]
                        x0 = (ox + i) * fx
                        x1 = min(x0 + fx, nx)
                        if c == 2:
                            for x in range(x0, x1):
                                out[z, y, x] = hu[z, y, x] < thr
                        elif c == 1:
                            for x in range(x0, x1):
                                out[z, y, x] = True


def refine_blocks(hu: np.ndarray, code: np.ndarray, factors_zyx, threshold_hu: float, origin_zyx=(0, 0, 0),
                  out: np.ndarray | None = None) -> np.ndarray:
    """Bool mask on the fine grid of ``hu`` (z, y, x) from a uint8 code per coarse block:
    0 = every voxel of the block out, 1 = every voxel in, 2 = voxel in where ``hu < threshold_hu``.

    ``code`` covers the coarse blocks from ``origin_zyx`` (block indices) on, on the block grid of
    `block_mean`; fine voxels outside it are left as they are in ``out`` (default: a new all-False
    array, which costs no memory where it is never written).
    """
    fz, fy, fx = (int(f) for f in factors_zyx)
    if out is None:
        out = np.zeros(hu.shape, dtype=np.bool_)
    _refine_blocks(np.ascontiguousarray(hu), np.ascontiguousarray(code, dtype=np.uint8), fz, fy, fx,
                   *(int(o) for o in origin_zyx), float(threshold_hu), out)
    return out


@njit(cache=True, parallel=True)
def _clear_blocks(mask, cut, fz, fy, fx, oz, oy, ox):
    nz, ny, nx = mask.shape
    cz, cy, cx = cut.shape
    for k in prange(cz):
        for z in range((oz + k) * fz, min((oz + k + 1) * fz, nz)):
            for j in range(cy):
                for y in range((oy + j) * fy, min((oy + j + 1) * fy, ny)):
                    for i in range(cx):
                        if cut[k, j, i]:
                            for x in range((ox + i) * fx, min((ox + i + 1) * fx, nx)):
                                mask[z, y, x] = False


def clear_blocks(mask: np.ndarray, cut: np.ndarray, factors_zyx, origin_zyx=(0, 0, 0)) -> None:
    """In place: set False every fine voxel of ``mask`` (z, y, x) whose coarse block is True in ``cut``
    (``cut`` covers the blocks from ``origin_zyx`` on, as in `refine_blocks`)."""
    _clear_blocks(mask, np.ascontiguousarray(cut, dtype=np.bool_), *(int(f) for f in factors_zyx),
                  *(int(o) for o in origin_zyx))
