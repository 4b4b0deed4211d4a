"""Patch augmentation (seed 000): small 3-D shifts and limited-angle 3-D rotations, no zoom
(size is information) and no large rotations (orientation relative to vessels is information).

Patches are resampled from the 1 mm HU volume with a numpy trilinear sampler and normalised
with the engine's `Normalisation` (same window and padding as `engine.patches.gather`), so an
identity transform at an integer centre gives exactly the engine's patch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from noduleflow.engine import ConfigError
from noduleflow.engine.contract import PATCH_SIZE
from noduleflow.engine.patches import Normalisation


@dataclass(frozen=True)
class AugmentSpec:
    """``max_shift_mm``: each axis shifted uniformly in [-max, max]; ``max_angle_deg``: rotation
    about a uniformly random axis by an angle uniform in [-max, max]."""

    max_shift_mm: float = 2.0
    max_angle_deg: float = 15.0

    def __post_init__(self) -> None:
        if self.max_shift_mm < 0 or not 0 <= self.max_angle_deg <= 90:
            raise ConfigError(f"augmentation needs max_shift_mm >= 0 and 0 <= max_angle_deg <= 90, "
                              f"got {self.max_shift_mm}, {self.max_angle_deg}")


def rotation_matrix(axis_zyx, angle_deg: float) -> np.ndarray:
    """Rodrigues: 3x3 float64 rotation (acting on zyx vectors) by ``angle_deg`` about ``axis_zyx``."""
    a = np.asarray(axis_zyx, dtype=np.float64)
    n = np.linalg.norm(a)
    if n == 0:
        raise ConfigError("rotation axis must be non-zero")
    a = a / n
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def random_transform(spec: AugmentSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """-> (rotation 3x3, shift (3,) mm zyx) drawn within ``spec``."""
    axis = rng.normal(size=3)
    while np.linalg.norm(axis) < 1e-6:
        axis = rng.normal(size=3)
    rot = rotation_matrix(axis, rng.uniform(-spec.max_angle_deg, spec.max_angle_deg))
    return rot, rng.uniform(-spec.max_shift_mm, spec.max_shift_mm, size=3)


def trilinear(volume: np.ndarray, coords_zyx: np.ndarray, pad: float) -> np.ndarray:
    """Sample ``volume`` (z, y, x) at float coordinates (..., 3) (voxel units); outside -> ``pad``.

    Same convention as scipy.ndimage.map_coordinates(order=1, mode='constant', cval=pad)
    for points whose 8 neighbours are all inside.
    """
    c = np.asarray(coords_zyx, dtype=np.float64)
    shape = np.asarray(volume.shape)
    f = np.floor(c).astype(np.int64)
    w = c - f
    out = np.zeros(c.shape[:-1], dtype=np.float64)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                idx = f + np.array([dz, dy, dx])
                inside = ((idx >= 0) & (idx < shape)).all(-1)
                cl = np.clip(idx, 0, shape - 1)
                v = np.where(inside, volume[cl[..., 0], cl[..., 1], cl[..., 2]], pad)
                wt = ((w[..., 0] if dz else 1 - w[..., 0]) * (w[..., 1] if dy else 1 - w[..., 1])
                      * (w[..., 2] if dx else 1 - w[..., 2]))
                out += wt * v
    return out


_OFFS = None


def _offsets(size: int) -> np.ndarray:
    global _OFFS
    if _OFFS is None or _OFFS.shape[0] != size:
        r = np.arange(size, dtype=np.float64) - size // 2
        _OFFS = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1)
    return _OFFS


@njit(cache=True, nogil=True)
def _sample_patch(vol, centre, rot, out, lo, inv_range, pad_hu):
    """out[k, j, i] = window(trilinear(vol, centre + rot @ (k, j, i) - half)); neighbours
    outside the volume read ``pad_hu`` (the reference is `trilinear`)."""
    size = out.shape[0]
    half = size // 2
    nz, ny, nx = vol.shape
    for k in range(size):
        for j in range(size):
            for i in range(size):
                oz, oy, ox = k - half, j - half, i - half
                cz = centre[0] + rot[0, 0] * oz + rot[0, 1] * oy + rot[0, 2] * ox
                cy = centre[1] + rot[1, 0] * oz + rot[1, 1] * oy + rot[1, 2] * ox
                cx = centre[2] + rot[2, 0] * oz + rot[2, 1] * oy + rot[2, 2] * ox
                fz, fy, fx = np.floor(cz), np.floor(cy), np.floor(cx)
                wz, wy, wx = cz - fz, cy - fy, cx - fx
                z0, y0, x0 = int(fz), int(fy), int(fx)
                acc = 0.0
                for dz in range(2):
                    z = z0 + dz
                    az = wz if dz else 1.0 - wz
                    for dy in range(2):
                        y = y0 + dy
                        ay = az * (wy if dy else 1.0 - wy)
                        for dx in range(2):
                            x = x0 + dx
                            a = ay * (wx if dx else 1.0 - wx)
                            if 0 <= z < nz and 0 <= y < ny and 0 <= x < nx:
                                acc += a * vol[z, y, x]
                            else:
                                acc += a * pad_hu
                v = (acc - lo) * inv_range
                out[k, j, i] = min(max(v, 0.0), 1.0)


def transformed_patch_reference(volume_hu: np.ndarray, centre_zyx, rotation: np.ndarray | None = None,
                                shift_zyx=(0, 0, 0),
                      norm: Normalisation = Normalisation(), size: int = PATCH_SIZE) -> np.ndarray:
    """One patch float32 (1, size, size, size) in [0, 1]: output voxel at offset o from the patch
    centre samples the 1 mm volume at ``centre + shift + R @ o``: the content turns by R^-1 about
    the patch centre and moves by -shift."""
    offs = _offsets(size)
    if rotation is not None:
        offs = offs @ np.asarray(rotation, dtype=np.float64).T
    coords = offs + (np.asarray(centre_zyx, np.float64) + np.asarray(shift_zyx, np.float64))
    hu = trilinear(volume_hu, coords, norm.pad_hu)
    out = np.clip((hu - norm.hu_min) / (norm.hu_max - norm.hu_min), 0.0, 1.0)
    return out.astype(np.float32)[None]


def transformed_patch(volume_hu: np.ndarray, centre_zyx, rotation: np.ndarray | None = None, shift_zyx=(0, 0, 0),
                      norm: Normalisation = Normalisation(), size: int = PATCH_SIZE) -> np.ndarray:
    """One patch float32 (1, size, size, size) in [0, 1]; numba kernel, same result as
    `transformed_patch_reference` (see there for the convention)."""
    rot = np.eye(3) if rotation is None else np.ascontiguousarray(rotation, dtype=np.float64)
    centre = np.asarray(centre_zyx, np.float64) + np.asarray(shift_zyx, np.float64)
    out = np.empty((1, size, size, size), np.float32)
    _sample_patch(np.ascontiguousarray(volume_hu), centre, rot, out[0], float(norm.hu_min),
                  float(1.0 / (norm.hu_max - norm.hu_min)), float(norm.pad_hu))
    return out


def augmented_patch(volume_hu: np.ndarray, centre_zyx, spec: AugmentSpec, rng: np.random.Generator,
                    norm: Normalisation = Normalisation()) -> np.ndarray:
    rot, shift = random_transform(spec, rng)
    return transformed_patch(volume_hu, centre_zyx, rot, shift, norm)
