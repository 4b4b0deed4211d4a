"""A series' life in the spool without the network or the model: completeness (gaps, holes in
InstanceNumber, senders cut off), versions (late instances), duplicate SOP Instance UIDs, and
private permissions whatever the umask. Time is passed in (``now``), never waited for."""
from __future__ import annotations

import json
import os
import stat
import time

import pydicom
import pytest

from noduleflow.serve.completeness import check_series
from noduleflow.serve.spool import SeriesState, Spool

NOW = time.time() + 10_000          # far after any file's mtime: every series is quiet at NOW


def _sop(f) -> str:
    return str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)


def _uid(f) -> str:
    return str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)


def _store(sp, files, **kw):
    for f in files:
        sp.store(f.read_bytes(), _uid(f), _sop(f), **kw)


def _record(sp, uid):
    return sp.read_record(sp.current_dir(uid))


def _publish(sp, uid, version=1):
    d = sp.claim(uid)
    partial = d / "result.partial"
    partial.mkdir()
    (partial / "candidates.csv").write_text(f"version {version}\n")
    sp.publish(uid, partial, version, complete=True)
    sp.finish(uid, version=version)


# -- completeness ------------------------------------------------------------------------------
def test_check_series_finds_gaps_and_instance_number_holes(tmp_path, series_pool):
    import shutil

    files = series_pool[0]
    whole = tmp_path / "whole"
    whole.mkdir()
    for f in files:
        shutil.copy(f, whole)
    c = check_series(whole)
    assert c.complete and c.instances == len(files) and len(c.positions_mm) == len(files)

    (whole / files[30].name).unlink()                      # a slice missing in the middle
    c = check_series(whole)
    assert not c.complete and c.gap and c.reason.startswith("slice(s) missing: gap 5.000 mm")

    # InstanceNumber with a hole while the positions are even: the numbers say a slice is missing
    holes = tmp_path / "holes"
    holes.mkdir()
    for i, f in enumerate(files[:10]):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = i + 1 + (i >= 5)
        ds.save_as(holes / f.name)
    c = check_series(holes)
    assert not c.complete and not c.gap and "InstanceNumber 6 missing" in c.reason


def test_a_hole_in_the_numbering_alone_waits_then_is_processed_as_not_complete(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    files = series_pool[0][:10]
    uid = _uid(files[0])
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = i + 1 + (i >= 5)
        sp.store(_bytes(ds), uid, str(ds.SOPInstanceUID))
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1e9) == []
    assert "InstanceNumber 6 missing" in _record(sp, uid)["incomplete"]
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=5.0) == [uid]
    rec = _record(sp, uid)
    assert rec["complete"] is False and "InstanceNumber 6 missing" in rec["events"][-1]["reason"]


def _bytes(ds) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_series_with_a_gap_is_never_queued_and_fails_after_the_incomplete_wait(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    files = series_pool[0]
    uid = _uid(files[0])
    _store(sp, files[:20] + files[21:])
    for _ in range(3):   # quiet for as long as you like: a gap is not complete
        assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1e9) == []
    rec = _record(sp, uid)
    assert sp.state_of(uid) == SeriesState.RECEIVED and "missing" in rec["incomplete"]
    assert sum(e["event"] == "incomplete" for e in rec["events"]) == 1       # said once, not every poll
    assert "missing" in sp.status()["series"][0]["incomplete"]

    # the missing slice arrives: whole, queued, marked complete
    _store(sp, [files[20]])
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1e9) == [uid]
    assert _record(sp, uid)["complete"] is True and "incomplete" not in _record(sp, uid)
    _store(sp, [files[0]])                          # a resend of a held instance leaves it queued
    assert sp.queued() == [uid] and _record(sp, uid)["duplicates"] == 1

    # another series whose gap never fills: failed after the wait, with the reason, images kept
    other = series_pool[1]
    ouid = _uid(other[0])
    _store(sp, other[:10] + other[12:])
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1e9) == []
    sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=5.0)
    assert sp.state_of(ouid) == SeriesState.FAILED
    err = (sp.dir(SeriesState.FAILED, ouid) / "error.txt").read_text()
    assert err.startswith("incomplete: slice(s) missing") and not sp.results_dir(ouid).exists()
    assert len(list((sp.dir(SeriesState.FAILED, ouid) / "instances").iterdir())) == len(other) - 2


