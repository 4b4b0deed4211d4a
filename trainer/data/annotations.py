"""LUNA16-layout CSV files (annotations, excluded findings, candidates) -> frozen records, world mm.

Columns (LUNA16): ``seriesuid,coordX,coordY,coordZ,diameter_mm`` for annotations and
annotations_excluded; ``seriesuid,coordX,coordY,coordZ,class`` for candidates(_V2).
Coordinates are world (x, y, z) mm, LPS, as ITK reports them for the .mhd files.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError


@dataclass(frozen=True)
class Finding:
    """One annotated nodule or excluded finding: centre world (x, y, z) mm, diameter mm."""

    series_uid: str
    center_xyz_mm: tuple[float, float, float]
    diameter_mm: float

    @property
    def radius_mm(self) -> float:
        return self.diameter_mm / 2.0


@dataclass(frozen=True)
class Candidate:
    """One candidate location (world (x, y, z) mm) with its label (1 nodule, 0 not)."""

    series_uid: str
    center_xyz_mm: tuple[float, float, float]
    label: int


def _rows(path: Path, want: tuple[str, ...]):
    """Yield (line number, dict) for each data row; the header must name the ``want`` columns."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        cols = [h.strip() for h in header]
        missing = [w for w in want if w not in cols]
        if missing:
            raise ConfigError(f"{path}: header {cols} lacks columns {missing}")
        idx = [cols.index(w) for w in want]
        for i, row in enumerate(reader, start=2):
            if not row or not any(v.strip() for v in row):
                continue
            try:
                yield i, {w: row[j].strip() for w, j in zip(want, idx)}
            except IndexError as exc:
                raise ConfigError(f"{path} line {i}: short row {row}") from exc


def _float(path, i, row, key) -> float:
    try:
        v = float(row[key])
    except ValueError as exc:
        raise ConfigError(f"{path} line {i}: {key}={row[key]!r} is not a number") from exc
    if not np.isfinite(v):
        raise ConfigError(f"{path} line {i}: {key}={row[key]!r} is not finite")
    return v


def read_findings(path) -> list[Finding]:
    """annotations.csv / annotations_excluded.csv -> findings. A missing file gives []."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, row in _rows(path, ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")):
        xyz = tuple(_float(path, i, row, k) for k in ("coordX", "coordY", "coordZ"))
        # LUNA16's annotations_excluded.csv writes -1 for findings without a size
        # (non-nodules, point marks): read as 0 mm, a point.
        d = max(_float(path, i, row, "diameter_mm"), 0.0)
        out.append(Finding(row["seriesuid"], xyz, d))
    return out


def read_candidates(path) -> list[Candidate]:
    """candidates.csv / candidates_V2.csv (or a model's false positives in the same layout,
    ``class`` optional and then 0) -> candidates. A missing file gives []."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    has_class = "class" in header
    want = ("seriesuid", "coordX", "coordY", "coordZ") + (("class",) if has_class else ())
    out = []
    for i, row in _rows(path, want):
        xyz = tuple(_float(path, i, row, k) for k in ("coordX", "coordY", "coordZ"))
        label = int(_float(path, i, row, "class")) if has_class else 0
        if label not in (0, 1):
            raise ConfigError(f"{path} line {i}: class must be 0 or 1, got {row['class']!r}")
        out.append(Candidate(row["seriesuid"], xyz, label))
    return out


def write_findings(path, findings) -> Path:
    """Write findings in the LUNA16 annotations layout."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        for fd in findings:
            w.writerow([fd.series_uid, *(f"{v:.4f}" for v in fd.center_xyz_mm), f"{fd.diameter_mm:.4f}"])
    return path


def by_series(items) -> dict[str, list]:
    """Group findings or candidates by ``series_uid``."""
    out: dict[str, list] = defaultdict(list)
    for it in items:
        out[it.series_uid].append(it)
    return dict(out)


def as_xyzd(findings) -> np.ndarray:
    """Findings -> float64 (n, 4) [x, y, z, diameter] mm (the array form sampling uses)."""
    return np.asarray([[*f.center_xyz_mm, f.diameter_mm] for f in findings], dtype=np.float64).reshape(-1, 4)


def read_annotations(path) -> dict[str, np.ndarray]:
    """seriesuid,coordX,coordY,coordZ,diameter_mm -> {uid: (n, 4) [x, y, z, d]}. Missing file: {}."""
    return {uid: as_xyzd(fs) for uid, fs in by_series(read_findings(path)).items()}
