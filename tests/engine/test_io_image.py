"""MetaImage / NIfTI ingestion and the pydicom test corpus."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from noduleflow.engine import NoduleflowError, Volume, VolumeError
from noduleflow.engine.io import load_volume, save_volume


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nii.gz"])
def test_image_roundtrip(tmp_path, suffix):
    hu = np.random.default_rng(0).integers(-1024, 3000, (7, 9, 11)).astype(np.int16)
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

    arr = np.array([[[-1000.4, 40000.0], [12.6, -50000.0]]], dtype=np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "f.mha"))
    np.testing.assert_array_equal(load_volume(tmp_path / "f.mha").hu, [[[-1000, 32767], [13, -32768]]])


def test_unreadable_image(tmp_path):
    p = tmp_path / "bad.mhd"
    p.write_text("garbage")
    with pytest.raises(VolumeError, match="cannot read"):
        load_volume(p)


def _pydicom_corpus() -> list[Path]:
    # the files shipped inside the package; pydicom's get_testdata_files() would also try
    # to download its external test data, and tests never touch the network
    import pydicom.data

    return sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))


def test_pydicom_corpus_is_read_or_refused_cleanly():
    """Every .dcm pydicom ships is either loaded or refused with a NoduleflowError."""
    files = _pydicom_corpus()
    if not files:
        pytest.skip("pydicom's test corpus is not installed")
    read, refused = [], []
    for f in files:
        try:
            vol = load_volume(f)
        except NoduleflowError:
            refused.append(f.name)
            continue
        assert vol.hu.dtype == np.int16 and vol.hu.ndim == 3
        read.append(f.name)
    assert len(read) + len(refused) == len(files)
    assert "CT_small.dcm" in read  # the corpus' CT slice must load
    assert "MR_small.dcm" in refused  # and its MR slice must be refused as non-CT
    print(f"pydicom corpus: {len(files)} files, {len(read)} read, {len(refused)} refused")
