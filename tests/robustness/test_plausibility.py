"""Plausible values or a clear refusal: HU after rescale, NIfTI scaling / vox_offset /
qform-sform, world coordinates, and damaged DICOM files whatever their names.

Each case ends in a `VolumeError` whose one line carries the bad value, a recorded
warning with the numbers, or the correct volume.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from noduleflow.engine import Volume
from noduleflow.engine.io import save_volume
from noduleflow.engine.io.dicom_write import write_dicom_series

from .corrupt import edit, outcome, phantom, series, setter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

ALL = slice(None)


def _kind(result) -> str:
    return ("warn" if result.meta["warnings"] else "volume") if isinstance(result, Volume) else "error"


def _check(name, result, expect, match):
    got = _kind(result)
    shown = result if got == "error" else result.meta["warnings"]
    assert got == expect, f"{name}: expected {expect}, got {got}: {shown}"
    text = str(result) if got == "error" else " ".join(result.meta["warnings"])
    if match:
        assert re.search(match, text), f"{name}: {text!r} does not match {match!r}"


# -- DICOM: values after rescale ------------------------------------------------------

def _rewrite(hu_fn):
    """Replace the series by one written from ``hu_fn(phantom HU)`` (same geometry)."""
    def mutate(paths, folder):
        for p in paths:
            p.unlink()
        write_dicom_series(phantom().with_array(hu_fn(phantom().hu).astype(np.int16)), folder,
                           shuffle_names=False, seed=5)
        return folder
    return mutate


def _hdr(fn):
    return lambda paths, folder: (edit(paths, fn), folder)[1]


DICOM_CASES = [
    ("intercept-40000", _hdr(setter(RescaleIntercept="40000")), "error",
     r"implausible HU after rescale: 100\.0% of the voxels outside \[-1100, 3100\] HU \(min 32767, max 32767\)"),
    ("intercept-5000", _hdr(setter(RescaleIntercept="5000")), "error", r"100\.0% of the voxels outside.*min 3976"),
    ("intercept-minus-30000", _hdr(setter(RescaleIntercept="-30000")), "error", r"implausible HU.*max -28442"),
    ("slope-20", _hdr(setter(RescaleSlope="20")), "error", r"implausible HU after rescale"),
    ("hu-inverted", _rewrite(lambda hu: -hu.astype(np.int32)), "error",
     r"HU look inverted: 0\.00% of the voxels are air.*at 900\.\.1100 HU"),
    ("hu-all-water", _rewrite(lambda hu: np.zeros_like(hu)), "warn",
     r"no air in the volume: 0\.00% of the voxels within -1100\.\.-900 HU \(min 0, max 0\)"),
    ("hu-shifted-plus-500", _rewrite(lambda hu: np.clip(hu.astype(np.int32) + 500, -2048, 3000)), "warn",
     r"no air in the volume"),
    ("hu-fov-padding-only", _rewrite(lambda hu: np.where(hu < -1500, -3024, hu)), "volume", None),
    ("ipp-beyond-1e5", _hdr(lambda ds: setattr(ds, "ImagePositionPatient",
                                               [2e5, 0, 2.5 * int(ds.InstanceNumber)])), "error",
     r"ImagePositionPatient \[200000\.0, 0\.0, 2\.5\] mm lies beyond \+-100000 mm"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", DICOM_CASES, ids=[c[0] for c in DICOM_CASES])
def test_dicom_values(tmp_path, master_root, case):
    name, mutate, expect, match = case
    result = outcome(mutate(series(tmp_path, master_root), tmp_path / "s"))
    _check(name, result, expect, match)


# -- damaged DICOM files: the same treatment with or without a .dcm suffix -------------

DAMAGE = {
    "trunc-in-preamble": lambda data: data[:100],
    "no-preamble": lambda data: data[132:],
    "no-preamble-keeps-dicm": lambda data: data[128:],
    "trunc-header": lambda data: data[:900],
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("end", ["first", "last", "mid"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_treated_alike_whatever_the_name(tmp_path, master_root, damage, end):
    results = {}
    for suffix in (".dcm", ""):
        paths = series(tmp_path / (suffix or "none"), master_root)
        if not suffix:
            paths = [p.rename(p.with_name(f"IM{p.stem[-4:]}")) for p in paths]
        victim = paths[{"first": 0, "last": -1, "mid": 10}[end]]
        victim.write_bytes(DAMAGE[damage](victim.read_bytes()))
        results[suffix] = (outcome(paths[0].parent), victim.name)
    (dcm, _), (bare, bare_name) = results[".dcm"], results[""]
    assert _kind(dcm) == _kind(bare) != "volume", (dcm, bare)
    if end == "mid":
        assert _kind(bare) == "error" and bare_name in str(bare)
    text = str(bare) if _kind(bare) == "error" else " ".join(bare.meta["warnings"])
    assert bare_name in text, text
    if _kind(bare) == "warn":
        assert bare.shape[0] == dcm.shape[0] == 19


# -- NIfTI and MetaImage ------------------------------------------------------------

NIFTI_FIELDS = {"vox_offset": (108, "f"), "scl_slope": (112, "f"), "scl_inter": (116, "f"),
                "qform_code": (252, "h"), "sform_code": (254, "h"), "srow": (280, "12f")}


def _nifti(**fields):
    def mutate(folder: Path) -> Path:
        p = folder / "scan.nii"
        data = bytearray(p.read_bytes())
        for key, value in fields.items():
            off, fmt = NIFTI_FIELDS[key]
            if callable(value):
                value = value(list(struct.unpack_from("<" + fmt, data, off)))
            struct.pack_into("<" + fmt, data, off, *(value if isinstance(value, list) else [value]))
        p.write_bytes(bytes(data))
        return p
    return mutate


def _rotated_sform(shift_x: float):
    """The sform turned 90 degrees about z and moved ``shift_x`` mm: [R | t] -> [Rz R | t + dx]."""
    def fn(srow):
        m = np.asarray(srow, dtype=np.float64).reshape(3, 4)
        rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        m[:, :3] = rz @ m[:, :3]
        m[0, 3] += shift_x
        return [float(v) for v in m.ravel()]
    return fn


def _shifted_sform(dx: float):
    def fn(srow):
        srow[3] += dx
        return srow
    return fn


def _mhd(**fields):
    def mutate(folder: Path) -> Path:
        p = folder / "scan.mhd"
        lines = p.read_text().splitlines()
        p.write_text("\n".join(f"{ln.split('=')[0].strip()} = {fields[ln.split('=')[0].strip()]}"
                               if ln.split("=")[0].strip() in fields else ln for ln in lines) + "\n")
        return p
    return mutate


def _float_mha(fn):
    def mutate(folder: Path) -> Path:
        img = sitk.GetImageFromArray(fn(phantom().hu.astype(np.float32)))
        img.SetSpacing(phantom().spacing_xyz_mm)
        sitk.WriteImage(img, str(folder / "f.mha"))
        return folder / "f.mha"
    return mutate


IMAGE_CASES = [
    ("nii-control", _nifti(), "volume", None),
    ("nii-scl-slope-minus-1", _nifti(scl_slope=-1.0), "error", r"scl_slope -1\.0 is negative: it would invert"),
    ("nii-scl-slope-1e6", _nifti(scl_slope=1e6), "error", r"scl_slope 1e\+06 / scl_inter 0 outside"),
    ("nii-scl-slope-1e-6", _nifti(scl_slope=1e-6), "error", r"scl_slope 1e-06"),
    ("nii-scl-inter-1e9", _nifti(scl_inter=1e9), "error", r"scl_inter 1e\+09 outside"),
    ("nii-scl-slope-nan", _nifti(scl_slope=float("nan")), "error", r"scl_slope nan / scl_inter 0\.0 is not finite"),
    ("nii-scl-inter-inf", _nifti(scl_inter=float("inf")), "error", r"scl_inter inf is not finite"),
    ("nii-scl-slope-0-means-none", _nifti(scl_slope=0.0, scl_inter=0.0), "volume", None),
    ("nii-scl-slope-0-inter-1e9", _nifti(scl_slope=0.0, scl_inter=1e9), "error", r"scl_slope 0 / scl_inter 1e\+09"),
    ("nii-scl-inter-40000", _nifti(scl_inter=40000.0), "error",
     r"implausible HU after rescale: 100\.0% .*\(min 32767, max 32767\)"),
    ("nii-scl-slope-50", _nifti(scl_slope=50.0), "error", r"implausible HU after rescale"),
    ("nii-vox-offset-0", _nifti(vox_offset=0.0), "error",
     r"vox_offset 0 lies inside the 348-byte header \(a single-file NIfTI needs vox_offset >= 352\)"),
    ("nii-vox-offset-200", _nifti(vox_offset=200.0), "error", r"vox_offset 200 lies inside"),
    ("nii-qsform-agree", _nifti(qform_code=1, sform_code=1), "volume", None),
    ("nii-qsform-0.5mm", _nifti(sform_code=1, srow=_shifted_sform(0.5)), "volume", None),
    ("nii-qsform-2mm", _nifti(sform_code=1, srow=_shifted_sform(2.0)), "warn",
     r"qform \(code 1\) and sform \(code 1\) disagree by 2\.0 mm at the origin and 0\.0 degrees; using the sform"),
    ("nii-qsform-90deg-100mm-sform1", _nifti(sform_code=1, srow=_rotated_sform(100.0)), "warn",
     r"disagree by 100\.0 mm at the origin and 90\.0 degrees; using the sform"),
    ("nii-qsform-90deg-100mm-sform2", _nifti(sform_code=2, srow=_rotated_sform(100.0)), "warn",
     r"sform \(code 2\) disagree by 100\.0 mm .* using the qform"),
    ("nii-qsform-qform0", _nifti(qform_code=0, sform_code=1, srow=_rotated_sform(100.0)), "volume", None),
    ("nii-sform-offset-1e30", _nifti(sform_code=1, qform_code=0, srow=lambda m: m[:3] + [1e30] + m[4:]), "error",
     r"sform offset \[1\.0\d*e\+30, .* beyond \+-100000 mm"),
    ("mhd-control", lambda f: f / "scan.mhd", "volume", None),
    ("mhd-offset-1e300", _mhd(Offset="1e300 0 0"), "error", r"Offset \[1e\+300, 0\.0, 0\.0\] mm lies beyond"),
    ("mhd-offset-2e5", _mhd(Offset="0 -200000 0"), "error", r"Offset \[0\.0, -200000\.0, 0\.0\] mm lies beyond"),
    ("mhd-offset-99999", _mhd(Offset="0 0 -99999"), "volume", None),
    ("mha-float-times-1e6", _float_mha(lambda a: a * 1e6), "error", r"f\.mha: implausible HU.*min -32768"),
    ("mha-float-inverted", _float_mha(lambda a: -a), "error", r"f\.mha: HU look inverted"),
    ("mha-float-water", _float_mha(lambda a: np.zeros_like(a)), "warn", r"f\.mha: no air in the volume"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("plausible")
    for name in ("scan.mhd", "scan.nii"):
        save_volume(phantom(), root / name)
    return {p.name: p.read_bytes() for p in root.iterdir()}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_values(tmp_path, images, case):
    name, mutate, expect, match = case
    for fname, data in images.items():
        (tmp_path / fname).write_bytes(data)
    target = mutate(tmp_path)
    result = outcome(target)
    _check(name, result, expect, match)
    if name.startswith("nii-qsform") and isinstance(result, Volume):
        # the loader follows SimpleITK's choice between qform and sform
        ref = sitk.ReadImage(str(target))
        np.testing.assert_allclose(result.origin_xyz_mm, ref.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(result.direction, ref.GetDirection(), atol=1e-6)
        moved = abs(result.origin_xyz_mm[0] - phantom().origin_xyz_mm[0])
        assert moved == pytest.approx(100.0 if "sform1" in name or "qform0" in name else 2.0 if "2mm" in name else
                                      0.5 if "0.5mm" in name else 0.0, abs=1e-3)
    if name.endswith("control") or name == "nii-scl-slope-0-means-none":
        np.testing.assert_array_equal(result.hu, phantom().hu)

