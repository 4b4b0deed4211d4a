"""Nodules of the phantom: sizes from LUNA16, kinds, shapes and locations."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .phantom_base import KINDS, LOCATIONS, SHAPES, Nodule, random_rotation, smoothstep_inside

#: Quantiles (0, 5, ..., 100 %) of the 1,186 nodule diameters (mm) in LUNA16's
#: annotations.csv (Setio et al. 2017, from LIDC-IDRI, CC BY 3.0).
LUNA16_DIAMETER_QUANTILES_MM = np.array([
    3.25, 4.09, 4.4, 4.67, 4.9, 5.11, 5.31, 5.63, 5.9, 6.17, 6.43,
    6.87, 7.3, 7.92, 8.72, 9.7, 11.07, 12.86, 15.48, 18.95, 32.27])


def draw_diameter_mm(rng, lo: float = 3.0, hi: float = 30.0) -> float:
    """Inverse-CDF draw from LUNA16's diameter quantiles, clipped to [lo, hi]."""
    u = rng.uniform(0, 1)
    d = float(np.interp(u, np.linspace(0, 1, len(LUNA16_DIAMETER_QUANTILES_MM)), LUNA16_DIAMETER_QUANTILES_MM))
    return float(np.clip(d, lo, hi))


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
        rot = random_rotation(rng)
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
    f = smoothstep_inside(dist - radius, edge_mm).astype(np.float32)
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
        fc = smoothstep_inside(dist - core_r, edge_mm).astype(np.float32)
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


# -- the wide and held-out generators (GeneratorConfig) ---------------------------------------------
# The default generator above is left exactly as it was; what follows draws only for the variants.

def _allowed_shapes(kind: str, d: float) -> np.ndarray:
    """Which of SHAPES a lesion of this kind and diameter may take: spicules and cavities only in solid
    and part-solid lesions, cavities (a 1.5 mm wall at least) from 6 mm."""
    ok = np.ones(len(SHAPES), bool)
    if kind not in ("solid", "part_solid"):
        ok[SHAPES.index("spiculated")] = False
        ok[SHAPES.index("cavitary")] = False
    if d < 6.0:
        ok[SHAPES.index("cavitary")] = False
    return ok


def draw_lesion(rng, cfg, params) -> tuple[float, str, str, str]:
    """Diameter (mm), kind, shape and location of one lesion of a variant generator."""
    lo, hi = params.min_nodule_mm, params.max_nodule_mm
    if cfg.family == "heldout":  # log-normal around 8 mm
        d = float(np.exp(rng.normal(np.log(8.0), 0.6)))
        for _ in range(20):
            if lo <= d <= hi:
                break
            d = float(np.exp(rng.normal(np.log(8.0), 0.6)))
        d = float(np.clip(d, lo, hi))
    elif rng.uniform() < cfg.size_mix:
        d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    else:
        d = draw_diameter_mm(rng, lo, hi)
    kind = KINDS[rng.choice(len(KINDS), p=cfg.kind_p)]
    p = np.asarray(cfg.shape_p, float) * _allowed_shapes(kind, d)
    shape = SHAPES[rng.choice(len(SHAPES), p=p / p.sum())] if p.sum() > 0 else "round"
    loc = LOCATIONS[rng.choice(len(LOCATIONS), p=cfg.location_p)]
    return round(d, 2), kind, shape, loc


def lesion_hu(rng, cfg, kind: str, background_hu: float) -> tuple[float, float | None, float]:
    """(main HU, core HU or None, core radius share) of one lesion. Ground glass (and the ground-glass
    part of a part-solid lesion) is drawn in ``cfg.ground_glass_hu`` and kept at least 100 HU above the
    parenchyma around it (``background_hu``), so that every labelled lesion can be seen."""
    g_lo, g_hi = cfg.ground_glass_hu
    glass = float(np.clip(max(rng.uniform(g_lo, g_hi), min(background_hu, -780.0) + 100.0), g_lo, g_hi))
    if kind == "ground_glass":
        return glass, None, 0.0
    if kind == "part_solid":
        return glass, float(rng.uniform(-20, 60)), float(rng.uniform(0.3, 0.65))
    if kind == "calcified":
        if rng.uniform() < 0.25:  # wholly calcified (a granuloma)
            return float(rng.uniform(200, 900)), None, 0.0
        return float(rng.uniform(0, 60)), float(rng.uniform(250, 1000)), float(rng.uniform(0.3, 0.75))
    return float(rng.uniform(-30, 80)), None, 0.0


