"""The pulmonary lesion dataset with fine contours and nine attributes (seeds/004: Li et al.,
Front. Digit. Health 2021) -> per-lesion 3-D masks, attributes, centres, diameters and
LUNA16 rows.

The layout read (paper, section 3.1):

    ROOT/<ct_type>/<hospital>/<year>/<month>/<day>/<subject_id>/
        SE01/                  the CT series, DICOM
        SE01_01_0n/            the contours of doctor n: one file ``<aid>_<loc>.anno`` per contour
    ROOT/attributes.csv        the nine attributes of each lesion (see below)

(the two annotation files are parsed in `trainer.data.lesion_anno`)

What the paper documents, and is read exactly: the directory structure, ``SE01`` for the DICOM
series, ``SE01_01_0n`` for doctor n's contours, ``aid_loc.anno`` file names (``aid`` the lesion's
number in the CT, ``loc`` its slice), an .anno file as a dictionary with the keys ``SeriesID``
(the SeriesInstanceUID), ``NoduleSerialNumber`` (= aid), ``InstanceNumber`` (= loc), ``Origin``,
``Dimension``, ``Spacing`` (from the DICOM volume), ``Coords`` (the contour, relative to the slice
size) and ``XMin``, ``XMax``, ``YMin``, ``YMax`` (its bounding box); the nine attributes and their
categories: lesion type (placeholder, nodule, ground glass opacity, air containing space,
mutation, pleural effusion), location (five lobes; 0 for a lesion spanning several), margin
(clear, unclear), calcification (no, partial, total), lobulation, spiculation (no, short, long),
cavity, vessel convergence, pleural indentation (each without, with). One volume per subject id
(the paper renumbers a subject's second volume).

Assumptions where the paper is silent (each checked; anything else is one `ConfigError` or
`VolumeError` naming the file and the bad value):

- An .anno file is a JSON object or a Python dict literal with exactly those eleven keys.
  ``Origin``, ``Dimension``, ``Spacing`` are in ITK (x, y[, z]) order; their in-plane values must
  match the series (the z origin is not checked: the paper does not say which slice it is).
- ``loc`` is the slice's DICOM InstanceNumber (0020,0013), the anno's ``InstanceNumber`` key; the
  slice is found by that number, never by file order.
- ``Coords`` is a list of [x, y] pairs, fractions in [0, 1] of the slice's width (columns) and
  height (rows), 0 and 1 at the image's outer edges: column = x * Columns - 0.5 and row = y *
  Rows - 0.5 in pixel-centre indices. The bounding box is in the same units and must contain the
  contour (one pixel of tolerance). A polygon has at least 3 points.
- ``aid`` numbers lesions per CT, across doctors: the same aid in two doctors' folders is one
  lesion contoured by both. Each doctor's mask is kept; the consensus mask is their union (each
  doctor marks every third slice or so, so an intersection would drop slices).
- ``attributes.csv`` at ROOT has the columns `ATTRIBUTE_COLUMNS`: one row per lesion (subject id,
  aid), the doctor who labelled it (one of those who contoured it), and the nine attributes as
  integer codes or category names: type 1-6 in the paper's order (`LesionType`); lobe 0 for
  several lobes (the paper's 0), 1-5 right upper, right middle, right lower, left upper, left
  lower (`Lobe`); margin 0 clear, 1 unclear; calcification and spiculation 0 none, 1 partial /
  short, 2 total / long; the four others 0 without, 1 with. The paper keeps only lesions with both
  contours and attributes, so a lesion without its row, or a row without contours, is refused.
- Centre: the gravity centre of the consensus mask (the paper's choice), world (x, y, z) mm, LPS.
  Diameter: ``equivalent_diameter_mm``, the circle of the largest contour slice's area (in-plane,
  as LUNA16's diameters are: the contours skip slices, so a volume-equivalent diameter would be
  biased); ``major_axis_mm``, the paper's "longer geometric moment", on the same slice.
- LUNA16 rows: lesions of `DETECTION_TYPES` (nodule, ground glass opacity) are annotations; the
  others (masses over 30 mm, air spaces, pleural effusion, "mutation") are excluded findings,
  hits on which are neither true nor false positives, as LUNA16 treats non-nodules.
"""
from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError, VolumeError
from noduleflow.engine.volume import Volume

from .annotations import Finding
from .lesion_anno import (
    ANNO_KEYS,
    ATTRIBUTE_COLUMNS,
    AnnoContour,
    Calcification,
    LesionAttributes,
    LesionType,
    Lobe,
    Margin,
    Spiculation,
    parse_anno,
    parse_attribute,
    read_attributes,
)

