"""One DIMSE message is capped, not only one PDU: a peer cannot grow the service's memory across
many PDUs that are each within the PDU cap. And the whole starvation scenario against a
`noduleflow serve` process of its own, whose resident memory (/proc/PID/status) is measured."""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pydicom
import pytest

from noduleflow.serve.guard import ConnectionLimits, GuardedSocket, a_abort_pdu

from .conftest import SCU_AE, send, wait_for
from .peers import MB, associate_rq, associated_socket, closed_by_peer, connect, echo, p_data_tf, rss_of

OK = 0x0000
FRAGMENT = 16000          # a PDV value that fits the service's 16382-byte maximum PDU


def _guarded(cap: int, max_pdu_bytes: int = 16382 + 1024) -> tuple[GuardedSocket, socket.socket]:
    """A guarded socket past its association request (one whole A-ASSOCIATE-RQ read through it)."""
    a, b = socket.socketpair()
    g = GuardedSocket.adopt(a, "peer", ConnectionLimits(max_pdu_bytes=max_pdu_bytes, max_message_bytes=cap))
    rq = associate_rq()
    b.sendall(rq)
    got = b""
    while len(got) < len(rq):
        got += g.recv(len(rq) - len(got))
    assert g.pdus == 1 and not g.pending
    return g, b


def _drain(g: GuardedSocket, nbytes: int, bufsize: int = 4096) -> int:
    """Read ``nbytes`` through the guard in reads of at most ``bufsize`` bytes; returns the bytes read."""
    n = 0
    while n < nbytes:
        n += len(g.recv(min(bufsize, nbytes - n)))
    return n


def _feed(g: GuardedSocket, b: socket.socket, pdus, bufsize: int = 4096) -> None:
    """Send each PDU from the peer side and read it through the guard (a reader thread would)."""
    for pdu in pdus:
        b.sendall(pdu)
        _drain(g, len(pdu), bufsize)


