"""Corrupted DICOM series: each variant loads (maybe with a recorded warning) or is one
`VolumeError` naming what is wrong; never another exception, never a silently wrong volume.

Base: the phantom's 20-slice series (64 x 64, 2.5 mm slices); FIRST, MID and LAST are
slice indices. Each case mutates a copy and states the outcome it must have.
"""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from noduleflow.engine import Volume, VolumeError

from .corrupt import edit, outcome, phantom, raw, series, setter

# pydicom warns (UserWarning) about every invalid value it reads; here they are the point
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

FIRST, MID, LAST = 0, 10, 19
ALL = slice(None)


def _truncate(n_or_frac):
    def fn(p):
        data = p.read_bytes()
        n = int(len(data) * n_or_frac) if isinstance(n_or_frac, float) else n_or_frac
        p.write_bytes(data[:n])
    return fn


def _on(which, fn):
    """Apply a per-file mutation to the slices ``which`` (an index or a slice)."""
    def mutate(paths, folder):
        for p in (paths[which] if isinstance(which, slice) else [paths[which]]):
            fn(p)
        return folder
    return mutate


def _hdr(which, fn):
    return lambda paths, folder: (edit(paths[which] if isinstance(which, slice) else [paths[which]], fn), folder)[1]


def _patch_bytes(keyword_tag: bytes, new_vr: bytes):
    """Overwrite the explicit VR of one element in the raw file (unknown VR, wrong VR)."""
    def fn(p):
        data = bytearray(p.read_bytes())
        i = data.index(keyword_tag, 132)
        data[i + 4:i + 6] = new_vr
        p.write_bytes(bytes(data))
    return fn


def _keep(n):
    def mutate(paths, folder):
        for p in paths[n:]:
            p.unlink()
        return paths[0] if n == 1 else folder
    return mutate


def _delete(i):
    return lambda paths, folder: (paths[i].unlink(), folder)[1]


def _extra(name, content):
    return lambda paths, folder: ((folder / name).write_bytes(content), folder)[1]


def _fifo(name):
    return lambda paths, folder: (os.mkfifo(folder / name), folder)[1]


def _symlink(name, target):
    return lambda paths, folder: ((folder / name).symlink_to(target), folder)[1]


def _multiframe(ds):
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2


def _compress(ts):
    from pydicom.encaps import encapsulate

    def fn(ds):
        ds.file_meta.TransferSyntaxUID = ts
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + b"\x13" * 200])  # not a real codestream
        ds["PixelData"].VR = "OB"
    return fn


def _shift(dz):
    def fn(ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + dz]
    return fn


ROWS_TAG, PS_TAG, IOP_TAG = b"\x28\x00\x10\x00", b"\x28\x00\x30\x00", b"\x20\x00\x37\x00"

