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
  connection is shut down (`ConnectionAbortedError`). Memory per connection is thus bounded
  by the cap, before and after association.

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


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits (seconds, bytes)."""
    request_timeout_s: float = 5.0        # accept -> whole A-ASSOCIATE-RQ
    pdu_timeout_s: float = 10.0           # first byte -> last byte of any later PDU
    max_request_bytes: int = 65536        # the A-ASSOCIATE-RQ (128 presentation contexts fit in ~20 kB)
    max_pdu_bytes: int = 16382 + PDU_SLACK_BYTES   # every later PDU
    max_pending_per_host: int = 4         # connections per address that have not sent their request


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
                self._left -= take
                i += take
                if not self._left:
                    self.pdus += 1
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
                why = (f"PDU type 0x{pdu_type:02X} announces {length} bytes, above the {cap}-byte limit "
                       f"{'for an association request' if not self.pdus else '(negotiated maximum + slack)'}")
                self._give_up(why)
                raise ConnectionAbortedError(f"{self.peer}: {why}")
            self._left = length
            if not length:
                self.pdus += 1

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


__all__ = ["ConnectionGuard", "ConnectionLimits", "GuardedSocket", "HEADER_BYTES", "PDU_SLACK_BYTES"]
