"""MetaImage / NIfTI ingestion and the pydicom test corpus."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from noduleflow.engine import Volume, VolumeError
from noduleflow.engine.io import load_volume, save_volume


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nii.gz"])
def test_image_roundtrip(tmp_path, suffix):
    hu = np.random.default_rng(0).integers(-1024, 3000, (11, 17, 19)).astype(np.int16)
    d = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    vol = Volume(hu, (2.0, 0.6, 0.7), (10.0, -20.0, 30.0), d)
    path = save_volume(vol, tmp_path / f"scan{suffix}")
    back = load_volume(path)
    np.testing.assert_array_equal(back.hu, hu)
    np.testing.assert_allclose(back.spacing_zyx_mm, vol.spacing_zyx_mm, atol=1e-6)
    np.testing.assert_allclose(back.origin_xyz_mm, vol.origin_xyz_mm, atol=1e-5)
    # NIfTI stores RAS and SimpleITK converts back to LPS: the direction must survive
    np.testing.assert_allclose(back.direction, d, atol=1e-6)
    assert back.series_uid == "scan"


def test_float_image_is_rounded_and_clipped(tmp_path):
    import SimpleITK as sitk

    arr = np.zeros((10, 16, 16), np.float32)
    arr[0, 0, :4] = [-1000.4, 40000.0, 12.6, -50000.0]
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "f.mha"))
    np.testing.assert_array_equal(load_volume(tmp_path / "f.mha").hu[0, 0, :4], [-1000, 32767, 13, -32768])


def test_unreadable_image(tmp_path):
    p = tmp_path / "bad.mhd"
    p.write_text("garbage")
    with pytest.raises(VolumeError, match="bad.mhd: not a MetaImage header"):
        load_volume(p)
    n = tmp_path / "bad.nii"
    n.write_bytes(b"garbage" * 100)
    with pytest.raises(VolumeError, match="bad.nii: not a NIfTI"):
        load_volume(n)


def _pydicom_corpus() -> list[Path]:
    # the files shipped inside the package; pydicom's get_testdata_files() would also try
    # to download its external test data, and tests never touch the network
    import pydicom.data

    return sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))


def test_pydicom_corpus_is_read_or_refused_cleanly():
    """Every .dcm pydicom ships, alone, is refused with a one-line VolumeError (never another
    exception): a single file is below the minimum slice count, or worse."""
    files = _pydicom_corpus()
    if not files:
        pytest.skip("pydicom's test corpus is not installed")
    messages = {}
    for f in files:
        with pytest.raises(VolumeError) as info:
            load_volume(f)
        messages[f.name] = str(info.value)
        assert "\n" not in messages[f.name]
    assert "fewer than the 10" in messages["CT_small.dcm"]
    assert "not CT" in messages["MR_small.dcm"]


def test_real_ct_slice_as_a_series(tmp_path):
    """pydicom's CT_small.dcm (a real scanner's slice) repeated along z loads as a series."""
    import pydicom

    files = [f for f in _pydicom_corpus() if f.name == "CT_small.dcm"]
    if not files:
        pytest.skip("pydicom's test corpus is not installed")
    for k in range(12):
        ds = pydicom.dcmread(files[0])
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.5 * k]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k}"
        ds.save_as(tmp_path / f"{k}.dcm")
    vol = load_volume(tmp_path)
    assert vol.shape == (12, 128, 128) and vol.hu.dtype == np.int16
    assert vol.spacing_zyx_mm[0] == pytest.approx(2.5)
    ref = pydicom.dcmread(files[0])
    np.testing.assert_array_equal(vol.hu[5], ref.pixel_array * int(ref.RescaleSlope) + int(ref.RescaleIntercept))
