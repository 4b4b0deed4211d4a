"""Chest anatomy of the phantom, in world mm: body, bones, mediastinum, airways, lungs, vessels.

The lungs are a closed-form signed-distance function (`Anatomy.lung_sdf`), evaluated
slice by slice for rendering and at arbitrary points for placing lesions, so the two
always agree. Tubes (airways, vessel trees) are capsules rendered inside their own
bounding boxes only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom import (BLOOD_HU, BONE_HU, FAT_HU, LUNG_HU, MUSCLE_HU, SOFT_HU, _blur3,
                      _smoothstep_inside)


@dataclass(frozen=True)
class Segment:
    p0: tuple[float, float, float]  # world xyz mm
    p1: tuple[float, float, float]
    radius_mm: float


def _ellipse_dist(x, y, cx, cy, ax, ay):
    """Approximate signed distance (mm) to an axis-aligned ellipse (negative inside)."""
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return (r - 1.0) * np.minimum(ax, ay)


def render_capsule(hu, frac_out, grid, seg: Segment, value: float, edge_mm: float, margin: float = 2.0):
    """Blend a capsule of HU ``value`` into ``hu`` (in its bounding box). Returns the box."""
    p0, p1 = np.asarray(seg.p0), np.asarray(seg.p1)
    r = seg.radius_mm
    lo = np.minimum(p0, p1) - r - margin
    hi = np.maximum(p0, p1) + r + margin
    box = grid.box(lo, hi)
    if any(s.stop <= s.start for s in box):
        return None
    z, y, x = grid.coords(box)
    u = p1 - p0
    length2 = float(u @ u) or 1e-9
    t = ((x - p0[0]) * u[0] + (y - p0[1]) * u[1] + (z - p0[2]) * u[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    d = np.sqrt((x - p0[0] - t * u[0]) ** 2 + (y - p0[1] - t * u[1]) ** 2 + (z - p0[2] - t * u[2]) ** 2) - r
    f = _smoothstep_inside(d, edge_mm).astype(np.float32)
    sub = hu[box]
    sub += f * (np.float32(value) - sub)
    if frac_out is not None:
        np.maximum(frac_out[box], f, out=frac_out[box])
    return box


class Anatomy:
    """Draws the anatomy of one phantom; keeps what lesion placement needs."""

    def __init__(self, rng, grid, scale, z0, z_top, params):
        self.rng, self.grid, self.s, self.params = rng, grid, scale, params
        s = scale
        g = grid
        nz, ny, nx = g.shape
        self.bx = float(g.origin[0] + (nx - 1) / 2 * g.spacing[2]) + float(rng.uniform(-8, 8)) * s
        self.by = float(g.origin[1] + (ny - 1) / 2 * g.spacing[1]) - 10 * s
        self.body_ax, self.body_ay = 165 * s * rng.uniform(0.92, 1.05), 115 * s * rng.uniform(0.9, 1.05)
        span = z_top - z0
        self.z_apex = z_top - span * rng.uniform(0.03, 0.10)
        self.z_base = z0 + span * rng.uniform(0.12, 0.22)
        self.h = self.z_apex - self.z_base
        self.z_carina = self.z_base + 0.62 * self.h
        self.edge = float(min(g.spacing[1:]))
        touch = params.touching_lungs
        self.lungs = []
        for side in (-1, 1):  # -1: patient's right (x < 0 in LPS), +1: left
            if params.one_lung and side == 1:
                continue
            # lung size follows the chest: it must stay inside the ribs and muscle for every draw
            cx = self.bx + side * (52 if touch else 63) * s * rng.uniform(0.95, 1.05)
            ax = (62 if touch else 54) / 165.0 * self.body_ax * rng.uniform(0.95, 1.05)
            ay = 0.62 * self.body_ay * rng.uniform(0.95, 1.0)
            self.lungs.append((side, cx, self.by + 6 * s, ax, ay, 38 * s * rng.uniform(0.8, 1.2)))
        self.heart = (self.bx + 22 * s, self.by - 22 * s, self.z_base + 0.22 * self.h,
                      62 * s, 52 * s, 0.26 * self.h)
        self.spine = (self.bx, self.by + self.body_ay - 42 * s, 17 * s)
        self.aorta = (self.bx + 22 * s, self.by + self.body_ay - 62 * s, 11 * s)
        self.trachea = (self.bx, self.by + 25 * s, 8.5 * s)
        self.segments: list[Segment] = []
        self.bronchi: list[Segment] = []

    # -- lungs ------------------------------------------------------------------
    def lung_sdf(self, x, y, z):
        """Signed distance (mm, negative inside) to the lungs' surface, including the
        carving by mediastinum, heart, spine and aorta. Broadcasts over arrays."""
        s = self.s
        t = (z - self.z_base) / self.h
        d_all = None
        for side, cx, cy, ax, ay, dome in self.lungs:
            # taper: full width in the lower half, a dome towards the apex
            w = np.sqrt(np.clip(1.0 - np.clip((t - 0.35) / 0.65, 0, None) ** 2, 1e-4, 1.0))
            d = _ellipse_dist(x, y, cx, cy, ax * w, ay * (0.55 + 0.45 * w))
            # above the apex / below the diaphragm dome
            rx, ry = (x - cx) / ax, (y - cy) / ay
            z_diaph = self.z_base + dome * np.clip(1.0 - rx ** 2 - ry ** 2, 0, 1)
            d = np.maximum(d, z_diaph - z)
            d = np.maximum(d, z - self.z_apex)
            d_all = d if d_all is None else np.minimum(d_all, d)
        # mediastinum: a band around the midline, narrower anteriorly; the lungs meet
        # across it (anterior junction) when touching_lungs is set
        half = 24 * s + 14 * s * np.clip((y - self.by) / (60 * s), 0, 1)
        if self.params.touching_lungs:
            anterior = (y < self.by - 20 * s) & (t > 0.45) & (t < 0.9)
            half = np.where(anterior, 0.0, half)
        d_med = half - np.abs(x - self.bx)
        d_all = np.maximum(d_all, d_med)
        hx, hy, hz, hax, hay, haz = self.heart
        r_h = np.sqrt(((x - hx) / hax) ** 2 + ((y - hy) / hay) ** 2 + ((z - hz) / haz) ** 2)
        d_all = np.maximum(d_all, (1.0 - r_h) * min(hax, hay) + 3 * s)
        for (cx, cy, r) in (self.spine, self.aorta):
            d_all = np.maximum(d_all, r + 6 * s - np.sqrt((x - cx) ** 2 + (y - cy) ** 2))
        return d_all

    # -- rendering ----------------------------------------------------------------
    def render(self):
        g, s, rng = self.grid, self.s, self.rng
        nz, ny, nx = g.shape
        hu = np.full(g.shape, -1000.0, dtype=np.float32)
        lung = np.zeros(g.shape, dtype=bool)
        X, Y = g.x[None, :], g.y[:, None]
        # lung texture: smooth low-frequency field (coarse noise, upsampled, blurred)
        tex = self._texture(rng)
        rib_pitch = 26 * s * rng.uniform(0.9, 1.1)
        rib_phase = rng.uniform(0, rib_pitch)
        for k, z in enumerate(g.z):
            sl = hu[k]
            taper = 1.0 - 0.12 * np.clip((z - self.z_base) / self.h - 0.6, 0, 1)
            ax, ay = self.body_ax * taper, self.body_ay
            d_body = _ellipse_dist(X, Y, self.bx, self.by, ax, ay)
            # table: a curved slab under the patient's back
            d_tab = np.abs(Y - (self.by + ay + 14 * s + 0.0004 * (X - self.bx) ** 2)) - 5 * s
            sl[:] = -1000.0
            sl += _smoothstep_inside(d_tab, self.edge) * (250.0 + 1000.0) * (np.abs(X - self.bx) < 200 * s)
            fat = 14 * s
            body = _smoothstep_inside(d_body, self.edge)
            muscle = _smoothstep_inside(d_body + fat, self.edge)
            inner = _smoothstep_inside(d_body + fat + 16 * s, self.edge)
            val = FAT_HU + muscle * (MUSCLE_HU - FAT_HU) + inner * (SOFT_HU - MUSCLE_HU)
            sl[:] = sl * (1 - body) + val * body
            # ribs: slanted bands in the chest wall; sternum anteriorly
            rnorm = np.sqrt(((X - self.bx) / ax) ** 2 + ((Y - self.by) / ay) ** 2)
            r_in = 1.0 - (fat + 20 * s) / min(ax, ay)
            band = (rnorm > r_in) & (rnorm < r_in + 9 * s / min(ax, ay))
            phase = np.broadcast_to(((z + 35 * s * (Y - self.by) / ay + rib_phase) % rib_pitch) / rib_pitch, sl.shape)
            rib = band & (phase < 0.32) & (z > self.z_base - 30 * s)
            sl[rib] = BONE_HU + 250.0 * (phase[rib] < 0.08)
            stern = (np.abs(X - self.bx) < 14 * s) & (np.abs(Y - (self.by - ay + fat + 12 * s)) < 6 * s)
            sl[stern] = BONE_HU
            # spine with discs, aorta
            cx, cy, r = self.spine
            d_sp = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2) - r
            disc = ((z - rib_phase) % (28 * s)) < 6 * s
            sl[d_sp < 0] = 90.0 if disc else 260.0
            sl[(d_sp < 0) & (d_sp > -2.5 * s) & (not disc)] = 750.0
            canal = np.sqrt((X - cx) ** 2 + (Y - (cy + r + 9 * s)) ** 2) < 7 * s
            sl[canal] = 20.0
            post = (np.abs(X - cx) < 6 * s) & (Y > cy + r + 16 * s) & (Y < cy + r + 40 * s) & (~disc)
            sl[post] = 400.0
            acx, acy, ar = self.aorta
            sl[np.sqrt((X - acx) ** 2 + (Y - acy) ** 2) < ar] = BLOOD_HU
            # lungs
            d_l = self.lung_sdf(X, Y, z)
            f = _smoothstep_inside(d_l, self.edge)
            grav = 45.0 * np.clip((Y - self.by) / (90 * s), -1, 1)  # dependent lung is denser
            lung_val = LUNG_HU + grav + tex[k]
            sl[:] = sl * (1 - f) + lung_val * f
            lung[k] = f >= 0.5
            # trachea above the carina: air lumen in a soft-tissue wall
            if z > self.z_carina:
                tx, ty, tr = self.trachea
                d_t = np.sqrt((X - tx) ** 2 + (Y - ty) ** 2) - tr
                ring = _smoothstep_inside(d_t - 2.0 * s, self.edge)
                sl[:] = sl * (1 - ring) + SOFT_HU * ring
                lum = _smoothstep_inside(d_t, self.edge)
                sl[:] = sl * (1 - lum) - 1000.0 * lum
                lung[k] &= d_t > 0
        self._airways(hu, lung)
        self._vessels(hu, lung)
        return hu, lung

    def _texture(self, rng):
        g = self.grid
        step = np.maximum(np.round(6.0 / g.spacing).astype(int), 1)
        coarse = rng.standard_normal(tuple(int(np.ceil(n / st)) + 1 for n, st in zip(g.shape, step)))
        tex = coarse.astype(np.float32)
        for ax, st in enumerate(step):
            tex = np.repeat(tex, st, axis=ax)
        tex = np.ascontiguousarray(tex[: g.shape[0], : g.shape[1], : g.shape[2]])
        for _ in range(2):
            _blur3(tex)
        return tex * np.float32(25.0 / max(float(tex.std()), 1e-3))

    def _airways(self, hu, lung):
        """Main bronchi from the carina to each hilum: air, excluded from the true lung mask."""
        s = self.s
        tx, ty, tr = self.trachea
        carina = (tx, ty, self.z_carina)
        frac = np.zeros(hu.shape, dtype=np.float32)
        for side, cx, cy, ax, ay, dome in self.lungs:
            hilum = (self.bx + side * 42 * s, ty + 5 * s, self.z_carina - 22 * s)
            seg = Segment(carina, hilum, 6.0 * s)
            wall = Segment(carina, hilum, 8.0 * s)
            render_capsule(hu, None, self.grid, wall, SOFT_HU, self.edge)
            render_capsule(hu, frac, self.grid, seg, -1000.0, self.edge)
            self.bronchi.append(seg)
        lung &= frac < 0.5

    def _vessels(self, hu, lung):
        """Branching vessel trees from each hilum, drawn inside the lungs only."""
        s, rng = self.s, self.rng
        inside = np.zeros(hu.shape, dtype=np.float32)
        for side, cx, cy, ax, ay, dome in self.lungs:
            for tree in range(6):
                root = np.array([self.bx + side * 38 * s, cy + rng.uniform(-25, 25) * s,
                                 self.z_carina - 25 * s + rng.uniform(-25, 25) * s])
                direction = np.array([side * 0.8, rng.uniform(-0.9, 0.9), rng.uniform(-1.3, 1.3)])
                self._grow(root, direction / np.linalg.norm(direction), 3.6 * s * rng.uniform(0.85, 1.1),
                           24 * s, 0)
        before = hu.copy()
        for seg in self.segments:
            render_capsule(hu, inside, self.grid, seg, BLOOD_HU, self.edge, margin=1.5)
        # vessels exist in the lungs; in the mediastinum they merge with soft tissue anyway
        keep = lung | (inside == 0)
        hu[~keep] = before[~keep]

    def _grow(self, p0, direction, radius, length, gen):
        rng = self.rng
        if gen > self.params.vessel_depth or radius < 0.45:
            return
        p1 = p0 + direction * length
        inside = self.lung_sdf(p1[0], p1[1], p1[2]) < -radius
        if gen > 0 and not inside:
            # shorten once towards the pleura instead of piercing it
            p1 = p0 + direction * length * 0.5
            if self.lung_sdf(p1[0], p1[1], p1[2]) >= -radius:
                return
        self.segments.append(Segment(tuple(p0), tuple(p1), float(radius)))
        for k, shrink in enumerate((0.8, 0.7)):
            axis = np.cross(direction, rng.standard_normal(3))
            axis /= np.linalg.norm(axis) + 1e-9
            angle = np.deg2rad(rng.uniform(20, 40)) * (1 if k == 0 else -1)
            # Rodrigues rotation of the parent direction
            d = (direction * np.cos(angle) + np.cross(axis, direction) * np.sin(angle)
                 + axis * (axis @ direction) * (1 - np.cos(angle)))
            self._grow(p1, d / np.linalg.norm(d), radius * shrink, length * rng.uniform(0.75, 0.9), gen + 1)
