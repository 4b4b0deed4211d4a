"""LIDC-IDRI reading sessions (``LidcReadMessage`` XML) -> nodule annotations and excluded findings.

Each of (up to) four readers marks, per reading session:
- ``unblindedReadNodule`` with contours (``roi``: ``imageZposition``, ``imageSOP_UID``,
  ``inclusion``, ``edgeMap`` points ``xCoord`` = column, ``yCoord`` = row) for nodules >= 3 mm,
  or a single ``edgeMap`` point for nodules < 3 mm;
- ``nonNodule`` with one ``locus`` point.
Per reader mark: centre = area-weighted centroid of the included contour polygons (pixel ->
world through the series geometry), diameter = the longest in-plane chord over its contours
(the readers' own size measure); point marks have diameter 0.
Marks are grouped across readers (one mark per reader per group; centres within the larger
radius, at least ``merge_floor_mm``). LUNA16's rule: a group with >= ``min_readers`` contour
marks and mean diameter >= ``min_diameter_mm`` is an annotation (centre and diameter averaged
over those marks); every other group (fewer readers, small nodules, non-nodules) is an
excluded finding, never sampled as a negative.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError
from noduleflow.engine.volume import Volume

from .annotations import Finding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LidcRules:
    min_readers: int = 3
    min_diameter_mm: float = 3.0
    merge_floor_mm: float = 3.0

    def __post_init__(self) -> None:
        if self.min_readers < 1:
            raise ConfigError(f"min_readers must be >= 1, got {self.min_readers}")


@dataclass(frozen=True)
class Roi:
    z_position_mm: float
    sop_uid: str
    inclusion: bool
    points_xy: tuple[tuple[float, float], ...]   # (column, row) pixel indices


@dataclass(frozen=True)
class ReaderMark:
    """One reader's mark: kind is 'nodule' (contours), 'small' (< 3 mm point) or 'non_nodule'."""

    reader: int
    mark_id: str
    kind: str
    rois: tuple[Roi, ...]


@dataclass(frozen=True)
class ReadMessage:
    series_uid: str
    study_uid: str
    marks: tuple[ReaderMark, ...]
    n_readers: int


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el, name):
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _children(el, name):
    return [c for c in el if _local(c.tag) == name]


def _text(el, name, default=None):
    c = _child(el, name)
    return c.text.strip() if c is not None and c.text else default


