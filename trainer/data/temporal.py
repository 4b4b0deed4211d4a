"""The cross spatio-temporal lung nodule dataset (seeds/002: Jian et al., 328 CT series of 109
patients, several time points T_1..T_m per patient, MetaImage, 1.25 mm and 5 mm series) ->
patients, time points, series, world-mm annotations, lung masks and follow-up pairs.

The layout read, after the archives are extracted and consolidated (as the paper asks users to):

    ROOT/
      1.25mm/                          one folder per slice thickness; "1.25mm" and/or "5mm"
        <patient>_<YYYYMMDD>.mhd       original scans (+ their .raw/.zraw), archives mhd0 and mhd1
        lung_mask/<patient>_<YYYYMMDD>.mhd   the lung segmentation of that scan (archive mhd2;
                                       the paper: "stored in a designated folder, labeled as lung_mask")
        annotations.csv                nodule positions and diameters in the global (world)
                                       coordinate system (archive mhd3)
      5mm/                             the same layout for the 5 mm series

What the paper documents, and is read exactly: MetaImage (.mhd) scans, a ``lung_mask`` folder,
``annotations.csv`` with world-coordinate positions and diameters, 1.25 mm and 5 mm series,
several time points per patient.

Assumptions where the paper is silent (each checked; anything else is one `ConfigError` or
`VolumeError` naming the file and the bad value):

- Thickness folders are named ``1.25mm`` and ``5mm`` (the paper's names for the two series);
  another ``<number>mm`` folder is refused.
- A scan's file name is ``<patient>_<YYYYMMDD>`` (patient id, an underscore, the CT date): the
  authors' published code (github.com/Heroandzhang/dataset_process) reads
  ``1.25mm/mhd/100_20220217.mhd``. The file stem is the series UID, as in LUNA16, and the key of
  annotations.csv. Time points are a patient's dates in order: T_1 is the earliest. A 1.25 mm
  and a 5 mm series of the same patient and date are one time point.
- annotations.csv has LUNA16's columns ``seriesuid,coordX,coordY,coordZ,diameter_mm`` (world mm,
  LPS as ITK reads the .mhd files; the paper says "global coordinate system"), no others; every
  row names a scan of its folder, has a diameter > 0 and a centre inside that scan.
- A lung-mask image is a label image on its scan's grid: 0 outside the lungs, > 0 inside (the
  authors' code writes 3 and 4 for the two lungs). A negative voxel (a masked CT rather than a
  label image) or another grid is refused. A scan may lack a lung mask; a mask without its scan
  is refused.
- Nodules are not linked across time points by the paper: a follow-up pair carries both time
  points' annotations, and matching them is the evaluation's job (e.g. `noduleflow.follow`).
"""
from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError, VolumeError
from noduleflow.engine.volume import Volume

from .annotations import Finding, by_series, read_findings

log = logging.getLogger(__name__)

THICKNESSES = ("1.25mm", "5mm")
LUNG_MASK_DIR = "lung_mask"
ANNOTATIONS = "annotations.csv"
LUNA16_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
_SCAN_NAME = re.compile(r"^(?P<patient>[^_].*)_(?P<date>\d{8})$")
_THICKNESS_LIKE = re.compile(r"^\d+(\.\d+)?mm$")


@dataclass(frozen=True)
class TemporalSeries:
    """One scan: ``seriesuid`` (``<patient>_<YYYYMMDD>``, the .mhd stem), its ``thickness``
    folder, the ``scan`` .mhd, its ``lung_mask`` .mhd (None when absent) and its ``nodules``
    (annotations.csv rows, world (x, y, z) mm, diameter mm)."""

    seriesuid: str
    patient_id: str
    date: datetime.date
    thickness: str
    scan: Path
    lung_mask: Path | None
    nodules: tuple[Finding, ...]


