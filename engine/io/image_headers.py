"""MetaImage and NIfTI headers, checked before SimpleITK opens anything.

ITK is forgiving where a CT loader must not be: it reads a MetaImage's ElementDataFile
wherever it points (``../../x``, ``/etc/passwd``, a FIFO that never ends), zero-fills a
truncated ``.nii``/``.nii.gz`` and turns a NIfTI voxel size of 0 or NaN into 1 mm. So the
few header fields that decide those outcomes are parsed here, with the standard
library, and refused with the file and value named; only then does SimpleITK read.
"""
from __future__ import annotations

import gzip
import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VolumeError
from .checks import SPACING_RANGE_MM, check_coordinates, check_finite, check_orthonormal, check_shape

#: Bytes of a MetaImage header read at most (real headers are < 1 KB).
MAX_MHD_HEADER_BYTES = 64 * 1024
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


@dataclass(frozen=True)
class _Meta:
    fields: dict[str, str]
    header_len: int  # bytes up to and including the ElementDataFile line


def _read_meta(path: Path) -> _Meta:
    with open(path, "rb") as f:
        head = f.read(MAX_MHD_HEADER_BYTES)
    fields: dict[str, str] = {}
    offset = 0
    for line in head.splitlines(keepends=True):
        offset += len(line)
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":  # by the format, the last header field
            return _Meta(fields, offset)
    raise VolumeError(f"{path.name}: not a MetaImage header (no ElementDataFile line in the first "
                      f"{MAX_MHD_HEADER_BYTES} bytes)")


def _meta_numbers(path: Path, meta: _Meta, key: str, n: int, kind=float) -> tuple:
    text = meta.fields.get(key)
    if text is None:
        raise VolumeError(f"{path.name}: no {key} in the MetaImage header")
    try:
        values = tuple(kind(v) for v in text.split())
    except ValueError as exc:
        raise VolumeError(f"{path.name}: {key} is not numeric: {text!r}") from exc
    if len(values) != n:
        raise VolumeError(f"{path.name}: {key} must have {n} values, got {len(values)}: {text!r}")
    return values


