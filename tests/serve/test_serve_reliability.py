"""The service's reliability cases over real associations (issue 14): a partial series is never
published as complete and a late remainder supersedes it; a worker that fails is restarted,
reported, and instances are refused while it is down; images without PatientBirthDate get
results; idle connections cannot lock senders out; duplicates never overwrite. Every wait polls
a state with a bound; no test relies on how fast the machine is."""
from __future__ import annotations

import errno
import json
import socket
import threading

import pydicom

from noduleflow.serve.spool import SeriesState

from .conftest import SCU_AE, send, wait_for

OK, OUT_OF_RESOURCES = 0x0000, 0xA700


def _uid(f) -> str:
    return str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)


def _record(svc, uid) -> dict:
    d = svc.spool.current_dir(uid)
    return svc.spool.read_record(d) if d is not None else {}


def _without_birth_date(files, folder):
    folder.mkdir()
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PatientBirthDate
        ds.save_as(folder / f.name)
        out.append(folder / f.name)
    return out


def test_a_partial_series_waits_and_a_late_remainder_supersedes_its_results(make_service, series_pool, tmp_path):
    svc = make_service()
    files = _without_birth_date(series_pool[2], tmp_path / "nobirth")   # also: no PatientBirthDate
    uid = _uid(files[0])

    # 39 of the first 40 slices, one missing in the middle: quiet, released, yet never complete
    assert send(svc.port, files[:30] + files[31:40]) == [OK] * 39
    rec = wait_for(lambda: (lambda r: r if r.get("incomplete") else None)(_record(svc, uid)), timeout=120,
                   what="the gap to be noticed")
    assert "missing" in rec["incomplete"] and svc.spool.state_of(uid) == SeriesState.RECEIVED
    assert not svc.spool.results_dir(uid).exists()

    # the missing slice: 40 slices without a gap, processed as version 1; its headers look whole, but
    # the lungs reach its last slice (the scan's last third never came): PARTIAL, never COMPLETE
    assert send(svc.port, [files[30]]) == [OK]
    wait_for(lambda: svc.spool.results_version(uid) == 1 and svc.spool.state_of(uid) == SeriesState.DONE,
             timeout=240, what="version 1")
    res = svc.spool.results_dir(uid)
    v1 = json.loads((res / "version.json").read_text())
    assert {k: v1[k] for k in ("series_uid", "version", "complete", "instances")} == {
        "series_uid": uid, "version": 1, "complete": False, "instances": 40}
    assert "the lungs reach the last slice" in v1["coverage"]
    sr = pydicom.dcmread(res / "sr.dcm")
    assert sr.PatientBirthDate == "" and sr.CompletionFlag == "PARTIAL"
    assert "PredecessorDocumentsSequence" not in sr

    # the rest arrives after the series was processed: version 2, processed, supersedes version 1
    assert send(svc.port, files[40:]) == [OK] * 20
    wait_for(lambda: svc.spool.results_version(uid) == 2 and svc.spool.state_of(uid) == SeriesState.DONE,
             timeout=240, what="version 2")
    v2 = json.loads((res / "version.json").read_text())
    assert v2["version"] == 2 and v2["instances"] == 60 and v2["complete"] is True and "coverage" not in v2
    sr2 = pydicom.dcmread(res / "sr.dcm")
    ev = sr2.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert len(ev.ReferencedSOPSequence) == 60
    # the new SR names the one it supersedes as its predecessor
    pre = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pre.ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert json.loads((svc.spool.root / "superseded" / uid / "v1" / "version.json").read_text())["version"] == 1
    events = [e["event"] for e in _record(svc, uid)["events"]]
    assert events.count("done") == 2 and "new_version" in events and "failed" not in events
    assert not (svc.spool.root / "late" / uid).exists()


