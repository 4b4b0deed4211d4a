"""No peer can starve the service: half-sent and idle connections, oversized PDUs, symlinks in
the watched folder. Loopback only (attackers use the loopback addresses 127.0.0.2 and
127.0.0.3, the real sender 127.0.0.1); every wait is bounded."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time

import pydicom
import pytest

from noduleflow.serve.guard import ConnectionGuard, ConnectionLimits, GuardedSocket
from noduleflow.serve.spool import SeriesState

from .conftest import dcmtk, send, wait_for
from .peers import MB, associate_rq, associated_socket, closed_by_peer, connect, echo, rss_bytes

OK = 0x0000


# -- the guard on its own (socketpair) -----------------------------------------------------------
def test_a_half_sent_pdu_times_out_inside_the_pdu():
    a, b = socket.socketpair()
    g = GuardedSocket.adopt(a, "peer", ConnectionLimits(request_timeout_s=0.4, pdu_timeout_s=0.4))
    try:
        b.sendall(associate_rq()[:8])   # 8 bytes of an A-ASSOCIATE-RQ, then nothing
        assert len(g.recv(6)) == 6       # the header arrived...
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            while True:                  # ...the body never does: the read is bounded
                g.recv(4096)
        assert time.monotonic() - t0 < 2.0
    finally:
        g.close()
        b.close()


def test_an_announced_length_above_the_cap_is_refused_before_the_body_is_read():
    a, b = socket.socketpair()
    g = GuardedSocket.adopt(a, "peer", ConnectionLimits(max_request_bytes=65536, max_pdu_bytes=20000))
    try:
        b.sendall(struct.pack(">BBL", 0x01, 0, 700 * MB))
        with pytest.raises(ConnectionAbortedError, match="700 MB|734003200 bytes"):
            g.recv(6)
        # after the request, the cap is the negotiated maximum + slack
        a2, b2 = socket.socketpair()
        g2 = GuardedSocket.adopt(a2, "peer", ConnectionLimits(max_request_bytes=65536, max_pdu_bytes=20000))
        rq = associate_rq()
        b2.sendall(rq + struct.pack(">BBL", 0x04, 0, 20001))
        got = b""
        while len(got) < len(rq):
            got += g2.recv(len(rq) - len(got))
        assert not g2.pending and g2.pdus == 1
        with pytest.raises(ConnectionAbortedError, match="20001 bytes"):
            g2.recv(6)
        g2.close()
        b2.close()
    finally:
        g.close()
        b.close()


def test_the_guard_caps_pending_connections_per_address_and_sweeps_late_ones():
    guard = ConnectionGuard(ConnectionLimits(request_timeout_s=0.2, max_pending_per_host=2))
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        socks = [guard.adopt(a, ("10.0.0.1" if i < 3 else "10.0.0.2", 1000 + i)) for i, (a, _) in enumerate(pairs)]
        assert [guard.admit(s) for s in socks] == [True, True, False, True]
        assert guard.pending() == {"10.0.0.1": 2, "10.0.0.2": 1} and guard.refused == 1
        time.sleep(0.3)
        assert guard.sweep() == 3
        for _, b in pairs[:2]:   # shut down: the peer reads EOF
            b.settimeout(2)
            assert b.recv(10) == b""
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# -- the running service --------------------------------------------------------------------------
def test_32_half_open_and_32_idle_connections_do_not_keep_a_real_sender_out(make_service, series_pool):
    svc = make_service(acse_timeout_s=3.0, pdu_timeout_s=3.0)
    rq = associate_rq()
    half_open = [connect(svc.port, "127.0.0.2") for _ in range(32)]
    idle = [connect(svc.port, "127.0.0.3") for _ in range(32)]
    try:
        for s in half_open:
            s.sendall(rq[:8])
        time.sleep(0.5)   # all accepted and read from
        # a real sender gets in at once, on its first try, while they are held
        t0 = time.monotonic()
        assert echo(svc.port)
        files = series_pool[0][:5]
        assert send(svc.port, files) == [OK] * 5
        assert time.monotonic() - t0 < 20
        storescu = dcmtk("storescu")
        if storescu:
            r = subprocess.run([storescu, "-aet", "STORESCU", "-aec", "NODULEFLOW", "127.0.0.1", str(svc.port),
                                *map(str, series_pool[0][5:8])], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        # and every attacking connection is closed by the service: at once beyond the per-address
        # limit, the others at the request deadline
        closed = [closed_by_peer(s, 10.0) for s in half_open + idle]
        assert all(c is not None for c in closed), f"{sum(c is None for c in closed)} connection(s) still open"
    finally:
        for s in half_open + idle:
            s.close()
    log = (svc.spool.root / "serve.log").read_text()
    assert "refused connection from 127.0.0.2" in log and "have not sent their association request" in log


def test_half_open_connections_from_the_senders_own_address_expire(make_service):
    """No per-address limit helps when the attacker shares the sender's address: the deadline does."""
    svc = make_service(acse_timeout_s=1.5, max_associations=8)
    rq = associate_rq()
    flood = [connect(svc.port) for _ in range(16)]
    try:
        for s in flood:
            s.sendall(rq[:8])
        t0 = time.monotonic()
        wait_for(lambda: echo(svc.port), timeout=20, every=0.3, what="the sender to get in")
        assert time.monotonic() - t0 < 15
        assert all(closed_by_peer(s, 5.0) is not None for s in flood)
    finally:
        for s in flood:
            s.close()