def _bumps(rng, dx, dy, dz, dist, count, k_lo, k_hi):
    """Sum of ``count`` random cosines over the direction from the centre (the lobulated margin)."""
    u = np.stack(np.broadcast_arrays(dx, dy, dz)) / np.maximum(dist, 1e-6)
    out = np.zeros(dist.shape)
    for _ in range(count):
        k = rng.standard_normal(3)
        k *= rng.uniform(k_lo, k_hi) / np.linalg.norm(k)
        out += np.cos(k[0] * u[0] + k[1] * u[1] + k[2] * u[2] + rng.uniform(0, 2 * np.pi))
    return out / np.sqrt(count / 2.0)  # unit std


def _segment_distance(dx, dy, dz, a, b, radius):
    """Signed distance (mm) to a capsule from ``a`` to ``b`` (offsets from the lesion centre)."""
    u = b - a
    t = np.clip(((dx - a[0]) * u[0] + (dy - a[1]) * u[1] + (dz - a[2]) * u[2]) / max(float(u @ u), 1e-9), 0, 1)
    return np.sqrt((dx - a[0] - t * u[0]) ** 2 + (dy - a[1] - t * u[1]) ** 2 + (dz - a[2] - t * u[2]) ** 2) - radius


def _wide_distance(rng, dx, dy, dz, r, shape):
    """Signed distance (mm, negative inside) of a training-family lesion of radius ``r`` mm centred at
    the origin of the offsets ``dx, dy, dz`` (mm), and the cavity's (or None)."""
    dist = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
    cavity = None
    if shape == "ellipsoid":
        axes = rng.uniform(0.6, 1.5, 3)
        axes /= np.prod(axes) ** (1 / 3)  # the sphere's volume: size stays information
        rot = random_rotation(rng)
        u = [(rot[0, i] * dx + rot[1, i] * dy + rot[2, i] * dz) / axes[i] for i in range(3)]
        return np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) - r, None
    if shape == "lobulated":
        return dist - r * (1.0 + rng.uniform(0.07, 0.14) * _bumps(rng, dx, dy, dz, dist, 5, 2.5, 4.0)), None
    if shape == "irregular":
        aniso = rng.uniform(0.75, 1.3, 3)
        aniso /= np.prod(aniso) ** (1 / 3)
        d2 = np.sqrt((dx / aniso[0]) ** 2 + (dy / aniso[1]) ** 2 + (dz / aniso[2]) ** 2)
        wobble = 0.6 * _bumps(rng, dx, dy, dz, dist, 4, 2.0, 3.5) + 0.4 * _bumps(rng, dx, dy, dz, dist, 6, 5, 8)
        return d2 - r * (1.0 + rng.uniform(0.18, 0.3) * wobble), None
    if shape == "spiculated":
        core = 0.85 * r
        d = dist - core * (1.0 + 0.06 * _bumps(rng, dx, dy, dz, dist, 4, 2.5, 4.0))
        for _ in range(int(rng.integers(6, 15))):
            v = rng.standard_normal(3)
            v /= np.linalg.norm(v)
            length = min(rng.uniform(0.4, 1.2) * r, 12.0)
            d = np.minimum(d, _segment_distance(dx, dy, dz, v * 0.7 * core, v * (core + length),
                                                rng.uniform(0.35, 0.8)))
        return d, None
    if shape == "cavitary":
        rc = rng.uniform(0.3, 0.6) * r
        room = max(r - rc - 1.5, 0.0)
        off = rng.standard_normal(3)
        off *= rng.uniform(0, min(0.3 * r, room)) / np.linalg.norm(off)
        cavity = np.sqrt((dx - off[0]) ** 2 + (dy - off[1]) ** 2 + (dz - off[2]) ** 2) - min(rc, r - 1.5)
        return dist - r * (1.0 + 0.05 * _bumps(rng, dx, dy, dz, dist, 4, 2.5, 4.0)), cavity
    return dist - r, None


