"""Stage 1, candidates for recall: the dense CNN's clustered peaks, Hessian blobs, or their union,
one candidate per lesion (merged by the lesion's extent), a few hundred per scan at most.

Every candidate carries an extent radius (mm): a blob's from its scale (sigma * sqrt(3)), a CNN
component's from its size (the radius of a ball with the volume of its grid cells), so that two
candidates are one lesion when either lies inside the other's extent; a 25 mm mass is one
candidate. The union first centres each CNN peak on the blob it overlaps (the blob's centre is a
maximum of the dot filter; the CNN's is a weighted mean of 4 mm grid points), then interleaves
the two ranked lists (CNN first, then the remaining blobs, one of each in turn) and drops a
candidate that falls inside one already kept: its rank is its position in that list.

An optional second blob pass for subsolid lesions (`subsolid_blobs`) and a third for lesions on
the pleura (`wall_blobs`), and a fourth for ground-glass regions (`ggo_regions`, `engine.ggo`),
append their candidates that are not already in the list (`append_distinct`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from .blobs import BlobParams, detect_blobs, window
from .config import DetectorConfig
from .contract import STAGE1_GENERATORS, Stage1Spec
from .errors import ConfigError
from .ggo import GroundGlassParams, ground_glass_regions
from .morphology import dilate, erode
from .postprocess import cluster_scored
from .scoring import GridScorer

MIN_RADIUS_MM = 2.5
MAX_RADIUS_MM = 15.0
SUBSOLID_SIGMAS_MM = (1.0, 1.4, 2.0, 2.8, 4.0)
WALL_SIGMAS_MM = (1.0, 1.4, 2.0)   # lesions up to ~7 mm: larger ones on the pleura are the first pass's


def blob_params(spec: Stage1Spec) -> BlobParams:
    """The first blob pass's settings under ``spec``."""
    return BlobParams(min_response=spec.blob_min_response)


def subsolid_params(spec: Stage1Spec) -> BlobParams:
    """The subsolid pass's blob settings: scales up to 4 mm, its own response threshold."""
    return BlobParams(sigmas_mm=SUBSOLID_SIGMAS_MM, min_response=spec.subsolid_min_response)


def wall_params(spec: Stage1Spec) -> BlobParams:
    """The pleural pass's blob settings: the first pass's, at the fine scales only."""
    return replace(blob_params(spec), sigmas_mm=WALL_SIGMAS_MM)


@dataclass(frozen=True)
class Stage1Candidates:
    """Ranked candidates on the 1 mm grid: ``centres_zyx`` (n, 3) float64 voxels, ``radius_mm`` (n,),
    ``cnn_prob`` (n,) (the clustered CNN peak's probability; NaN for a blob no CNN peak overlaps),
    ``blob_response`` (n,) (NaN for a CNN peak no blob overlaps), ``source`` (n,) int8 (0: CNN
    peak, possibly centred on its blob; 1: blob alone; 2: subsolid-pass blob; 3: pleural-pass blob;
    4: ground-glass region)."""

    centres_zyx: np.ndarray
    radius_mm: np.ndarray
    cnn_prob: np.ndarray
    blob_response: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return len(self.radius_mm)

    def head(self, n: int) -> Stage1Candidates:
        return Stage1Candidates(*(a[:n] for a in (self.centres_zyx, self.radius_mm, self.cnn_prob,
                                                   self.blob_response, self.source)))


def component_radius_mm(n_points: np.ndarray, stride_mm: float) -> np.ndarray:
    """Radius (mm) of a ball with the volume of ``n_points`` grid cells of ``stride_mm``."""
    v = np.asarray(n_points, dtype=np.float64) * float(stride_mm) ** 3
    return np.clip((3.0 * v / (4.0 * np.pi)) ** (1.0 / 3.0), MIN_RADIUS_MM, MAX_RADIUS_MM)


