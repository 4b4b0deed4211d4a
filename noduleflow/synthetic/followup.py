"""Synthetic follow-up pairs: one patient's chest at two time points, with a known motion and known
lesion changes, for benchmarking ``noduleflow follow`` (`noduleflow.bench.follow`).

    pair = make_pair(9000, shape_zyx=(100, 256, 256), spacing_zyx_mm=(2.0, 1.25, 1.25))
    prior_dir, current_dir = pair.save("pair/")         # DICOM series with their StudyDates
    pair.lesions                                          # the truth, one `PairLesion` per lesion

Both scans are the default phantom generator's lesion-free chest of the seed
(`phantom.default_scene`), rendered twice:

* **prior**: the chest as drawn, with the prior's lesions;
* **current**: the same chest moved, on the same scanner grid: the patient lies differently (a rigid
  shift of up to ``shift_mm`` and a rotation of up to ``rotation_deg`` about a random axis through
  the grid's centre) and breathes differently (a smooth displacement field, a sum of three plane
  sine waves of 150-300 mm wavelength, at most ``breathing_mm`` long anywhere); the chest is
  resampled through that map (cubic B-spline: a trilinear resampling blurs the vessels by about a
  fifth, and the detector then finds ground-glass look-alikes in the current scan only), then the
  current's lesions are drawn at their moved
  centres, unwarped, so that a lesion's volume is the drawn one whatever the breathing does to
  the tissue around it;
* each scan gets the default generator's blur and its own, independent noise (one noise level
  per pair), and a StudyDate ``interval_days`` apart.

Lesions (`FollowupParams`): 4-6 per pair, each ``stable`` (same drawn shape and volume), ``grown``
(volume x 1.25-2), ``shrunk`` (x 0.4-0.75), ``new`` (current only) or ``resolved`` (prior only), at
the rates of ``status_p``; solid, part-solid or ground-glass; round, ellipsoid or lobulated (the
default generator's lesion model, `phantom_lesions.render_nodule`, with the lesion's own random
stream, so that its shape and HU are the same at both time points and only its size changes);
isolated (in aerated lung), juxta-pleural (its surface keeps its depth into the wall as it
grows: the centre moves inwards) or juxta-vascular (it keeps touching its vessel: the centre
moves away from it). True volumes are those of the drawn spheres, pi d^3 / 6 (the shapes keep a
sphere's volume).

Synthetic pairs are a regression signal for the follow-up pipeline, not clinical evidence.
"""
from __future__ import annotations

import datetime
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy.ndimage import map_coordinates, spline_filter

from noduleflow.engine import ConfigError, Volume

from .phantom import PhantomParams, default_scene, scanner_default
from .phantom_base import LOCATIONS, random_rotation
from .phantom_lesions import render_nodule

log = logging.getLogger(__name__)

STATUSES = ("stable", "grown", "shrunk", "new", "resolved")
PERSISTENT = ("stable", "grown", "shrunk")
FOLLOWUP_KINDS = ("solid", "part_solid", "ground_glass")
FOLLOWUP_SHAPES = ("round", "ellipsoid", "lobulated")
STREAM = 0xF011          # the pair's own random streams: default_rng([seed, STREAM, ...])
FIRST_DATE = datetime.date(2023, 1, 2)
SLAB = 16                # slices resampled at a time (memory)


