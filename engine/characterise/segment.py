"""Segment and measure one finding: threshold region growing in a local crop.

Method (one seed, the candidate's centre), on a crop of +-``crop_half_mm`` smoothed by a small
Gaussian (noise) so that thresholds meet edges at their half-maximum:

1. Parenchyma level ``bg``: the median of the crop's lung voxels below -500 HU.
2. Seed: the centre, or the nearest voxel within ``search_mm`` at least 80 HU above ``bg``;
   ``peak``: the highest smoothed value within 1.5 mm of it.
3. Chest wall: the lung's air (lung mask, below ``bg`` + 100 HU) closed by a ball of
   ``wall_close_mm``: a juxta-pleural lesion's pocket is filled, the wall is not. The lesion is cut
   along that surface, so it keeps its volume on the lung side and loses the wall.
4. Each region: the component holding the seed of (smoothed >= threshold) inside that surface,
   opened by a ball of 0.6 x the lesion's inscribed radius (vessels thinner than that are cut
   off), then grown back by the same radius within the thresholded voxels (the margin's detail
   returns, the vessels do not), holes filled slice by slice (cavities belong to the lesion).
5. Type: no voxel near the seed reaches ``solid_hu`` (-300): ground glass, the region at half way
   from ``bg`` to its own level. That level is the median of 1 mm shell medians around the seed out
   to where they fall below half way (vessels and texture inside the glass do not raise it), and a
   large lesion is segmented smoothed by 0.1 x its radius (at most 1 mm), so that its texture does
   not break it into pieces. Else the solid region at ``solid_hu``; the ring 1.8-3 mm around it
   (in plane) tells glass from lung: its median at least 75 HU and 1.2 x the noise above ``bg``
   (below 150 HU, the ring 3-4.5 mm out must keep 40 % of that: a solid lesion's blurred edge does
   not reach so far) is part-solid, the whole lesion at half way to the glass (smoothed like ground
   glass of its size); else solid, the whole lesion at half way to the solid level. Calcified: at
   least ``calcified_fraction`` of the lesion above ``calcified_hu`` (200).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ccl import label
from ..errors import ConfigError
from ..morphology import fill_holes_2d
from .distance import close_ball, dilate_ball, distance_mm, erode_ball, gaussian_smooth
from .finding import Finding
from .location import Location
from .lungrads import category as lung_rads_category
from .rays import cut
from .shape import axial_axes, lobulated, protrusions


@dataclass(frozen=True)
class CharacteriseParams:
    """Settings of `characterise` (HU, mm)."""
    crop_half_mm: float = 22.0          # the crop around the centre, +- this (a size hint widens it to 32)
    smooth_mm: float = 0.5              # Gaussian sigma of the smoothing
    search_mm: float = 4.0              # how far from the centre the seed may be
    peak_mm: float = 1.5                # the lesion's peak: the highest smoothed value this near the seed
    solid_hu: float = -300.0            # solid tissue: at or above
    calcified_hu: float = 200.0         # calcium: at or above
    calcified_fraction: float = 0.04    # calcified lesion: at least this share of its volume
    total_calcified_fraction: float = 0.5
    wall_close_mm: float = 12.0         # closing radius of the lung's air (the wall's surface)
    wall_close_max_mm: float = 20.0     # ... and its largest, for a large lesion
    open_share: float = 0.8             # vessel cut: opening radius / the lesion's inscribed radius
    glass_smooth_share: float = 0.1     # ground glass is segmented smoothed by this x its radius (mm) ...
    glass_smooth_max_mm: float = 1.0    # ... at most this, at least smooth_mm
    glass_contrast_hu: float = 75.0     # glass: at least this far above the parenchyma ...
    glass_noise_factor: float = 1.2     # ... and this x the parenchyma's noise (its MAD x 1.4826); below
    glass_clear_hu: float = 150.0       # this, the glass goes on in the ring farther out ...
    glass_far_share: float = 0.4        # ... at least this share of the ring's contrast
    solid_level_min_hu: float = -100.0  # a solid lesion's level (its solid part's 90th percentile) at least this
    ring_mm: tuple = (1.8, 3.0)         # glass is looked for this far (in plane) from the solid part
    ring_far_mm: tuple = (3.0, 4.5)     # ... and, when faint, this far
    reach_share: float = 2.2            # a region reaches no farther from the seed than this x its inscribed
                                        # radius + 1.5 mm (an ellipsoid of axes 1 : 2.5 fits)
    ray_keep: float = 1.25              # attachments: rays beyond this x the fitted outline (0: no ray cut)
    ray_margin_mm: float = 0.3          # ... + this; they are cut at the outline + this

    def __post_init__(self) -> None:
        for name in ("crop_half_mm", "smooth_mm", "search_mm", "wall_close_mm", "open_share"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.calcified_fraction <= self.total_calcified_fraction <= 1:
            raise ConfigError(f"need 0 < calcified_fraction <= total_calcified_fraction <= 1, got "
                              f"{self.calcified_fraction}, {self.total_calcified_fraction}")


def _box(center_zyx, half_vox, shape):
    c = np.round(np.asarray(center_zyx, float)).astype(int)
    lo = np.clip(c - half_vox, 0, np.asarray(shape))
    hi = np.clip(c + half_vox + 1, 0, np.asarray(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _ball(shape, seed, radius_mm, spacing):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g[i] - seed[i]) * spacing[i]) ** 2 for i in range(3))
    return d2 <= radius_mm * radius_mm


def _component(mask, seed, spacing, reach_mm):
    """The component of ``mask`` holding ``seed``, or the one nearest to it within ``reach_mm``."""
    if not mask.any():
        return None
    lab, _ = label(mask)
    k = lab[seed]
    if k == 0:
        pts = np.argwhere(lab > 0)
        d = np.sqrt((((pts - np.asarray(seed)) * spacing) ** 2).sum(1))
        j = int(np.argmin(d))
        if d[j] > reach_mm:
            return None
        k = lab[tuple(pts[j])]
    return lab == k


class _Crop:
    """The smoothed crop and what every region of it shares."""

    def __init__(self, sm, inside, seed, spacing, p):
        self.sm, self.inside, self.seed, self.spacing, self.p = sm, inside, seed, spacing, p

    def for_glass(self, raw, radius_mm: float) -> _Crop:
        """This crop, or for glass of ``radius_mm`` large enough, the crop of ``raw`` smoothed by
        ``glass_smooth_share`` x that radius (at most ``glass_smooth_max_mm``): a large lesion's
        texture breaks a threshold at half its contrast into pieces."""
        p = self.p
        sigma = float(np.clip(radius_mm * p.glass_smooth_share, p.smooth_mm, p.glass_smooth_max_mm))
        if sigma <= p.smooth_mm:
            return self
        return _Crop(gaussian_smooth(raw, sigma, self.spacing), self.inside, self.seed, self.spacing, p)

    def region(self, threshold):
        """(region, its holes, radius of the vessel cut mm) at ``threshold`` (module's step 4);
        (None, None, 0) when nothing at the seed passes it."""
        raw = (self.sm >= threshold) & self.inside
        comp = _component(raw, self.seed, self.spacing, self.p.search_mm)
        if comp is None:
            return None, None, 0.0
        dist = distance_mm(comp, self.spacing)
        near = _ball(comp.shape, self.seed, max(self.p.search_mm, 3.0), self.spacing)
        r_in = float(dist[near & comp].max(initial=0.0))
        # the lesion's centre: deep inside it and near the seed (a thicker vessel nearby is not it)
        pts = np.argwhere(near & comp)
        off_mm = np.sqrt((((pts - np.asarray(self.seed)) * self.spacing) ** 2).sum(1))
        centre = pts[int(np.argmax(dist[tuple(pts.T)] - 0.5 * off_mm))].astype(np.float64)
        open_mm = max(self.p.open_share * r_in, 0.55 * max(self.spacing[1:]))
        core = erode_ball(comp, open_mm, self.spacing)
        core = _component(core, self.seed, self.spacing, self.p.search_mm + open_mm)
        if core is None:   # thinner than the opening everywhere: keep it as it is
            region = comp
        else:
            # grown back a little farther than it was eroded: on a coarse grid the eroded set's voxels
            # lie inside the ideal one, and the margin would lose a layer
            region = dilate_ball(core, open_mm + 0.75 * max(self.spacing), self.spacing) & raw
            region = _component(region, self.seed, self.spacing, self.p.search_mm + open_mm)
        # a vessel as thick as the lesion survives the cut: it is followed no farther than a lesion
        # of this inscribed radius reaches (an elongated one included)
        region &= _ball(region.shape, self.seed, self.p.reach_share * r_in + 1.5, self.spacing)
        if not region.any():   # the nearest component lies beyond the reach of so thin a lesion
            return None, None, 0.0
        filled = fill_holes_2d(np.ascontiguousarray(region))
        if self.p.ray_keep > 0:
            margin = max(self.p.ray_margin_mm, 0.75 * max(self.spacing))   # rays end on voxels
            star, cut_share = cut(filled, centre, self.spacing, self.p.ray_keep, margin, wall=~self.inside)
            if cut_share > 0:
                star = _component(star, self.seed, self.spacing, self.p.search_mm + open_mm)
                if star is not None:
                    filled, region = star, region & star
        return filled, filled & ~region, open_mm


def _empty(center_zyx, spacing, location, note) -> Finding:
    c = tuple(float(v) for v in center_zyx)
    return Finding(False, np.zeros((0, 0, 0), bool), tuple(int(round(v)) for v in c), tuple(spacing), c, 0.0, 0.0,
                   0.0, 0.0, int(round(c[0])), None, None, 0.0, 0.0, "none", "none", False, False, False, False,
                   False, location, None, note)


@dataclass(frozen=True, eq=False)
class _Local:
    """The crop around a candidate: raw and smoothed HU, lung mask, parenchyma, seed and peak."""
    raw: np.ndarray
    lung: np.ndarray
    sm: np.ndarray
    par: np.ndarray
    bg: float
    seed: tuple
    peak: float
    off: np.ndarray


def _local(hu, lung_mask, center_zyx, half, spacing, p) -> _Local | str:
    """The crop of +-``half`` mm (module's steps 1-2); a note when there is nothing to segment."""
    box = _box(center_zyx, np.ceil(half / np.asarray(spacing)).astype(int), hu.shape)
    off = np.array([s.start for s in box])
    seed0 = np.clip(np.round(np.asarray(center_zyx, float)).astype(int) - off, 0,
                    np.array([s.stop - s.start for s in box]) - 1)
    raw = np.asarray(hu[box], dtype=np.float32)
    if raw.size == 0 or min(raw.shape) < 3:
        return "the centre lies outside the scan"
    lung = np.asarray(lung_mask[box], dtype=bool)
    sm = gaussian_smooth(raw, p.smooth_mm, spacing)
    par = sm[lung & (sm < -500)]
    bg = float(np.clip(np.median(par), -950.0, -700.0)) if par.size > 50 else -850.0
    near = _ball(sm.shape, seed0, p.search_mm, spacing) & (sm >= bg + 80.0)
    if not near.any():
        return "nothing denser than lung at the point"
    pts = np.argwhere(near)
    seed = tuple(int(v) for v in pts[np.argmin((((pts - seed0) * spacing) ** 2).sum(1))])
    peak = float(sm[_ball(sm.shape, seed, p.peak_mm, spacing)].max())
    return _Local(raw, lung, sm, par, bg, seed, peak, off)


_DIRS = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)],
                 float)