class HeldoutShape:
    """The held-out generator's lesion shape model, in units of the lesion's radius.

    ``round`` / ``ellipsoid``: a superellipsoid (|u/a|^p summed, exponent 1.7-2.6 / 1.4-4). The others
    are sums of Gaussian blobs, G(u) = sum a_i exp(-|u - c_i|^2 / 2 s_i^2), cut at G = 0.5 after adding
    fractal noise (fBm: 5 octaves of random plane waves, amplitude halving per octave) to G: a central
    blob plus 3-5 lobes (``lobulated``), 6-10 small off-centre blobs with a rough margin
    (``irregular``), chains of shrinking blobs along 6-12 rays (``spiculated``), or lobes around an air
    cavity that is its own Gaussian cut at 0.5 (``cavitary``). The model is rescaled so that the
    volume inside equals the sphere of the drawn diameter.
    """

    LEVEL = 0.5

    def __init__(self, rng, shape: str):
        self.shape = shape
        self.rot = random_rotation(rng)
        if shape in ("round", "ellipsoid"):
            self.p = rng.uniform(1.7, 2.6) if shape == "round" else rng.uniform(1.4, 4.0)
            axes = 1 + rng.uniform(-0.08, 0.08, 3) if shape == "round" else rng.uniform(0.6, 1.6, 3)
            self.axes = axes / np.prod(axes) ** (1 / 3)
        else:
            self._blobs(rng, shape)
        self.rho = 1.0
        self.rho = self._equivalent_radius()

    def _blobs(self, rng, shape):
        def ray(n):
            v = rng.standard_normal((n, 3))
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        c, s, a = [np.zeros(3)], [rng.uniform(0.55, 0.7)], [1.0]
        if shape in ("lobulated", "cavitary"):
            n = int(rng.integers(3, 6))
            c += list(ray(n) * rng.uniform(0.35, 0.6, (n, 1)))
            s += list(rng.uniform(0.35, 0.5, n))
            a += list(rng.uniform(0.6, 1.0, n))
        elif shape == "irregular":
            n = int(rng.integers(6, 11))
            c += list(ray(n) * rng.uniform(0.3, 0.95, (n, 1)))
            s += list(rng.uniform(0.18, 0.4, n))
            a += list(rng.uniform(0.5, 1.0, n))
        else:  # spiculated: chains of shrinking blobs along rays
            for v in ray(int(rng.integers(6, 13))):
                m = int(rng.integers(5, 9))
                for t, sig in zip(np.linspace(0.7, rng.uniform(1.4, 2.0), m), np.linspace(0.12, 0.05, m)):
                    c.append(v * t)
                    s.append(sig)
                    a.append(0.9)
        self.c, self.s, self.a = np.array(c), np.array(s), np.array(a)
        self.fbm_amp = {"lobulated": 0.06, "cavitary": 0.06, "irregular": 0.22}.get(shape, 0.1)
        k = rng.standard_normal((15, 3))
        octave = np.repeat(np.arange(5), 3)
        self.k = k / np.linalg.norm(k, axis=1, keepdims=True) * (rng.uniform(2.5, 3.5) * 2.0 ** octave)[:, None]
        self.w = 0.5 ** octave / np.sqrt(np.sum(0.25 ** octave) / 2)  # unit std
        self.phase = rng.uniform(0, 2 * np.pi, 15)
        if shape == "cavitary":
            off = ray(1)[0] * rng.uniform(0, 0.2)
            self.cavity = (off, rng.uniform(0.3, 0.45))

    def _field(self, u):
        """G + fBm at normalised offsets ``u`` (3, ...) -> (signed distance in radii, depth in [0, 1])."""
        if self.shape in ("round", "ellipsoid"):
            f = sum(np.abs(u[i] / self.axes[i]) ** self.p for i in range(3)) ** (1 / self.p)
            return (f - 1.0) * float(self.axes.min()), np.clip(1.0 - f, 0.0, 1.0)
        g = np.zeros(u.shape[1:])
        for ci, si, ai in zip(self.c, self.s, self.a):
            g += ai * np.exp(-((u[0] - ci[0]) ** 2 + (u[1] - ci[1]) ** 2 + (u[2] - ci[2]) ** 2) / (2 * si * si))
        fbm = sum(wi * np.cos(ki[0] * u[0] + ki[1] * u[1] + ki[2] * u[2] + ph)
                  for ki, wi, ph in zip(self.k, self.w, self.phase))
        g = g + self.fbm_amp * self.LEVEL * fbm
        slope = self.LEVEL * 1.1774 / self.s[0]  # |grad G| at the cut of the central blob, per radius
        return (self.LEVEL - g) / slope, np.clip((g - self.LEVEL) / (1.0 - self.LEVEL), 0.0, 1.0)

    def _equivalent_radius(self) -> float:
        n = 40
        t = np.linspace(-2.2, 2.2, n)
        u = np.stack(np.meshgrid(t, t, t, indexing="ij"))
        inside = self._field(u)[0] < 0
        vol = inside.sum() * (t[1] - t[0]) ** 3
        return float(max((3 * vol / (4 * np.pi)) ** (1 / 3), 0.2))

    def evaluate(self, offsets, r_mm: float, warp=None):
        """At world offsets (3, ...) mm from the centre, for a lesion of volume-equivalent radius
        ``r_mm``: (signed distance mm, negative inside; depth 0 at the margin to 1 at the core;
        cavity signed distance mm or None). ``warp``: an optional 3x3 map applied to the offsets."""
        unit = r_mm / self.rho
        if warp is not None:
            offsets = np.einsum("ij,j...->i...", warp, offsets)
        u = np.einsum("ji,j...->i...", self.rot, offsets) / unit
        sd, depth = self._field(u)
        cav = None
        if self.shape == "cavitary":
            off, sig = self.cavity
            gc = np.exp(-((u[0] - off[0]) ** 2 + (u[1] - off[1]) ** 2 + (u[2] - off[2]) ** 2) / (2 * sig * sig))
            cav = (self.LEVEL - gc) / (self.LEVEL * 1.1774 / sig) * unit
        return sd * unit, depth, cav


