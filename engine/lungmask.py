"""Lung mask: threshold, connected components, airway removal, hole filling, dilation.

The method of the seed papers (threshold near -320 HU, keep the large air components
inside the body, close and fill), on numba kernels:

1. air = HU < ``threshold_hu``.
2. 6-connected components (`engine.ccl`). Components touching the in-plane border of
   the volume are outside air: the air around the patient, under the table, and the
   -2000/-3024 field-of-view padding. Components touching only the first or last
   slice are kept: lungs are often cut by the scan's ends.
3. Trachea and main bronchi: voxels whose 3x3 in-plane mean is below -950 HU (true
   air; aerated lung is about -850) form tubes; the one reaching the most superior
   slice of the lung component with a small cross-section there is the trachea with
   its main bronchi, and is removed.
4. The lungs: the largest component, plus the second largest if it holds at least
   ``second_lung_ratio`` of the first (else the lungs touch, or one is absent).
5. Holes (vessels, nodules, airway walls inside the lung) filled per axial slice, a
   small in-plane closing (``close_mm``) to take in juxta-pleural nodules' bases, holes
   filled again, then an optional dilation by ``dilate_mm`` so that candidates at the
   pleura stay inside.

Everything runs at the scan's own resolution: no resampling of the mask is needed
before cropping, and the boundary is exact to a voxel.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .ccl import component_stats, label
from .errors import ConfigError, VolumeError
from .morphology import close, dilate, fill_holes_2d, smoothed_below
from .volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LungMaskParams:
    threshold_hu: float = -320.0
    min_lung_ml: float = 50.0          # smaller air components are bowel gas, noise, etc.
    second_lung_ratio: float = 0.15
    airway_hu: float = -950.0
    max_trachea_area_mm2: float = 700.0
    close_mm: float = 4.0
    dilate_mm: float = 0.0

    def __post_init__(self) -> None:
        if not -1000 < self.threshold_hu < 0:
            raise ConfigError(f"threshold_hu must be in (-1000, 0), got {self.threshold_hu}")
        if self.dilate_mm < 0 or self.close_mm < 0:
            raise ConfigError(f"dilate_mm and close_mm must be >= 0, got {self.dilate_mm}, {self.close_mm}")


def _radius_vox(mm: float, spacing_zyx) -> tuple[int, int, int]:
    return tuple(int(round(mm / s)) for s in spacing_zyx)  # type: ignore[return-value]


def _largest(labels: np.ndarray, n: int, keep: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    lut = np.zeros(n + 1, dtype=np.bool_)
    lut[keep] = True
    return lut[labels]


def _remove_trachea(hu, mask, volume: Volume, p: LungMaskParams) -> np.ndarray:
    air = smoothed_below(hu, mask, p.airway_hu)
    labels, n = label(air)
    if n == 0:
        return mask
    superior_last = volume.direction_matrix[2, 2] >= 0
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    top = zs[-1] if superior_last else zs[0]
    pixel_mm2 = volume.spacing_zyx_mm[1] * volume.spacing_zyx_mm[2]
    ids, counts = np.unique(labels[top][labels[top] > 0], return_counts=True)
    sizes, _ = component_stats(labels, n)
    total = int(mask.sum())
    removed = np.zeros(mask.shape, dtype=bool)
    for i, c in zip(ids, counts):
        # the trachea: a thin tube reaching the top slice, a few percent of the lungs' volume;
        # not the apex of a lung cut by the scan's end (large area or large volume)
        if c * pixel_mm2 <= p.max_trachea_area_mm2 and sizes[i] < 0.1 * total:
            removed |= labels == i
    if removed.any():
        # take the lumen's partial-volume rim (air blurred into the wall) with it: 3 mm in plane
        r = max(1, int(round(3.0 / min(volume.spacing_zyx_mm[1:]))))
        removed = dilate(removed, (0, r, r)) & mask
        log.debug("removed %d airway voxels", int(removed.sum()))
    return mask & ~removed


def lung_mask(volume: Volume, params: LungMaskParams | None = None, **overrides) -> np.ndarray:
    """Boolean (z, y, x) lung mask of a CT volume, same shape as ``volume.hu``.

    ``overrides`` are `LungMaskParams` fields, e.g. ``lung_mask(vol, dilate_mm=3)``.
    Raises VolumeError when no lung-sized air component exists inside the body.
    """
    p = params or LungMaskParams()
    if overrides:
        from dataclasses import replace

        p = replace(p, **overrides)
    hu = volume.hu
    air = hu < p.threshold_hu
    labels, n = label(air)
    sizes, border = component_stats(labels, n)
    voxel_ml = float(np.prod(volume.spacing_zyx_mm)) / 1000.0
    ok = np.flatnonzero((~border) & (sizes * voxel_ml >= p.min_lung_ml))
    ok = ok[ok > 0]
    if ok.size == 0:
        raise VolumeError(f"no lung found: no air component of at least {p.min_lung_ml} mL inside the body "
                          f"(threshold {p.threshold_hu} HU) in series {volume.series_uid}")
    mask = _largest(labels, n, ok, sizes)
    mask = _remove_trachea(hu, mask, volume, p)
    labels, n = label(mask)
    sizes, _ = component_stats(labels, n)
    order = np.argsort(sizes[1:])[::-1] + 1
    keep = [order[0]]
    if len(order) > 1 and sizes[order[1]] >= p.second_lung_ratio * sizes[order[0]]:
        keep.append(order[1])
    mask = _largest(labels, n, np.asarray(keep), sizes)
    mask = fill_holes_2d(mask)
    if p.close_mm > 0:
        r = _radius_vox(p.close_mm, volume.spacing_zyx_mm)
        mask = fill_holes_2d(close(mask, (0, r[1], r[2])))
    if p.dilate_mm > 0:
        mask = dilate(mask, _radius_vox(p.dilate_mm, volume.spacing_zyx_mm))
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks."""
    inter = np.count_nonzero(a & b)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 2.0 * inter / total if total else 1.0
