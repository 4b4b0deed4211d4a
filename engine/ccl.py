"""3-D connected-component labelling (numba, union-find), the lung mask's workhorse.

Two raster passes, as in the classic two-pass algorithm: the first unions each
foreground voxel with its already-visited face neighbours (6-connectivity: x-1, y-1,
z-1) in a union-find forest with path halving; the second maps roots to consecutive
labels. One sequential pass over the volume: memory-bound, and faster here than
skimage.measure.label / scipy.ndimage.label on the same mask (bench/preprocess.py).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def uf_find(parent, i):
    """Union-find: the root of ``i`` in ``parent`` (int array), halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, inline="always")
def uf_union(parent, a, b):
    """Union-find: join the sets of ``a`` and ``b`` (the smaller root becomes the parent)."""
    ra = uf_find(parent, a)
    rb = uf_find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@njit(cache=True)
def _label6(mask):
    nz, ny, nx = mask.shape
    labels = np.zeros(mask.shape, dtype=np.int32)
    parent = np.zeros(1024, dtype=np.int32)
    nxt = 1
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if not mask[z, y, x]:
                    continue
                a = labels[z, y, x - 1] if x > 0 else 0
                b = labels[z, y - 1, x] if y > 0 else 0
                c = labels[z - 1, y, x] if z > 0 else 0
                m = 0
                for v in (a, b, c):
                    if v > 0 and (m == 0 or v < m):
                        m = v
                if m == 0:
                    if nxt >= parent.shape[0]:
                        grown = np.empty(parent.shape[0] * 2, dtype=np.int32)
                        grown[: parent.shape[0]] = parent
                        parent = grown
                    parent[nxt] = nxt
                    labels[z, y, x] = nxt
                    nxt += 1
                else:
                    labels[z, y, x] = m
                    for v in (a, b, c):
                        if v > 0 and v != m:
                            uf_union(parent, m, v)
    # flatten to consecutive labels 1..n
    remap = np.zeros(nxt, dtype=np.int32)
    n = 0
    for i in range(1, nxt):
        r = uf_find(parent, i)
        if r == i:
            n += 1
            remap[i] = n
    for i in range(1, nxt):
        remap[i] = remap[uf_find(parent, i)]
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if labels[z, y, x] > 0:
                    labels[z, y, x] = remap[labels[z, y, x]]
    return labels, n


@njit(cache=True)
def _stats(labels, n):
    """Per label: voxel count, whether it touches the y/x faces (in-plane border), and its
    bounding box (z0, z1, y0, y1, x0, x1), half-open; one pass."""
    nz, ny, nx = labels.shape
    sizes = np.zeros(n + 1, dtype=np.int64)
    border = np.zeros(n + 1, dtype=np.bool_)
    boxes = np.empty((n + 1, 6), dtype=np.int64)
    boxes[:, 0::2] = np.iinfo(np.int64).max
    boxes[:, 1::2] = -1
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                v = labels[z, y, x]
                if v > 0:
                    sizes[v] += 1
                    if y == 0 or x == 0 or y == ny - 1 or x == nx - 1:
                        border[v] = True
                    b = boxes[v]
                    if z < b[0]:
                        b[0] = z
                    if z >= b[1]:
                        b[1] = z + 1
                    if y < b[2]:
                        b[2] = y
                    if y >= b[3]:
                        b[3] = y + 1
                    if x < b[4]:
                        b[4] = x
                    if x >= b[5]:
                        b[5] = x + 1
    return sizes, border, boxes


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 6-connected components of a boolean (z, y, x) mask.

    Returns (labels int32 (z, y, x) with 0 = background and 1..n the components in
    raster order of their first voxel, n).
    """
    return _label6(np.ascontiguousarray(mask, dtype=np.bool_))


def component_stats(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sizes int64 (n+1,), touches_inplane_border bool (n+1,)); index 0 is background."""
    sizes, border, _ = _stats(labels, n)
    return sizes, border


