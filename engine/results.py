"""What a detection returns (`Detections`, a sequence of `Candidate`) and how it is written.

`Detections.save(folder)` writes exactly what ``noduleflow detect`` writes for one series:
``candidates.csv`` (LUNA16 submission layout), ``<id>.json`` (candidates, stage timings,
backend, model, engine version, warnings) and ``<id>.png`` (the candidates picture). Every file
name derived from the data passes through `safe_name`, and every value from the data written as
text passes through `printable` (control characters replaced; JSON escapes its own).

Results describe a patient, and a run's results belong together: they go through a
`ResultFolder`, checked before any work (a folder this process can write, not a file), created
0700, locked against a second process, and written all-or-nothing with files 0600 (every file to
a temporary first, all renamed once all are whole: a full disk leaves nothing half-written).
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import fileio
from .characterise.finding import Finding
from .characterise.lungrads import ScanCategory, scan_category
from .errors import ConfigError, NoduleflowError
from .package import printable

log = logging.getLogger(__name__)

FILE_MODE = 0o600     # result files: the owner only
FOLDER_MODE = 0o700   # folders this package creates for them

CSV_HEADER = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
# findings.csv: the LUNA16 columns, then the characterisation of each characterised candidate
FINDINGS_HEADER = CSV_HEADER + (
    "rank", "tracking_uid", "type", "mean_diameter_mm", "long_axis_mm", "short_axis_mm",
    "solid_core_mean_diameter_mm", "volume_mm3", "mean_hu", "max_hu", "calcification", "spiculation",
    "lobulation", "cavity", "juxta_pleural", "juxta_vascular", "side", "zone", "lung_rads")


@dataclass(frozen=True)
class Candidate:
    """One nodule candidate: LPS world centre (mm), calibrated probability, optional diameter."""
    center_xyz_mm: tuple[float, float, float]
    prob: float
    n_points: int = 1                  # scored grid points merged into this candidate
    diameter_mm: float | None = None   # estimated lesion diameter, when the detector estimates one
    finding: Finding | None = None     # its characterisation (`engine.characterise`), when one ran

    @property
    def x(self) -> float:
        return self.center_xyz_mm[0]

    @property
    def y(self) -> float:
        return self.center_xyz_mm[1]

    @property
    def z(self) -> float:
        return self.center_xyz_mm[2]

    @property
    def probability(self) -> float:
        return self.prob


@dataclass(frozen=True)
class Detections(Sequence):
    """The candidates of one series, best first, with how they were obtained.

    A sequence: ``len(d)``, ``d[0]``, ``for c in d``. ``volume`` is the loaded scan (for
    `plot`); ``preprocessed`` (lung mask and the 1 mm lung box) is kept when
    ``Detector.detect(..., keep_preprocessed=True)`` asked for it.
    """
    series_uid: str
    candidates: tuple[Candidate, ...]
    timings_s: dict
    backend: str
    mode: str
    model_id: str
    engine_version: str
    n_scored: int = 0
    meta: dict = field(default_factory=dict)
    volume: object = field(default=None, repr=False, compare=False)
    preprocessed: object = field(default=None, repr=False, compare=False)

    # -- sequence -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.candidates)

    def __getitem__(self, i):
        return self.candidates[i]

    def __iter__(self):
        return iter(self.candidates)

    @property
    def name(self) -> str:
        """File-name-safe id of the series (see `safe_name`)."""
        return safe_name(self.series_uid, fallback_seed=str(self.meta.get("source", "")))

    @property
    def lung_mask(self):
        """bool (z, y, x) lung mask on the 1 mm lung box, or None unless kept."""
        return None if self.preprocessed is None else self.preprocessed.mask

    # -- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict:
        bare = replace(self, candidates=(), volume=None, preprocessed=None)
        d = {k: v for k, v in asdict(bare).items() if k not in ("volume", "preprocessed")}
        d["candidates"] = [self._candidate_dict(i, c) for i, c in enumerate(self.candidates)]
        lr = self.lung_rads
        if lr is not None:
            d["lung_rads"] = {**lr.to_dict(), "driver_rank": None if lr.driver is None else lr.driver + 1}
        return d

    def _candidate_dict(self, i: int, c: Candidate) -> dict:
        e = {k: v for k, v in asdict(replace(c, finding=None)).items() if k != "finding"}
        if c.finding is not None:
            e["tracking_id"] = f"finding {i + 1}"
            e["tracking_uid"] = tracking_uid(self.series_uid, i, c.center_xyz_mm)
            e["finding"] = c.finding.to_dict()
        return e

    # -- characterisation -------------------------------------------------------------
    @property
    def characterised(self) -> bool:
        """Whether the findings were characterised (`Detector.detect` with ``characterise_top``)."""
        return bool(self.meta.get("characterise_top")) or any(c.finding is not None for c in self.candidates)

    @property
    def lung_rads(self) -> ScanCategory | None:
        """The scan's proposed Lung-RADS v2022 baseline category (`engine.characterise.lungrads`):
        the highest of the characterised findings', ``driver`` its candidate index; "1" when none
        was found. None when no characterisation ran. A proposal for a reader, not a diagnosis."""
        if not self.characterised:
            return None
        return scan_category([c.finding.lung_rads if c.finding is not None and c.finding.segmented else None
                              for c in self.candidates])

    def findings_report(self) -> list[str]:
        """Lines for a terminal: per characterised finding its rank, type, Lung-RADS mean diameter
        (solid core), volume, place and proposed category; then the scan's proposal and what it is."""
        lr = self.lung_rads
        if lr is None:
            return []
        out = []
        for i, c in enumerate(self.candidates, 1):
            f = c.finding
            if f is None:
                continue
            if not f.segmented:
                out.append(f"  #{i} p={c.prob:.3f}: not segmented ({f.note})")
                continue
            core = f", solid core {f.solid_core_mean_diameter_mm:.1f} mm" if f.solid_core_mean_diameter_mm else ""
            where = f", {f.location.side} {f.location.zone} zone" if f.location else ""
            out.append(f"  #{i} p={c.prob:.3f}: {f.type}, mean diameter {f.mean_diameter_mm:.1f} mm{core}, "
                       f"{f.volume_mm3:.0f} mm3{where}: Lung-RADS {f.lung_rads}")
        drv = "" if lr.driver is None else f", driven by #{lr.driver + 1}"
        out.append(f"  scan: Lung-RADS {lr.category}{drv}. {lr.note}.")
        return out

    def findings_rows(self) -> list[tuple]:
        """One `FINDINGS_HEADER` row per characterised candidate (segmented or not)."""
        out = []
        for i, c in enumerate(self.candidates):
            f = c.finding
            if f is None:
                continue
            loc = f.location
            out.append((self.series_uid, *c.center_xyz_mm, c.prob, i + 1,
                        tracking_uid(self.series_uid, i, c.center_xyz_mm), f.type, f.mean_diameter_mm,
                        f.long_axis_mm, f.short_axis_mm, f.solid_core_mean_diameter_mm, f.volume_mm3, f.mean_hu,
                        f.max_hu, f.calcification, f.spiculation, f.lobulation, f.cavity, f.juxta_pleural,
                        f.juxta_vascular, loc.side if loc else "", loc.zone if loc else "", f.lung_rads or ""))
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def rows(self) -> list[tuple]:
        """(seriesuid, x, y, z, probability, diameter mm or None) per candidate: the LUNA16
        submission rows, with the estimated diameter as an extra column."""
        return [(self.series_uid, *c.center_xyz_mm, c.prob, c.diameter_mm) for c in self.candidates]

    def to_csv(self) -> str:
        """The LUNA16 submission CSV of this series (header + one row per candidate)."""
        return csv_text(self.rows())

    def plot(self, path=None, truth=None, max_candidates: int | None = None):
        """The candidates picture (PIL image); written as PNG to ``path`` when given.
        ``truth``: optional (n, 4) [x, y, z, diameter mm] true nodules, named where hit."""
        from .render import candidates_image

        if self.volume is None:
            raise ValueError("these Detections hold no volume to draw")
        img = candidates_image(self.volume, self, truth=truth, max_candidates=max_candidates)
        if path is not None:
            atomic_write(path, _png_bytes(img))
        return img

    def save(self, folder, png: bool = True, csv_file: bool = True, name: str | None = None) -> dict:
        """Write ``candidates.csv``, ``<name>.json`` and ``<name>.png`` into ``folder``
        (exactly what ``noduleflow detect`` writes for one series) -> {kind: path}.
        ``name`` (default `name`, the sanitised series id) is passed through `safe_name`. All
        or nothing, through a `ResultFolder` (NoduleflowError, one line, when it cannot)."""
        with ResultFolder(folder) as rf:
            out = rf.add(self, name=name, png=png)
            if csv_file:
                out["csv"] = rf.add_csv(self.rows())
                if self.characterised:
                    out["findings_csv"] = rf.add_findings_csv(self.findings_rows())
        return out


