"""LUNA16 folder: ``subset0..9/*.mhd`` + ``annotations.csv`` (+ optional ``candidates_V2.csv``
and ``annotations_excluded.csv``). The ten subsets are the folds (LUNA16's own split, by scan).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from noduleflow.engine import ConfigError

from .annotations import Candidate, Finding, by_series, read_candidates, read_findings

log = logging.getLogger(__name__)

_SUBSET = re.compile(r"^subset(\d+)$")


@dataclass(frozen=True)
class ScanRecord:
    """One scan of a dataset: where it is, its fold, and its findings (world mm)."""

    series_uid: str
    path: Path
    fold: int
    nodules: tuple[Finding, ...]
    excluded: tuple[Finding, ...] = ()
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class Luna16:
    root: Path
    scans: tuple[ScanRecord, ...]

    @property
    def folds(self) -> tuple[int, ...]:
        return tuple(sorted({s.fold for s in self.scans}))

    def fold(self, k: int) -> list[ScanRecord]:
        return [s for s in self.scans if s.fold == k]

    def split(self, val_folds, test_folds=()) -> tuple[list[ScanRecord], list[ScanRecord], list[ScanRecord]]:
        """(train, validation, test) scan lists by fold; a scan is in exactly one of them."""
        val, test = {int(k) for k in val_folds}, {int(k) for k in test_folds}
        unknown = (val | test) - set(self.folds)
        if unknown:
            raise ConfigError(f"folds {sorted(unknown)} not in {self.root} (has {list(self.folds)})")
        if val & test:
            raise ConfigError(f"folds {sorted(val & test)} are both validation and test")
        return ([s for s in self.scans if s.fold not in val | test],
                [s for s in self.scans if s.fold in val], [s for s in self.scans if s.fold in test])


def find_candidates_file(root: Path) -> Path | None:
    for name in ("candidates_V2.csv", "candidates.csv"):
        for p in (root / name, root / "candidates_V2" / name):
            if p.is_file():
                return p
    return None


def read_luna16(root, subsets=None, with_candidates: bool = True) -> Luna16:
    """Index a LUNA16 folder (reads the CSV files, not the images).

    ``subsets``: fold numbers to include (default: every ``subsetK`` folder present).
    The series UID of a scan is its .mhd file stem, as in LUNA16.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"LUNA16 folder not found: {root}")
    folders = {}
    for p in sorted(root.iterdir()):
        m = _SUBSET.match(p.name)
        if m and p.is_dir():
            folders[int(m.group(1))] = p
    if not folders:
        raise ConfigError(f"{root}: no subset0..subset9 folders")
    if subsets is not None:
        missing = sorted(set(int(k) for k in subsets) - set(folders))
        if missing:
            raise ConfigError(f"{root}: subsets {missing} not present (found {sorted(folders)})")
        folders = {k: v for k, v in folders.items() if k in set(int(k) for k in subsets)}
    ann_path = root / "annotations.csv"
    if not ann_path.is_file():
        raise ConfigError(f"{root}: annotations.csv missing")
    ann = by_series(read_findings(ann_path))
    exc = by_series(read_findings(root / "annotations_excluded.csv"))
    cpath = find_candidates_file(root) if with_candidates else None
    cand = by_series(read_candidates(cpath)) if cpath else {}
    scans = []
    seen: dict[str, Path] = {}
    for k, folder in sorted(folders.items()):
        for mhd in sorted(folder.glob("*.mhd")):
            uid = mhd.stem
            if uid in seen:
                raise ConfigError(f"series {uid} appears twice: {seen[uid]} and {mhd}")
            seen[uid] = mhd
            scans.append(ScanRecord(uid, mhd, k, tuple(ann.get(uid, ())), tuple(exc.get(uid, ())),
                                    tuple(cand.get(uid, ()))))
    unmatched = set(ann) - set(seen)
    if unmatched and subsets is None:
        log.warning("%d annotated series have no .mhd under %s", len(unmatched), root)
    return Luna16(root, tuple(scans))
