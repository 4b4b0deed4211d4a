"""Corrupted MetaImage (.mhd/.raw, .mha) and NIfTI (.nii, .nii.gz) files: each loads or is
one `VolumeError`; a .mhd never makes the loader read outside its folder or open a FIFO."""
from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from noduleflow.engine import Volume
from noduleflow.engine.io import save_volume

from .corrupt import outcome, phantom


def _mhd_set(**fields):
    """Rewrite header fields of scan.mhd (None removes one); order kept, ElementDataFile last."""
    def mutate(folder: Path) -> Path:
        p = folder / "scan.mhd"
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
        out, seen = [], set()
        for ln in lines:
            key = ln.split("=")[0].strip()
            if key in fields:
                seen.add(key)
                if fields[key] is not None:
                    out.append(f"{key} = {fields[key]}")
            else:
                out.append(ln)
        extra = [f"{k} = {v}" for k, v in fields.items() if k not in seen and v is not None]
        p.write_text("\n".join(out[:-1] + extra + out[-1:]) + "\n")
        return p
    return mutate


def _then(*steps):
    def mutate(folder: Path) -> Path:
        target = None
        for step in steps:
            target = step(folder) or target
        return target
    return mutate


def _truncate(name: str, frac: float):
    def mutate(folder: Path) -> Path:
        p = folder / name
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * frac)])
        return folder / ("scan.mhd" if name == "scan.raw" else name)
    return mutate


def _nifti(name: str, **fields):
    """Patch NIfTI-1 header fields (offsets from nifti1.h) in scan.nii or scan.nii.gz."""
    layout = {"sizeof_hdr": (0, "i"), "dim": (40, "8h"), "datatype": (70, "h"), "bitpix": (72, "h"),
              "pixdim": (76, "8f"), "vox_offset": (108, "f"), "qform_code": (252, "h"), "sform_code": (254, "h"),
              "quatern": (256, "3f"), "srow": (280, "12f")}

    def mutate(folder: Path) -> Path:
        p = folder / name
        gz = name.endswith(".gz")
        data = bytearray(gzip.decompress(p.read_bytes()) if gz else p.read_bytes())
        for key, value in fields.items():
            off, fmt = layout[key]
            old = list(struct.unpack_from("<" + fmt, data, off))
            if isinstance(value, dict):  # {index: value}: patch single entries of an array field
                for i, v in value.items():
                    old[i] = v
                value = old
            struct.pack_into("<" + fmt, data, off, *(value if isinstance(value, (list, tuple)) else [value]))
        p.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
        return p
    return mutate


