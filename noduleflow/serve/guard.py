"""Connection limits below pynetdicom: no peer can hold the service with a PDU it never finishes.

pynetdicom reads a PDU with blocking ``recv`` calls once ``select`` says a byte is there: its
ACSE, DIMSE and network timeouts are checked between PDUs, by a reactor that is stuck in that
``recv`` while a PDU is half sent. Sixteen connections that sent the first 8 bytes of an
A-ASSOCIATE-RQ and then nothing thus kept every sender out for as long as they stayed open;
and a PDU header claiming 700 MB made it buffer whatever followed, unchecked.

So every accepted connection is a `GuardedSocket`, which follows the PDU framing (6-byte
header: type, reserved, 32-bit length) of the bytes it hands to pynetdicom and, on every read:

- gives the PDU a deadline: the first PDU (the A-ASSOCIATE-RQ) must be whole within
  ``request_timeout_s`` of the connection being accepted, every later PDU within
  ``pdu_timeout_s`` of its first byte; a read past it raises `TimeoutError` (pynetdicom then
  closes the connection, as for a connection lost);
- checks the announced length before a byte of the body is read: above ``max_request_bytes``
  for the first PDU, or above the negotiated maximum plus slack for the others, the
  connection is aborted;
- follows the PDV items of every P-DATA-TF PDU and sums the fragments of the DIMSE message
  they carry (its command set and its data set, each from its first fragment to the one
  flagged last): above ``max_message_bytes`` the connection is aborted. pynetdicom gathers a
  message's fragments in memory (`DIMSEMessage.decode_msg`: a ``BytesIO``; it has no size
  limit nor a hook for one), so without this cap a peer could grow the process without bound
  across many PDUs each within the PDU cap.

Aborting is: a log line saying why, an A-ABORT PDU (source: service provider) sent to the peer,
the connection shut down both ways and `ConnectionAbortedError` raised to pynetdicom, which
then closes the association as a lost connection (its series is marked interrupted). Memory
per connection is thus bounded by the caps, before and after association: at most one PDU
header, one PDU being read and ``max_message_bytes`` of message held by pynetdicom.

`ConnectionGuard` keeps the connections that have not yet delivered their A-ASSOCIATE-RQ
("unauthenticated": nobody has said who they are), refuses a new one from an address that
already has ``max_pending_per_host`` of them, and shuts down any still pending past the
request deadline (pynetdicom's ARTIM timer covers a connection that sends nothing; this
covers one whose reader is blocked). Standard library only.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("noduleflow.serve")

#: PDU header: type (1 byte), reserved (1), length of what follows (4, big endian)
HEADER_BYTES = 6
#: Room above the negotiated maximum PDU length (that counts the PDVs only) for the PDV item headers.
PDU_SLACK_BYTES = 1024
#: PDV item header: item length (4 bytes, big endian, counting what follows), presentation
#: context ID (1), message control header (1: bit 0 command/data set, bit 1 last fragment)
PDV_HEADER_BYTES = 6
P_DATA_TF = 0x04
#: A-ABORT PDU reasons (PS3.8 9.3.8, source 2 = service provider)
ABORT_NOT_SPECIFIED = 0x00
ABORT_INVALID_PARAMETER = 0x06


def a_abort_pdu(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider (source 2) with ``reason`` (10 bytes)."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 2, reason)


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits (seconds, bytes)."""
    request_timeout_s: float = 5.0        # accept -> whole A-ASSOCIATE-RQ
    pdu_timeout_s: float = 10.0           # first byte -> last byte of any later PDU
    max_request_bytes: int = 65536        # the A-ASSOCIATE-RQ (128 presentation contexts fit in ~20 kB)
    max_pdu_bytes: int = 16382 + PDU_SLACK_BYTES   # every later PDU
    max_pending_per_host: int = 4         # connections per address that have not sent their request
    max_message_bytes: int = 32 * 2 ** 20  # one DIMSE message: the P-DATA fragments of its command + data set


