"""Evaluation sources: folders of scans with LUNA16 annotations and strata labels, read, detected on
with the engine's whole `Detector.detect` path, and scored one source at a time.

An evaluation-source folder (the layout the phantom and hybrid generators write):

- scans: ``<seriesuid>.mhd`` (+ ``.zraw``/``.raw``), ``.mha``, ``.nii(.gz)`` files, or DICOM series
  folders (a folder holding ``*.dcm`` files), anywhere below the folder;
- ``annotations.csv``: LUNA16 layout ``seriesuid,coordX,coordY,coordZ,diameter_mm`` (world mm, LPS);
- ``annotations_excluded.csv``: the same layout, findings whose hits are ignored (may be header
  only or absent); a diameter of -1 (LUNA16's findings without a size) counts as 10 mm, as the
  LUNA16 script does (`froc`);
- ``findings.csv`` (optional: a plain LUNA16 folder has none, and then has no kind, shape or
  location strata): the rows of annotations.csv plus ``kind,shape,location``;
- ``source.json`` (optional for the same reason): ``{"name", "description", "role", "generator",
  "seeds", "command"}``.

Every scan in the folder counts (one without annotations is a negative scan, as LUNA16 counts
every scan of its list); annotations of series with no scan in the folder are left out and
named in the report (`EvalSource.unmatched_uids`). Synthetic phantoms and lesions inserted into
real scans are a regression signal, not clinical evidence.

Two public dataset layouts are read too, recognised by their folders (`dataset_layout`; see
docs/datasets.md): the temporal lung nodule dataset (`trainer.data.temporal`; a ``1.25mm`` or
``5mm`` folder, or a root holding one of them: every time point is a scan) and the lesion
dataset with contours (`trainer.data.lesion_contours`; nodules and ground-glass lesions are
annotations, other lesions excluded findings). They have no strata labels.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from noduleflow.engine import ConfigError
from noduleflow.engine.io import IMAGE_SUFFIXES

from .cohort import calibration, candidate_labels, false_candidates
from .froc import read_findings
from .strata import KINDS, LOCATIONS, SHAPES, ScanResult, first_hit_rank, score_cohort

log = logging.getLogger(__name__)

SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
FINDING_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "kind", "shape", "location")
UNKNOWN = "unknown"  # a nodule's kind/shape/location where the folder has no findings.csv
MATCH_TOLERANCE_MM = 0.01  # findings.csv row <-> annotations.csv row: same centre and diameter within this


@dataclass(frozen=True, eq=False)
class SourceScan:
    """One scan of a source: its file or DICOM folder, series UID, nodules ``(m, 4)`` float64
    [x, y, z, diameter] world mm with their ``kinds``/``shapes``/``locations`` (m,) str, and its
    excluded findings ``(e, 4)`` (diameter -1: no size)."""

    path: Path
    uid: str
    nodules: np.ndarray
    kinds: tuple
    shapes: tuple
    locations: tuple
    excluded: np.ndarray

    def result(self, xyz: np.ndarray, prob: np.ndarray) -> ScanResult:
        """This scan's `strata.ScanResult` with candidates ``xyz`` (n, 3) world mm and ``prob`` (n,)."""
        return ScanResult(self.uid, np.asarray(xyz, float).reshape(-1, 3), np.asarray(prob, float), self.nodules,
                          self.kinds, self.locations, self.excluded,
                          () if UNKNOWN in self.shapes else self.shapes)


@dataclass(frozen=True, eq=False)
class EvalSource:
    """An evaluation-source folder read: its ``name`` (as the user gave it), ``folder``, ``scans``
    (sorted by path), ``info`` (source.json, {} without one) and ``unmatched_uids`` (annotated
    series with no scan in the folder, left out)."""

    name: str
    folder: Path
    scans: tuple
    info: dict
    unmatched_uids: tuple = ()

    @property
    def n_nodules(self) -> int:
        return int(sum(len(s.nodules) for s in self.scans))

    @property
    def n_excluded(self) -> int:
        return int(sum(len(s.excluded) for s in self.scans))


def parse_source_arg(text: str) -> tuple[str, Path]:
    """``"NAME=DIR"`` (the value of ``--source``) -> (name, folder). NAME: letters, digits and
    ``_.+-``, starting with a letter or digit (it names the source's output folder)."""
    name, sep, folder = str(text).partition("=")
    name = name.strip()
    if not sep or not folder.strip():
        raise ConfigError(f"--source must be NAME=DIR, got {text!r}")
    if not SOURCE_NAME.fullmatch(name):
        raise ConfigError(f"--source NAME must be letters, digits and _.+- (starting with a letter or digit), "
                          f"got {name!r} in {text!r}")
    return name, Path(folder.strip()).expanduser()


