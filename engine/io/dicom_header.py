"""One DICOM file's header -> a typed `SliceHeader`, every value checked once.

pydicom parses element values lazily: a bad VR, a value of the wrong length or a
non-numeric DS surfaces as an exception wherever the value is first touched. So every
attribute the loader needs is read here, inside one guarded block, into plain Python
values; nothing downstream touches the dataset except to decode its pixel data.

A file that cannot be parsed at all is `Unreadable` (it is reported, never silently
dropped: it may be a slice of the series). A file that parses but carries a bad value
(NaN position, skewed orientation, slope 0, three PixelSpacing values...) keeps its
header with the problems listed, so that only the series actually loaded is refused.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import VolumeError
from .checks import MAX_ABS_COORD_MM, SPACING_RANGE_MM, check_finite, check_orthonormal

#: Suffixes under which a file that pydicom rejects is still reported as a broken slice
#: (files without these are taken for unrelated files: README, XML, thumbnails).
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
#: Accepted RescaleSlope. CT slopes are 1 (sometimes 0.5-2); 0 flattens the image, a
#: negative one inverts it and 1e-30 maps every stored value to the intercept.
SLOPE_RANGE = (1e-3, 1e3)
#: Largest |RescaleIntercept| accepted. Stored values are at most 16 bits wide and HU
#: live in int16; an intercept beyond 2**16 puts every voxel outside the HU range.
MAX_ABS_INTERCEPT = 65536.0
_CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian

# What pydicom (and the struct/numpy code under it) raises on corrupt input: a file
# that looked like DICOM but is truncated, has an unknown VR, a value of impossible
# length (BytesLengthException), bad encodings...
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
    NotImplementedError, OverflowError, struct.error, LookupError, ArithmeticError, RuntimeError)
try:
    from pydicom.errors import BytesLengthException

    _PARSE_ERRORS += (BytesLengthException,)
except ImportError:  # older pydicom: raised as a ValueError subclass or not at all
    pass


@dataclass(frozen=True)
class Unreadable:
    """A file that looked like a DICOM slice but could not be parsed (reported, not used)."""

    path: Path
    reason: str
    series_uid: str = ""  # when the truncated header still named its series


@dataclass(frozen=True)
class SliceHeader:
    """What the loader needs from one slice, as plain values; ``problems`` lists bad ones."""

    path: Path
    ds: object  # pydicom Dataset, pixel data deferred; used only to decode
    series_uid: str
    modality: str
    image_type: tuple[str, ...]
    sop_class: str
    transfer_syntax: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing), mm
    rows: int
    cols: int
    frames: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    slope: float
    intercept: float
    problems: tuple[str, ...] = field(default=())
    # identity: one volume must be one acquisition of one patient (checked across slices)
    patient_id: str = ""
    study_uid: str = ""
    frame_uid: str = ""  # FrameOfReferenceUID; "" when absent (Type 1 in CT: refused at load)
    acquisition: str = ""  # AcquisitionNumber as written ("" when absent)

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def is_axial(self) -> bool:
        if self.orientation is None:
            return False
        return abs(float(np.cross(self.orientation[:3], self.orientation[3:])[2])) > 0.8


class _Bad(Exception):
    """A value problem in one header (collected, not raised to the caller)."""


def _numbers(value, n: int, what: str, name: str) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    values = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise _Bad(f"{what} is not numeric: {value!r}") from exc
    if len(out) != n:
        raise _Bad(f"{what} must have {n} values, got {len(out)}: {value!r}")
    try:
        return check_finite(name, what, out)
    except VolumeError as exc:
        raise _Bad(str(exc).split(": ", 1)[1]) from exc


def _int(ds, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value[0] if isinstance(value, (list, tuple)) else value)
    except (TypeError, ValueError, IndexError) as exc:
        raise _Bad(f"{keyword} is not an integer: {value!r}") from exc


def _scalar(ds, keyword: str, default: float, name: str) -> float:
    value = _numbers(ds.get(keyword), 1, keyword, name)
    return default if value is None else value[0]


def _check(problems: list[str], fn, *args):
    """Run one check; a problem is recorded and a neutral value returned."""
    try:
        return fn(*args)
    except _Bad as exc:
        problems.append(str(exc))
        return None


def _geometry(ds, name: str, problems: list[str]):
    pos = _check(problems, _numbers, ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", name)
    if pos is not None and any(abs(v) > MAX_ABS_COORD_MM for v in pos):
        problems.append(f"ImagePositionPatient {list(pos)} mm lies beyond +-{MAX_ABS_COORD_MM:g} mm: not a "
                        f"patient position")
    iop = _check(problems, _numbers, ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", name)
    if iop is not None:
        try:
            check_orthonormal(name, "ImageOrientationPatient", np.asarray(iop).reshape(2, 3).T)
        except VolumeError as exc:
            problems.append(str(exc).split(": ", 1)[1])
    ps = _check(problems, _numbers, ds.get("PixelSpacing"), 2, "PixelSpacing", name)
    lo, hi = SPACING_RANGE_MM
    if ps is not None and not all(lo <= v <= hi for v in ps):
        problems.append(f"PixelSpacing {list(ps)} mm is outside the accepted range [{lo}, {hi}] mm")
    return pos, iop, ps


def _rescale(ds, name: str, problems: list[str]) -> tuple[float, float]:
    slope = _check(problems, _scalar, ds, "RescaleSlope", 1.0, name)
    intercept = _check(problems, _scalar, ds, "RescaleIntercept", 0.0, name)
    if slope is not None and not slope > 0:
        problems.append(f"RescaleSlope must be > 0, got {slope}")
    elif slope is not None and not SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]:
        problems.append(f"RescaleSlope {slope} is outside the accepted range {list(SLOPE_RANGE)}")
    if intercept is not None and abs(intercept) > MAX_ABS_INTERCEPT:
        problems.append(f"RescaleIntercept {intercept} is beyond +-{MAX_ABS_INTERCEPT:g}")
    return (slope if slope is not None else 1.0), (intercept if intercept is not None else 0.0)


def _parse(path: Path, ds) -> SliceHeader | Unreadable | None:
    name = path.name
    problems: list[str] = []
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    looks_like_image = sop in _CT_SOP_CLASSES or "Rows" in ds
    if "PixelData" not in ds:
        if looks_like_image or len(ds) == 0:
            return Unreadable(path, "no pixel data, file truncated?", series_uid)
        return None  # a DICOM file that is no image (DICOMDIR, report, presentation state)
    pos, iop, ps = _geometry(ds, name, problems)
    slope, intercept = _rescale(ds, name, problems)
    ints = {}
    for kw, default in (("Rows", 0), ("Columns", 0), ("NumberOfFrames", 1), ("BitsAllocated", 16),
                        ("BitsStored", 16), ("PixelRepresentation", 0), ("SamplesPerPixel", 1)):
        ints[kw] = _check(problems, _int, ds, kw, default)
        ints[kw] = default if ints[kw] is None else ints[kw]
    rows, cols, frames = ints["Rows"], ints["Columns"], ints["NumberOfFrames"]
    if rows <= 0 or cols <= 0:
        problems.append(f"image size Rows {rows} x Columns {cols}")
    if frames < 1:
        problems.append(f"NumberOfFrames {frames}")
    elif frames != 1:
        problems.append(f"multi-frame image ({frames} frames in one file): only single-frame CT "
                        f"slices are supported; convert it to one file per slice (e.g. dcmtk, gdcmconv)")
    if ints["SamplesPerPixel"] != 1:
        problems.append(f"SamplesPerPixel {ints['SamplesPerPixel']}: not a grey-scale CT image")
    bits = ints["BitsAllocated"]
    if ints["PixelRepresentation"] not in (0, 1):
        problems.append(f"PixelRepresentation {ints['PixelRepresentation']} is neither 0 (unsigned) nor 1 (signed)")
    if bits != 16:
        problems.append(f"BitsAllocated {bits} is not 16 (CT Image)")
    if not 12 <= ints["BitsStored"] <= 16:
        # CT Image module (PS3.3 C.8.2.1.1.4): 12-16 bits stored in 16 allocated; fewer
        # bits (e.g. 1) would be read as a faithful but meaningless binary image
        problems.append(f"BitsStored {ints['BitsStored']} is not within 12-16 (CT Image)")
    if bits == 16 and ts in UNCOMPRESSED and rows > 0 and cols > 0 and frames > 0:
        # Cheap bound before any buffer is allocated: a header claiming 65535 x 65535
        # in a file of a few KB is corrupt (the exact length is checked at decode).
        need, size = rows * cols * frames * bits // 8, os.stat(path).st_size
        if size < need:
            problems.append(f"pixel data truncated: file has {size} bytes, Rows {rows} x Columns {cols} "
                            f"x {bits} bits need {need}")
    return SliceHeader(
        path=path, ds=ds, series_uid=series_uid, modality=str(ds.get("Modality", "") or "").upper(),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or [])),
        sop_class=sop, transfer_syntax=ts, position=pos, orientation=iop, pixel_spacing=ps,
        rows=rows, cols=cols, frames=frames, bits_allocated=bits, bits_stored=ints["BitsStored"],
        pixel_representation=ints["PixelRepresentation"], samples_per_pixel=ints["SamplesPerPixel"],
        slope=slope, intercept=intercept, problems=tuple(problems),
        patient_id=_text(ds, "PatientID"), study_uid=_text(ds, "StudyInstanceUID"),
        frame_uid=_text(ds, "FrameOfReferenceUID"), acquisition=_text(ds, "AcquisitionNumber"))


def _text(ds, keyword: str) -> str:
    """A string attribute as written, stripped ("" when absent or empty)."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def read_header(path: Path) -> SliceHeader | Unreadable | None:
    """Parse one file. None: not DICOM (or a non-image DICOM object), to be ignored."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return Unreadable(path, f"cannot stat: {exc.strerror or exc}")
    if size == 0:
        return Unreadable(path, "empty file, 0 bytes")
    try:
        ds = pydicom.dcmread(str(path), defer_size="4 KB")
    except InvalidDicomError as exc:
        # Judged by content, not by name: a file without a .dcm suffix that is DICOM with its
        # preamble cut off (or only its preamble left) gets the treatment a .dcm file gets
        if path.suffix.lower() in DICOM_SUFFIXES or _looks_like_dicom(path, size):
            return Unreadable(path, f"not a valid DICOM file of {size} bytes: {_first_line(exc)}")
        return None  # not DICOM: folders often hold other files
    except _PARSE_ERRORS as exc:
        return Unreadable(path, f"corrupt or truncated DICOM header: {type(exc).__name__}: {_first_line(exc)}")
    try:
        return _parse(path, ds)
    except _PARSE_ERRORS as exc:  # an element pydicom cannot convert (unknown VR, wrong length...)
        return Unreadable(path, f"corrupt DICOM header: {type(exc).__name__}: {_first_line(exc)}", _series_of(ds))


#: Value representations, to recognise an explicit-VR element at the start of a file.
_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
        b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
        b"UR", b"US", b"UT", b"UV"}


def _looks_like_dicom(path: Path, size: int) -> bool:
    """Content sniffing for a file pydicom refused: a cut-off preamble (nothing but NUL
    bytes, fewer than the 132 of preamble + "DICM"), or a data set without its preamble
    (starting with "DICM", or with a group 0002/0008 element: explicit VR, or implicit VR
    of sane length)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if (size < 132 and head and not head.strip(b"\0")) or head.startswith(b"DICM"):
        return True
    if len(head) < 8:
        return False
    group, _elem = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008):
        return False
    return head[4:6] in _VRS or struct.unpack("<I", head[4:8])[0] < 1024


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _series_of(ds) -> str:
    """The SeriesInstanceUID of a dataset that failed elsewhere, when it can still be read."""
    try:
        return str(ds.get("SeriesInstanceUID", "") or "")
    except _PARSE_ERRORS:
        return ""

