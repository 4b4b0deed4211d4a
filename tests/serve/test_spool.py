"""The spool on its own: UID validation, instance validation, atomic states, restart recovery."""
from __future__ import annotations

import io
import json

import pydicom
import pytest

from noduleflow.serve.spool import SeriesState, Spool, SpoolError, SpoolFullError, valid_uid, validate_instance


@pytest.mark.parametrize("uid,ok", [
    ("1.2.840.10008.5.1.4.1.1.2", True), ("0", True), ("1.0.3", True),
    ("../../x", False), ("1.2.03", False), ("", False), ("1..2", False), ("1.2.", False),
    ("1.2.3/4", False), ("1.2 .3", False), ("1." + "2" * 63, False), (None, False)])
def test_valid_uid(uid, ok):
    assert valid_uid(uid) is ok


@pytest.fixture(scope="module")
def ct_file(series_pool):
    return series_pool[0][10]


def _ds(path):
    return pydicom.dcmread(path)


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_validate_instance_accepts_ct_and_names_each_defect(ct_file):
    ds = _ds(ct_file)
    assert validate_instance(ds) == (str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    bad = _ds(ct_file)
    bad.Modality = "MR"
    with pytest.raises(SpoolError, match="modality 'MR' is not CT"):
        validate_instance(bad)
    bad = _ds(ct_file)
    bad.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    with pytest.raises(SpoolError, match="not CT Image Storage"):
        validate_instance(bad)
    bad = _ds(ct_file)
    bad.SeriesInstanceUID = "../../x"
    with pytest.raises(SpoolError, match=r"SeriesInstanceUID '\.\./\.\./x' is not a valid DICOM UID"):
        validate_instance(bad)
    bad = _ds(ct_file)
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]
    with pytest.raises(SpoolError, match="truncated"):
        validate_instance(bad)
    with pytest.raises(SpoolError, match="differs from the request"):
        validate_instance(_ds(ct_file), affected_sop_uid="1.2.3")
    bad = _ds(ct_file)
    del bad.PixelData
    with pytest.raises(SpoolError, match="no PixelData"):
        validate_instance(bad)


