"""The DICOM side of `Service`: a Storage SCP (C-STORE of CT images, C-ECHO) on pynetdicom.

Who may talk to it: peers in ``--allow-host`` (closed before any PDU is read), calling AE
titles in ``--allow-ae``, and only associations addressed to this service's own AE title.
Network limits: at most ``max_associations`` connections at once, and every connection
counts, including one that has not yet sent its A-ASSOCIATE-RQ; so a connection that sends
nothing is closed after ``acse_timeout_s`` (pynetdicom's default is 30 s: 20 idle sockets
then locked a real sender out for that long), an association silent for ``network_timeout_s``
is aborted, and a DIMSE exchange waits at most ``dimse_timeout_s``.

Every association that stores instances is followed to its end: released normally, the
series it carried may complete after the quiet period; aborted or cut off, they are marked
interrupted (`Spool.transfer`) and wait for a resend instead.
"""
from __future__ import annotations

import ipaddress
import logging
import socketserver
import threading

from .spool import SpoolError, SpoolFullError, validate_instance

log = logging.getLogger("noduleflow.serve")

# DIMSE C-STORE statuses (PS3.4 B.2.3)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
CT_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]


class StorageSCP:
    """Owns the association server; ``accepting()`` says whether instances may be taken now
    (False while the worker is down: instances are then refused as out of resources)."""

    def __init__(self, cfg, spool, accepting) -> None:
        self.cfg, self.spool, self.accepting = cfg, spool, accepting
        self.server = None
        self.port: int | None = None
        self._open: dict[int, set[str]] = {}    # id(association) -> series it stored into
        self._lock = threading.Lock()

    def receiving(self) -> set[str]:
        """Series with an association that stored into them still open."""
        with self._lock:
            return set().union(*self._open.values()) if self._open else set()

    def start(self, networks) -> int:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import CTImageStorage, Verification
        from pynetdicom.transport import ThreadedAssociationServer

        class _Server(ThreadedAssociationServer):
            def verify_request(self, request, client_address):   # socketserver hook, before any PDU
                if not networks:
                    return True
                try:
                    addr = ipaddress.ip_address(client_address[0])
                except ValueError:
                    addr = None
                ok = addr is not None and any(addr in n for n in networks)
                if not ok:
                    log.warning("refused connection from %s: address not in --allow-host", client_address[0])
                return ok

            def shutdown(self):   # made by make_server, not start_server: the AE does not list it
                socketserver.BaseServer.shutdown(self)
                self.server_close()

        cfg = self.cfg
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
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

    def _on_store(self, event) -> int:
        rq = event.assoc.requestor
        who = f"{rq.ae_title}@{rq.address}"
        if not self.accepting():
            log.error("refused an instance from %s: the detection worker is down (see --status); "
                      "status 0xA700, the sender should retry later", who)
            return STATUS_OUT_OF_RESOURCES
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            series, sop = validate_instance(ds, transfer_syntax=str(event.context.transfer_syntax),
                                            affected_sop_uid=event.request.AffectedSOPInstanceUID)
            with self._lock:
                self._open.setdefault(id(event.assoc), set()).add(series)
            self.spool.store(event.encoded_dataset(), series, sop, source=who, sending=True)
        except SpoolFullError as exc:
            log.error("refused an instance from %s: %s", who, exc)
            return STATUS_OUT_OF_RESOURCES
        except SpoolError as exc:
            log.warning("refused an instance from %s: %s", who, exc)
            return STATUS_DATASET_MISMATCH
        except OSError as exc:   # the disk failed under us: the sender should keep it and retry
            log.error("refused an instance from %s: cannot store it (%s)", who, exc)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:   # undecodable data set: refuse it, keep serving
            log.warning("refused an instance from %s: cannot read it (%s: %s)", who, type(exc).__name__, exc)
            return STATUS_CANNOT_UNDERSTAND
        return STATUS_SUCCESS

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