def _write(name: str, content: bytes):
    def mutate(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name
    return mutate


def _fifo(name: str):
    def mutate(folder: Path) -> Path:
        os.mkfifo(folder / name)
        return folder / name
    return mutate


def _link(name: str, target):
    def mutate(folder: Path):
        (folder / name).symlink_to(target)
    return mutate


def _unlink(name: str):
    def mutate(folder: Path):
        (folder / name).unlink()
    return mutate


def _mkdir(name: str):
    def mutate(folder: Path):
        (folder / name).mkdir()
    return mutate


MHD = "scan.mhd"
CASES = [
    # -- MetaImage: the data file --
    ("mhd-control", lambda f: f / MHD, "volume", None),
    ("mha-control", lambda f: f / "scan.mha", "volume", None),
    ("mhd-data-dotdot", _then(_write("../x", b"\0" * 300000), _mhd_set(ElementDataFile="../x")), "error",
     "points outside"),
    ("mhd-data-dotdot2", _mhd_set(ElementDataFile="../../x"), "error", "points outside"),
    ("mhd-data-etc-passwd", _mhd_set(ElementDataFile="/etc/passwd"), "error", "absolute path"),
    ("mhd-data-dev-zero", _mhd_set(ElementDataFile="/dev/zero"), "error", "absolute path"),
    ("mhd-data-abs-inside", lambda f: _mhd_set(ElementDataFile=str(f / "scan.raw"))(f), "error", "absolute path"),
    ("mhd-data-fifo", _then(_fifo("pipe.raw"), _mhd_set(ElementDataFile="pipe.raw")), "error",
     "pipe.raw.*not a regular file"),
    ("mhd-data-link-devzero", _then(_link("zero.raw", "/dev/zero"), _mhd_set(ElementDataFile="zero.raw")), "error",
     "outside"),
    ("mhd-data-link-outside", _then(_link("p.raw", "/etc/passwd"), _mhd_set(ElementDataFile="p.raw")), "error",
     "outside"),
    ("mhd-data-link-inside", _then(_link("other.raw", "scan.raw"), _mhd_set(ElementDataFile="other.raw")),
     "volume", None),
    ("mhd-data-folder", _then(_mkdir("sub"), _mhd_set(ElementDataFile="sub")), "error", "not a regular file"),
    ("mhd-data-missing", _then(_unlink("scan.raw"), lambda f: f / MHD), "error", "scan.raw.*does not exist"),
    ("mhd-data-other-missing", _mhd_set(ElementDataFile="nope.raw"), "error", "nope.raw.*does not exist"),
    ("mhd-data-empty", _then(_write("scan.raw", b""), lambda f: f / MHD), "error", "truncated"),
    ("mhd-data-trunc50", _truncate("scan.raw", 0.5), "error", "scan.raw: voxel data truncated"),
    ("mhd-data-trunc99", _truncate("scan.raw", 0.99), "error", "truncated"),
    ("mhd-data-list", _mhd_set(ElementDataFile="LIST"), "error", "LIST.*not supported"),
    ("mhd-data-pattern", _mhd_set(ElementDataFile="s%03d.raw 1 20 1"), "error", "not supported"),
    ("mhd-headersize-huge", _mhd_set(HeaderSize="999999"), "error", "truncated"),
    ("mhd-compressed-garbage", _mhd_set(CompressedData="True"), "error", None),
    # -- MetaImage: header values --
    ("mhd-dimsize-zero", _mhd_set(DimSize="64 64 0"), "error", "0 slice"),
    ("mhd-dimsize-zero-x", _mhd_set(DimSize="0 64 20"), "error", "image size"),
    ("mhd-dimsize-negative", _mhd_set(DimSize="64 -64 20"), "error", "image size"),
    ("mhd-dimsize-two", _mhd_set(DimSize="64 64"), "error", "DimSize must have 3 values"),
    ("mhd-dimsize-text", _mhd_set(DimSize="a b c"), "error", "DimSize is not numeric"),
    ("mhd-dimsize-huge", _mhd_set(DimSize="65535 65535 40"), "error", "voxels exceeds the limit"),
    ("mhd-dimsize-9-slices", _mhd_set(DimSize="64 64 9"), "error", "9 slice"),
    ("mhd-dimsize-missing", _mhd_set(DimSize=None), "error", "no DimSize"),
    ("mhd-ndims-2", _mhd_set(NDims="2"), "error", "NDims = 2"),
    ("mhd-ndims-4", _mhd_set(NDims="4"), "error", "NDims = 4"),
    ("mhd-spacing-zero", _mhd_set(ElementSpacing="0 0 0"), "error", "ElementSpacing.*range"),
    ("mhd-spacing-nan", _mhd_set(ElementSpacing="2 2 nan"), "error", "ElementSpacing.*nan"),
    ("mhd-spacing-negative", _mhd_set(ElementSpacing="-2 2 2.5"), "error", "range"),
    ("mhd-spacing-1e30", _mhd_set(ElementSpacing="1e30 2 2.5"), "error", "range"),
    ("mhd-spacing-text", _mhd_set(ElementSpacing="x y z"), "error", "not numeric"),
    ("mhd-spacing-two", _mhd_set(ElementSpacing="2 2"), "error", "3 values"),
    ("mhd-spacing-missing", _mhd_set(ElementSpacing=None), "error", "no ElementSize"),
    ("mhd-elementtype-unknown", _mhd_set(ElementType="MET_FOO"), "error", "ElementType"),
    ("mhd-elementtype-float", _mhd_set(ElementType="MET_FLOAT"), "error", "truncated"),
    ("mhd-elementtype-uchar", _mhd_set(ElementType="MET_UCHAR"), "error", "do not match"),
    ("mhd-data-longer", lambda f: ((f / "scan.raw").write_bytes((f / "scan.raw").read_bytes() + b"\0" * 64),
                                   f / MHD)[1], "error", "do not match"),
    ("mhd-headersize-minus1", _then(lambda f: (f / "scan.raw").write_bytes(b"\0" * 64 + (f / "scan.raw").read_bytes()),
                                    _mhd_set(HeaderSize="-1")), "volume", None),
    ("mhd-headersize-text", _mhd_set(HeaderSize="x"), "error", "HeaderSize is not numeric"),
    ("mhd-channels-text", _mhd_set(ElementNumberOfChannels="many"), "error", "not numeric"),
    ("mhd-channels-zero", _mhd_set(ElementNumberOfChannels="0"), "error", "ElementNumberOfChannels 0"),
    ("mhd-channels-3", _mhd_set(ElementNumberOfChannels="3"), "error", "truncated"),
    ("mhd-transform-skewed", _mhd_set(TransformMatrix="1 0 0 0.5 1 0 0 0 1"), "error", "not orthonormal"),
    ("mhd-transform-nan", _mhd_set(TransformMatrix="1 0 0 0 nan 0 0 0 1"), "error", "NaN|not orthonormal"),
    ("mhd-transform-zero", _mhd_set(TransformMatrix="0 0 0 0 0 0 0 0 0"), "error", None),
    ("mhd-offset-nan", _mhd_set(Offset="0 nan 0"), "error", "Offset.*NaN"),
    ("mhd-garbage", _write(MHD, os.urandom(2000)), "error", "scan.mhd"),
    ("mhd-empty", _write(MHD, b""), "error", "scan.mhd"),
    ("mhd-fifo-itself", lambda f: (os.unlink(f / MHD), _fifo(MHD)(f))[1], "error", "not a regular file"),
    ("mhd-is-a-folder", lambda f: (os.unlink(f / MHD), _mkdir(MHD)(f), f / MHD)[2], "error", "no files"),
    ("mha-trunc50", _truncate("scan.mha", 0.5), "error", "truncated"),
    ("mha-trunc99", _truncate("scan.mha", 0.99), "error", "truncated"),
    ("mha-header-only", lambda f: _write("scan.mha", (f / "scan.mha").read_bytes().split(b"LOCAL\n")[0]
                                         + b"LOCAL\n")(f), "error", "truncated"),
    # -- NIfTI --
    ("nii-control", lambda f: f / "scan.nii", "volume", None),
    ("niigz-control", lambda f: f / "scan.nii.gz", "volume", None),
    *[(f"nii-trunc{int(x * 100)}", _truncate("scan.nii", x), "error", "truncated") for x in (0.5, 0.75, 0.9, 0.99)],
    ("nii-header-only", _truncate("scan.nii", 0.001), "error", "truncated|not a NIfTI"),
    *[(f"niigz-trunc{int(x * 100)}", _truncate("scan.nii.gz", x), "error", "truncated|corrupt")
      for x in (0.1, 0.5, 0.75, 0.9, 0.99)],
    ("niigz-not-gzip", lambda f: _write("scan.nii.gz", (f / "scan.nii").read_bytes())(f), "error", "gzip"),
    ("niigz-garbage", _write("scan.nii.gz", os.urandom(5000)), "error", "scan.nii.gz"),
    ("niigz-gzip-of-garbage", _write("scan.nii.gz", gzip.compress(os.urandom(5000))), "error", "not a NIfTI"),
    ("nii-empty", _write("scan.nii", b""), "error", "not a NIfTI"),
    ("nii-fifo", lambda f: (os.unlink(f / "scan.nii"), _fifo("scan.nii")(f))[1], "error", "not a regular file"),
    *[(f"{n}-pixdim-{label}", _nifti(n, pixdim={1: v}), "error", "pixdim.*range")
      for n in ("scan.nii", "scan.nii.gz")
      for label, v in (("zero", 0.0), ("nan", float("nan")), ("negative", -2.0), ("huge", 1e30),
                       ("inf", float("inf")))],
    ("nii-pixdim-z-zero", _nifti("scan.nii", pixdim={3: 0.0}), "error", "pixdim"),
    ("nii-dim0-2", _nifti("scan.nii", dim={0: 2}), "error", "3-D"),
    ("nii-dim0-9", _nifti("scan.nii", dim={0: 9}), "error", "3-D"),
    ("nii-4d-2-volumes", _nifti("scan.nii", dim={0: 4, 4: 2}), "error", "3-D"),
    ("nii-dim-z-zero", _nifti("scan.nii", dim={3: 0}), "error", "0 slice"),
    ("nii-dim-z-5", _nifti("scan.nii", dim={3: 5}), "error", "5 slice"),
    ("nii-dim-huge", _nifti("scan.nii", dim={1: 32767, 2: 32767, 3: 40}), "error", "voxels exceeds"),
    ("nii-dim-negative", _nifti("scan.nii", dim={2: -64}), "error", "image size"),
    ("nii-sizeof-hdr", _nifti("scan.nii", sizeof_hdr=12345), "error", "not a NIfTI"),
    ("nii-vox-offset-huge", _nifti("scan.nii", vox_offset=1e9), "error", "truncated"),
    ("nii-vox-offset-nan", _nifti("scan.nii", vox_offset=float("nan")), "error", "vox_offset"),
    ("nii-bitpix-0", _nifti("scan.nii", bitpix=0), "error", "bitpix"),
    ("nii-datatype-uint8", _nifti("scan.nii", datatype=2), "error", "bitpix 16 .*datatype 2"),
    ("nii-trailing-bytes", lambda f: ((f / "scan.nii").write_bytes((f / "scan.nii").read_bytes() + b"\0" * 10),
                                      f / "scan.nii")[1], "warn", None),
    ("nii-datatype-unknown", _nifti("scan.nii", datatype=9999), "error", "datatype 9999"),
    ("nii-datatype-rgb", _nifti("scan.nii", datatype=128, bitpix=24), "error", "datatype 128"),
    ("nii-qform-nan", _nifti("scan.nii", qform_code=1, sform_code=0, quatern=[float("nan"), 0.0, 0.0]),
     "error", "qform.*NaN"),
    ("nii-no-qform-no-sform", _nifti("scan.nii", qform_code=0, sform_code=0), "warn", None),
    ("nii-sform-skewed", _nifti("scan.nii", qform_code=0, sform_code=1,
                                srow=[2, 1, 0, 0, 0, 2, 0, 0, 0, 0, 2.5, 0]), "error", "orthonormal"),
    ("nii-sform-nan", _nifti("scan.nii", qform_code=0, sform_code=1,
                             srow=[float("nan")] * 12), "error", "sform.*NaN"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The phantom as .mhd/.raw, .mha, .nii and .nii.gz, written once; cases copy the bytes."""
    root = tmp_path_factory.mktemp("images")
    vol = phantom()
    for name in ("scan.mhd", "scan.mha", "scan.nii", "scan.nii.gz"):
        save_volume(vol, root / name)
    return {p.name: p.read_bytes() for p in root.iterdir()}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_image_variant(tmp_path, images, case):
    name, mutate, expect, match = case
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    for fname, data in images.items():
        (folder / fname).write_bytes(data)
    target = mutate(folder)
    result = outcome(target)
    got = ("warn" if result.meta["warnings"] else "volume") if isinstance(result, Volume) else "error"
    shown = result if got == "error" else result.describe()
    assert got in expect.split("|"), f"{name}: expected {expect}, got {got}: {shown}"
    if match and got == "error":
        assert re.search(match, str(result)), f"{name}: {str(result)!r} does not match {match!r}"
    if name.endswith("control"):
        np.testing.assert_array_equal(result.hu, phantom().hu)
        np.testing.assert_allclose(result.spacing_zyx_mm, phantom().spacing_zyx_mm, atol=1e-5)


@pytest.mark.timeout(10)
def test_float_image_with_nan_voxels_is_refused(tmp_path):
    import SimpleITK as sitk

    arr = phantom().hu.astype(np.float32)
    arr[3, 10, 10] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "f.mha"))
    err = outcome(tmp_path / "f.mha")
    assert "f.mha: 1 voxel(s) are NaN" in str(err)
