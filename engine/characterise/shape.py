"""Shape measurements of a segmented lesion: axial long / short axis, lobulation, protrusions
(spicules and attached vessels)."""
from __future__ import annotations

import numpy as np

from ..ccl import label
from .distance import dilate_ball, distance_mm


def _boundary_2d(sl: np.ndarray) -> np.ndarray:
    inner = sl.copy()
    inner[1:-1, 1:-1] = sl[1:-1, 1:-1] & sl[:-2, 1:-1] & sl[2:, 1:-1] & sl[1:-1, :-2] & sl[1:-1, 2:]
    inner[0, :] = inner[-1, :] = False
    inner[:, 0] = inner[:, -1] = False
    return sl & ~inner


def axial_axes(mask: np.ndarray, spacing_zyx_mm) -> tuple[float, float, int]:
    """(long axis mm, short axis mm, z index) on the axial slice of ``mask`` (bool z, y, x) with the
    largest area. Long: the largest distance across the lesion (between pixel edges); short: its
    largest extent perpendicular to the long axis, as Lung-RADS measures them."""
    area = mask.sum(axis=(1, 2))
    if area.max(initial=0) == 0:
        return 0.0, 0.0, 0
    z = int(np.argmax(area))
    sl = mask[z]
    sy, sx = float(spacing_zyx_mm[1]), float(spacing_zyx_mm[2])
    pts = np.argwhere(_boundary_2d(sl)).astype(np.float64) * (sy, sx)
    if len(pts) > 1500:
        pts = pts[np.linspace(0, len(pts) - 1, 1500).astype(np.int64)]
    if len(pts) < 2:
        return sx, sy, z
    diff = pts[:, None, :] - pts[None, :, :]
    d2 = (diff ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    u = diff[i, j] / max(np.sqrt(d2[i, j]), 1e-9)
    n = np.array([-u[1], u[0]])
    allpts = np.argwhere(sl).astype(np.float64) * (sy, sx)
    proj = allpts @ n
    # a pixel is a square: its extent along a direction adds |dy| sy + |dx| sx to the centres' spread
    long_mm = float(np.sqrt(d2[i, j])) + abs(u[0]) * sy + abs(u[1]) * sx
    short_mm = float(proj.max() - proj.min()) + abs(n[0]) * sy + abs(n[1]) * sx
    return long_mm, short_mm, z


def lobulated(mask: np.ndarray, z: int, spacing_zyx_mm, min_bumps: int = 3, depth: float = 0.06) -> bool:
    """Whether the margin on axial slice ``z`` undulates: at least ``min_bumps`` peaks of the
    radius (centroid to margin, per 10 degrees, smoothed) standing ``depth`` x the mean radius above
    the valleys beside them. An ellipse has two."""
    sl = mask[z] if 0 <= z < mask.shape[0] else np.zeros((1, 1), bool)
    sy, sx = float(spacing_zyx_mm[1]), float(spacing_zyx_mm[2])
    pts = np.argwhere(_boundary_2d(sl)).astype(np.float64) * (sy, sx)
    if len(pts) < 24:
        return False
    c = np.argwhere(sl).mean(0) * (sy, sx)
    v = pts - c
    ang = ((np.degrees(np.arctan2(v[:, 0], v[:, 1])) + 360.0) % 360.0 // 10).astype(int)
    r = np.full(36, np.nan)
    rad = np.hypot(v[:, 0], v[:, 1])
    for a in range(36):
        sel = rad[ang == a]
        if sel.size:
            r[a] = sel.max()
    if np.isnan(r).sum() > 6:
        return False
    good = ~np.isnan(r)
    r = np.interp(np.arange(36), np.flatnonzero(good), r[good], period=36)
    r = (np.roll(r, 1) + 2 * r + np.roll(r, -1)) / 4.0
    mean = r.mean()
    peaks = 0
    for a in range(36):
        if r[a] >= r[a - 1] and r[a] > r[(a + 1) % 36]:
            left = min(r[(a - k) % 36] for k in range(1, 6))
            right = min(r[(a + k) % 36] for k in range(1, 6))
            if r[a] - max(left, right) >= depth * mean:
                peaks += 1
    return peaks >= min_bumps


def protrusions(sm: np.ndarray, whole: np.ndarray, inside: np.ndarray, bg: float, spacing_zyx_mm,
                reach_mm: float = 1.5) -> tuple[int, int]:
    """(thin protrusions, thick protrusions) leaving the lesion ``whole``: parts of the dense
    tissue touching it (smoothed HU >= ``bg`` + 150, inside the lung) that the vessel cut removed
    and that reach at least ``reach_mm`` from it, near it (within twice its radius). Thin (mean
    cross-section under pi mm^2): spicules; thick: vessels."""
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    dense = (sm >= bg + 150.0) & inside
    d_lesion = distance_mm(~whole, spacing)
    r_eq = (3.0 * whole.sum() * np.prod(spacing) / (4.0 * np.pi)) ** (1.0 / 3.0)
    near = d_lesion <= max(r_eq, 3.0) + 2.0
    out = dense & ~whole & near & (d_lesion > 0.8)
    if not out.any():
        return 0, 0
    lab, n = label(np.ascontiguousarray(out))
    touching = np.unique(lab[dilate_ball(whole, 0.8 + max(spacing), spacing) & (lab > 0)])
    thin = thick = 0
    vox = float(np.prod(spacing))
    for k in touching:
        part = lab == k
        length = float(d_lesion[part].max())
        if length < reach_mm:
            continue
        area = part.sum() * vox / max(length - 0.8, 0.5)
        if area < np.pi:
            thin += 1
        else:
            thick += 1
    return thin, thick
