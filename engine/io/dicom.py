"""DICOM CT series -> `Volume`.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient row and column directions), never by file name
or InstanceNumber, and the z spacing comes from those positions, not SliceThickness.
This is the order and geometry GDCM/SimpleITK's series reader produces, so a loaded
volume is voxel-for-voxel what SimpleITK gives, with the same origin and direction.

Headers are parsed in parallel threads with the pixel data deferred (`dicom_header`,
where every value is checked); only the chosen series' pixel data is then read and
decoded, also in threads (pydicom and numpy release the GIL for the I/O and the bulk
copies). Files that look like DICOM but cannot be parsed are never dropped silently:
they are named in the error when the series has a gap, and otherwise recorded as a
warning (they may have been its first or last slices).

A volume is one acquisition of one patient: PatientID, StudyInstanceUID and
FrameOfReferenceUID (required) must agree across the slices, as must orientation, pixel
spacing and image size (`check_identity`); two acquisitions interleaved or repeated under
one SeriesInstanceUID (told apart by AcquisitionNumber) are split, the largest is loaded
and the others are named in a warning. After rescale the HU must be plausible for a CT
(`checks.check_hu_plausible`). An empty SeriesInstanceUID is replaced by a generated one,
so that every output carries the same id.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import VolumeError
from ..volume import Volume
from .checks import check_coordinates, check_hu_plausible, check_shape, check_spacing
from .dicom_header import UNCOMPRESSED, SliceHeader, Unreadable, read_header
from .image import INT16_MAX, INT16_MIN, to_int16_hu

log = logging.getLogger(__name__)

#: Largest accepted deviation of any slice gap from the median gap, mm. Beyond it the
#: series has missing slices or uneven spacing and is refused (resampling such a stack
#: as if it were regular would misplace every finding).
DEFAULT_TOLERANCE_MM = 0.05
#: Largest accepted in-plane offset between consecutive slice origins, mm (gantry tilt).
TILT_TOLERANCE_MM = 0.05

_CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}


def _names(items, n: int = 3) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(f"{u.path.name} ({u.reason})" for u in items[:n]) + more


def _scan_files(root: Path, workers: int) -> tuple[list[SliceHeader], list[Unreadable]]:
    # is_file() is False for FIFOs, sockets and devices (also behind symlinks): they are
    # never opened, so a FIFO in the folder cannot hang the reader.
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise VolumeError(f"no files in {root}")
    with ThreadPoolExecutor(workers) as pool:
        headers = list(pool.map(read_header, files))
    slices = [h for h in headers if isinstance(h, SliceHeader)]
    unreadable = [h for h in headers if isinstance(h, Unreadable)]
    if not slices:
        if unreadable:
            raise VolumeError(f"no readable DICOM image in {root}: {len(unreadable)} unreadable file(s): "
                              f"{_names(unreadable)}")
        raise VolumeError(f"no DICOM files found in {root} ({len(files)} other files)")
    return slices, unreadable


def _choose_series(slices: list[SliceHeader], series_uid: str | None) -> tuple[str, list[SliceHeader]]:
    groups: dict[str, list[SliceHeader]] = {}
    for s in slices:
        groups.setdefault(s.series_uid, []).append(s)
    if series_uid is not None:
        if series_uid not in groups:
            raise VolumeError(f"series {series_uid} not found; present: {', '.join(sorted(groups)) or 'none'}")
        return series_uid, groups[series_uid]
    if len(groups) == 1:
        uid, members = next(iter(groups.items()))
        return uid, members

    def rank(item):
        uid, members = item
        ct = [m for m in members if m.modality == "CT" and not m.is_localizer]
        return (sum(m.is_axial for m in ct), len(ct))

    uid, members = max(groups.items(), key=rank)
    if rank((uid, members))[0] == 0:
        raise VolumeError(f"none of the {len(groups)} series holds axial CT images")
    others = ", ".join(f"{u} ({len(m)} files)" for u, m in groups.items() if u != uid)
    log.warning("%d series found; chose axial CT series %s (%d files); others: %s",
                len(groups), uid, len(members), others)
    return uid, members


def _several_series_warning(slices: list[SliceHeader], uid: str) -> list[str]:
    others = sorted({s.series_uid for s in slices} - {uid})
    if not others:
        return []
    return [f"{len(others) + 1} series in the folder; loaded {uid}, not {', '.join(others[:3])}"
            + (f" and {len(others) - 3} more" if len(others) > 3 else "")]


#: Attributes that must hold one value across a series: (keyword, SliceHeader field, what a mix is).
_IDENTITY = (("PatientID", "patient_id", "patients"), ("StudyInstanceUID", "study_uid", "studies"),
             ("FrameOfReferenceUID", "frame_uid", "frames of reference"))


def _by(members: list[SliceHeader], attr: str) -> dict[str, list[SliceHeader]]:
    groups: dict[str, list[SliceHeader]] = {}
    for m in members:
        groups.setdefault(getattr(m, attr), []).append(m)
    return groups


def _group_text(keyword: str, groups: dict[str, list[SliceHeader]], n: int = 3) -> str:
    parts = []
    for value, files in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:n]:
        names = ", ".join(f.path.name for f in sorted(files, key=lambda f: f.path.name)[:2])
        parts.append(f"{keyword} {value!r} in {len(files)} file(s) ({names}{', ...' if len(files) > 2 else ''})")
    return " vs ".join(parts) + (f" and {len(groups) - n} more value(s)" if len(groups) > n else "")


def check_identity(uid: str, members: list[SliceHeader]) -> None:
    """Refuse a series that is not one patient, one study, one frame of reference.

    One line names the differing values and files. A FrameOfReferenceUID is required
    (Type 1 in CT Image Storage): without it no result can be tied to the patient's frame.
    Exception: a FrameOfReferenceUID that differs on EVERY slice is an anonymiser's
    per-instance rewrite (LIDC-IDRI scans carry it), not a mix of acquisitions: positions,
    patient and study still agree, so it is accepted.
    """
    no_frame = [m for m in members if not m.frame_uid]
    if no_frame:
        raise VolumeError(f"series {uid}: {len(no_frame)} of {len(members)} file(s) have no FrameOfReferenceUID "
                          f"(Type 1 in CT images; without it no finding can be placed in the patient's frame), "
                          f"e.g. {no_frame[0].path.name}")
    for keyword, attr, what in _IDENTITY:
        groups = _by(members, attr)
        if len(groups) < 2 or (attr == "frame_uid" and len(groups) == len(members) > 2):
            continue
        raise VolumeError(f"series {uid} mixes {what}: {_group_text(keyword, groups)}; a volume must be one "
                          f"acquisition of one patient")


def _acq_key(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _split_acquisitions(uid: str, members: list[SliceHeader],
                        acquisition: str | None) -> tuple[list[SliceHeader], list[str]]:
    """Keep one acquisition when a series holds several over the same positions.

    Grouped by AcquisitionNumber. Groups whose slice positions interleave or overlap
    (two stacks 1.25 mm apart, a repeated scan) are separate acquisitions: the one with
    the most slices is loaded (ties: the lowest AcquisitionNumber, i.e. the first) and a
    warning names the others; ``acquisition`` picks one explicitly. Groups that follow
    one another along the slice axis (step-and-shoot blocks, or one number per slice)
    form one stack and are loaded together, as SimpleITK does.
    """
    groups = _by(members, "acquisition")
    if acquisition is not None:
        key = str(acquisition).strip()
        if key not in groups:
            raise VolumeError(f"series {uid}: no AcquisitionNumber {key!r}; present: "
                              f"{', '.join(repr(k) for k in sorted(groups, key=_acq_key))}")
        return groups[key], ([f"loaded AcquisitionNumber {key!r} of {len(groups)} acquisitions, as asked"]
                             if len(groups) > 1 else [])
    if len(groups) < 2:
        return members, []
    ref = members[0].orientation
    normal = np.cross(ref[:3], ref[3:])
    spans = sorted((float(min(np.dot(m.position, normal) for m in g)), float(max(np.dot(m.position, normal)
                   for m in g)), k) for k, g in groups.items())
    if all(nxt[0] > prev[1] + 1e-3 for prev, nxt in zip(spans, spans[1:])):
        return members, []  # consecutive blocks along the slice axis: one stack
    pick = min(groups, key=lambda k: (-len(groups[k]), _acq_key(k)))
    desc = "; ".join(f"AcquisitionNumber {k!r}: {len(groups[k])} slices at {lo:.2f}..{hi:.2f} mm"
                     for lo, hi, k in sorted(spans, key=lambda t: _acq_key(t[2])))
    msg = (f"{len(groups)} acquisitions over overlapping slice positions in one series ({desc}); loaded "
           f"AcquisitionNumber {pick!r} (most slices, then lowest number); pick another with "
           f"load_dicom(..., acquisition=N)")
    log.warning("series %s: %s", uid, msg)
    return groups[pick], [msg]


def _check_geometry(uid: str, members: list[SliceHeader]) -> None:
    """One orientation, image size and pixel spacing across the slices (one line on a mix)."""
    ref = members[0]
    for m in members[1:]:
        if not np.allclose(m.orientation, ref.orientation, atol=1e-4):
            raise VolumeError(f"series {uid} mixes orientations: {ref.path.name} {ref.orientation} vs "
                              f"{m.path.name} {m.orientation}")
        if (m.rows, m.cols) != (ref.rows, ref.cols):
            raise VolumeError(f"series {uid} mixes image sizes: {ref.path.name} {ref.rows}x{ref.cols} vs "
                              f"{m.path.name} {m.rows}x{m.cols}")
        if not np.allclose(m.pixel_spacing, ref.pixel_spacing, atol=1e-4):
            raise VolumeError(f"series {uid} mixes pixel spacings: {ref.path.name} {list(ref.pixel_spacing)} vs "
                              f"{m.path.name} {list(m.pixel_spacing)}")


def _validate_series(uid: str, members: list[SliceHeader],
                     acquisition: str | None = None) -> tuple[list[SliceHeader], list[str]]:
    """Check modality, values and identity, drop localizers, keep one acquisition, refuse
    mixed geometry. Returns (slices, warnings)."""
    warnings: list[str] = []
    modalities = {m.modality for m in members}
    if modalities != {"CT"}:
        bad = next(m for m in members if m.modality != "CT")
        raise VolumeError(f"series {uid}: modality {sorted(modalities)} is not CT (e.g. {bad.path.name})")
    localizers = [m for m in members if m.is_localizer]
    if localizers:
        members = [m for m in members if not m.is_localizer]
        msg = f"dropped {len(localizers)} localizer image(s): {', '.join(m.path.name for m in localizers[:3])}"
        log.warning("series %s: %s", uid, msg)
        warnings.append(msg)
        if not members:
            raise VolumeError(f"series {uid} holds only localizer images")
    for m in members:
        if m.problems:
            raise VolumeError(f"{m.path.name}: {m.problems[0]}" + (
                f" (and {len(m.problems) - 1} more problem(s))" if len(m.problems) > 1 else ""))
    missing = [m for m in members if m.position is None or m.orientation is None]
    if missing:
        raise VolumeError(f"{missing[0].path.name}: no ImagePositionPatient/ImageOrientationPatient "
                          f"({len(missing)} file(s) in series {uid})")
    no_ps = [m for m in members if m.pixel_spacing is None]
    if no_ps:
        raise VolumeError(f"{no_ps[0].path.name}: no PixelSpacing ({len(no_ps)} file(s) in series {uid})")
    check_identity(uid, members)
    members, split = _split_acquisitions(uid, members, acquisition)
    warnings += split
    _check_geometry(uid, members)
    return members, warnings


def _order_and_space(uid: str, members: list[SliceHeader], tolerance_mm: float, unreadable: list[Unreadable]):
    """Sort along the slice normal; return (slices, z spacing, row, col, normal)."""
    row = np.asarray(members[0].orientation[:3])
    col = np.asarray(members[0].orientation[3:])
    normal = np.cross(row, col)
    pos = np.asarray([m.position for m in members])
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    members = [members[i] for i in order]
    dist, pos = dist[order], pos[order]
    check_shape(f"series {uid}", (len(members), members[0].rows, members[0].cols))
    gaps = np.diff(dist)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise VolumeError(f"series {uid}: duplicate slice position {dist[i]:.3f} mm in "
                          f"{members[i].path.name} and {members[i + 1].path.name}")
    steps = np.diff(pos, axis=0)
    inplane = np.linalg.norm(steps - np.outer(gaps, normal), axis=1)
    if inplane.max() > TILT_TOLERANCE_MM:
        i = int(inplane.argmax())
        raise VolumeError(f"series {uid}: slice origins drift {inplane[i]:.3f} mm in-plane between "
                          f"{members[i].path.name} and {members[i + 1].path.name} (gantry tilt or sheared "
                          f"stack); tilted series are refused, not resampled")
    median = float(np.median(gaps))
    dev = np.abs(gaps - median)
    if dev.max() > tolerance_mm:
        i = int(dev.argmax())
        if gaps[i] > median and unreadable:
            # the gap is most likely the unreadable file: name it, not just the gap
            raise VolumeError(f"series {uid}: slice(s) missing between {members[i].path.name} and "
                              f"{members[i + 1].path.name} (gap {gaps[i]:.3f} mm, median {median:.3f} mm); "
                              f"unreadable file(s) in the folder: {_names(unreadable)}")
        kind = "missing slice(s)" if gaps[i] > median else "uneven spacing"
        raise VolumeError(f"series {uid}: {kind}: gap {gaps[i]:.3f} mm between {members[i].path.name} and "
                          f"{members[i + 1].path.name}, median gap {median:.3f} mm, tolerance {tolerance_mm} mm")
    dz = float((dist[-1] - dist[0]) / (len(members) - 1))
    check_spacing(f"series {uid}", "slice spacing (from ImagePositionPatient)", [dz])
    return members, dz, row, col, normal


# pydicom logs every failed decoder attempt with its traceback (LOGGER.exception) before
# raising one RuntimeError that lists them all; our error already carries the reason,
# so those records are dropped, but only for decodes this module runs (thread-local).
_quiet = threading.local()


class _DropDecoderTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_quiet, "active", False):
            log.debug("pydicom: %s", record.getMessage())
            return False
        return True


logging.getLogger("pydicom.pixels.decoders.base").addFilter(_DropDecoderTracebacks())


def _decoder_hint(ts_uid) -> str:
    from pydicom.uid import UID

    name = UID(ts_uid).name
    return (f"transfer syntax {ts_uid} ({name}) needs a decoder plugin that is not installed: "
            f"pip install 'noduleflow[jpeg]' (pylibjpeg, pylibjpeg-libjpeg; add pylibjpeg-openjpeg "
            f"for JPEG 2000 or pylibjpeg-rle for RLE)")


def _decode_failure(s: SliceHeader, exc: Exception) -> VolumeError:
    """Tell a missing decoder (installable) from corrupt data (not fixable by installing)."""
    from pydicom.uid import UID

    text = str(exc)
    ts = s.transfer_syntax
    if "exceptions were raised by all available plugins" in text:
        reasons = "; ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
        return VolumeError(f"{s.path.name}: compressed pixel data is corrupt ({UID(ts).name}): {reasons}")
    if ts and ts not in UNCOMPRESSED and isinstance(exc, NotImplementedError):
        # pydicom has no decoder for this transfer syntax at all (MPEG, an unknown UID):
        # installing a plugin would not help
        return VolumeError(f"{s.path.name}: transfer syntax {ts} ({UID(ts).name}) is not supported by any "
                           f"pixel data decoder; convert the series to an uncompressed or JPEG transfer syntax")
    if ts and ts not in UNCOMPRESSED and ("missing dependencies" in text or "plugin" in text.lower()):
        return VolumeError(f"{s.path.name}: {_decoder_hint(ts)}")
    first = text.splitlines()[0] if text else type(exc).__name__
    return VolumeError(f"{s.path.name}: cannot decode pixel data: {first}")


def _decode(s: SliceHeader) -> np.ndarray:
    """One slice's stored values as a 2-D array (rows, cols), before rescale."""
    ds = s.ds
    try:
        if (s.transfer_syntax in UNCOMPRESSED and s.bits_allocated == 16 and s.samples_per_pixel == 1
                and (s.bits_stored == 16 or s.pixel_representation == 0)):
            # Fast path: raw little-endian 16-bit words; no per-pixel work.
            raw = ds.PixelData
            need = s.rows * s.cols * 2
            if raw is None or len(raw) < need:
                got = 0 if raw is None else len(raw)
                raise VolumeError(f"{s.path.name}: pixel data truncated: {got} bytes, expected {need}")
            dtype = "<i2" if s.pixel_representation == 1 else "<u2"
            arr = np.frombuffer(raw, dtype=dtype, count=s.rows * s.cols).reshape(s.rows, s.cols)
            if dtype == "<u2" and s.bits_stored < 16:
                arr = arr & np.uint16((1 << s.bits_stored) - 1)
            return arr
        _quiet.active = True
        try:
            arr = ds.pixel_array
        finally:
            _quiet.active = False
    except VolumeError:
        raise
    except (NotImplementedError, RuntimeError) as exc:
        raise _decode_failure(s, exc) from exc
    except (ValueError, AttributeError, KeyError, TypeError, OSError, EOFError, IndexError) as exc:
        raise VolumeError(f"{s.path.name}: unreadable or truncated pixel data: {exc}") from exc
    if arr.shape != (s.rows, s.cols):
        raise VolumeError(f"{s.path.name}: expected one {s.rows}x{s.cols} frame, got an array of shape {arr.shape}")
    return arr


