"""One time point of a follow-up: the scan, its characterised detections, its lung box and mask,
and its study date; from a series, a `Volume`, a `Detections`, or a result JSON of ``detect``."""
from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from noduleflow.engine.characterise import Finding
from noduleflow.engine.errors import ConfigError, NoduleflowError
from noduleflow.engine.io import load_volume
from noduleflow.engine.package import printable
from noduleflow.engine.preprocess import preprocess
from noduleflow.engine.results import Candidate, Detections, tracking_uid
from noduleflow.engine.volume import Volume

log = logging.getLogger(__name__)

MAX_HEADERS_READ = 400   # DICOM files tried when looking for a series' StudyDate


@dataclass(frozen=True, eq=False)
class TimePoint:
    """``detections``: characterised, ``volume`` the scan they were measured on; ``lung_box`` /
    ``lung_mask``: the 1 mm lung box and its bool mask (registration); ``study_date``: None when
    unknown; ``source``: what the user gave; ``tracking_uids``: per candidate, the UID its
    result JSON / SR tracks it by (None for a candidate that was not characterised)."""
    detections: Detections
    volume: Volume
    lung_box: Volume
    lung_mask: np.ndarray
    study_date: datetime.date | None
    source: str
    tracking_uids: tuple[str | None, ...]

    def summary(self) -> dict:
        d = self.detections
        n = sum(1 for c in d if c.finding is not None and c.finding.segmented)
        return {"source": self.source, "series_uid": d.series_uid,
                "study_date": self.study_date.isoformat() if self.study_date else None,
                "n_candidates": len(d), "n_findings": n,
                "model_id": d.model_id, "engine_version": d.engine_version}


def parse_date(text) -> datetime.date | None:
    """A DICOM DA ("YYYYMMDD") or ISO ("YYYY-MM-DD") date -> date; None when empty or malformed
    (logged)."""
    s = str(text or "").strip()
    if not s:
        return None
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.datetime.strptime(s, fmt).date()
        except ValueError:
            continue
    log.warning("study date %r is not a date (YYYYMMDD): ignored", s)
    return None


def study_date(volume: Volume) -> datetime.date | None:
    """The scan's StudyDate: ``volume.meta["StudyDate"]`` (or ``"study_date"``) when set; for a
    DICOM series, read from the first file of that series under ``meta["source"]``; else None
    (MetaImage and NIfTI carry no date)."""
    meta = volume.meta or {}
    for key in ("StudyDate", "study_date"):
        if meta.get(key):
            return parse_date(meta[key])
    for ds in series_headers(volume, limit=MAX_HEADERS_READ, tags=["SeriesInstanceUID", "StudyDate"]):
        return parse_date(ds.get("StudyDate", ""))
    return None


def series_headers(volume: Volume, limit: int | None = None, tags=None):
    """The headers (pydicom Datasets, no pixel data; only ``tags`` when given) of the DICOM files
    of ``volume``'s series under its ``meta["source"]``, in file-name order, of at most ``limit``
    files tried; nothing when it was not read from DICOM."""
    meta = volume.meta or {}
    if meta.get("format") != "dicom" or not meta.get("source"):
        return
    src = Path(meta["source"])
    files = [src] if src.is_file() else sorted(f for f in src.rglob("*") if f.is_file()) if src.is_dir() else []
    for f in files[:limit]:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if str(ds.get("SeriesInstanceUID", "")) == volume.series_uid:
            yield ds


def detections_from_json(path) -> Detections:
    """A ``detect`` result JSON -> `Detections` (candidates with their findings; no volume).
    ConfigError, one line, when it is not one."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
        cands = tuple(Candidate(center_xyz_mm=tuple(float(v) for v in c["center_xyz_mm"]), prob=float(c["prob"]),
                                n_points=int(c.get("n_points", 1)), diameter_mm=c.get("diameter_mm"),
                                finding=Finding.from_dict(c["finding"]) if c.get("finding") else None)
                      for c in d["candidates"])
        return Detections(series_uid=str(d["series_uid"]), candidates=cands, timings_s=dict(d.get("timings_s", {})),
                          backend=str(d.get("backend", "")), mode=str(d.get("mode", "")),
                          model_id=str(d.get("model_id", "")), engine_version=str(d.get("engine_version", "")),
                          n_scored=int(d.get("n_scored", 0)), meta=dict(d.get("meta", {})))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{printable(p)} is not a noduleflow detect result JSON: {type(exc).__name__}: "
                          f"{printable(exc)}") from None


def _json_uids(path) -> dict[int, str]:
    d = json.loads(Path(path).read_text())
    return {i: c["tracking_uid"] for i, c in enumerate(d["candidates"]) if c.get("tracking_uid")}


def _scan_of(dets: Detections, path) -> Volume:
    """The scan a result JSON was computed from (its ``meta.source``), checked against its grid."""
    src = str(dets.meta.get("source", ""))
    where = printable(path)
    if not src or not Path(src).exists():
        raise ConfigError(f"result JSON {where}: its scan ({printable(src) or 'no meta.source'}) is not a file or "
                          "folder here: give the series instead")
    uid = dets.series_uid if Path(src).is_dir() else None
    vol = load_volume(src, series_uid=uid)
    want = dets.meta.get("shape_zyx")
    if want is not None and list(vol.shape) != [int(v) for v in want]:
        raise ConfigError(f"result JSON {where}: its scan {printable(src)} now has shape {list(vol.shape)}, the "
                          f"result was computed on {want}")
    return vol


def load_timepoint(source, detect, *, role: str, series_uid: str | None = None) -> TimePoint:
    """One `TimePoint` from ``source``: a path to a series (DICOM folder or file, .mhd/.mha,
    .nii/.nii.gz), a ``detect`` result JSON (its findings reused, its scan loaded from
    ``meta.source``), a `Volume`, or `Detections` that hold their volume. ``detect``: a callable
    (volume -> characterised `Detections` with ``preprocessed`` kept), called only when detection
    is needed. ``role``: "prior" or "current", for messages."""
    uids = None
    if isinstance(source, Detections):
        dets, vol, name = source, source.volume, str(source.meta.get("source", "") or source.series_uid)
        if vol is None:
            raise ConfigError(f"the {role} Detections hold no volume: detect with the Detector, or pass the series")
    elif isinstance(source, Volume):
        vol, name = source, str(source.meta.get("source", "") or source.series_uid)
        dets = detect(vol)
    else:
        p = Path(source)
        name = str(p)
        if p.is_file() and p.suffix.lower() == ".json":
            dets = detections_from_json(p)
            uids = _json_uids(p)
            vol = _scan_of(dets, p)
        else:
            try:
                vol = load_volume(p, series_uid=series_uid)
            except NoduleflowError as exc:
                raise type(exc)(f"{role} scan: {exc}") from None
            dets = detect(vol)
    if not dets.characterised:
        raise ConfigError(f"the {role} detections were not characterised: detect with characterise_top > 0")
    pre = dets.preprocessed if dets.preprocessed is not None else preprocess(vol)
    if uids is None:
        uids = {i: tracking_uid(dets.series_uid, i, c.center_xyz_mm) for i, c in enumerate(dets)
                if c.finding is not None}
    return TimePoint(dets, vol, pre.volume, np.asarray(pre.mask, dtype=bool), study_date(vol), name,
                     tuple(uids.get(i) for i in range(len(dets))))
