"""Patch augmentation (seed 000): small 3-D shifts and limited-angle 3-D rotations, no zoom
(size is information) and no large rotations (orientation relative to vessels is information).

Patches are resampled from the 1 mm HU volume with a numpy trilinear sampler and normalised
with the engine's `Normalisation` (same window and padding as `engine.patches.gather`), so an
identity transform at an integer centre gives exactly the engine's patch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine import ConfigError
from engine.patches import PATCH, Normalisation


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


def transformed_patch(volume_hu: np.ndarray, centre_zyx, rotation: np.ndarray | None = None, shift_zyx=(0, 0, 0),
                      norm: Normalisation = Normalisation(), size: int = PATCH) -> np.ndarray:
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


def augmented_patch(volume_hu: np.ndarray, centre_zyx, spec: AugmentSpec, rng: np.random.Generator,
                    norm: Normalisation = Normalisation()) -> np.ndarray:
    rot, shift = random_transform(spec, rng)
    return transformed_patch(volume_hu, centre_zyx, rot, shift, norm)