def _interleave_merge(a_c, a_r, b_c, b_r, cap):
    """Indices into concat(a, b) in interleaved order (a0, b0, a1, b1, ...), skipping any candidate
    inside the extent of one kept before it (or it inside theirs); at most ``cap``."""
    order = []
    na, nb = len(a_r), len(b_r)
    for i in range(max(na, nb)):
        if i < na:
            order.append(i)
        if i < nb:
            order.append(na + i)
    c = np.concatenate([a_c.reshape(-1, 3), b_c.reshape(-1, 3)])
    r = np.concatenate([a_r, b_r])
    kept: list[int] = []
    for j in order:
        if kept:
            d = np.linalg.norm(c[kept] - c[j], axis=1)
            if (d < np.maximum(r[kept], r[j])).any():
                continue
        kept.append(j)
        if len(kept) >= cap:
            break
    return np.asarray(kept, dtype=np.int64)


def snap_to_blobs(cnn_centres, cnn_radius, blob_centres, blob_radius):
    """For each CNN peak, the nearest blob whose extent overlaps it (distance below the larger of
    the two radii), or -1: the blob is the same lesion and its centre (a maximum of the dot filter)
    is the better centre; the CNN's clustered centre is a weighted mean of 4 mm grid points."""
    out = np.full(len(cnn_radius), -1, np.int64)
    if len(blob_radius) == 0 or len(cnn_radius) == 0:
        return out
    d = np.linalg.norm(cnn_centres[:, None, :] - blob_centres[None, :, :], axis=-1)
    ok = d < np.maximum(cnn_radius[:, None], blob_radius[None, :])
    d = np.where(ok, d, np.inf)
    j = np.argmin(d, axis=1)
    out[np.isfinite(d[np.arange(len(j)), j])] = j[np.isfinite(d[np.arange(len(j)), j])]
    return out


def combine(cnn_centres, cnn_prob, cnn_radius, blob_centres, blob_response, blob_radius,
            generator: str, cap: int) -> Stage1Candidates:
    """The stage-1 list of ``generator`` from ranked CNN peaks and ranked blobs (see module doc).
    ``union``: each CNN peak takes the centre, extent and response of the blob it overlaps
    (`snap_to_blobs`), then the CNN list and the remaining blobs are interleaved and merged."""
    cnn_centres = np.asarray(cnn_centres, np.float64).reshape(-1, 3)
    blob_centres = np.asarray(blob_centres, np.float64).reshape(-1, 3)
    cnn_prob, cnn_radius = np.asarray(cnn_prob, np.float64), np.asarray(cnn_radius, np.float64)
    blob_response, blob_radius = np.asarray(blob_response, np.float64), np.asarray(blob_radius, np.float64)
    if generator not in STAGE1_GENERATORS:
        raise ConfigError(f"generator must be one of {STAGE1_GENERATORS}, got {generator!r}")
    nan_c, nan_b = np.full(len(cnn_prob), np.nan), np.full(len(blob_response), np.nan)
    if generator == "cnn":
        blob_centres, blob_radius = blob_centres[:0], blob_radius[:0]
        blob_response, nan_b = blob_response[:0], nan_b[:0]
    elif generator == "blobs":
        cnn_centres, cnn_radius, cnn_prob, nan_c = cnn_centres[:0], cnn_radius[:0], cnn_prob[:0], nan_c[:0]
    a_c, a_r, a_v = cnn_centres.copy(), cnn_radius.copy(), nan_c.copy()
    unused = np.ones(len(blob_radius), bool)
    if generator == "union":
        j = snap_to_blobs(cnn_centres, cnn_radius, blob_centres, blob_radius)
        s = j >= 0
        a_c[s], a_r[s], a_v[s] = blob_centres[j[s]], blob_radius[j[s]], blob_response[j[s]]
        unused[j[s]] = False
    b = np.flatnonzero(unused)
    idx = _interleave_merge(a_c, a_r, blob_centres[b], blob_radius[b], cap)
    cat_c = np.concatenate([a_c, blob_centres[b]])
    cat_r = np.concatenate([a_r, blob_radius[b]])
    cat_p = np.concatenate([cnn_prob, nan_b[b]])
    cat_v = np.concatenate([a_v, blob_response[b]])
    src = np.r_[np.zeros(len(a_r), np.int8), np.ones(len(b), np.int8)]
    return Stage1Candidates(cat_c[idx].reshape(-1, 3), cat_r[idx], cat_p[idx], cat_v[idx], src[idx])


