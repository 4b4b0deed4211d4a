"""Reference implementations of the engine's kernels with scipy / skimage / SimpleITK / numpy.

The same algorithms as engine.ccl, engine.lungmask, engine.resample, engine.candidates
and engine.patches, written the way the seed papers' code and most pipelines write
them. Tests hold the numba kernels equal to these; bench/preprocess.py times both.
"""
from __future__ import annotations

import numpy as np

from noduleflow.engine import Volume
from noduleflow.engine.lungmask import LungMaskParams


def label(mask):
    from scipy import ndimage

    return ndimage.label(mask)  # 6-connectivity in 3-D by default


def lung_mask(volume: Volume, params: LungMaskParams = LungMaskParams()) -> np.ndarray:
    """noduleflow.engine.lungmask.lung_mask's algorithm with scipy.ndimage and skimage.measure, every step
    on the scan's own voxels (the engine runs the topology on a coarse grid; ``params.grid_mm`` is ignored)."""
    from scipy import ndimage
    from skimage import measure

    from noduleflow.engine.lungmask import AIRWAY_RIM_MM

    hu = volume.hu
    labels = measure.label(hu < params.threshold_hu, connectivity=1)
    props = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    voxel_ml = float(np.prod(volume.spacing_zyx_mm)) / 1000.0
    ok = np.ones(len(props), bool)
    ok[0] = False
    ok[border] = False
    ok &= props * voxel_ml >= params.min_lung_ml
    mask = ok[labels]
    # airways: the lumen reaching the top slice, removed with its rim
    mean = ndimage.uniform_filter(hu.astype(np.float32), size=(1, 3, 3), mode="nearest")
    air = mask & (mean < params.airway_hu)
    air[:, 0] = air[:, -1] = air[:, :, 0] = air[:, :, -1] = False
    alab = measure.label(air, connectivity=1)
    lumen = np.zeros(mask.shape, bool)
    r = max(1, int(round(AIRWAY_RIM_MM / min(volume.spacing_zyx_mm[1:]))))
    rim_st = np.ones((1, 2 * r + 1, 2 * r + 1), bool)
    if alab.max():
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        top = zs[-1] if volume.direction_matrix[2, 2] >= 0 else zs[0]
        px = volume.spacing_zyx_mm[1] * volume.spacing_zyx_mm[2]
        ids, counts = np.unique(alab[top][alab[top] > 0], return_counts=True)
        vol_of = np.bincount(alab.ravel())
        lumen = np.isin(alab, [i for i, c in zip(ids, counts)
                               if c * px <= params.max_trachea_area_mm2 and vol_of[i] < 0.1 * mask.sum()])
        if lumen.any():
            mask &= ~(ndimage.binary_dilation(lumen, structure=rim_st) & mask)
    labels = measure.label(mask, connectivity=1)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    keep = [order[0]]
    if len(order) > 2 and sizes[order[1]] >= params.second_lung_ratio * sizes[order[0]]:
        keep.append(order[1])
    lung = np.isin(labels, keep)
    def fill(m):  # slice by slice
        return np.stack([ndimage.binary_fill_holes(s) for s in m])

    filled = mask = fill(lung)
    if params.close_mm > 0:
        r = [int(round(params.close_mm / s)) for s in volume.spacing_zyx_mm]
        st = np.ones((1, 2 * r[1] + 1, 2 * r[2] + 1), bool)
        mask = fill(ndimage.binary_closing(np.pad(mask, [(0, 0), (r[1], r[1]), (r[2], r[2])]), st)
                    [:, r[1]:-r[1] or None, r[2]:-r[2] or None])
    if params.dilate_mm > 0:
        r = [int(round(params.dilate_mm / s)) for s in volume.spacing_zyx_mm]
        mask = ndimage.binary_dilation(mask, structure=np.ones([2 * v + 1 for v in r], bool))
    # the extrapulmonary airway (lumen not enclosed by the lung in its slice) + rim, minus the lung's air
    outside = lumen & ~filled
    if outside.any():
        mask &= ~(ndimage.binary_dilation(outside, structure=rim_st) & ~lung)
    return mask


def resample_sitk(volume: Volume, like: Volume) -> np.ndarray:
    """SimpleITK linear resampling of ``volume`` onto the grid of ``like`` (float32)."""
    import SimpleITK as sitk

    from noduleflow.engine.io.image import volume_to_sitk

    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin(like.origin_xyz_mm)
    f.SetOutputSpacing(like.spacing_xyz_mm)
    f.SetSize([int(s) for s in like.shape[::-1]])
    f.SetOutputDirection(like.direction)
    f.SetInterpolator(sitk.sitkLinear)
    f.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(f.Execute(sitk.Cast(volume_to_sitk(volume), sitk.sitkFloat32)))


def resample_zoom(volume: Volume, spacing_zyx_mm=(1.0, 1.0, 1.0), order: int = 3) -> np.ndarray:
    """Seed 001's resampling: scipy.ndimage.zoom (cubic spline by default)."""
    from scipy import ndimage

    factors = [s / t for s, t in zip(volume.spacing_zyx_mm, spacing_zyx_mm)]
    return ndimage.zoom(volume.hu.astype(np.float32), factors, order=order)


def candidates(hu, mask, rules) -> np.ndarray:
    from scipy import ndimage

    grid = np.zeros(hu.shape, bool)
    o = rules.offset % rules.stride
    grid[o::rules.stride, o::rules.stride, o::rules.stride] = True
    dense = hu >= rules.center_min_hu
    if rules.reach:
        dense = ndimage.maximum_filter(dense, size=2 * rules.reach + 1, mode="constant")
    ok = grid & mask & dense
    if rules.box_min_hu is not None:
        ok &= ndimage.minimum_filter(hu, size=rules.box, mode="nearest") >= rules.box_min_hu
    return np.argwhere(ok)


def gather(hu, centres, norm, size=41):
    half = size // 2
    padded = np.pad(hu.astype(np.float32), half, constant_values=norm.pad_hu)
    out = np.empty((len(centres), 1, size, size, size), np.float32)
    for n, (z, y, x) in enumerate(centres):
        crop = padded[z:z + size, y:y + size, x:x + size]
        out[n, 0] = np.clip((crop - norm.hu_min) / (norm.hu_max - norm.hu_min), 0, 1)
    return out
