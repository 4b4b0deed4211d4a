"""Nodules of the phantom: sizes from LUNA16, kinds, shapes and locations."""
from __future__ import annotations

import numpy as np

from .phantom import (KINDS, LOCATIONS, LUNA16_DIAMETER_QUANTILES_MM, SHAPES, Nodule,
                      _smoothstep_inside)


def draw_diameter_mm(rng, lo: float = 3.0, hi: float = 30.0) -> float:
    """Inverse-CDF draw from LUNA16's diameter quantiles, clipped to [lo, hi]."""
    u = rng.uniform(0, 1)
    d = float(np.interp(u, np.linspace(0, 1, len(LUNA16_DIAMETER_QUANTILES_MM)), LUNA16_DIAMETER_QUANTILES_MM))
    return float(np.clip(d, lo, hi))


def _random_rotation(rng) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def render_nodule(hu, grid, center, diameter, kind, shape, rng, edge_mm):
    """Draw one nodule into ``hu`` (float32, in place) within its bounding box."""
    r = diameter / 2.0
    c = np.asarray(center)
    box = grid.box(c - 1.5 * r - 2, c + 1.5 * r + 2)
    if any(s.stop <= s.start for s in box):
        return
    z, y, x = grid.coords(box)
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    if shape == "ellipsoid":
        axes = rng.uniform(0.7, 1.3, 3)
        axes /= np.prod(axes) ** (1 / 3)  # same volume as the sphere: size stays information
        rot = _random_rotation(rng)
        u = [(rot[0, i] * dx + rot[1, i] * dy + rot[2, i] * dz) / axes[i] for i in range(3)]
        dist = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    else:
        dist = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
    radius = np.full(dist.shape, r, dtype=np.float64) if shape != "lobulated" else None
    if shape == "lobulated":
        n = np.stack(np.broadcast_arrays(dx, dy, dz)) / np.maximum(dist, 1e-6)
        bumps = np.zeros(dist.shape)
        for _ in range(4):
            k = rng.standard_normal(3)
            k *= rng.uniform(2.5, 4.0) / np.linalg.norm(k)
            bumps += np.cos(k[0] * n[0] + k[1] * n[1] + k[2] * n[2] + rng.uniform(0, 2 * np.pi))
        radius = r * (1.0 + 0.07 * bumps)
    f = _smoothstep_inside(dist - radius, edge_mm).astype(np.float32)
    sub = hu[box]
    if kind == "ground_glass":
        value = rng.uniform(-650, -450)
    elif kind == "part_solid":
        value = rng.uniform(-600, -450)
    else:
        value = rng.uniform(10, 60)
    blend = sub + f * (np.float32(value) - sub)
    np.maximum(sub, blend, out=sub)
    if kind in ("part_solid", "calcified"):
        core_r = r * (rng.uniform(0.35, 0.55) if kind == "part_solid" else rng.uniform(0.3, 0.7))
        core_v = rng.uniform(10, 50) if kind == "part_solid" else rng.uniform(400, 1000)
        fc = _smoothstep_inside(dist - core_r, edge_mm).astype(np.float32)
        np.maximum(sub, sub + fc * (np.float32(core_v) - sub), out=sub)


def _sample_lung_points(rng, lung, grid, n):
    idx = np.flatnonzero(lung[::2, ::2, ::2])
    if idx.size == 0:
        return np.zeros((0, 3))
    pick = rng.choice(idx, size=min(n, idx.size), replace=False)
    sub_shape = lung[::2, ::2, ::2].shape
    kz, ky, kx = np.unravel_index(pick, sub_shape)
    return np.stack([grid.x[2 * kx], grid.y[2 * ky], grid.z[2 * kz]], axis=1)


def _choose_center(rng, grid, lung, anat, r, location, placed):
    pts = _sample_lung_points(rng, lung, grid, 400)
    if len(pts) == 0:
        return None, location
    sdf = anat.lung_sdf(pts[:, 0], pts[:, 1], pts[:, 2])

    def free(p):
        return all(np.linalg.norm(p - np.asarray(q.center_xyz_mm)) > r + q.diameter_mm / 2 + 4 for q in placed)

    if location == "juxta_vascular" and anat.segments:
        segs = [s for s in anat.segments if s.radius_mm >= 1.0]
        for _ in range(60):
            s = segs[rng.integers(len(segs))] if segs else None
            if s is None:
                break
            p0, p1 = np.asarray(s.p0), np.asarray(s.p1)
            axis = p1 - p0
            perp = np.cross(axis, rng.standard_normal(3))
            perp /= np.linalg.norm(perp) + 1e-9
            c = p0 + rng.uniform(0.2, 0.8) * axis + perp * (r + 0.3 * s.radius_mm)
            if anat.lung_sdf(c[0], c[1], c[2]) < -(r + 2) and free(c):
                return c, location
        location = "isolated"
    if location == "juxta_pleural":
        ok = np.flatnonzero((sdf > -0.85 * r - 0.5) & (sdf < -0.45 * r))
    else:
        ok = np.flatnonzero(sdf < -(r + 3))
    for i in rng.permutation(ok):
        if free(pts[i]):
            return pts[i], location
    return None, location


def place_findings(rng, grid, hu, lung, anat, params):
    """Place nodules (>= 3 mm) and excluded findings (< 3 mm); returns both lists."""
    if params.n_nodules is None:
        n = 0 if rng.uniform() < 0.15 else int(rng.integers(1, 6))
    else:
        n = params.n_nodules
    n_exc = int(rng.integers(0, 3)) if params.n_excluded is None else params.n_excluded
    edge = anat.edge
    nodules, excluded = [], []
    for i in range(n + n_exc):
        small = i >= n
        if small:
            d, kind, shape, loc = float(rng.uniform(1.5, 2.9)), "solid", "round", "isolated"
        else:
            d = draw_diameter_mm(rng, params.min_nodule_mm, params.max_nodule_mm)
            kind = KINDS[rng.choice(4, p=[0.6, 0.12, 0.13, 0.15])]
            shape = SHAPES[rng.integers(3)]
            loc = LOCATIONS[rng.choice(3, p=[0.45, 0.3, 0.25])]
        c, loc = _choose_center(rng, grid, lung, anat, d / 2, loc, nodules + excluded)
        if c is None:
            continue
        render_nodule(hu, grid, c, d, kind, shape, rng, edge)
        rec = Nodule(tuple(float(v) for v in c), round(d, 2), kind, shape, loc)
        (excluded if small else nodules).append(rec)
    return nodules, excluded