# -- the guard on its own (socketpair) -----------------------------------------------------------
def test_a_message_growing_across_pdus_is_aborted_at_the_cap_with_an_a_abort():
    cap = 100_000
    g, b = _guarded(cap)
    try:
        fragment = p_data_tf(b"\x00" * FRAGMENT)          # data set, never the last fragment
        _feed(g, b, [fragment] * (cap // FRAGMENT))          # 6 x 16000 = 96000: within the cap
        b.sendall(fragment)
        with pytest.raises(ConnectionAbortedError, match="DIMSE message reaches 112000 bytes.*100000-byte limit"):
            _drain(g, len(fragment))
        b.settimeout(5)
        assert b.recv(64) == a_abort_pdu(0)                  # the peer is told: A-ABORT, provider, no reason
        assert b.recv(64) == b""                             # and the connection is shut down
    finally:
        g.close()
        b.close()


def test_many_whole_messages_above_the_cap_in_total_pass():
    """The cap is per message: a C-STORE-like sequence (command, data set fragments, last one)
    repeated 20 times, 1.2 MB in all, with a 100 kB cap and reads of odd sizes that split every
    header, is never refused."""
    cap = 100_000
    g, b = _guarded(cap)
    try:
        message = [p_data_tf(b"\x01" * 200, command=True, last=True),
                   *[p_data_tf(b"\x00" * FRAGMENT)] * 3, p_data_tf(b"\x00" * 9000, last=True)]
        for _ in range(20):
            _feed(g, b, message, bufsize=7)   # 7: PDU and PDV item headers straddle reads
        assert g.pdus == 1 + 20 * len(message)
        # two PDV items in one PDU count too: the command set's and the data set's
        two = struct.pack(">LBB", 202, 1, 3) + b"\x01" * 200 + struct.pack(">LBB", 90_002, 1, 2) + b"\x00" * 90_000
        big = struct.pack(">BBL", 0x04, 0, len(two)) + two
        g2, b2 = _guarded(cap, max_pdu_bytes=200_000)
        _feed(g2, b2, [big, big])
        assert g2.pdus == 3
        g2.close()
        b2.close()
    finally:
        g.close()
        b.close()


@pytest.mark.parametrize("item,why", [
    (struct.pack(">LBB", 1, 1, 0), "PDV item length 1 is invalid"),
    (struct.pack(">LBB", 5000, 1, 0) + b"\x00" * 100, "PDV item length 5000 is invalid"),
], ids=["item-shorter-than-its-header", "item-longer-than-its-pdu"])
def test_a_malformed_pdv_item_is_aborted(item, why):
    g, b = _guarded(100_000)
    try:
        pdu = struct.pack(">BBL", 0x04, 0, len(item)) + item
        b.sendall(pdu)
        with pytest.raises(ConnectionAbortedError, match=why):
            _drain(g, len(pdu))
        b.settimeout(5)
        assert b.recv(64) == a_abort_pdu(6)    # invalid PDU parameter value
    finally:
        g.close()
        b.close()


# -- the running service ---------------------------------------------------------------------------
def _big_instance(template, rows: int, path):
    """A valid CT instance of ``rows`` x ``rows`` 16-bit pixels, written from ``template``."""
    import numpy as np

    ds = pydicom.dcmread(template)
    ds.Rows = ds.Columns = rows
    ds.PixelData = np.zeros((rows, rows), dtype=np.int16).tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_an_instance_above_the_message_cap_is_aborted_and_the_service_stays_up(make_service, series_pool, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    svc = make_service(max_message_mb=2.0)
    big = _big_instance(series_pool[0][0], 1200, tmp_path / "big.dcm")        # 2.9 MB of pixels
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="NODULEFLOW")
    assert assoc.is_established
    status = assoc.send_c_store(big)
    wait_for(lambda: not assoc.is_alive(), timeout=20, what="the association to end")
    assert assoc.is_aborted and not status        # an A-ABORT, no C-STORE response
    log = (svc.spool.root / "serve.log").read_text()
    assert "aborted connection from 127.0.0.1: DIMSE message reaches" in log and "2097152-byte limit" in log
    uid = str(pydicom.dcmread(big, stop_before_pixels=True).SeriesInstanceUID)
    assert svc.spool.state_of(uid) is None          # nothing of it was stored
    # the service is still there for instances within the cap
    assert echo(svc.port)
    assert send(svc.port, series_pool[1][:3]) == [OK] * 3


# -- a service process of its own: reachability and memory under the whole attack ----------------------
def _start_service(spool) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "noduleflow", "serve", "--spool", str(spool), "--port", "0",
                             "--no-png", "--allow-ae", SCU_AE, "--acse-timeout", "3", "--pdu-timeout", "3",
                             "--quiet-period", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    info = spool / "serve.json"

    def port():
        if proc.poll() is not None:
            raise AssertionError(f"the service exited ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        try:
            return json.loads(info.read_text()).get("port")
        except (FileNotFoundError, json.JSONDecodeError):
            return None
    return proc, wait_for(port, timeout=120, every=0.1, what="the service to listen")


def test_a_service_process_stays_reachable_and_under_1_gb_while_attacked(tmp_path, series_pool):
    """`noduleflow serve` in its own process, its memory read from /proc: 32 half-open and 32 idle
    connections held, 4 connections announcing 700 MB PDUs and pushing 64 MB each, 4 associated
    connections each pushing one DIMSE message of 48 MB in 16 kB PDUs. A real sender gets in on its
    first try meanwhile; the service's peak resident memory (VmHWM, start-up included) stays under
    1 GB and grows less than 256 MB over its idle size."""
    proc, port = _start_service(tmp_path / "spool")
    socks: list[socket.socket] = []
    try:
        idle_rss = rss_of(proc.pid)["VmRSS"]
        rq = associate_rq()
        half_open = [connect(port, "127.0.0.2") for _ in range(32)]
        idle = [connect(port, "127.0.0.3") for _ in range(32)]
        socks += half_open + idle
        for s in half_open:
            s.sendall(rq[:8])
        oversized = [connect(port, "127.0.0.4") for _ in range(4)]
        flooders = [associated_socket(port) for _ in range(4)]
        socks += oversized + flooders
        for s in oversized:
            s.sendall(struct.pack(">BBL", 0x01, 0, 700 * MB))
        pushed = [0] * 8      # bytes each attacker got into the connection before the service cut it

        def push(i, s, data, n):
            try:
                for _ in range(n):
                    s.sendall(data)
                    pushed[i] += len(data)
            except OSError:   # the service aborted it: what the test expects
                pass

        fragment = p_data_tf(b"\x00" * FRAGMENT)
        threads = [threading.Thread(target=push, args=(i, s, b"\x00" * MB, 64)) for i, s in enumerate(oversized)]
        threads += [threading.Thread(target=push, args=(4 + i, s, fragment * 64, 48)) for i, s in enumerate(flooders)]
        for t in threads:
            t.start()
        # the real sender, while all of it goes on
        t0 = time.monotonic()
        assert echo(port)
        assert send(port, series_pool[0][:5]) == [OK] * 5
        assert time.monotonic() - t0 < 20
        for t in threads:
            t.join(timeout=60)
        assert all(closed_by_peer(s, 10.0) is not None for s in oversized + flooders + half_open + idle)
        mem = rss_of(proc.pid)
        assert mem["VmHWM"] < 1024 * MB, f"peak RSS {mem['VmHWM'] / MB:.0f} MB"
        assert mem["VmHWM"] - idle_rss < 256 * MB, \
            f"peak RSS {mem['VmHWM'] / MB:.0f} MB, idle {idle_rss / MB:.0f} MB, pushed {pushed}"
        # each flooder was cut at the 32 MiB message cap (plus what the socket buffers hold), not after
        # its 49 MB; each oversized PDU at its header (what it got in is the socket buffers only)
        assert all(p < 40 * MB for p in pushed[4:]) and all(p < 16 * MB for p in pushed[:4]), pushed
        assert echo(port)
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = (tmp_path / "spool" / "serve.log").read_text()
    assert "DIMSE message reaches" in log and "announces 734003200 bytes" in log
    assert "have not sent their association request" in log