def scan_paths(folder: Path) -> list[Path]:
    """The scans below ``folder``: image files (`engine.io.IMAGE_SUFFIXES`) and folders that hold
    ``*.dcm`` files, sorted by path; hidden entries skipped."""
    folder = Path(folder)
    found = []
    for p in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES):
            found.append(p)
        elif p.is_dir() and any(q.is_file() for q in p.glob("*.dcm")):
            found.append(p)
    return found


def scan_uid(path: Path) -> str:
    """Series UID without loading pixels: an image file's name without its suffix (the engine's
    convention, `engine.io.image`), a DICOM folder's first file's SeriesInstanceUID."""
    path = Path(path)
    if path.is_file():
        for suffix in IMAGE_SUFFIXES:
            if path.name.lower().endswith(suffix):
                return path.name[: -len(suffix)]
        return path.stem
    first = sorted(path.glob("*.dcm"))[0]
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return str(ds.SeriesInstanceUID)
    except (pydicom.errors.InvalidDicomError, AttributeError, OSError) as exc:
        raise ConfigError(f"{first}: no readable SeriesInstanceUID ({exc})") from exc


def read_labels(path: Path) -> dict[str, list[tuple[np.ndarray, str, str, str]]]:
    """findings.csv -> {uid: [(x, y, z, diameter) (4,), kind, shape, location]}, each value
    checked against `strata.KINDS`/`SHAPES`/`LOCATIONS`."""
    out: dict[str, list] = {}
    allowed = {"kind": KINDS, "shape": SHAPES, "location": LOCATIONS}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in FINDING_COLUMNS if c not in cols]
        if missing:
            raise ConfigError(f"{path}: header {cols} lacks columns {missing}")
        for i, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not any(row.values()):
                continue
            try:
                xyzd = np.array([float(row[c]) for c in FINDING_COLUMNS[1:5]])
            except ValueError as exc:
                raise ConfigError(f"{path} line {i}: not a number in {row}") from exc
            for key, names in allowed.items():
                if row[key] not in names:
                    raise ConfigError(f"{path} line {i}: {key} must be one of {list(names)}, got {row[key]!r}")
            out.setdefault(row["seriesuid"], []).append((xyzd, row["kind"], row["shape"], row["location"]))
    return out


def _labels_for(uid: str, nodules: np.ndarray, labels: dict, path: Path) -> list[tuple[str, str, str]]:
    """The (kind, shape, location) of each of ``uid``'s annotated nodules, matched by centre and
    diameter (within `MATCH_TOLERANCE_MM`) to findings.csv's rows; every row used once."""
    rows = list(labels.get(uid, []))
    out = []
    for nod in nodules:
        j = next((j for j, r in enumerate(rows) if np.abs(r[0] - nod).max() <= MATCH_TOLERANCE_MM), None)
        if j is None:
            raise ConfigError(f"{path}: no row for {uid}'s annotation at {nod[:3].round(2).tolist()} "
                              f"({nod[3]:.2f} mm): findings.csv must hold the rows of annotations.csv")
        out.append(rows.pop(j)[1:])
    if rows:
        raise ConfigError(f"{path}: {len(rows)} row(s) of {uid} not in annotations.csv, e.g. at "
                          f"{rows[0][0][:3].round(2).tolist()}")
    return out


