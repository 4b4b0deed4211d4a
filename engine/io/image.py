"""MetaImage (.mhd/.mha) and NIfTI (.nii/.nii.gz) through SimpleITK."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import VolumeError
from ..volume import Volume

log = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mhd", ".mha"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def to_int16_hu(arr: np.ndarray) -> np.ndarray:
    """Round and clip to int16. CT HU fit in int16; values outside are clipped, never wrapped."""
    if arr.dtype == np.int16:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.rint(arr)
    return np.clip(arr, INT16_MIN, INT16_MAX).astype(np.int16)


def load_image(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:  # SimpleITK raises RuntimeError for unreadable files
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise VolumeError(f"cannot read {path}: {first}") from exc
    if img.GetDimension() != 3:
        raise VolumeError(f"{path.name}: expected a 3-D image, got {img.GetDimension()}-D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path.name}: expected a scalar image, got "
                          f"{img.GetNumberOfComponentsPerPixel()} components per voxel")
    arr = sitk.GetArrayFromImage(img)  # (z, y, x)
    return Volume(
        hu=to_int16_hu(arr),
        spacing_zyx_mm=tuple(img.GetSpacing())[::-1],
        origin_xyz_mm=tuple(img.GetOrigin()),
        direction=tuple(img.GetDirection()),
        series_uid=_stem(path),
        meta={"source": str(path), "format": path.suffix.lower().lstrip(".")},
    )


def volume_to_sitk(volume: Volume):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.hu))
    img.SetSpacing(tuple(float(s) for s in volume.spacing_xyz_mm))
    img.SetOrigin(tuple(volume.origin_xyz_mm))
    img.SetDirection(tuple(volume.direction))
    return img


def save_image(volume: Volume, path: Path) -> Path:
    import SimpleITK as sitk

    name = path.name.lower()
    if not name.endswith((".mhd", ".mha", ".nii", ".nii.gz")):
        raise VolumeError(f"output must end in .mhd, .mha, .nii or .nii.gz, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume_to_sitk(volume), str(path), useCompression=name.endswith((".mha", ".nii.gz")))
    return path