@dataclass(frozen=True)
class FollowupParams:
    """What a pair draws. Ranges are (low, high), uniform unless said. ``status_p``: over
    `STATUSES`; ``diameter_mm``: log-uniform, the prior's (grown, shrunk, stable, resolved) or the
    current's (new); ``grown_volume`` / ``shrunk_volume``: V_current / V_prior; ``kind_p`` over
    `FOLLOWUP_KINDS`, ``location_p`` over isolated, juxta-pleural, juxta-vascular; motion:
    ``shift_mm`` / ``rotation_deg`` (largest rigid shift and rotation), ``breathing_mm`` (largest
    displacement of the breathing field); ``interval_days``: integer days between the scans;
    ``noise_hu``: the pair's noise level (both scans)."""
    n_lesions: tuple[int, int] = (4, 6)
    status_p: tuple[float, ...] = (0.3, 0.3, 0.1, 0.15, 0.15)
    diameter_mm: tuple[float, float] = (5.0, 14.0)
    grown_volume: tuple[float, float] = (1.25, 2.0)
    shrunk_volume: tuple[float, float] = (0.4, 0.75)
    kind_p: tuple[float, ...] = (0.6, 0.15, 0.25)
    location_p: tuple[float, ...] = (0.5, 0.3, 0.2)
    shift_mm: float = 10.0
    rotation_deg: float = 3.0
    breathing_mm: float = 4.0
    interval_days: tuple[int, int] = (60, 400)
    noise_hu: tuple[float, float] = (15.0, 30.0)

    def __post_init__(self) -> None:
        for name, p, n in (("status_p", self.status_p, len(STATUSES)), ("kind_p", self.kind_p, len(FOLLOWUP_KINDS)),
                           ("location_p", self.location_p, len(LOCATIONS))):
            if len(p) != n or min(p) < 0 or abs(sum(p) - 1.0) > 1e-6:
                raise ConfigError(f"{name} must be {n} probabilities summing to 1, got {p}")
        checks = (("n_lesions", self.n_lesions, 1, 12), ("diameter_mm", self.diameter_mm, 3.0, 30.0),
                  ("grown_volume", self.grown_volume, 1.0, 8.0), ("shrunk_volume", self.shrunk_volume, 0.05, 1.0),
                  ("interval_days", self.interval_days, 1, 3650), ("noise_hu", self.noise_hu, 0.0, 100.0))
        for name, (lo, hi), a, b in checks:
            if not a <= lo <= hi <= b:
                raise ConfigError(f"{name} must be (low, high) with {a} <= low <= high <= {b}, got {(lo, hi)}")
        for name, v, hi in (("shift_mm", self.shift_mm, 50.0), ("rotation_deg", self.rotation_deg, 20.0),
                            ("breathing_mm", self.breathing_mm, 15.0)):
            if not 0.0 <= v <= hi:
                raise ConfigError(f"{name} must be in [0, {hi}], got {v}")


