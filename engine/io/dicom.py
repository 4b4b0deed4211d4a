"""DICOM CT series -> `Volume`.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient row and column directions), never by file name
or InstanceNumber, and the z spacing comes from those positions, not SliceThickness.
This is the order and geometry GDCM/SimpleITK's series reader produces, so a loaded
volume is voxel-for-voxel what SimpleITK gives, with the same origin and direction.

Headers are parsed in parallel threads with the pixel data deferred; only the chosen
series' pixel data is then read and decoded, also in threads (pydicom and numpy release
the GIL for the I/O and the bulk copies).
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VolumeError
from ..volume import Volume
from .image import INT16_MAX, INT16_MIN, to_int16_hu

log = logging.getLogger(__name__)

#: Largest accepted deviation of any slice gap from the median gap, mm. Beyond it the
#: series has missing slices or uneven spacing and is refused (resampling such a stack
#: as if it were regular would misplace every finding).
DEFAULT_TOLERANCE_MM = 0.05
#: Largest accepted in-plane offset between consecutive slice origins, mm (gantry tilt).
TILT_TOLERANCE_MM = 0.05

_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian
_CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}


@dataclass(frozen=True)
class _Slice:
    path: Path
    ds: object  # pydicom Dataset, pixel data deferred
    series_uid: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    rows: int
    cols: int


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), defer_size="4 KB")
    except InvalidDicomError:
        return None  # not a DICOM file: folders often hold other files
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise VolumeError(f"cannot parse DICOM file {path}: {exc}") from exc


def _floats(value, n: int, what: str, path: Path):
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{path.name}: {what} is not numeric: {value!r}") from exc
    if len(out) != n:
        raise VolumeError(f"{path.name}: {what} must have {n} values, got {len(out)}: {value!r}")
    return out


def _as_slice(path: Path, ds) -> _Slice:
    return _Slice(
        path=path,
        ds=ds,
        series_uid=str(getattr(ds, "SeriesInstanceUID", "") or ""),
        position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path),
        rows=int(ds.get("Rows", 0) or 0),
        cols=int(ds.get("Columns", 0) or 0),
    )


def _scan_files(root: Path, workers: int) -> list[_Slice]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise VolumeError(f"no files in {root}")
    with ThreadPoolExecutor(workers) as pool:
        headers = list(pool.map(_read_header, files))
    slices = [_as_slice(p, ds) for p, ds in zip(files, headers) if ds is not None]
    if not slices:
        raise VolumeError(f"no DICOM files found in {root} ({len(files)} other files)")
    return slices


def _is_localizer(s: _Slice) -> bool:
    image_type = [str(v).upper() for v in (s.ds.get("ImageType") or [])]
    return "LOCALIZER" in image_type


def _is_axial(s: _Slice) -> bool:
    if s.orientation is None:
        return False
    normal = np.cross(s.orientation[:3], s.orientation[3:])
    return abs(normal[2]) > 0.8


def _choose_series(slices: list[_Slice], series_uid: str | None) -> tuple[str, list[_Slice]]:
    groups: dict[str, list[_Slice]] = {}
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
        ct = [m for m in members if str(m.ds.get("Modality", "")).upper() == "CT" and not _is_localizer(m)]
        axial = sum(_is_axial(m) for m in ct)
        return (axial, len(ct))

    uid, members = max(groups.items(), key=rank)
    if rank((uid, members))[0] == 0:
        raise VolumeError(f"none of the {len(groups)} series holds axial CT images")
    others = ", ".join(f"{u} ({len(m)} files)" for u, m in groups.items() if u != uid)
    log.warning("%d series found; chose axial CT series %s (%d files); others: %s",
                len(groups), uid, len(members), others)
    return uid, members


def _validate_series(uid: str, members: list[_Slice]) -> tuple[list[_Slice], list[str]]:
    """Check modality, drop localizers, refuse mixed geometry. Returns (slices, warnings)."""
    warnings: list[str] = []
    modalities = {str(m.ds.get("Modality", "")).upper() for m in members}
    if modalities != {"CT"}:
        bad = next(m for m in members if str(m.ds.get("Modality", "")).upper() != "CT")
        raise VolumeError(f"series {uid}: modality {sorted(modalities)} is not CT (e.g. {bad.path.name})")
    localizers = [m for m in members if _is_localizer(m)]
    if localizers:
        members = [m for m in members if not _is_localizer(m)]
        msg = f"dropped {len(localizers)} localizer image(s): {', '.join(m.path.name for m in localizers[:3])}"
        log.warning("series %s: %s", uid, msg)
        warnings.append(msg)
        if not members:
            raise VolumeError(f"series {uid} holds only localizer images")
    missing = [m for m in members if m.position is None or m.orientation is None]
    if missing:
        raise VolumeError(f"{missing[0].path.name}: no ImagePositionPatient/ImageOrientationPatient "
                          f"({len(missing)} file(s) in series {uid})")
    ref = members[0]
    for m in members[1:]:
        if not np.allclose(m.orientation, ref.orientation, atol=1e-4):
            raise VolumeError(f"series {uid} mixes orientations: {ref.path.name} {ref.orientation} vs "
                              f"{m.path.name} {m.orientation}")
        if (m.rows, m.cols) != (ref.rows, ref.cols):
            raise VolumeError(f"series {uid} mixes image sizes: {ref.path.name} {ref.rows}x{ref.cols} vs "
                              f"{m.path.name} {m.rows}x{m.cols}")
        ps_ref, ps = ref.ds.get("PixelSpacing"), m.ds.get("PixelSpacing")
        if ps_ref is not None and ps is not None and not np.allclose([float(v) for v in ps],
                                                                     [float(v) for v in ps_ref], atol=1e-4):
            raise VolumeError(f"series {uid} mixes pixel spacings: {ref.path.name} {list(ps_ref)} vs "
                              f"{m.path.name} {list(ps)}")
    return members, warnings


def _order_and_space(uid: str, members: list[_Slice], tolerance_mm: float):
    """Sort along the slice normal; return (slices, z spacing, row, col, normal)."""
    row = np.asarray(members[0].orientation[:3])
    col = np.asarray(members[0].orientation[3:])
    normal = np.cross(row, col)
    pos = np.asarray([m.position for m in members])
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    members = [members[i] for i in order]
    dist, pos = dist[order], pos[order]
    if len(members) == 1:
        ds = members[0].ds
        dz = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)
        return members, abs(dz), row, col, normal
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
        kind = "missing slice(s)" if gaps[i] > median else "uneven spacing"
        raise VolumeError(f"series {uid}: {kind}: gap {gaps[i]:.3f} mm between {members[i].path.name} and "
                          f"{members[i + 1].path.name}, median gap {median:.3f} mm, tolerance {tolerance_mm} mm")
    dz = float((dist[-1] - dist[0]) / (len(members) - 1))
    return members, dz, row, col, normal


def _decoder_hint(ts_uid) -> str:
    name = getattr(ts_uid, "name", str(ts_uid))
    return (f"transfer syntax {ts_uid} ({name}) needs a decoder plugin that is not installed: "
            f"pip install 'noduleflow[jpeg]' (pylibjpeg, pylibjpeg-libjpeg; add pylibjpeg-openjpeg "
            f"for JPEG 2000 or pylibjpeg-rle for RLE)")


def _decode(s: _Slice) -> np.ndarray:
    """One slice's stored values as a 2-D array (rows, cols), before rescale."""
    ds = s.ds
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        if (ts in _UNCOMPRESSED and int(ds.get("BitsAllocated", 0)) == 16
                and int(ds.get("SamplesPerPixel", 1)) == 1
                and (int(ds.get("BitsStored", 16)) == 16 or int(ds.get("PixelRepresentation", 0)) == 0)):
            # Fast path: raw little-endian 16-bit words; no per-pixel work.
            raw = ds.PixelData
            need = s.rows * s.cols * 2
            if raw is None or len(raw) < need:
                got = 0 if raw is None else len(raw)
                raise VolumeError(f"{s.path.name}: pixel data truncated: {got} bytes, expected {need}")
            dtype = "<i2" if int(ds.get("PixelRepresentation", 0)) == 1 else "<u2"
            arr = np.frombuffer(raw, dtype=dtype, count=s.rows * s.cols).reshape(s.rows, s.cols)
            if dtype == "<u2" and int(ds.get("BitsStored", 16)) < 16:
                arr = arr & np.uint16((1 << int(ds.BitsStored)) - 1)
            return arr
        arr = ds.pixel_array
    except VolumeError:
        raise
    except (NotImplementedError, RuntimeError) as exc:
        if ts is not None and ts not in _UNCOMPRESSED and ("plugin" in str(exc).lower()
                                                            or "decode" in str(exc).lower()):
            raise VolumeError(f"{s.path.name}: {_decoder_hint(ts)}") from exc
        raise VolumeError(f"{s.path.name}: cannot decode pixel data: {exc}") from exc
    except (ValueError, AttributeError, KeyError, TypeError, OSError, EOFError) as exc:
        raise VolumeError(f"{s.path.name}: unreadable or truncated pixel data: {exc}") from exc
    if arr.ndim != 2:
        raise VolumeError(f"{s.path.name}: expected one 2-D frame per file, got array of shape {arr.shape}")
    return arr


