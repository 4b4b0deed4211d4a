"""`Volume`: a CT volume in Hounsfield units with its world geometry.

Conventions (the whole project follows them):
- ``hu`` is int16, array order (z, y, x).
- World coordinates are (x, y, z) in mm, patient LPS, exactly as ITK/SimpleITK and
  LUNA16's annotation files use them.
- ``direction`` is the 3x3 direction-cosine matrix as SimpleITK's ``GetDirection()``
  returns it (row-major, 9 floats); its *columns* are the world directions of the
  index axes i (x), j (y), k (z).
- world = origin + direction @ (spacing_xyz * index_xyz), the ITK formula.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import VolumeError

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume.

    Attributes:
        hu: int16 array (z, y, x) of Hounsfield units (other dtypes are allowed for
            derived volumes, e.g. float32 after resampling, but loaders give int16).
        spacing_zyx_mm: voxel size along the array axes (z, y, x), mm.
        origin_xyz_mm: world position of voxel (0, 0, 0), mm, LPS.
        direction: 9 floats, row-major 3x3, columns = world directions of x, y, z.
        series_uid: DICOM SeriesInstanceUID, or a name derived from the file.
        meta: free-form provenance (source path, chosen series, warnings).
    """

    hu: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    series_uid: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.hu, np.ndarray) or self.hu.ndim != 3:
            shape = getattr(self.hu, "shape", type(self.hu).__name__)
            raise VolumeError(f"Volume.hu must be a 3-D array (z, y, x), got {shape}")
        sp = tuple(float(s) for s in self.spacing_zyx_mm)
        if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
            raise VolumeError(f"spacing_zyx_mm must be 3 positive numbers, got {self.spacing_zyx_mm}")
        org = tuple(float(o) for o in self.origin_xyz_mm)
        if len(org) != 3 or not all(np.isfinite(org)):
            raise VolumeError(f"origin_xyz_mm must be 3 finite numbers, got {self.origin_xyz_mm}")
        d = tuple(float(v) for v in np.asarray(self.direction, dtype=np.float64).ravel())
        if len(d) != 9 or not all(np.isfinite(d)):
            raise VolumeError(f"direction must be 9 finite numbers, got {d}")
        object.__setattr__(self, "spacing_zyx_mm", sp)
        object.__setattr__(self, "origin_xyz_mm", org)
        object.__setattr__(self, "direction", d)

    # -- geometry -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.hu.shape)  # type: ignore[return-value]

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 float64; column c is the world direction of index axis c (x, y, z)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def spacing_xyz_mm(self) -> tuple[float, float, float]:
        return self.spacing_zyx_mm[::-1]  # type: ignore[return-value]

    def voxel_to_world(self, index_zyx) -> np.ndarray:
        """Continuous voxel indices (..., 3) in (z, y, x) -> world (..., 3) in (x, y, z) mm."""
        idx = np.asarray(index_zyx, dtype=np.float64)[..., ::-1]  # -> (x, y, z)
        scaled = idx * np.asarray(self.spacing_xyz_mm)
        return scaled @ self.direction_matrix.T + np.asarray(self.origin_xyz_mm)

    def world_to_voxel(self, xyz_mm) -> np.ndarray:
        """World (..., 3) in (x, y, z) mm -> continuous voxel indices (..., 3) in (z, y, x)."""
        rel = np.asarray(xyz_mm, dtype=np.float64) - np.asarray(self.origin_xyz_mm)
        # direction is orthonormal for CT, but solve in general to stay exact.
        idx_xyz = np.linalg.solve(self.direction_matrix, rel.reshape(-1, 3).T).T
        idx_xyz = idx_xyz / np.asarray(self.spacing_xyz_mm)
        return idx_xyz[:, ::-1].reshape(np.shape(rel))

    def with_array(self, hu: np.ndarray, **changes) -> Volume:
        """A copy with another voxel array (and optionally other geometry fields)."""
        return replace(self, hu=hu, **changes)

    def describe(self) -> dict:
        """JSON-ready summary: shape, spacing, origin, direction, UID, HU statistics."""
        a = self.hu
        return {
            "series_uid": self.series_uid,
            "shape_zyx": list(self.shape),
            "spacing_zyx_mm": list(self.spacing_zyx_mm),
            "origin_xyz_mm": list(self.origin_xyz_mm),
            "direction": list(self.direction),
            "dtype": str(a.dtype),
            "hu_min": float(a.min()) if a.size else None,
            "hu_max": float(a.max()) if a.size else None,
            "hu_mean": float(a.mean(dtype=np.float64)) if a.size else None,
        }