log = logging.getLogger(__name__)

__all__ = ["ANNO_KEYS", "ATTRIBUTE_COLUMNS", "DETECTION_TYPES", "AnnoContour", "Calcification", "Lesion",
           "LesionAttributes", "LesionDataset", "LesionMask", "LesionScan", "LesionType", "Lobe", "Margin",
           "SeriesGeometry", "Spiculation", "contour_pixels", "is_lesion_root", "lesion_findings", "lesion_scans",
           "lesion_sources", "parse_anno", "parse_attribute", "read_attributes", "read_lesion_dataset",
           "read_lesions", "series_geometry"]

DICOM_DIR = "SE01"
ATTRIBUTES = "attributes.csv"
_CONTOUR_DIR = re.compile(r"^SE01_01_(\d{2})$")
SPACING_TOL_MM = 1e-3
ORIGIN_TOL_MM = 0.01
DETECTION_TYPES = frozenset({LesionType.NODULE, LesionType.GROUND_GLASS_OPACITY})


@dataclass(frozen=True)
class LesionScan:
    """One subject's CT: ``series_dir`` (SE01) and each doctor's contour folder."""

    subject_id: str
    ct_type: str
    hospital: str
    date: datetime.date
    series_dir: Path
    contour_dirs: tuple[tuple[int, Path], ...]  # (doctor, SE01_01_0n folder), by doctor


@dataclass(frozen=True, eq=False)
class LesionDataset:
    root: Path
    scans: tuple[LesionScan, ...]  # by path
    attributes: dict  # (subject id, aid) -> LesionAttributes


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_of(subject: Path, ct_type, hospital, date) -> LesionScan:
    dirs = _subdirs(subject)
    contour = []
    for p in dirs:
        m = _CONTOUR_DIR.match(p.name)
        if m:
            contour.append((int(m[1]), p))
        elif p.name != DICOM_DIR:
            raise ConfigError(f"{p}: a subject folder holds {DICOM_DIR} (DICOM) and SE01_01_0n (contours of "
                              f"doctor n), got {p.name!r}")
    if not (subject / DICOM_DIR).is_dir():
        raise ConfigError(f"{subject}: no {DICOM_DIR} folder (the DICOM series)")
    if not contour:
        raise ConfigError(f"{subject}: no SE01_01_0n contour folder (every volume of the dataset has lesions)")
    return LesionScan(subject.name, ct_type, hospital, date, subject / DICOM_DIR, tuple(contour))


def _date(folder: Path, year: str, month: str, day: str) -> datetime.date:
    """The date of a year/month/day folder chain (4, 1-2, 1-2 digits); ConfigError otherwise."""
    try:
        if not (re.fullmatch(r"\d{4}", year) and re.fullmatch(r"\d{1,2}", month) and re.fullmatch(r"\d{1,2}", day)):
            raise ValueError(day)
        return datetime.date(int(year), int(month), int(day))
    except ValueError as exc:
        got = f"{year}/{month}" + ("" if folder.name == month else f"/{day}")
        raise ConfigError(f"{folder}: year/month/day folders must form a date, got {got}") from exc


def is_lesion_root(folder) -> bool:
    """Whether ``folder`` looks like the lesion dataset's root (an .anno file at the layout's depth)."""
    return next(Path(folder).glob("*/*/*/*/*/*/SE01_01_*/*.anno"), None) is not None