def _source_info(name: str, folder: Path) -> dict:
    """The folder's source.json ({} without one)."""
    if not (folder / "source.json").is_file():
        return {}
    try:
        info = json.loads((folder / "source.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"source {name}: {folder / 'source.json'} is not JSON ({e})") from e
    if not isinstance(info, dict):
        raise ConfigError(f"source {name}: {folder / 'source.json'} must hold an object, got {type(info).__name__}")
    return info


def dataset_layout(folder: Path) -> str | None:
    """"temporal" or "lesion" when ``folder`` is one of the public dataset layouts (module
    docstring), None for an evaluation-source folder."""
    from noduleflow.trainer.data.lesion_contours import is_lesion_root
    from noduleflow.trainer.data.temporal import THICKNESSES

    if folder.name in THICKNESSES and (folder / "annotations.csv").is_file():
        return "temporal"
    if (folder / "annotations.csv").is_file():
        return None
    if any((folder / t).is_dir() for t in THICKNESSES):
        return "temporal"
    return "lesion" if is_lesion_root(folder) else None


def _layout_scans(name: str, folder: Path, layout: str) -> tuple[list[SourceScan], str]:
    """The scans of a public dataset layout -> (`SourceScan`s, a description)."""
    def xyzd(findings):
        return np.array([[*f.center_xyz_mm, f.diameter_mm] for f in findings], float).reshape(-1, 4)

    if layout == "lesion":
        from noduleflow.trainer.data.lesion_contours import lesion_scans

        items = [(scan.series_dir, uid, ann, exc) for scan, uid, ann, exc in lesion_scans(folder)]
        what = "pulmonary lesion dataset with contours (seeds/004): nodules and ground-glass lesions"
    else:
        from noduleflow.trainer.data.temporal import THICKNESSES, find_thickness_folders, read_thickness_folder

        sub = [folder] if folder.name in THICKNESSES else find_thickness_folders(folder)
        if len(sub) != 1:
            raise ConfigError(f"source {name}: {folder} holds {' and '.join(p.name for p in sub)} series of the "
                              f"temporal dataset, whose scans share names; give one: {name}={sub[0]}")
        items = [(s.scan, s.seriesuid, s.nodules, ()) for s in read_thickness_folder(sub[0])]
        what = f"cross spatio-temporal lung nodule dataset (seeds/002), {sub[0].name} series, every time point"
    scans = [SourceScan(p, uid, xyzd(ann), (UNKNOWN,) * len(ann), (UNKNOWN,) * len(ann), (UNKNOWN,) * len(ann),
                        xyzd(exc)) for p, uid, ann, exc in items]
    return scans, f"{what} in {folder}"


def read_source(name: str, folder) -> EvalSource:
    """Read the evaluation-source folder ``folder`` (module docstring) as source ``name``; every
    problem is one `ConfigError` that names the folder or file and the bad value."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"source {name}: {folder} is not a folder")
    layout = dataset_layout(folder)
    if layout is not None:
        scans, description = _layout_scans(name, folder, layout)
        if not scans:
            raise ConfigError(f"source {name}: no scans in {folder}")
        return EvalSource(name, folder, tuple(scans),
                          {"layout": layout, "description": description, **_source_info(name, folder)})
    ann_path = folder / "annotations.csv"
    if not ann_path.is_file():
        raise ConfigError(f"source {name}: {ann_path} missing (an evaluation source needs annotations.csv)")
    ann = read_findings(ann_path).by_uid
    exc_path = folder / "annotations_excluded.csv"
    exc = read_findings(exc_path).by_uid if exc_path.is_file() else {}
    lab_path = folder / "findings.csv"
    labels = read_labels(lab_path) if lab_path.is_file() else None
    info = _source_info(name, folder)
    paths = scan_paths(folder)
    if not paths:
        raise ConfigError(f"source {name}: no scans (.mhd/.mha/.nii files or DICOM folders) in {folder}")
    scans, seen = [], {}
    for p in paths:
        uid = scan_uid(p)
        if uid in seen:
            raise ConfigError(f"source {name}: series {uid} twice, {seen[uid]} and {p}")
        seen[uid] = p
        nod = ann.get(uid, np.zeros((0, 4)))
        lab = _labels_for(uid, nod, labels, lab_path) if labels is not None else [(UNKNOWN,) * 3] * len(nod)
        scans.append(SourceScan(p, uid, nod, tuple(v[0] for v in lab), tuple(v[1] for v in lab),
                                tuple(v[2] for v in lab), exc.get(uid, np.zeros((0, 4)))))
    unmatched = tuple(sorted(set(ann) - set(seen)))
    if unmatched:
        log.warning("source %s: %d annotated series have no scan in %s (left out): %s", name, len(unmatched),
                    folder, ", ".join(unmatched[:3]))
    return EvalSource(name, folder, tuple(scans), info, unmatched)


def detect_source(det, source: EvalSource, progress: bool = True, keep_preprocessed: bool = False):
    """``det.detect`` (the whole path: load, preprocess, stages) on each scan of ``source``, the next
    scan loaded meanwhile where the detector says so (`Detector.loading`), with a progress bar ->
    (list of `strata.ScanResult`, list of `engine.results.Detections`), in the source's order."""
    from tqdm import tqdm  # a dependency of the application, not of the engine

    from noduleflow.engine.io import load_volume

    def load(s):
        return load_volume(s.path, series_uid=None if s.path.is_file() else s.uid)

    results, dets = [], []
    jobs = det.loading(list(source.scans), load)
    for scan, item in zip(source.scans, tqdm(jobs, total=len(source.scans), desc=source.name, unit="scan",
                                             disable=not progress)):
        if item.error is not None:
            raise item.error
        d = det.detect(item.value, keep_preprocessed=keep_preprocessed, load_s=item.seconds)
        if d.series_uid != scan.uid:
            raise ConfigError(f"source {source.name}: {scan.path} loads as series {d.series_uid}, "
                              f"annotated as {scan.uid}")
        xyz = np.array([c.center_xyz_mm for c in d.candidates], float).reshape(-1, 3)
        results.append(scan.result(xyz, np.array([c.prob for c in d.candidates], float)))
        dets.append(d)
    return results, dets


def source_figures(results: list[ScanResult], bootstrap: int = 1000) -> dict:
    """A source's figures: ``strata`` (`strata.score_cohort`: sensitivity at K, CPM with bootstrap
    intervals, per stratum), ``false_candidates`` at p >= 0.5 and 0.9 (`cohort.false_candidates`)
    and ``calibration`` (`cohort.calibration`: ECE over each scan's top 15 and top 100)."""
    return {"strata": score_cohort(results, bootstrap=bootstrap), "false_candidates": false_candidates(results),
            "calibration": calibration(results)}


def midline_x_mm(pre) -> float:
    """World x (mm, LPS) of the plane between the lungs of a preprocessed scan (`engine.preprocess
    .Preprocessed`): the sagittal plane with the fewest lung-mask voxels in the middle third of the
    mask's left-right extent (the mediastinum). Patient right is x below it."""
    mask = np.asarray(pre.mask)
    cols = mask.sum(axis=(0, 1))
    xs = np.flatnonzero(cols)
    if not len(xs):
        raise ConfigError("no lung mask: cannot place the midline")
    lo, hi = int(xs[0]), int(xs[-1])
    third = max((hi - lo) // 3, 1)
    mid = lo + third + int(np.argmin(cols[lo + third: max(hi - third, lo + third + 1)]))
    z, y = (np.asarray(mask.shape[:2]) - 1) / 2.0
    return float(pre.volume.voxel_to_world(np.array([z, y, float(mid)]))[0])


def right_lung_picture(d, result, midline_mm: float, out_path, top: int = 15):
    """The picture (`engine.render.candidates_png`) of the right-lung candidates (world x below
    ``midline_mm``) among the ``top`` most probable of one scan's `Detections` ``d`` (its
    `strata.ScanResult` ``result`` gives the true nodules), in rank order; on the 1 mm lung box the
    detection kept (``keep_preprocessed``), else the loaded scan. -> the PNG's path."""
    from dataclasses import replace

    from noduleflow.engine.render import candidates_png

    keep = tuple(c for c in d.candidates[:top] if c.center_xyz_mm[0] < midline_mm)
    volume = d.preprocessed.volume if d.preprocessed is not None else d.volume
    return candidates_png(volume, replace(d, candidates=keep), out_path, truth=result.nodules)


def realct_check(det, folder, progress: bool = True, picture_dir=None) -> dict:
    """The real-scan check (evaluation only; read, never written): for each scan of the LUNA16-style
    ``folder`` (a DICOM series folder and annotations.csv), the rank (1-based among the detector's
    list; 0: not in it) and probability of each annotated nodule's best hit, and the candidates
    at p >= 0.5 and 0.9 in the right lung (world x below `midline_x_mm`; patient right is -x in
    LPS): all of them and the false ones (on no nodule and no excluded finding); each scan's right-lung
    candidates among the top 15 (overall rank, probability, label as `cohort.candidate_labels`).
    ``picture_dir``: also each scan's `right_lung_picture` there, as ``right_lung_top15_<uid end>.png``.
    -> (that summary, list of `strata.ScanResult`)."""
    source = read_source("realct", folder)
    results, dets = detect_source(det, source, progress, keep_preprocessed=True)
    scans = []
    for scan, r, d in zip(source.scans, results, dets):
        mid = midline_x_mm(d.preprocessed)
        rank = first_hit_rank(r.xyz, r.prob, r.nodules)
        order = np.argsort(-r.prob, kind="stable")
        nodules = [{"xyz_mm": [round(float(v), 2) for v in n[:3]], "diameter_mm": round(float(n[3]), 2),
                    "side": "right" if n[0] < mid else "left", "rank": int(k),
                    "prob": float(r.prob[order[k - 1]]) if k else None} for n, k in zip(r.nodules, rank)]
        right = r.xyz[:, 0] < mid
        false = candidate_labels(r) == 0
        picture = None
        if picture_dir is not None:
            picture = right_lung_picture(d, r, mid, Path(picture_dir) / f"right_lung_top15_{scan.uid[-12:]}.png").name
        counts = {f"{t:g}": {"right_lung": int((right & (r.prob >= t)).sum()),
                             "right_lung_false": int((right & false & (r.prob >= t)).sum())} for t in (0.5, 0.9)}
        scans.append({"uid": scan.uid, "path": str(scan.path), "midline_x_mm": round(mid, 2),
                      "candidates": len(r.prob), "nodules": nodules, "at_prob": counts,
                      "right_lung_top15": [{"rank": int(i) + 1, "xyz_mm": np.round(r.xyz[j], 2).tolist(),
                                            "prob": round(float(r.prob[j]), 5), "label": int(lab)}
                                           for i, (j, lab) in enumerate(zip(order, candidate_labels(r)[order]))
                                           if right[j] and i < 15],
                      "picture": picture,
                      "detect_seconds": round(float(d.timings_s.get("total", float("nan"))), 3)})
    return {"folder": str(source.folder), "scans": scans}, results
