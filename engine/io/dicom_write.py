"""Write a `Volume` as a CT Image Storage DICOM series (pydicom).

Used by the phantom cohort (`noduleflow synth`), the demo and the tests. The geometry
written (ImagePositionPatient per slice, ImageOrientationPatient, PixelSpacing) is the
Volume's own, so reading the series back gives the same world coordinates.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _uid(seed: int, *parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(seed), *map(str, parts)])


def write_dicom_series(volume: Volume, out_dir, *, series_uid: str | None = None, study_uid: str | None = None,
                       frame_of_reference_uid: str | None = None, pixel_representation: int = 1,
                       rescale_slope: float = 1.0, rescale_intercept: float = -1024.0,
                       shuffle_names: bool = True, reverse_instance_numbers: bool = False, seed: int = 0,
                       patient_id: str = "PHANTOM", series_description: str = "noduleflow phantom",
                       modality: str = "CT") -> list[Path]:
    """Write one file per slice into ``out_dir`` and return the paths (in slice order).

    Stored values are ``round((hu - intercept) / slope)``; they must fit the pixel
    representation (0: uint16, 1: int16), else ConfigError names the range.
    ``shuffle_names`` gives the files random names (readers must not rely on names);
    ``reverse_instance_numbers`` numbers the slices backwards (nor on InstanceNumber).
    UIDs are derived from ``seed`` so a cohort is reproducible.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    if pixel_representation not in (0, 1):
        raise ConfigError(f"pixel_representation must be 0 (unsigned) or 1 (signed), got {pixel_representation}")
    if rescale_slope <= 0:
        raise ConfigError(f"rescale_slope must be > 0, got {rescale_slope}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or volume.series_uid or _uid(seed, "series")
    study_uid = study_uid or _uid(seed, "study", series_uid)
    frame_uid = frame_of_reference_uid or _uid(seed, "frame", series_uid)

    stored = np.rint((volume.hu.astype(np.float64) - rescale_intercept) / rescale_slope)
    lo, hi = (0, 65535) if pixel_representation == 0 else (-32768, 32767)
    if stored.min() < lo or stored.max() > hi:
        raise ConfigError(f"stored values [{stored.min():.0f}, {stored.max():.0f}] do not fit pixel "
                          f"representation {pixel_representation} ([{lo}, {hi}]); change rescale_intercept "
                          f"(now {rescale_intercept})")
    stored = stored.astype("<u2" if pixel_representation == 0 else "<i2")

    d = volume.direction_matrix
    row, col, normal = d[:, 0], d[:, 1], d[:, 2]
    dz, dy, dx = volume.spacing_zyx_mm
    nz, ny, nx = volume.shape
    rng = np.random.default_rng(seed)
    names = [f"{rng.integers(1 << 62):016x}.dcm" for _ in range(nz)] if shuffle_names else \
        [f"slice_{k:04d}.dcm" for k in range(nz)]
    now = datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=int(seed) % 10_000_000)

    paths = []
    for k in range(nz):
        sop_uid = _uid(seed, "sop", series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(out / names[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName = patient_id
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "noduleflow"
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = (nz - k) if reverse_instance_numbers else (k + 1)
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "FFS" if normal[2] < 0 else "HFS"
        position = np.asarray(volume.origin_xyz_mm) + normal * dz * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.SliceLocation = f"{float(position @ normal):.6f}"
        ds.PixelSpacing = [f"{dy:.8f}", f"{dx:.8f}"]
        ds.SliceThickness = f"{dz:.6f}"
        ds.KVP = "120"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = pixel_representation
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.RescaleSlope = f"{rescale_slope:g}"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(out / names[k], enforce_file_format=True)
        paths.append(out / names[k])
    return paths
