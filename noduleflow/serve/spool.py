"""The service's spool: every series' state is the directory it lives in.

Writes are atomic (temporary file in SPOOL/tmp, fsync, rename, fsync of the directory), and
state changes are renames of a series directory, so a SIGKILL at any instant leaves either
the old state or the new one. Names on disk come only from UIDs that passed `valid_uid`,
never from a path or a name taken from the data. Folders are 0700 and files 0600 whatever
the umask (`files`): the spool holds patient data.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..engine.fileio import atomic_write, fsync_dir, temp_name, write_new
from .completeness import Completeness, check_series
from .config import ServeConfig
from .files import FILE_MODE, make_private, mkdir_private, open_private
from .instance import CT_IMAGE_STORAGE, STATES, SeriesState, SpoolError, SpoolFullError, valid_uid, validate_instance
from .status import spool_status

log = logging.getLogger("noduleflow.serve")

@dataclass(frozen=True)
class SeriesInfo:
    uid: str
    state: SeriesState
    path: Path
    instances: int
    age_s: float          # since the last instance arrived (received/complete) or the last state change
    record: dict


# Record keys copied from an event's details to the top of series.json (the series' current state).
_RECORD_KEYS = ("error", "attempts", "instances", "timings_s", "forwarded", "forward_error", "candidates", "top_prob",
                "version", "complete", "incomplete", "interrupted", "receiving", "duplicates", "extent_mm", "identity",
                "refused", "coverage")


class Spool:
    """The spool folder. Thread-safe within one process; one service per spool (`lock`).

    A series has versions: instances that arrive after it was processed (or failed) start
    version n + 1 in received/, holding the earlier instances still kept plus the new ones;
    once processed, its results replace version n's (moved to SPOOL/superseded/)."""

    def __init__(self, root, min_free_mb: float = ServeConfig.min_free_mb) -> None:
        self.root = Path(root)
        self.min_free_mb = min_free_mb   # instances are refused (out of resources) below this much free disk
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._checked: dict[str, tuple] = {}   # uid -> (mtime, count, Completeness): headers read once
        self._marked_receiving: set[str] = set()   # records known to say receiving (not re-read per instance)
        mkdir_private(self.root)
        for d in (*(s.value for s in STATES), "results", "superseded", "late", "rejected", "tmp"):
            mkdir_private(self.root / d)
        self.tmp = self.root / "tmp"
        # series whose record lists refused instances not received since (re-read only for those)
        self._refused: set[str] = {d.name for s in STATES for d in (self.root / s.value).iterdir()
                                   if self.read_record(d).get("refused")}

    # -- single service per spool ---------------------------------------------------------
    def lock(self) -> None:
        """Take the spool's service lock (released by the kernel if the process dies)."""
        import fcntl

        fd = open_private(self.root / "serve.lock", os.O_RDWR | os.O_CREAT)
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
        fd = os.open(p, os.O_RDONLY)
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

    def write_file(self, path: Path, data: bytes) -> None:
        """Any file the service writes into the spool: atomic and 0600 (its temporary in SPOOL/tmp,
        which `recover` empties: a killed write leaves nothing in a series folder)."""
        atomic_write(path, data, mode=FILE_MODE, tmp_dir=self.tmp)

    def event(self, series_dir: Path, name: str, *, quiet: bool = False, record: dict | None = None,
              **detail) -> dict:
        """Append an event to the series' record (series.json) and the log; ``record``: keys set
        at the top of the record only (not repeated in the event)."""
        with self._lock:
            rec = self.read_record(series_dir)
            rec.setdefault("events", []).append({"t": round(time.time(), 3), "event": name, **detail})
            for k, v in (record or {}).items():
                if v is None:
                    rec.pop(k, None)
                else:
                    rec[k] = v
            for k, v in detail.items():
                if k not in _RECORD_KEYS:
                    continue
                if v is None:            # None clears a key (a new version starts afresh)
                    rec.pop(k, None)
                else:
                    rec[k] = v
            self.write_file(series_dir / "series.json", json.dumps(rec, indent=1).encode())
        extra = " ".join(f"{k}={v}" for k, v in detail.items() if k not in ("error", "extent_mm"))
        level = logging.ERROR if name == "failed" else logging.DEBUG if quiet else logging.INFO
        log.log(level, "series %s %s %s%s", series_dir.name, name, extra,
                f" reason: {detail['error']}" if "error" in detail else "")
        return rec

    def current_dir(self, uid: str) -> Path | None:
        s = self.state_of(uid)
        return None if s is None else self.dir(s, uid)

    # -- receiving ----------------------------------------------------------------------------
    def store(self, data: bytes, series_uid: str, sop_uid: str, *, source: str = "", sending: bool = False) -> Path:
        """Store one validated instance's bytes (a DICOM file with meta header) atomically.

        A series still receiving takes it; a queued (complete) series goes back to receiving;
        a processed or failed series starts a new version with it; while the series is being
        processed it waits in SPOOL/late/ and starts the new version when processing ends.
        An instance whose SOP Instance UID the series already holds is not written: the first
        one is kept (never overwrite what a sender was told is stored), and the duplicate is
        counted in the series' record and logged. ``sending``: it came over an association that
        is still open; the series is marked receiving (persisted before the instance is, so a
        service killed mid-transfer knows at restart that the sender was cut off). Returns the
        path that holds the instance."""
        if not (valid_uid(series_uid) and valid_uid(sop_uid)):
            raise SpoolError(f"refusing to store UIDs {series_uid[:80]!r}/{sop_uid[:80]!r}")
        self.check_free_space(len(data))
        tmp = write_new(temp_name(f"{sop_uid}.dcm", self.tmp), data, mode=FILE_MODE)
        try:
            with self._lock:
                state = self.state_of(series_uid)
                if state == SeriesState.PROCESSING:
                    held = self.dir(state, series_uid) / "instances" / f"{sop_uid}.dcm"
                    if held.exists():
                        return self._duplicate(self.dir(state, series_uid), held, data, source)
                    return self._store_late(tmp, series_uid, sop_uid, data, source)
                if state in (SeriesState.DONE, SeriesState.FAILED, SeriesState.COMPLETE):
                    d = self.dir(state, series_uid)
                    held = d / "instances" / f"{sop_uid}.dcm"
                    if held.exists():   # a resend of what this version already holds: nothing new
                        return self._duplicate(d, held, data, source)
                if state in (SeriesState.DONE, SeriesState.FAILED):
                    received = self._new_version(series_uid, state, f"instance {sop_uid} from {source or '?'}")
                elif state == SeriesState.COMPLETE:
                    received = self.dir(SeriesState.RECEIVED, series_uid)
                    os.rename(self.dir(state, series_uid), received)   # the worker claims under this lock too
                    fsync_dir(received.parent)
                    log.warning("series %s: instance arrived after completion; back to receiving", series_uid)
                    self.event(received, "receiving_again", complete=None)
                elif state is None:
                    received = self.dir(SeriesState.RECEIVED, series_uid)
                    mkdir_private(received / "instances")
                    fsync_dir(received.parent)
                    self.event(received, "received", source=source, version=1)
                else:
                    received = self.dir(SeriesState.RECEIVED, series_uid)
                dest = received / "instances" / f"{sop_uid}.dcm"
                if dest.exists():
                    return self._duplicate(received, dest, data, source)
                if sending and series_uid not in self._marked_receiving:
                    if not self.read_record(received).get("receiving"):
                        self.event(received, "transfer_started", quiet=True, receiving=True, source=source)
                    self._marked_receiving.add(series_uid)
                os.replace(tmp, dest)
                fsync_dir(dest.parent)
                if series_uid in self._refused:
                    self._resolve_refusal(received, sop_uid)
                return dest
        finally:
            if tmp.exists():
                tmp.unlink()

    def refuse(self, series_uid: str, sop_uid: str, reason: str) -> None:
        """Record that instance ``sop_uid`` of the series was refused (out of resources, a missing
        Type 1 attribute...): until it arrives, the series cannot be reported complete (after
        ``--incomplete-wait`` it is processed, marked PARTIAL). A series the service does not hold
        yet is created (empty) to carry the record; one queued goes back to receiving; one being
        processed, done or failed is not changed (the instance would start a new version)."""
        if not (valid_uid(series_uid) and valid_uid(sop_uid)):
            raise SpoolError(f"refusing to record UIDs {series_uid[:80]!r}/{sop_uid[:80]!r}")
        with self._lock:
            state = self.state_of(series_uid)
            if state in (SeriesState.PROCESSING, SeriesState.DONE, SeriesState.FAILED):
                log.warning("series %s (%s): instance %s refused: %s", series_uid, state.value, sop_uid, reason)
                return
            received = self.dir(SeriesState.RECEIVED, series_uid)
            if state == SeriesState.COMPLETE:
                os.rename(self.dir(state, series_uid), received)
                fsync_dir(received.parent)
                self.event(received, "receiving_again", complete=None)
            elif state is None:
                mkdir_private(received / "instances")
                fsync_dir(received.parent)
                self.event(received, "received", source="(refused instance)", version=1)
            if (received / "instances" / f"{sop_uid}.dcm").exists():
                return   # a copy is held: the refusal of a resend takes nothing away
            refused = dict(self.read_record(received).get("refused") or {})
            refused[sop_uid] = reason[:300]
            self._refused.add(series_uid)
            self.event(received, "refused", record={"refused": refused}, sop_instance_uid=sop_uid, reason=reason)

    def _resolve_refusal(self, series_dir: Path, sop_uid: str) -> None:
        refused = dict(self.read_record(series_dir).get("refused") or {})
        if refused.pop(sop_uid, None) is not None:
            self.event(series_dir, "refusal_resolved", quiet=True, record={"refused": refused or None},
                       sop_instance_uid=sop_uid)
        if not refused:
            self._refused.discard(series_dir.name)

    def _duplicate(self, series_dir: Path, held: Path, data: bytes, source: str) -> Path:
        same = held.stat().st_size == len(data) and held.read_bytes() == data
        rec = self.read_record(series_dir)
        n = int(rec.get("duplicates", 0)) + 1
        # an identical resend is routine (a sender retrying); different content under one UID is not
        (log.debug if same else log.warning)(
            "series %s: SOP Instance UID %s received again from %s (%s); kept the first copy",
            series_dir.name, held.stem, source or "?", "identical" if same else "DIFFERENT content")
        self.event(series_dir, "duplicate", quiet=True, duplicates=n, sop_instance_uid=held.stem, identical=same,
                   source=source)
        return held

    def _store_late(self, tmp: Path, series_uid: str, sop_uid: str, data: bytes, source: str) -> Path:
        d = mkdir_private(self.root / "late" / series_uid)
        dest = d / f"{sop_uid}.dcm"
        if dest.exists():
            log.info("series %s: instance %s already waiting in %s; kept the first copy", series_uid, sop_uid, d)
            return dest
        os.replace(tmp, dest)
        fsync_dir(d)
        log.warning("series %s is being processed: instance %s waits in %s for the next version",
                    series_uid, sop_uid, d)
        return dest

    def _new_version(self, uid: str, state: SeriesState, why: str) -> Path:
        """done/failed -> received as version n + 1 (under the lock). Instances still held are kept."""
        src, dest = self.dir(state, uid), self.dir(SeriesState.RECEIVED, uid)
        rec = self.read_record(src)
        os.rename(src, dest)
        fsync_dir(dest.parent)
        mkdir_private(dest / "instances")
        for stale in ("error.txt",):
            (dest / stale).unlink(missing_ok=True)
        version = int(rec.get("version", 1)) + 1
        self.event(dest, "new_version", version=version, previous_state=state.value, reason=why,
                   complete=None, incomplete=None, interrupted=None, receiving=None, error=None, coverage=None)
        log.warning("series %s: %s after it was %s: receiving version %d (it will be processed again and "
                    "supersede version %d)", uid, why, state.value, version, version - 1)
        return dest

    def fold_late(self, uid: str) -> bool:
        """Instances that waited in late/ while ``uid`` was processed start its next version."""
        late = self.root / "late" / uid
        with self._lock:
            files = sorted(late.glob("*.dcm")) if late.is_dir() else []
            state = self.state_of(uid)
            if not files or state not in (SeriesState.DONE, SeriesState.FAILED):
                return False
            received = self._new_version(uid, state, f"{len(files)} instance(s) that arrived while processing")
            for f in files:
                dest = received / "instances" / f.name
                if dest.exists():
                    f.unlink()
                else:
                    os.replace(f, dest)
            fsync_dir(received / "instances")
            shutil.rmtree(late, ignore_errors=True)
        return True

    def transfer(self, uid: str, what: str) -> None:
        """Record how a sender's association that stored into a series still receiving ended:
        ``released`` (normally: it has sent everything) or anything else ("aborted", "connection
        lost": cut off, so the series is interrupted and waits for a resend instead of counting
        as complete after the quiet period). The start is recorded by `store` (``sending``)."""
        with self._lock:
            self._marked_receiving.discard(uid)
            d = self.dir(SeriesState.RECEIVED, uid)
            if not d.is_dir():
                return
            if what == "released":
                self.event(d, "transfer_released", quiet=True, receiving=False, interrupted=False)
            else:
                self.event(d, "transfer_interrupted", receiving=False, interrupted=True, how=what)

    def check_free_space(self, need_bytes: int) -> None:
        min_free = self.min_free_mb * 2 ** 20
        free = shutil.disk_usage(self.root).free
        if free - need_bytes < min_free:
            raise SpoolFullError(f"spool {self.root} has {free / 2 ** 20:.0f} MiB free, below the "
                                 f"{min_free / 2 ** 20:.0f} MiB minimum")

    # -- state changes ------------------------------------------------------------------------
    def completeness(self, uid: str, inst: Path, mtime: float) -> Completeness:
        """`check_series` on a received series, read again only when its folder changed."""
        n = sum(1 for _ in inst.iterdir())
        hit = self._checked.get(uid)
        if hit and hit[:2] == (mtime, n):
            return hit[2]
        c = check_series(inst)
        self._checked[uid] = (mtime, n, c)
        return c

    def complete_quiet(self, quiet_s: float, now: float | None = None, since: float = 0.0, *,
                       receiving=(), incomplete_s: float = 600.0) -> list[str]:
        """Queue every received series that is quiet and whole; return their UIDs.

        Quiet: no instance for ``quiet_s`` seconds and no association storing into it
        (``receiving``: UIDs with one open). ``since``: the service's start time; the quiet clock
        never starts before it, so a sender cut off by a restart has time to resume. Whole: no
        gap in its slices (`completeness.check_series`); a series with a gap, a hole in its
        InstanceNumbers, or whose sender was cut off (``interrupted``) waits up to
        ``incomplete_s`` for the rest; then a gapped series fails (its instances kept: a resend
        starts a new version) and the others are queued, marked not complete (SR: PARTIAL)."""
        now = time.time() if now is None else now
        done = []
        with self._lock:
            for d in sorted((self.root / "received").iterdir()):
                uid = d.name
                inst = d / "instances"
                try:
                    last = inst.stat().st_mtime
                except FileNotFoundError:
                    continue
                idle = now - max(last, since)
                if uid in receiving or idle < quiet_s:
                    continue
                rec = self.read_record(d)
                c = self._whole(uid, inst, last, rec)
                if c.identity:   # two patients, studies or frames in one series: never processed
                    self._checked.pop(uid, None)
                    self.event(d, "identity_refused", identity=c.identity)
                    self.fail(uid, f"identity: {c.identity}", state=SeriesState.RECEIVED)
                    continue
                refused = rec.get("refused") or {}
                if refused and c.complete:
                    c = Completeness(False, f"{len(refused)} instance(s) refused and not received since "
                                            f"(e.g. {next(iter(refused.values()))[:120]})", c.instances,
                                     c.positions_mm)
                if not c.complete and idle >= incomplete_s and c.gap:
                    self._checked.pop(uid, None)
                    self.fail(uid, f"incomplete: {c.reason}; nothing arrived for {idle:.0f} s "
                                   f"(send the missing instances or the whole series again)",
                              state=SeriesState.RECEIVED)
                    continue
                if not c.complete and idle < incomplete_s:
                    if rec.get("incomplete") != c.reason:
                        self.event(d, "incomplete", incomplete=c.reason, instances=c.instances)
                    continue
                interrupted = bool(rec.get("interrupted"))
                if interrupted and idle < incomplete_s:
                    continue   # its sender was cut off: give it time to send again
                # here: whole, or, after the wait, cut off or with a numbering hole (not complete)
                whole = c.complete and not interrupted
                dest = self.dir(SeriesState.COMPLETE, uid)
                os.rename(d, dest)
                fsync_dir(dest.parent)
                self._checked.pop(uid, None)
                ext = [round(min(c.positions_mm), 3), round(max(c.positions_mm), 3)] if c.positions_mm else None
                why = [c.reason] if not c.complete else []
                why += ["its sender was cut off and did not resume"] if interrupted else []
                self.event(dest, "complete", instances=c.instances, complete=whole, incomplete=None,
                           extent_mm=ext, identity="consistent", **({"reason": "; ".join(why)} if why else {}))
                done.append(uid)
        return done

    def _whole(self, uid: str, inst: Path, mtime: float, rec: dict) -> Completeness:
        c = self.completeness(uid, inst, mtime)
        prev = rec.get("extent_mm")
        if not c.gap and prev and c.positions_mm and int(rec.get("version", 1)) > 1:
            # a new version must cover what the one it supersedes covered: results for part of a
            # scan must not replace results for all of it
            lo, hi = min(c.positions_mm), max(c.positions_mm)
            if lo > prev[0] + 0.5 or hi < prev[1] - 0.5:
                return Completeness(False, f"version {rec.get('version')} covers {lo:.1f}..{hi:.1f} mm along the "
                                           f"normal, the previous one {prev[0]:.1f}..{prev[1]:.1f} mm "
                                           f"(its images are no longer held: send the whole series)",
                                    c.instances, c.positions_mm, gap=True)
        return c

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
            fsync_dir(dest.parent)
            rec = self.read_record(dest)
            self.event(dest, "processing", attempts=int(rec.get("attempts", 0)) + 1)
        return dest

    def results_dir(self, uid: str) -> Path:
        if not valid_uid(uid):
            raise SpoolError(f"series UID {uid[:80]!r} is not a valid DICOM UID")
        return self.root / "results" / uid

    def results_version(self, uid: str) -> int | None:
        """The version of the series that SPOOL/results/<uid> holds (None: no results)."""
        final = self.results_dir(uid)
        if not final.is_dir():
            return None
        try:
            return int(json.loads((final / "version.json").read_text())["version"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            return 1   # written before results carried their version

    def publish(self, uid: str, partial: Path, version: int = 1, **info) -> Path:
        """Atomically turn a fully written results folder into SPOOL/results/<uid>.

        ``version.json`` in it names the series version (and ``info``: completeness...). Results
        of an earlier version move to SPOOL/superseded/<uid>/v<n>/ first; results of this very
        version are never written twice."""
        final = self.results_dir(uid)
        have = self.results_version(uid)
        if have is not None and have >= version:
            raise SpoolError(f"results for series {uid} version {have} already exist in {final}; not writing "
                             f"version {version} over them")
        self.write_file(partial / "version.json", json.dumps({"series_uid": uid, "version": version, **info},
                                                            indent=1).encode())
        make_private(partial)
        for f in partial.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(partial)
        with self._lock:
            if have is not None:
                old = mkdir_private(self.root / "superseded" / uid) / f"v{have}"
                shutil.rmtree(old, ignore_errors=True)
                # two renames: a reader may find no results for an instant, never mixed ones
                os.rename(final, old)
            os.rename(partial, final)
            fsync_dir(final.parent)
        return final

    def finish(self, uid: str, *, keep_instances: bool = True, **detail) -> Path:
        """processing -> done. Instances stay (a later instance merges with them into a new version)
        until `prune`, unless ``keep_instances`` is False."""
        src, dest = self.dir(SeriesState.PROCESSING, uid), self.dir(SeriesState.DONE, uid)
        with self._lock:
            # the event is written before the rename: whoever sees the series in done/ sees its "done"
            self.event(src, "done", **detail)
            os.rename(src, dest)
            fsync_dir(dest.parent)
        if not keep_instances:
            shutil.rmtree(dest / "instances", ignore_errors=True)
        self.fold_late(uid)
        return dest

    def fail(self, uid: str, error: str, state: SeriesState = SeriesState.PROCESSING) -> Path:
        """<state> -> failed, with error.txt; instances are kept for diagnosis."""
        src, dest = self.dir(state, uid), self.dir(SeriesState.FAILED, uid)
        with self._lock:
            # error.txt and the event are written before the rename: whoever sees the series in
            # failed/ sees why
            self.write_file(src / "error.txt", (error.rstrip() + "\n").encode())
            self.event(src, "failed", error=error.strip().splitlines()[-1][:500] if error.strip() else "unknown")
            os.rename(src, dest)
            fsync_dir(dest.parent)
        shutil.rmtree(dest / "result.partial", ignore_errors=True)
        self.fold_late(uid)
        return dest

    def prune(self, retain_s: float, now: float | None = None) -> int:
        """Drop the instances of series done more than ``retain_s`` seconds ago; returns how many."""
        now = time.time() if now is None else now
        n = 0
        for d in (self.root / "done").iterdir():
            inst = d / "instances"
            if not inst.is_dir():
                continue
            ev = self.read_record(d).get("events") or [{}]
            if now - float(ev[-1].get("t", 0.0)) >= retain_s:
                with self._lock:
                    if inst.is_dir() and d.is_dir():
                        shutil.rmtree(inst, ignore_errors=True)
                        n += 1
        return n

    def recover(self, max_attempts: int = 3, keep_instances: bool = True) -> dict:
        """On start (and when the worker restarts): finish what a killed service or worker left.

        processing/ whose published results are of its version -> done (never run again);
        processing/ without -> complete (run again) unless it was already tried
        ``max_attempts`` times -> failed; received/ series whose sender was still connected ->
        interrupted (they wait for a resend); instances left in late/ start new versions;
        leftover temporary files are removed."""
        counts = {"requeued": 0, "finished": 0, "failed": 0, "interrupted": 0, "tmp_removed": 0}
        for f in self.tmp.iterdir():
            f.unlink() if f.is_file() else shutil.rmtree(f, ignore_errors=True)
            counts["tmp_removed"] += 1
        for d in sorted((self.root / "processing").iterdir()):
            counts[self.recover_processing(d.name, max_attempts, keep_instances)] += 1
        for d in sorted((self.root / "received").iterdir()):
            if self.read_record(d).get("receiving"):
                self.event(d, "transfer_interrupted", receiving=False, interrupted=True,
                           how="the service stopped while it was being sent")
                counts["interrupted"] += 1
        for d in sorted((self.root / "late").iterdir()):
            if valid_uid(d.name):
                self.fold_late(d.name)
        return counts

    def recover_processing(self, uid: str, max_attempts: int, keep_instances: bool = True) -> str:
        """A series left in processing/ by a dead service or worker: 'finished', 'failed' or 'requeued'."""
        d = self.dir(SeriesState.PROCESSING, uid)
        shutil.rmtree(d / "result.partial", ignore_errors=True)
        rec = self.read_record(d)
        if self.results_version(uid) == int(rec.get("version", 1)):
            self.finish(uid, keep_instances=keep_instances, recovered=True)
            return "finished"
        attempts = int(rec.get("attempts", 1))
        if attempts >= max_attempts:
            self.fail(uid, f"interrupted {attempts} times while processing (the service died each time); "
                           f"not retried")
            return "failed"
        dest = self.dir(SeriesState.COMPLETE, uid)
        with self._lock:
            self.event(d, "requeued", reason="the service stopped while processing it")
            os.rename(d, dest)
        return "requeued"

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
                    n = int(rec.get("instances") or 0)
                out.append(SeriesInfo(d.name, SeriesState(s), d, n, now - last, rec))
        return out

    def status(self) -> dict:
        """A summary of the spool for `noduleflow serve --status` (`status.spool_status`)."""
        return spool_status(self)


__all__ = ["CT_IMAGE_STORAGE", "STATES", "SeriesInfo", "SeriesState", "Spool", "SpoolError", "SpoolFullError",
           "valid_uid", "validate_instance"]
