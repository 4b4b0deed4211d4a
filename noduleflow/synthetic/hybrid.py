"""Hybrid scans: synthetic lesions inserted into one lung of a real chest CT.

The substrate is a real scan (default: LIDC-IDRI-0314 in ../shared/realct, never written to).
Its lungs come from the engine's lung mask (the default `PreprocessSpec`'s parameters without
the 3 mm dilation, so that the boundary is the pleura and not 3 mm into the wall), split into the
patient-left (+x in LPS) and patient-right lung by connected component, or at the midline in x
where they touch (`lung_sides`). Lesions go into one lung only:

- ``lung="left"``: training. The real scan's annotated nodule and its excluded findings are
  neither positives nor negatives: all go to ``annotations_excluded.csv``.
- ``lung="right"``: evaluation only. The real annotated nodule stays a positive (in
  ``annotations.csv`` and ``findings.csv``: solid, irregular, its location judged from the lung
  mask as for the inserted ones); the excluded findings go to ``annotations_excluded.csv``.

Lesions keep their radius + ``margin_mm`` away from every real mark and from each other. Their
type, size, shape and attachment come from shuffled decks (`StrataDeck`), so a few scans hold
every stratum: ground glass is 3 of 8 kinds, and half the juxta-pleural ones are 10-30 mm.
How a lesion is drawn, imaged and blended: `hybrid_lesions`.

Each variant is written as ``<new SeriesInstanceUID>.mhd`` with the layout of an evaluation
source (``annotations.csv``, ``annotations_excluded.csv``, ``findings.csv``, ``source.json``),
plus ``lesions.json`` (every lesion's drawn values). Only the chosen lung may be used from a
variant: ``source.json`` names the region (``generator.region``). Lesions in real anatomy are a
regression signal, not clinical evidence.
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from tqdm import tqdm

from noduleflow.engine import ConfigError, Volume, VolumeError
from noduleflow.engine.ccl import label
from noduleflow.engine.io import load_volume, save_volume
from noduleflow.engine.lungmask import lung_mask
from noduleflow.engine.morphology import erode
from noduleflow.engine.preprocess import PreprocessSpec

from .hybrid_lesions import (
    HYBRID_KINDS,
    LesionSpec,
    NoiseModel,
    ScanOptics,
    blend_lesion,
    draw_values,
    estimate_inplane_sigma_mm,
    estimate_noise,
    lesion_montage,
    lesion_occupancy,
)

log = logging.getLogger(__name__)

DEFAULT_SUBSTRATE = Path(__file__).resolve().parents[2].parent / "shared" / "realct" / "LIDC-IDRI-0314"
LUNGS = ("left", "right")
EXCLUDED_NO_SIZE_MM = 10.0   # an excluded finding without a diameter (-1) counts as 10 mm, as in LUNA16's script
ANNOTATION_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
FINDINGS_HEADER = ANNOTATION_HEADER + ["kind", "shape", "location"]

SIZE_BINS_MM = ((3.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, 30.0))
KIND_DIAMETER_MM = {"solid": (3.0, 30.0), "ground_glass": (4.0, 30.0), "part_solid": (6.0, 30.0),
                    "calcified": (3.0, 15.0)}
DECKS = {
    "kind": ("solid", "solid", "ground_glass", "ground_glass", "ground_glass", "part_solid", "part_solid",
             "calcified"),
    "location": ("isolated", "isolated", "juxta_vascular", "juxta_vascular", "juxta_pleural", "juxta_pleural"),
    "shape": ("round", "ellipsoid", "lobulated", "spiculated"),
    "size": (0, 1, 2, 3),
    "pleural_size": (0, 1, 2, 2, 3, 3),      # wall-attached: half of them 10-30 mm
}


@dataclass(frozen=True)
class HybridParams:
    """Generator settings: lesions per scan, clearance (mm) beyond the radii from real marks and
    other lesions, placement attempts per lesion, and optional per-scan optics (None: measured)."""

    lesions_per_scan: int = 4
    margin_mm: float = 5.0
    attempts: int = 400
    slice_thickness_mm: float | None = None
    inplane_sigma_mm: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.lesions_per_scan <= 20:
            raise ConfigError(f"lesions per scan must be in [1, 20], got {self.lesions_per_scan}")
        if not 0 <= self.margin_mm <= 50:
            raise ConfigError(f"margin_mm must be in [0, 50], got {self.margin_mm}")


@dataclass(frozen=True, eq=False)
class LungSides:
    """The lung mask split by side: ``left``/``right`` bool (z, y, x) (patient left = +x in LPS),
    ``split_x_mm`` the world x between them, ``method`` "components" or "midline"."""

    left: np.ndarray
    right: np.ndarray
    split_x_mm: float
    method: str

    def side(self, lung: str) -> np.ndarray:
        return self.left if lung == "left" else self.right


@dataclass(frozen=True, eq=False)
class Substrate:
    """A real scan ready for insertion: volume, lung sides, optics, noise, and its real marks
    ``nodules``/``excluded`` float64 (n, 4) [x, y, z, diameter] world mm (excluded diameter -1: no size)."""

    path: Path
    volume: Volume
    sides: LungSides
    optics: ScanOptics
    noise: NoiseModel
    nodules: np.ndarray
    excluded: np.ndarray


@dataclass(frozen=True)
class Inserted:
    """One inserted lesion: what it is, where (world mm and voxel indices) and what was drawn."""

    spec: LesionSpec
    center_xyz_mm: tuple[float, float, float]
    center_zyx: tuple[float, float, float]
    design: dict = field(default_factory=dict)


def lung_sides(volume: Volume, mask: np.ndarray) -> LungSides:
    """Split a lung mask (bool (z, y, x)) into the patient-left and patient-right lung.

    Two components of at least 15 % of the larger one: each component goes to the side of its
    centroid's world x (left is +x), ``split_x_mm`` halfway between the two centroids. One lung
    component (touching lungs): split at the x column, within the middle 40 % of the mask's x
    extent, where the fewest mask voxels lie. Raises VolumeError when the mask is empty.
    """
    labels, n = label(mask)
    if n == 0:
        raise VolumeError(f"{volume.series_uid}: empty lung mask, cannot split the lungs")
    x_world = _world_x(volume)
    sizes = np.zeros(n + 1)
    x_sum = np.zeros(n + 1)
    x_plane = np.tile(x_world, labels.shape[1])
    for z in range(labels.shape[0]):            # per-component x centroid, one axial slice at a time
        flat = labels[z].ravel()
        sizes += np.bincount(flat, minlength=n + 1)
        x_sum += np.bincount(flat, weights=x_plane, minlength=n + 1)
    sizes, xs = sizes[1:], x_sum[1:] / np.maximum(sizes[1:], 1)
    order = np.argsort(sizes)[::-1]
    if n >= 2 and sizes[order[1]] >= 0.15 * sizes[order[0]]:
        split = 0.5 * (xs[order[0]] + xs[order[1]])
        lut = np.concatenate([[False], xs > split])
        left = lut[labels]
        return LungSides(left, mask & ~left, float(split), "components")
    cols = mask.sum(axis=(0, 1))
    idx = np.flatnonzero(cols)
    lo, hi = idx[0] + int(0.3 * (idx[-1] - idx[0])), idx[0] + int(0.7 * (idx[-1] - idx[0]))
    split_col = lo + int(np.argmin(cols[lo:hi + 1]))
    split = float(np.interp(split_col, np.arange(x_world.size), x_world))
    left = mask & (x_world[None, None, :] > split)
    return LungSides(left, mask & ~left, split, "midline")


def _world_x(volume: Volume) -> np.ndarray:
    """World x (mm) of the x index axis's voxel centres (the x axis must run along world x)."""
    d = volume.direction_matrix
    if abs(d[0, 0]) < 0.9:
        raise VolumeError(f"{volume.series_uid}: the image x axis is not along patient x, direction {volume.direction}")
    return volume.origin_xyz_mm[0] + d[0, 0] * volume.spacing_zyx_mm[2] * np.arange(volume.shape[2])


