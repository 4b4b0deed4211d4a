"""`Service`: the DICOM Storage SCP, the quiet-period completion, one detection worker, the
optional SR forwarder and folder watcher, all working on one `Spool`.

Threads, one process: pynetdicom's acceptor threads store instances; a completion thread moves
quiet series to the queue; a single worker thread owns the model (loaded once) and processes
one series at a time; a forward thread sends SRs on (with retries) so a down PACS never
blocks detection; a watch thread takes files dropped into a folder. A SIGKILL at any point
is recovered by `Spool.recover` at the next start.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import re
import shutil
import socketserver
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..engine.errors import ConfigError, NoduleflowError
from .spool import SeriesState, Spool, SpoolError, SpoolFullError, validate_instance

log = logging.getLogger("noduleflow.serve")

# DIMSE C-STORE failure statuses (PS3.4 B.2.3)
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")   # printable ASCII without backslash, 1-16 chars


def parse_destination(value: str) -> tuple[str, str, int]:
    """'AET@host:port' -> (aet, host, port)."""
    m = re.match(r"^([^@]{1,16})@(.+):(\d{1,5})$", value or "")
    if not m or not _AE.match(m.group(1).strip() or "") or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"--forward {value!r}: expected AET@host:port, e.g. PACS@10.0.0.5:104")
    return m.group(1).strip(), m.group(2), int(m.group(3))


def _networks(values) -> tuple:
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ConfigError(f"--allow-host {v!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)") \
                from None
    return tuple(nets)


@dataclass(frozen=True)
class ServeConfig:
    spool: Path
    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "NODULEFLOW"
    allow_ae: tuple[str, ...] = ()        # calling AE titles accepted; empty: any (only with allow_any_ae
    allow_any_ae: bool = False            # or a loopback host)
    allow_hosts: tuple[str, ...] = ()     # peer addresses/networks accepted; empty: any
    network: bool = True                  # run the SCP (False: folder watch only)
    quiet_s: float = 10.0                 # a series is complete after this long without an instance
    poll_s: float = 0.5
    watch: Path | None = None
    watch_settle_s: float = 2.0           # a dropped file is taken once unchanged for this long
    model: str | None = None
    backend: str = "auto"
    detection: object = None              # a DetectorConfig (None: its defaults)
    png: bool = True
    keep_instances: bool = False          # keep a done series' instances (failed ones are always kept)
    max_attempts: int = 3                 # a series interrupted this often by a dying service is failed
    forward: str | None = None            # AET@host:port to C-STORE each SR to
    forward_retries: int = 3
    forward_backoff_s: float = 2.0
    min_free_mb: float = 256.0
    stop_timeout_s: float = 120.0         # graceful stop waits this long for the running series

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) < 65536:
            raise ConfigError(f"--port {self.port} is not a TCP port (0-65535)")
        for t in (self.ae_title, *self.allow_ae):
            if not _AE.match(t or ""):
                raise ConfigError(f"AE title {t!r} must be 1-16 printable ASCII characters without '\\'")
        if self.quiet_s <= 0 or self.poll_s <= 0 or self.watch_settle_s < 0:
            raise ConfigError(f"--quiet-period must be > 0 (got {self.quiet_s})")
        if self.max_attempts < 1 or self.forward_retries < 1:
            raise ConfigError("--max-attempts and --forward-retries must be >= 1")
        _networks(self.allow_hosts)
        if self.forward:
            parse_destination(self.forward)
        if not self.network and self.watch is None:
            raise ConfigError("nothing to serve: --no-network needs --watch DIR")
        if self.network and not self.allow_ae and not self.allow_any_ae and not _is_loopback(self.host):
            raise ConfigError(f"listening on {self.host} needs --allow-ae TITLE (repeatable) or, knowingly, "
                              f"--allow-any-ae")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Service:
    def __init__(self, cfg: ServeConfig, detector=None) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool)
        self.spool.min_free_mb = cfg.min_free_mb
        self.detector = detector
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self._forward_q: queue.Queue = queue.Queue()
        self._busy = threading.Lock()       # held by the worker while it processes a series
        self._log_handler: logging.Handler | None = None
        self.port: int | None = None
        self._started = 0.0

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> "Service":
        self.spool.lock()
        self._started = time.time()
        self._log_handler = logging.FileHandler(self.spool.root / "serve.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self._log_handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        counts = self.spool.recover(self.cfg.max_attempts, self.cfg.keep_instances)
        if any(counts.values()):
            log.info("recovered the spool: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
        if self.detector is None:
            from ..engine.detector import Detector

            self.detector = Detector(self.cfg.model, backend=self.cfg.backend, config=self.cfg.detection)
        m = self.detector.package.manifest
        log.info("model %s, backend %s, mode %s, ready in %.2f s", m.model_id, self.detector.backend.name,
                 self.detector.config.mode, getattr(self.detector, "cold_start_s", 0.0))
        if self.cfg.network:
            self._start_scp()
        self._spawn("complete", self._completion_loop)
        self._spawn("worker", self._worker_loop)
        if self.cfg.forward:
            for s in self.spool.series([SeriesState.DONE]):
                if not s.record.get("forwarded") and (self.spool.results_dir(s.uid) / "sr.dcm").exists():
                    self._forward_q.put(s.uid)
            self._spawn("forward", self._forward_loop)
        if self.cfg.watch is not None:
            Path(self.cfg.watch).mkdir(parents=True, exist_ok=True)
            self._spawn("watch", self._watch_loop)
        info = {"pid": os.getpid(), "host": self.cfg.host, "port": self.port, "ae_title": self.cfg.ae_title,
                "network": self.cfg.network, "watch": str(self.cfg.watch) if self.cfg.watch else None,
                "model_id": m.model_id, "backend": self.detector.backend.name, "started": time.time()}
        (self.spool.root / "serve.json").write_text(json.dumps(info, indent=1))
        log.info("serving: spool %s%s%s", self.spool.root,
                 f", {self.cfg.ae_title} on {self.cfg.host}:{self.port}" if self.cfg.network else "",
                 f", watching {self.cfg.watch}" if self.cfg.watch else "")
        return self

    def _spawn(self, name, target) -> None:
        t = threading.Thread(target=target, name=f"noduleflow-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Stop receiving, let the running series finish (up to stop_timeout_s), release the spool."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        deadline = time.monotonic() + self.cfg.stop_timeout_s
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        self._threads = []
        log.info("stopped")
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        self.spool.unlock()

    def request_stop(self) -> None:
        """Ask `wait` to return (signal handlers call this); `stop` does the stopping."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- DICOM network -------------------------------------------------------------------------
    def _start_scp(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import CTImageStorage, Verification
        from pynetdicom.transport import ThreadedAssociationServer

        nets = _networks(self.cfg.allow_hosts)

        class _Server(ThreadedAssociationServer):
            def verify_request(self, request, client_address):   # socketserver hook, before any PDU
                if not nets:
                    return True
                try:
                    addr = ipaddress.ip_address(client_address[0])
                except ValueError:
                    addr = None
                ok = addr is not None and any(addr in n for n in nets)
                if not ok:
                    log.warning("refused connection from %s: address not in --allow-host", client_address[0])
                return ok

            def shutdown(self):   # made by make_server, not start_server: the AE does not list it
                socketserver.BaseServer.shutdown(self)
                self.server_close()

        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_associations = 16
        ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2",
                                                  "1.2.840.10008.1.2.2"])
        ae.add_supported_context(Verification)
        if self.cfg.allow_ae:
            ae.require_calling_aet = list(self.cfg.allow_ae)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REQUESTED, self._on_requested)]
        server = ae.make_server((self.cfg.host, self.cfg.port), evt_handlers=handlers, server_class=_Server)
        self.port = server.server_address[1]
        t = threading.Thread(target=server.serve_forever, name="noduleflow-scp", daemon=True)
        t.start()
        self._server = server

    def _on_requested(self, event) -> None:
        rq = event.assoc.requestor
        calling = str(getattr(rq.primitive, "calling_ae_title", "") or "").strip()
        allowed = not self.cfg.allow_ae or calling in self.cfg.allow_ae
        (log.info if allowed else log.warning)(
            "association from %s@%s%s", calling, rq.address,
            "" if allowed else ": calling AE title not in --allow-ae, rejected")

    def _on_echo(self, event) -> int:
        return 0x0000

    def _on_store(self, event) -> int:
        rq = event.assoc.requestor
        who = f"{rq.ae_title}@{rq.address}"
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            series, sop = validate_instance(ds, transfer_syntax=str(event.context.transfer_syntax),
                                            affected_sop_uid=event.request.AffectedSOPInstanceUID)
            self.spool.store(event.encoded_dataset(), series, sop, source=who)
        except SpoolFullError as exc:
            log.error("refused an instance from %s: %s", who, exc)
            return STATUS_OUT_OF_RESOURCES
        except SpoolError as exc:
            log.warning("refused an instance from %s: %s", who, exc)
            return STATUS_DATASET_MISMATCH
        except Exception as exc:   # undecodable data set: refuse it, keep serving
            log.warning("refused an instance from %s: cannot read it (%s: %s)", who, type(exc).__name__, exc)
            return STATUS_CANNOT_UNDERSTAND
        return 0x0000

    # -- completion and detection ----------------------------------------------------------------
    def _completion_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.spool.complete_quiet(self.cfg.quiet_s, since=self._started)
            except Exception:   # never let the thread die; the next poll tries again
                log.exception("completion check failed")
            self._stop.wait(self.cfg.poll_s)

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            queued = self.spool.queued()
            if not queued:
                self._stop.wait(self.cfg.poll_s)
                continue
            self.process(queued[0])

    def process(self, uid: str) -> bool:
        """Detect one complete series; True if it was processed (done or failed) by this call."""
        import pydicom

        from .sr import write_sr

        with self._busy:
            d = self.spool.claim(uid)
            if d is None:
                return False
            t0 = time.perf_counter()
            try:
                partial = d / "result.partial"
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                inst = d / "instances"
                det = self.detector.detect(inst, series_uid=uid, keep_preprocessed=self.cfg.png)
                t = time.perf_counter()
                det.save(partial, png=self.cfg.png)
                evidence = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(inst.iterdir())]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)   # highdicom on single-part patient names
                    write_sr(det, evidence, partial / "sr.dcm", model_id=det.model_id,
                             engine_version=det.engine_version)
                self.spool.publish(uid, partial)
                out_s = time.perf_counter() - t
            except Exception as exc:
                # input errors say what is wrong in one line; anything else keeps its traceback
                self.spool.fail(uid, f"{type(exc).__name__}: {exc}" if isinstance(exc, NoduleflowError)
                                else "".join(traceback.format_exception(exc)))
                return True
            timings = {**{k: round(v, 3) for k, v in det.timings_s.items()},
                       "outputs": round(out_s, 3), "total": round(time.perf_counter() - t0, 3)}
            self.spool.finish(uid, keep_instances=self.cfg.keep_instances, timings_s=timings,
                              candidates=len(det.candidates),
                              top_prob=round(det.candidates[0].prob, 4) if det.candidates else 0.0)
        if self.cfg.forward:
            self._forward_q.put(uid)
        return True

    # -- SR forwarding -----------------------------------------------------------------------------
    def _forward_loop(self) -> None:
        while not self._stop.is_set():
            try:
                uid = self._forward_q.get(timeout=self.cfg.poll_s)
            except queue.Empty:
                continue
            self.forward(uid)

    def forward(self, uid: str) -> bool:
        """C-STORE the series' SR to the --forward destination, retrying with backoff."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Comprehensive3DSRStorage

        aet, host, port = parse_destination(self.cfg.forward)
        sr = self.spool.results_dir(uid) / "sr.dcm"
        done = self.spool.dir(SeriesState.DONE, uid)
        error = "not tried"
        for attempt in range(1, self.cfg.forward_retries + 1):
            ae = AE(ae_title=self.cfg.ae_title)
            ae.add_requested_context(Comprehensive3DSRStorage)
            assoc = ae.associate(host, port, ae_title=aet)
            if assoc.is_established:
                try:
                    status = assoc.send_c_store(sr)
                finally:
                    assoc.release()
                code = getattr(status, "Status", None)
                if code == 0x0000:
                    self.spool.event(done, "forwarded", forwarded=True, destination=self.cfg.forward,
                                     attempt=attempt)
                    return True
                error = f"C-STORE status 0x{code:04X}" if code is not None else "no response to C-STORE"
            else:
                error = "association rejected or destination unreachable"
            log.warning("series %s: forwarding the SR to %s failed (attempt %d/%d): %s", uid, self.cfg.forward,
                        attempt, self.cfg.forward_retries, error)
            if attempt < self.cfg.forward_retries and self._stop.wait(self.cfg.forward_backoff_s * 2 ** (attempt - 1)):
                break
        self.spool.event(done, "forward_failed", forwarded=False, forward_error=error)
        return False

    # -- folder watch ------------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        seen: dict[Path, tuple[int, int]] = {}
        while not self._stop.is_set():
            try:
                seen = self.scan_watch(seen)
            except Exception:
                log.exception("watch scan failed")
            self._stop.wait(max(self.cfg.poll_s, 0.2))

    def scan_watch(self, seen: dict) -> dict:
        """One pass over the watched folder: take every file unchanged since the last pass and
        for ``watch_settle_s``; return the new (size, mtime) memory. Hidden files are skipped
        (uploads in progress)."""
        now = time.time()
        current = {}
        for f in sorted(Path(self.cfg.watch).rglob("*")):
            if f.name.startswith(".") or not f.is_file():
                continue
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if seen.get(f) == key and now - st.st_mtime >= self.cfg.watch_settle_s:
                self.ingest_file(f)
            else:
                current[f] = key
        return current

    def ingest_file(self, f: Path) -> bool:
        """Validate and spool one dropped file, then delete it; a bad file moves to SPOOL/rejected/
        with its reason; with the spool full it stays where it is (tried again later)."""
        import io

        import pydicom

        try:
            data = f.read_bytes()
            ds = pydicom.dcmread(io.BytesIO(data))
            series, sop = validate_instance(ds)
            if getattr(ds, "preamble", None) is None or "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                data = buf.getvalue()
            self.spool.store(data, series, sop, source=f"watch:{f.name}")
        except SpoolFullError as exc:
            log.error("watched file %s left in place: %s", f, exc)
            return False
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SpoolError) else str(exc)
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", f.name)[-80:]
            dest = self.spool.root / "rejected" / f"{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:8]}_{safe}"
            shutil.move(str(f), dest)
            Path(str(dest) + ".reason.txt").write_text(f"{f}\n{reason}\n")
            log.warning("rejected watched file %s: %s (moved to %s)", f, reason, dest)
            return False
        f.unlink()
        return True


__all__ = ["ServeConfig", "Service", "parse_destination"]
