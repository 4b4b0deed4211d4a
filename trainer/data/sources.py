"""The scans to train on: `ScanSource` (how to load one scan, and its findings) and the lists
of sources built from LUNA16 records, from a `noduleflow synth` cohort folder, and with a
previous model's false positives attached.

The patch stream (`trainer.data.dataset.PatchStream`) takes these lists; the readers of other
layouts (`trainer.data.lidc`) build them too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom

from noduleflow.engine import ConfigError
from noduleflow.engine.io import load_volume
from noduleflow.engine.volume import Volume

from .annotations import Finding, by_series, read_findings


@dataclass(frozen=True, eq=False)
class ScanSource:
    """One scan: how to load it and its findings (world mm). ``hard_negatives_xyz_mm``: a
    previous model's false positives on this scan (world (x, y, z) mm)."""

    scan_id: str
    load: Callable[[], Volume]
    nodules: tuple[Finding, ...] = ()
    excluded: tuple[Finding, ...] = ()
    hard_negatives_xyz_mm: tuple[tuple[float, float, float], ...] = ()


def sources_from_records(records) -> list[ScanSource]:
    """`trainer.data.luna16.ScanRecord`s -> sources (images loaded by the engine's loader);
    the records' candidates of class 0 are not used as hard negatives (they are ordinary
    candidates of another detector); pass mined false positives explicitly."""
    return [ScanSource(r.series_uid, (lambda p=r.path: load_volume(p)), tuple(r.nodules), tuple(r.excluded))
            for r in records]


def with_hard_negatives(sources: list[ScanSource], candidates) -> list[ScanSource]:
    """Attach a previous model's false positives (`Candidate`s, e.g. from `read_candidates` on
    its detections CSV; class-1 rows are ignored) to the matching sources."""
    by_uid: dict[str, list] = {}
    for c in candidates:
        if c.label == 0:
            by_uid.setdefault(c.series_uid, []).append(tuple(c.center_xyz_mm))
    return [replace(s, hard_negatives_xyz_mm=tuple(s.hard_negatives_xyz_mm) + tuple(by_uid.get(s.scan_id, ())))
            for s in sources]


def _series_uid(path: Path) -> str:
    """Series UID without loading pixels: the .mhd stem (the engine's convention) or the
    SeriesInstanceUID of the first DICOM file in the folder."""
    if path.is_file():
        return path.stem
    first = next(iter(sorted(path.glob("*.dcm"))))
    return str(pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)


def sources_from_folder(folder) -> list[ScanSource]:
    """A cohort folder written by `noduleflow synth` (DICOM series folders or .mhd files plus
    LUNA16-layout annotations.csv / annotations_excluded.csv) -> one source per DICOM series
    folder or .mhd file; scan id = series UID."""
    folder = Path(folder)
    if not (folder / "annotations.csv").is_file():
        raise ConfigError(f"{folder}: annotations.csv missing (not a cohort folder?)")
    ann = by_series(read_findings(folder / "annotations.csv"))
    exc = by_series(read_findings(folder / "annotations_excluded.csv"))
    scans = sorted([p for p in folder.glob("*.mhd")] +
                   [p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.dcm"))])
    out = []
    for p in scans:
        uid = _series_uid(p)
        out.append(ScanSource(uid, (lambda p=p: load_volume(p)), tuple(ann.get(uid, ())), tuple(exc.get(uid, ()))))
    return out