@dataclass(frozen=True, eq=False)
class Motion:
    """The map between the two scans' world frames (x, y, z mm, LPS). From the current scan to the
    prior: ``to_prior(q) = s + b(s)``, ``s = R^T (q - c - t) + c`` (undo the patient's rigid move:
    ``rotation`` R, about ``center_xyz_mm`` c, then ``translation_xyz_mm`` t) and ``b`` the breathing
    field, b(s) = sum_k a_k sin(2 pi k_k . (s - c) + phase_k) (``wave_vectors`` (K, 3) cycles/mm,
    ``wave_amplitudes`` (K, 3) mm, ``wave_phases`` (K,)): |b| <= sum_k |a_k| (`breathing_bound_mm`),
    and its derivative <= sum_k 2 pi |k_k| |a_k| (`gradient_bound`), well below 1, so the map is
    smooth and one to one; `to_current` inverts it by fixed-point iteration."""
    rotation: np.ndarray
    center_xyz_mm: np.ndarray
    translation_xyz_mm: np.ndarray
    wave_vectors: np.ndarray
    wave_amplitudes: np.ndarray
    wave_phases: np.ndarray

    @property
    def rotation_deg(self) -> float:
        return float(np.degrees(np.arccos(np.clip((np.trace(self.rotation) - 1) / 2, -1.0, 1.0))))

    @property
    def breathing_bound_mm(self) -> float:
        return float(np.linalg.norm(self.wave_amplitudes, axis=1).sum())

    @property
    def gradient_bound(self) -> float:
        return float((2 * np.pi * np.linalg.norm(self.wave_vectors, axis=1)
                      * np.linalg.norm(self.wave_amplitudes, axis=1)).sum())

    def breathing(self, xyz) -> np.ndarray:
        """The breathing displacement (n, 3) mm at points ``xyz`` (n, 3) mm of the patient frame."""
        s = np.asarray(xyz, dtype=np.float64).reshape(-1, 3) - self.center_xyz_mm
        arg = 2 * np.pi * s @ self.wave_vectors.T + self.wave_phases            # (n, K)
        return np.sin(arg) @ self.wave_amplitudes

    def to_prior(self, xyz) -> np.ndarray:
        """Current world points (n, 3) mm -> the prior world points they show (n, 3)."""
        q = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        s = (q - self.center_xyz_mm - self.translation_xyz_mm) @ self.rotation + self.center_xyz_mm
        return s + self.breathing(s)

    def to_current(self, xyz, iterations: int = 30) -> np.ndarray:
        """Prior world points (n, 3) mm -> where the current scan shows them (n, 3): the inverse of
        `to_prior` (fixed point of s = p - b(s), a contraction by `gradient_bound` < 1)."""
        p = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        s = p.copy()
        for _ in range(iterations):
            s = p - self.breathing(s)
        return (s - self.center_xyz_mm) @ self.rotation.T + self.center_xyz_mm + self.translation_xyz_mm

    def to_dict(self) -> dict:
        return {"rotation_deg": round(self.rotation_deg, 3),
                "translation_xyz_mm": [round(float(v), 3) for v in self.translation_xyz_mm],
                "breathing_bound_mm": round(self.breathing_bound_mm, 3),
                "gradient_bound": round(self.gradient_bound, 4),
                "rotation": np.round(self.rotation, 6).tolist(),
                "center_xyz_mm": [round(float(v), 3) for v in self.center_xyz_mm],
                "wave_vectors": np.round(self.wave_vectors, 6).tolist(),
                "wave_amplitudes": np.round(self.wave_amplitudes, 4).tolist(),
                "wave_phases": np.round(self.wave_phases, 4).tolist()}


@dataclass(frozen=True)
class PairLesion:
    """One lesion's truth. ``lesion_id``: its identity across the two scans; centres in each scan's
    own world frame (None where absent); ``*_diameter_mm``: drawn diameters; ``*_volume_mm3``:
    pi d^3 / 6; ``volume_ratio``: V_current / V_prior (None for new and resolved); ``render_seed``:
    the lesion's random stream (shape, HU), the same at both time points."""
    lesion_id: int
    status: str
    kind: str
    shape: str
    location: str
    prior_center_xyz_mm: tuple[float, float, float] | None
    current_center_xyz_mm: tuple[float, float, float] | None
    prior_diameter_mm: float | None
    current_diameter_mm: float | None
    render_seed: tuple[int, ...]

    @property
    def prior_volume_mm3(self) -> float | None:
        return None if self.prior_diameter_mm is None else float(np.pi * self.prior_diameter_mm ** 3 / 6)

    @property
    def current_volume_mm3(self) -> float | None:
        return None if self.current_diameter_mm is None else float(np.pi * self.current_diameter_mm ** 3 / 6)

    @property
    def volume_ratio(self) -> float | None:
        if self.prior_diameter_mm is None or self.current_diameter_mm is None:
            return None
        return float((self.current_diameter_mm / self.prior_diameter_mm) ** 3)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(prior_volume_mm3=self.prior_volume_mm3, current_volume_mm3=self.current_volume_mm3,
                 volume_ratio=self.volume_ratio)
        return json.loads(json.dumps(d, default=float), parse_float=lambda v: round(float(v), 3))


