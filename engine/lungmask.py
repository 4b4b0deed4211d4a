"""Lung mask: threshold, connected components, airway removal, hole filling, dilation.

The method of the seed papers (threshold near -320 HU, keep the large air components
inside the body, close and fill), on numba kernels. The algorithm, as it would run on
the scan's own voxels (bench/reference.py runs exactly this with scipy/skimage):

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
   in-plane closing (``close_mm``) to take in juxta-pleural nodules' bases, holes
   filled again, then an optional dilation by ``dilate_mm`` so that candidates at the
   pleura stay inside.
6. The extrapulmonary airway is cut out again: the lumen voxels that the lung does not
   enclose in their axial slice (trachea, main bronchi up to the hilum), grown by the
   3 mm rim, minus the lung's own air. Without this step the closing, the hole filling
   and the dilation of step 5 put the main bronchi back into the mask at the hilum.

Speed: steps 1-6 run on a coarse grid of blocks of about ``grid_mm`` (e.g. 2 x 2 x 2
voxels of a 0.7 x 0.7 x 1 mm scan: 8x fewer voxels), where the topology (which air is
lung, where the airways run, what is a hole) is the same as at full resolution. The
boundary is then drawn on the scan's own voxels: blocks at the coarse mask's boundary
take the exact threshold voxel by voxel, the others are wholly in or out, and the
dilation runs at full resolution. ``grid_mm=0`` runs everything at full resolution.
The scan's voxels are read twice (block means, boundary) and written once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from .ccl import RunComponents, component_stats, label
from .errors import ConfigError, VolumeError
from .morphology import block_mean, clear_blocks, close, dilate, erode, fill_holes_2d, refine_blocks, smoothed_below
from .volume import Volume

log = logging.getLogger(__name__)

AIRWAY_RIM_MM = 3.0  # the airway lumen's partial-volume rim (air blurred into the wall), in plane


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

    def __post_init__(self) -> None:
        if not -1000 < self.threshold_hu < 0:
            raise ConfigError(f"threshold_hu must be in (-1000, 0), got {self.threshold_hu}")
        if self.dilate_mm < 0 or self.close_mm < 0:
            raise ConfigError(f"dilate_mm and close_mm must be >= 0, got {self.dilate_mm}, {self.close_mm}")
        if not 0 <= self.grid_mm <= 4:
            raise ConfigError(f"grid_mm must be in [0, 4] (0: full resolution), got {self.grid_mm}")


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


def _airway_lumen(hu, mask, spacing_zyx, superior_last: bool, p: LungMaskParams, smooth: bool) -> np.ndarray:
    """Bool: the trachea and the bronchial tree below it (true air reaching the top slice), or all False."""
    if smooth:
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


def lung_topology(hu: np.ndarray, spacing_zyx_mm, superior_last: bool, p: LungMaskParams,
                  series_uid: str = "", smooth: bool = True):
    """Steps 1-6 of the module docstring on one grid, without the final dilation.

    ``hu``: (z, y, x) int16 or float32 HU on a grid of spacing ``spacing_zyx_mm``. After the
    first labelling, everything runs on the lungs' bounding box grown by a margin that keeps
    the closing and the boundary band exact. Returns (box, C, air, removed, cut): box =
    (z0, z1, y0, y1, x0, x1) in ``hu``'s voxels, and bool arrays of the box's shape: the closed
    lung C, air = hu < threshold, the airway removed from the air mask (lumen + rim), and the
    extrapulmonary airway to cut from the final mask.
    """
    runs = RunComponents(hu, p.threshold_hu)  # no label image: sizes, border and boxes from x runs
    sizes, border, boxes = runs.sizes, runs.border, runs.boxes
    voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000.0
    ok = np.flatnonzero((~border) & (sizes * voxel_ml >= p.min_lung_ml))
    ok = ok[ok > 0]
    if ok.size == 0:
        raise VolumeError(f"no lung found: no air component of at least {p.min_lung_ml} mL inside the body "
                          f"(threshold {p.threshold_hu} HU) in series {series_uid}")
    rc = _radius_vox(p.close_mm, spacing_zyx_mm) if p.close_mm > 0 else (0, 0, 0)
    # margin: the closing's dilation must not reach the box's edge, nor its erosion see past it
    # (2 r + 1), plus one voxel for the boundary band
    margin = (2, 2 * rc[1] + 2, 2 * rc[2] + 2)
    box = []
    for a in range(3):
        box += [max(int(boxes[ok, 2 * a].min()) - margin[a], 0),
                min(int(boxes[ok, 2 * a + 1].max()) + margin[a], hu.shape[a])]
    sl = tuple(slice(box[2 * a], box[2 * a + 1]) for a in range(3))
    hu = np.ascontiguousarray(hu[sl])
    mask = runs.mask(ok, box)
    del runs
    lumen = _airway_lumen(hu, mask, spacing_zyx_mm, superior_last, p, smooth)
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
    lung = _keep(labels, n, keep)
    del labels
    filled = fill_holes_2d(lung)
    closed = fill_holes_2d(close(filled, (0, rc[1], rc[2]))) if p.close_mm > 0 else filled
    outside = lumen & ~filled  # lumen the lung does not enclose in its slice: trachea, main bronchi
    cut = dilate(outside, (0, r, r)) & ~lung if outside.any() else outside
    return tuple(box), closed, hu < p.threshold_hu, rim, cut


def _dilate_in_box(mask: np.ndarray, box, radius_zyx) -> np.ndarray:
    """Dilate ``mask`` (all True voxels inside ``box`` = (z0, z1, y0, y1, x0, x1)) within the box grown
    by the radius: the rest of the volume stays False, and is never read."""
    lo = [max(box[2 * a] - radius_zyx[a], 0) for a in range(3)]
    hi = [min(box[2 * a + 1] + radius_zyx[a], mask.shape[a]) for a in range(3)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    mask[sl] = dilate(mask[sl], radius_zyx)
    return mask


class HostPasses:
    """The lung mask's full-resolution passes on the host (numba): the scan's block means, the
    boundary drawn voxel by voxel, the dilation, the airway cut. `engine.preprocess_cuda.
    DevicePasses` runs the same passes on the GPU; `lung_mask` drives either."""

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
    on the host, on the coarse grid.
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
    if f == (1, 1, 1):
        box, closed, _, _, cut = lung_topology(hu, sp, superior_last, p, volume.series_uid)
        mask = np.zeros(hu.shape, dtype=np.bool_)
        mask[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = closed
        mask = ops.from_host(mask)
    else:
        coarse_sp = tuple(s * k for s, k in zip(sp, f))
        box, closed, air, rim, cut = lung_topology(ops.block_mean(f), coarse_sp, superior_last, p,
                                                   volume.series_uid, smooth=min(f[1:]) < 2)
        # blocks next to the coarse boundary take the exact threshold voxel by voxel; blocks the
        # closing or the hole filling added (vessels, nodules, walls) stay wholly in; blocks of the
        # removed airway stay out
        band = dilate(closed, (1, 1, 1)) & ~erode(closed, (1, 1, 1))
        code = np.where(closed & ~(band & air), 1, 0).astype(np.uint8)
        code[band & ((closed & air) | (~closed & ~rim))] = 2
        del band, air, rim
        mask = ops.refine(code, f, p.threshold_hu, box[0::2])
    if p.dilate_mm > 0:
        zs, ys, xs = (np.flatnonzero(closed.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
        # the fine mask lies within the coarse mask's box grown by one block
        fine_box = [v for idx, k, o, n in zip((zs, ys, xs), f, box[0::2], hu.shape)
                    for v in (max((o + int(idx[0]) - 1) * k, 0), min((o + int(idx[-1]) + 2) * k, n))]
        mask = ops.dilate_in_box(mask, fine_box, _radius_vox(p.dilate_mm, sp))
    if cut.any():
        mask = ops.clear_blocks(mask, cut, f, box[0::2])
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks."""
    inter = np.count_nonzero(a & b)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 2.0 * inter / total if total else 1.0