def tracking_uid(series_uid: str, index: int, center_xyz_mm) -> str:
    """The DICOM UID that tracks finding ``index`` (0-based rank) of a series across reports (the
    SR's TID 1500 tracking identifier, the result JSON's ``tracking_uid``): "2.25." and a
    128-bit integer hashed from the series UID, the rank and the centre, so that the JSON and
    the SR of one detection agree without sharing state."""
    key = f"{series_uid}|{index}|" + ",".join(f"{float(v):.3f}" for v in center_xyz_mm)
    return "2.25." + str(int(hashlib.sha256(key.encode()).hexdigest()[:32], 16))


def findings_csv_text(rows) -> str:
    """`Detections.findings_rows` rows (of one or more series) -> findings.csv text: the five LUNA16
    columns first, then the characterisation (`FINDINGS_HEADER`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FINDINGS_HEADER)
    for r in rows:
        uid, x, y, z, p = r[:5]
        w.writerow([printable(uid), f"{x:.4f}", f"{y:.4f}", f"{z:.4f}", f"{p:.6f}", *map(csv_cell, r[5:])])
    return buf.getvalue()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(uid: str, fallback_seed: str = "") -> str:
    """A file name for a series id: characters outside [A-Za-z0-9._-] become '_', no leading
    dot, at most 128 characters; an empty id becomes ``series-<hash of fallback_seed>`` so that
    the same input always gets the same name."""
    name = _UNSAFE.sub("_", str(uid)).lstrip(".")[:128]
    if not name.strip("_"):
        name = "series-" + hashlib.sha256(fallback_seed.encode()).hexdigest()[:12]
    return name


def csv_cell(v) -> str:
    """One CSV cell of a measurement: "" for None, 1/0 for booleans, floats to 0.01, anything else
    as printable text (control characters escaped)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.2f}"
    return printable(str(v))