def test_store_is_atomic_and_follows_the_states(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    files = series_pool[0][:5]
    uid = str(_ds(files[0]).SeriesInstanceUID)
    for f in files[:4]:
        ds = _ds(f)
        sp.store(f.read_bytes(), uid, str(ds.SOPInstanceUID), source="test")
    assert sp.state_of(uid) == SeriesState.RECEIVED
    assert not list(sp.tmp.iterdir()), "no temporary file is left behind"
    stored = sorted((sp.dir(SeriesState.RECEIVED, uid) / "instances").iterdir())
    assert [p.name for p in stored] == sorted(f"{_ds(f).SOPInstanceUID}.dcm" for f in files[:4])
    assert stored[0].read_bytes() in {f.read_bytes() for f in files}

    assert sp.complete_quiet(quiet_s=3600) == []            # not quiet long enough
    assert sp.complete_quiet(quiet_s=0.0) == [uid]
    assert sp.queued() == [uid]
    # a late instance for a queued series sends it back to receiving
    ds = _ds(files[4])
    sp.store(files[4].read_bytes(), uid, str(ds.SOPInstanceUID))
    assert sp.state_of(uid) == SeriesState.RECEIVED and sp.queued() == []
    sp.complete_quiet(quiet_s=0.0)

    d = sp.claim(uid)
    assert d == sp.dir(SeriesState.PROCESSING, uid) and sp.claim(uid) is None   # claimed once only
    partial = d / "result.partial"
    partial.mkdir()
    (partial / "candidates.csv").write_text("x\n")
    sp.publish(uid, partial)
    assert sp.results_version(uid) == 1
    with pytest.raises(SpoolError, match="version 1 already exist"):
        (d / "again").mkdir()
        sp.publish(uid, d / "again")
    sp.finish(uid, candidates=0)
    assert sp.state_of(uid) == SeriesState.DONE
    events = [e["event"] for e in json.loads((sp.dir(SeriesState.DONE, uid) / "series.json").read_text())["events"]]
    assert events == ["received", "complete", "receiving_again", "complete", "processing", "done"]

    # the instances stay until pruned, so that a late one can merge with them into a new version
    assert len(list((sp.dir(SeriesState.DONE, uid) / "instances").iterdir())) == 5
    assert sp.prune(retain_s=3600) == 0
    assert sp.prune(retain_s=0.0) == 1
    assert not (sp.dir(SeriesState.DONE, uid) / "instances").exists()
    st = sp.status()
    assert st["counts"]["done"] == 1 and st["late_instances"] == {}


def test_store_refuses_bad_uids_and_a_full_disk(tmp_path, ct_file):
    sp = Spool(tmp_path / "spool")
    with pytest.raises(SpoolError, match="refusing to store"):
        sp.store(ct_file.read_bytes(), "../../x", "1.2.3")
    assert not (tmp_path / "x").exists() and not any((tmp_path / "spool" / "received").iterdir())
    sp.min_free_mb = 1e12   # more than any disk has
    with pytest.raises(SpoolFullError, match="MiB free"):
        sp.store(ct_file.read_bytes(), "1.2.3", "1.2.3.4")


def _processing(sp, uid, files, attempts=None):
    for f in files:
        sp.store(f.read_bytes(), uid, str(_ds(f).SOPInstanceUID))
    sp.complete_quiet(0.0)
    d = sp.claim(uid)
    if attempts is not None:
        rec = json.loads((d / "series.json").read_text())
        rec["attempts"] = attempts
        (d / "series.json").write_text(json.dumps(rec))
    return d


def test_recover_requeues_finishes_or_fails_what_a_killed_service_left(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    a, b, c = "1.2.826.1", "1.2.826.2", "1.2.826.3"
    _processing(sp, a, series_pool[0][:2])                  # killed mid-detection
    d = _processing(sp, b, series_pool[1][:2])              # killed after publishing, before done
    (d / "result.partial").mkdir()
    sp.publish(b, d / "result.partial")
    _processing(sp, c, series_pool[2][:2], attempts=3)      # killed three times already
    (sp.tmp / "deadbeef.part").write_bytes(b"half")
    counts = sp.recover(max_attempts=3)
    assert counts == {"requeued": 1, "finished": 1, "failed": 1, "interrupted": 0, "tmp_removed": 1}
    assert sp.state_of(a) == SeriesState.COMPLETE and sp.queued() == [a]
    assert sp.state_of(b) == SeriesState.DONE
    assert sp.state_of(c) == SeriesState.FAILED
    assert "interrupted 3 times" in (sp.dir(SeriesState.FAILED, c) / "error.txt").read_text()
    assert (sp.dir(SeriesState.FAILED, c) / "instances").is_dir()    # kept for diagnosis
    # the requeued series counts its attempts on the next claim
    sp.claim(a)
    assert json.loads((sp.dir(SeriesState.PROCESSING, a) / "series.json").read_text())["attempts"] == 2


def test_one_service_per_spool(tmp_path):
    a, b = Spool(tmp_path / "s"), Spool(tmp_path / "s")
    a.lock()
    try:
        assert b.service_running()
        with pytest.raises(SpoolError, match="another service is running"):
            b.lock()
    finally:
        a.unlock()
    assert not b.service_running()


def test_quiet_clock_restarts_with_the_service(tmp_path, series_pool):
    """A series left half-received by a stopped service is not complete the moment it restarts."""
    import time

    sp = Spool(tmp_path / "spool")
    f = series_pool[0][0]
    sp.store(f.read_bytes(), "1.2.5", str(_ds(f).SOPInstanceUID))
    now = time.time() + 3600                                   # an hour later...
    assert sp.complete_quiet(quiet_s=10, now=now, since=now - 5) == []   # ...restarted 5 s ago
    assert sp.complete_quiet(quiet_s=10, now=now, since=now - 11) == ["1.2.5"]