def _data_file(path: Path, name: str) -> Path:
    """The ElementDataFile, confined to the header's folder and a regular file, not opened."""
    if "\x00" in name:  # no file name holds a NUL byte: os.stat would raise ValueError
        raise VolumeError(f"{path.name}: ElementDataFile {name!r} holds a NUL byte; it must name a file beside "
                          f"the header")
    if name.upper() == "LIST" or "%" in name:
        raise VolumeError(f"{path.name}: multi-file MetaImage data (ElementDataFile = {name!r}) is not "
                          f"supported; convert it to one .mha or .mhd/.raw pair")
    if os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise VolumeError(f"{path.name}: ElementDataFile {name!r} is an absolute path; it must name a file "
                          f"beside the header")
    folder = path.parent.resolve()
    data = (folder / name).resolve()
    if data.parent != folder and folder not in data.parents:
        raise VolumeError(f"{path.name}: ElementDataFile {name!r} points outside the header's folder ({data})")
    try:
        st = os.stat(data)  # stat, never open: a FIFO or device must not be read
    except FileNotFoundError as exc:
        raise VolumeError(f"{path.name}: its data file {name!r} does not exist ({data})") from exc
    except OSError as exc:
        raise VolumeError(f"{path.name}: cannot stat its data file {name!r}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise VolumeError(f"{path.name}: its data file {name!r} is not a regular file (FIFO, device or folder)")
    return data


def _check_meta_geometry(path: Path, meta: _Meta) -> None:
    """ITK reads "nan" or a skewed matrix without complaint: origin and axes checked here."""
    for key in ("Offset", "Origin", "Position"):
        if key in meta.fields:
            check_coordinates(path.name, key, _meta_numbers(path, meta, key, 3))
    for key in ("TransformMatrix", "Rotation", "Orientation"):
        if key in meta.fields:
            matrix = check_finite(path.name, key, _meta_numbers(path, meta, key, 9))
            check_orthonormal(path.name, key, np.asarray(matrix).reshape(3, 3))


def _inflated_length(data: Path, skip: int, need: int) -> int:
    """Bytes a zlib-compressed MetaImage data stream inflates to (up to ``need``)."""
    inflater, got = zlib.decompressobj(), 0
    try:
        with open(data, "rb") as f:
            f.seek(skip)
            while got < need:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                got += len(inflater.decompress(chunk, need - got + 1))
                while inflater.unconsumed_tail and got < need:
                    got += len(inflater.decompress(inflater.unconsumed_tail, need - got + 1))
    except zlib.error as exc:
        raise VolumeError(f"{data.name}: compressed voxel data is corrupt after {got} bytes: {exc}") from exc
    return got


def check_metaimage(path: Path) -> None:
    """Refuse a .mhd/.mha whose data file escapes, is special, missing or short."""
    meta = _read_meta(path)
    ndims = _meta_numbers(path, meta, "NDims", 1, int)[0]
    if ndims != 3:
        raise VolumeError(f"{path.name}: expected a 3-D image, NDims = {ndims}")
    size_xyz = _meta_numbers(path, meta, "DimSize", 3, int)
    check_shape(path.name, size_xyz[::-1])
    key = "ElementSpacing" if "ElementSpacing" in meta.fields else "ElementSize"
    spacing = _meta_numbers(path, meta, key, 3)
    lo, hi = SPACING_RANGE_MM
    if not all(math.isfinite(v) and lo <= v <= hi for v in spacing):
        raise VolumeError(f"{path.name}: {key} {list(spacing)} mm is outside the accepted range [{lo}, {hi}] mm")
    _check_meta_geometry(path, meta)
    etype = meta.fields.get("ElementType", "")
    if etype not in _MET_BYTES:
        raise VolumeError(f"{path.name}: unsupported ElementType {etype!r}")
    channels = _meta_numbers(path, meta, "ElementNumberOfChannels", 1, int)[0] \
        if "ElementNumberOfChannels" in meta.fields else 1
    header_size = _meta_numbers(path, meta, "HeaderSize", 1, int)[0] if "HeaderSize" in meta.fields else 0
    if channels < 1 or header_size < -1:
        raise VolumeError(f"{path.name}: ElementNumberOfChannels {channels} / HeaderSize {header_size} is invalid")
    need = size_xyz[0] * size_xyz[1] * size_xyz[2] * _MET_BYTES[etype] * channels
    name = meta.fields["ElementDataFile"]
    if name.upper() == "LOCAL":
        data, skip = path, meta.header_len
    else:
        data = _data_file(path, name)
        skip = max(header_size, 0)
    if meta.fields.get("CompressedData", "False").lower() == "true":
        # ITK zero-fills a corrupt or short zlib stream ("Uncompress failed"): inflate it once here
        have = _inflated_length(data, skip, need)
    else:
        have = os.stat(data).st_size - skip
    if have < need:
        raise VolumeError(f"{data.name}: voxel data truncated: {max(have, 0)} bytes, DimSize {list(size_xyz)} "
                          f"x {etype} needs {need} (named by {path.name})")
    if have > need and header_size != -1 and meta.fields.get("CompressedData", "False").lower() != "true":
        # MetaIO writes exactly the voxels; more bytes mean DimSize/ElementType do not describe
        # this data (e.g. MET_UCHAR over 16-bit voxels) and ITK would read garbage
        raise VolumeError(f"{data.name}: {have} bytes of voxel data, but DimSize {list(size_xyz)} x {etype} "
                          f"describes {need} (named by {path.name}): header and data do not match")


# -- NIfTI ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Nifti:
    dim: list[int]
    pixdim: list[float]
    datatype: int
    bitpix: int
    vox_offset: int
    qform_code: int
    sform_code: int
    qform: list[float]  # quatern_b, c, d, qoffset_x, y, z
    sform: list[float]  # srow_x, srow_y, srow_z (12 values)
    scl_slope: float
    scl_inter: float
    header_size: int  # 348 (NIfTI-1) or 540 (NIfTI-2); voxels start after it plus 4 extension bytes


def _nifti_header(path: Path, head: bytes) -> _Nifti:
    """The fields of a NIfTI-1 or NIfTI-2 header this loader checks (nifti1.h / nifti2.h offsets)."""
    for e in "<>":
        if len(head) >= 348 and struct.unpack(e + "i", head[:4])[0] == 348:
            vox = struct.unpack(e + "f", head[108:112])[0]
            return _Nifti(dim=list(struct.unpack(e + "8h", head[40:56])),
                          pixdim=list(struct.unpack(e + "8f", head[76:108])),
                          datatype=struct.unpack(e + "h", head[70:72])[0],
                          bitpix=struct.unpack(e + "h", head[72:74])[0],
                          vox_offset=int(vox) if math.isfinite(vox) else -1,
                          qform_code=struct.unpack(e + "h", head[252:254])[0],
                          sform_code=struct.unpack(e + "h", head[254:256])[0],
                          qform=list(struct.unpack(e + "6f", head[256:280])),
                          sform=list(struct.unpack(e + "12f", head[280:328])),
                          scl_slope=struct.unpack(e + "f", head[112:116])[0],
                          scl_inter=struct.unpack(e + "f", head[116:120])[0], header_size=348)
        if len(head) >= 540 and struct.unpack(e + "i", head[:4])[0] == 540:
            return _Nifti(dim=list(struct.unpack(e + "8q", head[16:80])),
                          pixdim=list(struct.unpack(e + "8d", head[104:168])),
                          datatype=struct.unpack(e + "h", head[12:14])[0],
                          bitpix=struct.unpack(e + "h", head[14:16])[0],
                          vox_offset=struct.unpack(e + "q", head[168:176])[0],
                          qform_code=struct.unpack(e + "i", head[344:348])[0],
                          sform_code=struct.unpack(e + "i", head[348:352])[0],
                          qform=list(struct.unpack(e + "6d", head[352:400])),
                          sform=list(struct.unpack(e + "12d", head[400:496])),
                          scl_slope=struct.unpack(e + "d", head[176:184])[0],
                          scl_inter=struct.unpack(e + "d", head[184:192])[0], header_size=540)
    raise VolumeError(f"{path.name}: not a NIfTI-1/NIfTI-2 file (header of {len(head)} bytes, "
                      f"sizeof_hdr is neither 348 nor 540)")


#: NIfTI scalar datatypes (nifti1.h) -> bits per voxel: UINT8, INT16, INT32, FLOAT32, FLOAT64,
#: INT8, UINT16, UINT32, INT64, UINT64.
_NIFTI_SCALAR_TYPES = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64}


