"""Multi-scale Hessian blob detector on the 1 mm lung box: nodule candidates for recall (stage 1).

The classic CAD candidate generator (the "dot" enhancement filter of Li, Sone & Doi 2003, in
the scale-normalised multi-scale form of Lindeberg): at each scale sigma the volume (HU clipped
to [-1000, 400]) is smoothed with a Gaussian, its Hessian taken by central differences, and the
eigenvalues sorted by magnitude |l1| >= |l2| >= |l3|. A bright ball makes all three negative and
alike; a vessel (a tube) has l3 ~ 0 and a wall (a plate) l2 ~ l3 ~ 0. The response

    R = sigma^2 * l3^2 / |l1|   where l1, l2, l3 < 0, else 0

is large for balls only and, scale-normalised, comparable across scales; a ball of radius r
answers most at sigma ~ r / sqrt(3). Peaks of R over space (26-neighbourhood) in the lung mask
are merged across scales and neighbours by the lesion's extent (`lesion_radius_mm`: how far the
intensity stays above halfway to its surroundings, the median over 26 directions; at least the
radius implied by the peak's scale), so a 25 mm mass is one candidate, not one per scale, per
lobule or per bump of its surface.

Scales above 2 mm run on a 2x2x2-averaged volume (the Gaussian is wide; a quarter of the work).
Everything is numba; no scipy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .errors import ConfigError
from .morphology import dilate

SQRT3 = float(np.sqrt(3.0))


@dataclass(frozen=True)
class BlobParams:
    """``sigmas_mm``: Gaussian scales (mm); ``min_response``: peaks below this are dropped (HU
    units of the normalised response); ``max_blobs``: at most this many, strongest first;
    ``merge_factor``: a peak within ``merge_factor`` x the larger of its scale radius and a stronger
    kept blob's extent is that lesion (1.2: the extent is measured at half contrast, and a
    lesion's partial-volume rim lies beyond it); ``hu_window``: HU clipped to this before filtering."""

    sigmas_mm: tuple[float, ...] = (1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0)
    min_response: float = 20.0
    max_blobs: int = 300
    merge_factor: float = 1.2
    hu_window: tuple[float, float] = (-1000.0, 400.0)

    def __post_init__(self) -> None:
        if not self.sigmas_mm or min(self.sigmas_mm) <= 0:
            raise ConfigError(f"sigmas_mm must be positive, got {self.sigmas_mm}")
        if self.max_blobs < 1:
            raise ConfigError(f"max_blobs must be >= 1, got {self.max_blobs}")
        if self.merge_factor <= 0:
            raise ConfigError(f"merge_factor must be > 0, got {self.merge_factor}")


@dataclass(frozen=True)
class Blobs:
    """``centres_zyx``: (n, 3) float64 voxel coordinates on the 1 mm grid; ``radius_mm`` (n,): the
    lesion's extent (`lesion_radius_mm`, at least the scale's sigma * sqrt(3)); ``response`` (n,)
    float64, descending."""

    centres_zyx: np.ndarray
    radius_mm: np.ndarray
    response: np.ndarray

    def __len__(self) -> int:
        return len(self.response)


@njit(cache=True, parallel=True, nogil=True)
def _window(hu, keep, lo, hi, above, fill, out):
    """out = min(max(v, lo), hi) in float32, where v is ``fill`` where ``hu`` > ``above`` or where
    ``keep`` (a bool volume, or an empty one: everywhere kept) is False, else ``hu``."""
    nz, ny, nx = hu.shape
    every = keep.size == 0
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                v = np.float32(hu[z, y, x])
                if v > above or not (every or keep[z, y, x]):
                    v = fill
                out[z, y, x] = min(max(v, lo), hi)


