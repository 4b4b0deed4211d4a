"""Euclidean distance transform and ball morphology on small crops (numba).

The exact squared EDT of Felzenszwalb & Huttenlocher (2012): one lower-envelope pass of
parabolas per axis, with each axis weighted by its voxel size, so distances are in mm on
anisotropic CT grids. Morphology with a ball of radius r mm follows from it: erosion keeps
the voxels farther than r from the background, dilation adds those within r of the mask.
Voxels outside the array count as neither: an erosion does not shrink from the crop's edges
(the crop cuts the anatomy, it is not its border).
"""
from __future__ import annotations

import numpy as np
from numba import njit

_INF = 1e20


@njit(cache=True)
def _envelope_1d(f, w2, out, v, z):
    """Squared distance along one line: out[q] = min_p f[p] + w2 (q - p)^2 (F&H lower envelope)."""
    n = f.shape[0]
    k = -1
    for q in range(n):
        if f[q] >= _INF:
            continue
        if k < 0:
            k = 0
            v[0] = q
            z[0] = -_INF
            z[1] = _INF
            continue
        while True:
            p = v[k]
            s = ((f[q] + w2 * q * q) - (f[p] + w2 * p * p)) / (2.0 * w2 * (q - p))
            if s <= z[k]:
                k -= 1
                if k < 0:
                    break
            else:
                break
        k += 1
        v[k] = q
        z[k] = s if k > 0 else -_INF
        z[k + 1] = _INF
    if k < 0:
        for q in range(n):
            out[q] = _INF
        return
    k = 0
    for q in range(n):
        while z[k + 1] < q:
            k += 1
        d = q - v[k]
        out[q] = f[v[k]] + w2 * d * d


@njit(cache=True)
def _edt_sq(background, sz, sy, sx):
    nz, ny, nx = background.shape
    d = np.empty((nz, ny, nx), dtype=np.float64)
    for i in range(nz):
        for j in range(ny):
            for k in range(nx):
                d[i, j, k] = 0.0 if background[i, j, k] else _INF
    m = max(nz, ny, nx)
    f = np.empty(m)
    out = np.empty(m)
    v = np.empty(m, dtype=np.int64)
    z = np.empty(m + 1)
    for i in range(nz):
        for j in range(ny):
            for k in range(nx):
                f[k] = d[i, j, k]
            _envelope_1d(f[:nx], sx * sx, out[:nx], v, z)
            for k in range(nx):
                d[i, j, k] = out[k]
    for i in range(nz):
        for k in range(nx):
            for j in range(ny):
                f[j] = d[i, j, k]
            _envelope_1d(f[:ny], sy * sy, out[:ny], v, z)
            for j in range(ny):
                d[i, j, k] = out[j]
    for j in range(ny):
        for k in range(nx):
            for i in range(nz):
                f[i] = d[i, j, k]
            _envelope_1d(f[:nz], sz * sz, out[:nz], v, z)
            for i in range(nz):
                d[i, j, k] = out[i]
    return d


def distance_mm(mask: np.ndarray, spacing_zyx_mm) -> np.ndarray:
    """float64 (z, y, x): each voxel's distance (mm) to the nearest voxel where ``mask`` is False
    (0 there); a huge value (1e10) when ``mask`` has no False voxel."""
    sz, sy, sx = (float(s) for s in spacing_zyx_mm)
    return np.sqrt(_edt_sq(~np.ascontiguousarray(mask, dtype=np.bool_), sz, sy, sx))


def erode_ball(mask: np.ndarray, radius_mm: float, spacing_zyx_mm) -> np.ndarray:
    """Erosion of a bool (z, y, x) mask by a ball of ``radius_mm``."""
    return distance_mm(mask, spacing_zyx_mm) > radius_mm


def dilate_ball(mask: np.ndarray, radius_mm: float, spacing_zyx_mm) -> np.ndarray:
    """Dilation of a bool (z, y, x) mask by a ball of ``radius_mm``."""
    return distance_mm(~np.asarray(mask, dtype=bool), spacing_zyx_mm) <= radius_mm


def open_ball(mask: np.ndarray, radius_mm: float, spacing_zyx_mm) -> np.ndarray:
    """Opening (erosion then dilation) by a ball: removes parts thinner than 2 ``radius_mm``."""
    return dilate_ball(erode_ball(mask, radius_mm, spacing_zyx_mm), radius_mm, spacing_zyx_mm)


def close_ball(mask: np.ndarray, radius_mm: float, spacing_zyx_mm) -> np.ndarray:
    """Closing (dilation then erosion) by a ball: fills pockets narrower than 2 ``radius_mm``."""
    return erode_ball(dilate_ball(mask, radius_mm, spacing_zyx_mm), radius_mm, spacing_zyx_mm)


def gaussian_smooth(a: np.ndarray, sigma_mm: float, spacing_zyx_mm) -> np.ndarray:
    """Separable Gaussian smoothing of a (z, y, x) array (float32 out), sigma in mm per axis;
    edges replicated. An axis whose sigma is under 0.3 voxel is left alone."""
    out = np.asarray(a, dtype=np.float32)
    for axis, sp in enumerate(spacing_zyx_mm):
        s = sigma_mm / float(sp)
        if s < 0.3 or out.shape[axis] < 3:
            continue
        half = max(int(np.ceil(2.5 * s)), 1)
        w = np.exp(-0.5 * (np.arange(-half, half + 1) / s) ** 2).astype(np.float32)
        w /= w.sum()
        pad = [(0, 0)] * 3
        pad[axis] = (half, half)
        p = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for i, wi in enumerate(w):
            acc += wi * np.take(p, np.arange(i, i + n), axis=axis)
        out = acc
    return out