def cnn_peaks(scorer: GridScorer, pre, n: int, config: DetectorConfig = DetectorConfig(),
              timings: dict | None = None):
    """The dense CNN's clustered peaks of a preprocessed scan, ranked: (centres zyx (k, 3),
    probability (k,), extent radius mm (k,)), at most ``n``, clustered with ``config``'s settings
    but without the per-candidate blob refinement (the union takes its centres from the blobs, and
    the refinement costs ~0.1 s per candidate on a CPU). Each step is timed into ``timings``."""
    timings = {} if timings is None else timings
    grid = scorer.score_grid(pre, timings)
    t = time.perf_counter()
    found = cluster_scored(grid, config.replace(top_k=n, refine=False, threshold=0.0), scorer.stride,
                           scorer.contract.dense_stride or 0, pre.volume.hu, pre.mask)
    timings["clustering"] = time.perf_counter() - t
    return found.centres_zyx, found.prob, component_radius_mm(found.n_points, scorer.stride)


def subsolid_blobs(hu_1mm: np.ndarray, mask_1mm: np.ndarray, spec: Stage1Spec = Stage1Spec()):
    """Blobs of subsolid (ground-glass) density: every voxel denser than ``spec.subsolid_solid_hu``
    (chest wall, vessels, solid tissue) set to ``spec.subsolid_fill_hu`` (aerated lung), then
    `detect_blobs` with `subsolid_params`. A faint nodule
    attached to the pleura or a vessel loses its response in the first pass (the dense neighbour
    makes the Hessian plate- or tube-like); here it is a ball on dark lung. Solid lesions vanish
    from this pass (the first pass has them)."""
    flat = window(hu_1mm, above=spec.subsolid_solid_hu, fill=spec.subsolid_fill_hu)
    return detect_blobs(flat, mask_1mm, subsolid_params(spec))


def ggo_params(spec: Stage1Spec) -> GroundGlassParams:
    """The ground-glass pass's settings from the stage-1 spec (the others at their defaults)."""
    return GroundGlassParams(dense_hu=spec.ggo_dense_hu, min_contrast_hu=spec.ggo_min_contrast_hu,
                             method=spec.ggo_method)


def ggo_regions(hu_1mm: np.ndarray, mask_1mm: np.ndarray, spec: Stage1Spec = Stage1Spec()):
    """Ground-glass regions (`engine.ggo.ground_glass_regions`) with the settings of ``spec``."""
    return ground_glass_regions(hu_1mm, mask_1mm, ggo_params(spec))


def _box(mm: float) -> tuple[int, int, int]:
    r = int(round(mm))  # the 1 mm grid: voxels are mm
    return (r, r, r)


def wall_blobs(hu_1mm: np.ndarray, mask_1mm: np.ndarray, spec: Stage1Spec = Stage1Spec()):
    """Blobs of lesions on the pleura: everything outside the lung is set to ``spec.wall_fill_hu``
    (aerated lung), then `detect_blobs` with peaks sought within ``spec.wall_band_mm`` of what was
    filled. "The lung" is the mask closed by ``spec.wall_close_mm`` (a nodule sitting in an
    indentation of the lung's surface stays inside) and shrunk by ``spec.wall_shrink_mm`` (the
    margin the preprocessing's mask was grown by:
    `engine.preprocess.PreprocessSpec`). In the first pass the chest wall beside a small nodule
    makes its Hessian plate-like (a bump on a plate); with the wall gone it is a ball on dark
    lung. Away from the wall this pass equals the first, hence the band; and only small lesions
    need it, hence the fine scales (`WALL_SIGMAS_MM`). Box structuring elements on the 1 mm grid."""
    close_mm, band_mm = spec.wall_close_mm, spec.wall_band_mm
    mask = np.ascontiguousarray(mask_1mm, dtype=np.bool_)
    closed = dilate(mask, _box(close_mm)) if close_mm > 0 else mask
    inner = erode(closed, _box(close_mm + spec.wall_shrink_mm))
    flat = window(hu_1mm, fill=spec.wall_fill_hu, keep=inner)
    band = mask & ~erode(inner, _box(band_mm)) if band_mm > 0 else mask
    return detect_blobs(flat, band, wall_params(spec))


