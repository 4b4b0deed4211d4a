"""Ground-glass regions: stage 1's pass for faint lesions that no blob filter ranks high enough.

A pure ground-glass nodule is a region where the lung is 100-450 HU denser than the parenchyma
around it, often with vessels running through it and a ragged margin. The Hessian blob passes
(`engine.blobs`) answer to a ball's curvature: such a region gives them a weak, broken response,
far below the vessel branchings that fill their lists (on lesions inserted into a real left lung,
20 of 36 ground-glass lesions had no candidate among 210). This pass looks for the region itself,
by local contrast of the parenchyma:

1. The parenchyma: lung-mask voxels below ``dense_hu`` (vessels, walls and solid tissue are
   denser), minus a 1 voxel rim around the dense ones (their partial-volume halo).
2. On 2 x 2 x 2 mm blocks, its normalised convolution (the Gaussian of the parenchyma's HU over
   the Gaussian of its indicator, so vessels leave no trace): at ``sigma_mm`` (the region's
   level) and at ``background_mm`` (the local parenchyma: it follows the gravity gradient from
   front to back, which a global threshold would not).
3. The contrast ``level - background``; blocks of contrast at least ``min_contrast_hu``, inside the
   lung mask shrunk by one block and with enough parenchyma around them to be measured, form
   6-connected regions (`engine.ccl.label`).
4. ``method="regions"``: each region of an equivalent diameter between ``min_diameter_mm`` and
   ``max_diameter_mm`` is one candidate: its contrast-weighted centroid, radius half that diameter,
   score = peak contrast x sqrt(diameter) (a faint large region and a denser small one rank alike);
   strongest first.
   ``method="peaks"``: one candidate per local maximum of the contrast instead (a 26-neighbourhood
   maximum of at least ``min_contrast_hu``). On real lung the 50 HU regions of step 3 flood into
   the slightly denser dependent lung and merge a lesion with its surroundings, so a region's
   centroid can lie outside the lesion it holds (on lesions inserted into a real left lung, 3 of
   18 ground-glass lesions that the other passes missed). Each maximum's own extent is the
   6-connected set of blocks around it at half its contrast or more (and at least
   ``min_contrast_hu``, within ``max_diameter_mm``), its centre that set's contrast-weighted
   centroid; a maximum whose half-contrast set reaches a higher one is a bump on a larger
   lesion and dropped. Score = peak contrast x sqrt(diameter) / elongation, the elongation being
   the square root of the ratio of the set's largest and smallest second moments: a lesion is
   round, a small vessel below ``dense_hu`` (partial volume) is a tube.

Solid lesions are not this pass's: they are denser than ``dense_hu`` and left out in step 1 (the
first pass has them). The output is `engine.blobs.Blobs`, so stage 1 appends it like its other
passes (`engine.stage1.append_distinct`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .blobs import Blobs, block_any2, block_mean2, gaussian
from .ccl import label
from .contract import GGO_METHODS
from .errors import ConfigError
from .morphology import dilate, erode

BLOCK_MM = 2.0  # the pass runs on 2 x 2 x 2 blocks of the 1 mm grid


@dataclass(frozen=True)
class GroundGlassParams:
    """Settings of `ground_glass_regions` (HU and mm on the 1 mm grid)."""

    dense_hu: float = -350.0
    sigma_mm: float = 1.5
    background_mm: float = 10.0
    min_contrast_hu: float = 50.0
    min_diameter_mm: float = 3.0
    max_diameter_mm: float = 40.0
    min_parenchyma: float = 0.3   # share of parenchyma under the level's Gaussian for a block to count
    method: str = "regions"       # "regions" or "peaks" (module docstring, step 4)

    def __post_init__(self) -> None:
        if self.method not in GGO_METHODS:
            raise ConfigError(f"ground-glass method must be one of {GGO_METHODS}, got {self.method!r}")
        if not -900 <= self.dense_hu <= 0:
            raise ConfigError(f"ground-glass dense_hu must be in [-900, 0] HU, got {self.dense_hu}")
        if not 0 < self.sigma_mm < self.background_mm <= 40:
            raise ConfigError(f"ground-glass scales need 0 < sigma_mm < background_mm <= 40 mm, got "
                              f"{self.sigma_mm}, {self.background_mm}")
        if not 0 < self.min_contrast_hu <= 500:
            raise ConfigError(f"ground-glass min_contrast_hu must be in (0, 500] HU, got {self.min_contrast_hu}")
        if not 0 < self.min_diameter_mm < self.max_diameter_mm <= 100:
            raise ConfigError(f"ground-glass diameters need 0 < min < max <= 100 mm, got "
                              f"{self.min_diameter_mm}, {self.max_diameter_mm}")
        if not 0 < self.min_parenchyma < 1:
            raise ConfigError(f"ground-glass min_parenchyma must be in (0, 1), got {self.min_parenchyma}")


@njit(cache=True, parallel=True, nogil=True)
def _parenchyma(hu, mask, dense):
    """(HU where parenchyma else 0, parenchyma indicator), float32, at 1 mm."""
    nz, ny, nx = hu.shape
    val = np.zeros(hu.shape, np.float32)
    ind = np.zeros(hu.shape, np.float32)
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                if mask[z, y, x] and not dense[z, y, x]:
                    val[z, y, x] = hu[z, y, x]
                    ind[z, y, x] = 1.0
    return val, ind


@njit(cache=True, nogil=True)
def _region_stats(lab, n, contrast):
    """Per region 1..n: block count, contrast sum, peak contrast and contrast-weighted z, y, x sums."""
    cnt = np.zeros(n + 1, np.int64)
    s = np.zeros(n + 1)
    peak = np.zeros(n + 1)
    cz = np.zeros(n + 1)
    cy = np.zeros(n + 1)
    cx = np.zeros(n + 1)
    nz, ny, nx = lab.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                k = lab[z, y, x]
                if k == 0:
                    continue
                c = contrast[z, y, x]
                cnt[k] += 1
                s[k] += c
                if c > peak[k]:
                    peak[k] = c
                cz[k] += c * z
                cy[k] += c * y
                cx[k] += c * x
    return cnt, s, peak, cz, cy, cx



@njit(cache=True, nogil=True)
def _local_maxima(contrast, keep, min_contrast):
    """(k, 3) int64 blocks of ``keep`` whose contrast is >= ``min_contrast`` and >= all 26
    neighbours' (the volume's outer layer of blocks is never one: ``keep`` lies inside an eroded
    mask)."""
    nz, ny, nx = contrast.shape
    out = []
    for z in range(1, nz - 1):
        for y in range(1, ny - 1):
            for x in range(1, nx - 1):
                c = contrast[z, y, x]
                if not keep[z, y, x] or c < min_contrast:
                    continue
                top = True
                for dz in range(-1, 2):
                    for dy in range(-1, 2):
                        for dx in range(-1, 2):
                            if contrast[z + dz, y + dy, x + dx] > c:
                                top = False
                if top:
                    out.append((z, y, x))
    res = np.empty((len(out), 3), np.int64)
    for i in range(len(out)):
        res[i, 0], res[i, 1], res[i, 2] = out[i]
    return res


@njit(cache=True, nogil=True)
def _peak_extents(contrast, keep, peaks, min_contrast, max_radius):
    """For each peak, its half-contrast set (module docstring, step 4): block count, weighted
    first moments (4: weight sum, z, y, x) and second moments (6: zz, yy, xx, zy, zx, yx), and
    whether the set holds a block of higher contrast than the peak. Weight = contrast - threshold
    + 1 HU; a flood fill (6-connected) bounded by a ball of ``max_radius`` blocks."""
    nz, ny, nx = contrast.shape
    n = len(peaks)
    stamp = np.full(contrast.shape, -1, np.int32)
    cnt = np.zeros(n, np.int64)
    m1 = np.zeros((n, 4))
    m2 = np.zeros((n, 6))
    higher = np.zeros(n, np.bool_)
    r = int(max_radius) + 1
    stack = np.empty(((2 * r + 1) ** 3, 3), np.int64)   # each block is pushed once: the ball bounds it
    for i in range(n):
        pz, py, px = peaks[i, 0], peaks[i, 1], peaks[i, 2]
        peak = contrast[pz, py, px]
        thr = max(min_contrast, 0.5 * peak)
        stack[0, 0], stack[0, 1], stack[0, 2] = pz, py, px
        stamp[pz, py, px] = i
        top = 1
        while top > 0:
            top -= 1
            z, y, x = stack[top, 0], stack[top, 1], stack[top, 2]
            c = contrast[z, y, x]
            if c > peak:
                higher[i] = True
            w = c - thr + 1.0
            cnt[i] += 1
            m1[i, 0] += w
            m1[i, 1] += w * z
            m1[i, 2] += w * y
            m1[i, 3] += w * x
            m2[i, 0] += w * z * z
            m2[i, 1] += w * y * y
            m2[i, 2] += w * x * x
            m2[i, 3] += w * z * y
            m2[i, 4] += w * z * x
            m2[i, 5] += w * y * x
            for d in range(6):
                zz = z + (d == 0) - (d == 1)
                yy = y + (d == 2) - (d == 3)
                xx = x + (d == 4) - (d == 5)
                if zz < 0 or yy < 0 or xx < 0 or zz >= nz or yy >= ny or xx >= nx:
                    continue
                if stamp[zz, yy, xx] == i or not keep[zz, yy, xx] or contrast[zz, yy, xx] < thr:
                    continue
                if (zz - pz) ** 2 + (yy - py) ** 2 + (xx - px) ** 2 > max_radius * max_radius:
                    continue
                stamp[zz, yy, xx] = i
                stack[top, 0], stack[top, 1], stack[top, 2] = zz, yy, xx
                top += 1
    return cnt, m1, m2, higher


def elongation(m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """sqrt(largest / smallest eigenvalue) of each weighted block set's covariance, from its
    moments (`_peak_extents`); a block's own extent (1/12 per axis) keeps a single block finite."""
    w = m1[:, 0]
    mu = m1[:, 1:] / w[:, None]
    sec = m2 / w[:, None]
    cov = np.empty((len(w), 3, 3))
    for a, (i, j) in enumerate(((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))):
        cov[:, i, j] = cov[:, j, i] = sec[:, a] - mu[:, i] * mu[:, j] + (1.0 / 12.0 if i == j else 0.0)
    ev = np.linalg.eigvalsh(cov)
    return np.sqrt(np.maximum(ev[:, 2], 1e-6) / np.maximum(ev[:, 0], 1e-6))


