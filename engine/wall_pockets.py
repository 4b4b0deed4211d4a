"""Juxta-pleural lesions for the lung mask (numba): the lungs' convex hull per axial slice.

A solid nodule on the chest wall has the wall's density: the air threshold cuts it out of the lung
and leaves an indentation (a pocket) in the lung's outline, and the part of the nodule buried in
the wall's position is not seen at all. Per axial slice, the pockets between the lungs' common
convex hull and the lungs are found (as x spans, union-find); those of a lesion's size (the space
between the lungs, the heart's and the hilum's impressions are far larger, lie beside both lungs
or open towards the midline) are filled, and the circle that the pocket's outline gives (the
lesion's cross-section) is taken as a ball's equator and added where it is soft tissue: the
buried part of a juxta-pleural nodule comes back with it. Across slices a lesion's pockets must
stack like a ball (as tall as wide, no taller than a lesion): the liver's dome under a lung's base
and a rib's impression do not. `engine.lungmask` runs it (step 6) on its coarse grid or on the
scan's voxels.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .ccl import RunComponents, uf_find, uf_union

BONE_HU = 300.0  # the lesions' balls stop at bone (a rib beside a juxta-pleural lesion)


@njit(cache=True)
def _hull_rows(m, hl, hr):
    """The convex hull of the True pixels of the 2-D bool ``m`` (pixel centres), as a span
    [hl[y], hr[y]] per row (int64 arrays of m's rows; empty rows get hl > hr). Returns the hull's
    first and last rows (-1, -2 if ``m`` is empty). The hull's left edge is the lower convex
    envelope of each row's leftmost pixel, its right edge the upper concave envelope of the
    rightmost: Andrew's monotone chain on two points per row."""
    ny, nx = m.shape
    ly = np.empty(ny, dtype=np.int64)
    lx = np.empty(ny, dtype=np.int64)
    ry = np.empty(ny, dtype=np.int64)
    rx = np.empty(ny, dtype=np.int64)
    nl = nr = 0
    y0, y1 = -1, -2
    for y in range(ny):
        hl[y], hr[y] = 1, 0
        a, b = -1, -1
        for x in range(nx):
            if m[y, x]:
                if a < 0:
                    a = x
                b = x
        if a < 0:
            continue
        if y0 < 0:
            y0 = y
        y1 = y
        # lower convex envelope of (y, a): pop while the last turn is not counter-clockwise
        while nl >= 2 and ((ly[nl - 1] - ly[nl - 2]) * (a - lx[nl - 2])
                           - (lx[nl - 1] - lx[nl - 2]) * (y - ly[nl - 2])) <= 0:
            nl -= 1
        ly[nl], lx[nl] = y, a
        nl += 1
        while nr >= 2 and ((ry[nr - 1] - ry[nr - 2]) * (b - rx[nr - 2])
                           - (rx[nr - 1] - rx[nr - 2]) * (y - ry[nr - 2])) >= 0:
            nr -= 1
        ry[nr], rx[nr] = y, b
        nr += 1
    if y0 < 0:
        return y0, y1
    s = 0
    for y in range(y0, y1 + 1):
        while s < nl - 1 and ly[s + 1] < y:
            s += 1
        if s == nl - 1:
            xl = float(lx[s])
        else:
            xl = lx[s] + (lx[s + 1] - lx[s]) * (y - ly[s]) / (ly[s + 1] - ly[s])
        hl[y] = int(math.ceil(xl - 1e-9))
    s = 0
    for y in range(y0, y1 + 1):
        while s < nr - 1 and ry[s + 1] < y:
            s += 1
        if s == nr - 1:
            xr = float(rx[s])
        else:
            xr = rx[s] + (rx[s + 1] - rx[s]) * (y - ry[s]) / (ry[s + 1] - ry[s])
        hr[y] = int(math.floor(xr + 1e-9))
    return y0, y1


@njit(cache=True, parallel=True)
def _convex_hull_2d(mask, out):
    nz, ny, nx = mask.shape
    for z in prange(nz):
        hl = np.empty(ny, dtype=np.int64)
        hr = np.empty(ny, dtype=np.int64)
        y0, y1 = _hull_rows(mask[z], hl, hr)
        for y in range(max(y0, 0), y1 + 1):
            for x in range(hl[y], hr[y] + 1):
                out[z, y, x] = True


def convex_hull_2d(mask: np.ndarray) -> np.ndarray:
    """Bool (z, y, x): per axial slice, the convex hull of the slice's True pixels (their centres;
    skimage.morphology.convex_hull_image with ``offset_coordinates=False``)."""
    mask = np.ascontiguousarray(mask, dtype=np.bool_)
    out = np.zeros(mask.shape, dtype=np.bool_)
    _convex_hull_2d(mask, out)
    return out


@njit(cache=True)
def _outside_hull(y, x, y0, y1, hl, hr):
    return y < y0 or y > y1 or x < hl[y] or x > hr[y]


@njit(cache=True)
def _pocket(m, sy, sx, mid_x, pix, n, y0, y1, hl, hr, max_w, max_r, out2, circles):
    """One pocket (``pix[:n]``, flat pixel indices of the slice) of a lesion's area: filled into
    ``out2`` if its mouth (the pixels on the hull's edge) is at most ``max_w`` mm wide and it does
    not open towards the body's midline ``mid_x`` (mm; the heart's and the hilum's impressions of a
    lung alone in its slice). The lesion's circles (y, x, radius in mm; radius 0: none), at most
    ``max_r`` mm: ``circles[0:3]`` the circle through the pocket's deepest point and the two
    farthest points of its edge on the lung at half that depth or more; ``circles[3:6]`` the disk
    on the mouth, for pockets as deep as a quarter of their width."""
    ny, nx = m.shape
    mouth = np.empty(n, dtype=np.int64)
    nm = 0
    for t in range(n):
        y, x = pix[t] // nx, pix[t] % nx
        if (_outside_hull(y - 1, x, y0, y1, hl, hr) or _outside_hull(y + 1, x, y0, y1, hl, hr)
                or _outside_hull(y, x - 1, y0, y1, hl, hr) or _outside_hull(y, x + 1, y0, y1, hl, hr)):
            mouth[nm] = pix[t]
            nm += 1
    best, ia, ib = 0.0, -1, -1
    for a in range(nm):
        ya, xa = (mouth[a] // nx) * sy, (mouth[a] % nx) * sx
        for b in range(a + 1, nm):
            d = (ya - (mouth[b] // nx) * sy) ** 2 + (xa - (mouth[b] % nx) * sx) ** 2
            if d > best:
                best, ia, ib = d, a, b
    w = math.sqrt(best)
    if w > max_w:
        return
    if ia < 0:  # a pixel or a row of pixels: nothing to measure
        for t in range(n):
            out2[pix[t] // nx, pix[t] % nx] = True
        return
    ay, ax = (mouth[ia] // nx) * sy, (mouth[ia] % nx) * sx
    by, bx = (mouth[ib] // nx) * sy, (mouth[ib] % nx) * sx
    ey, ex = (by - ay) / w, (bx - ax) / w  # the mouth's direction
    depth = np.empty(n)
    h, iq = 0.0, 0
    for t in range(n):
        depth[t] = abs(ex * ((pix[t] // nx) * sy - ay) - ey * ((pix[t] % nx) * sx - ax))
        if depth[t] > h:
            h, iq = depth[t], t
    qy, qx = (pix[iq] // nx) * sy, (pix[iq] % nx) * sx
    oy, ox = ex, -ey  # the mouth's normal, from the deepest point out through the mouth
    if oy * (ay - qy) + ox * (ax - qx) < 0:
        oy, ox = -oy, -ox
    if h > 0.0:
        towards = 1.0 if mid_x > 0.5 * (ax + bx) else -1.0
        if ox * towards > 0.7:
            return
    for t in range(n):
        out2[pix[t] // nx, pix[t] % nx] = True
    if h < max(sy, sx):
        return
    half = 0.25 * (sy + sx)
    # the chord's ball: a lesion half in the wall is the disk on the mouth; pockets as deep as a
    # lesion's cap (not a rib's shallow impression), a few pixels across, get it whatever their outline
    if h + half >= 0.25 * (w + 2 * half) and 0.5 * w + 2 * half <= max_r:
        circles[3], circles[4], circles[5] = 0.5 * (ay + by), 0.5 * (ax + bx), 0.5 * w + 2 * half
    # the lesion's outline: the pocket's edge on the lung from the deepest point to half its depth on
    # either side (a shallow impression beside it, of a rib or a vessel, stays out of the circle)
    lo, hi, ly, lx, ry, rx = 0.0, 0.0, qy, qx, qy, qx
    for t in range(n):
        if 2.0 * depth[t] < h:
            continue
        py, px = pix[t] // nx, pix[t] % nx
        if not ((py > 0 and m[py - 1, px]) or (py < ny - 1 and m[py + 1, px])
                or (px > 0 and m[py, px - 1]) or (px < nx - 1 and m[py, px + 1])):
            continue
        along = ey * (py * sy - qy) + ex * (px * sx - qx)
        if along < lo:
            lo, ly, lx = along, py * sy, px * sx
        elif along > hi:
            hi, ry, rx = along, py * sy, px * sx
    if lo < 0.0 and hi > 0.0:
        ay, ax, by, bx = ly, lx, ry, rx
    # else (a pocket a few pixels deep): the circle through the mouth's ends and the deepest point.
    # Pixel centres lie half a pixel inside the outline: move the three points out by that much
    # (the deepest away from the mouth, the two ends apart along it), or a lesion a few pixels wide
    # comes out a pixel too small.
    qy, qx = qy - half * oy, qx - half * ox
    ay, ax, by, bx = ay - half * ey, ax - half * ex, by + half * ey, bx + half * ex
    den = 2.0 * (ax * (by - qy) + bx * (qy - ay) + qx * (ay - by))
    if abs(den) < 1e-9:
        return
    a2, b2, q2 = ax * ax + ay * ay, bx * bx + by * by, qx * qx + qy * qy
    ux = (a2 * (by - qy) + b2 * (qy - ay) + q2 * (ay - by)) / den
    uy = (a2 * (qx - bx) + b2 * (ax - qx) + q2 * (bx - ax)) / den
    rad = math.sqrt((ux - ax) ** 2 + (uy - ay) ** 2) + half
    if rad <= max_r:
        circles[0], circles[1], circles[2] = uy, ux, rad


@njit(cache=True, parallel=True)
def _wall_pockets(mask, ids, sy, sx, mid_x, max_area, max_w, max_r, out, circles, ncircles):
    """Per slice: the pockets of a lesion's size into ``out``, the lesions' circles (y, x, radius mm,
    flat index of a pixel of their pocket) into ``circles[z, :ncircles[z]]``. A pocket beside pixels
    of two different lungs (``ids``, 0 = not told) is the space between them, whatever its size, and
    is left alone. The pockets are labelled as x spans (union-find over the spans that overlap in
    the next row): the space between the lungs, a large pocket in every slice, costs its spans only."""
    nz, ny, nx = mask.shape
    kmax = circles.shape[1]
    max_px = int(max_area / (sy * sx))
    for z in prange(nz):
        m = mask[z]
        hl = np.empty(ny, dtype=np.int64)
        hr = np.empty(ny, dtype=np.int64)
        y0, y1 = _hull_rows(m, hl, hr)
        if y0 < 0:
            continue
        # spans of non-lung pixels inside the hull, row by row
        cap = (y1 - y0 + 1) * (nx // 2 + 2)
        row0 = np.zeros(y1 - y0 + 2, dtype=np.int64)
        sp0 = np.empty(cap, dtype=np.int64)
        sp1 = np.empty(cap, dtype=np.int64)
        ns = 0
        for y in range(y0, y1 + 1):
            inside = False
            for x in range(hl[y], hr[y] + 1):
                if not m[y, x]:
                    if not inside:
                        sp0[ns] = x
                        inside = True
                elif inside:
                    sp1[ns] = x
                    ns += 1
                    inside = False
            if inside:
                sp1[ns] = hr[y] + 1
                ns += 1
            row0[y - y0 + 1] = ns
        parent = np.arange(ns)
        for r in range(1, y1 - y0 + 1):
            i, i1 = row0[r], row0[r + 1]
            j, j1 = row0[r - 1], row0[r]
            while i < i1 and j < j1:
                if sp0[i] < sp1[j] and sp0[j] < sp1[i]:
                    uf_union(parent, i, j)
                if sp1[i] < sp1[j]:
                    i += 1
                else:
                    j += 1
        area = np.zeros(ns, dtype=np.int64)
        for i in range(ns):
            area[uf_find(parent, i)] += sp1[i] - sp0[i]
        found = np.zeros(6)
        for root in range(ns):
            if parent[root] != root or area[root] > max_px:
                continue
            n = area[root]
            pix = np.empty(n, dtype=np.int64)
            t = 0
            side, between = 0, False
            for r in range(y1 - y0 + 1):
                for i in range(row0[r], row0[r + 1]):
                    if uf_find(parent, i) != root:
                        continue
                    y = y0 + r
                    for x in range(sp0[i], sp1[i]):
                        pix[t] = y * nx + x
                        t += 1
                        for qy, qx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                            if not _outside_hull(qy, qx, y0, y1, hl, hr) and m[qy, qx]:
                                lid = ids[z, qy, qx]
                                if lid != 0:
                                    if side == 0:
                                        side = lid
                                    elif lid != side:
                                        between = True
            if between:
                continue
            found[:] = 0.0
            _pocket(m, sy, sx, mid_x, pix, n, y0, y1, hl, hr, max_w, max_r, out[z], found)
            for c in (0, 3):
                if found[c + 2] > 0.0 and ncircles[z] < kmax:
                    circles[z, ncircles[z], :3] = found[c:c + 3]
                    circles[z, ncircles[z], 3] = pix[0]  # the pocket, by one of its pixels
                    ncircles[z] += 1


@njit(cache=True, parallel=True)
def _paint_balls(mask, vals, thr, sz, sy, sx, circles, ncircles, out):
    """Each circle as the equator of a ball, painted where the voxel is lung or soft tissue (from
    ``thr`` up to `BONE_HU`: never other air, and never a rib beside the lesion)."""
    nz, ny, nx = mask.shape
    for z in prange(nz):
        for zc in range(nz):
            for k in range(ncircles[zc]):
                uy, ux, rad = circles[zc, k, 0], circles[zc, k, 1], circles[zc, k, 2]
                dz = (z - zc) * sz
                if rad <= 0.0 or abs(dz) > rad:
                    continue
                r = math.sqrt(rad * rad - dz * dz)
                for y in range(max(int(math.floor((uy - r) / sy)), 0), min(int(math.ceil((uy + r) / sy)), ny - 1) + 1):
                    dy = y * sy - uy
                    for x in range(max(int(math.floor((ux - r) / sx)), 0),
                                   min(int(math.ceil((ux + r) / sx)), nx - 1) + 1):
                        dx = x * sx - ux
                        if dx * dx + dy * dy <= r * r and (mask[z, y, x] or thr <= vals[z, y, x] < BONE_HU):
                            out[z, y, x] = True


def fill_wall_pockets(mask: np.ndarray, values: np.ndarray, threshold_hu: float, spacing_zyx_mm, lesion_mm: float,
                      lung_ids: np.ndarray | None = None, midline_x: float | None = None) -> np.ndarray:
    """The lung mask with juxta-pleural lesions up to ``lesion_mm`` across taken in (module docstring).

    ``mask``: bool (z, y, x), the lungs with their holes filled; ``values``: HU (z, y, x) on the same
    grid of spacing ``spacing_zyx_mm`` (the scan's voxels or block means), for the lesions never to
    take in air outside the lung (the air around the body, the field-of-view padding) nor bone.

    Per slice, a pocket is a lesion's when its area is at most 1.25 x a disk of ``lesion_mm``, its
    mouth at most 1.25 x ``lesion_mm`` wide, it lies beside one lung only (``lung_ids``: uint8
    (z, y, x), 1 or 2 for the lung each voxel of ``mask`` belongs to, 0 = not told: a pocket beside
    both is the mediastinum, however narrow a small patient's is) and it does not open towards the
    body's midline (``midline_x``, an x index of ``mask``; default its middle column, where a scan
    centres the patient: a lung's mediastinal side). Across slices, the pockets of one lesion must
    span at most ``lesion_mm`` + one slice along z, hold at most the volume of a ball 1.2 x
    ``lesion_mm`` across, and be about as tall as they are wide (at most 1.5 x as wide): the liver's
    dome under a lung's base makes pockets of a lesion's width over many slices, or a few slices
    thin and long in plane, as a rib does. A lesion's circle in a slice (radius at most 0.6 x
    ``lesion_mm``) is then a ball's equator, so that the slices near its poles, where little of it
    shows beside the lung, are covered too; its pocket's stack must fit within that ball's height.
    Returns a new bool array.
    """
    sz, sy, sx = (float(s) for s in spacing_zyx_mm)
    mask = np.ascontiguousarray(mask, dtype=np.bool_)
    if lesion_mm <= 0:
        return mask.copy()
    nz, ny, nx = mask.shape
    circles = np.zeros((nz, 64, 4))
    ncircles = np.zeros(nz, dtype=np.int64)
    ids = (np.zeros(mask.shape, dtype=np.uint8) if lung_ids is None
           else np.ascontiguousarray(lung_ids, dtype=np.uint8))
    mid = (nx - 1) / 2 if midline_x is None else float(midline_x)
    pockets = np.zeros(mask.shape, dtype=np.bool_)
    _wall_pockets(mask, ids, sy, sx, mid * sx, 1.25 * math.pi * (lesion_mm / 2) ** 2, 1.25 * lesion_mm,
                  0.6 * lesion_mm, pockets, circles, ncircles)
    out = mask.copy()
    # one lesion's pockets across slices: as tall, as big and about as wide as a lesion, no more
    # (components as x runs: the pockets are few)
    runs = RunComponents(np.logical_not(pockets).view(np.uint8), 0.5)
    if runs.n == 0:
        return out
    height_mm = (runs.boxes[:, 1] - runs.boxes[:, 0]) * sz
    width_mm = np.maximum((runs.boxes[:, 3] - runs.boxes[:, 2]) * sy, (runs.boxes[:, 5] - runs.boxes[:, 4]) * sx)
    ok = ((height_mm <= lesion_mm + sz) & (runs.sizes * sz * sy * sx <= math.pi / 6 * (1.2 * lesion_mm) ** 3)
          & (width_mm <= 1.5 * height_mm + 2 * max(sy, sx)))
    ok[0] = False
    # and each circle's ball at least as tall as its pocket's stack (a sphere, not a cylinder)
    zc, kc = np.nonzero(np.arange(circles.shape[1])[None, :] < ncircles[:, None])
    if zc.size:
        anchor = circles[zc, kc, 3].astype(np.int64)
        lab = runs.component_at(zc, anchor // nx, anchor % nx)
        good = ok[lab] & (2.0 * circles[zc, kc, 2] + 2.0 * sz >= height_mm[lab])
        circles[zc[~good], kc[~good], 2] = 0.0
    if ok.any():
        out |= runs.mask(np.flatnonzero(ok))
    if zc.size and (circles[:, :, 2] > 0).any():
        _paint_balls(mask, np.ascontiguousarray(values), float(threshold_hu), sz, sy, sx, circles, ncircles, out)
    return out