def _to_hu(s: SliceHeader, stored: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stored values -> int16 HU (rounded, clipped), written into ``out`` when given.

    Slope and intercept were checked when the header was read (slope > 0 and finite,
    |intercept| bounded), so the arithmetic below cannot overflow or produce NaN.
    """
    slope, intercept = s.slope, s.intercept
    if slope == 1.0 and intercept == int(intercept):
        b = int(intercept)
        if stored.dtype in (np.int16, np.uint16) and stored.size:
            # Common case: when no value can leave int16, add in one buffered pass straight
            # into the output (no full-size int32 temporary, no clip pass).
            if INT16_MIN <= int(stored.min()) + b and int(stored.max()) + b <= INT16_MAX:
                if out is None:
                    out = np.empty(stored.shape, dtype=np.int16)
                np.add(stored, np.int32(b), out=out, casting="unsafe")
                return out
        hu = to_int16_hu(stored.astype(np.int64) + b)
    else:
        hu = to_int16_hu(stored.astype(np.float64) * slope + intercept)
    if out is None:
        return hu
    out[...] = hu
    return out


def list_series(path: Path, workers: int | None = None) -> list[str]:
    """SeriesInstanceUIDs of the CT series under ``path`` (localizer-only series left out)."""
    try:
        slices, _ = _scan_files(Path(path), workers or min(8, (os.cpu_count() or 2) * 2))
    except VolumeError:
        return []
    return sorted({s.series_uid for s in slices if s.modality == "CT" and not s.is_localizer})


def _refuse_own_unreadable(uid: str, unreadable: list[Unreadable]) -> None:
    mine = [u for u in unreadable if u.series_uid == uid]
    if mine:  # its own (damaged) header names this series: a slice is lost for sure
        raise VolumeError(f"series {uid}: unreadable slice(s): {_names(mine)}")


def _unreadable_warning(uid: str, unreadable: list[Unreadable]) -> str:
    msg = (f"skipped {len(unreadable)} unreadable file(s) that may belong to this series (its first or "
           f"last slices would then be missing): {_names(unreadable)}")
    log.warning("series %s: %s", uid, msg)
    return msg


def _generated_uid(members: list[SliceHeader]) -> str:
    """A stable DICOM UID for a series whose SeriesInstanceUID is empty (same files, same id)."""
    from pydicom.uid import generate_uid

    sops = sorted(str(m.ds.get("SOPInstanceUID", "") or m.path.name) for m in members)
    return generate_uid(entropy_srcs=["noduleflow-empty-series-uid", *sops])


def load_dicom(path: Path, series_uid: str | None = None, *, tolerance_mm: float | None = None,
               workers: int | None = None, acquisition: str | int | None = None) -> Volume:
    """Load one CT series from a DICOM file or folder tree. See module docstring.

    ``acquisition``: the AcquisitionNumber to load when the series holds several
    acquisitions over the same positions (default: the one with the most slices, warned).
    """
    tolerance_mm = DEFAULT_TOLERANCE_MM if tolerance_mm is None else float(tolerance_mm)
    if not tolerance_mm >= 0:
        raise VolumeError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    slices, unreadable = _scan_files(Path(path), workers)
    uid, members = _choose_series(slices, series_uid)
    members, warnings = _validate_series(uid, members, None if acquisition is None else str(acquisition))
    if series_uid is None:  # chosen by rank, not asked for: say so in the output too
        warnings[:0] = _several_series_warning(slices, uid)
    _refuse_own_unreadable(uid, unreadable)
    members, dz, row, col, normal = _order_and_space(uid, members, tolerance_mm, unreadable)
    if unreadable:
        warnings.append(_unreadable_warning(uid, unreadable))

    hu = np.empty((len(members), members[0].rows, members[0].cols), dtype=np.int16)

    def fill(i: int) -> None:
        _to_hu(members[i], _decode(members[i]), out=hu[i])

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fill, range(len(members))))

    for w in check_hu_plausible(f"series {uid or '(empty SeriesInstanceUID)'}", hu):
        log.warning("%s", w)
        warnings.append(w)
    if not uid:
        # an empty SeriesInstanceUID would give an empty seriesuid column while file names get a
        # generated id: one id, made here, is used everywhere downstream (CSV, JSON, file names)
        uid = _generated_uid(members)
        warnings.append(f"empty SeriesInstanceUID; the series is called {uid}")
        log.warning("%s", warnings[-1])
    dy, dx = members[0].pixel_spacing  # PixelSpacing = (row spacing, column spacing)
    direction = np.stack([row, col, normal], axis=1)  # columns: x (along a row), y, z
    sop = members[0].sop_class
    if sop and sop not in _CT_SOP_CLASSES:
        warnings.append(f"SOP class {sop} is not CT Image Storage")
        log.warning("series %s: %s", uid, warnings[-1])
    return Volume(
        hu=hu,
        spacing_zyx_mm=(dz, dy, dx),
        origin_xyz_mm=check_coordinates(f"series {uid}", "ImagePositionPatient", members[0].position),
        direction=tuple(direction.ravel()),
        series_uid=uid,
        meta={
            "source": str(path),
            "format": "dicom",
            "n_files": len(members),
            "warnings": warnings,
        },
    )