def test_a_series_cut_off_mid_transfer_waits_for_the_resend(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    files = series_pool[0]
    uid = _uid(files[0])
    _store(sp, files[:22], sending=True)          # the first 22 of 60, no gap among them
    assert _record(sp, uid)["receiving"] is True
    # an open association keeps it from completing, however long it is quiet
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, receiving={uid}) == []
    sp.transfer(uid, "aborted")
    assert _record(sp, uid)["interrupted"] is True
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1e9) == []
    # the sender comes back and sends everything; its association ends normally
    _store(sp, files, sending=True)
    sp.transfer(uid, "released")
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1e9) == [uid]
    rec = _record(sp, uid)
    assert rec["complete"] is True and rec["instances"] == len(files) and rec["duplicates"] == 22

    # one that never comes back is processed after the wait, but not as complete (its SR says PARTIAL)
    other = series_pool[1]
    ouid = _uid(other[0])
    _store(sp, other[:30], sending=True)
    sp.transfer(ouid, "connection lost")
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1e9) == []
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=5.0) == [ouid]
    assert _record(sp, ouid)["complete"] is False


def test_a_restart_marks_series_whose_sender_was_connected_interrupted(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    a, b = series_pool[0], series_pool[1]
    _store(sp, a[:22], sending=True)              # the service died while this was arriving
    _store(sp, b, sending=True)
    sp.transfer(_uid(b[0]), "released")           # this one had been sent in full
    counts = Spool(tmp_path / "spool").recover()
    assert counts["interrupted"] == 1
    assert _record(sp, _uid(a[0]))["interrupted"] is True
    # quiet since long before the restart, yet only the series sent in full is complete
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, since=NOW - 2, incomplete_s=1e9) == [_uid(b[0])]


