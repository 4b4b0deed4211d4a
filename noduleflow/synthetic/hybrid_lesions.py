"""Lesions for hybrid scans: drawn on a fine grid, imaged like the real scan, blended into it.

A lesion is a fractional occupancy (0..1) on a grid finer than the scan's (sub-voxels of
0.12-0.35 mm, finer for small lesions), one field for its body and one for a dense core
(part-solid, centrally calcified). The occupancy is brought to the scan's grid by separable
Gaussian weights that model the scanner: along z the slice sensitivity profile (FWHM = the
slice thickness), in plane the reconstruction's point-spread function (sigma estimated from
the scan's own skin-air edges, `estimate_inplane_sigma_mm`). The result is blended into the
scan's voxels (`blend_lesion`):

- solid, calcified and the part-solid core *replace* what is there (aerated lung, a vessel's
  edge), ``new = B + F (L - B)`` wherever that raises the voxel, so vessels denser than the
  lesion and the chest wall stay as they are;
- ground glass (pure, or the part-solid halo) *adds* a rise relative to the local parenchyma,
  weighted by how aerated the voxel is, so vessels running through it stay visible and the
  chest wall under a juxta-pleural lesion is not brightened;
- where a voxel was replaced by a fraction ``w`` of lesion, its own noise shrank to
  ``(1 - w)``; noise with the scan's texture (`NoiseModel`: white noise filtered to the
  autocorrelation measured in the scan's homogeneous soft tissue, at the slice's measured
  level) is added with std ``sigma sqrt(1 - (1 - w)^2)`` to restore it.

Voxels where neither field reaches `FOOTPRINT_MIN` are never written: the rest of the scan stays
byte-identical. `lesion_montage` draws each lesion's axial slice before and after, for a look.
Synthetic lesions in real anatomy are a regression signal, not clinical evidence.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from noduleflow.engine import ConfigError

from .phantom_base import random_rotation

log = logging.getLogger(__name__)

HYBRID_KINDS = ("solid", "part_solid", "ground_glass", "calcified")
HYBRID_SHAPES = ("round", "ellipsoid", "lobulated", "spiculated")
HYBRID_LOCATIONS = ("isolated", "juxta_pleural", "juxta_vascular")

GG_RANGE_HU = (-800.0, -450.0)      # a pure ground-glass lesion's level on aerated lung
GG_RISE_HU = (100.0, 450.0)         # ... and its rise over the surrounding parenchyma
SOLID_RANGE_HU = (-100.0, 100.0)
CALCIFIED_MIN_HU = 250.0            # apparent HU at a calcified lesion's centre, at least
WALL_HU = -150.0                    # a (smoothed) voxel at or above this is not aerated: no ground-glass rise
FOOTPRINT_MIN = 0.01                # occupancy below this is left untouched (the tail of the blur)


@dataclass(frozen=True)
class LesionSpec:
    """What to insert: kind (`HYBRID_KINDS`), shape (`HYBRID_SHAPES`), location (`HYBRID_LOCATIONS`),
    diameter in mm (of the body, spicules not counted, as LUNA16 measures), and the seed of its
    own random draws (HU values, rotation, lobes, spicules, texture)."""

    kind: str
    shape: str
    location: str
    diameter_mm: float
    seed: int

    def __post_init__(self) -> None:
        for name, value, allowed in (("kind", self.kind, HYBRID_KINDS), ("shape", self.shape, HYBRID_SHAPES),
                                     ("location", self.location, HYBRID_LOCATIONS)):
            if value not in allowed:
                raise ConfigError(f"lesion {name} must be one of {list(allowed)}, got {value!r}")
        if not 2.0 <= self.diameter_mm <= 40.0:
            raise ConfigError(f"lesion diameter must be in [2, 40] mm, got {self.diameter_mm}")

    @property
    def extent_mm(self) -> float:
        """Radius (mm) that holds the whole lesion: lobes, ellipsoid axes and spicules included."""
        r = self.diameter_mm / 2
        fade = 0.15 * r if self.kind in ("ground_glass", "part_solid") else 0.0      # ground glass's soft margin
        return r * {"round": 1.0, "ellipsoid": 1.35, "lobulated": 1.3, "spiculated": 2.2}[self.shape] + fade + 0.5


@dataclass(frozen=True)
class ScanOptics:
    """How the scan images a small object: voxel size (z, y, x) mm, slice thickness mm (FWHM of the
    Gaussian slice profile), in-plane PSF sigma mm, and where each value came from (``source``)."""

    spacing_zyx_mm: tuple[float, float, float]
    slice_thickness_mm: float
    inplane_sigma_mm: float
    source: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0.1 <= self.slice_thickness_mm <= 10:
            raise ConfigError(f"slice thickness must be in [0.1, 10] mm, got {self.slice_thickness_mm}")
        if not 0.05 <= self.inplane_sigma_mm <= 5:
            raise ConfigError(f"in-plane sigma must be in [0.05, 5] mm, got {self.inplane_sigma_mm}")


@dataclass(frozen=True, eq=False)
class NoiseModel:
    """The scan's noise: ``kernel`` float32 (kz, ky, kx), a unit-energy filter (white noise convolved
    with it has unit variance and the scan's autocorrelation), ``std_hu_z`` float32 (nz,) the
    noise std (HU) of each slice, and the number of soft-tissue patches they were measured on."""

    kernel: np.ndarray
    std_hu_z: np.ndarray
    n_patches: int

    def sample(self, rng: np.random.Generator, shape) -> np.ndarray:
        """Unit-variance noise (float32, ``shape`` (z, y, x)) with the scan's texture."""
        k = self.kernel
        full = tuple(s + n - 1 for s, n in zip(shape, k.shape))
        white = rng.standard_normal(full).astype(np.float32)
        out = np.fft.irfftn(np.fft.rfftn(white) * np.fft.rfftn(k, full, axes=(0, 1, 2)), full, axes=(0, 1, 2))
        lo = tuple(n - 1 for n in k.shape)
        return out[lo[0]:lo[0] + shape[0], lo[1]:lo[1] + shape[1], lo[2]:lo[2] + shape[2]].astype(np.float32)


