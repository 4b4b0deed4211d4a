"""MetaImage (.mhd/.mha) and NIfTI (.nii/.nii.gz) through SimpleITK, headers checked first."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import VolumeError
from ..volume import Volume
from .checks import check_coordinates, check_finite, check_hu_plausible, check_orthonormal, check_shape, check_spacing
from .image_headers import check_metaimage, check_nifti

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


def _sitk_error(path: Path, exc: RuntimeError) -> VolumeError:
    text = str(exc).strip()
    first = text.splitlines()[-1] if text else "unreadable"
    return VolumeError(f"cannot read {path}: {first}")


def _check_info(path: Path, reader) -> None:
    """Geometry from the header (nothing read yet): shape, spacing, origin, direction."""
    if reader.GetDimension() != 3:
        raise VolumeError(f"{path.name}: expected a 3-D image, got {reader.GetDimension()}-D")
    if reader.GetNumberOfComponents() != 1:
        raise VolumeError(f"{path.name}: expected a scalar image, got "
                          f"{reader.GetNumberOfComponents()} components per voxel")
    check_shape(path.name, tuple(reader.GetSize())[::-1])
    check_spacing(path.name, "voxel spacing", reader.GetSpacing())
    check_coordinates(path.name, "origin", reader.GetOrigin())
    direction = check_finite(path.name, "direction", reader.GetDirection())
    check_orthonormal(path.name, "direction", np.asarray(direction).reshape(3, 3))


def load_image(path: Path) -> Volume:
    """Read a .mhd/.mha/.nii/.nii.gz into an int16 HU `Volume` (SimpleITK, LPS geometry).

    The header is checked first (`image_headers`): the data file must lie beside a .mhd
    and be a regular file, NIfTI voxel sizes must be real, voxel data must be complete.
    """
    import SimpleITK as sitk

    warnings: list[str] = []
    if path.name.lower().endswith((".mhd", ".mha")):
        check_metaimage(path)
    else:
        warnings += check_nifti(path)
    for w in warnings:
        log.warning("%s", w)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_info(path, reader)
        img = reader.Execute()
    except RuntimeError as exc:  # SimpleITK raises RuntimeError for unreadable files
        raise _sitk_error(path, exc) from exc
    arr = sitk.GetArrayFromImage(img)  # (z, y, x)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise VolumeError(f"{path.name}: {int(np.count_nonzero(~np.isfinite(arr)))} voxel(s) are NaN or infinite")
    hu = to_int16_hu(arr)
    for w in check_hu_plausible(path.name, hu):
        log.warning("%s", w)
        warnings.append(w)
    return Volume(
        hu=hu,
        spacing_zyx_mm=tuple(img.GetSpacing())[::-1],
        origin_xyz_mm=tuple(img.GetOrigin()),
        direction=tuple(img.GetDirection()),
        series_uid=_stem(path) or path.name,  # never empty: the CSV and the JSON carry this id
        meta={"source": str(path), "format": path.suffix.lower().lstrip("."), "warnings": warnings},
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