# --- the substrate -------------------------------------------------------------------------------

def _read_marks(path: Path, uid: str) -> np.ndarray:
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("seriesuid", "").strip() == uid:
                    rows.append([float(row[c]) for c in ANNOTATION_HEADER[1:]])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _slice_thickness(path: Path, volume: Volume) -> tuple[float, str]:
    """SliceThickness of the series' DICOM files, else the slice spacing."""
    files = sorted(path.glob("*.dcm")) if path.is_dir() else []
    for f in files[:20]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if str(ds.get("SeriesInstanceUID", "")) == volume.series_uid and ds.get("SliceThickness"):
            return float(ds.SliceThickness), "DICOM SliceThickness"
    return float(volume.spacing_zyx_mm[0]), "slice spacing (no DICOM SliceThickness)"


def load_substrate(path=DEFAULT_SUBSTRATE, params: HybridParams | None = None) -> Substrate:
    """Load a real scan and measure what insertion needs.

    ``path``: a DICOM series folder or an image file; its real marks are read from
    ``annotations.csv``/``annotations_excluded.csv`` in the folder that holds it (the series'
    rows only; absent files: no marks). Raises VolumeError when it is not a readable CT or has
    no lungs, ConfigError when its noise cannot be measured.
    """
    params = params or HybridParams()
    path = Path(path)
    vol = load_volume(path)
    mask = lung_mask(vol, replace(PreprocessSpec().lung, dilate_mm=0.0, wall_lesion_mm=0.0))
    sides = lung_sides(vol, mask)
    thick, thick_src = ((params.slice_thickness_mm, "set") if params.slice_thickness_mm
                        else _slice_thickness(path, vol))
    if params.inplane_sigma_mm:
        sigma, sigma_src = params.inplane_sigma_mm, "set"
    else:
        sigma, n = estimate_inplane_sigma_mm(vol.hu, vol.spacing_zyx_mm[1:])
        sigma_src = f"fitted to {n} skin-air edge profiles"
        if not np.isfinite(sigma):
            sigma = 0.6 * vol.spacing_zyx_mm[2]
            sigma_src = f"default 0.6 x pixel: only {n} clean skin-air edge profiles"
            log.warning("%s: in-plane blur not measurable (%d edge profiles); using %.2f mm", path, n, sigma)
    optics = ScanOptics(vol.spacing_zyx_mm, thick, float(sigma),
                        (("slice_thickness", thick_src), ("inplane_sigma", sigma_src)))
    noise = estimate_noise(vol.hu, vol.spacing_zyx_mm)
    folder = path.parent
    return Substrate(path, vol, sides, optics, noise, _read_marks(folder / "annotations.csv", vol.series_uid),
                     _read_marks(folder / "annotations_excluded.csv", vol.series_uid))