# --- the scan's optics and noise -----------------------------------------------------------------

def estimate_inplane_sigma_mm(hu: np.ndarray, spacing_yx_mm, half_width: int = 10) -> tuple[float, int]:
    """The in-plane blur of a scan, from its skin-air edges: (sigma mm, number of edge profiles).

    Rows through the middle half of the body on 40 axial slices are followed from each side of
    the image to the first voxel above -500 HU (the lateral skin, where the row crosses the edge
    about at right angles); profiles with clean air outside (-1100..-850 HU, no table, clothes or
    field-of-view padding) and soft tissue inside are aligned on their sub-voxel midpoint
    crossing and averaged (an oversampled edge-spread function). A blurred step
    ``a + b Phi((x - x0) / sigma)`` is fitted to its air side and its rise up to 0.6 mm past the
    midpoint: beyond that the dermis (denser than the fat below) and sharp kernels' overshoot
    would bias sigma. Returns (nan, n) when fewer than 20 clean profiles exist.
    """
    sx = float(spacing_yx_mm[1])
    nz = hu.shape[0]
    pos, val = [], []
    for z in np.linspace(0.1 * nz, 0.9 * nz, min(40, nz)).astype(int):
        sl = hu[z]
        rows = np.flatnonzero((sl > -500).sum(axis=1) > 20)
        if rows.size < 8:
            continue
        for y in rows[rows.size // 4: 3 * rows.size // 4: 3]:
            for r in (sl[y], sl[y, ::-1]):
                i = int(np.argmax(r > -500))
                if i < half_width + 1 or i + half_width + 1 >= r.size:
                    continue
                seg = r[i - half_width - 1:i + half_width + 1].astype(np.float64)
                out, inn = seg[:half_width - 2], seg[half_width + 4:]
                if out.max() > -850 or out.min() < -1100 or inn.min() < -250 or inn.max() > 200:
                    continue
                lo, hi = out.mean(), inn.mean()
                mid = 0.5 * (lo + hi)
                j = int(np.argmax(seg > mid))
                x0 = j - 1 + (mid - seg[j - 1]) / (seg[j] - seg[j - 1])
                pos.append((np.arange(seg.size) - x0) * sx)
                val.append((seg - lo) / (hi - lo))
    if len(pos) < 20:
        return float("nan"), len(pos)
    p, v = np.concatenate(pos), np.concatenate(val)
    edges = np.arange(-4.0, 0.61, 0.1)
    which = np.digitize(p, edges)
    centres, esf = [], []
    for k in range(1, edges.size):
        sel = which == k
        if sel.any():
            centres.append(0.5 * (edges[k - 1] + edges[k]))
            esf.append(v[sel].mean())
    c, e = np.array(centres), np.array(esf)
    sigmas, shifts = np.arange(0.1, 2.5, 0.01), np.arange(-0.4, 0.41, 0.02)
    arg = (c[None, None, :] - shifts[None, :, None]) / (sigmas[:, None, None] * math.sqrt(2))
    phi = 0.5 * (1 + np.frompyfunc(math.erf, 1, 1)(arg).astype(np.float64))   # (sigma, shift, bin)
    # least squares a + b phi = e for every (sigma, shift) at once (closed-form 2x2 normal equations)
    n, sp, spp = c.size, phi.sum(-1), (phi * phi).sum(-1)
    se, spe = e.sum(), (phi * e).sum(-1)
    det = np.maximum(n * spp - sp * sp, 1e-12)
    b = (n * spe - sp * se) / det
    a = (se - b * sp) / n
    err = ((a[..., None] + b[..., None] * phi - e) ** 2).sum(-1)
    i = np.unravel_index(int(np.argmin(err)), err.shape)
    return float(sigmas[i[0]]), len(pos)


def estimate_noise(hu: np.ndarray, spacing_zyx_mm, patch_mm=(8.0, 18.0, 18.0), max_patches: int = 400) -> NoiseModel:
    """The scan's noise level per slice and its texture, from homogeneous soft tissue.

    The volume is cut into non-overlapping patches (``patch_mm``, at least 4 voxels a side); those wholly within
    -250..250 HU are soft tissue (muscle, liver, mediastinum, fat). Per slab of patches the 10th
    percentile of their std marks the noise-only ones (std <= 1.15x it; patches holding an edge or
    an organ's texture have more); the slab's noise std is their median, interpolated between
    slabs and over slabs without soft tissue. The texture: the mean power spectrum of up to
    ``max_patches`` noise-only patches, each with its linear trend removed and scaled to unit
    variance; the kernel is its zero-phase square root. Raises ConfigError with fewer than 10
    usable patches (not a CT with soft tissue).
    """
    pz, py, px = (min(max(round(m / a), 4), s // 2) for m, a, s in zip(patch_mm, spacing_zyx_mm, hu.shape))
    nz, ny, nx = (s // p for s, p in zip(hu.shape, (pz, py, px)))
    blocks = hu[:nz * pz, :ny * py, :nx * px].reshape(nz, pz, ny, py, nx, px)
    ok = (blocks.min(axis=(1, 3, 5)) > -250) & (blocks.max(axis=(1, 3, 5)) < 250)
    iz, iy, ix = np.nonzero(ok)
    if iz.size < 10:
        raise ConfigError(f"estimate_noise: only {iz.size} soft-tissue patches of {pz}x{py}x{px} voxels "
                          f"in a {hu.shape} volume (is it a CT?)")
    std = np.array([blocks[a, :, b, :, c, :].std(dtype=np.float64) for a, b, c in zip(iz, iy, ix)])
    slab_std, slab_z, quiet = [], [], np.zeros(iz.size, bool)
    for zb in np.unique(iz):
        sel = np.flatnonzero(iz == zb)
        if sel.size < 4:
            continue
        pure = sel[std[sel] <= 1.15 * np.percentile(std[sel], 10)]
        quiet[pure] = True
        slab_std.append(float(np.median(std[pure])))
        slab_z.append((zb + 0.5) * pz)
    if not slab_std:
        pure = np.flatnonzero(std <= 1.15 * np.percentile(std, 10))
        quiet[pure] = True
        slab_std, slab_z = [float(np.median(std[pure]))], [hu.shape[0] / 2]
    std_z = np.interp(np.arange(hu.shape[0]), slab_z, slab_std).astype(np.float32)
    chosen = np.flatnonzero(quiet)
    if chosen.size > max_patches:
        chosen = chosen[np.linspace(0, chosen.size - 1, max_patches).astype(int)]
    grid = np.stack([g.ravel() for g in np.meshgrid(*(np.arange(n, dtype=float) for n in (pz, py, px)),
                                                    indexing="ij")], axis=1)
    design = np.concatenate([np.ones((grid.shape[0], 1)), grid], axis=1)
    power = np.zeros((pz, py, px))
    for k in chosen:
        p = blocks[iz[k], :, iy[k], :, ix[k], :].astype(np.float64).ravel()
        coef, *_ = np.linalg.lstsq(design, p, rcond=None)
        res = (p - design @ coef).reshape(pz, py, px)
        res /= max(res.std(), 1e-6)
        power += np.abs(np.fft.fftn(res)) ** 2
    nps = power / (chosen.size * power[0].size * pz)
    kernel = np.fft.fftshift(np.real(np.fft.ifftn(np.sqrt(nps))))
    kernel /= np.sqrt((kernel ** 2).sum())
    return NoiseModel(kernel.astype(np.float32), std_z, int(chosen.size))


# --- the lesion's occupancy ----------------------------------------------------------------------

def _axis_weights(n_out: int, f: int, spacing: float, sigma_mm: float) -> np.ndarray:
    """(n_out, n_out * f) Gaussian weights from ``f`` sub-samples per voxel to the voxel centres."""
    fine = (np.arange(n_out * f) + 0.5) / f - 0.5        # sub-sample centres in voxel units
    h = spacing / f
    s = max(sigma_mm, 0.5 * h)
    w = np.exp(-0.5 * (((np.arange(n_out)[:, None] - fine[None, :]) * spacing) / s) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _bumps(rng, n_dirs: np.ndarray, count: int, amplitude: float) -> np.ndarray:
    """1 + amplitude x a smooth random function of the direction (lobes); n_dirs (3, ...)."""
    out = np.zeros(n_dirs.shape[1:], np.float32)
    for _ in range(count):
        k = (_unit(rng.standard_normal(3)) * rng.uniform(2.0, 3.5)).astype(np.float32)
        out += np.cos(k[0] * n_dirs[0] + k[1] * n_dirs[1] + k[2] * n_dirs[2] + np.float32(rng.uniform(0, 2 * np.pi)))
    return 1.0 + np.float32(amplitude / math.sqrt(count / 2)) * out


def _soft(d_out: np.ndarray, h: float) -> np.ndarray:
    """Occupancy of a fine sub-voxel at signed distance ``d_out`` (mm, negative inside)."""
    return np.clip(0.5 - d_out / h, 0.0, 1.0).astype(np.float32)


def _fine_fields(spec: LesionSpec, rng, d: tuple, h: float, design: dict):
    """Body and core occupancy (float32, fine grid) from the offsets ``d`` = (dz, dy, dx) mm
    (broadcastable 1-D axes) of the fine sub-voxels from the lesion's centre."""
    r = spec.diameter_mm / 2
    rot = random_rotation(rng).astype(np.float32)
    dz, dy, dx = d
    u = [rot[0, i] * dz + rot[1, i] * dy + rot[2, i] * dx for i in range(3)]   # the lesion's frame
    if spec.shape == "ellipsoid":
        axes = np.exp(rng.uniform(-0.3, 0.3, 3)).astype(np.float32)
        axes /= np.prod(axes) ** np.float32(1 / 3)          # the volume of the sphere: the diameter stays meaningful
        design["axes"] = [round(float(a), 3) for a in axes]
        u = [u[i] / axes[i] for i in range(3)]
    dist = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2).astype(np.float32)
    radius: np.ndarray | float = r
    if spec.shape in ("lobulated", "spiculated"):
        n = np.stack(np.broadcast_arrays(*u)) / np.maximum(dist, 1e-6)
        amp = rng.uniform(0.12, 0.2) if spec.shape == "lobulated" else 0.05
        radius = r * _bumps(rng, n, 4, amp)
        del n
    # ground glass fades into the parenchyma over 10-30 % of the radius; solid margins are sharp
    edge = max(h, r * rng.uniform(0.1, 0.3)) if spec.kind in ("ground_glass", "part_solid") else h
    design["edge_mm"] = round(float(edge), 2)
    body = _soft(dist - radius, edge)
    if spec.shape == "spiculated":
        _add_spicules(body, rng, d, r, h, design)
    core = None
    if spec.kind == "part_solid" or (spec.kind == "calcified" and design.get("pattern") == "central"):
        frac = rng.uniform(0.3, 0.6)
        off = (_unit(rng.standard_normal(3)) * rng.uniform(0, 0.2) * r * (1 - frac)).astype(np.float32)
        dc = np.sqrt((dz - off[0]) ** 2 + (dy - off[1]) ** 2 + (dx - off[2]) ** 2)
        core = np.minimum(_soft(dc - frac * r, h), body)
        design["core_fraction"] = round(float(frac), 3)
    return body, core


def _add_spicules(body: np.ndarray, rng, d: tuple, r: float, h: float, design: dict) -> None:
    """Thin tapered strands radiating from the surface (in place on ``body``)."""
    dz, dy, dx = (a.ravel() for a in d)
    n = int(rng.integers(16, 25) + 2.0 * r)        # 3-D strands: only the few near a slice's plane show in it
    design["spicules"] = n
    for _ in range(n):
        e = _unit(rng.standard_normal(3)).astype(np.float32)
        length = float(np.clip(r * rng.uniform(0.5, 1.3), 2.0, 18.0))
        rho0 = rng.uniform(0.4, 0.7) + 0.02 * r
        p0, p1 = 0.8 * r * e, (0.8 * r + length) * e
        lo, hi = np.minimum(p0, p1) - rho0 - h, np.maximum(p0, p1) + rho0 + h
        sl = [np.flatnonzero((a >= lo[i]) & (a <= hi[i])) for i, a in enumerate((dz, dy, dx))]
        if any(s.size == 0 for s in sl):
            continue
        zz, yy, xx = (a[s] for a, s in zip((dz, dy, dx), sl))
        pz, py, px = zz[:, None, None], yy[None, :, None], xx[None, None, :]
        t = pz * e[0] + py * e[1] + px * e[2] - 0.8 * r
        perp = np.sqrt(np.maximum((pz - (t + 0.8 * r) * e[0]) ** 2 + (py - (t + 0.8 * r) * e[1]) ** 2
                                  + (px - (t + 0.8 * r) * e[2]) ** 2, 0))
        rho = rho0 * (1 - 0.8 * np.clip(t / length, 0, 1))
        occ = _soft(perp - rho, h) * ((t >= -rho0) & (t <= length))
        box = np.ix_(sl[0], sl[1], sl[2])
        body[box] = np.maximum(body[box], occ)


def fine_truth(body: np.ndarray, core, f, spacing_zyx_mm, lung=None) -> dict:
    """A drawn lesion's own measurements, from its occupancy on the fine grid (``f`` sub-samples per
    voxel along each axis), before the scanner's blur: the inside is where the occupancy reaches
    one half (where the drawn lesion reaches half its contrast), less any part where ``lung`` (bool,
    the box's voxels) is False (drawn in the chest wall's place, it adds nothing visible there).

    - volume (mm^3): the inside's sub-samples x their volume;
    - Lung-RADS mean diameter: (long + short axis) / 2 on the axial slice of largest area among the
      scan's own slices (each slice's sub-sample nearest its centre), as `axial_axes` measures it;
    - for a core (part-solid): the same for the core.
    """
    from noduleflow.engine.characterise.shape import axial_axes

    h = tuple(float(a) / k for a, k in zip(spacing_zyx_mm, f))
    keep = None
    if lung is not None:
        keep = np.asarray(lung, bool)
        for ax, k in enumerate(f):
            keep = np.repeat(keep, k, axis=ax)

    def measure(occ):
        inside = occ >= 0.5
        if keep is not None:
            inside &= keep
        if not inside.any():
            return 0.0, 0.0, 0.0, 0.0
        long_mm, short_mm, _ = axial_axes(inside[f[0] // 2::f[0]], (spacing_zyx_mm[0], h[1], h[2]))
        return float(inside.sum()) * h[0] * h[1] * h[2], long_mm, short_mm, round((long_mm + short_mm) / 2.0, 1)

    vol, long_mm, short_mm, mean_d = measure(body)
    out = {"volume_mm3": round(vol, 2), "long_axis_mm": round(long_mm, 2), "short_axis_mm": round(short_mm, 2),
           "mean_diameter_mm": mean_d}
    if core is not None:
        core_vol, _, _, core_d = measure(core)
        out.update({"core_volume_mm3": round(core_vol, 2), "core_mean_diameter_mm": core_d})
    return out


def lesion_occupancy(spec: LesionSpec, center_zyx: np.ndarray, optics: ScanOptics, shape_zyx, design: dict,
                     lung=None):
    """The lesion imaged on the scan's grid.

    Args:
        spec: the lesion.
        center_zyx: its centre in continuous voxel indices (z, y, x).
        optics: the scan's spacing, slice profile and in-plane blur.
        shape_zyx: the scan's shape (the box is clipped to it).
        design: filled with what was drawn (axes, spicules, core fraction) and its ``truth``
            (`fine_truth`: volume, Lung-RADS mean diameter, core).
        lung: bool (z, y, x) of the scan's shape, the lung the lesion lies in: the truth leaves out
            what is drawn outside it (None: nothing left out).

    Returns:
        (box, body, core): the box (3 slices into the scan), the body's occupancy and the core's
        (float32 0..1 on the box, core None without one).
    """
    rng = np.random.default_rng([spec.seed, 1])
    sp = optics.spacing_zyx_mm
    sig = (optics.slice_thickness_mm / 2.3548, optics.inplane_sigma_mm, optics.inplane_sigma_mm)
    reach = [spec.extent_mm + 3 * s + 0.5 * a for s, a in zip(sig, sp)]
    box = tuple(slice(max(int(math.floor(c - m / a)), 0), min(int(math.ceil(c + m / a)) + 1, n))
                for c, m, a, n in zip(center_zyx, reach, sp, shape_zyx))
    h = float(np.clip(spec.diameter_mm / 20, 0.12, 0.35))
    f = [max(1, math.ceil(a / h)) for a in sp]
    d = []
    for ax in range(3):
        n = box[ax].stop - box[ax].start
        fine = box[ax].start + (np.arange(n * f[ax]) + 0.5) / f[ax] - 0.5
        shape = [1, 1, 1]
        shape[ax] = -1
        d.append(((fine - center_zyx[ax]) * sp[ax]).astype(np.float32).reshape(shape))
    if spec.kind == "calcified":
        design["pattern"] = "central" if rng.uniform() < 0.5 else "diffuse"
    body, core = _fine_fields(spec, rng, tuple(d), min(sp[i] / f[i] for i in range(3)), design)
    design["truth"] = fine_truth(body, core if spec.kind == "part_solid" else None, f, sp,
                                 None if lung is None else lung[box])
    weights = [_axis_weights(box[i].stop - box[i].start, f[i], sp[i], sig[i]) for i in range(3)]
    return box, _to_grid(body, weights), (None if core is None else _to_grid(core, weights))


def _to_grid(fine: np.ndarray, weights) -> np.ndarray:
    """Separable weighting (z, then y, then x) from the fine grid to the scan's voxels."""
    wz, wy, wx = weights
    a = np.tensordot(wz, fine, axes=(1, 0))            # (Z, Yf, Xf)
    a = np.tensordot(wy, a, axes=(1, 1))               # (Y, Z, Xf)
    a = np.tensordot(a, wx, axes=(2, 1))               # (Y, Z, X)
    return np.ascontiguousarray(np.clip(a.transpose(1, 0, 2), 0, 1), dtype=np.float32)


# --- blending ------------------------------------------------------------------------------------

def smooth_field(rng, shape, sigma_vox: float = 1.5) -> np.ndarray:
    """A smooth random field (float32, unit std): white noise low-passed by a Gaussian."""
    white = rng.standard_normal(shape)
    freqs = np.meshgrid(*(np.fft.fftfreq(n) for n in shape), indexing="ij")
    gain = np.exp(-2 * (np.pi * sigma_vox) ** 2 * sum(q ** 2 for q in freqs))
    out = np.real(np.fft.ifftn(np.fft.fftn(white) * gain))
    return (out / max(out.std(), 1e-6)).astype(np.float32)


def _mean3(a: np.ndarray) -> np.ndarray:
    """3x3x3 box mean (edges replicated)."""
    p = np.pad(a, 1, mode="edge")
    out = np.zeros_like(a)
    nz, ny, nx = a.shape
    for i in range(3):
        for j in range(3):
            for k in range(3):
                out += p[i:i + nz, j:j + ny, k:k + nx]
    return out / 27


def _replace(out, weight_left, occ, target) -> None:
    """Blend ``target`` in with occupancy ``occ`` where it raises the voxel (in place); the share of
    the voxel's previous value that is left is multiplied into ``weight_left``."""
    new = out + occ * (target - out)
    up = new > out
    out[up] = new[up]
    weight_left[up] *= 1 - occ[up]


def draw_values(spec: LesionSpec, bg_hu: float, design: dict) -> None:
    """Draw the lesion's HU values into ``design`` (given the local parenchyma ``bg_hu``)."""
    rng = np.random.default_rng([spec.seed, 2])
    if spec.kind in ("ground_glass", "part_solid"):
        lo = max(GG_RISE_HU[0], GG_RANGE_HU[0] - bg_hu)
        hi = max(min(GG_RISE_HU[1], GG_RANGE_HU[1] - bg_hu), lo)
        design["rise_hu"] = round(float(lo + (hi - lo) * rng.uniform() ** 1.5), 1)   # faint ones favoured
    if spec.kind == "solid":
        design["hu"] = round(float(rng.uniform(*SOLID_RANGE_HU)), 1)
    elif spec.kind == "part_solid":
        design["core_hu"] = round(float(rng.uniform(-100, 60)), 1)
    elif spec.kind == "calcified":
        design["centre_hu"] = round(float(rng.uniform(CALCIFIED_MIN_HU, 900)), 1)
        if design.get("pattern") == "central":
            design["hu"] = round(float(rng.uniform(-50, 80)), 1)
    design["background_hu"] = round(float(bg_hu), 1)


def blend_lesion(orig: np.ndarray, body: np.ndarray, core, spec: LesionSpec, design: dict,
                 noise: np.ndarray, noise_std_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend one lesion into its box of the scan.

    Args:
        orig: int16 (z, y, x) the scan's voxels in the lesion's box.
        body, core: occupancies on the box (`lesion_occupancy`).
        spec, design: the lesion and its drawn values (`draw_values`).
        noise: float32 unit-variance noise with the scan's texture, same shape.
        noise_std_z: float32 (z,) the scan's noise std (HU) on the box's slices.

    Returns:
        (new int16 box, footprint bool): only footprint voxels may differ from ``orig``.
    """
    rng = np.random.default_rng([spec.seed, 3])
    b = orig.astype(np.float32)
    out = b.copy()
    left = np.ones_like(b)                        # share of the original voxel still in it
    tex = smooth_field(rng, b.shape)
    if spec.kind in ("ground_glass", "part_solid"):
        aerated = np.clip((WALL_HU - _mean3(b)) / (WALL_HU - design["background_hu"]), 0, 1)
        out += body * aerated * np.float32(design["rise_hu"]) * (1 + 0.25 * tex)
    if spec.kind == "solid":
        _replace(out, left, body, np.float32(design["hu"]) + 12 * tex)
    elif spec.kind == "part_solid":
        _replace(out, left, core, np.float32(design["core_hu"]) + 12 * tex)
    elif spec.kind == "calcified":
        dense = core if core is not None else body
        if core is not None:
            _replace(out, left, body, np.float32(design["hu"]) + 12 * tex)
        peak = float(dense.max())
        c = np.unravel_index(int(np.argmax(dense)), dense.shape)
        bc = float(out[c])
        # the material's HU that shows ``centre_hu`` at the centre after partial volume
        material = bc + (design["centre_hu"] - bc) / max(peak, 0.3)
        design["material_hu"] = round(float(min(material, 3000.0)), 1)
        _replace(out, left, dense, np.float32(design["material_hu"]) + 20 * tex)
    out += noise * noise_std_z[:, None, None] * np.sqrt(np.clip(1 - left ** 2, 0, 1))
    foot = body >= FOOTPRINT_MIN
    if core is not None:
        foot |= core >= FOOTPRINT_MIN
    new = orig.copy()
    new[foot] = np.clip(np.rint(out[foot]), -3024, 3071).astype(np.int16)
    return new, foot


# --- preview ---------------------------------------------------------------------------------------

def lesion_montage(vol, hu: np.ndarray, placed, path, tile_px: int = 128, window=(-1350.0, 150.0)) -> Path:
    """PNG of each lesion's axial slice through its centre, before (top) and after (bottom)
    insertion, lung window; a crop of 2.6x the lesion's extent (at least 24 mm), labelled.

    ``vol``: the substrate `Volume`; ``hu``: int16 (z, y, x) the scan with the lesions;
    ``placed``: the lesions (`hybrid.Inserted`: ``spec`` and ``center_zyx``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = []
    for p in placed:
        z, y, x = (int(round(v)) for v in p.center_zyx)
        half = [max(12.0, 1.3 * p.spec.extent_mm) / s for s in vol.spacing_zyx_mm[1:]]
        ys = slice(max(y - int(half[0]), 0), y + int(half[0]) + 1)
        xs = slice(max(x - int(half[1]), 0), x + int(half[1]) + 1)
        pair = []
        for a in (vol.hu[z, ys, xs], hu[z, ys, xs]):
            g = np.clip((a.astype(np.float32) - window[0]) / (window[1] - window[0]), 0, 1) * 255
            pair.append(np.asarray(Image.fromarray(g.astype(np.uint8)).resize((tile_px, tile_px), Image.BILINEAR)))
        tile = Image.fromarray(np.concatenate([np.full((14, tile_px), 0, np.uint8), *pair], axis=0))
        loc = {"isolated": "iso", "juxta_pleural": "pleura", "juxta_vascular": "vessel"}[p.spec.location]
        ImageDraw.Draw(tile).text((2, 1), f"{p.spec.kind[:6]} {p.spec.shape[:5]} {loc} {p.spec.diameter_mm:.0f}",
                                  fill=255)
        cols.append(np.asarray(tile))
    if not cols:
        cols = [np.zeros((2 * tile_px + 14, tile_px), np.uint8)]
    sep = np.full((cols[0].shape[0], 2), 128, np.uint8)
    Image.fromarray(np.concatenate([c for col in cols for c in (col, sep)], axis=1)).save(path)
    return path
