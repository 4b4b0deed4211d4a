"""Raw peers for the service tests: hand-made PDUs on plain sockets (what a hostile or broken
peer sends), a pynetdicom C-ECHO (what a real sender does), and the resident memory of a process."""
from __future__ import annotations

import socket
import struct
import time

from .conftest import SCU_AE

OK = 0x0000
MB = 2 ** 20


def rss_bytes() -> int:
    """Resident memory of this process: the in-process service's (Linux /proc)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def associate_rq(calling: str = SCU_AE) -> bytes:
    """A whole, valid A-ASSOCIATE-RQ PDU (Verification) encoded by pynetdicom."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import Verification

    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title, prim.called_ae_title = calling, "NODULEFLOW"
    cx = build_context(Verification)
    cx.context_id = 1
    prim.presentation_context_definition_list = [cx]
    ml = MaximumLengthNotification()
    ml.maximum_length_received = 16382
    ic = ImplementationClassUIDNotification()
    ic.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    prim.user_information = [ml, ic]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(30)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def closed_by_peer(s: socket.socket, within_s: float) -> float | None:
    """Seconds until the peer closed ``s`` (EOF or reset), None if still open after ``within_s``."""
    t0 = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - t0 < within_s:
        try:
            if not s.recv(65536):
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except OSError:   # reset
            return time.monotonic() - t0
    return None


def associated_socket(port: int) -> socket.socket:
    """A raw connection with an association established (A-ASSOCIATE-AC read)."""
    s = connect(port)
    s.sendall(associate_rq())
    header = b""
    while len(header) < 6:
        header += s.recv(6 - len(header))
    assert header[0] == 0x02, f"expected an A-ASSOCIATE-AC, got PDU type 0x{header[0]:02X}"
    body = struct.unpack(">L", header[2:])[0]
    while body:
        body -= len(s.recv(body))
    return s


def echo(port: int, ae_title: str = SCU_AE) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == OK
    finally:
        assoc.release()


def p_data_tf(payload: bytes, *, context_id: int = 1, command: bool = False, last: bool = False) -> bytes:
    """A P-DATA-TF PDU with one PDV item carrying ``payload`` (a fragment of a command or data set)."""
    control = (1 if command else 0) | (2 if last else 0)
    item = struct.pack(">LBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BBL", 0x04, 0, len(item)) + item


def rss_of(pid: int) -> dict[str, int]:
    """{'VmRSS': bytes, 'VmHWM': bytes (peak)} of process ``pid`` (Linux /proc)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) * 1024
    return out