def read_lesion_dataset(root) -> LesionDataset:
    """Index the dataset at ``root`` (folders and attributes.csv; no DICOM or .anno read yet)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"lesion dataset folder not found: {root}")
    scans, seen = [], {}
    for ct in _subdirs(root):
        for hosp in _subdirs(ct):
            for year in _subdirs(hosp):
                for month in _subdirs(year):
                    _date(month, year.name, month.name, "1")
                    for day in _subdirs(month):
                        date = _date(day, year.name, month.name, day.name)
                        for subject in _subdirs(day):
                            if subject.name in seen:
                                raise ConfigError(f"subject {subject.name} twice: {seen[subject.name]} and {subject}")
                            seen[subject.name] = subject
                            scans.append(_scan_of(subject, ct.name, hosp.name, date))
    if not scans:
        raise ConfigError(f"{root}: no <ct_type>/<hospital>/<year>/<month>/<day>/<subject>/SE01 folders")
    attributes = read_attributes(root / ATTRIBUTES)
    unknown = sorted(k for k in attributes if k[0] not in seen)
    if unknown:
        raise ConfigError(f"{root / ATTRIBUTES}: rows for subjects with no folder, e.g. {unknown[0][0]}")
    return LesionDataset(root, tuple(scans), attributes)


@dataclass(frozen=True, eq=False)
class SeriesGeometry:
    """A DICOM series' grid, from its headers: ``volume`` (the engine's geometry: slices ordered
    along their normal, origin the first; ``hu`` a zero array that takes no memory), and
    ``z_of_instance`` InstanceNumber -> slice index (numbers present more than once are left out)."""

    volume: Volume
    z_of_instance: dict


def series_geometry(series_dir) -> SeriesGeometry:
    """Headers only (`engine.io.dicom_header.read_header`); the geometry `load_volume` gives."""
    from noduleflow.engine.io.dicom_header import SliceHeader, read_header

    series_dir = Path(series_dir)
    heads = [read_header(p) for p in sorted(series_dir.iterdir()) if p.is_file() and not p.name.startswith(".")]
    bad = [h for h in heads if h is not None and not isinstance(h, SliceHeader)]
    slices = [h for h in heads if isinstance(h, SliceHeader)]
    if bad or not slices:
        raise VolumeError(f"{series_dir}: " + (f"unreadable DICOM {bad[0].path.name} ({bad[0].reason})" if bad
                                               else "no DICOM slices"))
    uids = sorted({s.series_uid for s in slices})
    problems = [f"{s.path.name}: {p}" for s in slices for p in s.problems]
    if len(uids) != 1 or problems:
        raise VolumeError(f"{series_dir}: " + (f"{len(uids)} series {uids[:3]}, {DICOM_DIR} holds one"
                                               if len(uids) != 1 else problems[0]))
    row, col = np.asarray(slices[0].orientation[:3]), np.asarray(slices[0].orientation[3:])
    normal = np.cross(row, col)
    dist = np.array([np.dot(s.position, normal) for s in slices])
    order = np.argsort(dist, kind="stable")
    slices, dist = [slices[i] for i in order], dist[order]
    dz = float((dist[-1] - dist[0]) / (len(slices) - 1)) if len(slices) > 1 else 1.0
    dy, dx = slices[0].pixel_spacing
    shape = (len(slices), slices[0].rows, slices[0].cols)
    vol = Volume(np.broadcast_to(np.zeros((), np.int16), shape), (dz, dy, dx), slices[0].position,
                 tuple(np.stack([row, col, normal], axis=1).ravel()), uids[0], {"source": str(series_dir)})
    numbers: dict[int, list[int]] = {}
    for k, s in enumerate(slices):
        n = s.ds.get("InstanceNumber")
        if n is not None and str(n).strip():
            numbers.setdefault(int(n), []).append(k)
    return SeriesGeometry(vol, {n: ks[0] for n, ks in numbers.items() if len(ks) == 1})


def _check_header(a: AnnoContour, geo: SeriesGeometry) -> None:
    v = geo.volume
    nz, ny, nx = v.shape
    if a.series_uid != v.series_uid:
        raise ConfigError(f"{a.path}: SeriesID {a.series_uid} is not the series of {v.meta['source']} "
                          f"({v.series_uid})")
    if a.dimension[:2] != (nx, ny) or (len(a.dimension) == 3 and a.dimension[2] != nz):
        raise ConfigError(f"{a.path}: Dimension {list(a.dimension)} differs from the series' (x, y, z) {[nx, ny, nz]}")
    if not np.allclose(a.spacing[:2], v.spacing_xyz_mm[:2], atol=SPACING_TOL_MM):
        raise ConfigError(f"{a.path}: Spacing {list(a.spacing)} differs from the series' in-plane "
                          f"{list(v.spacing_xyz_mm[:2])} mm")
    if not np.allclose(a.origin[:2], v.origin_xyz_mm[:2], atol=ORIGIN_TOL_MM):
        raise ConfigError(f"{a.path}: Origin {list(a.origin)} differs from the series' in-plane "
                          f"{list(v.origin_xyz_mm[:2])} mm")
    x, y = a.coords[:, 0], a.coords[:, 1]
    xmin, xmax, ymin, ymax = a.bbox
    tx, ty = 1.0 / nx, 1.0 / ny
    if not (xmin <= xmax and ymin <= ymax and x.min() >= xmin - tx and x.max() <= xmax + tx
            and y.min() >= ymin - ty and y.max() <= ymax + ty):
        raise ConfigError(f"{a.path}: bounding box XMin {xmin:g} XMax {xmax:g} YMin {ymin:g} YMax {ymax:g} does "
                          f"not hold the contour (x in [{x.min():g}, {x.max():g}], y in [{y.min():g}, {y.max():g}])")
    if a.loc not in geo.z_of_instance:
        raise ConfigError(f"{a.path}: no single slice of {v.meta['source']} has InstanceNumber {a.loc}")


def contour_pixels(coords: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill one contour: ``coords`` (n, 2) fractions (x, y) -> (row, column) int64 indices of the
    pixels whose centres lie inside the polygon (`skimage.draw.polygon`); a contour that holds no
    pixel centre marks the pixel under its centroid, so every contour leaves a mark."""
    try:
        from skimage.draw import polygon
    except ImportError as exc:
        raise ConfigError("the lesion dataset's contour masks need scikit-image: "
                          "pip install 'noduleflow[bench]'") from exc
    c = coords[:, 0] * cols - 0.5
    r = coords[:, 1] * rows - 0.5
    rr, cc = polygon(r, c, shape=(rows, cols))
    if not len(rr):
        rr = np.array([int(np.clip(np.rint(r.mean()), 0, rows - 1))])
        cc = np.array([int(np.clip(np.rint(c.mean()), 0, cols - 1))])
    return rr.astype(np.int64), cc.astype(np.int64)


