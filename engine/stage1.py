"""Stage 1, candidates for recall: the dense CNN's clustered peaks, Hessian blobs, or their union,
one candidate per lesion (merged by the lesion's extent), a few hundred per scan at most.

Every candidate carries an extent radius (mm): a blob's from its scale (sigma * sqrt(3)), a CNN
component's from its size (the radius of a ball with the volume of its grid cells), so that two
candidates are one lesion when either lies inside the other's extent; a 25 mm mass is one
candidate. The union interleaves the two ranked lists (CNN first, then blobs, one of each in turn)
and drops a candidate that falls inside one already kept: its rank is its position in that list.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .blobs import BlobParams, detect_blobs
from .errors import ConfigError

GENERATORS = ("cnn", "blobs", "union")
MIN_RADIUS_MM = 2.5
MAX_RADIUS_MM = 15.0


@dataclass(frozen=True)
class Stage1Params:
    generator: str = "union"
    max_candidates: int = 300
    cnn_candidates: int = 300       # clustered CNN peaks considered (before the union's cap)
    blob: BlobParams = BlobParams()

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ConfigError(f"generator must be one of {GENERATORS}, got {self.generator!r}")
        if self.max_candidates < 1 or self.cnn_candidates < 1:
            raise ConfigError(f"max_candidates and cnn_candidates must be >= 1, got {self.max_candidates}, "
                              f"{self.cnn_candidates}")


@dataclass(frozen=True)
class Stage1Candidates:
    """Ranked candidates on the 1 mm grid: ``centres_zyx`` (n, 3) float64 voxels, ``radius_mm`` (n,),
    ``cnn_prob`` (n,) (the dense CNN's probability at the nearest clustered peak; NaN for a blob the
    CNN did not score near), ``blob_response`` (n,) (NaN for a CNN peak), ``source`` (n,) int8
    (0: CNN, 1: blob)."""

    centres_zyx: np.ndarray
    radius_mm: np.ndarray
    cnn_prob: np.ndarray
    blob_response: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return len(self.radius_mm)

    def head(self, n: int) -> "Stage1Candidates":
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


def combine(cnn_centres, cnn_prob, cnn_radius, blob_centres, blob_response, blob_radius,
            generator: str, cap: int) -> Stage1Candidates:
    """The stage-1 list of ``generator`` from ranked CNN peaks and ranked blobs (see module doc)."""
    cnn_centres = np.asarray(cnn_centres, np.float64).reshape(-1, 3)
    blob_centres = np.asarray(blob_centres, np.float64).reshape(-1, 3)
    nan_c, nan_b = np.full(len(cnn_prob), np.nan), np.full(len(blob_response), np.nan)
    if generator == "cnn":
        a, b = (cnn_centres, cnn_radius, cnn_prob, nan_c), (blob_centres[:0], blob_radius[:0], nan_b[:0],
                                                            blob_response[:0])
    elif generator == "blobs":
        a, b = (cnn_centres[:0], cnn_radius[:0], cnn_prob[:0], nan_c[:0]), (blob_centres, blob_radius, nan_b,
                                                                              blob_response)
    elif generator == "union":
        a, b = (cnn_centres, cnn_radius, cnn_prob, nan_c), (blob_centres, blob_radius, nan_b, blob_response)
    else:
        raise ConfigError(f"generator must be one of {GENERATORS}, got {generator!r}")
    idx = _interleave_merge(a[0], a[1], b[0], b[1], cap)
    cat = [np.concatenate([x, y]) for x, y in zip(a, b)]
    src = np.r_[np.zeros(len(a[1]), np.int8), np.ones(len(b[1]), np.int8)]
    cand = Stage1Candidates(cat[0][idx], cat[1][idx], cat[2][idx], cat[3][idx], src[idx])
    if generator == "union" and len(cand):
        # a blob's CNN probability: the nearest CNN peak's within its extent (else NaN)
        cp = cand.cnn_prob.copy()
        for i in np.flatnonzero(cand.source == 1):
            if len(cnn_centres):
                d = np.linalg.norm(cnn_centres - cand.centres_zyx[i], axis=1)
                j = int(np.argmin(d))
                if d[j] < max(cand.radius_mm[i], cnn_radius[j]):
                    cp[i] = cnn_prob[j]
        cand = Stage1Candidates(cand.centres_zyx, cand.radius_mm, cp, cand.blob_response, cand.source)
    return cand


def stage1_candidates(det, pre, params: Stage1Params = Stage1Params()) -> Stage1Candidates:
    """Stage-1 candidates of a preprocessed scan (``engine.preprocess.Preprocessed``) with the dense
    CNN of ``det`` (a `Detector`) and/or the blob detector."""
    from .detector import _sigmoid

    cc = np.zeros((0, 3))
    cp = cr = np.zeros(0)
    if params.generator in ("cnn", "union"):
        cfg = det.config.replace(top_k=params.cnn_candidates)
        centres = det.grid_centres(pre)
        logits = np.asarray(det.score(pre, centres))
        probs = _sigmoid(logits)
        found = det.cluster(pre, centres, probs, logits, config=cfg)
        stride = det.contract.dense_stride or det.contract.candidate_rules.stride
        cc = np.array([f[0] for f in found], dtype=np.float64).reshape(-1, 3)
        cp = np.array([f[1] for f in found], dtype=np.float64)
        cr = component_radius_mm(np.array([f[2] for f in found]), stride)
    bc = np.zeros((0, 3))
    br = bv = np.zeros(0)
    if params.generator in ("blobs", "union"):
        b = detect_blobs(pre.volume.hu, pre.mask, params.blob)
        bc, br, bv = b.centres_zyx, b.radius_mm, b.response
    return combine(cc, cp, cr, bc, bv, br, params.generator, params.max_candidates)