def _gzip_length(path: Path, need: int) -> int:
    """Decompressed bytes available in ``path``, read up to ``need`` (detects truncation)."""
    got = 0
    try:
        with gzip.open(path, "rb") as f:
            while got < need:
                chunk = f.read(min(1 << 22, need - got))
                if not chunk:
                    break
                got += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise VolumeError(f"{path.name}: gzip stream is corrupt or truncated: {exc}") from exc
    return got


#: Accepted NIfTI scl_slope (0 means "no scaling" by the standard) and largest |scl_inter|:
#: the bounds the DICOM loader puts on RescaleSlope / RescaleIntercept. A negative slope
#: inverts HU; 1e6 or an intercept of 1e9 clip every voxel.
NIFTI_SLOPE_RANGE = (1e-3, 1e3)
NIFTI_MAX_ABS_INTER = 65536.0
#: qform and sform disagreeing beyond these (mm at the origin, degrees between the axes)
#: is recorded as a warning: one of them places the scan elsewhere.
QSFORM_TOLERANCE_MM, QSFORM_TOLERANCE_DEG = 1.0, 1.0


def _check_scaling(path: Path, h: _Nifti) -> None:
    slope, inter = h.scl_slope, h.scl_inter
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise VolumeError(f"{path.name}: NIfTI scl_slope {slope} / scl_inter {inter} is not finite")
    lo, hi = NIFTI_SLOPE_RANGE
    if slope < 0:
        raise VolumeError(f"{path.name}: NIfTI scl_slope {slope} is negative: it would invert the HU")
    # slope 0 means "no scaling" (nifti1.h), yet ITK 5.4 still adds scl_inter: bound it either way
    if not (slope == 0 or lo <= slope <= hi) or abs(inter) > NIFTI_MAX_ABS_INTER:
        raise VolumeError(f"{path.name}: NIfTI scl_slope {slope:g} / scl_inter {inter:g} outside the accepted "
                          f"slope range [{lo:g}, {hi:g}] / |intercept| <= {NIFTI_MAX_ABS_INTER:g}")


