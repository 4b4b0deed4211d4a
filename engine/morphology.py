"""Binary morphology for the lung mask (numba).

Box dilation/erosion is separable, and each 1-D pass is a running count over a prefix
sum, so its cost does not grow with the radius. Hole filling works per axial slice
(a flood fill of the background from the slice border): vessels and nodules inside
the lung are enclosed in the axial plane even where the lung is open at the scan's
top or bottom slice.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def _dilate_axis(mask, r, axis):
    nz, ny, nx = mask.shape
    out = np.zeros_like(mask)
    if axis == 0:
        for y in prange(ny):
            s = np.zeros(nz + 1, dtype=np.int32)
            for x in range(nx):
                for z in range(nz):
                    s[z + 1] = s[z] + mask[z, y, x]
                for z in range(nz):
                    out[z, y, x] = s[min(z + r + 1, nz)] - s[max(z - r, 0)] > 0
    elif axis == 1:
        for z in prange(nz):
            s = np.zeros(ny + 1, dtype=np.int32)
            for x in range(nx):
                for y in range(ny):
                    s[y + 1] = s[y] + mask[z, y, x]
                for y in range(ny):
                    out[z, y, x] = s[min(y + r + 1, ny)] - s[max(y - r, 0)] > 0
    else:
        for z in prange(nz):
            s = np.zeros(nx + 1, dtype=np.int32)
            for y in range(ny):
                for x in range(nx):
                    s[x + 1] = s[x] + mask[z, y, x]
                for x in range(nx):
                    out[z, y, x] = s[min(x + r + 1, nx)] - s[max(x - r, 0)] > 0
    return out


def dilate(mask: np.ndarray, radius_zyx) -> np.ndarray:
    """Binary dilation by a (2r+1) box; radius in voxels per axis (z, y, x)."""
    out = np.ascontiguousarray(mask, dtype=np.bool_)
    for axis, r in enumerate(radius_zyx):
        if r > 0:
            out = _dilate_axis(out, int(r), axis)
    return out


def erode(mask: np.ndarray, radius_zyx) -> np.ndarray:
    """Binary erosion by a box; outside the volume counts as foreground (no border shrink)."""
    return ~dilate(~np.ascontiguousarray(mask, dtype=np.bool_), radius_zyx)


def close(mask: np.ndarray, radius_zyx) -> np.ndarray:
    return erode(dilate(mask, radius_zyx), radius_zyx)


@njit(cache=True, parallel=True)
def _fill_holes_2d(mask):
    nz, ny, nx = mask.shape
    out = mask.copy()
    for z in prange(nz):
        seen = np.zeros((ny, nx), dtype=np.bool_)
        stack = np.empty(ny * nx, dtype=np.int64)
        top = 0
        for y in range(ny):
            for x in range(nx):
                if (y == 0 or x == 0 or y == ny - 1 or x == nx - 1) and not mask[z, y, x] and not seen[y, x]:
                    seen[y, x] = True
                    stack[top] = y * nx + x
                    top += 1
        while top > 0:
            top -= 1
            p = stack[top]
            y, x = p // nx, p % nx
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < ny and 0 <= xx < nx and not mask[z, yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack[top] = yy * nx + xx
                    top += 1
        for y in range(ny):
            for x in range(nx):
                if not mask[z, y, x] and not seen[y, x]:
                    out[z, y, x] = True
    return out


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not 4-connected to the border of their axial slice."""
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
    return _mean3_inplane_below(np.ascontiguousarray(hu), np.ascontiguousarray(mask, dtype=np.bool_),
                                float(threshold_hu))
