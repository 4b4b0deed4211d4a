"""`noduleflow synth`: cohort files, annotations, DICOM readable by the engine."""
from __future__ import annotations

import csv

import numpy as np

from noduleflow.cli import main as cli
from noduleflow.engine.io import load_volume
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom


def test_synth_dicom_cohort(tmp_path):
    out = tmp_path / "cohort"
    assert cli(["synth", str(out), "--scans", "2", "--seed", "11", "--shape", "40", "96", "96",
                "--spacing", "5", "3", "3", "--masks", "--preview", "--nodules", "2"]) == 0
    rows = list(csv.DictReader(open(out / "annotations.csv")))
    assert list(rows[0].keys()) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert (out / "annotations_excluded.csv").exists()
    uids = set()
    for i in range(2):
        vol = load_volume(out / f"scan_{i:03d}")
        ph = generate_phantom(11 + i, shape_zyx=(40, 96, 96), spacing_zyx_mm=(5, 3, 3),
                              params=PhantomParams(n_nodules=2))
        # what the engine reads back is exactly what was generated (all encodings)
        np.testing.assert_array_equal(vol.hu, ph.volume.hu)
        np.testing.assert_allclose(vol.origin_xyz_mm, ph.volume.origin_xyz_mm, atol=1e-4)
        assert vol.series_uid == ph.volume.series_uid
        uids.add(vol.series_uid)
        assert (out / "masks" / f"{vol.series_uid}.mhd").exists()
        assert (out / "preview" / f"{vol.series_uid}.png").stat().st_size > 1000
    assert {r["seriesuid"] for r in rows} <= uids


def test_synth_mhd(tmp_path):
    assert cli(["synth", str(tmp_path), "--format", "mhd", "--shape", "32", "64", "64",
                "--spacing", "6", "4", "4"]) == 0
    (mhd,) = tmp_path.glob("*.mhd")
    vol = load_volume(mhd)
    assert vol.shape == (32, 64, 64) and vol.series_uid == mhd.stem


def test_synth_bad_args(tmp_path, capsys):
    assert cli(["synth", str(tmp_path), "--scans", "0"]) == 2
    assert "--scans must be >= 1, got 0" in capsys.readouterr().err