def _qform_affine(h: _Nifti) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 unit axes as columns, origin) of the qform, RAS (nifti1.h quaternion formula)."""
    b, c, d = h.qform[:3]
    a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    r = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                  [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                  [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    if h.pixdim[0] < 0:  # qfac
        r[:, 2] = -r[:, 2]
    return r, np.asarray(h.qform[3:], dtype=np.float64)


def _sform_affine(h: _Nifti) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(h.sform, dtype=np.float64).reshape(3, 4)
    axes = m[:, :3]
    norms = np.linalg.norm(axes, axis=0)
    return axes / np.where(norms > 0, norms, 1.0), m[:, 3]


def _qform_sform_warning(path: Path, h: _Nifti) -> list[str]:
    """Both transforms set and disagreeing: say so, with the numbers and the one used.

    The one used is SimpleITK's (ITK 5.4 NiftiImageIO) choice, which the loader follows:
    the sform when sform_code is 1 (scanner anatomical) or the qform_code is 0, else the
    qform (checked against SimpleITK in tests/robustness/test_plausibility.py)."""
    if h.qform_code <= 0 or h.sform_code <= 0:
        return []
    rq, oq = _qform_affine(h)
    rs, os_ = _sform_affine(h)
    shift = float(np.linalg.norm(oq - os_))
    cos = np.clip((np.trace(rq.T @ rs) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.degrees(math.acos(cos))
    if shift <= QSFORM_TOLERANCE_MM and angle <= QSFORM_TOLERANCE_DEG:
        return []
    used = "sform" if h.sform_code == 1 else "qform"
    return [f"{path.name}: NIfTI qform (code {h.qform_code}) and sform (code {h.sform_code}) disagree by "
            f"{shift:.1f} mm at the origin and {angle:.1f} degrees; using the {used}, as SimpleITK does "
            f"(tolerance {QSFORM_TOLERANCE_MM:g} mm / {QSFORM_TOLERANCE_DEG:g} degrees)"]


def check_nifti(path: Path) -> list[str]:
    """Refuse a .nii/.nii.gz with a bad voxel size, shape, orientation or truncated voxel data.

    Returns warnings (e.g. no qform/sform: the orientation is ITK's guess)."""
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(540)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise VolumeError(f"{path.name}: gzip stream is corrupt or truncated: {exc}") from exc
    h = _nifti_header(path, head)
    dim = h.dim
    if not 3 <= dim[0] <= 7 or any(d != 1 for d in dim[4:dim[0] + 1]):
        shown = dim[:dim[0] + 1] if 0 < dim[0] <= 7 else dim
        raise VolumeError(f"{path.name}: expected a 3-D image, NIfTI dim = {shown}")
    check_shape(path.name, (dim[3], dim[2], dim[1]))
    lo, hi = SPACING_RANGE_MM
    if not all(math.isfinite(v) and lo <= v <= hi for v in h.pixdim[1:4]):
        raise VolumeError(f"{path.name}: NIfTI pixdim (voxel size) {h.pixdim[1:4]} mm is outside the accepted "
                          f"range [{lo}, {hi}] mm")
    if h.datatype not in _NIFTI_SCALAR_TYPES:
        raise VolumeError(f"{path.name}: NIfTI datatype {h.datatype} is not a scalar voxel type")
    if _NIFTI_SCALAR_TYPES[h.datatype] != h.bitpix or h.vox_offset < 0:
        raise VolumeError(f"{path.name}: NIfTI bitpix {h.bitpix} / vox_offset {h.vox_offset} is invalid for "
                          f"datatype {h.datatype}")
    if h.vox_offset < h.header_size + 4:
        # a single-file NIfTI keeps its voxels after the header and the 4 extension bytes;
        # vox_offset 0 would read the header itself as the first voxels
        raise VolumeError(f"{path.name}: NIfTI vox_offset {h.vox_offset} lies inside the {h.header_size}-byte "
                          f"header (a single-file NIfTI needs vox_offset >= {h.header_size + 4}): the header "
                          f"would be read as voxels")
    _check_scaling(path, h)
    if h.qform_code > 0:
        check_finite(path.name, "NIfTI qform (quatern_b/c/d, qoffset)", h.qform)
        check_coordinates(path.name, "NIfTI qform offset", h.qform[3:])
    if h.sform_code > 0:
        check_finite(path.name, "NIfTI sform (srow_x/y/z)", h.sform)
        check_coordinates(path.name, "NIfTI sform offset", h.sform[3::4])
    warnings = _qform_sform_warning(path, h)
    if h.qform_code <= 0 and h.sform_code <= 0:
        warnings.append(f"{path.name}: NIfTI has neither qform nor sform (both codes 0): the orientation and "
                        f"origin are ITK's default, not the scanner's")
    need = h.vox_offset + dim[1] * dim[2] * dim[3] * h.bitpix // 8
    have = _gzip_length(path, need) if gz else os.stat(path).st_size
    if have < need:
        raise VolumeError(f"{path.name}: voxel data truncated: {have} bytes{' decompressed' if gz else ''}, "
                          f"dim {dim[1:4]} x {h.bitpix} bits from offset {h.vox_offset} need {need}")
    if not gz and have > need:
        warnings.append(f"{path.name}: {have - need} bytes after the voxel data that dim and datatype describe")
    return warnings
