"""One patient, one study, one frame of reference per series; Type 1 attributes refused at
C-STORE; completeness the service can vouch for (a refused or missing instance is never
COMPLETE). Spool-level tests pass the time in (``now``); the service tests use loopback."""
from __future__ import annotations

import json
import shutil
import time

import pydicom
import pytest

from noduleflow.commands.serve import print_status
from noduleflow.serve.completeness import check_series
from noduleflow.serve.spool import SeriesState, Spool, SpoolError, validate_instance

from .test_spool_series import NOW, _record, _sop, _store, _uid

OK, OUT_OF_RESOURCES, MISMATCH = 0x0000, 0xA700, 0xA900


def _edited(files, folder, index, **attrs):
    """Copies of ``files`` into ``folder``; those at ``index`` (a slice) get ``attrs``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(files):
        dest = folder / f.name
        if i in index:
            ds = pydicom.dcmread(f)
            for k, v in attrs.items():
                if v is None:
                    delattr(ds, k)
                else:
                    setattr(ds, k, v)
            ds.save_as(dest)
        else:
            shutil.copy(f, dest)
        out.append(dest)
    return out


# -- identity at completion ------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("PatientID", "OTHER-PATIENT"),
                                       ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1"),
                                       ("FrameOfReferenceUID", "1.2.826.0.1.3680043.8.498.2")])
def test_a_series_mixing_patients_studies_or_frames_is_refused_before_processing(tmp_path, series_pool, key,
                                                                                 value, capsys):
    files = _edited(series_pool[0], tmp_path / "mixed", set(range(0, 60, 2)), **{key: value})
    sp = Spool(tmp_path / "spool")
    _store(sp, files)
    uid = _uid(files[0])
    assert sp.complete_quiet(1.0, now=NOW) == []
    assert sp.state_of(uid) == SeriesState.FAILED
    rec = _record(sp, uid)
    assert rec["identity"].startswith(f"{key} differs across the series") and "30 file(s)" in rec["identity"]
    assert "identity_refused" in [e["event"] for e in rec["events"]]
    assert (sp.dir(SeriesState.FAILED, uid) / "error.txt").read_text().startswith(f"identity: {key} differs")
    # --status carries the reason, in the table and in JSON
    st = sp.status()
    (row,) = [s for s in st["series"] if s["series_uid"] == uid]
    assert row["state"] == "failed" and row["identity"].startswith(key) and key in row["error"]
    print_status(st)
    out = capsys.readouterr().out
    assert f"identity: {key} differs across the series" in out


def test_a_consistent_series_records_its_identity_check(tmp_path, series_pool):
    sp = Spool(tmp_path / "spool")
    _store(sp, series_pool[1])
    uid = _uid(series_pool[1][0])
    assert sp.complete_quiet(1.0, now=NOW) == [uid]
    rec = _record(sp, uid)
    assert rec["identity"] == "consistent" and rec["complete"] is True


def test_a_frame_of_reference_per_instance_is_a_deidentification_artefact_not_a_mix(tmp_path, series_pool):
    # every slice of LIDC-IDRI has its own FrameOfReferenceUID: two frames mixed look different
    folder = tmp_path / "perslice"
    folder.mkdir()
    for i, f in enumerate(series_pool[2]):
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = f"1.2.826.0.1.3680043.8.498.77.{i + 1}"
        ds.save_as(folder / f.name)
    c = check_series(folder)
    assert c.complete and not c.identity


# -- Type 1 attributes at reception ----------------------------------------------------------------
@pytest.mark.parametrize("key", ["FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
                                 "PixelSpacing"])
def test_validate_instance_refuses_a_missing_type1_attribute(series_pool, key):
    ds = pydicom.dcmread(series_pool[0][0])
    delattr(ds, key)
    with pytest.raises(SpoolError, match=f"^{key} missing or invalid"):
        validate_instance(ds)


def test_validate_instance_refuses_a_zero_pixel_spacing(series_pool):
    ds = pydicom.dcmread(series_pool[0][0])
    ds.PixelSpacing = ["0", "0.7"]
    with pytest.raises(SpoolError, match="PixelSpacing missing or invalid"):
        validate_instance(ds)


def _store_statuses(port, datasets):
    """C-STORE each data set; returns (status, ErrorComment) per data set."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="NFTEST")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established
    try:
        out = []
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            out.append((int(rsp.Status), str(rsp.get("ErrorComment", ""))))
        return out
    finally:
        assoc.release()