def _point(el, where) -> tuple[float, float]:
    try:
        return float(_text(el, "xCoord")), float(_text(el, "yCoord"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad point xCoord={_text(el, 'xCoord')!r} yCoord={_text(el, 'yCoord')!r}") from exc


def _roi(el, where, points_tag="edgeMap") -> Roi:
    try:
        z = float(_text(el, "imageZposition"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad imageZposition {_text(el, 'imageZposition')!r}") from exc
    incl = (_text(el, "inclusion", "TRUE") or "TRUE").upper() != "FALSE"
    pts = tuple(_point(p, where) for p in _children(el, points_tag))
    return Roi(z, _text(el, "imageSOP_UID", ""), incl, pts)


def parse_read_message(path) -> ReadMessage:
    """Parse one LIDC XML file (namespace-agnostic)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ConfigError(f"{path}: not well-formed XML ({exc})") from exc
    if _local(root.tag) != "LidcReadMessage":
        raise ConfigError(f"{path}: root element is {_local(root.tag)!r}, not LidcReadMessage")
    head = _child(root, "ResponseHeader")
    series = _text(head, "SeriesInstanceUid", "") if head is not None else ""
    study = _text(head, "StudyInstanceUID", "") if head is not None else ""
    marks = []
    sessions = _children(root, "readingSession")
    for r, sess in enumerate(sessions):
        for n in _children(sess, "unblindedReadNodule"):
            nid = _text(n, "noduleID", "")
            where = f"{path.name} reader {r} nodule {nid}"
            rois = tuple(_roi(e, where) for e in _children(n, "roi"))
            n_pts = sum(len(x.points_xy) for x in rois if x.inclusion)
            kind = "nodule" if n_pts > 1 else "small"
            if n_pts == 0:
                log.warning("%s has no points, ignored", where)
                continue
            marks.append(ReaderMark(r, nid, kind, rois))
        for n in _children(sess, "nonNodule"):
            nid = _text(n, "nonNoduleID", "")
            where = f"{path.name} reader {r} non-nodule {nid}"
            roi = _roi(n, where, points_tag="locus")
            if not roi.points_xy:
                log.warning("%s has no locus, ignored", where)
                continue
            marks.append(ReaderMark(r, nid, "non_nodule", (roi,)))
    return ReadMessage(series, study, tuple(marks), len(sessions))


class SliceGeometry:
    """Pixel (column, row) on the slice at ``imageZposition`` -> world (x, y, z) mm, through a
    `Volume` of the same series (the engine's loader gives its geometry)."""

    def __init__(self, volume: Volume, tolerance_mm: float | None = None):
        self.volume = volume
        nz = volume.shape[0]
        self.slice_z_mm = volume.voxel_to_world(np.stack([np.arange(nz), np.zeros(nz), np.zeros(nz)], 1))[:, 2]
        self.tolerance_mm = 0.5 * volume.spacing_zyx_mm[0] if tolerance_mm is None else tolerance_mm

    def slice_index(self, z_mm: float) -> int:
        k = int(np.argmin(np.abs(self.slice_z_mm - z_mm)))
        if abs(self.slice_z_mm[k] - z_mm) > self.tolerance_mm:
            raise ConfigError(f"imageZposition {z_mm} mm matches no slice of series {self.volume.series_uid} "
                              f"(nearest {self.slice_z_mm[k]:.3f} mm)")
        return k

    def to_world(self, z_mm: float, points_xy) -> np.ndarray:
        """(n, 2) (column, row) -> (n, 3) world (x, y, z) mm."""
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        k = self.slice_index(z_mm)
        idx = np.stack([np.full(len(pts), k, np.float64), pts[:, 1], pts[:, 0]], 1)
        return self.volume.voxel_to_world(idx)


def _polygon(pts: np.ndarray) -> tuple[float, np.ndarray]:
    """Shoelace area (pixel^2) and centroid (column, row) of a closed polygon."""
    x, y = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    a = cross.sum() / 2.0
    if abs(a) < 1e-9:
        return 0.0, pts.mean(0)
    return abs(a), np.array([((x + x1) * cross).sum(), ((y + y1) * cross).sum()]) / (6.0 * a)


def mark_centre_diameter(mark: ReaderMark, geo: SliceGeometry) -> tuple[np.ndarray, float]:
    """-> (centre world (x, y, z) mm, diameter mm) of one reader's mark."""
    rois = [r for r in mark.rois if r.inclusion and r.points_xy] or [r for r in mark.rois if r.points_xy]
    if mark.kind != "nodule":
        pts = np.concatenate([geo.to_world(r.z_position_mm, r.points_xy) for r in rois])
        return pts.mean(0), 0.0
    weights, centres, diam = [], [], 0.0
    for r in rois:
        pix = np.asarray(r.points_xy, dtype=np.float64)
        area, c = _polygon(pix)
        centres.append(geo.to_world(r.z_position_mm, c[None])[0])
        weights.append(max(area, 1e-6))
        w = geo.to_world(r.z_position_mm, pix)
        if len(w) > 1:
            diam = max(diam, float(np.max(np.linalg.norm(w[:, None] - w[None], axis=-1))))
    return np.average(np.asarray(centres), axis=0, weights=np.asarray(weights)), diam


def group_marks(centres: np.ndarray, radii: np.ndarray, readers: np.ndarray, floor_mm: float) -> list[list[int]]:
    """Greedy grouping, largest marks first: a mark joins the nearest group without a mark of
    its reader whose mean centre is within max(its radius, the group's largest radius, floor)."""
    order = np.argsort(-radii, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        best, best_d = None, np.inf
        for g_i, g in enumerate(groups):
            if readers[i] in {readers[j] for j in g}:
                continue
            d = float(np.linalg.norm(centres[g].mean(0) - centres[i]))
            if d <= max(radii[i], radii[g].max(), floor_mm) and d < best_d:
                best, best_d = g_i, d
        if best is None:
            groups.append([int(i)])
        else:
            groups[best].append(int(i))
    return groups


def lidc_findings(message: ReadMessage, volume: Volume, rules: LidcRules = LidcRules()
                  ) -> tuple[list[Finding], list[Finding]]:
    """-> (annotations, excluded findings), world mm, LUNA16's rule (see module docstring)."""
    uid = message.series_uid or volume.series_uid
    if message.series_uid and volume.series_uid and message.series_uid != volume.series_uid:
        raise ConfigError(f"XML series {message.series_uid} does not match volume series {volume.series_uid}")
    if not message.marks:
        return [], []
    geo = SliceGeometry(volume)
    cd = [mark_centre_diameter(m, geo) for m in message.marks]
    centres = np.array([c for c, _ in cd])
    diams = np.array([d for _, d in cd])
    readers = np.array([m.reader for m in message.marks])
    ann, exc = [], []
    for g in group_marks(centres, diams / 2.0, readers, rules.merge_floor_mm):
        big = [i for i in g if message.marks[i].kind == "nodule"]
        d = float(diams[big].mean()) if big else 0.0
        sel = big or g
        c = tuple(float(v) for v in centres[sel].mean(0))
        if len(big) >= rules.min_readers and d >= rules.min_diameter_mm:
            ann.append(Finding(uid, c, d))
        else:
            exc.append(Finding(uid, c, d))
    return ann, exc


@dataclass(frozen=True)
class LidcCase:
    series_uid: str
    series_dir: Path
    xml_path: Path


def discover_lidc(root) -> list[LidcCase]:
    """Find (DICOM series folder, reading-session XML) pairs under an LIDC-IDRI download
    (``LIDC-IDRI-NNNN/<study>/<series>/*.dcm`` with one .xml in the series folder).
    XML files of other kinds (chest radiograph ``IdriReadMessage``) are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"LIDC folder not found: {root}")
    out = []
    for xml in sorted(root.rglob("*.xml")):
        try:
            msg_root = ET.parse(xml).getroot()
        except ET.ParseError:
            log.warning("%s: not well-formed XML, skipped", xml)
            continue
        if _local(msg_root.tag) != "LidcReadMessage":
            continue
        head = _child(msg_root, "ResponseHeader")
        uid = _text(head, "SeriesInstanceUid", "") if head is not None else ""
        if not any(xml.parent.glob("*.dcm")):
            log.warning("%s: no .dcm files beside it, skipped", xml)
            continue
        out.append(LidcCase(uid, xml.parent, xml))
    return out


def load_lidc_case(case: LidcCase, rules: LidcRules = LidcRules()):
    """-> (Volume, annotations, excluded) for one case, via the engine's DICOM loader."""
    from noduleflow.engine.io import load_volume

    vol = load_volume(case.series_dir, series_uid=case.series_uid or None)
    ann, exc = lidc_findings(parse_read_message(case.xml_path), vol, rules)
    return vol, ann, exc


def convert_lidc(root, out_dir, rules: LidcRules = LidcRules(), progress: bool = True) -> tuple[Path, Path]:
    """Every case under an LIDC-IDRI folder -> ``annotations.csv`` and ``annotations_excluded.csv``
    (LUNA16 layout, world mm) in ``out_dir``, plus ``series.csv`` (series UID, DICOM folder).
    Each series is loaded once for its geometry."""
    import csv

    from tqdm import tqdm

    from .annotations import write_findings

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ann_all, exc_all, rows = [], [], []
    for case in tqdm(discover_lidc(root), desc="LIDC", unit="case", disable=not progress):
        vol, ann, exc = load_lidc_case(case, rules)
        ann_all += ann
        exc_all += exc
        rows.append((vol.series_uid, str(case.series_dir)))
    with open(out / "series.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seriesuid", "path"])
        w.writerows(rows)
    return write_findings(out / "annotations.csv", ann_all), write_findings(out / "annotations_excluded.csv", exc_all)


def lidc_sources(converted_dir) -> list:
    """Sources (`trainer.data.dataset.ScanSource`) from a folder written by `convert_lidc`."""
    import csv

    from noduleflow.engine.io import load_volume

    from .annotations import by_series, read_findings
    from .dataset import ScanSource

    d = Path(converted_dir)
    if not (d / "series.csv").is_file():
        raise ConfigError(f"{d}: series.csv missing (run convert_lidc first)")
    ann = by_series(read_findings(d / "annotations.csv"))
    exc = by_series(read_findings(d / "annotations_excluded.csv"))
    with open(d / "series.csv", newline="") as f:
        rows = [(r["seriesuid"], Path(r["path"])) for r in csv.DictReader(f)]
    return [ScanSource(uid, (lambda p=p, u=uid: load_volume(p, series_uid=u)), tuple(ann.get(uid, ())),
                       tuple(exc.get(uid, ()))) for uid, p in rows]
