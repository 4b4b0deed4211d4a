"""Lung mask: threshold, connected components, airway removal, hole filling, wall lesions, dilation.

The method of the seed papers (threshold near -320 HU, keep the large air components
inside the body, close and fill), on numba kernels. The algorithm, as it would run on
the scan's own voxels (bench/reference.py runs steps 1-6 with scipy/skimage):

1. air = HU < ``threshold_hu``.
2. 6-connected components (`engine.ccl`). Components touching the in-plane border of
   the volume are outside air: the air around the patient, under the table, and the
   -2000/-3024 field-of-view padding. Components touching only the first or last
   slice are kept: lungs are often cut by the scan's ends.
3. Trachea and main bronchi: voxels whose 3x3 in-plane mean is below ``airway_hu``
   (true air; aerated lung is about -850) form tubes; those reaching the most superior
   slice of the lung component with a small cross-section there are the trachea with
   its bronchial tree (the lumen). The lumen and its partial-volume rim (3 mm in plane)
   are taken out of the air mask.
4. The lungs: the largest component, plus the second largest if it holds at least
   ``second_lung_ratio`` of the first (else the lungs touch, or one is absent).
5. Holes (vessels, nodules, intrapulmonary bronchi) filled per axial slice, a small
   in-plane closing (``close_mm``), holes filled again.
6. Juxta-pleural lesions (``wall_lesion_mm``, `engine.wall_pockets.fill_wall_pockets`): per
   axial slice, the pockets between the lungs' common convex hull and the lungs (step 5's
   lungs before the closing) that have a lesion's size, lie beside one lung and do not open
   towards the midline are filled, and the circle each outlines is taken as the equator of
   a ball of soft tissue: the part of a solid nodule buried in the chest wall's position,
   which no threshold sees, comes back with it (the space between the lungs, the heart's
   and the liver's impressions, rib impressions are left alone: too large, beside both
   lungs, opening medially, too tall or too flat for a lesion). Then an optional dilation
   by ``dilate_mm`` so that candidates at the pleura stay inside.
7. The extrapulmonary airway is cut out again: the lumen voxels that the lung does not
   enclose in their axial slice (trachea, main bronchi up to the hilum), grown by the
   3 mm rim, minus the lung's own air. Without this step the closing, the hole filling
   and the dilation put the main bronchi back into the mask at the hilum.

Speed: steps 3-7 run on a coarse grid of blocks of about ``grid_mm`` (e.g. 2 x 2 x 2
voxels of a 0.7 x 0.7 x 1 mm scan: 8x fewer voxels). Steps 1-2 never do: a block's
mean mixes the voxels on both sides of a thin wall (and -2048 padding drags a block of
chest wall below any air threshold), so a coarse labelling can join a lung to the air
outside. They run on the scan's own voxels as x runs (`engine.ccl.RunComponents`), and
the blocks are summarised over the lungs' box only: lung air where most of a block's
voxels belong to the chosen components, lumen where most are true air. The coarse
result is then checked against the full-resolution components: if the coarse lungs (with
the blocks next to them) hold less than ``MIN_COARSE_COVERAGE`` of the air that step 4
keeps at full resolution, or lose every lung to the airway, the mask is recomputed at
full resolution, with a warning. The boundary is drawn on the scan's own voxels: blocks
at the coarse mask's boundary that hold lung air take the exact threshold voxel by voxel
(those that also hold other air, as the padding beyond a thin wall, are left out), the
others are wholly in or out, and the dilation runs at full resolution. ``grid_mm=0`` runs
everything at full resolution.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from numba import njit, prange

from .ccl import RunComponents, component_stats, label
from .errors import ConfigError, VolumeError
from .morphology import (
    block_mean,
    block_stats,
    clear_blocks,
    close,
    dilate,
    erode,
    fill_holes_2d,
    refine_blocks,
    smoothed_below,
)
from .volume import Volume
from .wall_pockets import fill_wall_pockets

log = logging.getLogger(__name__)

AIRWAY_RIM_MM = 3.0  # the airway lumen's partial-volume rim (air blurred into the wall), in plane
# the coarse grid's result stands when its lungs hold this much of the air that full resolution keeps
MIN_COARSE_COVERAGE = 0.9


@dataclass(frozen=True)
class LungMaskParams:
    threshold_hu: float = -320.0
    min_lung_ml: float = 50.0          # smaller air components are bowel gas, noise, etc.
    second_lung_ratio: float = 0.15
    airway_hu: float = -950.0
    max_trachea_area_mm2: float = 700.0
    close_mm: float = 4.0
    dilate_mm: float = 0.0
    grid_mm: float = 2.0               # coarse block size for the topology; 0 = the scan's own voxels
    wall_lesion_mm: float = 30.0       # juxta-pleural lesions up to this size (mm) are taken in (step 6); 0 = off

    def __post_init__(self) -> None:
        if not -1000 < self.threshold_hu < 0:
            raise ConfigError(f"threshold_hu must be in (-1000, 0), got {self.threshold_hu}")
        if self.dilate_mm < 0 or self.close_mm < 0:
            raise ConfigError(f"dilate_mm and close_mm must be >= 0, got {self.dilate_mm}, {self.close_mm}")
        if not 0 <= self.grid_mm <= 4:
            raise ConfigError(f"grid_mm must be in [0, 4] (0: full resolution), got {self.grid_mm}")
        if not 0 <= self.wall_lesion_mm <= 60:
            raise ConfigError(f"wall_lesion_mm must be in [0, 60] (0: off), got {self.wall_lesion_mm}")


def _radius_vox(mm: float, spacing_zyx) -> tuple[int, int, int]:
    return tuple(int(round(mm / s)) for s in spacing_zyx)  # type: ignore[return-value]


def grid_factors(spacing_zyx_mm, grid_mm: float) -> tuple[int, int, int]:
    """Block size (f_z, f_y, f_x) in voxels: the largest whole number of voxels within ``grid_mm``
    per axis, at least 1 (0.7 mm -> 2, 1.0 -> 2, 1.25 -> 1, 0.5 -> 4 for grid_mm = 2)."""
    if grid_mm <= 0:
        return (1, 1, 1)
    return tuple(max(1, int(grid_mm / s + 1e-6)) for s in spacing_zyx_mm)  # type: ignore[return-value]


def _keep(labels: np.ndarray, n: int, keep) -> np.ndarray:
    lut = np.zeros(n + 1, dtype=np.bool_)
    lut[np.asarray(keep, dtype=np.int64)] = True
    return lut[labels]


def _airway_lumen(hu, mask, spacing_zyx, superior_last: bool, p: LungMaskParams, smooth: bool,
                  true_air=None) -> np.ndarray:
    """Bool: the trachea and the bronchial tree below it (true air reaching the top slice), or all False.
    ``true_air``: the true-air candidates if the caller has them (the coarse grid's blocks)."""
    if true_air is not None:
        air = mask & true_air
        air[:, 0] = air[:, -1] = air[:, :, 0] = air[:, :, -1] = False
    elif smooth:
        air = smoothed_below(hu, mask, p.airway_hu)
    else:
        # the coarse grid's block means already average 2+ voxels in plane, as the 3x3 mean does
        air = mask & (hu < p.airway_hu)
        air[:, 0] = air[:, -1] = air[:, :, 0] = air[:, :, -1] = False
    labels, n = label(air)
    if n == 0:
        return air
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    top = zs[-1] if superior_last else zs[0]
    pixel_mm2 = spacing_zyx[1] * spacing_zyx[2]
    ids, counts = np.unique(labels[top][labels[top] > 0], return_counts=True)
    sizes, _ = component_stats(labels, n)
    total = int(np.count_nonzero(mask))
    # the trachea: a thin tube reaching the top slice, a few percent of the lungs' volume;
    # not the apex of a lung cut by the scan's end (large area or large volume)
    keep = [i for i, c in zip(ids, counts) if c * pixel_mm2 <= p.max_trachea_area_mm2 and sizes[i] < 0.1 * total]
    return _keep(labels, n, keep) if keep else np.zeros(mask.shape, dtype=np.bool_)


def _lung_air_ids(sizes, border, voxel_ml: float, p: LungMaskParams, series_uid: str) -> np.ndarray:
    """Step 1's choice: the air components inside the body of at least ``min_lung_ml``."""
    ok = np.flatnonzero((~border) & (sizes * voxel_ml >= p.min_lung_ml))
    ok = ok[ok > 0]
    if ok.size == 0:
        raise VolumeError(f"no lung found: no air component of at least {p.min_lung_ml} mL inside the body "
                          f"(threshold {p.threshold_hu} HU) in series {series_uid}")
    return ok


def _margin(spacing_zyx, p: LungMaskParams) -> tuple[int, int, int]:
    """The lungs' box margin on a grid: the closing's dilation must not reach the box's edge, nor its
    erosion see past it (2 r + 1), plus one voxel for the boundary band; the wall pass's circles
    reach up to 0.6 x ``wall_lesion_mm`` past the lungs."""
    rc = _radius_vox(p.close_mm, spacing_zyx) if p.close_mm > 0 else (0, 0, 0)
    rw = [int(np.ceil(0.6 * p.wall_lesion_mm / s)) + 1 for s in spacing_zyx]
    return (2, max(2 * rc[1] + 2, rw[1]), max(2 * rc[2] + 2, rw[2]))


def _grown(boxes, ok, margin, shape) -> tuple[int, ...]:
    box = []
    for a in range(3):
        box += [max(int(boxes[ok, 2 * a].min()) - margin[a], 0),
                min(int(boxes[ok, 2 * a + 1].max()) + margin[a], shape[a])]
    return tuple(box)


def lung_air(hu: np.ndarray, spacing_zyx_mm, p: LungMaskParams, series_uid: str = ""):
    """Steps 1-2 on ``hu``'s own grid: (box, air) with box = (z0, z1, y0, y1, x0, x1), the lungs'
    bounding box grown by `_margin`, and air the bool mask of the chosen components over it."""
    runs = RunComponents(hu, p.threshold_hu)  # no label image: sizes, border and boxes from x runs
    ok = _lung_air_ids(runs.sizes, runs.border, float(np.prod(spacing_zyx_mm)) / 1000.0, p, series_uid)
    box = _grown(runs.boxes, ok, _margin(spacing_zyx_mm, p), hu.shape)
    return box, runs.mask(ok, box)


@dataclass(frozen=True, eq=False)
class Topology:
    """What `lung_topology` finds, on its grid, over ``box`` = (z0, z1, y0, y1, x0, x1): bool arrays
    of the box's shape: ``closed`` the lung closed, filled and widened at the wall; ``lung`` the kept
    air components before that; ``air`` = values < threshold; ``removed`` the airway taken out of
    the air mask (lumen + rim); ``cut`` the extrapulmonary airway to cut from the final mask."""

    box: tuple
    closed: np.ndarray
    lung: np.ndarray
    air: np.ndarray
    removed: np.ndarray
    cut: np.ndarray
    foreign: np.ndarray | None = None  # coarse grid: blocks that hold air of no chosen component


def lung_topology(hu: np.ndarray, spacing_zyx_mm, superior_last: bool, p: LungMaskParams,
                  series_uid: str = "", smooth: bool = True, lungs=None, true_air=None,
                  grid_shape=None) -> Topology:
    """Steps 1-7 of the module docstring on one grid, without the final dilation.

    ``hu``: (z, y, x) int16 or float32 HU on a grid of spacing ``spacing_zyx_mm``. ``lungs``: steps
    1-2's (box, air) (`lung_air`), default: found on ``hu`` itself; everything then runs on the
    box, whose margin keeps the closing, the wall pass and the boundary band exact. ``grid_shape``:
    the grid's shape when ``hu`` holds the box only (default: ``hu`` is the whole grid).
    ``true_air``: bool over the box, the airway's lumen candidates (default: ``hu``'s 3 x 3 in-plane
    mean below ``airway_hu``, or ``hu`` below it when ``smooth`` is False).
    """
    box, mask = lungs if lungs is not None else lung_air(hu, spacing_zyx_mm, p, series_uid)
    shape = hu.shape if grid_shape is None else tuple(grid_shape)
    # the closing treats the world past the box as background; where the box stops at the scan's
    # edge (lungs a few mm from it) it pads, or the closing's dilation would stick to the edge
    clipped = box[2] == 0 or box[4] == 0 or box[3] == shape[1] or box[5] == shape[2]
    midline_x = (shape[2] - 1) / 2 - box[4]  # the scan's middle column: where it centres the patient
    if grid_shape is None:
        hu = hu[tuple(slice(box[2 * a], box[2 * a + 1]) for a in range(3))]
    hu = np.ascontiguousarray(hu)
    rc = _radius_vox(p.close_mm, spacing_zyx_mm) if p.close_mm > 0 else (0, 0, 0)
    lumen = _airway_lumen(hu, mask, spacing_zyx_mm, superior_last, p, smooth, true_air)
    r = max(1, int(round(AIRWAY_RIM_MM / min(spacing_zyx_mm[1:]))))
    rim = dilate(lumen, (0, r, r)) & mask if lumen.any() else lumen
    if rim.any():
        log.debug("removed %d airway voxels", int(np.count_nonzero(rim)))
        mask &= ~rim
    labels, n = label(mask)
    if n == 0:
        raise VolumeError(f"no lung found: only airways in series {series_uid}")
    sizes, _ = component_stats(labels, n)
    order = np.argsort(sizes[1:])[::-1] + 1
    keep = [order[0]]
    if len(order) > 1 and sizes[order[1]] >= p.second_lung_ratio * sizes[order[0]]:
        keep.append(order[1])
    which = np.zeros(n + 1, dtype=np.uint8)
    which[np.asarray(keep)] = np.arange(1, len(keep) + 1)
    which = which[labels]  # 1, 2: the lung each voxel belongs to
    del labels
    lung = which > 0
    if len(keep) == 1:
        _split_joined_lungs(lung, which)
    filled = fill_holes_2d(lung)
    closed = fill_holes_2d(_close_in_plane(filled, rc, clipped)) if p.close_mm > 0 else filled
    if p.wall_lesion_mm > 0:
        # on the lung before the closing, which rounds a lesion's pocket off into a shallow one
        closed |= fill_wall_pockets(filled, hu, p.threshold_hu, spacing_zyx_mm, p.wall_lesion_mm, which, midline_x)
    del which
    outside = lumen & ~filled  # lumen the lung does not enclose in its slice: trachea, main bronchi
    cut = dilate(outside, (0, r, r)) & ~lung if outside.any() else outside
    return Topology(tuple(box), closed, lung, hu < p.threshold_hu, rim, cut)


def _close_in_plane(mask: np.ndarray, rc, pad: bool) -> np.ndarray:
    """In-plane closing by a (2 rc + 1) box, the world past ``mask``'s in-plane edges background
    (``pad``: padded by rc first, for a mask that reaches near its edges)."""
    if not pad:
        return close(mask, (0, rc[1], rc[2]))
    big = close(np.pad(mask, ((0, 0), (rc[1], rc[1]), (rc[2], rc[2]))), (0, rc[1], rc[2]))
    return np.ascontiguousarray(big[:, rc[1]:big.shape[1] - rc[1], rc[2]:big.shape[2] - rc[2]])


def _split_joined_lungs(lung: np.ndarray, which: np.ndarray) -> None:
    """Two lungs kept as one component (touching at the anterior junction, or joined by an airway
    the airway step missed): where the lung's voxel count per x column dips to less than half of
    both sides' peaks in the middle third of its width (the mediastinum), ``which`` becomes 2 beyond
    the dip, in place, so that the wall pass never takes the space between them for a lesion's."""
    profile = np.count_nonzero(lung, axis=(0, 1))
    xs = np.flatnonzero(profile)
    if xs.size < 9:
        return
    a, b = xs[0] + (xs[-1] - xs[0]) // 3, xs[-1] - (xs[-1] - xs[0]) // 3
    v = a + int(np.argmin(profile[a:b + 1]))
    if profile[v] < 0.5 * min(profile[:v].max(), profile[v + 1:].max()):
        which[:, :, v:][lung[:, :, v:]] = 2


@njit(cache=True, parallel=True)
def _summarise_blocks(counts, ntrue, f, box, shape, air, lumen, has_lung, foreign):
    """Per block of ``box``: lung air (most of its voxels chosen air), lumen (most true air), any lung
    air, any other air; ``counts[0:3]``: the voxels of the expected lungs, of the other chosen air,
    of other air (`RunComponents.block_counts`)."""
    cz, cy, cx = air.shape
    for k in prange(cz):
        nk = min((box[0] + k) * f[0] + f[0], shape[0]) - (box[0] + k) * f[0]
        for j in range(cy):
            nkj = nk * (min((box[2] + j) * f[1] + f[1], shape[1]) - (box[2] + j) * f[1])
            for i in range(cx):
                n = nkj * (min((box[4] + i) * f[2] + f[2], shape[2]) - (box[4] + i) * f[2])
                c = counts[0, k, j, i] + counts[1, k, j, i]
                air[k, j, i] = 2 * c >= n
                lumen[k, j, i] = 2 * ntrue[k, j, i] >= n
                has_lung[k, j, i] = c > 0
                foreign[k, j, i] = counts[2, k, j, i] > 0


def coarse_topology(hu: np.ndarray, spacing_zyx_mm, f, superior_last: bool, p: LungMaskParams,
                    series_uid: str = "") -> tuple[Topology | None, float]:
    """`lung_topology` on the grid of f_z x f_y x f_x blocks of ``hu`` (int16, the scan's voxels).

    Steps 1-2 run on the scan's own voxels (`RunComponents`: its air as x runs, one read more than
    block means alone), so which air is lung never depends on the blocks: a block's mean mixes the
    voxels on both sides of a thin wall, and the -2048 padding drags a block of wall below any air
    threshold. The blocks are then summarised over the lungs' box only: lung air where most of a
    block's voxels belong to the chosen components, airway lumen where most are true air. Returns
    (topology on the block grid, coverage): coverage is the fraction of the air that step 4 keeps
    at full resolution (the largest chosen component, and the second if it holds
    ``second_lung_ratio`` of the first, voxel for voxel) that lies in the kept coarse lung or the
    blocks next to it; (None, 0.0) when the coarse grid leaves no lung after the airway's removal.
    """
    runs = RunComponents(hu, p.threshold_hu)
    ok = _lung_air_ids(runs.sizes, runs.border, float(np.prod(spacing_zyx_mm)) / 1000.0, p, series_uid)
    coarse_sp = tuple(s * k for s, k in zip(spacing_zyx_mm, f))
    cshape = tuple(-(-n // k) for n, k in zip(hu.shape, f))
    blocks = np.array(runs.boxes[ok])
    blocks[:, 0::2] //= np.array(f)
    blocks[:, 1::2] = -(-blocks[:, 1::2] // np.array(f))  # half-open ends in blocks: ceil
    box = _grown(blocks, np.arange(len(ok)), _margin(coarse_sp, p), cshape)
    mean, ntrue = block_stats(hu, f, p.airway_hu, box)  # the lungs' box only
    # step 4 at full resolution would keep the largest chosen component, and the second if it holds
    # second_lung_ratio of the first: the coverage check's reference
    order = ok[np.argsort(runs.sizes[ok])[::-1]]
    expected = list(order[:1])
    if len(order) > 1 and runs.sizes[order[1]] >= p.second_lung_ratio * runs.sizes[order[0]]:
        expected.append(order[1])
    group = np.full(runs.n + 1, 3, dtype=np.int64)  # 1: expected lungs, 2: other chosen air, 3: other air
    group[0] = 0
    group[ok] = 2
    group[expected] = 1
    counts = runs.block_counts(group, f, box)
    air, lumen, has_lung, foreign = (np.empty(mean.shape, dtype=np.bool_) for _ in range(4))
    _summarise_blocks(counts, ntrue, np.array(f, dtype=np.int64), np.array(box, dtype=np.int64),
                      np.array(hu.shape, dtype=np.int64), air, lumen, has_lung, foreign)
    try:
        # the lumen: blocks whose voxels are mostly true air (a block mean below airway_hu needs
        # nearly all of them, and loses the main bronchi where they leave a small trachea)
        topo = lung_topology(mean, coarse_sp, superior_last, p, series_uid, lungs=(tuple(int(v) for v in box), air),
                             true_air=lumen, grid_shape=cshape)
    except VolumeError as e:
        log.warning("coarse lung mask: %s", e)
        return None, 0.0
    # the boundary band is drawn voxel by voxel in every block that holds lung air (a block mean
    # above the threshold can hide a majority of air voxels: partial volume at the pleura)
    topo = replace(topo, air=topo.air | has_lung, foreign=foreign)
    kept = counts[0][dilate(topo.lung, (1, 1, 1))].sum()
    return topo, int(kept) / max(int(runs.sizes[expected].sum()), 1)


def _dilate_in_box(mask: np.ndarray, box, radius_zyx) -> np.ndarray:
    """Dilate ``mask`` (all True voxels inside ``box`` = (z0, z1, y0, y1, x0, x1)) within the box grown
    by the radius: the rest of the volume stays False, and is never read."""
    lo = [max(box[2 * a] - radius_zyx[a], 0) for a in range(3)]
    hi = [min(box[2 * a + 1] + radius_zyx[a], mask.shape[a]) for a in range(3)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    mask[sl] = dilate(mask[sl], radius_zyx)
    return mask


class HostPasses:
    """The lung mask's full-resolution passes on the host (numba): the boundary drawn voxel by
    voxel, the dilation, the airway cut (and the scan's block means, which `lung_mask` no longer
    calls: its topology reads the scan's voxels on the host, `coarse_topology`).
    `engine.preprocess_cuda.DevicePasses` runs the same passes on the GPU; `lung_mask` drives either."""

    def __init__(self, hu: np.ndarray):
        self.hu = hu

    def block_mean(self, factors):
        return block_mean(self.hu, factors)

    def refine(self, code, factors, threshold_hu, origin):
        return refine_blocks(self.hu, code, factors, threshold_hu, origin_zyx=origin)

    def from_host(self, mask):
        return mask

    def dilate_in_box(self, mask, box, radius_zyx):
        return _dilate_in_box(mask, box, radius_zyx)

    def clear_blocks(self, mask, cut, factors, origin):
        clear_blocks(mask, cut, factors, origin_zyx=origin)
        return mask


def lung_mask(volume: Volume, params: LungMaskParams | None = None, passes=None, **overrides):
    """Boolean (z, y, x) lung mask of a CT volume, same shape as ``volume.hu``.

    ``overrides`` are `LungMaskParams` fields, e.g. ``lung_mask(vol, dilate_mm=3)``.
    ``passes``: where the full-resolution passes run (default `HostPasses`: a numpy array is
    returned; `engine.preprocess_cuda.DevicePasses`: a device array). The topology always runs
    on the host, on the coarse grid (or on the scan's voxels when the coarse grid's check fails).
    Raises VolumeError when no lung-sized air component exists inside the body.
    """
    p = params or LungMaskParams()
    if overrides:
        p = replace(p, **overrides)
    hu = volume.hu
    ops = passes if passes is not None else HostPasses(hu)
    sp = tuple(float(s) for s in volume.spacing_zyx_mm)
    superior_last = bool(volume.direction_matrix[2, 2] >= 0)
    f = grid_factors(sp, p.grid_mm)
    topo = None
    if f != (1, 1, 1):
        topo, coverage = coarse_topology(np.asarray(hu), sp, f, superior_last, p, volume.series_uid)
        if topo is None or coverage < MIN_COARSE_COVERAGE:
            # the blocks lost part of the lungs (an airway or a narrow lung split them differently):
            # the scan's own voxels decide
            log.warning("coarse-grid lung mask of series %s keeps %.1f %% of the lungs' air (< %.0f %%): "
                        "recomputed at full resolution", volume.series_uid, 100 * coverage, 100 * MIN_COARSE_COVERAGE)
            topo, f = None, (1, 1, 1)
    if topo is None:
        topo = lung_topology(hu, sp, superior_last, p, volume.series_uid)
        box = topo.box
        mask = np.zeros(hu.shape, dtype=np.bool_)
        mask[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = topo.closed
        mask = ops.from_host(mask)
    else:
        closed, air, rim = topo.closed, topo.air, topo.removed
        # blocks next to the coarse boundary take the exact threshold voxel by voxel; blocks the
        # closing, the hole filling or the wall pass added (vessels, nodules, walls) stay wholly in;
        # blocks of the removed airway stay out
        band = dilate(closed, (1, 1, 1)) & ~erode(closed, (1, 1, 1))
        code = np.where(closed & ~(band & air), 1, 0).astype(np.uint8)
        code[band & ((closed & air) | (~closed & ~rim))] = 2
        if topo.foreign is not None:
            # a boundary block that holds other air (the padding beyond a thin wall) is left out:
            # the threshold would take that air in, and the dilation grow it
            code[band & topo.foreign] = 0
        del band, air, rim
        mask = ops.refine(code, f, p.threshold_hu, topo.box[0::2])
    box, closed = topo.box, topo.closed
    if p.dilate_mm > 0:
        zs, ys, xs = (np.flatnonzero(closed.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
        # the fine mask lies within the coarse mask's box grown by one block
        fine_box = [v for idx, k, o, n in zip((zs, ys, xs), f, box[0::2], hu.shape)
                    for v in (max((o + int(idx[0]) - 1) * k, 0), min((o + int(idx[-1]) + 2) * k, n))]
        mask = ops.dilate_in_box(mask, fine_box, _radius_vox(p.dilate_mm, sp))
    if topo.cut.any():
        mask = ops.clear_blocks(mask, topo.cut, f, box[0::2])
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks."""
    inter = np.count_nonzero(a & b)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 2.0 * inter / total if total else 1.0