def _to_hu(s: _Slice, stored: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stored values -> int16 HU (rounded, clipped), written into ``out`` when given."""
    slope = float(s.ds.get("RescaleSlope", 1) or 1)
    intercept = float(s.ds.get("RescaleIntercept", 0) or 0)
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
        hu = to_int16_hu(stored.astype(np.int32) + b)
    else:
        hu = to_int16_hu(stored.astype(np.float64) * slope + intercept)
    if out is None:
        return hu
    out[...] = hu
    return out


def list_series(path: Path, workers: int | None = None) -> list[str]:
    """SeriesInstanceUIDs of the CT series under ``path`` (localizer-only series left out)."""
    try:
        slices = _scan_files(Path(path), workers or min(8, (os.cpu_count() or 2) * 2))
    except VolumeError:
        return []
    uids = {s.series_uid for s in slices if str(s.ds.get("Modality", "")).upper() == "CT" and not _is_localizer(s)}
    return sorted(uids)


def load_dicom(path: Path, series_uid: str | None = None, *, tolerance_mm: float | None = None,
               workers: int | None = None) -> Volume:
    """Load one CT series from a DICOM file or folder tree. See module docstring."""
    tolerance_mm = DEFAULT_TOLERANCE_MM if tolerance_mm is None else float(tolerance_mm)
    if tolerance_mm < 0:
        raise VolumeError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    slices = _scan_files(path, workers)
    uid, members = _choose_series(slices, series_uid)
    members, warnings = _validate_series(uid, members)
    members, dz, row, col, normal = _order_and_space(uid, members, tolerance_mm)

    hu = np.empty((len(members), members[0].rows, members[0].cols), dtype=np.int16)

    def fill(i: int) -> None:
        _to_hu(members[i], _decode(members[i]), out=hu[i])

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fill, range(len(members))))

    ps = members[0].ds.get("PixelSpacing")
    if ps is None:
        raise VolumeError(f"{members[0].path.name}: no PixelSpacing")
    dy, dx = (float(v) for v in ps)  # PixelSpacing = (row spacing, column spacing)
    direction = np.stack([row, col, normal], axis=1)  # columns: x (along a row), y, z
    sop = str(members[0].ds.get("SOPClassUID", ""))
    if sop and sop not in _CT_SOP_CLASSES:
        warnings.append(f"SOP class {sop} is not CT Image Storage")
    return Volume(
        hu=hu,
        spacing_zyx_mm=(dz, dy, dx),
        origin_xyz_mm=tuple(float(v) for v in members[0].position),
        direction=tuple(direction.ravel()),
        series_uid=uid,
        meta={
            "source": str(path),
            "format": "dicom",
            "n_files": len(members),
            "warnings": warnings,
        },
    )