def test_a_failing_worker_is_restarted_reported_and_instances_refused_meanwhile(make_service, series_pool,
                                                                                  capsys):
    from noduleflow.commands.serve import print_status

    svc = make_service(restart_backoff_s=0.05, restart_backoff_max_s=0.2)
    disk_full = threading.Event()
    disk_full.set()
    real_claim = svc.spool.claim

    def claim(uid):   # what ENOSPC while claiming a series did: an OSError outside process()'s try
        if disk_full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_claim(uid)

    svc.spool.claim = claim
    files = series_pool[0]
    uid = _uid(files[0])
    assert send(svc.port, files) == [OK] * len(files)
    wait_for(lambda: svc.health()["worker"]["state"] == "down", timeout=120, what="the worker to fail")
    assert svc._threads["worker"].is_alive()
    st = svc.spool.status()
    assert st["running"] and st["health"]["worker"]["state"] == "down"
    assert "No space left on device" in st["health"]["worker"]["error"]
    print_status(st)
    assert "worker thread DOWN" in capsys.readouterr().out
    # while it is down, senders are told to keep their instances and retry
    assert send(svc.port, series_pool[1][:1]) == [OUT_OF_RESOURCES]
    # no image is held, but the refusal is recorded: that series cannot be reported COMPLETE until it is resent
    other = _uid(series_pool[1][0])
    assert svc.spool.state_of(other) == SeriesState.RECEIVED
    assert not any((svc.spool.current_dir(other) / "instances").iterdir())
    assert "worker is down" in next(iter(_record(svc, other)["refused"].values()))

    disk_full.clear()
    wait_for(lambda: svc.spool.state_of(uid) == SeriesState.DONE, timeout=240, what="the series after the restart")
    # "up" once the step that processed it has returned (a moment after the series shows done)
    h = wait_for(lambda: (lambda h: h if h["state"] == "up" else None)(svc.health()["worker"]), timeout=60,
                 what="the worker to be reported up")
    assert h["restarts"] == 1
    assert svc.spool.status()["health"]["worker"]["state"] == "up"
    assert send(svc.port, series_pool[1][:1]) == [OK]
    assert "refused" not in _record(svc, other)      # the resend resolved the refusal
    assert "worker thread failed" in (svc.spool.root / "serve.log").read_text()


def test_idle_connections_are_closed_and_cannot_lock_a_sender_out(make_service):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    svc = make_service(acse_timeout_s=1.0, max_associations=4)
    ae_srv = svc._scp.ae
    assert (ae_srv.acse_timeout, ae_srv.dimse_timeout, ae_srv.network_timeout) == (1.0, 30.0, 60.0)
    assert ae_srv.maximum_associations == 4 and ae_srv.require_called_aet
    idle = [socket.create_connection(("127.0.0.1", svc.port), timeout=60) for _ in range(20)]
    try:
        for s in idle:   # the service hangs up on each (recv gives b"" once the peer closed)
            while s.recv(4096):
                pass
    finally:
        for s in idle:
            s.close()
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(Verification)

    def associate():   # the hung-up connections' threads may take a moment to end and free their slots
        a = ae.associate("127.0.0.1", svc.port, ae_title="NODULEFLOW")
        return a if a.is_established else None

    assoc = wait_for(associate, timeout=60, every=0.2, what="a sender to get in")
    assert int(assoc.send_c_echo().Status) == OK
    assoc.release()


def test_an_association_to_another_called_ae_title_is_rejected(make_service):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    svc = make_service()
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="SOMEONE_ELSE")
    assert not assoc.is_established and assoc.is_rejected
    assert "called AE title is not NODULEFLOW" in (svc.spool.root / "serve.log").read_text()


def test_a_duplicate_sop_instance_uid_keeps_the_first_and_is_reported(make_service, series_pool, capsys):
    from noduleflow.commands.serve import print_status

    svc = make_service(quiet_s=3600.0, incomplete_s=3600.0)    # stays receiving: nothing to process
    f = series_pool[1][7]
    uid = _uid(f)
    other = pydicom.dcmread(f)
    other.PixelData = bytes(len(other.PixelData))
    assert send(svc.port, [f, other]) == [OK, OK]
    held = svc.spool.dir(SeriesState.RECEIVED, uid) / "instances" / f"{other.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(held).PixelData == pydicom.dcmread(f).PixelData
    rec = _record(svc, uid)
    assert rec["duplicates"] == 1
    assert [e["identical"] for e in rec["events"] if e["event"] == "duplicate"] == [False]
    st = svc.spool.status()
    assert st["series"][0]["duplicates"] == 1
    print_status(st)
    assert "1 duplicate instance(s) ignored" in capsys.readouterr().out
    assert "DIFFERENT content" in (svc.spool.root / "serve.log").read_text()
