"""The lesion's own extent, apart from what touches it: rays from its centre, an ellipsoid fitted to
the lower envelope of their lengths, and whatever lies well beyond that ellipsoid cut off.

Why: a vessel as wide as the lesion survives any opening that keeps the lesion, and region growing
follows it. Seen from the lesion's centre, though, the vessel is a patch of directions along which
the region goes on much farther than along the others. A nodule's outline is smooth at the scale
of that patch (round, ellipsoidal, lobulated), so an ellipsoid fitted robustly to the ray lengths
(1 / r^2 is a quadratic form of the direction for an ellipsoid about its centre; linear terms
allow an offset; rays much longer than the fit are dropped and the fit repeated) stands for the
lesion's outline. Along the rays that run well beyond it the region is cut at the outline; along
the others it is kept as it is, so a lesion without attachments loses nothing.
"""
from __future__ import annotations

import numpy as np
from numba import njit


def directions(n: int = 400) -> np.ndarray:
    """``n`` nearly uniform unit vectors (z, y, x) on the sphere (Fibonacci lattice), float64 (n, 3)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + 5 ** 0.5) * k
    s = np.sqrt(1.0 - z * z)
    return np.stack([z, s * np.sin(phi), s * np.cos(phi)], axis=1)


@njit(cache=True)
def _exits(mask, c, dirs, sz, sy, sx, step, max_mm):
    n = dirs.shape[0]
    out = np.empty(n)
    nz, ny, nx = mask.shape
    for i in range(n):
        t = 0.0
        while t < max_mm:
            z = int(np.floor(c[0] + t * dirs[i, 0] / sz + 0.5))
            y = int(np.floor(c[1] + t * dirs[i, 1] / sy + 0.5))
            x = int(np.floor(c[2] + t * dirs[i, 2] / sx + 0.5))
            if z < 0 or y < 0 or x < 0 or z >= nz or y >= ny or x >= nx or not mask[z, y, x]:
                break
            t += step
        out[i] = t
    return out


def ray_lengths(mask: np.ndarray, center_zyx, spacing_zyx_mm, dirs: np.ndarray, step_mm: float = 0.2,
                max_mm: float = 80.0) -> np.ndarray:
    """How far (mm) each ray from ``center_zyx`` (voxel, float) along ``dirs`` stays inside ``mask``
    (bool z, y, x; the first voxel outside ends it), in steps of ``step_mm``. float64 (n,)."""
    sz, sy, sx = (float(s) for s in spacing_zyx_mm)
    return _exits(np.ascontiguousarray(mask, dtype=np.bool_), np.asarray(center_zyx, np.float64),
                  np.ascontiguousarray(dirs, np.float64), sz, sy, sx, step_mm, max_mm)


def _design(u: np.ndarray) -> np.ndarray:
    z, y, x = u[..., 0], u[..., 1], u[..., 2]
    return np.stack([z * z, y * y, x * x, z * y, z * x, y * x, z, y, x], axis=-1)


def envelope(dirs: np.ndarray, lengths_mm: np.ndarray, keep: float, iters: int = 10) -> np.ndarray:
    """The outline's coefficients (float64 (9,), for `outline`): 1 / r^2 fitted by least squares
    over the rays, those longer than ``keep`` x the fit dropped and the fit repeated."""
    r = np.maximum(lengths_mm, 0.2)
    q = 1.0 / r ** 2
    a = _design(dirs)
    use = np.ones(len(r), bool)
    coef = np.zeros(a.shape[1])
    for _ in range(iters):
        if use.sum() < 20:
            break
        coef, *_ = np.linalg.lstsq(a[use], q[use], rcond=None)
        new = q * keep * keep >= a @ coef      # r <= keep x the fit
        if np.array_equal(new, use):
            break
        use = new
    return coef


def outline(coef: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The outline's radius (mm) along unit vectors ``u`` (..., 3)."""
    return 1.0 / np.sqrt(np.maximum(_design(u) @ coef, 1e-6))


def cut(mask: np.ndarray, center_zyx, spacing_zyx_mm, keep: float, margin_mm: float, wall=None,
        n_dirs: int = 400) -> tuple[np.ndarray, float]:
    """``mask`` (bool z, y, x) less, along the directions whose ray from ``center_zyx`` (voxel,
    float) runs beyond ``keep`` x the outline + ``margin_mm`` (an attachment), what lies beyond the
    outline + ``margin_mm``. ``wall``: bool, where the lung ends (rays that end there are cut short
    by the wall, not by the lesion's margin: they do not shape the outline). -> (bool mask, the
    fraction of directions cut)."""
    dirs = directions(n_dirs)
    c = np.asarray(center_zyx, float)
    sp = np.asarray(spacing_zyx_mm, float)
    lengths = ray_lengths(mask, c, sp, dirs)
    fit_rays = np.ones(len(dirs), bool)
    if wall is not None:
        end = np.rint(c + (lengths[:, None] + 0.2) * dirs / sp).astype(np.int64)
        end = np.clip(end, 0, np.asarray(mask.shape) - 1)
        fit_rays = ~wall[end[:, 0], end[:, 1], end[:, 2]]
        if fit_rays.sum() < 40:
            return mask, 0.0
    coef = envelope(dirs[fit_rays], lengths[fit_rays], keep)
    attached = fit_rays & (lengths > keep * outline(coef, dirs) + margin_mm)
    if not attached.any():
        return mask, 0.0
    idx = np.argwhere(mask)
    v = (idx - c) * sp
    d = np.sqrt((v ** 2).sum(1))
    u = v / np.maximum(d, 1e-9)[:, None]
    nearest = np.argmax(u @ dirs.T, axis=1)
    # along a free direction the region ends where its ray left it (what lies beyond is something
    # else met again; a lobe between two rays is within the tolerance)
    free = lengths[nearest] + np.maximum(margin_mm, 0.15 * lengths[nearest])
    ok = d <= np.where(attached[nearest], outline(coef, u) + margin_mm, free)
    out = np.zeros_like(mask, dtype=bool)
    out[tuple(idx[ok].T)] = True
    return out, float(attached.mean())