@dataclass(frozen=True, eq=False)
class LesionMask:
    """A bool mask on the scan's grid, stored cropped: ``array`` (dz, dy, dx) bool at
    ``offset_zyx`` of a grid of ``shape_zyx``."""

    offset_zyx: tuple[int, int, int]
    array: np.ndarray
    shape_zyx: tuple[int, int, int]

    @classmethod
    def from_indices(cls, z, r, c, shape_zyx) -> LesionMask:
        idx = np.stack([np.asarray(z), np.asarray(r), np.asarray(c)], 1).astype(np.int64)
        lo, hi = idx.min(0), idx.max(0) + 1
        arr = np.zeros(tuple(hi - lo), dtype=bool)
        arr[tuple((idx - lo).T)] = True
        return cls(tuple(int(v) for v in lo), arr, tuple(int(v) for v in shape_zyx))

    def full(self) -> np.ndarray:
        """The mask on the whole grid: bool (z, y, x) of ``shape_zyx``."""
        out = np.zeros(self.shape_zyx, dtype=bool)
        z, y, x = self.offset_zyx
        dz, dy, dx = self.array.shape
        out[z:z + dz, y:y + dy, x:x + dx] = self.array
        return out

    def indices(self) -> np.ndarray:
        """(n, 3) int64 (z, y, x) of the voxels on the whole grid."""
        return np.argwhere(self.array) + np.asarray(self.offset_zyx)

    def union(self, other: LesionMask) -> LesionMask:
        a, b = self.indices(), other.indices()
        both = np.concatenate([a, b])
        return LesionMask.from_indices(both[:, 0], both[:, 1], both[:, 2], self.shape_zyx)


@dataclass(frozen=True, eq=False)
class Lesion:
    """One lesion: per-doctor masks (``masks``: (doctor, `LesionMask`) by doctor), their union
    ``consensus``, ``attributes``, and from the consensus: ``center_xyz_mm`` (gravity centre,
    world mm LPS), ``equivalent_diameter_mm`` and ``major_axis_mm`` (largest contour slice)."""

    subject_id: str
    series_uid: str
    aid: int
    masks: tuple[tuple[int, LesionMask], ...]
    consensus: LesionMask
    attributes: LesionAttributes
    center_xyz_mm: tuple[float, float, float]
    equivalent_diameter_mm: float
    major_axis_mm: float

    def mask(self, doctor: int | None = None) -> LesionMask:
        """Doctor ``doctor``'s mask, or the consensus (union) when None."""
        if doctor is None:
            return self.consensus
        for d, m in self.masks:
            if d == doctor:
                return m
        raise ConfigError(f"lesion {self.aid} of {self.subject_id}: no contour of doctor {doctor} "
                          f"(doctors {[d for d, _ in self.masks]})")


def _measures(mask: LesionMask, volume: Volume) -> tuple[tuple[float, float, float], float, float]:
    """(gravity centre world xyz mm, equivalent diameter mm, major axis mm) of a mask."""
    idx = mask.indices().astype(np.float64)
    centre = tuple(float(v) for v in volume.voxel_to_world(idx.mean(0)))
    _, dy, dx = volume.spacing_zyx_mm
    zs, counts = np.unique(idx[:, 0], return_counts=True)
    pix = idx[idx[:, 0] == zs[np.argmax(counts)], 1:] * np.array([dy, dx])
    equivalent = 2.0 * np.sqrt(counts.max() * dy * dx / np.pi)
    # second moments of the filled pixels (each a dy x dx square: its own variance added), so a
    # disk of diameter D gives D and a single pixel its size, not 0
    cov = np.cov(pix.T, bias=True) if len(pix) > 1 else np.zeros((2, 2))
    cov = cov + np.diag([dy * dy, dx * dx]) / 12.0
    major = 4.0 * np.sqrt(float(np.linalg.eigvalsh(cov).max()))
    return centre, float(equivalent), float(major)