def append_distinct(first: Stage1Candidates, centres, radius, response, n: int, source: int = 2,
                    nested: bool = False) -> Stage1Candidates:
    """``first`` followed by at most ``n`` of the ranked (centres, radius, response), skipping any
    inside the extent of a candidate already kept (or one of those inside its extent). ``nested``:
    skip only one within the smaller of the two extents (at least `MIN_RADIUS_MM`) of a kept one:
    a large region whose extent holds earlier candidates off its centre is still proposed."""
    centres = np.asarray(centres, np.float64).reshape(-1, 3)
    radius = np.asarray(radius, np.float64)
    k = len(first)
    keep_c = np.empty((k + max(n, 0), 3))
    keep_r = np.empty(k + max(n, 0))
    keep_c[:k], keep_r[:k] = first.centres_zyx.reshape(-1, 3), first.radius_mm
    add: list[int] = []
    for j in range(len(radius)):
        if len(add) >= n:
            break
        m = k + len(add)
        if m:
            reach = np.maximum(np.minimum(keep_r[:m], radius[j]), MIN_RADIUS_MM) if nested \
                else np.maximum(keep_r[:m], radius[j])
            if (np.linalg.norm(keep_c[:m] - centres[j], axis=1) < reach).any():
                continue
        keep_c[m], keep_r[m] = centres[j], radius[j]
        add.append(j)
    a = np.asarray(add, np.int64)
    return Stage1Candidates(keep_c[:k + len(a)], keep_r[:k + len(a)],
                            np.concatenate([first.cnn_prob, np.full(len(a), np.nan)]),
                            np.concatenate([first.blob_response, np.asarray(response, np.float64)[a]]),
                            np.concatenate([first.source, np.full(len(a), source, np.int8)]))


def stage1_candidates(pre, spec: Stage1Spec, scorer: GridScorer | None = None,
                      config: DetectorConfig = DetectorConfig(), timings: dict | None = None) -> Stage1Candidates:
    """Stage-1 candidates of a preprocessed scan (`engine.preprocess.Preprocessed`) as ``spec``
    declares them: the dense CNN's peaks (``scorer``, clustered with ``config``; needed unless the
    generator is "blobs") and/or the blob detector, then the subsolid and pleural passes; each step
    timed into ``timings``."""
    timings = {} if timings is None else timings
    cc = np.zeros((0, 3))
    cp = cr = np.zeros(0)
    if spec.uses_cnn:
        if scorer is None:
            raise ConfigError(f"stage-1 generator {spec.generator!r} needs the dense CNN: pass a scorer")
        cc, cp, cr = cnn_peaks(scorer, pre, spec.max_candidates, config, timings)
    bc = np.zeros((0, 3))
    br = bv = np.zeros(0)
    if spec.generator in ("blobs", "union"):
        t = time.perf_counter()
        b = detect_blobs(pre.volume.hu, pre.mask, blob_params(spec))
        bc, br, bv = b.centres_zyx, b.radius_mm, b.response
        timings["blobs"] = time.perf_counter() - t
    cand = combine(cc, cp, cr, bc, bv, br, spec.generator, spec.max_candidates)
    if spec.subsolid_candidates > 0:
        t = time.perf_counter()
        g = subsolid_blobs(pre.volume.hu, pre.mask, spec)
        cand = append_distinct(cand, g.centres_zyx, g.radius_mm, g.response, spec.subsolid_candidates)
        timings["subsolid"] = time.perf_counter() - t
    if spec.wall_candidates > 0:
        t = time.perf_counter()
        w = wall_blobs(pre.volume.hu, pre.mask, spec)
        cand = append_distinct(cand, w.centres_zyx, w.radius_mm, w.response, spec.wall_candidates, source=3)
        timings["wall"] = time.perf_counter() - t
    if spec.ggo_candidates > 0:
        t = time.perf_counter()
        g = ggo_regions(pre.volume.hu, pre.mask, spec)
        cand = append_distinct(cand, g.centres_zyx, g.radius_mm, g.response, spec.ggo_candidates, source=4,
                               nested=spec.ggo_method == "peaks")
        timings["ground_glass"] = time.perf_counter() - t
    return cand