@dataclass(frozen=True)
class TimePoint:
    """One CT date of a patient (the dataset's T_k; not `noduleflow.follow.TimePoint`): ``index``
    1-based in date order, ``series`` one per thickness present, in `THICKNESSES` order."""

    patient_id: str
    date: datetime.date
    index: int
    series: tuple[TemporalSeries, ...]

    def get(self, thickness: str) -> TemporalSeries | None:
        """This time point's series of ``thickness`` ("1.25mm" or "5mm"), None when absent."""
        _check_thickness(thickness)
        return next((s for s in self.series if s.thickness == thickness), None)


@dataclass(frozen=True)
class TemporalPatient:
    patient_id: str
    time_points: tuple[TimePoint, ...]  # date order


@dataclass(frozen=True)
class FollowUpPair:
    """Two consecutive time points of one patient in one thickness: ``prior`` then ``current``
    series, each with its own annotations. ``interval_days`` is what `noduleflow.follow.follow`
    needs for MetaImage scans (they carry no StudyDate)."""

    patient_id: str
    thickness: str
    prior: TemporalSeries
    current: TemporalSeries

    @property
    def interval_days(self) -> int:
        return (self.current.date - self.prior.date).days


@dataclass(frozen=True)
class TemporalDataset:
    root: Path
    patients: tuple[TemporalPatient, ...]  # by patient id

    @property
    def thicknesses(self) -> tuple[str, ...]:
        have = {s.thickness for p in self.patients for t in p.time_points for s in t.series}
        return tuple(t for t in THICKNESSES if t in have)

    def series(self, thickness: str) -> list[TemporalSeries]:
        """Every series of ``thickness``, by patient then date."""
        _check_thickness(thickness)
        return [s for p in self.patients for t in p.time_points for s in t.series if s.thickness == thickness]


def _check_thickness(thickness: str) -> None:
    if thickness not in THICKNESSES:
        raise ConfigError(f"thickness must be one of {list(THICKNESSES)}, got {thickness!r}")


def parse_scan_name(path: Path) -> tuple[str, datetime.date]:
    """``<patient>_<YYYYMMDD>.mhd`` -> (patient id, date); ConfigError naming the file otherwise."""
    m = _SCAN_NAME.match(path.name[: -len(".mhd")] if path.name.endswith(".mhd") else path.name)
    if not path.name.endswith(".mhd") or not m:
        raise ConfigError(f"{path}: a scan of the temporal dataset is named <patient>_<YYYYMMDD>.mhd, "
                          f"got {path.name!r}")
    try:
        date = datetime.datetime.strptime(m["date"], "%Y%m%d").date()
    except ValueError as exc:
        raise ConfigError(f"{path}: {m['date']!r} is not a date (YYYYMMDD)") from exc
    return m["patient"], date