def _peak_candidates(contrast, keep, params: GroundGlassParams) -> Blobs:
    """``method="peaks"`` (module docstring, step 4)."""
    peaks = _local_maxima(contrast, keep, np.float32(params.min_contrast_hu))
    if not len(peaks):
        return Blobs(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    cnt, m1, m2, higher = _peak_extents(contrast, keep, peaks, np.float32(params.min_contrast_hu),
                                        params.max_diameter_mm / BLOCK_MM / 2.0)
    diameter = (6.0 * cnt * BLOCK_MM ** 3 / np.pi) ** (1.0 / 3.0)
    k = np.flatnonzero((diameter >= params.min_diameter_mm) & (diameter <= params.max_diameter_mm) & ~higher)
    if not len(k):
        return Blobs(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    centres = m1[k, 1:] / m1[k, :1] * BLOCK_MM + (BLOCK_MM - 1.0) / 2.0
    peak = contrast[peaks[k, 0], peaks[k, 1], peaks[k, 2]].astype(np.float64)
    score = peak * np.sqrt(diameter[k]) / elongation(m1[k], m2[k])
    order = np.argsort(-score, kind="stable")
    return Blobs(centres[order], (diameter[k] / 2.0)[order], score[order])


def ground_glass_regions(hu_1mm: np.ndarray, mask_1mm: np.ndarray,
                         params: GroundGlassParams = GroundGlassParams()) -> Blobs:
    """Ground-glass candidate regions of a 1 mm volume (module docstring).

    Args:
        hu_1mm: (z, y, x) HU, any numeric dtype, 1 mm isotropic.
        mask_1mm: bool lung mask of the same shape.
        params: `GroundGlassParams`.

    Returns:
        `engine.blobs.Blobs`: centres (n, 3) float64 voxels of the 1 mm grid, radius_mm (n,) (half
        the region's equivalent diameter), response (n,) the score, descending.
    """
    if hu_1mm.shape != mask_1mm.shape:
        raise ConfigError(f"hu and mask shapes differ: {hu_1mm.shape} vs {mask_1mm.shape}")
    empty = Blobs(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    if min(hu_1mm.shape) < 4:
        return empty
    hu = np.ascontiguousarray(hu_1mm)
    mask = np.ascontiguousarray(mask_1mm, dtype=np.bool_)
    dense = dilate(np.ascontiguousarray(hu >= params.dense_hu), (1, 1, 1))
    val, ind = _parenchyma(hu, mask, dense)
    v2, i2 = block_mean2(val), block_mean2(ind)
    s_lvl, s_bg = params.sigma_mm / BLOCK_MM, params.background_mm / BLOCK_MM
    w_lvl, w_bg = gaussian(i2, s_lvl), gaussian(i2, s_bg)
    level = gaussian(v2, s_lvl) / np.maximum(w_lvl, 1e-3)
    background = gaussian(v2, s_bg) / np.maximum(w_bg, 1e-3)
    contrast = (level - background).astype(np.float32)
    inside = erode(block_any2(mask), (1, 1, 1))
    measurable = inside & (w_lvl >= params.min_parenchyma) & (w_bg >= 0.2)
    if params.method == "peaks":
        return _peak_candidates(np.where(measurable, contrast, np.float32(-1e3)).astype(np.float32),
                                measurable, params)
    keep = measurable & (contrast >= params.min_contrast_hu)
    lab, n = label(keep)
    if n == 0:
        return empty
    cnt, total, peak, cz, cy, cx = _region_stats(lab, n, np.where(keep, contrast, 0).astype(np.float32))
    diameter = (6.0 * cnt * BLOCK_MM ** 3 / np.pi) ** (1.0 / 3.0)
    ok = (diameter >= params.min_diameter_mm) & (diameter <= params.max_diameter_mm)
    ok[0] = False
    k = np.flatnonzero(ok)
    if not len(k):
        return empty
    wsum = np.array([cz[k], cy[k], cx[k]]).T
    # a block's centre is 0.5 voxel into it on the 1 mm grid
    centres = wsum / total[k][:, None] * BLOCK_MM + (BLOCK_MM - 1.0) / 2.0
    score = peak[k] * np.sqrt(diameter[k])
    order = np.argsort(-score, kind="stable")
    return Blobs(centres[order].astype(np.float64), (diameter[k] / 2.0)[order], score[order].astype(np.float64))
