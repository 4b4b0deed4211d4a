"""The service with real DICOM peers on loopback: pynetdicom and dcmtk as clients, bad input,
allow-lists, folder watch, SR forwarding. Every wait is bounded."""
from __future__ import annotations

import csv
import json
import subprocess
import threading

import pydicom
import pytest

from noduleflow.serve.spool import SeriesState
from noduleflow.serve.sr import read_sr_points

from .conftest import SCU_AE, dcmtk, send, wait_for

OK, MISMATCH = 0x0000, 0xA900


def _uid(files):
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _finished(svc, uid, state=SeriesState.DONE):
    return wait_for(lambda: svc.spool.state_of(uid) in (SeriesState.DONE, SeriesState.FAILED) and
                    svc.spool.state_of(uid), timeout=180, what=f"series {uid} to finish") == state


def test_pynetdicom_echo_and_store_give_csv_json_and_sr(make_service, series_pool):
    """Under a umask of 0: every folder the service makes is 0700 and every file 0600."""
    import os
    import stat

    old = os.umask(0o000)
    try:
        svc = make_service(png=True)
        _echo_and_store(svc, series_pool)
    finally:
        os.umask(old)
    root = svc.spool.root
    modes = {p: stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}
    wrong = {str(p.relative_to(root)): oct(m) for p, m in modes.items() if m != (0o700 if p.is_dir() else 0o600)}
    assert not wrong, wrong
    names = {p.name for p in modes}
    assert {"serve.log", "serve.json", "serve.lock", "sr.dcm", "candidates.csv", "series.json"} <= names
    assert any(n.endswith(".png") for n in names) and any(n.endswith(".dcm") and n != "sr.dcm" for n in names)


def _echo_and_store(svc, series_pool):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="NODULEFLOW")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == OK
    assoc.release()

    files = series_pool[0]
    assert send(svc.port, files) == [OK] * len(files)
    uid = _uid(files)
    assert _finished(svc, uid)
    res = svc.spool.results_dir(uid)
    assert sorted(p.name for p in res.iterdir()) == sorted([f"{uid}.json", f"{uid}.png", "candidates.csv",
                                                               "sr.dcm", "version.json"])
    det = json.loads((res / f"{uid}.json").read_text())
    rows = list(csv.DictReader(open(res / "candidates.csv")))
    assert len(rows) == len(det["candidates"]) > 0 and {r["seriesuid"] for r in rows} == {uid}
    points = read_sr_points(res / "sr.dcm")
    assert [p[1] for p in points] == pytest.approx([c["prob"] for c in det["candidates"]], abs=1e-6)
    assert points[0][0] == pytest.approx(det["candidates"][0]["center_xyz_mm"], abs=1e-4)
    rec = json.loads((svc.spool.dir(SeriesState.DONE, uid) / "series.json").read_text())
    assert [e["event"] for e in rec["events"]] == \
        ["received", "transfer_started", "transfer_released", "complete", "processing", "done"]
    assert rec["receiving"] is False and rec["interrupted"] is False
    assert pydicom.dcmread(res / "sr.dcm", stop_before_pixels=True).CompletionFlag == "COMPLETE"
    assert rec["instances"] == len(files) and rec["timings_s"]["total"] > 0
    log = (svc.spool.root / "serve.log").read_text()
    assert f"series {uid} done" in log and f"series {uid} received" in log