@dataclass(frozen=True, eq=False)
class LesionShape:
    """One variant lesion's drawn shape, to evaluate again at any points (the truth a measurement of
    the lesion is compared with). ``center_xyz_mm``; ``radius_mm``: half the drawn diameter;
    ``reach_mm``: the half-width of the box it was drawn in (nothing of it lies beyond). The draws:
    ``rng_state`` (wide: the stream's state before the shape's draws, replayed), ``model`` (held-out:
    its `HeldoutShape`) and ``warp``; ``core_share`` (None without a core) and ``core_offset_mm``
    (wide: the core's centre, x, y, z offsets); ``lung_sdf``: the lungs' signed distance."""
    center_xyz_mm: tuple[float, float, float]
    radius_mm: float
    shape: str
    reach_mm: float
    rng_state: dict | None = None
    model: HeldoutShape | None = None
    warp: np.ndarray | None = None
    core_share: float | None = None
    core_offset_mm: np.ndarray | None = None
    lung_sdf: object = None     # `Anatomy.lung_sdf` (x, y, z mm -> mm): a part beyond it lies in the wall's place

    def signed_distances(self, dx, dy, dz):
        """At offsets ``dx, dy, dz`` (mm from the centre, broadcastable float arrays): (the lesion's
        signed distance mm, negative inside; the core's or None; the cavity's or None): the surfaces
        where the renderer's occupancy is one half."""
        r = self.radius_mm
        if self.model is not None:
            sd, depth, cavity = self.model.evaluate(np.stack(np.broadcast_arrays(dx, dy, dz)), r, self.warp)
            return sd, None if self.core_share is None else (1.0 - self.core_share - depth) * r, cavity
        rng = np.random.Generator(getattr(np.random, self.rng_state["bit_generator"])())
        rng.bit_generator.state = self.rng_state
        sd, cavity = _wide_distance(rng, dx, dy, dz, r, self.shape)
        core = None
        if self.core_share is not None:
            o = self.core_offset_mm
            core = np.sqrt((dx - o[0]) ** 2 + (dy - o[1]) ** 2 + (dz - o[2]) ** 2) - self.core_share * r
        return sd, core, cavity


