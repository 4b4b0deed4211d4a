"""DICOM ingestion: parity with SimpleITK's series reader, and every refusal."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from noduleflow.cli import main as cli
from noduleflow.engine import Volume, VolumeError
from noduleflow.engine.io import load_volume
from noduleflow.engine.io.dicom_write import write_dicom_series

IDENT = (1, 0, 0, 0, 1, 0, 0, 0, 1)
FEET_FIRST = (-1, 0, 0, 0, 1, 0, 0, 0, -1)  # right-handed, slices run towards the feet


def _volume(shape=(12, 40, 36), spacing=(2.5, 0.7, 0.8), origin=(-20.0, -30.5, -310.0), direction=IDENT, seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, shape).astype(np.int16)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    fov = (yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 > (0.45 * shape[1]) ** 2
    hu[:, fov] = -2048  # circular field-of-view padding
    return Volume(hu, spacing, origin, direction, series_uid=pydicom.uid.generate_uid(entropy_srcs=[str(seed)]))


def _sitk_read(folder: Path):
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return r.Execute()


@pytest.mark.parametrize("pixel_representation,intercept,slope,direction,reverse", [
    (1, -1024.0, 1.0, IDENT, False),
    (0, -2048.0, 1.0, IDENT, True),
    (1, -1024.0, 0.5, FEET_FIRST, True),
    (0, -3000.0, 2.0, FEET_FIRST, False),
])
def test_convert_equals_simpleitk(tmp_path, pixel_representation, intercept, slope, direction, reverse):
    vol = _volume(direction=direction)
    if slope != 1.0:  # keep values representable exactly at this slope
        vol = vol.with_array((np.round(vol.hu / slope) * slope).astype(np.int16))
    series = tmp_path / "series"
    write_dicom_series(vol, series, pixel_representation=pixel_representation, rescale_intercept=intercept,
                       rescale_slope=slope, reverse_instance_numbers=reverse, shuffle_names=True, seed=3)
    out = tmp_path / "out.mhd"
    assert cli(["convert", str(series), str(out)]) == 0
    ours, ref = sitk.ReadImage(str(out)), _sitk_read(series)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(ours.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.GetDirection(), ref.GetDirection(), atol=1e-6)
    # and the HU are the ones written, FOV padding included
    loaded = load_volume(series)
    np.testing.assert_array_equal(loaded.hu, vol.hu)
    assert loaded.hu.min() == -2048


def test_world_geometry_roundtrip(tmp_path):
    vol = _volume(direction=FEET_FIRST)
    write_dicom_series(vol, tmp_path)
    loaded = load_volume(tmp_path)
    idx = np.array([[3, 10, 7], [11, 39, 0]])
    np.testing.assert_allclose(loaded.voxel_to_world(idx), vol.voxel_to_world(idx), atol=1e-4)
    np.testing.assert_allclose(loaded.world_to_voxel(loaded.voxel_to_world(idx)), idx, atol=1e-6)


def test_several_series_choose_largest_axial_ct_or_by_uid(tmp_path):
    big, small = _volume(shape=(14, 32, 32), seed=1), _volume(shape=(10, 32, 32), seed=2)
    write_dicom_series(big, tmp_path / "a" / "b")
    write_dicom_series(small, tmp_path / "c")
    chosen = load_volume(tmp_path)
    assert chosen.series_uid == big.series_uid
    assert small.series_uid in chosen.meta["warnings"][0]  # the choice is reported, not silent
    assert load_volume(tmp_path, series_uid=small.series_uid).shape == (10, 32, 32)
    with pytest.raises(VolumeError, match="not found"):
        load_volume(tmp_path, series_uid="1.2.3.999")


def test_non_dicom_files_are_ignored(tmp_path):
    write_dicom_series(_volume(shape=(10, 16, 16)), tmp_path)
    (tmp_path / "README.txt").write_text("not dicom")
    vol = load_volume(tmp_path)
    assert vol.shape == (10, 16, 16) and vol.meta["warnings"] == []


def _edit(paths, fn):
    for p in paths:
        ds = pydicom.dcmread(p)
        fn(ds, p)
        ds.save_as(p)


def _write(tmp_path, **kw):
    return write_dicom_series(_volume(shape=(12, 16, 16)), tmp_path, shuffle_names=False, **kw)


def test_refuses_non_ct(tmp_path):
    paths = _write(tmp_path, modality="MR")
    with pytest.raises(VolumeError, match="not CT"):
        load_volume(tmp_path)
    assert len(paths) == 12


def test_drops_localizer_with_warning(tmp_path):
    paths = _write(tmp_path)
    loc = tmp_path / "scout.dcm"
    shutil.copy(paths[0], loc)
    _edit([loc], lambda ds, p: (setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]),
                                setattr(ds, "SOPInstanceUID", "1.2.3.4"),
                                setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1])))
    vol = load_volume(tmp_path)
    assert vol.shape[0] == 12
    assert any("localizer" in w for w in vol.meta["warnings"])


def test_refuses_mixed_orientation(tmp_path):
    paths = _write(tmp_path)
    _edit(paths[2:3], lambda ds, p: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.995, 0.0998]))
    with pytest.raises(VolumeError, match="orientations"):
        load_volume(tmp_path)


def test_refuses_mixed_size(tmp_path):
    paths = _write(tmp_path)

    def shrink(ds, p):
        ds.Rows = 8
        ds.PixelData = ds.PixelData[: 8 * 16 * 2]
    _edit(paths[1:2], shrink)
    with pytest.raises(VolumeError, match="image sizes"):
        load_volume(tmp_path)


def test_refuses_duplicate_positions(tmp_path):
    paths = _write(tmp_path)
    dup = tmp_path / "dup.dcm"
    shutil.copy(paths[3], dup)
    _edit([dup], lambda ds, p: setattr(ds, "SOPInstanceUID", "1.2.3.5"))
    with pytest.raises(VolumeError, match="duplicate slice position"):
        load_volume(tmp_path)


def test_refuses_missing_slice(tmp_path):
    paths = _write(tmp_path)
    paths[3].unlink()
    with pytest.raises(VolumeError, match="missing slice"):
        load_volume(tmp_path)
    # a tolerance wide enough accepts it, with the mean spacing
    assert load_volume(tmp_path, tolerance_mm=5.0).shape[0] == 11


def test_refuses_gantry_tilt(tmp_path):
    paths = _write(tmp_path)

    def tilt(ds, p):
        pos = [float(v) for v in ds.ImagePositionPatient]
        pos[1] += 0.5 * int(ds.InstanceNumber)
        ds.ImagePositionPatient = pos
    _edit(paths, tilt)
    with pytest.raises(VolumeError, match="gantry tilt"):
        load_volume(tmp_path)


def test_refuses_truncated_pixel_data(tmp_path):
    paths = _write(tmp_path)
    _edit(paths[2:3], lambda ds, p: setattr(ds, "PixelData", ds.PixelData[:100]))
    with pytest.raises(VolumeError, match="truncated"):
        load_volume(tmp_path)


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.100"])
def test_refuses_undecodable_compressed_data(tmp_path, ts):
    from pydicom.encaps import encapsulate

    paths = _write(tmp_path)

    def compress(ds, p):
        ds.file_meta.TransferSyntaxUID = ts
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 60])  # not a real codestream
        ds["PixelData"].VR = "OB"
    _edit(paths, compress)
    # JPEG 2000 may have a decoder installed (it then fails on the bogus codestream);
    # MPEG-2 never has one: both must be one clean VolumeError
    with pytest.raises(VolumeError) as info:
        load_volume(tmp_path)
    if ts.endswith(".100"):  # no plugin exists for MPEG-2: installing one cannot help
        assert "not supported by any pixel data decoder" in str(info.value)
        assert "pip install" not in str(info.value)
    else:  # the decoder is there (pillow) and says what it is: corrupt data
        assert "compressed pixel data is corrupt" in str(info.value)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(VolumeError, match="no such file"):
        load_volume(tmp_path / "nope")
    with pytest.raises(VolumeError, match="no files"):
        load_volume(tmp_path)


def test_cli_error_is_one_line(tmp_path, capsys):
    (tmp_path / "junk.txt").write_text("x")
    assert cli(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no DICOM files" in err and "Traceback" not in err


def test_inspect_json(tmp_path, capsys):
    import json

    vol = _volume(shape=(10, 16, 16))
    write_dicom_series(vol, tmp_path)
    assert cli(["inspect", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape_zyx"] == [10, 16, 16] and info["series_uid"] == vol.series_uid
    assert info["hu_min"] == float(vol.hu.min())


REALCT = Path(__file__).resolve().parents[2].parent / "shared" / "realct"


@pytest.mark.skipif(not REALCT.is_dir(), reason="../shared/realct (LIDC-IDRI-0314) is not present")
def test_real_lidc_scan_loads_without_warnings():
    """The real scanner's series passes every header check the loader now applies."""
    vol = load_volume(REALCT)
    assert vol.shape == (275, 512, 512) and vol.meta["warnings"] == []
    np.testing.assert_allclose(vol.spacing_zyx_mm, (1.0, 0.78125, 0.78125), atol=1e-4)
    assert -1100 <= vol.hu.min() and vol.hu.max() <= 4000
