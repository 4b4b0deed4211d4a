"""The DICOM side of `Service`: a Storage SCP (C-STORE of CT images, C-ECHO) on pynetdicom.

Who may talk to it: peers in ``--allow-host`` (closed before any PDU is read), calling AE
titles in ``--allow-ae``, and only associations addressed to this service's own AE title.
Network limits: at most ``max_associations`` connections at once, and every connection
counts, including one that has not yet sent its A-ASSOCIATE-RQ; so a connection that sends
nothing is closed after ``acse_timeout_s`` (pynetdicom's default is 30 s: 20 idle sockets
then locked a real sender out for that long), an association silent for ``network_timeout_s``
is aborted, and a DIMSE exchange waits at most ``dimse_timeout_s``.

Below pynetdicom, every connection is a `guard.GuardedSocket`: a PDU must arrive whole in
time and no larger than the negotiated maximum (the association request: within
``acse_timeout_s`` of connecting, at most 64 kB), one DIMSE message (an instance: the sum of
its P-DATA fragments across PDUs) is at most ``max_message_mb`` (else an A-ABORT and a log
line), and an address may have at most ``max_pending_per_host`` connections that have not yet
sent their association request.

A refused instance is answered with its failure status and an ErrorComment saying why, and
recorded in its series (`Spool.refuse`), which then cannot be reported complete until the
instance arrives.

Every association that stores instances is followed to its end: released normally, the
series it carried may complete after the quiet period; aborted or cut off, they are marked
interrupted (`Spool.transfer`) and wait for a resend instead.
"""
from __future__ import annotations

import ipaddress
import logging
import socketserver
import threading

from .guard import PDU_SLACK_BYTES, ConnectionGuard, ConnectionLimits
from .spool import SpoolError, SpoolFullError, valid_uid, validate_instance

log = logging.getLogger("noduleflow.serve")

# DIMSE C-STORE statuses (PS3.4 B.2.3)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
CT_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]
MAX_PDU_BYTES = 16382   # the maximum PDU length this service announces (pynetdicom's default)