# -- versions and duplicates ---------------------------------------------------------------------
def test_instances_after_processing_start_a_new_version_that_supersedes_the_first(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    files = series_pool[0]
    uid = _uid(files[0])
    _store(sp, files[:40])                         # the sender paused after 40 slices...
    assert sp.complete_quiet(quiet_s=1.0, now=NOW) == [uid]
    _publish(sp, uid, 1)
    _store(sp, files[40:])                         # ...and sent the rest later
    assert sp.state_of(uid) == SeriesState.RECEIVED
    rec = _record(sp, uid)
    assert rec["version"] == 2 and "complete" not in rec
    assert len(list((sp.dir(SeriesState.RECEIVED, uid) / "instances").iterdir())) == len(files)   # merged
    assert sp.complete_quiet(quiet_s=1.0, now=NOW) == [uid]
    _publish(sp, uid, 2)
    assert sp.results_version(uid) == 2
    assert (sp.results_dir(uid) / "candidates.csv").read_text() == "version 2\n"
    assert (sp.root / "superseded" / uid / "v1" / "candidates.csv").read_text() == "version 1\n"
    assert json.loads((sp.results_dir(uid) / "version.json").read_text())["version"] == 2

    # a resend of what version 2 already holds is not a new version: duplicates, kept once
    _store(sp, files[:3])
    assert sp.state_of(uid) == SeriesState.DONE and _record(sp, uid)["duplicates"] == 3


def test_an_instance_arriving_while_the_series_is_processed_waits_for_the_next_version(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    files = series_pool[0]
    uid = _uid(files[0])
    _store(sp, files[:-1])
    sp.complete_quiet(quiet_s=1.0, now=NOW)
    d = sp.claim(uid)
    late = sp.store(files[-1].read_bytes(), uid, _sop(files[-1]))
    assert late.parent == sp.root / "late" / uid and sp.status()["late_instances"] == {uid: 1}
    (d / "result.partial").mkdir()
    sp.publish(uid, d / "result.partial", 1)
    sp.finish(uid)
    assert sp.state_of(uid) == SeriesState.RECEIVED and _record(sp, uid)["version"] == 2
    assert not (sp.root / "late" / uid).exists()
    assert len(list((sp.dir(SeriesState.RECEIVED, uid) / "instances").iterdir())) == len(files)


def test_a_new_version_must_cover_the_previous_one_when_its_images_are_gone(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    files = series_pool[0]
    uid = _uid(files[0])
    _store(sp, files)
    sp.complete_quiet(quiet_s=1.0, now=NOW)
    _publish(sp, uid, 1)
    sp.prune(retain_s=0.0)                         # the images of version 1 are dropped
    _store(sp, files[50:])                         # ten slices arrive: evenly spaced, but a part only
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1e9) == []
    assert "send the whole series" in _record(sp, uid)["incomplete"]
    _store(sp, files[:50])
    assert sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1e9) == [uid]


def test_a_duplicate_sop_instance_uid_never_overwrites_the_first(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    f = series_pool[0][5]
    uid, sop = _uid(f), _sop(f)
    first = sp.store(f.read_bytes(), uid, sop)
    ds = pydicom.dcmread(f)
    ds.PixelData = bytes(len(ds.PixelData))        # same UIDs, other pixels
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    again = sp.store(buf.getvalue(), uid, sop, source="NFTEST@127.0.0.1")
    assert again == first and first.read_bytes() == f.read_bytes()
    rec = _record(sp, uid)
    dup = [e for e in rec["events"] if e["event"] == "duplicate"]
    assert rec["duplicates"] == 1 and dup[0]["identical"] is False and dup[0]["sop_instance_uid"] == sop
    assert sp.status()["series"][0]["duplicates"] == 1
    assert not list(sp.tmp.iterdir())


# -- permissions ------------------------------------------------------------------------------
def _modes(root):
    out = {}
    for p in [root, *root.rglob("*")]:
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_spool_folders_are_0700_and_files_0600_whatever_the_umask(tmp_path, series_pool, umask):
    old = os.umask(umask)
    try:
        sp = Spool(tmp_path / "deep" / "spool")
        sp.lock()
        files = series_pool[0]
        uid = _uid(files[0])
        _store(sp, files[:30] + files[31:])           # a gap: failed after the wait
        sp.complete_quiet(quiet_s=1.0, now=NOW, incomplete_s=1.0)
        _store(sp, series_pool[1])
        sp.complete_quiet(quiet_s=1.0, now=NOW)
        d = sp.claim(_uid(series_pool[1][0]))
        partial = d / "result.partial"
        partial.mkdir()                                # as permissive as the umask lets it be
        with open(partial / "candidates.csv", "w") as fh:
            fh.write("x\n")
        sp.publish(_uid(series_pool[1][0]), partial)
        sp.finish(_uid(series_pool[1][0]))
        sp.store(files[30].read_bytes(), uid, _sop(files[30]))   # a new version of the failed one
        sp.unlock()
    finally:
        os.umask(old)
    modes = _modes(sp.root)
    wrong = {k: oct(m) for k, m in modes.items()
             if m != (0o700 if (sp.root / k).is_dir() or k == "." else 0o600)}
    assert not wrong, wrong
    assert len(modes) > 130          # instances, records, results, error.txt, the lock were all looked at
    assert stat.S_IMODE((tmp_path / "deep").stat().st_mode) == 0o700


def test_the_real_scan_is_whole_and_one_slice_less_is_not(tmp_path):
    """LIDC-IDRI-0314 from a real scanner: its numbering and spacing pass; without a middle slice
    they do not (skipped where ../shared/realct is absent)."""
    from pathlib import Path

    real = Path(__file__).resolve().parents[2] / ".." / "shared" / "realct" / "LIDC-IDRI-0314"
    if not real.is_dir():
        pytest.skip("../shared/realct not present")
    files = sorted(real.glob("*.dcm"))
    c = check_series(real)
    assert c.complete and c.instances == len(files) > 100
    order = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    for f in order[:100] + order[101:]:
        (tmp_path / f.name).symlink_to(f)
    c = check_series(tmp_path)
    assert not c.complete and "missing" in c.reason