def mhd_geometry(path: Path) -> Volume:
    """The geometry of a .mhd (header only, no voxel read) as a `Volume` whose ``hu`` is a
    read-only zero array of the image's shape (z, y, x) (no memory): for world <-> voxel maps."""
    import SimpleITK as sitk

    from noduleflow.engine.io.image_headers import check_metaimage

    check_metaimage(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeError(f"{path}: unreadable MetaImage header ({str(exc).strip().splitlines()[-1]})") from exc
    if reader.GetDimension() != 3:
        raise VolumeError(f"{path}: a 3-D image expected, got {reader.GetDimension()} dimensions")
    shape_zyx = tuple(int(v) for v in reader.GetSize())[::-1]
    return Volume(np.broadcast_to(np.zeros((), np.int16), shape_zyx), tuple(reader.GetSpacing())[::-1],
                  tuple(reader.GetOrigin()), tuple(reader.GetDirection()), path.name[: -len(".mhd")],
                  {"source": str(path), "format": "mhd"})


def _read_annotations(path: Path) -> dict[str, list[Finding]]:
    if not path.is_file():
        raise ConfigError(f"{path} missing: each thickness folder of the temporal dataset has annotations.csv")
    header = [h.strip() for h in path.read_text().splitlines()[0].split(",")] if path.stat().st_size else []
    if sorted(header) != sorted(LUNA16_COLUMNS):
        raise ConfigError(f"{path}: header must be the columns {','.join(LUNA16_COLUMNS)}, got {header}")
    findings = read_findings(path)
    for f in findings:
        if not f.diameter_mm > 0:  # read_findings reads LUNA16's -1 (no size) as 0
            raise ConfigError(f"{path}: series {f.series_uid} has a nodule at {f.center_xyz_mm} with diameter "
                              f"<= 0 mm; annotations of this dataset have a size")
    return by_series(findings)


def _check_inside(path: Path, uid: str, scan: Path, nodules: list[Finding]) -> None:
    """Refuse annotations whose centre lies outside the scan (voxel coordinates, another scan)."""
    if not nodules:
        return
    geo = mhd_geometry(scan)
    idx = geo.world_to_voxel(np.array([n.center_xyz_mm for n in nodules]))
    outside = np.any((idx < -0.5) | (idx > np.array(geo.shape) - 0.5), axis=1)
    if outside.any():
        bad = nodules[int(np.argmax(outside))]
        raise ConfigError(f"{path}: {uid}'s nodule at world {bad.center_xyz_mm} mm lies outside {scan.name} "
                          f"(voxel zyx {idx[int(np.argmax(outside))].round(1).tolist()}, shape {list(geo.shape)}); "
                          f"coordinates must be world mm")


def read_thickness_folder(folder) -> list[TemporalSeries]:
    """One thickness folder (``ROOT/1.25mm`` or ``ROOT/5mm``, module docstring) -> its series,
    sorted by patient then date. Reads annotations.csv and the .mhd headers, not the voxels."""
    folder = Path(folder)
    if folder.name not in THICKNESSES:
        raise ConfigError(f"{folder}: a thickness folder of the temporal dataset is named one of "
                          f"{list(THICKNESSES)}, got {folder.name!r}")
    ann_path = folder / ANNOTATIONS
    ann = _read_annotations(ann_path)
    scans = {}
    for p in sorted(folder.glob("*.mhd")):
        if p.name.startswith("."):
            continue
        scans[p.name[:-4]] = (p, *parse_scan_name(p))
    if not scans:
        raise ConfigError(f"{folder}: no <patient>_<YYYYMMDD>.mhd scans")
    masks: dict[str, Path] = {}
    mask_dir = folder / LUNG_MASK_DIR
    if mask_dir.is_dir():
        for p in sorted(mask_dir.glob("*.mhd")):
            if p.name.startswith("."):
                continue
            parse_scan_name(p)
            if p.name[:-4] not in scans:
                raise ConfigError(f"{p}: a lung mask without its scan {folder / p.name}")
            masks[p.name[:-4]] = p
    unknown = sorted(set(ann) - set(scans))
    if unknown:
        raise ConfigError(f"{ann_path}: rows for series with no scan in {folder}: {', '.join(unknown[:3])}"
                          + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""))
    out = []
    for uid, (path, patient, date) in scans.items():
        _check_inside(ann_path, uid, path, ann.get(uid, []))
        out.append(TemporalSeries(uid, patient, date, folder.name, path, masks.get(uid), tuple(ann.get(uid, ()))))
    return sorted(out, key=lambda s: (s.patient_id, s.date))


def find_thickness_folders(root) -> list[Path]:
    """The thickness folders of a temporal-dataset root, in `THICKNESSES` order (may be empty);
    a folder named like a thickness that is neither of them is refused."""
    root = Path(root)
    for p in root.iterdir():
        if p.is_dir() and _THICKNESS_LIKE.match(p.name) and p.name not in THICKNESSES:
            raise ConfigError(f"{p}: the temporal dataset has {' and '.join(THICKNESSES)} series, not {p.name!r}")
    return [root / t for t in THICKNESSES if (root / t).is_dir()]