def test_a_missing_frame_of_reference_is_refused_at_c_store_with_the_reason(make_service, series_pool, capsys):
    svc = make_service(incomplete_s=600.0)
    files = series_pool[0]
    bad = pydicom.dcmread(files[7])
    del bad.FrameOfReferenceUID
    good = [pydicom.dcmread(f) for f in files[:7]]
    got = _store_statuses(svc.port, [*good, bad])
    assert got[:7] == [(OK, "")] * 7
    status, comment = got[7]
    assert status == MISMATCH and comment.startswith("FrameOfReferenceUID missing") and len(comment) <= 64
    uid = _uid(files[0])
    rec = svc.spool.read_record(svc.spool.current_dir(uid))
    assert list(rec["refused"]) == [str(bad.SOPInstanceUID)] and "FrameOfReferenceUID" in rec["refused"][
        str(bad.SOPInstanceUID)]
    assert not (svc.spool.current_dir(uid) / "instances" / f"{bad.SOPInstanceUID}.dcm").exists()
    print_status(svc.spool.status())
    assert "1 instance(s) refused" in capsys.readouterr().out


def _quiet_now() -> float:
    """A moment when the series just stored is quiet (idle past the 1 s quiet time) but still within
    its 600 s incomplete wait: measured from now, not from when the test module was imported (a full
    suite can run for longer than that wait before reaching these tests)."""
    return time.time() + 5.0


# -- completeness the service can vouch for --------------------------------------------------------
def test_a_refused_instance_keeps_a_series_from_complete_until_it_arrives(tmp_path, series_pool):
    files = series_pool[1]
    uid = _uid(files[0])
    sp = Spool(tmp_path / "spool")
    _store(sp, files[:-1])
    sp.refuse(uid, _sop(files[-1]), "0xA700 spool below its free-space minimum")
    assert sp.complete_quiet(1.0, now=_quiet_now(), incomplete_s=600.0) == []   # waits for the resend
    rec = _record(sp, uid)
    assert "1 instance(s) refused" in rec["incomplete"] and sp.state_of(uid) == SeriesState.RECEIVED
    _store(sp, files[-1:])                       # the resend: the refusal is resolved
    assert "refused" not in _record(sp, uid)
    assert sp.complete_quiet(1.0, now=NOW) == [uid] and _record(sp, uid)["complete"] is True


def test_a_refused_tail_never_resent_is_processed_as_partial_not_complete(tmp_path, series_pool):
    files = series_pool[1]
    uid = _uid(files[0])
    sp = Spool(tmp_path / "spool")
    _store(sp, files[:40])
    for f in files[40:]:
        sp.refuse(uid, _sop(f), "0xA700 spool below its free-space minimum")
    assert sp.complete_quiet(1.0, now=_quiet_now(), incomplete_s=600.0) == []
    assert sp.complete_quiet(1.0, now=NOW, incomplete_s=600.0) == [uid]     # after the wait: PARTIAL
    rec = _record(sp, uid)
    assert rec["complete"] is False and len(rec["refused"]) == 20
    assert "20 instance(s) refused" in rec["events"][-1]["reason"]


def test_a_gap_is_never_complete(tmp_path, series_pool):
    files = series_pool[2]
    uid = _uid(files[0])
    sp = Spool(tmp_path / "spool")
    _store(sp, files[:25] + files[26:])
    assert sp.complete_quiet(1.0, now=_quiet_now(), incomplete_s=600.0) == []
    assert "slice(s) missing" in _record(sp, uid)["incomplete"]
    assert sp.complete_quiet(1.0, now=NOW, incomplete_s=600.0) == []          # after the wait: failed
    assert sp.state_of(uid) == SeriesState.FAILED and "complete" not in _record(sp, uid)
    # odd slices only: evenly spaced at twice the spacing, but InstanceNumbers have holes
    sp2 = Spool(tmp_path / "spool2")
    _store(sp2, files[::2])
    assert sp2.complete_quiet(1.0, now=_quiet_now(), incomplete_s=600.0) == []
    assert "InstanceNumber" in _record(sp2, uid)["incomplete"]
    assert sp2.complete_quiet(1.0, now=NOW, incomplete_s=600.0) == [uid]
    assert _record(sp2, uid)["complete"] is False


def test_a_tail_refused_for_low_disk_gives_a_partial_sr(make_service, series_pool):
    """End to end: the service itself refuses the tail (0xA700, low disk); the SR says PARTIAL."""
    files = series_pool[2]
    uid = _uid(files[0])
    svc = make_service(incomplete_s=2.0)
    real_min = svc.spool.min_free_mb
    from .conftest import send, wait_for

    assert send(svc.port, files[:40]) == [OK] * 40
    svc.spool.min_free_mb = 1e12                 # the disk "fills up"
    assert send(svc.port, files[40:]) == [OUT_OF_RESOURCES] * 20
    svc.spool.min_free_mb = real_min
    wait_for(lambda: svc.spool.state_of(uid) in (SeriesState.DONE, SeriesState.FAILED), timeout=120,
             what="the series to be processed")
    res = svc.spool.results_dir(uid)
    version = json.loads((res / "version.json").read_text())
    assert version["complete"] is False and version["instances"] == 40
    assert pydicom.dcmread(res / "sr.dcm", stop_before_pixels=True).CompletionFlag == "PARTIAL"
    st = svc.spool.status()
    (row,) = [s for s in st["series"] if s["series_uid"] == uid]
    assert row["complete"] is False and len(row["refused"]) == 20