class StorageSCP:
    """Owns the association server; ``accepting()`` says whether instances may be taken now
    (False while the worker is down: instances are then refused as out of resources)."""

    def __init__(self, cfg, spool, accepting) -> None:
        self.cfg, self.spool, self.accepting = cfg, spool, accepting
        self.server = None
        self.port: int | None = None
        self._open: dict[int, set[str]] = {}    # id(association) -> series it stored into
        self._lock = threading.Lock()
        self.guard = ConnectionGuard(ConnectionLimits(
            request_timeout_s=cfg.acse_timeout_s, pdu_timeout_s=cfg.pdu_timeout_s,
            max_pdu_bytes=MAX_PDU_BYTES + PDU_SLACK_BYTES, max_pending_per_host=cfg.max_pending_per_host,
            max_message_bytes=int(cfg.max_message_mb * 2 ** 20)))

    def receiving(self) -> set[str]:
        """Series with an association that stored into them still open."""
        with self._lock:
            return set().union(*self._open.values()) if self._open else set()

    def start(self, networks) -> int:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import CTImageStorage, Verification
        from pynetdicom.transport import ThreadedAssociationServer

        guard = self.guard

        class _Server(ThreadedAssociationServer):
            def get_request(self):   # every connection reads through the guard (timeouts, PDU cap)
                sock, address = super().get_request()
                return guard.adopt(sock, address), address

            def verify_request(self, request, client_address):   # socketserver hook, before any PDU
                if networks:
                    try:
                        addr = ipaddress.ip_address(client_address[0])
                    except ValueError:
                        addr = None
                    if addr is None or not any(addr in n for n in networks):
                        log.warning("refused connection from %s: address not in --allow-host", client_address[0])
                        return False
                return guard.admit(request)

            def service_actions(self):   # every poll of the accept loop (0.5 s)
                super().service_actions()
                guard.sweep()

            def shutdown(self):   # made by make_server, not start_server: the AE does not list it
                socketserver.BaseServer.shutdown(self)
                self.server_close()

        cfg = self.cfg
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.require_called_aet = True        # an association addressed to another AE is not for us
        ae.add_supported_context(CTImageStorage, CT_SYNTAXES)
        ae.add_supported_context(Verification)
        if cfg.allow_ae:
            ae.require_calling_aet = list(cfg.allow_ae)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_RELEASED, self._on_released),
                    (evt.EVT_PDU_RECV, self._on_pdu), (evt.EVT_ABORTED, self._on_aborted),
                    (evt.EVT_CONN_CLOSE, self._on_closed)]
        self.ae = ae
        server = ae.make_server((cfg.host, cfg.port), evt_handlers=handlers, server_class=_Server)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="noduleflow-scp", daemon=True).start()
        self.server = server
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # -- events --------------------------------------------------------------------------------
    def _on_requested(self, event) -> None:
        rq = event.assoc.requestor
        calling = str(getattr(rq.primitive, "calling_ae_title", "") or "").strip()
        called = str(getattr(rq.primitive, "called_ae_title", "") or "").strip()
        problems = []
        if self.cfg.allow_ae and calling not in self.cfg.allow_ae:
            problems.append("calling AE title not in --allow-ae")
        if called != self.cfg.ae_title:
            problems.append(f"called AE title is not {self.cfg.ae_title}")
        (log.warning if problems else log.info)("association from %s@%s to %s%s", calling, rq.address, called,
                                                f": {'; '.join(problems)}, rejected" if problems else "")

    def _on_echo(self, event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event):
        """Returns the C-STORE status: 0x0000, or a failure status with an ErrorComment saying why."""
        rq = event.assoc.requestor
        who = f"{rq.ae_title}@{rq.address}"
        if not self.accepting():
            return self._refuse(event, who, STATUS_OUT_OF_RESOURCES,
                                "the detection worker is down (see --status); retry later", logging.ERROR)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            series, sop = validate_instance(ds, transfer_syntax=str(event.context.transfer_syntax),
                                            affected_sop_uid=event.request.AffectedSOPInstanceUID)
            with self._lock:
                self._open.setdefault(id(event.assoc), set()).add(series)
            self.spool.store(event.encoded_dataset(), series, sop, source=who, sending=True)
        except SpoolFullError as exc:
            return self._refuse(event, who, STATUS_OUT_OF_RESOURCES, str(exc), logging.ERROR)
        except SpoolError as exc:
            return self._refuse(event, who, STATUS_DATASET_MISMATCH, str(exc))
        except OSError as exc:   # the disk failed under us: the sender should keep it and retry
            return self._refuse(event, who, STATUS_OUT_OF_RESOURCES, f"cannot store it ({exc})", logging.ERROR)
        except Exception as exc:   # undecodable data set: refuse it, keep serving
            return self._refuse(event, who, STATUS_CANNOT_UNDERSTAND, f"cannot read it ({type(exc).__name__}: {exc})")
        return STATUS_SUCCESS

    def _refuse(self, event, who: str, status: int, reason: str, level: int = logging.WARNING):
        """Log a refused instance, record it in its series (when its UIDs can be read: a series
        with a refused instance is never reported complete), and build the failure status."""
        from pydicom import Dataset

        series = sop = None
        try:
            ds = event.dataset
            series, sop = str(ds.get("SeriesInstanceUID", "")), str(event.request.AffectedSOPInstanceUID or "")
        except Exception:   # an undecodable data set has no series to record the refusal in
            pass
        log.log(level, "refused an instance from %s: %s (status 0x%04X%s)", who, reason, status,
                ", the sender should retry later" if status == STATUS_OUT_OF_RESOURCES else "")
        if series and sop and valid_uid(series) and valid_uid(sop):
            try:
                self.spool.refuse(series, sop, f"0x{status:04X} {reason}")
            except (OSError, SpoolError) as exc:
                log.error("series %s: could not record the refused instance %s: %s", series, sop, exc)
        rsp = Dataset()
        rsp.Status = status
        rsp.ErrorComment = reason.replace("\\", "/")[:64]   # LO: at most 64 characters
        return rsp

    def _end(self, event, how: str) -> None:
        with self._lock:
            series = set(self._open.get(id(event.assoc), ()))
        # recorded first, then forgotten: until then the series counts as still being sent, so
        # it cannot complete before its record says how the transfer ended
        for uid in sorted(series):
            try:
                self.spool.transfer(uid, how)
            except (OSError, SpoolError):
                log.exception("series %s: could not record the end of its transfer (%s)", uid, how)
        with self._lock:
            self._open.pop(id(event.assoc), None)

    def _on_pdu(self, event) -> None:
        # A-RELEASE-RQ: the sender says it has sent everything. Recorded here, in the reader
        # thread before pynetdicom answers it, not on EVT_RELEASED (triggered after the answer
        # went out): a service killed in between must not find the series "still receiving".
        from pynetdicom.pdu import A_RELEASE_RQ

        if isinstance(event.pdu, A_RELEASE_RQ):
            self._end(event, "released")

    def _on_released(self, event) -> None:
        self._end(event, "released")

    def _on_aborted(self, event) -> None:
        self._end(event, "aborted")

    def _on_closed(self, event) -> None:
        # neither released nor aborted first: the connection was lost mid-association
        self._end(event, "connection lost")


__all__ = ["StorageSCP", "STATUS_CANNOT_UNDERSTAND", "STATUS_DATASET_MISMATCH", "STATUS_OUT_OF_RESOURCES",
           "STATUS_SUCCESS"]