def read_lesions(dataset: LesionDataset, scan: LesionScan, geometry: SeriesGeometry | None = None
                 ) -> tuple[Lesion, ...]:
    """Every lesion of ``scan`` (by aid): each doctor's contours filled slice by slice on the
    series' grid, the consensus, attributes and measures. ``geometry``: the series' (default:
    read from its headers by `series_geometry`)."""
    geo = geometry or series_geometry(scan.series_dir)
    nz, ny, nx = geo.volume.shape
    voxels: dict[int, dict[int, list[tuple[np.ndarray, ...]]]] = {}
    for doctor, folder in scan.contour_dirs:
        files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        if not files:
            raise ConfigError(f"{folder}: no .anno files")
        for p in files:
            a = parse_anno(p, doctor)
            _check_header(a, geo)
            rr, cc = contour_pixels(a.coords, ny, nx)
            z = np.full(len(rr), geo.z_of_instance[a.loc], np.int64)
            voxels.setdefault(a.aid, {}).setdefault(doctor, []).append((z, rr, cc))
    lesions = []
    for aid, by_doctor in sorted(voxels.items()):
        attrs = dataset.attributes.get((scan.subject_id, aid))
        if attrs is None:
            raise ConfigError(f"{dataset.root / ATTRIBUTES}: no row for subject {scan.subject_id} lesion {aid} "
                              f"(contoured in {scan.series_dir.parent})")
        if attrs.doctor not in by_doctor:
            raise ConfigError(f"{dataset.root / ATTRIBUTES}: subject {scan.subject_id} lesion {aid} labelled by doctor "
                              f"{attrs.doctor}, contoured by {sorted(by_doctor)}")
        masks = tuple((d, LesionMask.from_indices(*(np.concatenate(v) for v in zip(*parts)), (nz, ny, nx)))
                      for d, parts in sorted(by_doctor.items()))
        consensus = masks[0][1]
        for _, m in masks[1:]:
            consensus = consensus.union(m)
        lesions.append(Lesion(scan.subject_id, geo.volume.series_uid, aid, masks, consensus, attrs,
                              *_measures(consensus, geo.volume)))
    missing = sorted(k[1] for k in dataset.attributes if k[0] == scan.subject_id and k[1] not in voxels)
    if missing:
        raise ConfigError(f"{dataset.root / ATTRIBUTES}: subject {scan.subject_id} lesion(s) {missing} have no contour "
                          f"in {scan.series_dir.parent}")
    return tuple(lesions)


def lesion_findings(lesions, diameter: str = "equivalent", types=DETECTION_TYPES
                    ) -> tuple[list[Finding], list[Finding]]:
    """Lesions -> (annotations, excluded findings) as LUNA16 rows (`annotations.Finding`:
    seriesuid, world centre mm, diameter mm): lesions of ``types`` are annotations, the others
    excluded. ``diameter``: "equivalent" (default) or "major_axis" (the paper's)."""
    if diameter not in ("equivalent", "major_axis"):
        raise ConfigError(f"diameter must be 'equivalent' or 'major_axis', got {diameter!r}")
    ann, exc = [], []
    for les in lesions:
        d = les.equivalent_diameter_mm if diameter == "equivalent" else les.major_axis_mm
        (ann if les.attributes.type in types else exc).append(Finding(les.series_uid, les.center_xyz_mm, d))
    return ann, exc


def lesion_scans(root):
    """Yield (scan, series UID, annotations, excluded) for every scan of the dataset at ``root``:
    the evaluation and training sources' view (`lesion_findings`' defaults)."""
    ds = read_lesion_dataset(root)
    for scan in ds.scans:
        geo = series_geometry(scan.series_dir)
        ann, exc = lesion_findings(read_lesions(ds, scan, geo))
        yield scan, geo.volume.series_uid, ann, exc


def lesion_sources(root) -> list:
    """Training sources (`trainer.data.sources.ScanSource`, scan id = SeriesInstanceUID) for the
    dataset at ``root``; non-nodule lesions are excluded findings (never sampled as negatives)."""
    from noduleflow.engine.io import load_volume

    from .sources import ScanSource

    return [ScanSource(uid, (lambda p=scan.series_dir, u=uid: load_volume(p, series_uid=u)), tuple(ann), tuple(exc))
            for scan, uid, ann, exc in lesion_scans(root)]
