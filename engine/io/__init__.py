"""CT ingestion: DICOM series (pydicom), MetaImage and NIfTI (SimpleITK) -> `Volume`."""
from __future__ import annotations

from pathlib import Path

from ..errors import VolumeError
from ..volume import Volume

IMAGE_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz")


def load_volume(path, series_uid: str | None = None, *, tolerance_mm: float | None = None,
                workers: int | None = None) -> Volume:
    """Load a CT volume from a DICOM folder (tree), a DICOM file, .mhd/.mha or .nii/.nii.gz.

    Returns a `Volume` with int16 HU in (z, y, x) and LPS world geometry identical to what
    SimpleITK reports for the same data. ``series_uid`` picks one series among several
    (DICOM only); ``tolerance_mm`` bounds the slice-spacing irregularity accepted
    (default: see `engine.io.dicom.DEFAULT_TOLERANCE_MM`).

    Every outcome is either a `Volume` or one `VolumeError` naming the file and the bad
    value: headers are checked before any voxel is read (`engine.io.checks`: spacing range,
    orthonormal axes, slice count, voxel count; `dicom_header`, `image_headers`). Where a
    scan is still usable but something was skipped or assumed (an unreadable end slice,
    a localizer, another series in the folder), the volume loads and the reason is in
    ``volume.meta["warnings"]`` and logged. FIFOs and devices are never opened.
    """
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"no such file or folder: {p}")
    if not (p.is_file() or p.is_dir()):  # never open a FIFO, socket or device: it can block forever
        raise VolumeError(f"not a regular file or folder: {p}")
    name = p.name.lower()
    if p.is_file() and name.endswith(IMAGE_SUFFIXES):
        if series_uid is not None:
            raise VolumeError(f"--series applies to DICOM input only, not {p.name}")
        from .image import load_image

        return load_image(p)
    from .dicom import load_dicom

    return load_dicom(p, series_uid=series_uid, tolerance_mm=tolerance_mm, workers=workers)


def save_volume(volume: Volume, path) -> Path:
    """Write a volume as .mhd/.mha/.nii/.nii.gz with its geometry (SimpleITK)."""
    from .image import save_image

    return save_image(volume, Path(path))


__all__ = ["load_volume", "save_volume", "IMAGE_SUFFIXES"]
