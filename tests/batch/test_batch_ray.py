"""`noduleflow batch` on a local Ray instance: detect's candidates series for series, a worker killed
mid-run, a driver killed mid-run and resumed, bad series among good ones, a changed setting refused.

One Ray instance (2 CPUs, no dashboard, a small object store) serves the whole module: starting Ray
takes several seconds on two cores. The kill tests are marked slow (about 30 s each on two busy cores);
the default run keeps detect's equality, a rerun, bad series and the refusal to mix settings."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from noduleflow.batch import ClusterSettings, batch, find_jobs
from noduleflow.batch.manifest import MANIFEST_NAME, RECORDS_NAME
from noduleflow.cli import main
from noduleflow.engine import ConfigError
from noduleflow.engine.config import DetectorConfig
from noduleflow.engine.detector import Detector

ray = pytest.importorskip("ray")

STAGE1 = DetectorConfig(stages="1")   # the shipped model's stage 1 alone: about a second per tiny scan


@pytest.fixture(scope="module")
def local_ray():
    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20, log_to_driver=False,
                   configure_logging=False)
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(cohort):
    """`detect`'s candidates CSV text of every series of the cohort, by series UID."""
    with Detector(config=STAGE1) as det:
        return {d.series_uid: d.to_csv() for d in (det.detect(j.path, series_uid=j.series_uid)
                                                   for j in find_jobs([cohort]))}


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RECORDS_NAME).read_text().splitlines() if line.strip()]


def series_csv(out: Path, name: str) -> str:
    """The candidates CSV of one series' result JSON, as `Detections.to_csv` writes it."""
    from noduleflow.engine.results import csv_text

    d = json.loads((out / f"{name}.json").read_text())
    return csv_text([(d["series_uid"], *c["center_xyz_mm"], c["prob"], c["diameter_mm"]) for c in d["candidates"]])


def assert_one_result_each(out: Path, reference: dict) -> None:
    """Every series of ``reference`` has exactly one result file, equal to detect's, one done line in
    the manifest, and its rows once in the merged candidates.csv."""
    recs = records(out)
    done = [r for r in recs if r["status"] == "done"]
    assert sorted(r["series_uid"] for r in done) == sorted(reference), "a series is missing or done twice"
    results = [p.stem for p in out.glob("*.json") if p.name not in (MANIFEST_NAME, "froc.json")]
    assert sorted(results) == sorted(r["name"] for r in done)
    for r in done:
        assert series_csv(out, r["name"]) == reference[r["series_uid"]], r["series_uid"]
    with open(out / "candidates.csv") as f:
        merged = [row[0] for row in csv.reader(f)][1:]
    assert {u: merged.count(u) for u in reference} == {u: len(t.splitlines()) - 1 for u, t in reference.items()}


def test_batch_equals_detect_series_for_series(local_ray, cohort, reference, tmp_path):
    out = tmp_path / "out"
    rc = main(["batch", str(cohort), "--out", str(out), "--workers", "2", "--stages", "1", "--no-progress",
               "--annotations", str(cohort / "mhd" / "annotations.csv")])
    assert rc == 0
    assert_one_result_each(out, reference)
    header = json.loads((out / MANIFEST_NAME).read_text())
    with Detector(config=STAGE1) as det:
        assert header["package_sha256"] == det.package_sha256 and header["settings"]["stages"] == "1"
    assert len(list(out.glob("*.png"))) == 6
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"} and all(float(r["scans_per_s"]) > 0 for r in rows)
    assert {"load_s", "inference_s", "total_s"} <= set(rows[0])
    froc = json.loads((out / "froc.json").read_text())
    assert froc["n_scans"] == 6 and froc["n_nodules"] > 0 and 0 <= froc["cpm"] <= 1
    # the same command again: everything is done, nothing is detected again
    r = batch([cohort], out, config=STAGE1, progress=False)
    assert (r.n_skipped, r.n_done, r.n_failed) == (6, 0, 0) and len(records(out)) == 6