def render_lesion(hu, grid, center, d, kind, shape, rng, edge_mm, cfg, values, warp=None, *, shapes=None):
    """Draw one variant lesion into ``hu`` (float32, in place). ``values``: `lesion_hu`'s triple.
    Returns (box, fraction inside (float32, the box's shape)) for the true lung mask. ``shapes``: a
    list that gets the lesion's `LesionShape` (None when it was not drawn); the draws are unchanged."""
    r = d / 2.0
    c = np.asarray(center, float)
    reach = (2.2 if shape == "spiculated" else 1.6) * r + 2.0
    box = grid.box(c - reach, c + reach)
    if any(sl.stop <= sl.start for sl in box):
        if shapes is not None:
            shapes.append(None)
        return None, None
    z, y, x = grid.coords(box)
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    main, core, core_share = values
    model = state = off = None
    if cfg.family == "heldout":
        model = HeldoutShape(rng, shape)
        offsets = np.stack(np.broadcast_arrays(dx, dy, dz))
        sd, depth, cavity = model.evaluate(offsets, r, warp)
        # denser towards the core: the margin fades by up to 25 % of the lesion's contrast to lung
        fade = rng.uniform(0.1, 0.25) * (main + 850.0)
        value = (main - fade * (1.0 - np.sqrt(depth))).astype(np.float32)
        core_sd = (1.0 - core_share - depth) * r if core is not None else None
    else:
        state = rng.bit_generator.state   # a copy: the shape's draws, to replay for `LesionShape`
        sd, cavity = _wide_distance(rng, dx, dy, dz, r, shape)
        value = np.float32(main)
        if core is not None:
            off = rng.standard_normal(3)
            off *= rng.uniform(0, 0.25) * r / np.linalg.norm(off)
            core_sd = np.sqrt((dx - off[0]) ** 2 + (dy - off[1]) ** 2 + (dz - off[2]) ** 2) - core_share * r
    if shapes is not None:
        shapes.append(LesionShape(tuple(float(v) for v in c), r, shape, reach, state, model, warp,
                                  None if core is None else float(core_share), off))
    f = smoothstep_inside(sd, edge_mm).astype(np.float32)
    sub = hu[box]
    np.maximum(sub, sub + f * (value - sub), out=sub)
    if core is not None:
        fc = smoothstep_inside(core_sd, edge_mm).astype(np.float32)
        np.maximum(sub, sub + fc * (np.float32(core) - sub), out=sub)
    if cavity is not None:  # air inside the wall
        fa = smoothstep_inside(cavity, edge_mm).astype(np.float32) * f
        sub += fa * (np.float32(-1000.0) - sub)
    return box, f


def _outward_normal(anat, p, h: float = 0.5) -> np.ndarray:
    g = np.array([anat.lung_sdf(*(p + h * e)) - anat.lung_sdf(*(p - h * e)) for e in np.eye(3)], float)
    return g / (np.linalg.norm(g) + 1e-9)


def _on_grid(grid, c, margin_mm: float) -> bool:
    lo = np.array([grid.x[0], grid.y[0], grid.z[0]]) + margin_mm
    hi = np.array([grid.x[-1], grid.y[-1], grid.z[-1]]) - margin_mm
    return bool(np.all(c >= lo) and np.all(c <= hi))


