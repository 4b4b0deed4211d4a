"""Slices missing at either end of a series: the positions of those present are still evenly
spaced, so the gap check cannot see them. What the data says decides instead: the count the
instances announce (ImagesInAcquisition), InstanceNumbers starting above 1, and after detection
the lungs reaching the first or last slice of the volume. Each can only take COMPLETE away.
(Phantom scans: a regression signal for the rules, not clinical evidence.)"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time

import pydicom
import pytest

from noduleflow.commands.serve import print_status
from noduleflow.serve.completeness import LUNG_END_FRACTION, check_series, lung_coverage
from noduleflow.serve.spool import SeriesState, Spool

from .conftest import send, wait_for

OK = 0x0000
NOW = time.time() + 10_000           # far after any file's mtime: every series is quiet (and past its wait)


def _copies(files, folder, edit=None):
    """Copies of ``files`` in ``folder``; ``edit(i, ds)`` changes the data set of file i first."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(files):
        dest = folder / f.name
        if edit is None:
            shutil.copy(f, dest)
        else:
            ds = pydicom.dcmread(f)
            edit(i, ds)
            ds.save_as(dest)
        out.append(dest)
    return out


def _announce(count: int, acquisition=None):
    def edit(i, ds):
        ds.ImagesInAcquisition = count(i) if callable(count) else count
        if acquisition is not None:
            ds.AcquisitionNumber = acquisition(i)
    return edit


def _uid(f) -> str:
    return str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)


def _store(sp: Spool, files) -> None:
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sp.store(f.read_bytes(), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))


def _record(sp: Spool, uid: str) -> dict:
    return sp.read_record(sp.current_dir(uid))