# (id, mutation, expected outcome: "error" | "warn" | "volume", regex the error/warning must match)
CASES = [
    # -- files missing, empty or truncated (never silently dropped) --
    *[(f"empty-{w}", _on(i, _truncate(0)), "warn" if w != "mid" else "error",
       f"slice_00{i:02d}.dcm.*empty file") for w, i in (("first", FIRST), ("mid", MID), ("last", LAST))],
    # a cut-off first/last slice whose header still names the series is an error, else a warning
    *[(f"trunc{n}-{w}", _on(i, _truncate(n)), "warn|error" if w != "mid" else "error", f"slice_00{i:02d}.dcm")
      for n in (100, 300, 900, 1300) for w, i in (("first", FIRST), ("mid", MID), ("last", LAST))],
    *[(f"trunc{int(f * 100)}pct-{w}", _on(i, _truncate(f)), "error", f"slice_00{i:02d}.dcm.*truncated")
      for f in (0.5, 0.9, 0.999) for w, i in (("first", FIRST), ("mid", MID), ("last", LAST))],
    ("pixeldata-short-mid", _hdr(MID, lambda ds: setattr(ds, "PixelData", ds.PixelData[:100])), "error", "truncated"),
    ("deleted-mid", _delete(MID), "error", "missing slice"),
    ("deleted-first", _delete(FIRST), "volume", None),  # a shorter, regular series: nothing to detect
    ("garbage-dcm-extra", _extra("zz.dcm", os.urandom(3000)), "warn", "zz.dcm"),
    ("readme-extra", _extra("README.txt", b"not dicom"), "volume", None),
    ("fifo-in-folder", _fifo("pipe.dcm"), "volume", None),
    ("devzero-link-in-folder", _symlink("zero.dcm", "/dev/zero"), "volume", None),
    ("dangling-link-in-folder", _symlink("gone.dcm", "/nonexistent/x.dcm"), "volume", None),
    # -- too few slices --
    ("single-file", _keep(1), "error", "1 slice.*fewer than the 10"),
    ("two-slices", _keep(2), "error", "2 slice.*fewer than the 10"),
    ("nine-slices", _keep(9), "error", "9 slice"),
    ("ten-slices", _keep(10), "volume", None),
    # -- geometry --
    ("iop-skewed", _hdr(ALL, setter(ImageOrientationPatient=[1, 0, 0, 0.5, 1, 0])), "error", "not orthonormal"),
    ("iop-scaled", _hdr(ALL, setter(ImageOrientationPatient=[2, 0, 0, 0, 2, 0])), "error", "not orthonormal"),
    ("iop-zero", _hdr(ALL, setter(ImageOrientationPatient=[0, 0, 0, 0, 0, 0])), "error", "not orthonormal"),
    ("iop-parallel", _hdr(ALL, setter(ImageOrientationPatient=[1, 0, 0, 1, 0, 0])), "error", "not orthonormal"),
    ("iop-nan", _hdr(ALL, setter(ImageOrientationPatient=["nan", 0, 0, 0, 1, 0])), "error", "NaN"),
    ("iop-nan-one", _hdr(MID, setter(ImageOrientationPatient=[1, 0, 0, 0, "nan", 0])), "error", "NaN"),
    ("iop-5-values", _hdr(ALL, setter(ImageOrientationPatient=[1, 0, 0, 0, 1])), "error", "6 values"),
    ("iop-text", _hdr(ALL, lambda ds: raw(ds, "ImageOrientationPatient", b"left\\up ")), "error", "not numeric"),
    ("iop-missing", _hdr(MID, lambda ds: delattr(ds, "ImageOrientationPatient")), "error", "no ImagePosition"),
    ("ipp-nan-mid", _hdr(MID, setter(ImagePositionPatient=[0, "nan", 0])), "error", "slice_0010.*NaN"),
    ("ipp-inf-first", _hdr(FIRST, setter(ImagePositionPatient=[0, 0, "inf"])), "error", "infinite"),
    ("ipp-2-values", _hdr(MID, setter(ImagePositionPatient=[0, 0])), "error", "3 values"),
    ("ipp-missing", _hdr(LAST, lambda ds: delattr(ds, "ImagePositionPatient")), "error", "no ImagePosition"),
    ("ipp-1e30-last", _hdr(LAST, _shift(1e30)), "error", None),
    ("ipp-duplicate", _hdr(MID, _shift(-2.5)), "error", "duplicate slice position"),
    ("ipp-uneven", _hdr(MID, _shift(0.7)), "error", "uneven spacing|missing slice"),
    ("ipp-tilt", _hdr(ALL, lambda ds: setattr(ds, "ImagePositionPatient",
                                              [0, 0.3 * int(ds.InstanceNumber), 2.5 * int(ds.InstanceNumber)])),
     "error", "gantry tilt"),
    ("ipp-all-equal", _hdr(ALL, setter(ImagePositionPatient=[0, 0, 0])), "error", "duplicate"),
    ("slices-100mm-apart", _hdr(ALL, lambda ds: setattr(ds, "ImagePositionPatient",
                                                        [0, 0, 100.0 * int(ds.InstanceNumber)])),
     "error", "slice spacing"),
    ("slices-0.01mm-apart", _hdr(ALL, lambda ds: setattr(ds, "ImagePositionPatient",
                                                         [0, 0, 0.01 * int(ds.InstanceNumber)])),
     "error", "slice spacing"),
    ("ps-one-value", _hdr(ALL, setter(PixelSpacing=["0.7"])), "error", "PixelSpacing must have 2 values"),
    ("ps-three-values", _hdr(ALL, setter(PixelSpacing=[0.7, 0.7, 0.7])), "error", "PixelSpacing must have 2 values"),
    ("ps-text", _hdr(ALL, lambda ds: raw(ds, "PixelSpacing", b"abc ")), "error", "PixelSpacing is not numeric"),
    ("ps-zero", _hdr(ALL, setter(PixelSpacing=[0, 0])), "error", "PixelSpacing.*range"),
    ("ps-negative", _hdr(ALL, setter(PixelSpacing=[-0.7, 0.7])), "error", "PixelSpacing.*range"),
    ("ps-nan", _hdr(ALL, setter(PixelSpacing=["nan", 0.7])), "error", "PixelSpacing.*NaN"),
    ("ps-1e30", _hdr(ALL, setter(PixelSpacing=[1e30, 1e30])), "error", "PixelSpacing.*range"),
    ("ps-missing", _hdr(ALL, lambda ds: delattr(ds, "PixelSpacing")), "error", "no PixelSpacing"),
    ("ps-mixed", _hdr(MID, setter(PixelSpacing=[0.9, 0.9])), "error", "mixes pixel spacings"),
    ("ps-unknown-vr", _on(MID, _patch_bytes(PS_TAG, b"QQ")), "error", "slice_0010"),
    ("iop-unknown-vr-first", _on(FIRST, _patch_bytes(IOP_TAG, b"QQ")), "error|warn", "slice_0000"),
    # -- rescale --
    ("slope-zero", _hdr(ALL, setter(RescaleSlope="0")), "error", "RescaleSlope must be > 0, got 0"),
    ("slope-negative", _hdr(ALL, setter(RescaleSlope="-1")), "error", "RescaleSlope must be > 0, got -1"),
    ("slope-nan", _hdr(ALL, setter(RescaleSlope="nan")), "error", "RescaleSlope.*NaN"),
    ("slope-nan-one", _hdr(MID, setter(RescaleSlope="nan")), "error", "slice_0010.*RescaleSlope.*NaN"),
    ("slope-inf", _hdr(ALL, setter(RescaleSlope="inf")), "error", "RescaleSlope.*infinite"),
    ("slope-text", _hdr(ALL, lambda ds: raw(ds, "RescaleSlope", b"one ")), "error", "RescaleSlope is not numeric"),
    ("intercept-1e30", _hdr(ALL, setter(RescaleIntercept="1e30")), "error", "RescaleIntercept 1e\\+30"),
    ("intercept-nan", _hdr(ALL, setter(RescaleIntercept="nan")), "error", "RescaleIntercept.*NaN"),
    ("slope-missing", _hdr(ALL, lambda ds: delattr(ds, "RescaleSlope")), "volume", None),
    # -- image size and pixel format --
    ("rows-zero", _hdr(ALL, setter(Rows=0)), "error", "Rows 0"),
    ("cols-zero-mid", _hdr(MID, setter(Columns=0)), "error", "slice_0010.*Columns 0"),
    ("rows-65535", _hdr(ALL, setter(Rows=65535, Columns=65535)), "error", "truncated|voxels"),
    ("rows-wrong-length", _hdr(MID, lambda ds: raw(ds, "Rows", b"\x10\x00\x00", "US")), "error", "slice_0010"),
    ("rows-as-ul", _on(MID, _patch_bytes(ROWS_TAG, b"UL")), "error", "slice_0010"),
    ("rows-8-all", _hdr(ALL, lambda ds: (setattr(ds, "Rows", 8), setattr(ds, "PixelData", ds.PixelData[:8 * 64 * 2]))),
     "error", "below the minimum"),
    ("multiframe-all", _hdr(ALL, _multiframe), "error", "multi-frame"),
    ("multiframe-one", _hdr(MID, _multiframe), "error", "slice_0010.*multi-frame"),
    ("frames-zero", _hdr(ALL, setter(NumberOfFrames=0)), "error", "NumberOfFrames 0"),
    ("bits-allocated-12", _hdr(ALL, setter(BitsAllocated=12)), "error", "BitsAllocated|BitsStored"),
    ("bits-stored-0", _hdr(ALL, setter(BitsStored=0, PixelRepresentation=0)), "error", "BitsStored 0"),
    ("bits-stored-1", _hdr(ALL, setter(BitsStored=1, HighBit=0)), "error", "BitsStored 1 is not within 12-16"),
    ("bits-stored-12-unsigned", _hdr(ALL, setter(BitsStored=12, HighBit=11, PixelRepresentation=0)), "volume", None),
    ("bits-allocated-8", _hdr(ALL, setter(BitsAllocated=8, BitsStored=8, HighBit=7)), "error", "BitsAllocated 8"),
    ("bits-stored-20", _hdr(ALL, setter(BitsStored=20)), "error", "BitsStored 20"),
    ("pixrep-2", _hdr(ALL, setter(PixelRepresentation=2)), "error", "PixelRepresentation 2"),
    ("samples-3", _hdr(ALL, setter(SamplesPerPixel=3)), "error", "SamplesPerPixel 3"),
    ("no-pixeldata-mid", _hdr(MID, lambda ds: delattr(ds, "PixelData")), "error", "slice_0010.*no pixel data"),
    # -- compression --
    ("jpeg-baseline-corrupt", _hdr(ALL, _compress("1.2.840.10008.1.2.4.50")), "error", "corrupt"),
    ("jpeg2000-corrupt", _hdr(ALL, _compress("1.2.840.10008.1.2.4.90")), "error", "corrupt"),
    ("rle-corrupt", _hdr(ALL, _compress("1.2.840.10008.1.2.5")), "error", "corrupt"),
    ("mpeg2-no-decoder", _hdr(ALL, _compress("1.2.840.10008.1.2.4.100")), "error", "not supported by any"),
    ("ts-unknown", _hdr(ALL, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.3.4.5")), "error",
     "1.2.3.4.5.*not supported"),
    ("rows-65535-jpeg", _hdr(ALL, lambda ds: (_compress("1.2.840.10008.1.2.4.50")(ds),
                                              setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535))),
     "error", "voxels exceeds the limit"),
    # -- series identity --
    ("modality-mr", _hdr(ALL, setter(Modality="MR")), "error", "not CT"),
    ("modality-mixed", _hdr(MID, setter(Modality="PT")), "error", "not CT"),
    ("all-localizers", _hdr(ALL, setter(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])), "error", "only localizer"),
    ("two-series-split", _hdr(slice(0, 8), setter(SeriesInstanceUID="1.2.3.4")), "warn", "not 1.2.3.4"),
    ("sop-class-mr", _hdr(ALL, setter(SOPClassUID="1.2.840.10008.5.1.4.1.1.4")), "warn", "SOP class"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dicom_variant(tmp_path, master_root, case, caplog):
    name, mutate, expect, match = case
    paths = series(tmp_path, master_root)
    target = mutate(paths, tmp_path / "s")
    with caplog.at_level(logging.DEBUG):
        result = outcome(target)
    # pydicom's own logged decoder tracebacks never reach the user
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING], name
    got = ("warn" if result.meta["warnings"] else "volume") if isinstance(result, Volume) else "error"
    shown = result if got == "error" else result.meta
    assert got in expect.split("|"), f"{name}: expected {expect}, got {got}: {shown}"
    text = str(result) if got == "error" else " ".join(result.meta["warnings"])
    if match and got != "volume":
        assert __import__("re").search(match, text), f"{name}: {text!r} does not match {match!r}"
    if got == "error":
        assert "Traceback" not in text
    if got == "warn":  # a recorded warning is also logged (the CLI shows it on stderr)
        assert any(r.levelno == logging.WARNING and r.name.startswith("noduleflow") for r in caplog.records)