def _choose_center_variant(rng, grid, lung, anat, r, kind, location, placed, cfg):
    """Centre (xyz mm), location and warp (3x3 or None) of one variant lesion; (None, location, None)
    when there is no room. Juxta-pleural centres sit at a drawn depth from the pleura, from 0.7 radii
    inside the lung to 0.15 radii inside the wall (solid lesions: part of the lesion takes the wall's
    place; ground glass stays in the lung); juxta-vascular lesions touch their vessel (wide) or engulf
    it (held-out)."""
    heldout = cfg.family == "heldout"

    def free(p):
        return all(np.linalg.norm(p - np.asarray(q.center_xyz_mm)) > r + q.diameter_mm / 2 + 4 for q in placed)

    if location == "juxta_vascular":
        segs = [s for s in anat.segments if s.radius_mm >= (0.8 if heldout else 1.0) and s.radius_mm < 0.6 * r + 1.0]
        for _ in range(80 if segs else 0):
            s = segs[rng.integers(len(segs))]
            p0, p1 = np.asarray(s.p0), np.asarray(s.p1)
            axis = p1 - p0
            perp = np.cross(axis, rng.standard_normal(3))
            perp /= np.linalg.norm(perp) + 1e-9
            gap = rng.uniform(0.0, 0.4) * r if heldout else r + 0.3 * s.radius_mm
            c = p0 + rng.uniform(0.2, 0.8) * axis + perp * gap
            if anat.lung_sdf(*c) < -(r + 2) and free(c) and _on_grid(grid, c, r):
                return c, location, None
        location = "isolated"
    pts = _sample_lung_points(rng, lung, grid, 400)
    if len(pts) == 0:
        return None, location, None
    sdf = anat.lung_sdf(pts[:, 0], pts[:, 1], pts[:, 2])
    if location == "juxta_pleural":
        glass = kind == "ground_glass"
        for i in rng.permutation(np.flatnonzero((sdf > -(r + 5)) & (sdf < -0.3 * r)))[:60]:
            depth = rng.uniform(-0.85, -0.45) if glass else rng.uniform(-0.7, 0.15) if not heldout \
                else rng.uniform(-0.6, 0.1)
            c = pts[i].astype(float)
            for _ in range(4):  # Newton steps along the outward normal to the drawn depth
                n = _outward_normal(anat, c)
                c = c - (anat.lung_sdf(*c) - depth * r) * n
            if abs(anat.lung_sdf(*c) - depth * r) > 0.5 or not free(c) or not _on_grid(grid, c, 0.5 * r):
                continue
            warp = None
            if heldout:  # flattened against the wall: squeezed along the normal, volume kept
                k = rng.uniform(0.6, 0.8)
                warp = np.sqrt(k) * np.eye(3) + (1 / k - np.sqrt(k)) * np.outer(n, n)
            return c, location, warp
        return None, location, None
    for i in rng.permutation(np.flatnonzero(sdf < -(r + 3))):
        if free(pts[i]):
            return pts[i], location, None
    return None, location, None


def place_findings_variant(rng, grid, hu, lung, anat, params, cfg, *, shapes=None):
    """`place_findings` for the wide and held-out generators: nodules (>= 3 mm), excluded findings
    (< 3 mm, classic solid spheres) and one record per nodule (its HU and depth) for ``meta``. The
    lesions' voxels are added to the true lung mask ``lung`` (in place), wall-attached parts too.
    ``shapes``: a list that gets one `LesionShape` per nodule (see `render_lesion`)."""
    if params.n_nodules is None:
        lo, hi = cfg.nodules_per_scan
        n = 0 if rng.uniform() < cfg.nodule_free_p else int(rng.integers(lo, hi + 1))
    else:
        n = params.n_nodules
    n_exc = int(rng.integers(0, 3)) if params.n_excluded is None else params.n_excluded
    nodules, excluded, records = [], [], []
    inside = np.zeros(lung.shape, bool)
    for i in range(n + n_exc):
        if i >= n:
            d = float(rng.uniform(1.5, 2.9))
            c, _ = _choose_center(rng, grid, lung, anat, d / 2, "isolated", nodules + excluded)
            if c is not None:
                render_nodule(hu, grid, c, d, "solid", "round", rng, anat.edge)
                excluded.append(Nodule(tuple(float(v) for v in c), round(d, 2), "solid", "round", "isolated"))
            continue
        d, kind, shape, loc = draw_lesion(rng, cfg, params)
        c, loc, warp = _choose_center_variant(rng, grid, lung, anat, d / 2, kind, loc, nodules + excluded, cfg)
        if c is None:
            continue
        k = np.clip(grid.index_of(c), 0, np.array(grid.shape) - 1)
        around = hu[max(k[0] - 1, 0):k[0] + 2, max(k[1] - 1, 0):k[1] + 2, max(k[2] - 1, 0):k[2] + 2]
        values = lesion_hu(rng, cfg, kind, float(np.median(around)))
        box, f = render_lesion(hu, grid, c, d, kind, shape, rng, anat.edge, cfg, values, warp, shapes=shapes)
        if shapes and shapes[-1] is not None:
            shapes[-1] = replace(shapes[-1], lung_sdf=anat.lung_sdf)
        if box is not None:
            inside[box] |= f >= 0.5
        nodules.append(Nodule(tuple(float(v) for v in c), d, kind, shape, loc))
        records.append({"center_xyz_mm": [round(float(v), 3) for v in c], "diameter_mm": d, "kind": kind,
                        "shape": shape, "location": loc, "hu": round(values[0], 1),
                        "core_hu": None if values[1] is None else round(values[1], 1),
                        "pleural_depth_mm": round(float(anat.lung_sdf(*c)), 2)})
    lung |= inside
    return nodules, excluded, records
