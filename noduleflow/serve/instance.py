"""What may enter the spool: DICOM UIDs safe as file names, and single-frame CT instances with
complete pixel data. Names on disk come only from UIDs that passed `valid_uid`."""
from __future__ import annotations

import enum
import math
import re

from ..engine.errors import NoduleflowError

# DICOM UI: digits and dots, at most 64 characters, no empty component, no leading zero.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class SpoolError(NoduleflowError):
    """An instance that must not enter the spool (bad UID, not CT, truncated...), or a spool misuse."""


class SpoolFullError(SpoolError):
    """The spool's disk is below its free-space minimum; the sender should try again later."""


class SeriesState(str, enum.Enum):
    RECEIVED = "received"
    COMPLETE = "complete"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


STATES = tuple(SeriesState)


def valid_uid(value) -> bool:
    s = str(value) if value is not None else ""
    return 0 < len(s) <= 64 and bool(_UID.match(s))


#: Type 1 attributes the outputs need, beyond the UIDs: name -> (values, must be > 0)
_GEOMETRY = {"ImagePositionPatient": (3, False), "ImageOrientationPatient": (6, False), "PixelSpacing": (2, True)}


def _check_type1(ds) -> None:
    """Refuse, at reception, what the SR and the loader would only find missing after detection:
    FrameOfReferenceUID (the SR's points are in that frame) and the slice geometry."""
    v = ds.get("FrameOfReferenceUID")
    if not valid_uid(v):
        raise SpoolError("FrameOfReferenceUID missing or invalid (Type 1 in CT; the SR needs it): "
                         f"{str(v or '')[:80]!r}")
    for key, (count, positive) in _GEOMETRY.items():
        raw = ds.get(key)
        try:
            values = [float(x) for x in raw] if raw is not None else []
        except (TypeError, ValueError):
            values = []
        ok = len(values) == count and all(math.isfinite(x) and (x > 0 or not positive) for x in values)
        if not ok:
            raise SpoolError(f"{key} missing or invalid (Type 1 in CT, {count} {'positive ' if positive else ''}"
                             f"numbers): {str(raw)[:80]!r}")


def validate_instance(ds, transfer_syntax: str | None = None, affected_sop_uid: str | None = None) -> tuple[str, str]:
    """Check that ``ds`` (a pydicom Dataset) is a single-frame CT image with usable UIDs, the
    Type 1 attributes the outputs need (FrameOfReferenceUID, ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing) and complete pixel data. Returns (SeriesInstanceUID,
    SOPInstanceUID); raises SpoolError naming what is wrong."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != CT_IMAGE_STORAGE:
        raise SpoolError(f"SOP class {sop_class or '(none)'} is not CT Image Storage ({CT_IMAGE_STORAGE})")
    modality = str(ds.get("Modality", ""))
    if modality.upper() != "CT":
        raise SpoolError(f"modality {modality or '(none)'!r} is not CT")
    uids = {}
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        v = ds.get(key)
        if not valid_uid(v):
            raise SpoolError(f"{key} {str(v)[:80]!r} is not a valid DICOM UID")
        uids[key] = str(v)
    if affected_sop_uid is not None and str(affected_sop_uid) != uids["SOPInstanceUID"]:
        raise SpoolError(f"SOPInstanceUID {uids['SOPInstanceUID']} differs from the request's "
                         f"AffectedSOPInstanceUID {affected_sop_uid}")
    _check_type1(ds)
    if "PixelData" not in ds:
        raise SpoolError("no PixelData")
    if transfer_syntax is None and getattr(ds, "file_meta", None) is not None:
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) or None
    if transfer_syntax in _NATIVE_SYNTAXES or transfer_syntax is None:
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            bits, spp = int(ds.BitsAllocated), int(ds.get("SamplesPerPixel", 1))
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise SpoolError(f"image pixel attributes missing or unreadable: {exc}") from None
        need = rows * cols * spp * frames * bits // 8
        have = len(ds.PixelData)
        if have < need:
            raise SpoolError(f"PixelData is truncated: {have} bytes, {rows}x{cols}x{bits // 8} needs {need}")
    return uids["SeriesInstanceUID"], uids["SOPInstanceUID"]


__all__ = ["CT_IMAGE_STORAGE", "STATES", "SeriesState", "SpoolError", "SpoolFullError", "valid_uid",
           "validate_instance"]