@dataclass(frozen=True, eq=False)
class FollowupPair:
    """A synthetic follow-up pair: ``prior`` and ``current`` int16 HU `Volume`s on one grid, with
    ``meta["StudyDate"]``; ``lesions``: the truth; ``motion``: current <-> prior world map;
    ``prior_lung`` / ``current_lung``: the true lungs (bool (z, y, x)); ``noise_hu``."""
    seed: int
    prior: Volume
    current: Volume
    lesions: tuple[PairLesion, ...]
    motion: Motion
    interval_days: int
    prior_date: datetime.date
    current_date: datetime.date
    prior_lung: np.ndarray
    current_lung: np.ndarray
    noise_hu: float

    def truth(self) -> dict:
        """JSON-ready: the lesions, the motion, the dates and the grid."""
        return {"seed": self.seed, "interval_days": self.interval_days, "prior_date": self.prior_date.isoformat(),
                "current_date": self.current_date.isoformat(), "noise_hu": round(self.noise_hu, 2),
                "shape_zyx": list(self.prior.shape), "spacing_zyx_mm": list(self.prior.spacing_zyx_mm),
                "motion": self.motion.to_dict(), "lesions": [ls.to_dict() for ls in self.lesions],
                "note": "synthetic follow-up pair: a regression signal, not clinical evidence"}

    def save(self, folder) -> tuple[Path, Path]:
        """Write ``folder``/prior and ``folder``/current as DICOM series whose StudyDate is the
        pair's, and ``folder``/truth.json. -> (prior folder, current folder)."""
        import pydicom

        from noduleflow.engine.io.dicom_write import write_dicom_series

        out = Path(folder)
        dirs = []
        for i, (role, vol, date) in enumerate((("prior", self.prior, self.prior_date),
                                               ("current", self.current, self.current_date))):
            files = write_dicom_series(vol, out / role, seed=self.seed * 2 + i, patient_id=f"FOLLOWUP{self.seed}",
                                       series_description=f"noduleflow follow-up pair {self.seed} {role}")
            for f in files:  # the writer dates a series from its seed: stamp the pair's date
                ds = pydicom.dcmread(f)
                ds.StudyDate = ds.SeriesDate = ds.ContentDate = date.strftime("%Y%m%d")
                ds.save_as(f, enforce_file_format=True)
            dirs.append(out / role)
        (out / "truth.json").write_text(json.dumps(self.truth(), indent=1))
        return dirs[0], dirs[1]


@dataclass(frozen=True)
class _Plan:
    """A lesion before rendering: centre as a function of the radius, in the prior's frame:
    ``anchor + direction * (k * r + gap)``."""
    status: str
    kind: str
    shape: str
    location: str
    d_prior: float | None
    d_current: float | None
    anchor: tuple[float, float, float]
    direction: tuple[float, float, float]
    k: float
    gap: float

    def center(self, d: float) -> np.ndarray:
        return np.asarray(self.anchor) + np.asarray(self.direction) * (self.k * d / 2 + self.gap)

    @property
    def d_max(self) -> float:
        return max(d for d in (self.d_prior, self.d_current) if d is not None)