def window(hu: np.ndarray, lo: float = -np.inf, hi: float = np.inf, above: float = np.inf, fill: float = 0.0,
           keep: np.ndarray | None = None) -> np.ndarray:
    """A new float32 volume: ``hu`` with every value above ``above``, and every voxel where
    ``keep`` is False, set to ``fill``, then clipped to [``lo``, ``hi``] (numpy's
    ``np.clip(np.where(...), lo, hi)`` in float32, in one parallel pass)."""
    src = np.ascontiguousarray(hu)
    if keep is None:
        k = np.zeros((0, 0, 0), np.bool_)
    else:
        k = np.ascontiguousarray(keep, dtype=np.bool_)
        if k.shape != src.shape:
            raise ConfigError(f"keep must have the volume's shape {src.shape}, got {k.shape}")
    out = np.empty(src.shape, np.float32)
    f32 = np.float32
    _window(src, k, f32(lo), f32(hi), f32(above), f32(fill), out)
    return out


def _kernel(sigma: float) -> np.ndarray:
    h = max(int(np.ceil(3.0 * sigma)), 1)
    x = np.arange(-h, h + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


@njit(cache=True, parallel=True, nogil=True)
def _blur3(src, dst, k, first, want, chunk):
    """The separable blur with kernel ``k`` (edges replicated), the three 1-D passes fused plane by
    plane: for each z plane of ``dst``, the z pass into a plane buffer (the x rows (z, y) where
    ``first`` is True), the y pass of that into a second buffer and the x pass of that into ``dst``
    (the rows where ``want`` is True; the others set to 0). ``first`` must hold every row the y
    pass reads (``want`` grown by the kernel's half-width along y). ``src`` is only read, and must
    not be ``dst``. The planes are split between threads in runs of ``chunk`` (each run with its
    own two plane buffers, which stay in the core's cache): the volume is read from memory about
    once and written once, where three separate passes read and wrote it three times each.

    Each voxel's sum runs over the taps in order, in float32 (eight lanes per AVX2 vector against
    four for float64; within 3e-4 HU of a float64 sum on CT values), so the result does not
    depend on how the planes are split between threads, nor on which rows are computed; along z
    and y whole rows are accumulated at once (contiguous, vectorised), along x the interior tap by
    tap over the row and the clamped edges apart."""
    nz, ny, nx = src.shape
    h = (k.shape[0] - 1) // 2
    runs = (nz + chunk - 1) // chunk
    for c in prange(runs):
        zb = np.empty((ny, nx), np.float32)     # the z pass of plane z
        yb = np.empty((ny, nx), np.float32)     # then its y pass
        acc = np.empty(nx, np.float32)
        for z in range(c * chunk, min(nz, (c + 1) * chunk)):
            for y in range(ny):
                if not first[z, y]:
                    continue
                acc[:] = 0.0
                for t in range(-h, h + 1):
                    kt = k[t + h]
                    zz = min(max(z + t, 0), nz - 1)
                    for x in range(nx):
                        acc[x] += kt * src[zz, y, x]
                for x in range(nx):
                    zb[y, x] = acc[x]
            for y in range(ny):
                if not want[z, y]:
                    continue
                acc[:] = 0.0
                for t in range(-h, h + 1):
                    kt = k[t + h]
                    yy = min(max(y + t, 0), ny - 1)
                    for x in range(nx):
                        acc[x] += kt * zb[yy, x]
                for x in range(nx):
                    yb[y, x] = acc[x]
            for y in range(ny):
                if not want[z, y]:
                    for x in range(nx):
                        dst[z, y, x] = 0.0
                    continue
                acc[:] = 0.0
                # the interior, tap by tap over the row (vectorised), then the clamped edges
                row = yb[y]
                inner = acc[h:nx - h]
                for j in range(k.shape[0]):      # tap t = j - h
                    kt = k[j]
                    seg = row[j:j + inner.shape[0]]
                    for x in range(inner.shape[0]):
                        inner[x] += kt * seg[x]
                for x in range(0, min(h, nx)):
                    for t in range(-h, h + 1):
                        acc[x] += k[t + h] * row[min(max(x + t, 0), nx - 1)]
                for x in range(max(nx - h, h), nx):
                    for t in range(-h, h + 1):
                        acc[x] += k[t + h] * row[min(max(x + t, 0), nx - 1)]
                for x in range(nx):
                    dst[z, y, x] = acc[x]


def _grow_rows(rows: np.ndarray, rz: int, ry: int) -> np.ndarray:
    """A (z, y) row map grown by ``rz`` rows along z and ``ry`` along y (clipped): a box dilation."""
    return dilate(rows[None], (0, rz, ry))[0]


def gaussian(vol: np.ndarray, sigma: float, rows: np.ndarray | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
    """Separable Gaussian blur, sigma in voxels, edges replicated. float32 in and out; the input is
    read, never written. ``rows``: a bool (z, y) map of the x rows wanted (default all); the others
    come out 0, the wanted ones exactly as in the whole blur (the z pass computes the wanted rows
    grown by the kernel's half-width along y, the y and x passes the wanted rows). ``out``: a
    float32 C-contiguous array of the volume's shape to write into (not the input), else a new one."""
    k = _kernel(sigma)
    src = np.ascontiguousarray(vol, dtype=np.float32)
    if out is None:
        out = np.empty(src.shape, np.float32)
    elif out.shape != src.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ConfigError(f"out must be a C-contiguous float32 array of shape {src.shape}, got "
                          f"{out.dtype} {out.shape}")
    elif np.shares_memory(out, src):
        raise ConfigError("out must not share memory with the volume blurred")
    if rows is None:
        want = first = np.ones(src.shape[:2], np.bool_)
    else:
        want = np.ascontiguousarray(rows, dtype=np.bool_)
        if want.shape != src.shape[:2]:
            raise ConfigError(f"rows must be (z, y) = {src.shape[:2]}, got {want.shape}")
        first = _grow_rows(want, 0, (k.shape[0] - 1) // 2)
    _blur3(src, out, k, first, want, 4)
    return out


@njit(cache=True, inline="always")
def _eig_sym3(a, b, c, d, e, f):
    """Eigenvalues of [[a, d, e], [d, b, f], [e, f, c]] (closed form, trigonometric), largest first."""
    p1 = d * d + e * e + f * f
    q = (a + b + c) / 3.0
    if p1 < 1e-12:  # diagonal: the entries, sorted
        hi, lo = max(a, b, c), min(a, b, c)
        return hi, a + b + c - hi - lo, lo
    p2 = (a - q) ** 2 + (b - q) ** 2 + (c - q) ** 2 + 2.0 * p1
    p = np.sqrt(p2 / 6.0)
    ia, ib, ic = (a - q) / p, (b - q) / p, (c - q) / p
    id_, ie, if_ = d / p, e / p, f / p
    r = 0.5 * (ia * (ib * ic - if_ * if_) - id_ * (id_ * ic - if_ * ie) + ie * (id_ * if_ - ib * ie))
    r = min(max(r, -1.0), 1.0)
    phi = np.arccos(r) / 3.0
    e1 = q + 2.0 * p * np.cos(phi)
    e3 = q + 2.0 * p * np.cos(phi + 2.0943951023931953)
    return e1, 3.0 * q - e1 - e3, e3


def _dot_response(sm, mask, out, norm, floor, mask_rows=None):
    """`_dot_response_rows` with ``mask_rows`` (the (z, y) rows where ``mask`` has a voxel)
    computed when not given."""
    if mask_rows is None:
        mask_rows = np.ascontiguousarray(mask.any(axis=2))
    _dot_response_rows(sm, mask, mask_rows, out, float(norm), float(floor))


@njit(cache=True, parallel=True, nogil=True)
def _dot_response_rows(sm, mask, mask_rows, out, norm, floor):
    """out = norm * l3^2 / |l1| where all Hessian eigenvalues of ``sm`` are negative (|l1| largest),
    inside ``mask``; 0 elsewhere and on the border. Responses that cannot exceed ``floor`` are 0
    too (the peak search keeps only voxels above it, and a neighbour at or below it never outranks
    one): the response is at most norm * |trace| / 3, so where that is below ``floor`` (with a
    margin) the eigenvalues are not computed, nor where -H is not positive definite (Sylvester's
    criterion on the leading minors, no trigonometry), nor where the tighter bound
    norm * 3 |det|^(2/3) / |trace| (|l1|^3 <= |det|) is below it. Row by row, only the rows where
    ``mask_rows`` says the mask has a voxel (the others are set to 0): first, without branches (so
    vectorised), which voxels pass the mask, the three second derivatives' signs and the trace
    bound (most fail there), then the rest of the test and the eigenvalues for those alone."""
    nz, ny, nx = sm.shape
    lim = 2.997 * floor
    lim3 = (0.999 * floor) ** 3
    for z in prange(nz):
        cand = np.empty(nx, np.bool_)
        for y in range(ny):
            for x in range(nx):
                out[z, y, x] = 0.0
            if z == 0 or y == 0 or z == nz - 1 or y == ny - 1 or not mask_rows[z, y]:
                continue
            for x in range(1, nx - 1):
                c0 = sm[z, y, x]
                hzz = sm[z + 1, y, x] - 2.0 * c0 + sm[z - 1, y, x]
                hyy = sm[z, y + 1, x] - 2.0 * c0 + sm[z, y - 1, x]
                hxx = sm[z, y, x + 1] - 2.0 * c0 + sm[z, y, x - 1]
                # |l3| <= |trace| / 3 and l3^2 / |l1| <= |l3|: no response above the floor otherwise
                cand[x] = mask[z, y, x] & (hzz < 0.0) & (hyy < 0.0) & (hxx < 0.0) & (norm * -(hzz + hyy + hxx) >= lim)
            for x in range(1, nx - 1):
                if not cand[x]:
                    continue
                c0 = sm[z, y, x]
                hzz = sm[z + 1, y, x] - 2.0 * c0 + sm[z - 1, y, x]
                hyy = sm[z, y + 1, x] - 2.0 * c0 + sm[z, y - 1, x]
                hxx = sm[z, y, x + 1] - 2.0 * c0 + sm[z, y, x - 1]
                hzy = 0.25 * (sm[z + 1, y + 1, x] - sm[z + 1, y - 1, x] - sm[z - 1, y + 1, x] + sm[z - 1, y - 1, x])
                hzx = 0.25 * (sm[z + 1, y, x + 1] - sm[z + 1, y, x - 1] - sm[z - 1, y, x + 1] + sm[z - 1, y, x - 1])
                hyx = 0.25 * (sm[z, y + 1, x + 1] - sm[z, y + 1, x - 1] - sm[z, y - 1, x + 1] + sm[z, y - 1, x - 1])
                # -H positive definite (all eigenvalues negative): its 2x2 and 3x3 leading minors
                if hzz * hyy - hzy * hzy <= 0.0:
                    continue
                det = (hzz * (hyy * hxx - hyx * hyx) - hzy * (hzy * hxx - hyx * hzx)
                       + hzx * (hzy * hyx - hyy * hzx))
                if det >= 0.0:
                    continue
                # all three negative: |l1|^3 <= |det| and |l3| >= |trace| / 3, so the response is at
                # most norm * 3 |det|^(2/3) / |trace|; below the floor (with a margin), no eigenvalues
                tr = -(hzz + hyy + hxx)
                if 27.0 * norm * norm * norm * det * det < lim3 * tr * tr * tr:
                    continue
                e1, e2, e3 = _eig_sym3(hzz, hyy, hxx, hzy, hzx, hyx)
                if e1 >= 0.0:  # the largest eigenvalue: all negative iff it is
                    continue
                # magnitudes: |e3| >= |e2| >= |e1| since all are negative and e3 <= e2 <= e1
                out[z, y, x] = norm * e1 * e1 / (-e3)


@njit(cache=True, nogil=True, inline="always")
def _is_peak(r, z, y, x, v):
    for dz in range(-1, 2):
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                if r[z + dz, y + dy, x + dx] > v:
                    return False
    return True


def _peaks(r, min_value, rows=None):
    """`_peaks_rows` over every row, or over ``rows`` (a bool (z, y) map: the rows that can hold
    a value above ``min_value``; ignored when ``min_value`` < 0, where a row of zeros could)."""
    if rows is None or min_value < 0:
        rows = np.ones(r.shape[:2], np.bool_)
    return _peaks_rows(r, float(min_value), np.ascontiguousarray(rows, dtype=np.bool_))


@njit(cache=True, parallel=True, nogil=True)
def _peaks_rows(r, min_value, rows):
    """Voxels strictly above ``min_value`` that are >= each of their 26 neighbours (the border
    excluded) -> (n, 3) int64, (n,) float64, in (z, y, x) order, in the x rows where ``rows`` is
    True (the caller vouches that no other row has a value above ``min_value``). Planes are
    searched in parallel: counted first, then written at their offsets."""
    nz, ny, nx = r.shape
    count = np.zeros(nz, np.int64)
    for z in prange(1, nz - 1):
        c = 0
        for y in range(1, ny - 1):
            if not rows[z, y]:
                continue
            for x in range(1, nx - 1):
                v = r[z, y, x]
                if v > min_value and _is_peak(r, z, y, x, v):
                    c += 1
        count[z] = c
    start = np.zeros(nz + 1, np.int64)
    for z in range(nz):
        start[z + 1] = start[z] + count[z]
    n = start[nz]
    out = np.empty((n, 3), np.int64)
    val = np.empty(n, np.float64)
    for z in prange(1, nz - 1):
        i = start[z]
        if count[z] == 0:
            continue
        for y in range(1, ny - 1):
            if not rows[z, y]:
                continue
            for x in range(1, nx - 1):
                v = r[z, y, x]
                if v > min_value and _is_peak(r, z, y, x, v):
                    out[i, 0], out[i, 1], out[i, 2] = z, y, x
                    val[i] = v
                    i += 1
    return out, val


@njit(cache=True, nogil=True)
def block_mean2(a):
    """The mean of each 2x2x2 block (float32; a trailing odd plane dropped). Serial: a parallel
    version saves ~6 ms per call on 2 cores and costs ~1 s more to compile at a cold start."""
    nz, ny, nx = a.shape[0] // 2, a.shape[1] // 2, a.shape[2] // 2
    out = np.empty((nz, ny, nx), np.float32)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                s = 0.0
                for dz in range(2):
                    for dy in range(2):
                        for dx in range(2):
                            s += a[2 * z + dz, 2 * y + dy, 2 * x + dx]
                out[z, y, x] = s * 0.125
    return out


@njit(cache=True, nogil=True)
def block_any2(m):
    """Each 2x2x2 block of a bool mask -> True where any of it is (a trailing odd plane dropped)."""
    nz, ny, nx = m.shape[0] // 2, m.shape[1] // 2, m.shape[2] // 2
    out = np.zeros((nz, ny, nx), np.bool_)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                out[z, y, x] = (m[2 * z, 2 * y, 2 * x] or m[2 * z, 2 * y, 2 * x + 1] or m[2 * z, 2 * y + 1, 2 * x]
                                or m[2 * z, 2 * y + 1, 2 * x + 1] or m[2 * z + 1, 2 * y, 2 * x]
                                or m[2 * z + 1, 2 * y, 2 * x + 1] or m[2 * z + 1, 2 * y + 1, 2 * x]
                                or m[2 * z + 1, 2 * y + 1, 2 * x + 1])
    return out


def _directions() -> np.ndarray:
    d = np.array([(z, y, x) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1) if (z, y, x) != (0, 0, 0)],
                 dtype=np.float64)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


DIRECTIONS = _directions()


@njit(cache=True, nogil=True)
def _ray_radii(vol, centre, dirs, max_r, step):
    """Per direction, the distance (voxels) from ``centre`` at which ``vol`` (smoothed HU) first
    falls below halfway between the centre's value and the lowest value met on the ray."""
    nz, ny, nx = vol.shape
    n = int(max_r / step)
    out = np.empty(dirs.shape[0])
    cz, cy, cx = int(round(centre[0])), int(round(centre[1])), int(round(centre[2]))
    cz, cy, cx = min(max(cz, 0), nz - 1), min(max(cy, 0), ny - 1), min(max(cx, 0), nx - 1)
    v0 = vol[cz, cy, cx]
    for k in range(dirs.shape[0]):
        vals = np.empty(n)
        for i in range(n):
            t = (i + 1) * step
            z = min(max(int(round(centre[0] + t * dirs[k, 0])), 0), nz - 1)
            y = min(max(int(round(centre[1] + t * dirs[k, 1])), 0), ny - 1)
            x = min(max(int(round(centre[2] + t * dirs[k, 2])), 0), nx - 1)
            vals[i] = vol[z, y, x]
        thr = 0.5 * (v0 + vals.min())
        r = n * step
        for i in range(n):
            if vals[i] < thr:
                r = (i + 1) * step
                break
        out[k] = r
    return out


def lesion_radius_mm(vol_1mm: np.ndarray, centre_zyx, max_r_mm: float = 20.0) -> float:
    """The lesion's extent around a blob centre on a (lightly smoothed) 1 mm volume: the median
    over 26 directions of the distance at which the intensity falls halfway to the surrounding
    minimum. The median keeps a vessel or wall the lesion touches (a few directions) out of it."""
    r = _ray_radii(vol_1mm, np.asarray(centre_zyx, np.float64), DIRECTIONS, float(max_r_mm), 0.5)
    return float(np.median(r))


@njit(cache=True, nogil=True)
def _merge_greedy(centres, radius, order, factor, max_out, sm1, dirs, max_r, step):
    """`merge_by_extent`'s loop: blobs in ``order``; one within ``factor`` x max(its radius, a kept
    blob's extent) of a kept blob is dropped; a kept blob's extent is max(its radius, the median of
    `_ray_radii` on ``sm1``) when ``sm1`` has voxels, else its radius."""
    n = order.shape[0]
    kept = np.empty(n, np.int64)
    kc = np.empty((n, 3))
    kr = np.empty(n)
    m = 0
    for ii in range(n):
        i = order[ii]
        drop = False
        for j in range(m):
            dz = kc[j, 0] - centres[i, 0]
            dy = kc[j, 1] - centres[i, 1]
            dx = kc[j, 2] - centres[i, 2]
            if np.sqrt(dz * dz + dy * dy + dx * dx) < factor * max(kr[j], radius[i]):
                drop = True
                break
        if drop:
            continue
        kept[m] = i
        kc[m, 0], kc[m, 1], kc[m, 2] = centres[i, 0], centres[i, 1], centres[i, 2]
        kr[m] = radius[i]
        if sm1.size:
            kr[m] = max(radius[i], np.median(_ray_radii(sm1, centres[i], dirs, max_r, step)))
        m += 1
        if m >= max_out:
            break
    return kept[:m], kr[:m]


def merge_by_extent(centres: np.ndarray, radius: np.ndarray, response: np.ndarray, factor: float = 1.0,
                    max_out: int | None = None, extent_volume: np.ndarray | None = None):
    """Greedy: strongest first; a blob whose centre lies within ``factor`` x max(its radius, a kept
    blob's extent) of a kept blob is that blob (dropped). A kept blob's extent: max(its radius,
    `lesion_radius_mm` on ``extent_volume``), or its radius without one. One compiled loop (the
    extents measured only for the blobs kept). -> (indices kept, strongest first; their extents)."""
    order = np.argsort(-np.asarray(response), kind="stable").astype(np.int64)
    c = np.ascontiguousarray(centres, dtype=np.float64).reshape(-1, 3)
    r = np.ascontiguousarray(radius, dtype=np.float64)
    sm1 = np.zeros((0, 0, 0), np.float32) if extent_volume is None else \
        np.ascontiguousarray(extent_volume, dtype=np.float32)
    n = len(order) if max_out is None else int(max_out)
    return _merge_greedy(c, r, order, float(factor), n, sm1, DIRECTIONS, 20.0, 0.5)


def detect_blobs(hu_1mm: np.ndarray, mask_1mm: np.ndarray, params: BlobParams = BlobParams()) -> Blobs:
    """Blobs in the lung mask of a 1 mm volume.

    Args:
        hu_1mm: (z, y, x) HU (any numeric dtype) on a 1 mm isotropic grid.
        mask_1mm: bool, same shape: peaks outside it are ignored.
        params: `BlobParams`.

    Returns:
        `Blobs`, at most ``params.max_blobs``, strongest first, one per lesion.
    """
    if hu_1mm.shape != mask_1mm.shape:
        raise ConfigError(f"hu and mask shapes differ: {hu_1mm.shape} vs {mask_1mm.shape}")
    lo, hi = params.hu_window
    vol = window(hu_1mm, lo, hi)
    mask = np.ascontiguousarray(mask_1mm, dtype=np.bool_)
    # one grid (1 mm, then 2 mm for the wide scales) at a time: its volume, mask, wanted rows and
    # two work buffers (the blur, the response), reused from scale to scale (new arrays of a
    # volume's size cost their page faults each time); the 1 mm sigma-1 blur is kept whole apart
    grids: dict[float, tuple] = {}
    sm1 = None
    cs, rs, vs = [], [], []
    for sigma in sorted(params.sigmas_mm):
        step = 2.0 if sigma > 2.0 else 1.0  # a 2 mm grid is fine for a Gaussian this wide
        if step not in grids:
            grids.clear()  # the 1 mm buffers are done with once the scales reach the 2 mm grid
            v, m = (vol, mask) if step == 1.0 else (block_mean2(vol), block_any2(mask))
            # the response reads the blur at the mask's voxels and their 26 neighbours: only the
            # x rows next to a row of the mask are blurred (the others lie in the lung box's margin
            # or beside the lungs)
            mrows = np.ascontiguousarray(m.any(axis=2))
            grids[step] = (v, m, mrows, _grow_rows(mrows, 1, 1), np.empty(v.shape, np.float32),
                           np.empty(v.shape, np.float32))
        v, m, mrows, rows, buf, resp = grids[step]
        s_vox = sigma / step
        if step == 1.0 and sigma == 1.0:
            sm = sm1 = gaussian(v, s_vox)  # the extents' volume (below): the same blur, whole
        else:
            sm = gaussian(v, s_vox, rows=rows, out=buf)
        _dot_response(sm, m, resp, s_vox * s_vox, params.min_response, mrows)
        # the response is 0 outside the mask: rows without a mask voxel hold no peak
        pk, val = _peaks(resp, params.min_response, mrows)
        if len(pk):
            # a 2x2x2 block's centre is 0.5 voxel into it on the 1 mm grid
            cs.append(pk * step + (step - 1.0) / 2.0)
            rs.append(np.full(len(pk), sigma * SQRT3))
            vs.append(val)
    grids.clear()
    if not cs:
        return Blobs(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    c, r, v = np.concatenate(cs), np.concatenate(rs), np.concatenate(vs)
    if sm1 is None:
        sm1 = gaussian(vol, 1.0)
    keep, extent = merge_by_extent(c, r, v, params.merge_factor, params.max_blobs, extent_volume=sm1)
    return Blobs(c[keep].astype(np.float64), extent, v[keep].astype(np.float64))