def component_boxes(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`component_stats` plus each component's bounding box, int64 (n+1, 6) rows (z0, z1, y0, y1, x0, x1),
    half-open voxel indices (row 0, the background, is meaningless); the same single pass."""
    return _stats(labels, n)


# --- run-length labelling: components of (values < threshold) without a label image ----------
#
# The lung mask's first labelling only needs, per component, its size, whether it touches the
# in-plane border and its bounding box, and then the voxels of a few chosen components. Air
# comes in long x runs (the air around the patient, the lungs), so labelling the runs instead
# of the voxels does a union-find operation per run, not per voxel, and never writes an int32
# image: one read of the values, then work proportional to the number of runs.


@njit(cache=True, parallel=True)
def _count_runs(values, thr):
    nz, ny, nx = values.shape
    counts = np.zeros(nz * ny, dtype=np.int64)
    for z in prange(nz):
        for y in range(ny):
            src = values[z, y]
            c = np.int64(src[0] < thr)
            for x in range(1, nx):  # starts of runs, without branches (vectorised)
                c += (src[x] < thr) & (src[x - 1] >= thr)
            counts[z * ny + y] = c
    return counts


@njit(cache=True, parallel=True)
def _fill_runs(values, thr, row_start, starts, ends):
    nz, ny, nx = values.shape
    for z in prange(nz):
        for y in range(ny):
            k = row_start[z * ny + y]
            src = values[z, y]
            inside = False
            for x in range(nx):
                b = src[x] < thr
                if b != inside:  # one well-predicted branch per voxel: runs are long
                    if b:
                        starts[k] = x
                    else:
                        ends[k] = x
                        k += 1
                    inside = b
            if inside:
                ends[k] = nx


@njit(cache=True)
def _union_runs(row_start, starts, ends, nz, ny):
    n = starts.shape[0]
    parent = np.arange(n, dtype=np.int64)
    for z in range(nz):
        for y in range(ny):
            r = z * ny + y
            a0, a1 = row_start[r], row_start[r + 1]
            for prev in (r - 1 if y > 0 else -1, r - ny if z > 0 else -1):
                if prev < 0:
                    continue
                i, j = a0, row_start[prev]
                j1 = row_start[prev + 1]
                while i < a1 and j < j1:  # sweep two sorted run lists; overlap = 6-connected
                    if starts[i] < ends[j] and starts[j] < ends[i]:
                        uf_union(parent, i, j)
                    if ends[i] < ends[j]:
                        i += 1
                    else:
                        j += 1
    return parent


@njit(cache=True)
def _run_components(row_start, starts, ends, parent, nz, ny, nx):
    n = starts.shape[0]
    comp = np.zeros(n, dtype=np.int64)
    ncomp = 0
    for i in range(n):  # roots are the smallest run index of their component: raster order
        if uf_find(parent, i) == i:
            ncomp += 1
            comp[i] = ncomp
    sizes = np.zeros(ncomp + 1, dtype=np.int64)
    border = np.zeros(ncomp + 1, dtype=np.bool_)
    boxes = np.empty((ncomp + 1, 6), dtype=np.int64)
    boxes[:, 0::2] = np.iinfo(np.int64).max
    boxes[:, 1::2] = -1
    for z in range(nz):
        for y in range(ny):
            r = z * ny + y
            for i in range(row_start[r], row_start[r + 1]):
                c = comp[uf_find(parent, i)]
                comp[i] = c
                sizes[c] += ends[i] - starts[i]
                if y == 0 or y == ny - 1 or starts[i] == 0 or ends[i] == nx:
                    border[c] = True
                b = boxes[c]
                b[0] = min(b[0], z)
                b[1] = max(b[1], z + 1)
                b[2] = min(b[2], y)
                b[3] = max(b[3], y + 1)
                b[4] = min(b[4], starts[i])
                b[5] = max(b[5], ends[i])
    return comp, ncomp, sizes, border, boxes


@njit(cache=True, parallel=True)
def _paint_runs(row_start, starts, ends, comp, keep, ny, z0, y0, x0, out):
    oz, oy, ox = out.shape
    for k in prange(oz):
        for j in range(oy):
            r = (z0 + k) * ny + y0 + j
            for i in range(row_start[r], row_start[r + 1]):
                if keep[comp[i]]:
                    for x in range(max(starts[i] - x0, 0), min(ends[i] - x0, ox)):
                        out[k, j, x] = True


@njit(cache=True, parallel=True)
def _count_in_blocks(row_start, starts, ends, comp, group, shape, factors, box, out):
    """Per block of ``box``: the voxels of the runs of each group (``group[comp]``, 1..G) into
    ``out[group - 1]``. A run's whole blocks go through a difference array per block row, so a long
    run costs its two ends, not its length."""
    nz, ny, nx = shape
    fz, fy, fx = factors
    k0, k1, j0, j1, i0, i1 = box
    ng = out.shape[0]
    xa, xb = i0 * fx, min(i1 * fx, nx)
    nb = i1 - i0
    for kk in prange(k1 - k0):
        diff = np.zeros((ng, nb + 1), dtype=np.int32)
        for jj in range(j1 - j0):
            diff[:] = 0
            for z in range((k0 + kk) * fz, min((k0 + kk) * fz + fz, nz)):
                for y in range((j0 + jj) * fy, min((j0 + jj) * fy + fy, ny)):
                    r = z * ny + y
                    for q in range(row_start[r], row_start[r + 1]):
                        g = group[comp[q]]
                        if g == 0:
                            continue
                        x, e = max(starts[q], xa), min(ends[q], xb)
                        if x >= e:
                            continue
                        a, b = (x - xa) // fx, (e - 1 - xa) // fx  # first and last block it touches
                        if a == b:
                            out[g - 1, kk, jj, a] += e - x
                            continue
                        out[g - 1, kk, jj, a] += (a + 1) * fx + xa - x
                        out[g - 1, kk, jj, b] += e - (b * fx + xa)
                        if b > a + 1:  # whole blocks a + 1 .. b - 1
                            diff[g - 1, a + 1] += fx
                            diff[g - 1, b] -= fx
            for g in range(ng):
                acc = 0
                for i in range(nb):
                    acc += diff[g, i]
                    out[g, kk, jj, i] += acc


class RunComponents:
    """6-connected components of ``values < threshold`` in a (z, y, x) array, labelled as x runs.

    Attributes: ``n`` components (numbered 1..n in raster order of their first voxel, as
    `label` numbers them); ``sizes`` int64 (n+1,), ``border`` bool (n+1,) (touches the in-plane
    faces), ``boxes`` int64 (n+1, 6) half-open (z0, z1, y0, y1, x0, x1); index 0 is background.
    """

    def __init__(self, values: np.ndarray, threshold: float):
        values = np.ascontiguousarray(values)
        if values.dtype == np.int16 and -32768 < threshold <= 32767:
            # int16 ``v < threshold`` is ``v < ceil(threshold)``: compared in the scan's own lanes
            threshold = np.int16(math.ceil(threshold))
        nz, ny, nx = self.shape = values.shape
        counts = _count_runs(values, threshold)
        self._row_start = np.zeros(nz * ny + 1, dtype=np.int64)
        np.cumsum(counts, out=self._row_start[1:])
        m = int(self._row_start[-1])
        self._starts = np.empty(m, dtype=np.int64)
        self._ends = np.empty(m, dtype=np.int64)
        _fill_runs(values, threshold, self._row_start, self._starts, self._ends)
        parent = _union_runs(self._row_start, self._starts, self._ends, nz, ny)
        self._comp, self.n, self.sizes, self.border, self.boxes = _run_components(
            self._row_start, self._starts, self._ends, parent, nz, ny, nx)

    def block_counts(self, group, factors_zyx, box) -> np.ndarray:
        """int32 (G, box shape): per block of f_z x f_y x f_x voxels (the grid of
        `engine.morphology.block_mean`) over ``box`` = (k0, k1, j0, j1, i0, i1) in block indices, how
        many of its voxels belong to the components of each group; ``group``: int (n + 1,), each
        component's group 1..G (0: none)."""
        group = np.ascontiguousarray(group, dtype=np.int64)
        box = tuple(int(v) for v in box)
        out = np.zeros((max(int(group.max()), 1), box[1] - box[0], box[3] - box[2], box[5] - box[4]), dtype=np.int32)
        _count_in_blocks(self._row_start, self._starts, self._ends, self._comp, group, self.shape,
                         tuple(int(f) for f in factors_zyx), box, out)
        return out

    def component_at(self, z, y, x) -> np.ndarray:
        """int64 ids of the components holding voxels (z, y, x) (int arrays of one shape; 0: none)."""
        z, y, x = (np.asarray(v, dtype=np.int64).ravel() for v in (z, y, x))
        out = np.zeros(z.shape, dtype=np.int64)
        for t in range(z.size):
            r = int(z[t]) * self.shape[1] + int(y[t])
            lo, hi = int(self._row_start[r]), int(self._row_start[r + 1])
            q = lo + int(np.searchsorted(self._ends[lo:hi], x[t], side="right"))
            if q < hi and self._starts[q] <= x[t]:
                out[t] = self._comp[q]
        return out

    def mask(self, keep, box=None) -> np.ndarray:
        """Bool mask of the components in ``keep`` (ids), over ``box`` = (z0, z1, y0, y1, x0, x1)
        (default: the whole array)."""
        nz, ny, nx = self.shape
        z0, z1, y0, y1, x0, x1 = box if box is not None else (0, nz, 0, ny, 0, nx)
        lut = np.zeros(self.n + 1, dtype=np.bool_)
        lut[np.asarray(keep, dtype=np.int64)] = True
        out = np.zeros((z1 - z0, y1 - y0, x1 - x0), dtype=np.bool_)
        _paint_runs(self._row_start, self._starts, self._ends, self._comp, lut, ny, z0, y0, x0, out)
        return out
