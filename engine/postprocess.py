"""Post-processing of scored points and candidates, shared by the detector, the benchmarks, model
selection and calibration: one `sigmoid`, greedy radius `nms`, connected `components` of the scored
grid, sub-grid `refine_centre`, `lesion_order` (one candidate per lesion), and `cluster_points` /
`cluster_scored`, which chain them into the dense CNN's ranked list: `engine.scoring.GridScorer.
score_grid` then `cluster_scored` is the one grid -> score -> cluster pipeline.

Everything here is a plain function of arrays: no backend, no `Detector`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ccl import label
from .config import HU_WINDOW, DetectorConfig


def sigmoid(x) -> np.ndarray:
    """Logistic function of logits ``x`` (any shape) -> float64 probabilities. Logits below about
    -709 give 0 (exp overflows to inf there; the warning is silenced: 0 is the right value), and
    above about 745 exactly 1 (exp underflows to 0)."""
    with np.errstate(over="ignore", under="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in voxels), zero padding; one shifted sum per tap."""
    h = int(np.ceil(3 * sigma))
    x = np.arange(-h, h + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    for ax in range(3):
        pad = [(0, 0)] * 3
        pad[ax] = (h, h)
        p = np.pad(a, pad)
        n = a.shape[ax]
        out = np.zeros_like(a)
        for i, w in enumerate(k):
            out += w * np.take(p, np.arange(i, i + n), axis=ax)
        a = out
    return a


def refine_centre(hu: np.ndarray, centre_zyx, search: int = 3, sigmas=(1.0, 1.5, 2.0, 3.0), half: int = 16):
    """Sub-grid centre: the strongest blob within ``search`` voxels of ``centre_zyx``.

    A multi-scale blob detector on the 1 mm volume: the scale-normalised negative Laplacian of
    Gaussian (sigma^2 * -LoG of HU clipped to [-1000, 400]) peaks at the centre of a bright ball
    of radius about sigma * sqrt(3); a wall or a vessel gives a weaker response, so a
    juxta-pleural or juxta-vascular nodule's centre is not pulled into its neighbour (which a
    density centroid is). The grid point's score says a nodule is near; this says where.
    Returns (3,) float64 voxel coordinates (zyx)."""
    c = np.round(np.asarray(centre_zyx, dtype=np.float64)).astype(int)
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, hu.shape)
    # half >= search + 3 max(sigma) + 1: the blur's zero padding never reaches the searched voxels
    box = np.clip(hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64), *HU_WINDOW)
    cc = c - lo
    s0 = np.maximum(cc - search, 1)
    s1 = np.minimum(cc + search + 1, np.asarray(box.shape) - 1)
    if (s1 <= s0).any():
        return np.asarray(centre_zyx, dtype=np.float64)
    g = np.meshgrid(*[np.arange(a, b) for a, b in zip(s0, s1)], indexing="ij")
    inside = sum((gi - ci) ** 2 for gi, ci in zip(g, cc)) <= search * search
    best, arg = -np.inf, np.asarray(centre_zyx, dtype=np.float64)
    for sigma in sigmas:
        sm = smooth(box, sigma)
        core = sm[s0[0]:s1[0], s0[1]:s1[1], s0[2]:s1[2]]
        lap = -6.0 * core
        for ax in range(3):
            lo_s = [slice(a, b) for a, b in zip(s0, s1)]
            hi_s = list(lo_s)
            lo_s[ax] = slice(s0[ax] - 1, s1[ax] - 1)
            hi_s[ax] = slice(s0[ax] + 1, s1[ax] + 1)
            lap = lap + sm[tuple(lo_s)] + sm[tuple(hi_s)]
        resp = np.where(inside, -(sigma ** 2) * lap, -np.inf)
        i = np.unravel_index(int(np.argmax(resp)), resp.shape)
        if resp[i] > best:
            best = resp[i]
            arg = np.array([g[0][i], g[1][i], g[2][i]], dtype=np.float64) + lo
    return arg