def csv_text(rows) -> str:
    """rows: iterable of (seriesuid, x, y, z, prob[, diameter mm or None]) -> LUNA16 submission
    CSV text; a ``diameter_mm`` column after the five LUNA16 ones when any row has a diameter
    (LUNA16 readers take the first five columns)."""
    rows = [tuple(r) for r in rows]
    with_d = any(len(r) > 5 and r[5] is not None for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER + (("diameter_mm",) if with_d else ()))
    for r in rows:
        uid, x, y, z, p = r[:5]
        cells = [printable(uid), f"{x:.4f}", f"{y:.4f}", f"{z:.4f}", f"{p:.6f}"]
        if with_d:
            cells.append(f"{r[5]:.1f}" if len(r) > 5 and r[5] is not None else "")
        w.writerow(cells)
    return buf.getvalue()


def write_candidates_csv(path, rows) -> Path:
    """rows: iterable of (seriesuid, x, y, z, prob[, diameter]) -> LUNA16 submission CSV (atomic)."""
    return atomic_write(path, csv_text(rows))


def atomic_write(path, data: str | bytes) -> Path:
    """`fileio.atomic_write` of a result file: a concurrent reader sees the old file or the new
    one, never a cut-off one; missing folders are created 0700, and the file is readable by its
    owner only (0600): results describe a patient."""
    path = Path(path)
    make_private_folder(path.parent)
    return fileio.atomic_write(path, data, mode=FILE_MODE)


