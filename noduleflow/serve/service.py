"""`Service`: the DICOM Storage SCP, the quiet-period completion, one detection worker, the
optional SR forwarder and folder watcher, all working on one `Spool`.

Threads, one process: pynetdicom's acceptor threads store instances (`scp.StorageSCP`); a
completion thread moves quiet, whole series to the queue; a single worker thread owns the
model (loaded once) and processes one series at a time; a forward thread sends SRs on (with
retries) so a down PACS never blocks detection; a watch thread takes files dropped into a
folder. Every thread runs supervised: an exception (a full disk while claiming a series...)
is logged, the thread's health goes "down" (in ``--status``; while the worker is down,
instances are refused with 0xA700 so senders keep them), and the loop is retried with
backoff; the completion thread restarts a thread that died anyway. A SIGKILL at any point
is recovered by `Spool.recover` at the next start.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import queue
import re
import shutil
import stat
import threading
import time
import traceback
import uuid
import warnings
from pathlib import Path

from ..engine.errors import NoduleflowError
from .completeness import check_series, lung_coverage
from .config import ServeConfig, allowed_networks, parse_destination
from .files import open_private
from .scp import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, StorageSCP
from .seg import write_seg
from .spool import SeriesState, Spool, SpoolError, SpoolFullError, validate_instance
from .sr import write_sr

log = logging.getLogger("noduleflow.serve")

#: A watched file larger than this is not read (a CT instance is a few MB at most).
MAX_WATCHED_BYTES = 256 * 2 ** 20


class Service:
    def __init__(self, cfg: ServeConfig, detector=None) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool, min_free_mb=cfg.min_free_mb)
        self.detector = detector
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._scp: StorageSCP | None = None
        self._forward_q: queue.Queue = queue.Queue()
        self._busy = threading.Lock()       # held by the worker while it processes a series
        self._log_handler: logging.Handler | None = None
        self._health: dict[str, dict] = {}
        self._health_lock = threading.RLock()
        self._info_lock = threading.Lock()      # serve.json: one writer at a time, newest health last
        self._info: dict = {}
        self._steps: dict[str, tuple] = {}
        self._watch_seen: dict = {}
        self._watch_skipped: set = set()    # watched paths already warned about (links, oversize, disk full)
        self.port: int | None = None
        self._started = 0.0

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> Service:
        self.spool.lock()
        self._started = time.time()
        log_path = self.spool.root / "serve.log"
        os.close(open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))   # 0600 before it holds a line
        self._log_handler = logging.FileHandler(log_path)
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self._log_handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        counts = self.spool.recover(self.cfg.max_attempts)
        if any(counts.values()):
            log.info("recovered the spool: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
        if self.detector is None:
            from ..engine.detector import Detector  # numba and the backends: only when serving

            opts = {} if self.cfg.precision is None else {"precision": self.cfg.precision}
            self.detector = Detector(self.cfg.model, backend=self.cfg.backend, config=self.cfg.detection,
                                     backend_options=opts)
        m = self.detector.package.manifest
        log.info("model %s, backend %s, mode %s, ready in %.2f s", m.model_id, self.detector.backend_name,
                 self.detector.config.mode, getattr(self.detector, "cold_start_s", 0.0))
        # Import what the threads use here, once: two threads importing pydicom for the first time
        # at the same moment can each see it half-initialised (ImportError: circular import).
        for module in ("pydicom", "pydicom.sr.codedict", "highdicom", "pynetdicom", "..engine.io.dicom_header",
                       ".completeness", ".sr"):
            importlib.import_module(module, __package__)

        self._spawn("worker", self._worker_step, on_restart=self._recover_worker)
        self._spawn("complete", self._completion_step)
        if self.cfg.network:   # after the worker: instances are refused while it is not running
            self._scp = StorageSCP(self.cfg, self.spool, accepting=self.accepting)
            self.port = self._scp.start(allowed_networks(self.cfg.allow_hosts))
        if self.cfg.forward:
            for s in self.spool.series([SeriesState.DONE]):
                if not s.record.get("forwarded") and (self.spool.results_dir(s.uid) / "sr.dcm").exists():
                    self._forward_q.put(s.uid)
            self._spawn("forward", self._forward_step)
        if self.cfg.watch is not None:
            Path(self.cfg.watch).mkdir(parents=True, exist_ok=True)
            self._spawn("watch", self._watch_step)
        self._info = {"pid": os.getpid(), "host": self.cfg.host, "port": self.port, "ae_title": self.cfg.ae_title,
                      "network": self.cfg.network, "watch": str(self.cfg.watch) if self.cfg.watch else None,
                      "model_id": m.model_id, "backend": self.detector.backend_name, "started": time.time(),
                      "limits": {"max_associations": self.cfg.max_associations,
                                 "acse_timeout_s": self.cfg.acse_timeout_s,
                                 "dimse_timeout_s": self.cfg.dimse_timeout_s,
                                 "network_timeout_s": self.cfg.network_timeout_s,
                                 "pdu_timeout_s": self.cfg.pdu_timeout_s,
                                 "max_pending_per_host": self.cfg.max_pending_per_host,
                                 "max_message_mb": self.cfg.max_message_mb}}
        self._write_info()
        log.info("serving: spool %s%s%s", self.spool.root,
                 f", {self.cfg.ae_title} on {self.cfg.host}:{self.port}" if self.cfg.network else "",
                 f", watching {self.cfg.watch}" if self.cfg.watch else "")
        return self

    def stop(self) -> None:
        """Stop receiving, let the running series finish (up to stop_timeout_s), release the spool."""
        self._stop.set()
        if self._scp is not None:
            self._scp.stop()
            self._scp = None
        deadline = time.monotonic() + self.cfg.stop_timeout_s
        for t in self._threads.values():
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        self._threads = {}
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

    # -- supervision ---------------------------------------------------------------------------
    def _spawn(self, name: str, step, on_restart=None) -> None:
        self._set_health(name, "up")
        t = threading.Thread(target=self._supervised, args=(name, step, on_restart), name=f"noduleflow-{name}",
                             daemon=True)
        self._steps[name] = (step, on_restart)
        t.start()
        self._threads[name] = t   # after start(): the watchdog must never see it "not alive" before it ran

    def _supervised(self, name: str, step, on_restart) -> None:
        """Run ``step`` until stopped; an exception marks the thread down, is logged, and the
        loop is retried after a growing delay (first running ``on_restart``)."""
        failures = 0
        while not self._stop.is_set():
            try:
                if failures and on_restart is not None:
                    on_restart()
                step()
                if failures:
                    log.warning("%s thread is running again after %d failure(s)", name, failures)
                    self._set_health(name, "up")
                    failures = 0
            except Exception as exc:   # supervision: nothing may end this loop but stop()
                failures += 1
                delay = min(self.cfg.restart_backoff_max_s, self.cfg.restart_backoff_s * 2 ** (failures - 1))
                log.exception("%s thread failed (%d in a row); retrying in %.0f s", name, failures, delay)
                self._set_health(name, "down", error=f"{type(exc).__name__}: {exc}"[:500], failures=failures,
                                 retry_in_s=delay)
                self._stop.wait(delay)

    def _watchdog(self) -> None:
        """A thread that ended without stop() (a BaseException got past supervision) is restarted."""
        for name, t in list(self._threads.items()):
            if not t.is_alive() and not self._stop.is_set():
                log.error("%s thread died; restarting it", name)
                self._set_health(name, "down", error="thread died")
                self._spawn(name, *self._steps[name])

    def _set_health(self, name: str, state: str, **detail) -> None:
        # serve.json is written under the same lock: whoever reads a new state from `health`
        # finds it in --status as well
        with self._health_lock:
            prev = self._health.get(name, {})
            restarts = prev.get("restarts", 0) + (state == "up" and prev.get("state") == "down")
            self._health[name] = {"state": state, "since": round(time.time(), 3), "restarts": restarts, **detail}
            if self._info:
                self._write_info()

    def health(self) -> dict:
        """{thread: {state: up|down, since, restarts, error...}}"""
        with self._health_lock:
            return {k: dict(v) for k, v in self._health.items()}

    def accepting(self) -> bool:
        """Instances are taken only while they can be processed: the worker and the completion
        thread both running."""
        health = self.health()
        for name in ("worker", "complete"):
            t = self._threads.get(name)
            if t is None or not t.is_alive() or health.get(name, {}).get("state") != "up":
                return False
        return True

    def _write_info(self) -> None:
        try:
            with self._info_lock:
                self.spool.write_file(self.spool.root / "serve.json",
                                      json.dumps({**self._info, "health": self.health()}, indent=1).encode())
        except OSError as exc:   # a full disk must not take the thread reporting it down as well
            log.error("cannot write %s: %s", self.spool.root / "serve.json", exc)

    # -- completion and detection ----------------------------------------------------------------
    def _completion_step(self) -> None:
        receiving = self._scp.receiving() if self._scp is not None else set()
        self.spool.complete_quiet(self.cfg.quiet_s, since=self._started, receiving=receiving,
                                  incomplete_s=self.cfg.incomplete_s)
        if not self.cfg.keep_instances:
            self.spool.prune(self.cfg.retain_s)
        self._watchdog()
        self._stop.wait(self.cfg.poll_s)

    def _worker_step(self) -> None:
        queued = self.spool.queued()
        if not queued:
            self._stop.wait(self.cfg.poll_s)
            return
        self.process(queued[0])

    def _recover_worker(self) -> None:
        """Before the worker runs again: a series it had claimed is finished or queued again."""
        for d in sorted((self.spool.root / "processing").iterdir()):
            outcome = self.spool.recover_processing(d.name, self.cfg.max_attempts)
            log.warning("series %s was being processed when the worker failed: %s", d.name, outcome)

    def process(self, uid: str) -> bool:
        """Detect one complete series; True if it was processed (done or failed) by this call."""
        import pydicom

        with self._busy:
            d = self.spool.claim(uid)
            if d is None:
                return False
            t0 = time.perf_counter()
            rec = self.spool.read_record(d)
            version = int(rec.get("version", 1))
            try:
                partial = d / "result.partial"
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(mode=0o700)
                inst = d / "instances"
                whole = check_series(inst)   # identity and gaps, again: before any processing
                if whole.identity:
                    raise SpoolError(f"identity: {whole.identity}")
                if whole.gap:   # the queue never takes a gapped series; never report one, complete or not
                    raise SpoolError(f"series {uid} is incomplete: {whole.reason}")
                # COMPLETE only what the service can vouch for: whole, not cut off, nothing refused
                complete = whole.complete and rec.get("complete") is not False and not rec.get("refused")
                # the lung mask is kept for the coverage check (and the PNG); the 1 mm lung box it
                # lies on is computed anyway, so keeping it costs memory only until the SR is written
                det = self.detector.detect(inst, series_uid=uid, keep_preprocessed=True)
                coverage = lung_coverage(det)
                if coverage:   # a scan that stops inside the chest: never COMPLETE (`completeness`)
                    log.warning("series %s: %s", uid, coverage)
                    complete = False
                if not self.cfg.png:
                    det = dataclasses.replace(det, preprocessed=None)
                t = time.perf_counter()
                det.save(partial, png=self.cfg.png)
                evidence = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(inst.iterdir())]
                earlier = self.spool.results_dir(uid) / "sr.dcm"    # the SR of the version this supersedes
                previous = pydicom.dcmread(earlier, stop_before_pixels=True) if version > 1 and earlier.is_file() \
                    else None
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)   # highdicom on single-part patient names
                    write_sr(det, evidence, partial / "sr.dcm", model_id=det.model_id,
                             engine_version=det.engine_version, complete=complete, previous=previous)
                    # the characterised findings' masks (--characterise-top N), one segment each
                    write_seg(det, evidence, partial / "seg.dcm", model_id=det.model_id,
                              engine_version=det.engine_version)
                self.spool.publish(uid, partial, version, complete=complete, instances=whole.instances,
                                   **({"coverage": coverage} if coverage else {}))
                out_s = time.perf_counter() - t
            except Exception as exc:
                # input errors say what is wrong in one line; anything else keeps its traceback
                self.spool.fail(uid, f"{type(exc).__name__}: {exc}" if isinstance(exc, NoduleflowError)
                                else "".join(traceback.format_exception(exc)))
                return True
            timings = {**{k: round(v, 3) for k, v in det.timings_s.items()},
                       "outputs": round(out_s, 3), "total": round(time.perf_counter() - t0, 3)}
            self.spool.finish(uid, timings_s=timings, candidates=len(det.candidates), version=version,
                              top_prob=round(det.candidates[0].prob, 4) if det.candidates else 0.0,
                              forwarded=None, forward_error=None, complete=complete,
                              coverage=coverage or "lungs inside the scan")
        if self.cfg.forward:
            self._forward_q.put(uid)
        return True

    # -- SR forwarding -----------------------------------------------------------------------------
    def _forward_step(self) -> None:
        try:
            uid = self._forward_q.get(timeout=self.cfg.poll_s)
        except queue.Empty:
            return
        self.forward(uid)

    def forward(self, uid: str) -> bool:
        """C-STORE the series' SR to the --forward destination, retrying with backoff."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Comprehensive3DSRStorage

        aet, host, port = parse_destination(self.cfg.forward)
        sr = self.spool.results_dir(uid) / "sr.dcm"
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
                if code == STATUS_SUCCESS:
                    self._forward_event(uid, "forwarded", forwarded=True, destination=self.cfg.forward,
                                     attempt=attempt)
                    return True
                error = f"C-STORE status 0x{code:04X}" if code is not None else "no response to C-STORE"
            else:
                error = "association rejected or destination unreachable"
            log.warning("series %s: forwarding the SR to %s failed (attempt %d/%d): %s", uid, self.cfg.forward,
                        attempt, self.cfg.forward_retries, error)
            if attempt < self.cfg.forward_retries and self._stop.wait(self.cfg.forward_backoff_s * 2 ** (attempt - 1)):
                break
        self._forward_event(uid, "forward_failed", forwarded=False, forward_error=error)
        return False

    def _forward_event(self, uid: str, name: str, **detail) -> None:
        d = self.spool.current_dir(uid)   # a new version may have started meanwhile
        if d is not None:
            self.spool.event(d, name, **detail)

    # -- folder watch ------------------------------------------------------------------------------
    def _watch_step(self) -> None:
        if self.accepting():   # otherwise dropped files wait where they are, as senders' instances do
            self._watch_seen = self.scan_watch(self._watch_seen)
        self._stop.wait(max(self.cfg.poll_s, 0.2))

    def scan_watch(self, seen: dict) -> dict:
        """One pass over the watched folder: take every file unchanged since the last pass and
        for ``watch_settle_s``; return the new (size, mtime) memory. Hidden files and folders are
        skipped (uploads in progress); symbolic links are never followed (a link to a file
        elsewhere is left alone, with one warning), nor is anything but a regular file taken."""
        now = time.time()
        current = {}
        root = Path(self.cfg.watch)
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))   # os.walk lists links to folders
            for name in sorted(names):                                   # here, and never enters them
                f = Path(folder) / name
                if name.startswith("."):
                    continue
                try:
                    st = os.lstat(f)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    if f not in self._watch_skipped:
                        self._watch_skipped.add(f)
                        log.warning("watched folder: %s is %s, not a regular file: left alone", f,
                                    "a symbolic link" if stat.S_ISLNK(st.st_mode) else "special")
                    continue
                key = (st.st_size, st.st_mtime_ns)
                if seen.get(f) == key and now - st.st_mtime >= self.cfg.watch_settle_s:
                    self.ingest_file(f)
                else:
                    current[f] = key
        return current

    def _read_watched(self, f: Path) -> bytes:
        """The bytes of a watched regular file, opened without following a link (one swapped in
        after the scan is refused with ELOOP) and checked to be a regular file on its descriptor."""
        fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{f} is not a regular file")
            if st.st_size > MAX_WATCHED_BYTES:
                raise OSError(f"{f} is {st.st_size} bytes, above the {MAX_WATCHED_BYTES}-byte limit for one "
                                 f"CT instance")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def ingest_file(self, f: Path) -> bool:
        """Validate and spool one dropped file, then delete it; a bad file is copied into
        SPOOL/rejected/ with its reason and deleted; with the spool full it stays where it is
        (tried again later). Nothing in the watched folder is ever chmod-ed or followed: the
        service changes only the files it writes into the spool."""
        import io

        import pydicom

        data = b""
        try:
            data = self._read_watched(f)
            ds = pydicom.dcmread(io.BytesIO(data))
            series, sop = validate_instance(ds)
            if getattr(ds, "preamble", None) is None or "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                data = buf.getvalue()
            self.spool.store(data, series, sop, source=f"watch:{f.name}")
        except (SpoolFullError, OSError) as exc:   # a full or failing disk, a link: the file waits where it is
            if f not in self._watch_skipped:
                log.error("watched file %s left in place: %s", f, exc)
            self._watch_skipped.add(f)
            return False
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SpoolError) else str(exc)
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", f.name)[-80:]
            dest = self.spool.root / "rejected" / f"{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:8]}_{safe}"
            self.spool.write_file(dest, data)   # a copy the service owns (0600), never the dropped file itself
            self.spool.write_file(Path(str(dest) + ".reason.txt"), f"{f}\n{reason}\n".encode())
            _unlink(f)                            # unlink never follows a link
            log.warning("rejected watched file %s: %s (copied to %s)", f, reason, dest)
            return False
        _unlink(f)
        return True


def _unlink(f: Path) -> None:
    try:
        os.unlink(f)
    except FileNotFoundError:   # removed meanwhile by whoever dropped it
        pass


__all__ = ["ServeConfig", "Service", "parse_destination", "STATUS_CANNOT_UNDERSTAND", "STATUS_DATASET_MISMATCH",
           "STATUS_OUT_OF_RESOURCES", "STATUS_SUCCESS"]
