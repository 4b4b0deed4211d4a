"""The public API: Detector(...).detect(path | Volume | several) -> Detections, and what it writes."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import noduleflow
from noduleflow import ConfigError, Detections, Detector
from noduleflow.engine.io.dicom_write import write_dicom_series
from noduleflow.engine.results import Candidate, atomic_write, safe_name
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(7, params=PhantomParams(n_nodules=2), shape_zyx=(60, 128, 128),
                            spacing_zyx_mm=(4.0, 2.4, 2.4))


@pytest.fixture(scope="module")
def series(phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp("series") / "ct"
    write_dicom_series(phantom.volume, folder, seed=7)
    return folder


@pytest.fixture(scope="module")
def detector(tiny_package):
    with Detector(tiny_package, top_k=6) as det:
        yield det


def test_detections_is_a_sequence_of_candidates(detector, series):
    d = detector.detect(series)
    assert isinstance(d, Detections) and 1 <= len(d) <= 6
    assert list(d) == list(d.candidates) and d[0] is d.candidates[0] and d[-1] is d.candidates[-1]
    c = d[0]
    assert (c.x, c.y, c.z) == c.center_xyz_mm and c.probability == c.prob
    assert d.timings_s["load"] > 0  # the detector read the series itself, and timed it
    total = sum(v for k, v in d.timings_s.items() if k != "total")
    assert d.timings_s["total"] == pytest.approx(total)
    assert d.volume is not None and d.preprocessed is None and d.lung_mask is None


def test_detect_several_and_keep_preprocessed(detector, series, phantom):
    out = detector.detect([series, phantom.volume], keep_preprocessed=True)
    assert isinstance(out, list) and len(out) == 2
    assert out[0].lung_mask is not None and out[0].lung_mask.dtype == bool
    assert out[0].lung_mask.shape == out[0].preprocessed.volume.shape
    # the same scan through DICOM and in memory: the same candidates
    assert np.allclose([c.center_xyz_mm for c in out[0]], [c.center_xyz_mm for c in out[1]], atol=1e-3)


def test_save_writes_what_detect_writes(detector, series, tmp_path):
    d = detector.detect(series)
    written = d.save(tmp_path / "api")
    assert set(written) == {"json", "csv", "png"}
    cli = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "noduleflow", "detect", str(series), "--model",
                        str(detector.package.path), "--top-k", "6", "--out", str(cli)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in cli.iterdir()) == sorted(p.name for p in (tmp_path / "api").iterdir())
    assert (cli / "candidates.csv").read_text() == (tmp_path / "api" / "candidates.csv").read_text()
    a, b = (json.loads((f / f"{d.name}.json").read_text()) for f in (cli, tmp_path / "api"))
    assert a["candidates"] == b["candidates"] and a["model_id"] == b["model_id"]
    rows = list(csv.reader(d.to_csv().splitlines()))
    assert rows[0] == ["seriesuid", "coordX", "coordY", "coordZ", "probability"] and len(rows) == len(d) + 1
    assert oct(os.stat(written["csv"]).st_mode & 0o777) == "0o600"  # patient-derived: owner only


def test_plot_draws_every_candidate(detector, phantom):
    d = detector.detect(phantom.volume)
    few = d.plot(max_candidates=2)
    every = d.plot()
    rows = (len(d) + 1) // 2
    assert every.height - few.height == (rows - 1) * 150  # one row of crops per two candidates
    assert every.width == few.width == 900


def test_settings_are_validated_and_declared_once(tiny_package):
    with pytest.raises(ConfigError, match="top_kk"):
        Detector(tiny_package, top_kk=3)
    with pytest.raises(ConfigError, match="-1"):
        Detector(tiny_package, top_k=-1)
    from noduleflow.engine.config import DetectorConfig

    with Detector(tiny_package, config=DetectorConfig(top_k=4), threshold=0.2) as det:
        assert det.config.top_k == 4 and det.config.threshold == 0.2


@pytest.mark.parametrize("command", ["detect", "demo", "serve"])
def test_cli_detection_options_come_from_the_config(command):
    from noduleflow.cli import build_parser
    from noduleflow.engine.config import DetectorConfig

    args = build_parser().parse_args([command, *(["x"] if command == "detect" else []),
                                      *(["--spool", "s"] if command == "serve" else [])])
    from noduleflow.commands.options import detector_config

    # the demo characterises its findings by default; everything else is the config's default
    own = {"characterise_top": 5} if command == "demo" else {}
    assert detector_config(args) == DetectorConfig(**own)
    args = build_parser().parse_args([command, *(["x"] if command == "detect" else []),
                                      *(["--spool", "s"] if command == "serve" else []),
                                      "--top-k", "9", "--no-refine", "--component-min-prob", "0.7"])
    assert detector_config(args) == DetectorConfig(top_k=9, refine=False, component_min_prob=0.7, **own)


@pytest.mark.parametrize("uid, expected", [("1.2.3", "1.2.3"), ("../../x", "_.._x"), ("a/b", "a_b"),
                                           ("..", None), ("", None), ("a\x1b[31mb", "a_31mb")])
def test_safe_name(uid, expected):
    name = safe_name(uid, fallback_seed="/data/scan")
    assert "/" not in name and not name.startswith(".") and name
    if expected is None:
        assert name.startswith("series-") and name == safe_name(uid, fallback_seed="/data/scan")
    else:
        assert name == expected


def test_hostile_series_uid_stays_inside_the_output_folder(tmp_path):
    d = Detections(series_uid="../../x", candidates=(Candidate((1.0, 2.0, 3.0), 0.5),), timings_s={},
                   backend="b", mode="dense", model_id="m", engine_version="0")
    out = d.save(tmp_path / "out", png=False)
    assert all(p.parent == tmp_path / "out" for p in out.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_.._x.json", "candidates.csv"]


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "f.csv"
    atomic_write(target, "old\n")

    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # not str/bytes: fails mid-write
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["f.csv"]


def test_public_api_is_lazy():
    r = subprocess.run([sys.executable, "-c", "import sys, noduleflow; "
                        "print(sorted(m for m in sys.modules "
                        "if m.split('.')[0] in ('numba', 'onnxruntime', 'torch')))"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    assert set(noduleflow.__all__) >= {"Detector", "Detections", "load_volume", "lung_mask", "resample",
                                       "NoduleflowError", "__version__"}


def test_detect_keeps_two_scans_with_one_name_apart(detector, phantom, tmp_path):
    from noduleflow.engine.io import save_volume

    for sub in ("a", "b"):
        save_volume(phantom.volume.with_array(phantom.volume.hu, series_uid=""), tmp_path / sub / "ct.nii.gz")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "noduleflow", "detect", str(tmp_path / "a" / "ct.nii.gz"),
                        str(tmp_path / "b" / "ct.nii.gz"), "--model", str(detector.package.path), "--no-png",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["candidates.csv", "ct-2.json", "ct.json"]
    assert "written as ct-2" in r.stderr
    ids = {row[0] for row in list(csv.reader((out / "candidates.csv").read_text().splitlines()))[1:]}
    assert ids == {"ct", "ct-2"}


def test_csv_carries_diameters_as_an_extra_column_only_when_known():
    from noduleflow import Candidate, Detections
    from noduleflow.engine.results import csv_text

    def det(d):
        return Detections(series_uid="s", candidates=(Candidate((1.0, 2.0, 3.0), 0.5, 1, d),), timings_s={},
                          backend="b", mode="dense", model_id="m", engine_version="0")

    assert det(None).to_csv().splitlines() == ["seriesuid,coordX,coordY,coordZ,probability",
                                               "s,1.0000,2.0000,3.0000,0.500000"]
    assert det(6.25).to_csv().splitlines() == ["seriesuid,coordX,coordY,coordZ,probability,diameter_mm",
                                               "s,1.0000,2.0000,3.0000,0.500000,6.2"]
    mixed = csv_text(det(6.25).rows() + det(None).rows()).splitlines()
    assert mixed[1].endswith(",6.2") and mixed[2].endswith(",0.500000,")