_DIRS /= np.linalg.norm(_DIRS, axis=1, keepdims=True)


def _extent_mm(sm, seed, spacing, level) -> float:
    """The lesion's size (mm): twice the median, over 26 directions, of how far from ``seed`` the
    smoothed crop stays at or above ``level`` (a ray that leaves the crop counts its length)."""
    t = np.arange(0.0, 64.0, 0.5)
    p = np.asarray(seed, float)[None, None, :] + t[None, :, None] * _DIRS[:, None, :] / np.asarray(spacing)
    idx = np.rint(p).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.asarray(sm.shape)), axis=2)
    idx = np.clip(idx, 0, np.asarray(sm.shape) - 1)
    above = ok & (sm[idx[..., 0], idx[..., 1], idx[..., 2]] >= level)
    stop = np.where(above.all(1), len(t), np.argmin(above, axis=1))
    return float(2.0 * np.median(t[np.clip(stop, 0, len(t) - 1)]))


def _plateau_level(sm, inside, seed, spacing, bg, start, shell_mm: float = 1.0, rounds: int = 4):
    """(level HU, radius mm) of a ground-glass lesion: the level is the median of the medians of
    1 mm shells around ``seed`` (inside the lung) out to the radius where they fall below half way
    from ``bg`` to that level, found by repeating from ``start``. Shell medians step over the vessels
    and the texture that a threshold at the lesion's peak would follow."""
    shell_mm = max(shell_mm, max(spacing))   # each shell holds voxels on thick slices too
    g = np.ogrid[tuple(slice(0, n) for n in sm.shape)]
    d = np.sqrt(sum(((g[i] - seed[i]) * spacing[i]) ** 2 for i in range(3)))
    k = (d / shell_mm).astype(np.int64)
    sel = inside & (k < 64)
    kk, vv = k[sel], sm[sel]
    order = np.argsort(kk, kind="stable")
    kk, vv = kk[order], vv[order]
    edges = np.searchsorted(kk, np.arange(kk.max(initial=0) + 2))
    med = np.array([np.median(vv[a:b]) if b - a >= 3 else np.nan for a, b in zip(edges[:-1], edges[1:])])
    level, n = float(start), 1
    for _ in range(rounds):
        below = np.flatnonzero(med < bg + 0.5 * (level - bg))   # a shell too small to tell (nan) is not
        n = max(int(below[0]) if below.size else len(med), 1)
        inner = med[:n][np.isfinite(med[:n])]
        if not inner.size:
            break
        level = float(np.median(inner))
    return level, n * shell_mm


