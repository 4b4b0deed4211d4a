"""Crop and resample to isotropic 1 mm (numba, trilinear or nearest).

Output-grid convention (the same as SimpleITK's ResampleImageFilter given these
parameters): the output origin is the input origin (the centre of voxel 0), the
direction is kept, the spacing is the requested one, and the size along each axis is
the largest n with (n - 1) * new_spacing <= (n_in - 1) * old_spacing, so every output
voxel centre lies inside the input's sampled extent and nothing is extrapolated.
Output voxel i along an axis samples the input at continuous index
i * new_spacing / old_spacing.

Crop before resampling: the lung box plus margin is a fraction of the scan.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .errors import ConfigError
from .volume import Volume


def axis_table(n_out: int, n_in: int, scale: float):
    """Per output index along one axis: the two input neighbours (int64) and the weight of the
    second (float32), i.e. continuous index i * scale clamped to the last input voxel."""
    f = np.arange(n_out, dtype=np.float64) * scale
    i0 = np.minimum(f.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (f - i0).astype(np.float32)


@njit(cache=True, parallel=True)
def _trilinear(src, out, z0, z1, wz, y0, y1, wy, x0, x1, wx, round_to_int):
    # per output row: blend the four input rows it lies between (contiguous, vectorised),
    # then interpolate along x from that one row; 5 multiply-adds per input row voxel and 2
    # per output voxel instead of 7 lerps and 8 gathers per output voxel
    oz, oy, ox = out.shape
    nx = src.shape[2]
    for k in prange(oz):
        row = np.empty(nx, dtype=np.float32)
        for j in range(oy):
            a = (np.float32(1.0) - wz[k]) * (np.float32(1.0) - wy[j])
            b = (np.float32(1.0) - wz[k]) * wy[j]
            c = wz[k] * (np.float32(1.0) - wy[j])
            d = wz[k] * wy[j]
            r00, r01, r10, r11 = src[z0[k], y0[j]], src[z0[k], y1[j]], src[z1[k], y0[j]], src[z1[k], y1[j]]
            for x in range(nx):
                row[x] = a * r00[x] + b * r01[x] + c * r10[x] + d * r11[x]
            for i in range(ox):
                v = row[x0[i]] + wx[i] * (row[x1[i]] - row[x0[i]])
                if round_to_int:
                    out[k, j, i] = np.rint(v)
                else:
                    out[k, j, i] = v


@njit(cache=True, parallel=True)
def _nearest(src, out, scale_z, scale_y, scale_x):
    nz, ny, nx = src.shape
    oz, oy, ox = out.shape
    for k in prange(oz):
        z = min(int(k * scale_z + 0.5), nz - 1)
        for j in range(oy):
            y = min(int(j * scale_y + 0.5), ny - 1)
            for i in range(ox):
                out[k, j, i] = src[z, y, min(int(i * scale_x + 0.5), nx - 1)]


def output_grid(volume: Volume, spacing_zyx_mm) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """(shape, spacing) of the resampled grid; see the module docstring."""
    return grid_for(volume.shape, volume.spacing_zyx_mm, spacing_zyx_mm)


def grid_for(shape_zyx, spacing_in_zyx, spacing_zyx_mm) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """`output_grid` of a volume of ``shape_zyx`` voxels at ``spacing_in_zyx`` mm."""
    sp = tuple(float(s) for s in spacing_zyx_mm)
    if len(sp) != 3 or min(sp) <= 0:
        raise ConfigError(f"spacing_zyx_mm must be 3 positive numbers, got {spacing_zyx_mm}")
    shape = tuple(int(np.floor((n - 1) * float(s_in) / s_out + 1e-6)) + 1
                  for n, s_in, s_out in zip(shape_zyx, spacing_in_zyx, sp))
    return shape, sp  # type: ignore[return-value]


def resample(volume: Volume, spacing_zyx_mm=(1.0, 1.0, 1.0), order: int = 1) -> Volume:
    """Resample to ``spacing_zyx_mm``: order 1 = trilinear (HU), 0 = nearest (masks, labels).

    int16 input gives int16 output (rounded; trilinear values of int16 data fit), float
    input float32, bool input bool (use order 0). World geometry is exact: origin and
    direction unchanged, see the module docstring for the grid.
    """
    if order not in (0, 1):
        raise ConfigError(f"order must be 0 (nearest) or 1 (trilinear), got {order}")
    shape, sp = output_grid(volume, spacing_zyx_mm)
    scales = [s_out / s_in for s_out, s_in in zip(sp, volume.spacing_zyx_mm)]
    src = np.ascontiguousarray(volume.hu)
    if order == 0:
        out = np.empty(shape, dtype=src.dtype)
        _nearest(src, out, *scales)
    else:
        if src.dtype == np.bool_:
            raise ConfigError("trilinear resampling of a boolean mask: use order=0")
        # integer input: rounded in the kernel, no float32 copy of the output (trilinear values
        # lie between their neighbours', so they fit the input's type)
        out = np.empty(shape, dtype=src.dtype if np.issubdtype(src.dtype, np.integer) else np.float32)
        tables = [t for n_out, n_in, sc in zip(shape, src.shape, scales) for t in axis_table(n_out, n_in, sc)]
        _trilinear(src if src.dtype != np.float64 else src.astype(np.float32), out, *tables, out.dtype != np.float32)
    return volume.with_array(out, spacing_zyx_mm=sp)


def crop(volume: Volume, bbox_zyx) -> Volume:
    """Sub-volume ``[z0:z1, y0:y1, x0:x1]`` (bbox = (z0, z1, y0, y1, x0, x1)) with exact geometry:
    the origin moves to the world position of voxel (z0, y0, x0)."""
    z0, z1, y0, y1, x0, x1 = (int(v) for v in bbox_zyx)
    nz, ny, nx = volume.shape
    if not (0 <= z0 < z1 <= nz and 0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise ConfigError(f"crop box {tuple(bbox_zyx)} is empty or outside the volume of shape {volume.shape}")
    origin = tuple(float(v) for v in volume.voxel_to_world((z0, y0, x0)))
    return volume.with_array(volume.hu[z0:z1, y0:y1, x0:x1], origin_xyz_mm=origin)


def lung_bbox(mask: np.ndarray, spacing_zyx_mm, margin_mm: float) -> tuple[int, int, int, int, int, int]:
    """Bounding box (z0, z1, y0, y1, x0, x1) of a mask grown by ``margin_mm``, clipped to the volume.

    The detection pipeline uses a margin of half a patch (20 mm) plus the mask dilation,
    so that every patch centred in the lung sees real image data, not padding.
    """
    zs, ys, xs = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    if zs.size == 0:
        raise ConfigError("empty mask: no bounding box")
    extent = [v for idx in (zs, ys, xs) for v in (int(idx[0]), int(idx[-1]) + 1)]
    return grow_box(extent, mask.shape, spacing_zyx_mm, margin_mm)


def grow_box(extent, shape, spacing_zyx_mm, margin_mm: float) -> tuple[int, int, int, int, int, int]:
    """The half-open box ``extent`` (z0, z1, y0, y1, x0, x1) grown by ``margin_mm`` (whole voxels,
    rounded up) and clipped to a volume of ``shape``."""
    out = []
    for a, (n, s) in enumerate(zip(shape, spacing_zyx_mm)):
        m = int(np.ceil(margin_mm / s))
        out += [max(int(extent[2 * a]) - m, 0), min(int(extent[2 * a + 1]) + m, int(n))]
    return tuple(out)  # type: ignore[return-value]