def read_temporal(root) -> TemporalDataset:
    """A temporal-dataset root (module docstring) -> patients with their time points in date
    order, each time point's series (1.25 mm, 5 mm) and annotations. Headers only."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"temporal dataset folder not found: {root}")
    folders = find_thickness_folders(root)
    if not folders:
        raise ConfigError(f"{root}: no {' or '.join(THICKNESSES)} folder (not the temporal dataset?)")
    by_visit: dict[tuple[str, datetime.date], list[TemporalSeries]] = {}
    for folder in folders:
        for s in read_thickness_folder(folder):
            by_visit.setdefault((s.patient_id, s.date), []).append(s)
    patients: dict[str, list[tuple[datetime.date, tuple[TemporalSeries, ...]]]] = {}
    for (patient, date), series in sorted(by_visit.items()):
        patients.setdefault(patient, []).append((date, tuple(series)))
    return TemporalDataset(root, tuple(
        TemporalPatient(pid, tuple(TimePoint(pid, d, k + 1, s) for k, (d, s) in enumerate(visits)))
        for pid, visits in sorted(patients.items())))


def follow_up_pairs(dataset: TemporalDataset, thickness: str = "1.25mm") -> list[FollowUpPair]:
    """Consecutive time points of each patient that both have a ``thickness`` series (a time point
    without one is skipped over, so T_1 pairs with T_3 when T_2 has only the other thickness)."""
    _check_thickness(thickness)
    out = []
    for p in dataset.patients:
        series = [s for t in p.time_points if (s := t.get(thickness)) is not None]
        out += [FollowUpPair(p.patient_id, thickness, a, b) for a, b in zip(series, series[1:])]
    return out


def detection_items(dataset: TemporalDataset, thickness: str = "1.25mm") -> Iterator[tuple[Path, tuple[Finding, ...]]]:
    """Yield (scan .mhd path, its annotation rows) for every ``thickness`` series: a detection
    source (each time point is a scan of its own)."""
    for s in dataset.series(thickness):
        yield s.scan, s.nodules


def load_lung_mask(series: TemporalSeries) -> np.ndarray:
    """The series' lung mask -> bool (z, y, x) on its scan's grid (True: lung). VolumeError when
    it has none, when its grid differs from the scan's, or when it is not a label image."""
    import SimpleITK as sitk

    if series.lung_mask is None:
        raise VolumeError(f"{series.seriesuid} ({series.thickness}) has no lung mask in "
                          f"{series.scan.parent / LUNG_MASK_DIR}")
    scan, mask = mhd_geometry(series.scan), mhd_geometry(series.lung_mask)
    same = (scan.shape == mask.shape and np.allclose(scan.spacing_zyx_mm, mask.spacing_zyx_mm, atol=1e-4)
            and np.allclose(scan.origin_xyz_mm, mask.origin_xyz_mm, atol=1e-3)
            and np.allclose(scan.direction, mask.direction, atol=1e-5))
    if not same:
        raise VolumeError(f"{series.lung_mask}: grid (shape {list(mask.shape)}, spacing {mask.spacing_zyx_mm}, "
                          f"origin {mask.origin_xyz_mm}) differs from its scan's (shape {list(scan.shape)}, "
                          f"spacing {scan.spacing_zyx_mm}, origin {scan.origin_xyz_mm})")
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(series.lung_mask)))
    if arr.min() < 0:
        raise VolumeError(f"{series.lung_mask}: minimum {arr.min()} < 0: a lung mask is a label image (0 outside, "
                          f"> 0 lung), this looks like a masked CT")
    return arr > 0


def temporal_sources(root, thickness: str = "1.25mm") -> list:
    """Training sources (`trainer.data.sources.ScanSource`, scan id = series UID) for every
    ``thickness`` series of the temporal dataset at ``root``, loaded by the engine's loader."""
    from noduleflow.engine.io import load_volume

    from .sources import ScanSource

    return [ScanSource(s.seriesuid, (lambda p=s.scan: load_volume(p)), s.nodules)
            for s in read_temporal(root).series(thickness)]
