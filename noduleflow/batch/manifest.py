"""The run manifest of `noduleflow batch`: what a run was, and what became of each series.

Two files in OUT:

- ``batch-manifest.json``: the run's identity: the model package (id and sha256 of its manifest,
  which hashes every file), the detection settings, the backend and precision asked for, the
  engine version, and one entry per run (start, sources, counts). Written atomically when a run
  starts and when it ends.
- ``batch-series.jsonl``: one JSON line per outcome, appended and flushed to disk after that
  series' files are in place: ``{"key", "path", "series_uid", "name", "status": "done" | "failed",
  "reason", "attempts", "worker", "timings_s", "wall_s", "n_candidates", "settings_id", "time"}``.
  A series' state is its last line. Appending one line is the update that stays O(1) per series
  however large the archive (rewriting one JSON file after each of 10,000 series would write
  gigabytes); a line cut off by a crash is not valid JSON and is ignored when read, so that
  series counts as not done and is detected again, into the same file names.

A rerun with another package or other settings (``settings_id`` differs) is refused unless
``force_mix``; then each line's ``settings_id`` says which settings made it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from noduleflow.engine.errors import ConfigError
from noduleflow.engine.fileio import atomic_write
from noduleflow.engine.package import printable
from noduleflow.engine.results import FILE_MODE

log = logging.getLogger(__name__)

MANIFEST_NAME = "batch-manifest.json"
RECORDS_NAME = "batch-series.jsonl"
FORMAT = "noduleflow-batch/1"
# what must be equal for two runs' results to be mixed in one OUT
IDENTITY_KEYS = ("package_sha256", "settings", "backend", "precision")


def settings_id(identity: dict) -> str:
    """A short hash of the identity's `IDENTITY_KEYS` (16 hex digits)."""
    core = {k: identity.get(k) for k in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunManifest:
    """The manifest and series records of the batch run in ``out`` (the caller holds OUT's lock).

    ``identity``: package_id, package_sha256, settings (a dict), backend, precision,
    engine_version. Opening a folder whose manifest has another identity raises ConfigError
    naming the differences, unless ``force_mix``.
    """

    def __init__(self, out, identity: dict, *, force_mix: bool = False):
        self.out = Path(out)
        self.path = self.out / MANIFEST_NAME
        self.records_path = self.out / RECORDS_NAME
        self.identity = dict(identity)
        self.settings_id = settings_id(identity)
        self.header = self._read_header()
        if self.header is None:
            self.header = {"format": FORMAT, **self.identity, "settings_id": self.settings_id, "runs": []}
        else:
            self._check(force_mix)
        self.records: dict[str, dict] = self._read_records()
        self._end_cut_line()

    # -- reading --------------------------------------------------------------------------------
    def _read_header(self) -> dict | None:
        if not self.path.exists():
            if self.records_path.exists():
                raise ConfigError(f"{printable(self.records_path)} exists without {MANIFEST_NAME}: not a batch "
                                  "output folder this version wrote; choose another --out")
            return None
        try:
            header = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the batch manifest {printable(self.path)}: {printable(exc)}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            fmt = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise ConfigError(f"{printable(self.path)}: unknown batch manifest format {printable(fmt)!r}, "
                              f"expected {FORMAT!r}")
        return header

    def _check(self, force_mix: bool) -> None:
        diffs = [k for k in IDENTITY_KEYS if self.header.get(k) != self.identity.get(k)]
        if not diffs:
            if self.header.get("engine_version") != self.identity.get("engine_version"):
                log.warning("%s was written by engine %s, this is %s", self.out, self.header.get("engine_version"),
                            self.identity.get("engine_version"))
            return
        said = []
        for k in diffs:
            old, new = self.header.get(k), self.identity.get(k)
            if isinstance(old, dict) and isinstance(new, dict):
                changed = sorted(n for n in old.keys() | new.keys() if old.get(n) != new.get(n))
                said.append(", ".join(f"{n} {old.get(n)!r} -> {new.get(n)!r}" for n in changed))
            else:
                said.append(f"{k} {str(old)[:16]!r} -> {str(new)[:16]!r}")
        if not force_mix:
            raise ConfigError(f"{printable(self.out)} holds the results of another package or other settings "
                              f"({printable('; '.join(said))}): choose another --out, or --force-mix to add these "
                              "results to them")
        log.warning("mixing into %s results of other settings: %s", self.out, "; ".join(said))

    def _read_records(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        if not self.records_path.exists():
            return records
        with open(self.records_path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s line %d is cut off (an interrupted run): ignored", self.records_path, n)
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                    records[rec["key"]] = rec
        return records

    def _end_cut_line(self) -> None:
        """End a line cut off by a crash with a newline, so the next record starts a line of its own."""
        if not self.records_path.exists() or self.records_path.stat().st_size == 0:
            return
        with open(self.records_path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())

    # -- state ----------------------------------------------------------------------------------
    def is_done(self, key: str) -> bool:
        """Whether ``key``'s last outcome is done and its JSON result is still there."""
        rec = self.records.get(key)
        return bool(rec and rec.get("status") == "done" and (self.out / f"{rec['name']}.json").exists())

    def name_for(self, key: str, wanted: str) -> str:
        """The output name of ``key``: the one it had, else ``wanted``, made unique among the other
        series' names by ``-2``, ``-3``... (two inputs with one series id keep both results, as in
        ``detect``)."""
        rec = self.records.get(key)
        if rec and rec.get("name"):
            return rec["name"]
        taken = {r.get("name") for k, r in self.records.items() if k != key}
        name, n = wanted, 1
        while name in taken:
            n += 1
            name = f"{wanted}-{n}"
        return name

    def done(self) -> list[dict]:
        """The records of every series whose last outcome is done, in key order."""
        return [self.records[k] for k in sorted(self.records) if self.is_done(k)]

    # -- writing --------------------------------------------------------------------------------
    def start_run(self, info: dict) -> None:
        """Record a run's start (``info``: sources, number of jobs...) and write the manifest."""
        self.header["runs"].append({"started": _now(), **info, "settings_id": self.settings_id})
        self.write_header()

    def end_run(self, counts: dict) -> None:
        self.header["runs"][-1].update({"ended": _now(), **counts})
        self.write_header()

    def write_header(self) -> None:
        atomic_write(self.path, json.dumps(self.header, indent=2, default=str) + "\n", mode=FILE_MODE)

    def append(self, record: dict) -> dict:
        """Append one outcome (``record`` has at least key and status), flushed to disk."""
        rec = {**record, "settings_id": self.settings_id, "time": _now()}
        line = (json.dumps(rec, default=str) + "\n").encode()
        fd = os.open(self.records_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, line)   # one write of the whole line: no interleaving within it
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records[rec["key"]] = rec
        return rec


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