# -- on the headers -------------------------------------------------------------------------------
@pytest.mark.parametrize("case,keep,edit,complete,reason", [
    ("count-whole", slice(None), _announce(60), True, ""),
    ("count-tail-missing", slice(0, 40), _announce(60), False, "ImagesInAcquisition is 60 but 40 instance(s)"),
    ("count-below-what-arrived", slice(None), _announce(30), True, ""),   # only ever takes COMPLETE away
    ("head-missing", slice(20, None), None, False, "InstanceNumbers start at 21: instance(s) 1 to 20 missing"),
    ("head-missing-with-count", slice(20, None), _announce(60), False, "InstanceNumbers start at 21"),
    ("numbered-from-0", slice(None), lambda i, ds: setattr(ds, "InstanceNumber", i), True, ""),
    ("two-acquisitions-whole", slice(None), _announce(30, lambda i: 1 + i // 30), True, ""),
    ("two-acquisitions-tail-missing", slice(0, 55), _announce(30, lambda i: 1 + i // 30), False,
     "ImagesInAcquisition is 30 but 25 instance(s) of acquisition 2"),
])
def test_check_series_sees_missing_ends_in_what_the_headers_announce(tmp_path, series_pool, case, keep, edit,
                                                                     complete, reason):
    files = _copies(series_pool[0], tmp_path / case, edit)
    folder = tmp_path / f"{case}-sent"
    folder.mkdir()
    for f in files[keep]:
        shutil.move(f, folder / f.name)
    c = check_series(folder)
    assert (c.complete, c.gap) == (complete, False), c.reason
    assert reason in c.reason if reason else c.reason == ""


def test_an_announced_tail_waits_then_is_partial_or_complete_when_it_arrives(tmp_path, series_pool):
    files = _copies(series_pool[1], tmp_path / "announced", _announce(60))
    uid = _uid(files[0])
    sp = Spool(tmp_path / "spool")
    _store(sp, files[:40])
    soon = time.time() + 5.0          # quiet, but within the 600 s wait for the rest
    assert sp.complete_quiet(1.0, now=soon, incomplete_s=600.0) == []
    assert "ImagesInAcquisition is 60 but 40" in _record(sp, uid)["incomplete"]
    # never sent: after the wait it is processed, marked not complete (the SR says PARTIAL)
    sp2 = Spool(tmp_path / "spool2")
    _store(sp2, files[:40])
    assert sp2.complete_quiet(1.0, now=NOW, incomplete_s=600.0) == [uid]
    rec = _record(sp2, uid)
    assert rec["complete"] is False and "ImagesInAcquisition is 60" in rec["events"][-1]["reason"]
    # sent during the wait: whole, complete
    _store(sp, files[40:])
    assert sp.complete_quiet(1.0, now=NOW, incomplete_s=600.0) == [uid]
    assert _record(sp, uid)["complete"] is True


# -- on the lung mask, after detection -------------------------------------------------------------
@pytest.fixture(scope="module")
def coverage(detector, series_pool, tmp_path_factory):
    """{name: (Detections, lung_coverage)} of the phantom whole, without its last 20 slices, without
    its first 20."""
    out = {}
    for name, keep in (("whole", slice(None)), ("tail-cut", slice(0, 40)), ("head-cut", slice(20, None))):
        folder = tmp_path_factory.mktemp(name)
        for f in series_pool[0][keep]:
            shutil.copy(f, folder / f.name)
        det = detector.detect(folder, keep_preprocessed=True)
        out[name] = (det, lung_coverage(det))
    return out


def test_the_lungs_inside_a_whole_scan_pass(coverage):
    assert coverage["whole"][1] == ""


@pytest.mark.parametrize("name,where", [("tail-cut", "the last slice"), ("head-cut", "the first slice")])
def test_lungs_reaching_an_end_of_the_volume_mark_the_scan_partial(coverage, name, where):
    why = coverage[name][1]
    assert f"the lungs reach {where}" in why and "reported PARTIAL" in why
    pct = float(why.split("lung area ")[1].split(" %")[0])
    assert pct >= 100 * LUNG_END_FRACTION


def test_without_the_lung_mask_nothing_is_claimed(coverage):
    det = dataclasses.replace(coverage["tail-cut"][0], preprocessed=None)   # as without keep_preprocessed
    assert det.lung_mask is None and lung_coverage(det) == ""


def test_a_tail_never_sent_gives_a_partial_sr_and_says_why(make_service, series_pool, capsys):
    """End to end: 40 of 60 slices, no count in the headers, the sender released normally. The
    headers look whole; the lungs reach the last slice: the SR says PARTIAL, --status says why."""
    svc = make_service()
    files = series_pool[2][:40]
    uid = _uid(files[0])
    assert send(svc.port, files) == [OK] * 40
    wait_for(lambda: svc.spool.state_of(uid) in (SeriesState.DONE, SeriesState.FAILED), timeout=180,
             what="the series to be processed")
    assert svc.spool.state_of(uid) == SeriesState.DONE
    res = svc.spool.results_dir(uid)
    version = json.loads((res / "version.json").read_text())
    assert version["complete"] is False and "the lungs reach the last slice" in version["coverage"]
    assert pydicom.dcmread(res / "sr.dcm", stop_before_pixels=True).CompletionFlag == "PARTIAL"
    (row,) = [s for s in svc.spool.status()["series"] if s["series_uid"] == uid]
    assert row["complete"] is False and "the lungs reach the last slice" in row["coverage"]
    print_status(svc.spool.status())
    shown = capsys.readouterr().out
    assert "processed as PARTIAL" in shown and "the lungs reach the last slice" in shown
    assert "the lungs reach the last slice" in (svc.spool.root / "serve.log").read_text()


@pytest.mark.slow   # two detections on a 275-slice real scan (about 30 s on 2 cores)
def test_the_real_scan_passes_whole_and_is_partial_without_its_last_third(detector):
    """LIDC-IDRI-0314 (a real scanner's whole chest CT, no ImagesInAcquisition): its lungs lie
    inside the scan; cut to its first 180 slices along the array, they reach the cut end.
    Skipped where ../shared/realct is absent."""
    from pathlib import Path

    from noduleflow.engine.io import load_volume
    from noduleflow.engine.resample import crop

    real = Path(__file__).resolve().parents[2] / ".." / "shared" / "realct" / "LIDC-IDRI-0314"
    if not real.is_dir():
        pytest.skip("../shared/realct not present")
    vol = load_volume(real)
    assert lung_coverage(detector.detect(vol, keep_preprocessed=True)) == ""
    ny, nx = vol.shape[1:]
    cut = lung_coverage(detector.detect(crop(vol, (0, 180, 0, ny, 0, nx)), keep_preprocessed=True))
    assert "the lungs reach the last slice" in cut