def test_a_pdu_left_unfinished_after_association_is_cut_at_the_pdu_timeout(make_service):
    svc = make_service(pdu_timeout_s=1.0, network_timeout_s=60.0)
    s = associated_socket(svc.port)
    try:
        s.sendall(struct.pack(">BBL", 0x04, 0, 1000) + b"\x00\x00")   # 8 bytes of a P-DATA-TF, then nothing
        took = closed_by_peer(s, 10.0)
        assert took is not None and took < 5.0
    finally:
        s.close()
    assert echo(svc.port)
    assert "PDU not received whole in time" in (svc.spool.root / "serve.log").read_text()


@pytest.mark.parametrize("associated", [False, True], ids=["before-association", "after-association"])
def test_oversized_pdus_are_refused_and_memory_stays_bounded(make_service, associated):
    svc = make_service()
    before = rss_bytes()
    conns = []
    try:
        for _ in range(4):
            s = associated_socket(svc.port) if associated else connect(svc.port)
            s.sendall(struct.pack(">BBL", 0x04 if associated else 0x01, 0, 700 * MB))
            conns.append(s)
        sent = 0
        chunk = b"\x00" * MB
        for s in conns:   # push what a sender would: the service refuses at the header
            try:
                for _ in range(64):
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
        assert all(closed_by_peer(s, 10.0) is not None for s in conns)
    finally:
        for s in conns:
            s.close()
    after = rss_bytes()
    # the service runs inside this test process: what it added is the growth (a pytest worker that ran
    # other tests first already holds their models and volumes, so the absolute bound applies only
    # to a process that started small)
    assert after - before < 128 * MB, f"RSS grew by {(after - before) / MB:.0f} MB while {sent / MB:.0f} MB were sent"
    if before < 512 * MB:
        assert after < 1024 * MB, f"RSS {after / MB:.0f} MB"
    assert "above the" in (svc.spool.root / "serve.log").read_text()
    assert echo(svc.port)


# -- the watched folder ---------------------------------------------------------------------------
def test_watch_never_follows_symlinks_nor_chmods_what_it_does_not_own(make_service, series_pool, tmp_path):
    watch = tmp_path / "incoming"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    other_patient = outside / "other.dcm"
    shutil.copy(series_pool[1][0], other_patient)          # another series' file, outside the folder
    secret = outside / "secret.txt"
    secret.write_text("not dicom, not yours")
    (outside / "dir").mkdir()
    shutil.copy(series_pool[1][1], outside / "dir" / "x.dcm")
    os.chmod(other_patient, 0o644)
    os.chmod(secret, 0o644)
    watch.mkdir()
    (watch / "link.dcm").symlink_to(other_patient)
    (watch / "link.txt").symlink_to(secret)
    (watch / "linkdir").symlink_to(outside / "dir", target_is_directory=True)
    svc = make_service(network=False, watch=watch, watch_settle_s=0.2)
    files = series_pool[0]
    for f in files:
        shutil.copy(f, watch / f.name)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    wait_for(lambda: svc.spool.state_of(uid) in (SeriesState.DONE, SeriesState.FAILED), timeout=180,
             what="the dropped series")
    assert svc.spool.state_of(uid) == SeriesState.DONE
    # the links were neither followed, ingested, moved nor chmod-ed through
    other_uid = str(pydicom.dcmread(other_patient, stop_before_pixels=True).SeriesInstanceUID)
    assert svc.spool.state_of(other_uid) is None
    assert (os.stat(other_patient).st_mode & 0o777, os.stat(secret).st_mode & 0o777) == (0o644, 0o644)
    assert sorted(p.name for p in watch.iterdir()) == ["link.dcm", "link.txt", "linkdir"]
    assert (outside / "dir" / "x.dcm").exists() and secret.read_text() == "not dicom, not yours"
    assert not any((svc.spool.root / "rejected").iterdir())
    assert "a symbolic link, not a regular file: left alone" in (svc.spool.root / "serve.log").read_text()


def test_a_link_swapped_in_after_the_scan_is_not_read(make_service, tmp_path, series_pool):
    watch = tmp_path / "incoming"
    svc = make_service(network=False, watch=watch, watch_settle_s=60.0)   # the thread never takes it itself
    target = tmp_path / "target.dcm"
    shutil.copy(series_pool[2][0], target)
    os.chmod(target, 0o644)
    link = watch / "swapped.dcm"
    link.symlink_to(target)
    assert svc.ingest_file(link) is False        # O_NOFOLLOW: ELOOP, left in place
    assert link.is_symlink() and target.exists() and os.stat(target).st_mode & 0o777 == 0o644
    assert svc.spool.state_of(str(pydicom.dcmread(target, stop_before_pixels=True).SeriesInstanceUID)) is None