def nms(points_zyx: np.ndarray, probs: np.ndarray, top_k: int, nms_radius: float, merge_radius: float,
        logits: np.ndarray | None = None, stride: int = 0):
    """Greedy radius NMS with sub-grid centres.

    Repeatedly takes the most probable remaining point and suppresses everything within
    ``nms_radius``. Its centre: where the grid neighbours at +-``stride`` along an axis
    were scored, the vertex of the parabola through the three logits (sub-grid peak);
    along other axes, the prob^2-weighted mean of the points within ``merge_radius``
    scoring at least half the peak. -> [(centre zyx, prob, n merged)].
    """
    order = np.argsort(-probs, kind="stable")
    pts, pr = points_zyx[order].astype(np.float64), probs[order]
    lg = logits[order] if logits is not None else None
    lookup = {tuple(p): i for i, p in enumerate(points_zyx[order].astype(np.int64))} if stride and lg is not None \
        else {}
    alive = np.ones(len(pr), bool)
    out = []
    for i in range(len(pr)):
        if not alive[i]:
            continue
        d = np.linalg.norm(pts - pts[i], axis=1)
        near = alive & (d <= merge_radius) & (pr >= 0.5 * pr[i])
        w = pr[near] ** 2
        centre = (pts[near] * w[:, None]).sum(0) / w.sum()
        for a in range(3):
            step = np.zeros(3, np.int64)
            step[a] = stride
            key = pts[i].astype(np.int64)
            im, ip = lookup.get(tuple(key - step)), lookup.get(tuple(key + step))
            if im is None or ip is None:
                continue
            lm, l0, lp = lg[im], lg[i], lg[ip]
            curv = lm - 2.0 * l0 + lp
            if curv < 0:
                centre[a] = pts[i, a] + float(np.clip(0.5 * (lm - lp) / curv, -0.5, 0.5)) * stride
        out.append((centre, float(pr[i]), int(near.sum())))
        alive &= d > nms_radius
        if len(out) >= top_k:
            break
    return out


def components(points_zyx: np.ndarray, probs: np.ndarray, top_k: int, stride: int, min_prob: float = 0.5):
    """Connected components of the scored points with ``probs >= min_prob``, 6-connected on
    their grid (points lie on one lattice of step ``stride``). Each component becomes one
    candidate: its centre the prob^2-weighted mean of its points, its probability the
    maximum. Ranked by probability, the first ``top_k`` -> [(centre zyx, prob, n points)]."""
    sel = probs >= min_prob
    if not sel.any():
        return []
    pts, pr = points_zyx[sel].astype(np.int64), probs[sel]
    g = (pts - pts.min(0)) // max(int(stride), 1)
    grid = np.zeros(tuple(g.max(0) + 1), bool)
    grid[g[:, 0], g[:, 1], g[:, 2]] = True
    lab, n = label(grid)
    ids = lab[g[:, 0], g[:, 1], g[:, 2]] - 1
    w = pr ** 2
    wsum = np.bincount(ids, w, minlength=n)
    centre = np.stack([np.bincount(ids, w * pts[:, a], minlength=n) for a in range(3)], 1) / wsum[:, None]
    best = np.full(n, -np.inf)
    np.maximum.at(best, ids, pr)
    size = np.bincount(ids, minlength=n)
    order = np.argsort(-best, kind="stable")[:top_k]
    return [(centre[i], float(best[i]), int(size[i])) for i in order]


