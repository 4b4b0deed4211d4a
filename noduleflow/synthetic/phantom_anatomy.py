"""Chest anatomy of the phantom, in world mm: body, bones, mediastinum, airways, lungs, vessels.

The lungs are a closed-form signed-distance function (`Anatomy.lung_sdf`), evaluated
slice by slice for rendering and at arbitrary points for placing lesions, so the two
always agree. Tubes (airways, vessel trees) are capsules rendered inside their own
bounding boxes only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom_base import BLOOD_HU, BONE_HU, FAT_HU, LUNG_HU, MUSCLE_HU, SOFT_HU, blur3, smoothstep_inside


@dataclass(frozen=True)
class AnatomyStyle:
    """The anatomy's shape knobs. The defaults are the default generator's constants (multiplying by
    1.0 and adding 0.0 are exact, so the default phantom is unchanged); `draw_anatomy_style` draws
    them for the wide and held-out generators."""

    lung_hu: float = LUNG_HU               # parenchyma
    gravity_hu: float = 45.0               # dependent (posterior) lung denser by up to this
    texture_mm: float = 6.0                # grain of the parenchymal texture
    texture_hu: float = 25.0               # its std
    body_x: float = 1.0                    # factors on the body's half-axes
    body_y: float = 1.0
    fat: float = 1.0                       # factor on the subcutaneous fat thickness
    lung_x: float = 1.0                    # factors on the lungs' half-axes
    lung_y: float = 1.0
    dome: float = 1.0                      # factor on the diaphragm dome's height
    base_shift: float = 0.0                # lung base raised by this share of the scan length
    superellipse: float = 2.0              # exponent of the lungs' and body's cross-section (2: ellipse)
    vessel_trees: int = 6                  # per lung
    vessel_radius_mm: float = 3.6          # root radius (x patient scale)
    vessel_segment_mm: float = 24.0        # root segment length (x patient scale)
    vessel_depth: int | None = None        # None: PhantomParams.vessel_depth
    branch_angle_deg: tuple[float, float] = (20.0, 40.0)
    shrink: tuple[float, float] = (0.8, 0.7)          # children's radius factors
    length_decay: tuple[float, float] = (0.75, 0.9)   # children's length factor range
    trifurcation_p: float = 0.0            # P(a third child), generations 0-3
    tortuosity: float = 0.0                # kink of a segment's midpoint, share of its length (generations 0-4)
    airways: str = "none"                  # "none", "paired" (bronchus beside artery) or "tree"
    airway_share: float = 0.0              # paired: share of vessel segments (radius 1-3.5 mm) with a bronchus
    airway_depth: int = 0                  # tree: generations


def draw_anatomy_style(rng, family: str) -> AnatomyStyle:
    """An `AnatomyStyle` for the ``"wide"`` or ``"heldout"`` generator family (see
    `phantom_base.HELDOUT` for how the held-out anatomy differs)."""
    u = rng.uniform
    if family == "wide":
        return AnatomyStyle(
            lung_hu=u(-900, -840), gravity_hu=u(15, 60), texture_mm=u(4.5, 8.0), texture_hu=u(12, 35),
            body_x=u(0.92, 1.06), body_y=u(0.9, 1.08), fat=u(0.4, 1.8), lung_x=u(0.92, 1.05),
            lung_y=u(0.92, 1.04), dome=u(0.7, 1.25), vessel_trees=int(rng.integers(4, 9)),
            vessel_radius_mm=u(3.0, 4.2), vessel_segment_mm=u(20, 28), vessel_depth=int(rng.integers(6, 10)),
            branch_angle_deg=(u(15, 22), u(35, 50)), shrink=(u(0.75, 0.85), u(0.62, 0.75)),
            length_decay=(0.72, 0.92), airways="paired", airway_share=u(0.1, 0.5))
    return AnatomyStyle(
        lung_hu=u(-910, -850), gravity_hu=u(20, 50), texture_mm=u(3.0, 4.0), texture_hu=u(15, 28),
        body_x=u(0.95, 1.05), body_y=u(0.95, 1.1), fat=u(0.6, 1.6), lung_x=u(0.9, 0.98), lung_y=u(0.88, 0.96),
        dome=u(0.5, 0.75), base_shift=u(0.02, 0.06), superellipse=u(2.4, 3.2), vessel_trees=int(rng.integers(5, 8)),
        vessel_radius_mm=u(3.2, 4.0), vessel_segment_mm=u(16, 22), vessel_depth=int(rng.integers(7, 9)),
        branch_angle_deg=(12.0, 28.0) if u() < 0.5 else (30.0, 55.0), shrink=(u(0.68, 0.82), u(0.55, 0.7)),
        length_decay=(0.7, 0.95), trifurcation_p=0.3, tortuosity=u(0.08, 0.2), airways="tree",
        airway_depth=int(rng.integers(3, 6)))


@dataclass(frozen=True)
class Segment:
    p0: tuple[float, float, float]  # world xyz mm
    p1: tuple[float, float, float]
    radius_mm: float


def _ellipse_dist(x, y, cx, cy, ax, ay, p: float = 2.0):
    """Approximate signed distance (mm) to an axis-aligned ellipse (negative inside); with ``p`` != 2
    to a superellipse |u|^p + |v|^p = 1 (boxier for p > 2)."""
    if p == 2.0:
        r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    else:
        r = (np.abs((x - cx) / ax) ** p + np.abs((y - cy) / ay) ** p) ** (1.0 / p)
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
    f = smoothstep_inside(d, edge_mm).astype(np.float32)
    sub = hu[box]
    sub += f * (np.float32(value) - sub)
    if frac_out is not None:
        np.maximum(frac_out[box], f, out=frac_out[box])
    return box


class Anatomy:
    """Draws the anatomy of one phantom; keeps what lesion placement needs."""

    def __init__(self, rng, grid, scale, z0, z_top, params, style: AnatomyStyle | None = None):
        self.rng, self.grid, self.s, self.params = rng, grid, scale, params
        self.style = st = style or AnatomyStyle()
        s = scale
        g = grid
        nz, ny, nx = g.shape
        self.bx = float(g.origin[0] + (nx - 1) / 2 * g.spacing[2]) + float(rng.uniform(-8, 8)) * s
        self.by = float(g.origin[1] + (ny - 1) / 2 * g.spacing[1]) - 10 * s
        self.body_ax = 165 * s * rng.uniform(0.92, 1.05) * st.body_x
        self.body_ay = 115 * s * rng.uniform(0.9, 1.05) * st.body_y
        span = z_top - z0
        self.z_apex = z_top - span * rng.uniform(0.03, 0.10)
        self.z_base = z0 + span * rng.uniform(0.12, 0.22) + span * st.base_shift
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
            ax = (62 if touch else 54) / 165.0 * self.body_ax * rng.uniform(0.95, 1.05) * st.lung_x
            ay = 0.62 * self.body_ay * rng.uniform(0.95, 1.0) * st.lung_y
            self.lungs.append((side, cx, self.by + 6 * s, ax, ay, 38 * s * rng.uniform(0.8, 1.2) * st.dome))
        self.heart = (self.bx + 22 * s, self.by - 22 * s, self.z_base + 0.22 * self.h,
                      62 * s, 52 * s, 0.26 * self.h)
        self.spine = (self.bx, self.by + self.body_ay - 42 * s, 17 * s)
        self.aorta = (self.bx + 22 * s, self.by + self.body_ay - 62 * s, 11 * s)
        self.trachea = (self.bx, self.by + 25 * s, 8.5 * s)
        self.segments: list[Segment] = []
        self.bronchi: list[Segment] = []
        self.airways: list[Segment] = []   # intrapulmonary bronchi (wide and held-out generators)

    # -- lungs ------------------------------------------------------------------
    def lung_sdf(self, x, y, z):
        """Signed distance (mm, negative inside) to the lungs' surface, including the
        carving by mediastinum, heart, spine and aorta. Broadcasts over arrays."""
        s = self.s
        t = (z - self.z_base) / self.h
        d_all = None
        for _side, cx, cy, ax, ay, dome in self.lungs:
            # taper: full width in the lower half, a dome towards the apex
            w = np.sqrt(np.clip(1.0 - np.clip((t - 0.35) / 0.65, 0, None) ** 2, 1e-4, 1.0))
            d = _ellipse_dist(x, y, cx, cy, ax * w, ay * (0.55 + 0.45 * w), self.style.superellipse)
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
        st = self.style
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
            d_body = _ellipse_dist(X, Y, self.bx, self.by, ax, ay, st.superellipse)
            # table: a curved slab under the patient's back
            d_tab = np.abs(Y - (self.by + ay + 14 * s + 0.0004 * (X - self.bx) ** 2)) - 5 * s
            sl[:] = -1000.0
            sl += smoothstep_inside(d_tab, self.edge) * (250.0 + 1000.0) * (np.abs(X - self.bx) < 200 * s)
            fat = 14 * s * st.fat
            body = smoothstep_inside(d_body, self.edge)
            muscle = smoothstep_inside(d_body + fat, self.edge)
            inner = smoothstep_inside(d_body + fat + 16 * s, self.edge)
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
            f = smoothstep_inside(d_l, self.edge)
            grav = st.gravity_hu * np.clip((Y - self.by) / (90 * s), -1, 1)  # dependent lung is denser
            lung_val = st.lung_hu + grav + tex[k]
            sl[:] = sl * (1 - f) + lung_val * f
            lung[k] = f >= 0.5
            # trachea above the carina: air lumen in a soft-tissue wall
            if z > self.z_carina:
                tx, ty, tr = self.trachea
                d_t = np.sqrt((X - tx) ** 2 + (Y - ty) ** 2) - tr
                ring = smoothstep_inside(d_t - 2.0 * s, self.edge)
                sl[:] = sl * (1 - ring) + SOFT_HU * ring
                lum = smoothstep_inside(d_t, self.edge)
                sl[:] = sl * (1 - lum) - 1000.0 * lum
                lung[k] &= d_t > 0
        self._airways(hu, lung)
        self._vessels(hu, lung)
        if st.airways != "none":
            self._bronchioles(hu, lung)
        return hu, lung

    def _texture(self, rng):
        g = self.grid
        step = np.maximum(np.round(self.style.texture_mm / g.spacing).astype(int), 1)
        coarse = rng.standard_normal(tuple(int(np.ceil(n / st)) + 1 for n, st in zip(g.shape, step)))
        tex = coarse.astype(np.float32)
        for ax, st in enumerate(step):
            tex = np.repeat(tex, st, axis=ax)
        tex = np.ascontiguousarray(tex[: g.shape[0], : g.shape[1], : g.shape[2]])
        for _ in range(2):
            blur3(tex)
        return tex * np.float32(self.style.texture_hu / max(float(tex.std()), 1e-3))

    def _airways(self, hu, lung):
        """Main bronchi from the carina to each hilum: air, excluded from the true lung mask."""
        s = self.s
        tx, ty, tr = self.trachea
        carina = (tx, ty, self.z_carina)
        frac = np.zeros(hu.shape, dtype=np.float32)
        for side, *_ in self.lungs:
            hilum = (self.bx + side * 42 * s, ty + 5 * s, self.z_carina - 22 * s)
            seg = Segment(carina, hilum, 6.0 * s)
            wall = Segment(carina, hilum, 8.0 * s)
            render_capsule(hu, None, self.grid, wall, SOFT_HU, self.edge)
            render_capsule(hu, frac, self.grid, seg, -1000.0, self.edge)
            self.bronchi.append(seg)
        lung &= frac < 0.5

    def _vessels(self, hu, lung):
        """Branching vessel trees from each hilum, drawn inside the lungs only."""
        s, rng, st = self.s, self.rng, self.style
        inside = np.zeros(hu.shape, dtype=np.float32)
        for side, _cx, cy, *_ in self.lungs:
            for _tree in range(st.vessel_trees):
                root = np.array([self.bx + side * 38 * s, cy + rng.uniform(-25, 25) * s,
                                 self.z_carina - 25 * s + rng.uniform(-25, 25) * s])
                direction = np.array([side * 0.8, rng.uniform(-0.9, 0.9), rng.uniform(-1.3, 1.3)])
                self._grow(root, direction / np.linalg.norm(direction),
                           st.vessel_radius_mm * s * rng.uniform(0.85, 1.1), st.vessel_segment_mm * s, 0)
        before = hu.copy()
        for seg in self.segments:
            render_capsule(hu, inside, self.grid, seg, BLOOD_HU, self.edge, margin=1.5)
        # vessels exist in the lungs; in the mediastinum they merge with soft tissue anyway
        keep = lung | (inside == 0)
        hu[~keep] = before[~keep]

    def _grow(self, p0, direction, radius, length, gen):
        rng, st = self.rng, self.style
        depth = self.params.vessel_depth if st.vessel_depth is None else min(st.vessel_depth, self.params.vessel_depth)
        if gen > depth or radius < 0.45:
            return
        p1 = p0 + direction * length
        inside = self.lung_sdf(p1[0], p1[1], p1[2]) < -radius
        if gen > 0 and not inside:
            # shorten once towards the pleura instead of piercing it
            p1 = p0 + direction * length * 0.5
            if self.lung_sdf(p1[0], p1[1], p1[2]) >= -radius:
                return
        if st.tortuosity and gen < 5:  # a bent vessel: two segments through a displaced midpoint
            kink = np.cross(direction, rng.standard_normal(3))
            kink *= st.tortuosity * float(np.linalg.norm(p1 - p0)) / (np.linalg.norm(kink) + 1e-9)
            mid = 0.5 * (p0 + p1) + kink
            self.segments.append(Segment(tuple(p0), tuple(mid), float(radius)))
            self.segments.append(Segment(tuple(mid), tuple(p1), float(radius)))
        else:
            self.segments.append(Segment(tuple(p0), tuple(p1), float(radius)))
        children = [(0, st.shrink[0]), (1, st.shrink[1])]
        if st.trifurcation_p and gen < 4 and rng.uniform() < st.trifurcation_p:  # the larger vessels only
            children.append((2, 0.5 * (st.shrink[0] + st.shrink[1])))
        lo, hi = st.length_decay
        for k, shrink in children:
            axis = np.cross(direction, rng.standard_normal(3))
            axis /= np.linalg.norm(axis) + 1e-9
            angle = np.deg2rad(rng.uniform(*st.branch_angle_deg)) * (1 if k == 0 else -1)
            # Rodrigues rotation of the parent direction
            d = (direction * np.cos(angle) + np.cross(axis, direction) * np.sin(angle)
                 + axis * (axis @ direction) * (1 - np.cos(angle)))
            self._grow(p1, d / np.linalg.norm(d), radius * shrink, length * rng.uniform(lo, hi), gen + 1)

    def _bronchioles(self, hu, lung):
        """Intrapulmonary bronchi: a soft-tissue wall around air, drawn inside the lungs only (they
        stay in the true lung mask). ``paired``: a bronchus beside a share of the vessel segments
        (the bronchovascular bundle); ``tree``: its own tree grown from each main bronchus."""
        s, rng, st = self.s, self.rng, self.style
        if st.airways == "paired":
            for seg in self.segments:
                if not 1.0 <= seg.radius_mm <= 3.5 or rng.uniform() >= st.airway_share:
                    continue
                p0, p1 = np.asarray(seg.p0), np.asarray(seg.p1)
                perp = np.cross(p1 - p0, rng.standard_normal(3))
                perp /= np.linalg.norm(perp) + 1e-9
                lumen = seg.radius_mm * rng.uniform(0.55, 0.95)
                off = perp * (seg.radius_mm + lumen + 1.2)
                a, b = p0 + 0.1 * (p1 - p0) + off, p1 + off
                if self.lung_sdf(*a) < -(lumen + 3) and self.lung_sdf(*b) < -(lumen + 3):
                    self.airways.append(Segment(tuple(a), tuple(b), float(lumen)))
        else:
            for seg in self.bronchi:
                side = np.sign(seg.p1[0] - seg.p0[0]) or 1.0
                for _ in range(3):
                    direction = np.array([side * 0.7, rng.uniform(-0.8, 0.8), rng.uniform(-1.2, 1.2)])
                    self._grow_airway(np.asarray(seg.p1), direction / np.linalg.norm(direction),
                                      4.0 * s * rng.uniform(0.85, 1.1), 18 * s, 0)
        before = hu.copy()
        for seg in self.airways:
            wall = max(0.5, 0.2 * seg.radius_mm)
            render_capsule(hu, None, self.grid, Segment(seg.p0, seg.p1, seg.radius_mm + wall), SOFT_HU, self.edge)
            render_capsule(hu, None, self.grid, seg, -1000.0, self.edge)
        hu[~lung] = before[~lung]

    def _grow_airway(self, p0, direction, radius, length, gen):
        rng = self.rng
        if gen > self.style.airway_depth or radius < 0.6:
            return
        p1 = p0 + direction * length
        if self.lung_sdf(*p1) >= -(radius + 2):
            return
        self.airways.append(Segment(tuple(p0), tuple(p1), float(radius)))  # drawn inside the lungs only
        for sign in (1, -1):
            axis = np.cross(direction, rng.standard_normal(3))
            axis /= np.linalg.norm(axis) + 1e-9
            angle = np.deg2rad(rng.uniform(20, 45)) * sign
            d = (direction * np.cos(angle) + np.cross(axis, direction) * np.sin(angle)
                 + axis * (axis @ direction) * (1 - np.cos(angle)))
            self._grow_airway(p1, d / np.linalg.norm(d), radius * 0.75, length * rng.uniform(0.7, 0.9), gen + 1)