def characterise(hu: np.ndarray, spacing_zyx_mm, lung_mask: np.ndarray, center_zyx, params=None, *,
                 size_hint_mm: float | None = None, location: Location | None = None) -> Finding:
    """Segment, measure and type the lesion at ``center_zyx``.

    ``hu``: (z, y, x) HU (int16 or float32), a whole scan or any part of it; ``spacing_zyx_mm``:
    its voxel size; ``lung_mask``: bool, ``hu``'s shape (the lungs, may be dilated into the wall;
    outside the crop it is not read); ``center_zyx``: continuous voxel index of the candidate;
    ``size_hint_mm``: the detector's diameter estimate, widening the crop for large lesions;
    ``location``: copied into the result (see `LungGeometry.locate`). -> `Finding` in ``hu``'s grid.
    """
    p = params or CharacteriseParams()
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    if hu.ndim != 3 or lung_mask.shape != hu.shape:
        raise ConfigError(f"hu (3-D) and lung mask must share a shape, got {hu.shape} and {lung_mask.shape}")
    own = not size_hint_mm
    half = p.crop_half_mm if own else float(np.clip(1.2 * size_hint_mm + 10.0, p.crop_half_mm, 32.0))
    loc = _local(hu, lung_mask, center_zyx, half, spacing, p)
    if isinstance(loc, str):
        return _empty(center_zyx, spacing, location, loc)
    if own:
        # no size from the detector: the lesion's own extent (a large one needs a wider crop and a
        # wall surface that bridges it)
        size_hint_mm = _extent_mm(loc.sm, loc.seed, spacing, loc.bg + 0.5 * (loc.peak - loc.bg))
        need = float(np.clip(1.2 * size_hint_mm + 10.0, p.crop_half_mm, 32.0))
        if need > half + 1.0:
            loc = _local(hu, lung_mask, center_zyx, need, spacing, p)
            if isinstance(loc, str):
                return _empty(center_zyx, spacing, location, loc)
    raw, lung, sm, par, bg, seed, peak, off = loc.raw, loc.lung, loc.sm, loc.par, loc.bg, loc.seed, loc.peak, loc.off

    air = lung & (sm < bg + 100.0)
    radius = float(np.clip(0.75 * size_hint_mm + 3, p.wall_close_mm, p.wall_close_max_mm)) if own else \
        float(np.clip(0.75 * size_hint_mm + 3, 6.0, p.wall_close_max_mm))
    # one voxel of tolerance: a closing leaves a shallow cap of a wall-attached lesion outside
    inside = dilate_ball(close_ball(air, radius, spacing), 0.75 * max(spacing), spacing) if air.any() else lung
    if not inside[seed]:
        # a wall-attached lesion drawn from a centre in the wall's place: seed it on the lung side
        near = _ball(sm.shape, seed, p.search_mm, spacing) & inside & (sm >= bg + 80.0)
        if near.any():
            pts = np.argwhere(near)
            seed = tuple(int(v) for v in pts[np.argmin((((pts - np.asarray(seed)) * spacing) ** 2).sum(1))])
            peak = float(sm[_ball(sm.shape, seed, p.peak_mm, spacing) & inside].max())
    cr = _Crop(sm, inside, seed, spacing, p)

    solid, glass_level = None, None
    if peak >= p.solid_hu:
        solid, _, r_open = cr.region(p.solid_hu)
    if solid is None:   # ground glass: half way from the parenchyma to the lesion's own level
        first, _, _ = cr.region(bg + 0.5 * (peak - bg))
        if first is None:
            return _empty(center_zyx, spacing, location, "no region at the point")
        level, radius_mm = _plateau_level(sm, inside, seed, spacing, bg, float(np.median(sm[first])))
        whole, holes, r_open = cr.for_glass(raw, radius_mm).region(bg + 0.5 * (level - bg))
        kind = "ground_glass"
    else:
        # a ring around the solid part, in plane (slices are thicker than pixels), beyond its blurred edge
        d_solid = distance_mm(~solid, (1e3, spacing[1], spacing[2]))
        area = solid.sum(axis=(1, 2))

        def ring_at(mm):
            r = (d_solid > mm[0]) & (d_solid <= mm[1]) & inside & (sm < p.solid_hu)   # glass is not solid
            r[area < 0.5 * area.max()] = False   # the solid's end slices: partial volume, not glass
            return r

        ring = ring_at(p.ring_mm)
        glass_level = float(np.median(sm[ring])) if ring.sum() > 10 else bg
        noise = float(1.4826 * np.median(np.abs(par - np.median(par)))) if par.size > 50 else 30.0
        contrast = glass_level - bg
        if p.glass_contrast_hu <= contrast < p.glass_clear_hu:
            # a faint ring: glass goes on farther out, the blurred edge of a solid lesion does not
            far = ring_at(p.ring_far_mm)
            far_contrast = float(np.median(sm[far])) - bg if far.sum() > 10 else 0.0
            if far_contrast < p.glass_far_share * contrast:
                contrast = 0.0
        if contrast >= max(p.glass_contrast_hu, p.glass_noise_factor * noise):
            level = float(np.percentile(sm[ring & (sm > bg + 0.5 * (glass_level - bg))], 50))
            threshold = bg + 0.5 * (min(level, p.solid_hu) - bg)
            whole, holes, r_open = cr.region(threshold)
            if whole is not None:   # a large glass halo: again, smoothed as a ground-glass lesion of its size
                gcr = cr.for_glass(raw, float((3.0 * whole.sum() * np.prod(spacing) / (4.0 * np.pi)) ** (1.0 / 3.0)))
                if gcr is not cr:
                    again = gcr.region(threshold)
                    if again[0] is not None:
                        whole, holes, r_open = again
            kind = "part_solid"
            if whole is not None:
                whole |= solid
        else:
            level = float(np.clip(np.percentile(sm[solid], 90), p.solid_level_min_hu, 100.0))
            whole, holes, r_open = cr.region(bg + 0.5 * (level - bg))
            kind = "solid"
    if whole is None or not whole.any():
        return _empty(center_zyx, spacing, location, "no region at the point")
    return _measure(raw, sm, whole, holes, solid, inside, cr, off, spacing, kind, bg, r_open, location, p)