def _descendants_named(word: str) -> list[int]:
    """PIDs of this process's descendants whose command line holds ``word`` (Ray's worker processes)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, changed = {os.getpid()}, True
    while changed:
        new = {p for p, pp in parent.items() if pp in mine} - mine
        changed = bool(new)
        mine |= new
    found = []
    for p in mine - {os.getpid()}:
        try:
            if word in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"):
                found.append(p)
        except OSError:
            continue
    return found


def _wait(predicate, timeout=180.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = predicate()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_killed_worker_loses_no_series_and_duplicates_none(local_ray, cohort, reference, tmp_path):
    out = tmp_path / "out"
    result = {}
    run = threading.Thread(target=lambda: result.update(r=batch(
        [cohort], out, config=STAGE1, png=False, progress=False, cluster=ClusterSettings(workers=2))))
    run.start()
    try:
        _wait(lambda: (out / RECORDS_NAME).exists() and records(out), what="a first series done")
        victims = _wait(lambda: _descendants_named("SeriesWorker"), what="the worker processes")
        os.kill(victims[0], signal.SIGKILL)
    finally:
        run.join(timeout=300)
    r = result["r"]
    assert (r.n_done, r.n_failed) == (6, 0)
    recs = records(out)
    assert len(recs) == 6 and max(x["attempts"] for x in recs) >= 2   # its series were run again
    assert_one_result_each(out, reference)


def test_bad_series_are_recorded_and_retried_and_settings_cannot_mix(local_ray, cohort, tmp_path):
    good = sorted((cohort / "mhd").glob("*.mhd"))[:2]
    (tmp_path / "broken.mhd").write_text("ObjectType = Image\nNDims = 3\nElementDataFile = nowhere.raw\n")
    listing = tmp_path / "scans.txt"
    listing.write_text("\n".join([str(good[0]), "broken.mhd", str(good[1]), "gone.mhd"]) + "\n")
    out = tmp_path / "out"
    r = batch([listing], out, config=STAGE1, png=False, progress=False)
    assert (r.n_done, r.n_failed) == (2, 2)
    reasons = dict(r.failed)
    assert any("broken.mhd" in k for k in reasons) and any("gone.mhd" in k for k in reasons)
    assert all(v.strip() and "\n" not in v for v in reasons.values())
    # again: the done ones are skipped, the failed ones tried again (and fail again)
    r2 = batch([listing], out, config=STAGE1, png=False, progress=False)
    assert (r2.n_skipped, r2.n_done, r2.n_failed) == (2, 0, 2)
    recs = records(out)
    assert len(recs) == 6 and sum(x["status"] == "done" for x in recs) == 2
    with open(out / "summary.csv") as f:
        status = sorted(row["status"] for row in csv.DictReader(f))
    assert status == ["done", "done", "failed", "failed"]
    with pytest.raises(ConfigError, match=r"top_k 15 -> 5"):
        batch([listing], out, config=STAGE1.replace(top_k=5), png=False, progress=False)
    assert len(records(out)) == 6   # refused before any work


@pytest.mark.slow
def test_resume_after_the_driver_was_killed(local_ray, cohort, reference, tmp_path):
    out = tmp_path / "out"
    address = local_ray.address_info["gcs_address"]
    cmd = [sys.executable, "-m", "noduleflow", "batch", str(cohort), "--out", str(out), "--address", address,
           "--stages", "1", "--no-png", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: (out / RECORDS_NAME).exists() and len(records(out)) >= 2 or proc.poll() is not None,
              what="two series done by the first run")
    finally:
        proc.kill()
        proc.wait()
    first = {x["key"]: (out / f"{x['name']}.json").stat().st_mtime_ns for x in records(out)}
    assert 2 <= len(first) < 6, "the first run should have been cut off part-way"
    r = batch([cohort], out, config=STAGE1, png=False, progress=False)
    assert r.n_skipped == len(first) and r.n_done == 6 - len(first) and r.n_failed == 0
    assert_one_result_each(out, reference)
    # what the first run finished was not detected again
    assert {k: (out / f"{x['name']}.json").stat().st_mtime_ns for k, x in
            ((x["key"], x) for x in records(out)) if k in first} == first