def draw_motion(rng: np.random.Generator, center_xyz_mm, params: FollowupParams) -> Motion:
    """A patient move (uniform rotation axis, angle up to ``rotation_deg``; shift uniform in the
    ball of ``shift_mm``) and a breathing field (3 waves, 150-300 mm wavelength, amplitudes mostly
    along z, their sum 0.5-1 x ``breathing_mm``)."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(0.0, params.rotation_deg))
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx      # Rodrigues
    shift = rng.standard_normal(3)
    shift *= params.shift_mm * rng.uniform() ** (1 / 3) / np.linalg.norm(shift)
    k = random_rotation(rng).T / rng.uniform(150.0, 300.0, 3)[:, None]   # (3, 3): three orthogonal wave vectors
    a = rng.standard_normal((3, 3)) * np.array([0.4, 0.4, 1.0])                # mostly cranio-caudal
    a *= rng.uniform(0.5, 1.0) * params.breathing_mm / np.linalg.norm(a, axis=1).sum()
    return Motion(rot, np.asarray(center_xyz_mm, float), shift, k, a, rng.uniform(0, 2 * np.pi, 3))


def _statuses(rng, params: FollowupParams):
    n = int(rng.integers(params.n_lesions[0], params.n_lesions[1] + 1))
    out = []
    for _ in range(n):
        status = STATUSES[rng.choice(len(STATUSES), p=params.status_p)]
        d = float(np.exp(rng.uniform(*np.log(params.diameter_mm))))
        ratio = {"grown": params.grown_volume, "shrunk": params.shrunk_volume}.get(status)
        r = float(rng.uniform(*ratio)) if ratio else 1.0
        dp = None if status == "new" else d
        dc = None if status == "resolved" else d if status == "new" else d * r ** (1 / 3)
        kind = FOLLOWUP_KINDS[rng.choice(len(FOLLOWUP_KINDS), p=params.kind_p)]
        out.append((status, kind, FOLLOWUP_SHAPES[rng.integers(len(FOLLOWUP_SHAPES))],
                    LOCATIONS[rng.choice(len(LOCATIONS), p=params.location_p)], dp, dc))
    return out


def _lung_points(rng, lung, grid, n: int) -> np.ndarray:
    idx = np.argwhere(lung[::2, ::2, ::2])
    if len(idx) == 0:
        return np.zeros((0, 3))
    idx = idx[rng.choice(len(idx), size=min(n, len(idx)), replace=False)] * 2
    return np.stack([grid.x[idx[:, 2]], grid.y[idx[:, 1]], grid.z[idx[:, 0]]], axis=1)


def _aerated(scene, c, r: float) -> bool:
    """The lesion-free chest around ``c`` (radius ``r`` mm) is mostly aerated lung."""
    box = scene.grid.box(np.asarray(c) - r, np.asarray(c) + r)
    sub = scene.hu[box]
    return sub.size > 0 and float(np.mean(sub < -600)) > 0.9


def _place(rng, scene, status, kind, shape, location, dp, dc, placed, margin_z_mm: float) -> _Plan | None:
    """Where a lesion goes (see `_Plan`), or None when no place fits: inside the lungs, both sizes
    away from the scan's ends by ``margin_z_mm`` and 8 mm clear of the lesions ``placed``."""
    anat, grid = scene.anatomy, scene.grid
    d_max = max(d for d in (dp, dc) if d is not None)
    r = d_max / 2
    sizes = [d for d in (dp, dc) if d is not None]

    def fits(plan: _Plan) -> bool:
        for d in sizes:
            c = plan.center(d)
            if not grid.z[0] + margin_z_mm + r <= c[2] <= grid.z[-1] - margin_z_mm - r:
                return False
            if any(np.linalg.norm(c - q.center(q.d_max)) < r + q.d_max / 2 + 8.0 for q in placed):
                return False
        return True

    def plan(anchor, direction, k, gap, loc):
        return _Plan(status, kind, shape, loc, dp, dc, tuple(float(v) for v in anchor),
                     tuple(float(v) for v in direction), float(k), float(gap))

    if location == "juxta_vascular":
        segs = [s for s in anat.segments if 1.0 <= s.radius_mm < 0.6 * r + 1.0]
        for _ in range(80 if segs else 0):
            s = segs[rng.integers(len(segs))]
            p0, p1 = np.asarray(s.p0), np.asarray(s.p1)
            perp = np.cross(p1 - p0, rng.standard_normal(3))
            perp /= np.linalg.norm(perp) + 1e-9
            p = plan(p0 + rng.uniform(0.2, 0.8) * (p1 - p0), perp, 1.0, 0.3 * s.radius_mm, location)
            if anat.lung_sdf(*p.center(d_max)) < -(r + 2) and fits(p):
                return p
        location = "isolated"
    pts = _lung_points(rng, scene.lung, grid, 400)
    sdf = anat.lung_sdf(pts[:, 0], pts[:, 1], pts[:, 2]) if len(pts) else np.zeros(0)
    if location == "juxta_pleural":
        for i in rng.permutation(np.flatnonzero((sdf > -(r + 6)) & (sdf < -1.0)))[:80]:
            a = pts[i].astype(float)
            for _ in range(5):   # Newton steps onto the pleura along the outward normal
                n = _outward_normal(anat, a)
                a = a - anat.lung_sdf(*a) * n
            if abs(anat.lung_sdf(*a)) > 0.5:
                continue
            p = plan(a, -_outward_normal(anat, a), rng.uniform(0.45, 0.85), 0.0, location)
            if fits(p):
                return p
        return None
    for i in rng.permutation(np.flatnonzero(sdf < -(r + 4))):
        p = plan(pts[i], (0.0, 0.0, 1.0), 0.0, 0.0, location)
        if fits(p) and _aerated(scene, pts[i], r):
            return p
    return None