def _measure(raw, sm, whole, holes, solid, inside, cr, off, spacing, kind, bg, r_open, location, p) -> Finding:
    vox = float(np.prod(spacing))
    volume = float(whole.sum()) * vox
    long_mm, short_mm, z_axial = axial_axes(whole, spacing)
    mean_d = round((long_mm + short_mm) / 2.0, 1)
    core_d = core_v = None
    if kind == "part_solid" and solid is not None:
        core = solid & whole
        core_v = float(core.sum()) * vox
        cl, cs, _ = axial_axes(core, spacing)
        core_d = round((cl + cs) / 2.0, 1)
        if core_v >= 0.7 * volume:   # glass in name only: a thin rim of partial volume
            kind, core_d, core_v = "solid", None, None
    calc_share = float((sm[whole] >= p.calcified_hu).sum()) / max(int(whole.sum()), 1)
    calcification = "total" if calc_share >= p.total_calcified_fraction else \
        "partial" if calc_share >= p.calcified_fraction else "none"
    if calcification != "none":
        kind, core_d, core_v = "calcified", None, None
    cavity = bool((holes & (sm < bg + 50.0)).sum() * vox >= max(2.0 * vox, 0.01 * volume, 1.0))
    spicules, vessels = protrusions(cr.sm, whole, inside, bg, spacing)
    d_wall = distance_mm(inside, spacing)
    juxta_pleural = bool(d_wall[whole].min(initial=99.0) <= 1.0 + max(spacing))
    idx = np.argwhere(whole)
    lo, hi = idx.min(0), idx.max(0) + 1
    centroid = tuple(float(v) for v in idx.mean(0) + off)
    cat = lung_rads_category(kind, mean_d, core_d)
    return Finding(
        segmented=True, mask=whole[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy(),
        offset_zyx=tuple(int(v) for v in lo + off), spacing_zyx_mm=tuple(spacing), centroid_zyx=centroid,
        volume_mm3=round(volume, 2), long_axis_mm=round(long_mm, 2), short_axis_mm=round(short_mm, 2),
        mean_diameter_mm=mean_d, axial_index=int(z_axial + off[0]), solid_core_mean_diameter_mm=core_d,
        solid_core_volume_mm3=None if core_v is None else round(core_v, 2),
        mean_hu=round(float(raw[whole].mean()), 1), max_hu=round(float(raw[whole].max()), 1), type=kind,
        calcification=calcification, spiculation=spicules >= 3, lobulation=lobulated(whole, z_axial, spacing),
        cavity=cavity, juxta_pleural=juxta_pleural, juxta_vascular=vessels >= 1 and spicules < 3,
        location=location, lung_rads=cat,
        note=f"parenchyma {bg:.0f} HU, vessel cut {r_open:.1f} mm")