def test_misleading_messages_fixed(tmp_path, master_root):
    """The four messages the probe found misleading now say what is wrong."""
    paths = series(tmp_path, master_root)
    paths[MID].write_bytes(paths[MID].read_bytes()[:300])  # corrupt middle slice
    err = outcome(tmp_path / "s")
    assert isinstance(err, VolumeError) and "slice_0010.dcm" in str(err)
    shutil.rmtree(tmp_path / "s")
    paths = series(tmp_path, master_root)
    edit(paths, _compress("1.2.840.10008.1.2.4.50"))
    err = outcome(tmp_path / "s")
    assert "corrupt" in str(err) and "plugin that is not installed" not in str(err)
    shutil.rmtree(tmp_path / "s")
    paths = series(tmp_path, master_root)
    edit(paths, setter(ImageOrientationPatient=["nan", 0, 0, 0, 1, 0]))
    err = outcome(tmp_path / "s")
    assert "NaN" in str(err) and "mixes" not in str(err)


def test_pristine_series_is_exact(tmp_path, master_root):
    """The control: the unmodified series gives back the phantom's voxels and geometry."""
    series(tmp_path, master_root)
    vol = outcome(tmp_path / "s")
    ref = phantom()
    assert isinstance(vol, Volume) and vol.meta["warnings"] == []
    np.testing.assert_array_equal(vol.hu, ref.hu)
    np.testing.assert_allclose(vol.spacing_zyx_mm, ref.spacing_zyx_mm, atol=1e-5)
    np.testing.assert_allclose(vol.origin_xyz_mm, ref.origin_xyz_mm, atol=1e-4)


def test_first_slice_warning_names_the_file_and_keeps_the_rest(tmp_path, master_root):
    paths = series(tmp_path, master_root)
    paths[FIRST].write_bytes(b"")
    vol = outcome(tmp_path / "s")
    assert isinstance(vol, Volume) and vol.shape[0] == 19
    assert "slice_0000.dcm" in vol.meta["warnings"][0]
    np.testing.assert_array_equal(vol.hu, phantom().hu[1:])