# --- what to insert ------------------------------------------------------------------------------

class StrataDeck:
    """Draws (kind, shape, location, diameter) from shuffled decks (`DECKS`): each deck is dealt
    in a random order and reshuffled when empty, so every stratum comes round within a few scans.
    The diameter: log-uniform within the dealt size bin, clipped to the kind's range."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.piles: dict[str, list] = {k: [] for k in DECKS}

    def deal(self, deck: str):
        pile = self.piles[deck]
        if not pile:
            pile.extend(self.rng.permutation(len(DECKS[deck])).tolist())
        return DECKS[deck][pile.pop()]

    def draw(self) -> LesionSpec:
        kind, shape, location = self.deal("kind"), self.deal("shape"), self.deal("location")
        lo, hi = SIZE_BINS_MM[self.deal("pleural_size" if location == "juxta_pleural" else "size")]
        klo, khi = KIND_DIAMETER_MM[kind]
        lo, hi = max(lo, klo), min(hi, khi)
        if lo >= hi:
            lo, hi = klo, khi
        d = float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))
        return LesionSpec(kind, shape, location, round(d, 2), int(self.rng.integers(2 ** 31)))


# --- where to insert it --------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _lung_sites(sub: Substrate, lung: str) -> dict:
    """Where lesions of each attachment may start in one lung (cached per substrate and lung):
    its voxels, its vessel voxels (> -300 HU) and its boundary voxels (flat indices), and the
    median HU of its aerated parenchyma (< -500 HU)."""
    side = sub.sides.side(lung)
    if not side.any():
        raise VolumeError(f"{sub.path}: no {lung} lung found")
    hu = sub.volume.hu
    lung_hu = hu[side]
    return {"inner": np.flatnonzero(side), "vessels": np.flatnonzero(side & (hu > -300)),
            "boundary": np.flatnonzero(side & ~erode(side, (1, 1, 1))),
            "parenchyma_hu": float(np.median(lung_hu[lung_hu < -500]))}


class _Placer:
    """Finds a centre for a lesion in one lung that meets its attachment's conditions, clear of
    the real marks and of the lesions placed before it."""

    def __init__(self, sub: Substrate, lung: str, rng: np.random.Generator, margin_mm: float, attempts: int):
        self.hu, self.rng, self.margin, self.attempts = sub.volume.hu, rng, margin_mm, attempts
        self.sp = np.asarray(sub.volume.spacing_zyx_mm)
        self.side = sub.sides.side(lung)
        self.other = sub.sides.side("right" if lung == "left" else "left")
        sites = _lung_sites(sub, lung)
        self.inner, self.vessels, self.boundary = sites["inner"], sites["vessels"], sites["boundary"]
        self.parenchyma_hu = sites["parenchyma_hu"]
        marks = np.concatenate([sub.nodules, sub.excluded]).reshape(-1, 4)
        self.keep_out = [(sub.volume.world_to_voxel(m[:3]), m[3] / 2 if m[3] > 0 else EXCLUDED_NO_SIZE_MM / 2)
                         for m in marks]

    def _ball(self, c, radius_mm, inner_mm=None):
        """Box around ``c`` and the ball (or shell beyond ``inner_mm``) of ``radius_mm`` in it."""
        lo = np.floor(c - radius_mm / self.sp).astype(int)
        hi = np.ceil(c + radius_mm / self.sp).astype(int) + 1
        if (lo < 0).any() or (hi > np.asarray(self.hu.shape)).any():
            return None, None
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        d2 = sum((((np.arange(a, b) - c[i]) * self.sp[i]) ** 2).reshape([-1 if j == i else 1 for j in range(3)])
                 for i, (a, b) in enumerate(zip(lo, hi)))
        ball = d2 <= radius_mm ** 2
        if inner_mm is not None:
            ball &= d2 > inner_mm ** 2
        return box, ball

    def _pick(self, idx):
        return np.array(np.unravel_index(idx[self.rng.integers(idx.size)], self.hu.shape), float)

    def _propose(self, spec: LesionSpec):
        r = spec.diameter_mm / 2
        if spec.location == "juxta_vascular" and self.vessels.size:
            u = self.rng.standard_normal(3)
            return self._pick(self.vessels) + u / np.linalg.norm(u) * (r + 0.5) / self.sp
        if spec.location == "juxta_pleural" and self.boundary.size:
            b = self._pick(self.boundary)
            box, ball = self._ball(b, 5.0)
            if box is None:
                return None
            inside = np.argwhere(self.side[box] & ball) + [s.start for s in box]
            normal = inside.mean(axis=0) - b if len(inside) else np.zeros(3)
            if np.linalg.norm(normal * self.sp) < 0.3:
                return None
            normal = normal * self.sp / np.linalg.norm(normal * self.sp)
            return b + normal * self.rng.uniform(0.3, 0.7) * r / self.sp
        return self._pick(self.inner) + self.rng.uniform(-0.5, 0.5, 3)

    def _fits(self, spec: LesionSpec, c) -> bool:
        r, ext = spec.diameter_mm / 2, spec.extent_mm
        for q, rq in self.keep_out:
            if np.linalg.norm((c - q) * self.sp) < ext + rq + self.margin:
                return False
        box, clear = self._ball(c, ext + 3.0)
        if box is None or (self.other[box] & clear).any() or not self.side[tuple(np.round(c).astype(int))]:
            return False
        box, ball = self._ball(c, r)
        inside = self.side[box][ball]
        dense = (self.hu[box][ball] > -500) & inside
        if spec.location == "juxta_pleural":
            outside = ball & ~self.side[box]
            frac_out = 1 - inside.mean()
            wall_air = (self.hu[box][outside] < -500).mean() if outside.any() else 1.0
            return 0.08 <= frac_out <= 0.45 and wall_air <= 0.1 and dense.sum() <= 0.3 * inside.sum()
        bb, big = self._ball(c, r + 2.0)
        if bb is None or self.side[bb][big].mean() < 0.995:
            return False
        if spec.location == "isolated":
            return dense.mean() <= 0.12
        box, shell = self._ball(c, r + 1.5, inner_mm=max(r - 0.5, 0))
        contact = ((self.hu[box] > -300) & shell & self.side[box]).sum()
        return dense.mean() <= 0.25 and contact * np.prod(self.sp) >= 3.0

    def place(self, spec: LesionSpec):
        """A centre (z, y, x) voxel indices for ``spec`` (shrunk by up to 30 % when it does not
        fit at its size), or None; the lesion is then kept out of by later ones."""
        for shrink in (1.0, 0.85, 0.7):
            s = replace(spec, diameter_mm=round(max(spec.diameter_mm * shrink, 3.0), 2))
            for _ in range(self.attempts):
                c = self._propose(s)
                if c is not None and self._fits(s, c):
                    self.keep_out.append((c, s.extent_mm))
                    return s, c
        return spec, None

    def background_hu(self, c, r: float) -> float:
        """Median of the aerated lung (< -500 HU) in a shell 1.5-8 mm outside the lesion."""
        box, shell = self._ball(c, r + 8.0, inner_mm=r + 1.5)
        if box is not None:
            v = self.hu[box][shell & self.side[box]]
            v = v[v < -500]
            if v.size >= 20:
                return float(np.median(v))
        return self.parenchyma_hu


def judge_location(sub: Substrate, xyzd) -> str:
    """The attachment of a real finding (in whichever lung holds its centre), by the rules placement
    uses: more than 3 % of its ball (radius + 1 mm) outside the lung mask: juxta_pleural; >= 3 mm^3
    of vessel (> -300 HU) in the shell radius -0.5..+1.5 mm: juxta_vascular; else isolated."""
    c = sub.volume.world_to_voxel(np.asarray(xyzd[:3], float))
    k = tuple(np.clip(np.round(c).astype(int), 0, np.asarray(sub.volume.shape) - 1))
    lung = "left" if sub.sides.left[k] or (not sub.sides.right[k] and xyzd[0] > sub.sides.split_x_mm) else "right"
    placer = _Placer(sub, lung, np.random.default_rng(0), 0.0, 0)
    r = float(xyzd[3]) / 2
    box, ball = placer._ball(c, r + 1.0)
    if box is not None and 1 - placer.side[box][ball].mean() > 0.03:
        return "juxta_pleural"
    box, shell = placer._ball(c, r + 1.5, inner_mm=max(r - 0.5, 0))
    if box is not None and ((placer.hu[box] > -300) & shell).sum() * np.prod(placer.sp) >= 3.0:
        return "juxta_vascular"
    return "isolated"


# --- inserting and writing -----------------------------------------------------------------------

def insert_lesions(sub: Substrate, lung: str, specs, rng: np.random.Generator,
                   params: HybridParams | None = None) -> tuple[np.ndarray, list[Inserted], np.ndarray]:
    """Insert ``specs`` into ``lung`` of the substrate.

    Returns (hu int16 (z, y, x), the lesions placed (those that found no site are left out and
    logged), footprint bool (z, y, x): the only voxels that may differ from the substrate's).
    """
    if lung not in LUNGS:
        raise ConfigError(f"lung must be 'left' or 'right', got {lung!r}")
    params = params or HybridParams()
    placer = _Placer(sub, lung, rng, params.margin_mm, params.attempts)
    hu = sub.volume.hu.copy()
    footprint = np.zeros(hu.shape, bool)
    placed = []
    for spec in specs:
        spec, c = placer.place(spec)
        if c is None:
            log.info("no site in the %s lung for %s %s %s %.1f mm", lung, spec.kind, spec.shape, spec.location,
                     spec.diameter_mm)
            continue
        design: dict = {}
        box, body, core = lesion_occupancy(spec, c, sub.optics, hu.shape, design, lung=placer.side)
        draw_values(spec, placer.background_hu(c, spec.diameter_mm / 2), design)
        noise = sub.noise.sample(np.random.default_rng([spec.seed, 4]), body.shape)
        new, foot = blend_lesion(hu[box], body, core, spec, design, noise, sub.noise.std_hu_z[box[0]])
        hu[box] = new
        footprint[box] |= foot
        xyz = tuple(round(float(v), 4) for v in sub.volume.voxel_to_world(c))
        placed.append(Inserted(spec, xyz, tuple(float(v) for v in c), design))
    return hu, placed, footprint


def _stratum(spec: LesionSpec) -> str:
    size = next((f"{lo:g}-{hi:g}" for lo, hi in SIZE_BINS_MM if spec.diameter_mm < hi), "20-30")
    return f"{spec.kind}/{spec.shape}/{spec.location}/{size} mm"


def _row(uid, xyzd) -> list:
    return [uid, *(f"{float(v):.4f}" for v in xyzd[:3]), f"{float(xyzd[3]):.4f}"]


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _check_out_dir(out: Path, sub_path: Path) -> None:
    """Never write into the substrate's folder or the folder of its annotations."""
    o, s = out.resolve(), sub_path.resolve()
    for protected in (s if s.is_dir() else s.parent, s.parent):
        if o == protected or protected in o.parents:
            raise ConfigError(f"output folder {out} is inside the substrate's folder {protected}; write elsewhere")


def write_hybrids(out_dir, n_scans: int, seed: int, lung: str = "right", substrate=DEFAULT_SUBSTRATE,
                  lesions_per_scan: int = 4, params: HybridParams | None = None, progress: bool = True,
                  preview: bool = False, command: str | None = None) -> list[Path]:
    """Write ``n_scans`` hybrid variants of ``substrate`` with lesions in ``lung`` into ``out_dir``.

    Scan i draws its sites from ``default_rng([seed, 1, i])``; the strata are dealt across all
    scans from ``default_rng([seed, 0])``. Writes ``<uid>.mhd`` per variant, the annotation files,
    ``findings.csv``, ``source.json``, ``lesions.json``; with ``preview`` a PNG per variant under
    ``preview/`` (axial crops of each lesion before/after). Returns the .mhd paths.
    """
    if lung not in LUNGS:
        raise ConfigError(f"lung must be 'left' or 'right', got {lung!r}")
    if n_scans < 1:
        raise ConfigError(f"--scans must be >= 1, got {n_scans}")
    params = replace(params or HybridParams(), lesions_per_scan=lesions_per_scan)
    out = Path(out_dir)
    _check_out_dir(out, Path(substrate))
    sub = load_substrate(substrate, params)
    out.mkdir(parents=True, exist_ok=True)
    deck = StrataDeck(np.random.default_rng([seed, 0]))
    vol = sub.volume
    ann, exc, findings, lesions, paths, skipped = [], [], [], [], [], 0
    real_loc = [judge_location(sub, n) for n in sub.nodules]
    for i in tqdm(range(n_scans), desc=f"hybrid ({lung} lung)", unit="scan", disable=not progress):
        rng = np.random.default_rng([seed, 1, i])
        specs = [deck.draw() for _ in range(params.lesions_per_scan)]
        hu, placed, _ = insert_lesions(sub, lung, specs, rng, params)
        skipped += len(specs) - len(placed)
        uid = generate_uid(entropy_srcs=["noduleflow-hybrid", vol.series_uid, lung, str(seed), str(i)])
        hyb = vol.with_array(hu, series_uid=uid, meta={"source": f"hybrid of {sub.path}", "format": "hybrid"})
        paths.append(save_volume(hyb, out / f"{uid}.mhd"))
        for p in placed:
            xyzd = (*p.center_xyz_mm, p.spec.diameter_mm)
            ann.append(_row(uid, xyzd))
            findings.append(_row(uid, xyzd) + [p.spec.kind, p.spec.shape, p.spec.location])
            lesions.append({"seriesuid": uid, **asdict(p.spec), "center_xyz_mm": list(p.center_xyz_mm),
                            "stratum": _stratum(p.spec), **p.design})
        real = [_row(uid, n) for n in sub.nodules]
        if lung == "right":    # real nodules (LIDC-IDRI-0314's is in the right lung): positives of the evaluation
            ann += real
            findings += [r + ["solid", "irregular", loc] for r, loc in zip(real, real_loc)]
        else:                  # neither positive nor negative in the training half
            exc += real
        exc += [_row(uid, e) for e in sub.excluded]
        if preview:
            lesion_montage(vol, hu, placed, out / "preview" / f"{uid}.png")
    _write_csv(out / "annotations.csv", ANNOTATION_HEADER, ann)
    _write_csv(out / "annotations_excluded.csv", ANNOTATION_HEADER, exc)
    _write_csv(out / "findings.csv", FINDINGS_HEADER, findings)
    (out / "lesions.json").write_text(json.dumps(lesions, indent=1))
    counts = _counts(lesions)
    if skipped:
        log.warning("%d of %d lesions found no site and were left out", skipped, n_scans * params.lesions_per_scan)
    cmd = command or (f"noduleflow synth {shlex.quote(str(out))} --hybrid {shlex.quote(str(sub.path))} "
                      f"--lung {lung} --scans {n_scans} --seed {seed} --nodules {params.lesions_per_scan}")
    info = {
        "name": out.name,
        "description": (f"{n_scans} variants of the real scan {vol.series_uid} with synthetic lesions inserted into "
                        f"its {lung} lung" + (" (the real annotated nodule stays a positive)" if lung == "right"
                                              else "") + ". A regression signal, not clinical evidence."),
        "role": "evaluation" if lung == "right" else "training",
        "generator": {
            "module": "noduleflow.synthetic.hybrid", "substrate": str(sub.path), "substrate_series_uid": vol.series_uid,
            "lung": lung, "settings": asdict(params),
            "region": {"lung": lung, "use_only": f"the {lung} lung of the engine's lung mask (dilate_mm=0) split by "
                                                 f"noduleflow.synthetic.hybrid.lung_sides ({sub.sides.method})",
                       "split_x_mm": round(sub.sides.split_x_mm, 2), "left_is": "+x (LPS)"},
            "optics": {"slice_thickness_mm": sub.optics.slice_thickness_mm,
                       "inplane_sigma_mm": round(sub.optics.inplane_sigma_mm, 3), **dict(sub.optics.source)},
            "noise": {"std_hu_median": round(float(np.median(sub.noise.std_hu_z)), 2),
                      "std_hu_range": [round(float(sub.noise.std_hu_z.min()), 2),
                                       round(float(sub.noise.std_hu_z.max()), 2)],
                      "patches": sub.noise.n_patches},
            "real_nodules": [{"xyzd": [round(float(v), 4) for v in n], "location": loc}
                             for n, loc in zip(sub.nodules, real_loc)],
            "lesions": len(lesions), "left_out": skipped, "counts": counts,
        },
        "seeds": [seed],
        "command": cmd,
    }
    (out / "source.json").write_text(json.dumps(info, indent=1))
    log.info("wrote %d hybrid scans with %d lesions (%s lung) to %s", n_scans, len(lesions), lung, out)
    return paths


def _counts(lesions: list[dict]) -> dict:
    """Lesions per kind, shape, location, size bin, and juxta-pleural 10-30 mm."""
    out: dict = {"kind": {}, "shape": {}, "location": {}, "size_mm": {}}
    for les in lesions:
        for key in ("kind", "shape", "location"):
            out[key][les[key]] = out[key].get(les[key], 0) + 1
        size = les["stratum"].split("/")[-1]
        out["size_mm"][size] = out["size_mm"].get(size, 0) + 1
    out["juxta_pleural_10_30_mm"] = sum(1 for les in lesions if les["location"] == "juxta_pleural"
                                        and 10 <= les["diameter_mm"] <= 30)
    out["kind"] = {k: out["kind"].get(k, 0) for k in HYBRID_KINDS}
    return out