def lesion_order(centres_zyx: np.ndarray, radius_mm: np.ndarray, score: np.ndarray, factor: float) -> np.ndarray:
    """Indices of candidates, best score first, one per lesion: a candidate within ``factor`` x the
    larger extent radius of itself and a better one (1 mm grid: voxels are mm) is dropped
    (``factor`` 0: nothing dropped)."""
    order = np.argsort(-np.asarray(score), kind="stable")
    if not factor or len(order) < 2:
        return order
    c = np.asarray(centres_zyx, np.float64).reshape(-1, 3)
    r = np.asarray(radius_mm, np.float64)
    kept: list[int] = []
    for i in order:
        if kept:
            d = np.linalg.norm(c[kept] - c[i], axis=1)
            if (d < factor * np.maximum(r[kept], r[i])).any():
                continue
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Clustered:
    """Ranked candidates from clustering scored grid points, on the 1 mm grid: ``centres_zyx`` (n, 3)
    float64 voxels, ``prob`` (n,) float64, ``n_points`` (n,) int64 (grid points merged)."""

    centres_zyx: np.ndarray
    prob: np.ndarray
    n_points: np.ndarray

    def __len__(self) -> int:
        return len(self.prob)

    @classmethod
    def from_found(cls, found) -> Clustered:
        """From [(centre zyx, prob, n)] in rank order."""
        return cls(np.array([f[0] for f in found], dtype=np.float64).reshape(-1, 3),
                   np.array([f[1] for f in found], dtype=np.float64),
                   np.array([f[2] for f in found], dtype=np.int64))


def cluster_scored(grid, config: DetectorConfig, stride: int, dense_stride: int = 0, hu: np.ndarray | None = None,
                   mask: np.ndarray | None = None) -> Clustered:
    """The dense CNN's scored grid (`engine.scoring.ScoredGrid`) -> its ranked candidates: the
    points at or above ``config.threshold`` (as probabilities) clustered by `cluster_points`."""
    probs = sigmoid(grid.logits)
    keep = probs >= config.threshold
    return cluster_points(grid.centres_zyx[keep], probs[keep], grid.logits[keep], config, stride, dense_stride,
                          hu, mask)


def cluster_points(centres, probs, logits, config: DetectorConfig, stride: int, dense_stride: int = 0,
                   hu: np.ndarray | None = None, mask: np.ndarray | None = None) -> Clustered:
    """Scored grid points -> the top ``config.top_k`` candidates: clustering (``config.clustering``),
    with ``config.refine`` each centre moved onto its blob in ``hu`` (`refine_centre`), with
    ``config.in_mask`` candidates outside ``mask`` dropped, ranked by probability.

    ``centres`` (n, 3) int voxels on the 1 mm grid (a lattice of step ``stride``), ``probs`` and
    ``logits`` (n,); ``dense_stride``: the dense graph's output stride (0: none), for the sub-grid
    peak of `nms`. ``hu`` and ``mask``: the 1 mm lung box and its mask (needed by refine and in_mask).
    """
    cfg = config
    # cluster more than K: the mask check may drop some
    k = cfg.top_k * 3 if cfg.in_mask else cfg.top_k
    if cfg.clustering == "components":
        found = components(centres, probs, k, stride, cfg.component_min_prob)
        if len(found) < k:  # fill the list from the points below the threshold, away from the components
            low = probs < cfg.component_min_prob
            rest = nms(centres[low], probs[low], k, cfg.nms_radius_mm, cfg.merge_radius_mm,
                       logits=logits[low], stride=dense_stride)
            taken = np.array([f[0] for f in found]).reshape(-1, 3)
            rest = [r for r in rest if not len(taken) or
                    np.linalg.norm(taken - r[0], axis=1).min() > cfg.nms_radius_mm]
            found = found + rest[:k - len(found)]
    else:
        found = nms(centres, probs, k, cfg.nms_radius_mm, cfg.merge_radius_mm, logits=logits, stride=dense_stride)
    if cfg.refine:
        found = [(refine_centre(hu, c), p, n) for c, p, n in found]
    if cfg.in_mask:
        hi = np.asarray(mask.shape) - 1
        found = [f for f in found if mask[tuple(np.clip(np.round(f[0]).astype(int), 0, hi))]]
    return Clustered.from_found(found[:cfg.top_k])