def _outward_normal(anat, p, h: float = 0.5) -> np.ndarray:
    g = np.array([anat.lung_sdf(*(p + h * e)) - anat.lung_sdf(*(p - h * e)) for e in np.eye(3)], float)
    return g / (np.linalg.norm(g) + 1e-9)


def render_lesion_at(hu: np.ndarray, grid, lesion: PairLesion, which: str, edge_mm: float) -> None:
    """Draw ``lesion`` as it is in scan ``which`` ("prior" or "current") into ``hu`` (float32, in
    place, on ``grid``) at its centre in that scan, from its own random stream (the same shape and
    HU at both time points). Nothing when it is absent there."""
    if which not in ("prior", "current"):
        raise ConfigError(f"which must be 'prior' or 'current', got {which!r}")
    c = lesion.prior_center_xyz_mm if which == "prior" else lesion.current_center_xyz_mm
    d = lesion.prior_diameter_mm if which == "prior" else lesion.current_diameter_mm
    if c is None or d is None:
        return
    render_nodule(hu, grid, np.asarray(c, float), d, lesion.kind, lesion.shape,
                  np.random.default_rng(list(lesion.render_seed)), edge_mm)


def warp_to_current(a: np.ndarray, grid, motion: Motion, order: int = 3) -> np.ndarray:
    """``a`` (z, y, x) on ``grid`` in the prior frame, resampled onto the same grid in the current
    frame: each current voxel takes the prior value at ``motion.to_prior`` of its centre (spline
    ``order``: 3 cubic B-spline, 1 trilinear, 0 nearest; beyond the grid the edge repeats). float32.

    `Motion.to_prior` evaluated plane by plane: the rigid part is affine in the voxel's (x, y, z)
    and each wave's phase too, so sin(phase) = sin(A(x, y) + B(z)) comes from the sines and cosines
    of one in-plane term A and one per-slice term B (angle addition), not from a sine per voxel."""
    nz, ny, nx = grid.shape
    if order not in (0, 1, 3):
        raise ConfigError(f"order must be 0, 1 or 3, got {order}")
    src = np.asarray(a, dtype=np.float32)
    if order == 3:   # the spline's coefficients once, not once per slab
        src = spline_filter(src, order=3, output=np.float32, mode="nearest")
    out = np.empty(grid.shape, np.float32)
    c, t, r = motion.center_xyz_mm, motion.translation_xyz_mm, motion.rotation
    m = r.T                                   # s = m q + off
    off = c - m @ (c + t)
    y, x = np.meshgrid(grid.y, grid.x, indexing="ij")
    waves = []
    for k, amp, ph in zip(motion.wave_vectors, motion.wave_amplitudes, motion.wave_phases):
        w = 2 * np.pi * (m.T @ k)             # phase = w . q + w0
        w0 = 2 * np.pi * float(k @ (off - c)) + ph
        plane = w[0] * x + w[1] * y
        waves.append((np.sin(plane), np.cos(plane), w[2], w0, amp))
    for z0 in range(0, nz, SLAB):
        zs = grid.z[z0:z0 + SLAB][:, None, None]
        p = [m[i, 0] * x + m[i, 1] * y + m[i, 2] * zs + off[i] for i in range(3)]   # x, y, z: (slab, ny, nx)
        for sin_a, cos_a, wz, w0, amp in waves:
            b = wz * zs + w0
            sine = sin_a * np.cos(b) + cos_a * np.sin(b)
            for i in range(3):
                p[i] += amp[i] * sine
        idx = [(p[2 - j] - grid.origin[2 - j]) / grid.spacing[j] for j in range(3)]   # z, y, x indices
        out[z0:z0 + SLAB] = map_coordinates(src, idx, order=order, mode="nearest", prefilter=False)
    return out


