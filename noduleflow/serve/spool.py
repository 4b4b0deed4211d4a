"""The service's spool: every series' state is the directory it lives in.

Writes are atomic (temporary file in SPOOL/tmp, fsync, rename, fsync of the directory), and
state changes are renames of a series directory, so a SIGKILL at any instant leaves either
the old state or the new one. Names on disk come only from UIDs that passed `valid_uid`,
never from a path or a name taken from the data.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..engine.errors import NoduleflowError

log = logging.getLogger("noduleflow.serve")

# DICOM UI: digits and dots, at most 64 characters, no empty component, no leading zero.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class SpoolError(NoduleflowError):
    """An instance that must not enter the spool (bad UID, not CT, truncated...), or a spool misuse."""


class SpoolFullError(SpoolError):
    """The spool's disk is below its free-space minimum; the sender should try again later."""


class SeriesState(str, enum.Enum):
    RECEIVED = "received"
    COMPLETE = "complete"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


STATES = tuple(SeriesState)


def valid_uid(value) -> bool:
    s = str(value) if value is not None else ""
    return 0 < len(s) <= 64 and bool(_UID.match(s))


def validate_instance(ds, transfer_syntax: str | None = None, affected_sop_uid: str | None = None) -> tuple[str, str]:
    """Check that ``ds`` (a pydicom Dataset) is a single-frame CT image with usable UIDs and
    complete pixel data. Returns (SeriesInstanceUID, SOPInstanceUID); raises SpoolError
    naming what is wrong."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != CT_IMAGE_STORAGE:
        raise SpoolError(f"SOP class {sop_class or '(none)'} is not CT Image Storage ({CT_IMAGE_STORAGE})")
    modality = str(ds.get("Modality", ""))
    if modality.upper() != "CT":
        raise SpoolError(f"modality {modality or '(none)'!r} is not CT")
    uids = {}
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        v = ds.get(key)
        if not valid_uid(v):
            raise SpoolError(f"{key} {str(v)[:80]!r} is not a valid DICOM UID")
        uids[key] = str(v)
    if affected_sop_uid is not None and str(affected_sop_uid) != uids["SOPInstanceUID"]:
        raise SpoolError(f"SOPInstanceUID {uids['SOPInstanceUID']} differs from the request's "
                         f"AffectedSOPInstanceUID {affected_sop_uid}")
    if "PixelData" not in ds:
        raise SpoolError("no PixelData")
    if transfer_syntax is None and getattr(ds, "file_meta", None) is not None:
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) or None
    if transfer_syntax in _NATIVE_SYNTAXES or transfer_syntax is None:
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            bits, spp = int(ds.BitsAllocated), int(ds.get("SamplesPerPixel", 1))
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise SpoolError(f"image pixel attributes missing or unreadable: {exc}") from None
        need = rows * cols * spp * frames * bits // 8
        have = len(ds.PixelData)
        if have < need:
            raise SpoolError(f"PixelData is truncated: {have} bytes, {rows}x{cols}x{bits // 8} needs {need}")
    return uids["SeriesInstanceUID"], uids["SOPInstanceUID"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(data: bytes, tmp_dir: Path) -> Path:
    """``data`` in a new fsynced file in ``tmp_dir`` (on the destination's filesystem)."""
    tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    """temp file in ``tmp_dir`` -> fsync -> rename onto ``path`` -> fsync dir."""
    os.replace(_write_tmp(data, tmp_dir), path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class SeriesInfo:
    uid: str
    state: SeriesState
    path: Path
    instances: int
    age_s: float          # since the last instance arrived (received/complete) or the last state change
    record: dict


class Spool:
    """The spool folder. Thread-safe within one process; one service per spool (`lock`)."""

    min_free_mb: float = 256.0   # instances are refused (out of resources) below this much free disk

    def __init__(self, root) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        for d in (*(s.value for s in STATES), "results", "late", "rejected", "tmp"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.tmp = self.root / "tmp"

    # -- single service per spool ---------------------------------------------------------
    def lock(self) -> None:
        """Take the spool's service lock (released by the kernel if the process dies)."""
        import fcntl

        fd = os.open(self.root / "serve.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(f"another service is running on spool {self.root} (serve.lock is held)") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def service_running(self) -> bool:
        import fcntl

        p = self.root / "serve.lock"
        if not p.exists():
            return False
        fd = os.open(p, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    # -- paths and records ------------------------------------------------------------------
    def dir(self, state: SeriesState, uid: str) -> Path:
        if not valid_uid(uid):
            raise SpoolError(f"series UID {uid[:80]!r} is not a valid DICOM UID")
        return self.root / SeriesState(state).value / uid

    def state_of(self, uid: str) -> SeriesState | None:
        for s in STATES:
            if self.dir(s, uid).is_dir():
                return s
        return None

    def read_record(self, series_dir: Path) -> dict:
        try:
            return json.loads((series_dir / "series.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write_record(self, series_dir: Path, record: dict) -> None:
        write_atomic(series_dir / "series.json", json.dumps(record, indent=1).encode(), self.tmp)

    def event(self, series_dir: Path, name: str, **detail) -> dict:
        """Append an event to the series' record (series.json) and the log."""
        with self._lock:
            rec = self.read_record(series_dir)
            rec.setdefault("events", []).append({"t": round(time.time(), 3), "event": name, **detail})
            rec.update({k: v for k, v in detail.items() if k in ("error", "attempts", "instances", "timings_s",
                                                                   "forwarded", "forward_error", "candidates", "top_prob")})
            self._write_record(series_dir, rec)
        extra = " ".join(f"{k}={v}" for k, v in detail.items() if k != "error")
        (log.error if name == "failed" else log.info)("series %s %s %s%s", series_dir.name, name, extra,
                                                      f" reason: {detail['error']}" if "error" in detail else "")
        return rec

    # -- receiving ----------------------------------------------------------------------------
    def store(self, data: bytes, series_uid: str, sop_uid: str, *, source: str = "") -> Path:
        """Store one validated instance's bytes (a DICOM file with meta header) atomically.

        A series still receiving takes it; a queued (complete) series goes back to receiving;
        a series already processed or failed keeps it under SPOOL/late/ and is not re-run.
        Returns the stored path."""
        if not (valid_uid(series_uid) and valid_uid(sop_uid)):
            raise SpoolError(f"refusing to store UIDs {series_uid[:80]!r}/{sop_uid[:80]!r}")
        self.check_free_space(len(data))
        tmp = _write_tmp(data, self.tmp)
        try:
            with self._lock:
                received = self.dir(SeriesState.RECEIVED, series_uid)
                first = False
                if not received.is_dir():
                    queued = self.dir(SeriesState.COMPLETE, series_uid)
                    try:
                        os.rename(queued, received)   # fails if the worker claimed it first
                        log.warning("series %s: instance arrived after completion; back to receiving", series_uid)
                    except FileNotFoundError:
                        state = self.state_of(series_uid)
                        if state is not None and state != SeriesState.RECEIVED:
                            return self._store_late(tmp, series_uid, sop_uid, state)
                        first = True
                        (received / "instances").mkdir(parents=True, exist_ok=True)
                dest = received / "instances" / f"{sop_uid}.dcm"
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
                if first:
                    _fsync_dir(received.parent)
                    self.event(received, "received", source=source)
                return dest
        finally:
            if tmp.exists():
                tmp.unlink()

    def _store_late(self, tmp: Path, series_uid: str, sop_uid: str, state: SeriesState) -> Path:
        d = self.root / "late" / series_uid
        d.mkdir(parents=True, exist_ok=True)
        dest = d / f"{sop_uid}.dcm"
        os.replace(tmp, dest)
        _fsync_dir(d)
        log.warning("series %s is already %s: instance %s kept in %s and not processed again",
                    series_uid, state.value, sop_uid, d)
        return dest

    def check_free_space(self, need_bytes: int) -> None:
        min_free = self.min_free_mb * 2 ** 20
        free = shutil.disk_usage(self.root).free
        if free - need_bytes < min_free:
            raise SpoolFullError(f"spool {self.root} has {free / 2 ** 20:.0f} MiB free, below the "
                             f"{min_free / 2 ** 20:.0f} MiB minimum")

    # -- state changes ------------------------------------------------------------------------
    def complete_quiet(self, quiet_s: float, now: float | None = None, since: float = 0.0) -> list[str]:
        """Move every received series with no instance for ``quiet_s`` seconds to complete.

        ``since``: the service's start time; the quiet clock never starts before it, so a sender
        cut off by a restart has ``quiet_s`` to resume before its partial series counts as complete."""
        now = time.time() if now is None else now
        done = []
        with self._lock:
            for d in sorted((self.root / "received").iterdir()):
                inst = d / "instances"
                try:
                    last = inst.stat().st_mtime
                except FileNotFoundError:
                    continue
                if now - max(last, since) < quiet_s:
                    continue
                n = sum(1 for _ in inst.iterdir())
                dest = self.dir(SeriesState.COMPLETE, d.name)
                os.rename(d, dest)
                _fsync_dir(dest.parent)
                self.event(dest, "complete", instances=n)
                done.append(d.name)
        return done

    def queued(self) -> list[str]:
        """Complete series, oldest first."""
        items = []
        for d in (self.root / "complete").iterdir():
            try:
                items.append((d.stat().st_mtime, d.name))
            except FileNotFoundError:
                pass
        return [u for _, u in sorted(items)]

    def claim(self, uid: str) -> Path | None:
        """complete -> processing (atomic). None if the series is no longer queued."""
        src, dest = self.dir(SeriesState.COMPLETE, uid), self.dir(SeriesState.PROCESSING, uid)
        with self._lock:
            try:
                os.rename(src, dest)
            except FileNotFoundError:
                return None
            _fsync_dir(dest.parent)
            rec = self.read_record(dest)
            self.event(dest, "processing", attempts=int(rec.get("attempts", 0)) + 1)
        return dest

    def results_dir(self, uid: str) -> Path:
        if not valid_uid(uid):
            raise SpoolError(f"series UID {uid[:80]!r} is not a valid DICOM UID")
        return self.root / "results" / uid

    def publish(self, uid: str, partial: Path) -> Path:
        """Atomically turn a fully written results folder into SPOOL/results/<uid> (once)."""
        final = self.results_dir(uid)
        if final.exists():
            raise SpoolError(f"results for series {uid} already exist in {final}; not writing them twice")
        for f in partial.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(partial)
        os.rename(partial, final)
        _fsync_dir(final.parent)
        return final

    def finish(self, uid: str, *, keep_instances: bool = False, **detail) -> Path:
        """processing -> done; drops the instances unless asked to keep them."""
        src, dest = self.dir(SeriesState.PROCESSING, uid), self.dir(SeriesState.DONE, uid)
        with self._lock:
            os.rename(src, dest)
            _fsync_dir(dest.parent)
        self.event(dest, "done", **detail)
        if not keep_instances:
            shutil.rmtree(dest / "instances", ignore_errors=True)
        return dest

    def fail(self, uid: str, error: str, state: SeriesState = SeriesState.PROCESSING) -> Path:
        """<state> -> failed, with error.txt; instances are kept for diagnosis."""
        src, dest = self.dir(state, uid), self.dir(SeriesState.FAILED, uid)
        with self._lock:
            os.rename(src, dest)
            _fsync_dir(dest.parent)
            write_atomic(dest / "error.txt", (error.rstrip() + "\n").encode(), self.tmp)
        shutil.rmtree(dest / "result.partial", ignore_errors=True)
        self.event(dest, "failed", error=error.strip().splitlines()[-1][:500] if error.strip() else "unknown")
        return dest

    def recover(self, max_attempts: int = 3, keep_instances: bool = False) -> dict:
        """On start: finish what a killed service left. Returns counts of what was done.

        processing/ with published results -> done (never run again); processing/ without
        -> complete (run again) unless it was already tried ``max_attempts`` times -> failed;
        leftover temporary files are removed."""
        counts = {"requeued": 0, "finished": 0, "failed": 0, "tmp_removed": 0}
        for f in self.tmp.iterdir():
            f.unlink() if f.is_file() else shutil.rmtree(f, ignore_errors=True)
            counts["tmp_removed"] += 1
        for d in sorted((self.root / "processing").iterdir()):
            uid = d.name
            shutil.rmtree(d / "result.partial", ignore_errors=True)
            if self.results_dir(uid).is_dir():
                self.finish(uid, keep_instances=keep_instances, recovered=True)
                counts["finished"] += 1
                continue
            attempts = int(self.read_record(d).get("attempts", 1))
            if attempts >= max_attempts:
                self.fail(uid, f"interrupted {attempts} times while processing (the service died each time); "
                               f"not retried")
                counts["failed"] += 1
                continue
            dest = self.dir(SeriesState.COMPLETE, uid)
            os.rename(d, dest)
            self.event(dest, "requeued", reason="the service stopped while processing it")
            counts["requeued"] += 1
        if not keep_instances:
            for d in (self.root / "done").iterdir():
                if (d / "instances").exists():
                    shutil.rmtree(d / "instances", ignore_errors=True)
        return counts

    # -- reading --------------------------------------------------------------------------------
    def series(self, states=STATES) -> list[SeriesInfo]:
        now = time.time()
        out = []
        for s in states:
            for d in sorted((self.root / SeriesState(s).value).iterdir()):
                inst = d / "instances"
                try:
                    n = sum(1 for _ in inst.iterdir()) if inst.is_dir() else 0
                    last = (inst if inst.is_dir() else d).stat().st_mtime
                except FileNotFoundError:   # moved while we looked
                    continue
                rec = self.read_record(d)
                if not n:
                    n = int(rec.get("instances", 0))
                out.append(SeriesInfo(d.name, SeriesState(s), d, n, now - last, rec))
        return out

    def status(self) -> dict:
        """A summary of the spool for `noduleflow serve --status`."""
        series = self.series()
        info = {}
        p = self.root / "serve.json"
        if p.exists():
            try:
                info = json.loads(p.read_text())
            except json.JSONDecodeError:
                info = {}
        late = {d.name: sum(1 for _ in d.iterdir()) for d in (self.root / "late").iterdir()}
        return {
            "spool": str(self.root),
            "running": self.service_running(),
            "service": info,
            "counts": {s.value: sum(1 for x in series if x.state == s) for s in STATES},
            "series": [{"series_uid": x.uid, "state": x.state.value, "instances": x.instances,
                        "idle_s": round(x.age_s, 1), "error": x.record.get("error"),
                        "timings_s": x.record.get("timings_s"), "forwarded": x.record.get("forwarded")}
                       for x in series],
            "late_instances": late,
            "rejected_files": sum(1 for f in (self.root / "rejected").iterdir() if not f.name.endswith(".reason.txt")),
        }