class GuardedSocket(socket.socket):
    """An accepted TCP connection that enforces `ConnectionLimits` on every ``recv``.

    It follows the PDU framing of the stream it returns, so it knows where each PDU starts
    (its deadline) and what length its header announces (its cap)."""

    limits: ConnectionLimits
    peer: str

    @classmethod
    def adopt(cls, sock: socket.socket, peer: str, limits: ConnectionLimits) -> GuardedSocket:
        """Take over ``sock``'s file descriptor (``sock`` is detached)."""
        g = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        g.limits, g.peer = limits, peer
        g.accepted = time.monotonic()
        g.pdus = 0                # PDUs received whole
        g._header = b""
        g._left = 0               # bytes of the current PDU body still to come
        g._type = 0               # the current PDU's type
        g._item = b""             # a PDV item header being read
        g._item_left = 0          # bytes of the current PDV item's value still to come
        g._message = [0, 0]       # bytes of the DIMSE message being received: [data set, command set]
        g._deadline = g.accepted + limits.request_timeout_s
        g.settimeout(limits.pdu_timeout_s)   # sends too: a peer that never reads cannot block a thread
        return g

    @property
    def pending(self) -> bool:
        """True until the A-ASSOCIATE-RQ has arrived whole (and while the socket is open)."""
        return self.pdus == 0 and self.fileno() != -1

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        now = time.monotonic()
        if self.pdus and not self._left and not self._header:   # a new PDU starts with this read
            self._deadline = now + self.limits.pdu_timeout_s
        remaining = self._deadline - now
        if remaining <= 0:
            self._give_up(f"{'association request' if not self.pdus else 'PDU'} not received whole in time "
                          f"({self._timeout_s():.0f} s)")
            raise TimeoutError(f"PDU from {self.peer} not received whole within {self._timeout_s():.0f} s")
        self.settimeout(remaining)
        try:
            data = super().recv(bufsize, flags)
        except TimeoutError:
            self._give_up(f"{'association request' if not self.pdus else 'PDU'} not received whole in time "
                          f"({self._timeout_s():.0f} s)")
            raise
        finally:
            self.settimeout(self.limits.pdu_timeout_s)   # what sends wait at most, not what this read had left
        self._follow(data)
        return data

    def _timeout_s(self) -> float:
        return self.limits.pdu_timeout_s if self.pdus else self.limits.request_timeout_s

    def _follow(self, data: bytes) -> None:
        """Advance the PDU framing over ``data``; refuse an announced length above the cap."""
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                if self._type == P_DATA_TF and self.pdus:
                    self._follow_pdv(data, i, take)
                self._left -= take
                i += take
                if not self._left:
                    self._end_pdu()
                continue
            take = min(HEADER_BYTES - len(self._header), n - i)
            self._header += data[i:i + take]
            i += take
            if len(self._header) < HEADER_BYTES:
                continue
            pdu_type, _, length = struct.unpack(">BBL", self._header)
            self._header = b""
            cap = self.limits.max_pdu_bytes if self.pdus else self.limits.max_request_bytes
            if length > cap:
                self._abort(f"PDU type 0x{pdu_type:02X} announces {length} bytes, above the {cap}-byte limit "
                            f"{'for an association request' if not self.pdus else '(negotiated maximum + slack)'}",
                            ABORT_INVALID_PARAMETER)
            self._type, self._left = pdu_type, length
            if not length:
                self._end_pdu()

    def _end_pdu(self) -> None:
        self.pdus += 1
        if self._item:
            self._abort(f"P-DATA-TF PDU ends inside a PDV item header ({len(self._item)} of "
                        f"{PDV_HEADER_BYTES} bytes)", ABORT_INVALID_PARAMETER)

    def _follow_pdv(self, data: bytes, start: int, size: int) -> None:
        """Follow the PDV items in ``data[start:start + size]`` (part of a P-DATA-TF body, of which
        ``self._left`` bytes, these included, are still to come) and count the message's bytes."""
        j, end = start, start + size
        while j < end:
            if self._item_left:
                take = min(self._item_left, end - j)
                self._item_left -= take
                j += take
                continue
            take = min(PDV_HEADER_BYTES - len(self._item), end - j)
            self._item += data[j:j + take]
            j += take
            if len(self._item) < PDV_HEADER_BYTES:
                continue
            length, _context, control = struct.unpack(">LBB", self._item)
            self._item = b""
            in_pdu = self._left - (j - start)      # bytes of this PDU after the item header
            if length < 2 or length - 2 > in_pdu:
                self._abort(f"PDV item length {length} is invalid (2 to {in_pdu + 2} bytes fit in its P-DATA-TF "
                            f"PDU)", ABORT_INVALID_PARAMETER)
            part = control & 1                     # 1: command set, 0: data set
            self._message[part] += length - 2
            total = sum(self._message)
            if total > self.limits.max_message_bytes:
                self._abort(f"DIMSE message reaches {total} bytes of P-DATA fragments, above the "
                            f"{self.limits.max_message_bytes}-byte limit for one message", ABORT_NOT_SPECIFIED)
            if control & 2:                        # its last fragment: the next one starts a new one
                self._message[part] = 0
            self._item_left = length - 2

    def _abort(self, why: str, reason: int) -> None:
        """Send an A-ABORT, shut the connection down, raise `ConnectionAbortedError`."""
        log.warning("aborted connection from %s: %s", self.peer, why)
        try:
            self.settimeout(1.0)
            super().sendall(a_abort_pdu(reason))
        except OSError:   # the peer is gone or not reading: shutting down is what matters
            pass
        self.cut()
        raise ConnectionAbortedError(f"{self.peer}: {why}")

    def _give_up(self, why: str) -> None:
        log.warning("closed connection from %s: %s", self.peer, why)
        self.cut()

    def cut(self) -> None:
        """Shut the connection down both ways (a thread blocked in ``recv`` on it returns)."""
        try:
            self.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class ConnectionGuard:
    """The connections accepted and not yet past their A-ASSOCIATE-RQ, per peer address."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._pending: list[GuardedSocket] = []
        self._lock = threading.Lock()
        self.refused = 0

    def adopt(self, sock: socket.socket, address) -> GuardedSocket:
        return GuardedSocket.adopt(sock, str(address[0]), self.limits)

    def admit(self, sock: GuardedSocket) -> bool:
        """Whether ``sock`` may be served: its address has fewer than ``max_pending_per_host``
        connections still pending. Called before any PDU is read."""
        with self._lock:
            self._pending = [s for s in self._pending if s.pending]
            n = sum(1 for s in self._pending if s.peer == sock.peer)
            if n >= self.limits.max_pending_per_host:
                self.refused += 1
                ok = False
            else:
                self._pending.append(sock)
                ok = True
        if not ok:
            log.warning("refused connection from %s: %d connection(s) from it have not sent their association "
                        "request yet (limit %d)", sock.peer, n, self.limits.max_pending_per_host)
        return ok

    def sweep(self) -> int:
        """Shut down connections still pending past their request deadline; returns how many."""
        now = time.monotonic()
        with self._lock:
            late = [s for s in self._pending if s.pending and now - s.accepted > self.limits.request_timeout_s]
            self._pending = [s for s in self._pending if s.pending and s not in late]
        for s in late:
            log.warning("closed connection from %s: no association request within %.0f s", s.peer,
                        self.limits.request_timeout_s)
            s.cut()
        return len(late)

    def pending(self) -> dict[str, int]:
        """{address: connections still pending}"""
        with self._lock:
            out: dict[str, int] = {}
            for s in self._pending:
                if s.pending:
                    out[s.peer] = out.get(s.peer, 0) + 1
            return out


__all__ = ["ConnectionGuard", "ConnectionLimits", "GuardedSocket", "HEADER_BYTES", "PDU_SLACK_BYTES",
           "a_abort_pdu"]