def make_pair(seed: int, *, shape_zyx=(100, 256, 256), spacing_zyx_mm=(2.0, 1.25, 1.25),
              params: FollowupParams | None = None) -> FollowupPair:
    """One synthetic follow-up pair of seed ``seed`` on a (z, y, x) grid of ``shape_zyx`` voxels of
    ``spacing_zyx_mm`` (default 200 x 320 x 320 mm at 2 x 1.25 x 1.25 mm: small enough for a
    benchmark of tens of pairs on a CPU). Deterministic by seed. See the module docstring."""
    params = params or FollowupParams()
    scene = default_scene(seed, shape_zyx=shape_zyx, spacing_zyx_mm=spacing_zyx_mm, params=PhantomParams())
    grid = scene.grid
    rng = np.random.default_rng([int(seed), STREAM])
    centre = np.array([grid.x.mean(), grid.y.mean(), grid.z.mean()])
    motion = draw_motion(rng, centre, params)
    interval = int(rng.integers(params.interval_days[0], params.interval_days[1] + 1))
    prior_date = FIRST_DATE + datetime.timedelta(days=int(rng.integers(0, 365)))
    sigma = float(rng.uniform(*params.noise_hu))
    margin = params.shift_mm + params.breathing_mm + 4.0   # the lesion stays in both scans
    plans: list[_Plan] = []
    for status, kind, shape, loc, dp, dc in _statuses(rng, params):
        p = _place(rng, scene, status, kind, shape, loc, dp, dc, plans, margin)
        if p is None:
            log.warning("pair %d: no room for a %s %.1f mm lesion: left out", seed, loc, max(dp or 0, dc or 0))
            continue
        plans.append(p)
    lesions = []
    for i, p in enumerate(plans):
        cp = None if p.d_prior is None else tuple(float(v) for v in p.center(p.d_prior))
        cc = None if p.d_current is None else tuple(float(v) for v in motion.to_current(p.center(p.d_current))[0])
        lesions.append(PairLesion(i, p.status, p.kind, p.shape, p.location, cp, cc,
                                  None if p.d_prior is None else round(p.d_prior, 3),
                                  None if p.d_current is None else round(p.d_current, 3), (int(seed), STREAM, 100 + i)))
    edge = scene.anatomy.edge
    cur_hu = warp_to_current(scene.hu, grid, motion)
    cur_lung = warp_to_current(scene.lung, grid, motion, order=0) > 0.5
    prior_hu, prior_lung = scene.hu, scene.lung      # the scene is ours: drawn into in place
    for ls in lesions:
        render_lesion_at(prior_hu, grid, ls, "prior", edge)
        render_lesion_at(cur_hu, grid, ls, "current", edge)
    current_date = prior_date + datetime.timedelta(days=interval)
    vols = []
    for i, (role, hu, lung, date) in enumerate((("prior", prior_hu, prior_lung, prior_date),
                                                ("current", cur_hu, cur_lung, current_date))):
        out = scanner_default(hu, lung, grid, sigma, np.random.default_rng([int(seed), STREAM, 1 + i]))
        uid = generate_uid(entropy_srcs=["noduleflow-followup", str(seed), role])
        vols.append(Volume(out, scene.spacing_zyx_mm, scene.origin_xyz_mm, series_uid=uid,
                           meta={"source": f"follow-up pair seed={seed} {role}", "format": "phantom",
                                 "StudyDate": date.strftime("%Y%m%d")}))
    return FollowupPair(int(seed), vols[0], vols[1], tuple(lesions), motion, interval, prior_date, current_date,
                        prior_lung, cur_lung, sigma)