def test_dcmtk_storescu_and_echoscu(make_service, series_pool):
    storescu, echoscu = dcmtk("storescu"), dcmtk("echoscu")
    if not storescu or not echoscu:
        pytest.skip("dcmtk (storescu, echoscu) not installed: apt-get install dcmtk")
    svc = make_service()
    r = subprocess.run([echoscu, "-aet", "ECHOSCU", "-aec", "NODULEFLOW", "127.0.0.1", str(svc.port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    files = series_pool[1]
    r = subprocess.run([storescu, "-aet", "STORESCU", "-aec", "NODULEFLOW", "127.0.0.1", str(svc.port),
                        *map(str, files)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    uid = _uid(files)
    assert _finished(svc, uid)
    assert (svc.spool.results_dir(uid) / "sr.dcm").is_file()
    # an AE title not on the list: dcmtk reports the association rejection
    r = subprocess.run([echoscu, "-aet", "INTRUDER", "-aec", "NODULEFLOW", "127.0.0.1", str(svc.port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "reject" in (r.stdout + r.stderr).lower()


def test_bad_input_is_refused_or_failed_with_a_reason_and_service_keeps_serving(make_service, series_pool,
                                                                                  tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

    svc = make_service()
    good = series_pool[2]

    # 1. an AE title not on the allow-list: rejected at association
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="NODULEFLOW")
    assert not assoc.is_established and assoc.is_rejected

    # 2. a non-CT SOP class: its presentation context is refused
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="NODULEFLOW")
    assert assoc.is_established
    assert {cx.abstract_syntax for cx in assoc.accepted_contexts} == {CTImageStorage}
    assoc.release()

    def variant(i, edit):
        ds = pydicom.dcmread(good[i])
        edit(ds)
        return ds

    # 3. CT Image Storage that says it is MR, 4. truncated pixel data, 5. a path for a series UID
    mr = variant(3, lambda ds: setattr(ds, "Modality", "MR"))
    short = variant(4, lambda ds: setattr(ds, "PixelData", ds.PixelData[:1000]))
    path_uid = variant(5, lambda ds: setattr(ds, "SeriesInstanceUID", "../../x"))
    statuses = send(svc.port, [mr, short, path_uid])
    assert statuses == [MISMATCH] * 3
    assert not (svc.spool.root.parent / "x").exists() and not (svc.spool.root / "x").exists()
    # nothing stored; the two refusals with a valid series UID are recorded in that series (it
    # cannot be COMPLETE until they are resent)
    assert not any((svc.spool.root / "received").glob("*/instances/*"))
    refused = svc.spool.read_record(svc.spool.current_dir(_uid(good)))["refused"]
    assert sorted(refused) == sorted(str(pydicom.dcmread(good[i], stop_before_pixels=True).SOPInstanceUID)
                                     for i in (3, 4))
    log = (svc.spool.root / "serve.log").read_text()
    assert "modality 'MR' is not CT" in log and "truncated" in log and "'../../x' is not a valid DICOM UID" in log
    assert "INTRUDER" in log and "rejected" in log

    # 6. a truncated file sent by dcmtk's storescu: refused at the client or the service, never spooled
    storescu = dcmtk("storescu")
    if storescu:
        cut = tmp_path / "cut.dcm"
        cut.write_bytes(good[6].read_bytes()[:-7000])
        subprocess.run([storescu, "-aet", "STORESCU", "-aec", "NODULEFLOW", "127.0.0.1", str(svc.port),
                        str(cut)], capture_output=True, text=True, timeout=60)
        assert not any((svc.spool.root / "received").glob("*/instances/*"))

    # ...and the service still serves: echo, and a good series completes
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="NODULEFLOW")
    assert int(assoc.send_c_echo().Status) == OK
    assoc.release()
    assert send(svc.port, good) == [OK] * len(good)
    assert _finished(svc, _uid(good))


def test_host_allow_list_closes_other_peers(make_service):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    svc = make_service(allow_hosts=("10.9.9.0/24",))
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="NODULEFLOW")
    assert not assoc.is_established
    assert "refused connection from 127.0.0.1" in (svc.spool.root / "serve.log").read_text()


def test_second_service_on_the_same_spool_is_refused(make_service):
    from noduleflow.serve.spool import SpoolError

    make_service()
    with pytest.raises(SpoolError, match="another service is running"):
        make_service()


def test_watch_folder_takes_dropped_series_and_sets_bad_files_aside(make_service, series_pool, tmp_path):
    import shutil

    watch = tmp_path / "incoming"
    svc = make_service(network=False, watch=watch, watch_settle_s=0.2)
    files = series_pool[0]
    (watch / "study" / "a").mkdir(parents=True)
    for f in files:
        shutil.copy(f, watch / "study" / "a" / f.name)
    (watch / "notes.txt").write_text("not dicom")
    (watch / ".partial_upload").write_bytes(b"x")
    uid = _uid(files)
    assert _finished(svc, uid)
    assert sorted(p.name for p in watch.rglob("*") if p.is_file()) == [".partial_upload"]
    rejected = sorted(p.name for p in (svc.spool.root / "rejected").iterdir())
    assert len(rejected) == 2 and rejected[0].endswith("notes.txt")
    assert "notes.txt" in (svc.spool.root / "rejected" / rejected[1]).read_text()
    assert {(svc.spool.root / "rejected" / r).stat().st_mode & 0o777 for r in rejected} == {0o600}


def test_sr_is_forwarded_to_a_storage_scp_and_failures_are_recorded(make_service, series_pool, tmp_path):
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage

    got = []
    lock = threading.Lock()

    def on_store(event):
        with lock:
            got.append(event.dataset)
        return 0x0000

    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(Comprehensive3DSRStorage)
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        svc = make_service(forward=f"PACS@127.0.0.1:{server.server_address[1]}")
        files = series_pool[1]
        assert send(svc.port, files) == [OK] * len(files)
        uid = _uid(files)
        assert _finished(svc, uid)
        wait_for(lambda: svc.spool.read_record(svc.spool.dir(SeriesState.DONE, uid)).get("forwarded"),
                 timeout=60, what="the SR to be forwarded")
        assert len(got) == 1 and got[0].SOPClassUID == Comprehensive3DSRStorage
        ev = got[0].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert ev.SeriesInstanceUID == uid
    finally:
        server.shutdown()
        svc.stop()

    # destination down: bounded retries, the failure recorded, the series stays done
    svc = make_service(spool=tmp_path / "spool2", forward="PACS@127.0.0.1:9", forward_retries=2,
                       forward_backoff_s=0.1)
    files = series_pool[2]
    send(svc.port, files)
    uid = _uid(files)
    assert _finished(svc, uid)
    rec = wait_for(lambda: (lambda r: r if "forward_error" in r else None)(
        svc.spool.read_record(svc.spool.dir(SeriesState.DONE, uid))), timeout=60, what="forwarding to give up")
    assert rec["forwarded"] is False and "unreachable" in rec["forward_error"]
    assert sum(e["event"] == "forward_failed" for e in rec["events"]) == 1
