"""`noduleflow batch` without a cluster: what a SOURCE names, the run manifest, the missing extra."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from noduleflow.batch import Job, RunManifest, find_jobs
from noduleflow.batch.manifest import RECORDS_NAME
from noduleflow.engine import ConfigError
from noduleflow.engine.io.dicom import list_series


def test_dicom_series_are_grouped_by_uid_however_laid_out(cohort, tmp_path):
    uids = [list_series(d)[0] for d in sorted((cohort / "dicom").glob("scan_*"))]
    a, b = sorted((cohort / "dicom").glob("scan_*"))
    # series a split over two sibling folders; series b's files mixed into the second of them
    fa = sorted(a.iterdir())
    (tmp_path / "x" / "p1").mkdir(parents=True)
    (tmp_path / "x" / "p2").mkdir()
    for i, f in enumerate(fa):
        (tmp_path / "x" / ("p1" if i % 2 else "p2") / f"a{i}").write_bytes(f.read_bytes())
    for i, f in enumerate(sorted(b.iterdir())):
        (tmp_path / "x" / "p2" / f"b{i}").write_bytes(f.read_bytes())
    (tmp_path / "x" / "p2" / "notes.txt").write_text("not DICOM")
    jobs = find_jobs([tmp_path / "x"])
    assert sorted(j.series_uid for j in jobs) == sorted(uids)
    by_uid = {j.series_uid: Path(j.path) for j in jobs}
    assert by_uid[uids[0]] == tmp_path / "x"              # the smallest folder holding all its slices
    assert by_uid[uids[1]] == tmp_path / "x" / "p2"


def test_images_luna_folders_and_lists(cohort, tmp_path):
    mhd = sorted((cohort / "mhd").glob("*.mhd"))
    tree = find_jobs([cohort])
    assert len(tree) == 6 and sum(j.series_uid is None for j in tree) == 4   # .raw files are not scans
    # a LUNA16 layout: subsetN/<uid>.mhd
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scans\n{mhd[0]}\n\n{mhd[1].relative_to(cohort.parent) if False else mhd[1]}\n"
                       f"{cohort / 'dicom'}\nmissing.mhd\n")
    jobs = find_jobs([listing])
    assert [j.path for j in jobs[:2]] == [str(mhd[0]), str(mhd[1])]
    assert sum(j.series_uid is not None for j in jobs) == 2
    assert jobs[-1] == Job(str(tmp_path / "missing.mhd"))   # recorded as a failed series later, not refused now
    uid = list_series(cohort / "dicom" / "scan_000")[0]
    table = tmp_path / "list.csv"
    table.write_text(f"path,series_uid\n{cohort / 'dicom'},{uid}\n{mhd[2]},\n")
    assert find_jobs([table]) == [Job(str(cohort / "dicom"), uid), Job(str(mhd[2]))]
    assert find_jobs([listing, mhd[0]])[:2] == jobs[:2]       # a series named twice is one job
    with pytest.raises(ConfigError, match="nope"):
        find_jobs([tmp_path / "nope"])


IDENTITY = {"package_id": "m", "package_sha256": "a" * 64, "settings": {"top_k": 15, "mode": "dense"},
            "backend": "auto", "precision": None, "engine_version": "1"}


def test_manifest_resume_refusal_and_cut_line(tmp_path):
    m = RunManifest(tmp_path, IDENTITY)
    m.start_run({"jobs": 2})
    (tmp_path / "s1.json").write_text("{}")
    m.append({"key": "k1", "path": "p1", "status": "done", "name": "s1"})
    m.append({"key": "k2", "path": "p2", "status": "failed", "reason": "bad"})
    assert m.name_for("k3", "s1") == "s1-2" and m.name_for("k1", "other") == "s1"
    # a crash cut the last line: ignored (k3 is not done), and the next record starts its own line
    with open(tmp_path / RECORDS_NAME, "a") as f:
        f.write('{"key": "k3", "status": "do')
    m2 = RunManifest(tmp_path, IDENTITY)
    assert m2.is_done("k1") and not m2.is_done("k2") and "k3" not in m2.records
    m2.append({"key": "k2", "path": "p2", "status": "done", "name": "s2"})
    lines = (tmp_path / RECORDS_NAME).read_text().splitlines()
    assert json.loads(lines[-1])["key"] == "k2" and not RunManifest(tmp_path, IDENTITY).is_done("k2")  # no s2.json
    other = {**IDENTITY, "settings": {"top_k": 5, "mode": "dense"}}
    with pytest.raises(ConfigError, match=r"top_k 15 -> 5.*--force-mix"):
        RunManifest(tmp_path, other)
    with pytest.raises(ConfigError, match="package_sha256"):
        RunManifest(tmp_path, {**IDENTITY, "package_sha256": "b" * 64})
    assert RunManifest(tmp_path, other, force_mix=True).settings_id != m.settings_id


def test_without_ray_batch_says_what_to_install(tmp_path, cohort):
    code = ("import sys\nclass Hide:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'ray' or name.startswith('ray.'):\n"
            "            raise ModuleNotFoundError(name)\nsys.meta_path.insert(0, Hide())\n"
            "from noduleflow.cli import main\n"
            f"sys.exit(main(['batch', {str(cohort)!r}, '--out', 'out']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "noduleflow[batch]"' in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []   # nothing written


def test_a_worker_refuses_a_package_that_is_not_the_drivers(tmp_path, monkeypatch):
    import tempfile

    from noduleflow.batch.ray_runner import SeriesWorker, package_files
    from noduleflow.engine import PackageError
    from noduleflow.engine.package import default_package_path, sha256_file

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # where the shipped package is unpacked
    files = package_files(default_package_path())
    sha = sha256_file(default_package_path() / "manifest.json")
    args = ("auto", {}, {}, 1, False)
    with pytest.raises(PackageError, match="not the driver's"):
        SeriesWorker(files, "0" * 64, *args)
    damaged = dict(files, **{"stage2.onnx": files["stage2.onnx"][:-1] + b"\0"})
    with pytest.raises(PackageError, match="stage2.onnx does not match"):
        SeriesWorker(damaged, "1" * 64, *args)
    w = SeriesWorker(files, sha, *args)
    assert w.det.package_sha256 == sha and (tmp_path / f"noduleflow-batch-{sha[:16]}" / "manifest.json").exists()
    bad = w.detect(str(tmp_path / "nothing.mhd"), None)
    assert bad["status"] == "failed" and "nothing.mhd" in bad["reason"]