def make_private_folder(folder) -> Path:
    """Create ``folder`` and its missing parents, each 0700 whatever the umask (an existing folder
    keeps its mode: it is the user's). ConfigError, one line, when ``folder`` or a parent is a
    file or cannot be created. -> ``folder``."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.is_dir():
        if p.exists() or p.is_symlink():
            what = "a file" if p.is_file() else "not a folder"
            raise ConfigError(f"output folder {printable(folder)}: {printable(p)} is {what}")
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for m in reversed(missing):
        try:
            os.mkdir(m, FOLDER_MODE)
            os.chmod(m, FOLDER_MODE)   # the umask may have taken bits the owner needs
        except FileExistsError:
            if not m.is_dir():
                raise ConfigError(f"output folder {printable(folder)}: {printable(m)} is not a folder") from None
        except OSError as exc:
            raise ConfigError(f"cannot create output folder {printable(m)}: {_reason(exc)}") from None
    return folder


def _reason(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}" + (f" ({code})" if code else "")


class ResultFolder:
    """The folder one run writes its results into, written all-or-nothing by one process at a time.

        with ResultFolder(out) as rf:          # checks and locks OUT now, before any detection
            d = detector.detect(path)
            rf.add(d)                          # <name>.json (+ <name>.png) written to temporaries
            rf.add_csv(rows)                   # candidates.csv
        # on leaving the block every file is renamed into place; on an exception none is, and no
        # temporary is left behind

    Opening it: ``folder`` and missing parents are created 0700 (`make_private_folder`); it must
    be a folder this process can create files in (tried, not guessed from permission bits: root,
    read-only mounts and ACLs all answer the same way); and another process holding it
    (`fileio.FolderLock`) is refused at once, not waited for: two runs writing into one folder would
    mix their ``candidates.csv``. Temporaries left by a killed run are removed once the lock is
    held. Files are 0600. Any of these failing, or a write failing (a full disk), is a
    NoduleflowError with one line that names the folder and the reason (ConfigError for the folder
    itself), after every temporary of the run was removed.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self._lock: fileio.FolderLock | None = None
        self._tx: fileio.Transaction | None = None
        self.written: list[Path] = []

    def open(self) -> ResultFolder:
        where = printable(self.folder)
        make_private_folder(self.folder)
        lock = fileio.FolderLock(self.folder)
        try:
            lock.acquire()
        except fileio.FolderLockedError as exc:
            raise ConfigError(f"output folder {where} is in use by another noduleflow process "
                              f"({printable(exc.holder)}): wait for it to finish or choose another output folder"
                              ) from None
        except OSError as exc:
            raise ConfigError(f"output folder {where} is not writable: {_reason(exc)}") from None
        try:
            stale = fileio.remove_stale_temporaries(self.folder)
            if stale:
                log.info("removed %d temporary file(s) left in %s by an interrupted run", len(stale), where)
            probe = fileio.write_new(fileio.temp_name(self.folder / "probe"), b"", mode=FILE_MODE)
            probe.unlink()
        except OSError as exc:
            lock.release()
            raise ConfigError(f"output folder {where} is not writable: {_reason(exc)}") from None
        self._lock, self._tx = lock, fileio.Transaction(mode=FILE_MODE)
        return self

    def add(self, d: Detections, name: str | None = None, png: bool = True, truth=None,
            max_candidates: int | None = None) -> dict:
        """Stage ``d``'s ``<name>.json`` and, when ``png`` and ``d`` holds its volume, ``<name>.png``
        (`Detections.plot` with ``truth`` and ``max_candidates``). ``name``: default ``d.name``,
        passed through `safe_name`. -> {kind: final path}."""
        name = d.name if name is None else safe_name(name)
        out = {"json": self.write(f"{name}.json", d.to_json())}
        if png and d.volume is not None:
            img = d.plot(truth=truth, max_candidates=max_candidates)
            out["png"] = self.write(f"{name}.png", _png_bytes(img))
        return out

    def add_csv(self, rows, name: str = "candidates.csv") -> Path:
        """Stage the LUNA16 submission CSV of ``rows`` (`csv_text`). -> its final path."""
        return self.write(name, csv_text(rows))

    def add_findings_csv(self, rows, name: str = "findings.csv") -> Path:
        """Stage the findings CSV of ``rows`` (`findings_csv_text`). -> its final path."""
        return self.write(name, findings_csv_text(rows))

    def write(self, name: str, data: str | bytes) -> Path:
        """Stage the file ``name`` (a plain name in the folder). -> its final path. A failed write
        discards the whole run's files (NoduleflowError)."""
        if self._tx is None:
            raise ValueError("the result folder is not open (use it as a context manager)")
        if safe_name(name) != name:
            raise ValueError(f"result file name {printable(name)!r} is not a plain file name")
        try:
            return self._tx.write(self.folder / name, data)
        except OSError as exc:
            self._abort()
            raise NoduleflowError(f"cannot write {printable(name)} into {printable(self.folder)}: {_reason(exc)}; "
                                  "nothing of this run was written") from None

    def commit(self) -> list[Path]:
        """Rename every staged file into place and release the folder. -> the files written."""
        if self._tx is None:
            raise ValueError("the result folder is not open")
        try:
            self.written = self._tx.commit()
        except OSError as exc:
            self._abort()
            raise NoduleflowError(f"cannot write results into {printable(self.folder)}: {_reason(exc)}") from None
        self._close()
        return self.written

    def _abort(self) -> None:
        if self._tx is not None:
            self._tx.discard()
        self._close()

    def _close(self) -> None:
        self._tx = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ResultFolder:
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._tx is not None:
            self.commit()
        else:
            self._abort()


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
