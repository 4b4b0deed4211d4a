"""What `noduleflow batch` detects: every series named by its SOURCE arguments, as `Job` s.

A SOURCE is one of:

- a folder tree: every MetaImage/NIfTI file in it (a LUNA16 folder, ``subset0/...mhd``, is one) and
  every DICOM CT series in it, found by reading the headers of every file once and grouping the
  slices by SeriesInstanceUID, however the files are laid out (one folder per series, several
  series in one folder, one series spread over folders);
- a DICOM file, or a .mhd/.mha/.nii/.nii.gz file;
- a list of paths: a ``.txt``/``.lst`` file (one path per line, ``#`` comments) or a ``.csv`` file
  (a ``path`` column, else the first column; an optional ``series_uid``/``seriesuid`` column picks
  one DICOM series of that path). Relative paths are taken from the list's own folder.

A DICOM series' job names the smallest folder that holds all of its slices, so the worker that
loads it reads only the headers under that folder, not the whole archive's again.

Each job has a `Job.key`, stable across runs of the same sources (absolute path, plus the series
UID for DICOM): the run manifest records outcomes under it.
"""
from __future__ import annotations

import csv
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from noduleflow.engine.errors import ConfigError
from noduleflow.engine.io import IMAGE_SUFFIXES
from noduleflow.engine.io.dicom_header import SliceHeader, read_header
from noduleflow.engine.package import printable

LIST_SUFFIXES = (".txt", ".lst", ".csv")
# data files of a MetaImage header: read through their .mhd, never a scan of their own
_DATA_SUFFIXES = (".raw", ".zraw")


@dataclass(frozen=True)
class Job:
    """One series to detect: ``path`` (a DICOM folder or file, or an image file, absolute) and, for
    DICOM, the ``series_uid`` to load from it (None: the loader's choice, as ``detect`` makes it)."""
    path: str
    series_uid: str | None = None

    @property
    def key(self) -> str:
        """The job's id in the run manifest: the path, and ``::`` + the series UID for DICOM."""
        return self.path if self.series_uid is None else f"{self.path}::{self.series_uid}"

    @property
    def label(self) -> str:
        """The job for messages (control characters replaced)."""
        return printable(self.path + (f" {self.series_uid}" if self.series_uid else ""))


def find_jobs(sources, *, workers: int | None = None) -> list[Job]:
    """Every series the ``sources`` (paths, str or Path) name, in a stable order, each once.
    ``workers``: threads reading DICOM headers (default: 2 per core, at most 8). ConfigError, one
    line, for a source that does not exist or a list file that cannot be read."""
    jobs: list[Job] = []
    for src in sources:
        p = Path(src).expanduser()
        if not p.exists():
            raise ConfigError(f"batch source {printable(src)} does not exist")
        if p.is_file() and p.name.lower().endswith(LIST_SUFFIXES):
            jobs += _listed_jobs(p, workers)
        elif p.is_dir():
            jobs += _tree_jobs(p.resolve(), workers)
        else:
            jobs.append(Job(str(p.resolve())))
    return list(dict.fromkeys(jobs))   # the same series named twice is detected once


def _tree_jobs(root: Path, workers: int | None) -> list[Job]:
    """Image files and DICOM series under the folder ``root``."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            f = Path(dirpath) / name
            low = name.lower()
            if low.endswith(IMAGE_SUFFIXES):
                images.append(Job(str(f)))
            elif not low.endswith(_DATA_SUFFIXES) and not name.startswith(".") and f.is_file():
                others.append(f)
    return images + dicom_series_jobs(others, workers)


def dicom_series_jobs(files: list[Path], workers: int | None = None) -> list[Job]:
    """One `Job` per CT series among ``files`` (localizers and non-DICOM files left out): its
    series UID and the smallest folder holding all its slices."""
    if not files:
        return []
    n = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(n) as pool:
        headers = list(pool.map(read_header, files))
    folders: dict[str, set[str]] = defaultdict(set)
    for h in headers:
        if isinstance(h, SliceHeader) and h.modality == "CT" and not h.is_localizer:
            folders[h.series_uid].add(str(h.path.parent))
    # a series without a SeriesInstanceUID: the loader picks it (and names it) from its folder
    return [Job(os.path.commonpath(sorted(dirs)), uid or None) for uid, dirs in sorted(folders.items())]


def _listed_jobs(listing: Path, workers: int | None) -> list[Job]:
    """The jobs of a list file: each listed path expanded as a SOURCE, or one DICOM series of it."""
    try:
        text = listing.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the list of paths {printable(listing)}: {printable(exc)}") from None
    entries: list[tuple[str, str | None]] = []
    if listing.name.lower().endswith(".csv"):
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        head = [c.strip().lower() for c in rows[0]] if rows else []
        path_col = head.index("path") if "path" in head else 0
        uid_col = next((head.index(c) for c in ("series_uid", "seriesuid") if c in head), None)
        if "path" in head or uid_col is not None:
            rows = rows[1:]
        for r in rows:
            uid = r[uid_col].strip() if uid_col is not None and uid_col < len(r) else ""
            entries.append((r[path_col].strip(), uid or None))
    else:
        entries = [(line.strip(), None) for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    jobs = []
    for raw, uid in entries:
        p = Path(raw).expanduser()
        p = (p if p.is_absolute() else listing.parent / p).resolve()
        if uid is not None:
            jobs.append(Job(str(p), uid))
        elif p.is_dir():
            found = _tree_jobs(p, workers)
            # nothing recognisable: a job all the same, so that the loader's reason is recorded
            jobs += found or [Job(str(p))]
        else:
            jobs.append(Job(str(p)))   # a missing file fails as a series, recorded, not the whole run
    return jobs
