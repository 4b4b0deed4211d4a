"""Nodule look-alikes for the phantom (issue 15, item 4): what fools a nodule detector on real CT.

Drawn only when `PhantomParams.confounders` > 0, from their own random stream, so every phantom
made without them (the training, validation, tuning and held-out cohorts) stays bit-identical.

- ``bifurcation``: the knot where a vessel branches, a little wider than its parent (a round
  dense blob on every plane, the commonest false positive);
- ``fissure``: an interlobar fissure, a 1 mm sheet of about -700 HU across a lung;
- ``airway``: a small bronchus beside a vessel (bronchovascular bundle): a soft-tissue ring
  around air, 2-5 mm across;
- ``scar``: a band of atelectasis or scar near the pleura, a flat dense plate 10-25 mm long;
- ``pleural_plaque``: a flat lens of soft tissue on the chest wall (a juxta-pleural look-alike
  that is broad, not round).

Each is recorded as ``(kind, centre xyz mm, size mm)`` in ``Phantom.meta["confounders"]``.
"""
from __future__ import annotations

import numpy as np

from .phantom_anatomy import Segment, render_capsule
from .phantom_base import BLOOD_HU, SOFT_HU, random_rotation, smoothstep_inside

KINDS = ("bifurcation", "fissure", "airway", "scar", "pleural_plaque")


def _blend(hu, box, f, value):
    sub = hu[box]
    sub += f.astype(np.float32) * (np.float32(value) - sub)


def _ellipsoid(hu, grid, lung, centre, axes_mm, rot, value, edge, only_lung=True):
    r = float(max(axes_mm)) + 2.0
    c = np.asarray(centre, float)
    box = grid.box(c - r, c + r)
    if any(s.stop <= s.start for s in box):
        return
    z, y, x = grid.coords(box)
    d = [x - c[0], y - c[1], z - c[2]]
    u = [(rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2]) / axes_mm[i] for i in range(3)]
    dist = (np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) - 1.0) * float(min(axes_mm))
    f = smoothstep_inside(dist, edge)
    if only_lung:
        f = f * lung[box]
    _blend(hu, box, f, value)


def add_confounders(seed: int, grid, hu, lung, anat, n: int) -> list:
    """Draw ``n`` look-alikes of each kind (fissures: one per lung) into ``hu`` (float32, in place)."""
    rng = np.random.default_rng([int(seed), 40503])
    edge = anat.edge
    out = []
    segs = [s for s in anat.segments if 0.8 <= s.radius_mm <= 3.0]
    # vessel bifurcation knots: at a segment's end, where its children start
    for s in (segs[i] for i in rng.choice(len(segs), min(n, len(segs)), replace=False)) if segs else ():
        r = s.radius_mm * rng.uniform(1.3, 1.7)
        _ellipsoid(hu, grid, lung, s.p1, np.full(3, r), np.eye(3), BLOOD_HU, edge)
        out.append(("bifurcation", tuple(s.p1), round(2 * r, 2)))
    # airways beside vessels: a bronchus runs parallel to its artery
    for s in (segs[i] for i in rng.choice(len(segs), min(n, len(segs)), replace=False)) if segs else ():
        p0, p1 = np.asarray(s.p0), np.asarray(s.p1)
        axis = p1 - p0
        perp = np.cross(axis, rng.standard_normal(3))
        perp /= np.linalg.norm(perp) + 1e-9
        lumen = s.radius_mm * rng.uniform(0.6, 1.0)
        off = perp * (s.radius_mm + lumen + 1.5)
        a, b = p0 + 0.2 * axis + off, p0 + 0.8 * axis + off
        if anat.lung_sdf(*a) > -4 or anat.lung_sdf(*b) > -4:
            continue
        render_capsule(hu, None, grid, Segment(tuple(a), tuple(b), lumen + 1.0), SOFT_HU, edge)
        render_capsule(hu, None, grid, Segment(tuple(a), tuple(b), lumen), -1000.0, edge)
        out.append(("airway", tuple((a + b) / 2), round(2 * lumen + 2, 2)))
    pts = np.argwhere(lung[::4, ::4, ::4]) * 4
    if len(pts):
        world = np.stack([grid.x[pts[:, 2]], grid.y[pts[:, 1]], grid.z[pts[:, 0]]], 1)
        sdf = anat.lung_sdf(world[:, 0], world[:, 1], world[:, 2])
        # fissures: one oblique sheet per lung through a deep point
        for side in (-1, 1):
            deep = np.flatnonzero((sdf < -25) & (np.sign(world[:, 0] - anat.bx) == side))
            if not len(deep):
                continue
            c = world[rng.choice(deep)]
            nrm = np.array([rng.uniform(-0.3, 0.3), rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.2)])
            nrm /= np.linalg.norm(nrm)
            value = np.float32(rng.uniform(-750, -650))
            X, Y = grid.x[None, :], grid.y[:, None]
            sel = np.sign(X - anat.bx) == side
            for k, zk in enumerate(grid.z):  # slice by slice: a whole-volume float64 field is ~0.6 GB
                d = np.abs((X - c[0]) * nrm[0] + (Y - c[1]) * nrm[1] + (zk - c[2]) * nrm[2]) - 0.5
                f = (smoothstep_inside(d, edge) * (lung[k] & sel)).astype(np.float32)
                hu[k] += f * (value - hu[k])
            out.append(("fissure", tuple(float(v) for v in c), 1.0))
        # scars / atelectasis bands and pleural plaques near the pleura
        near = np.flatnonzero((sdf > -12) & (sdf < -3))
        for kind in ("scar", "pleural_plaque"):
            for i in rng.choice(near, min(n, len(near)), replace=False) if len(near) else ():
                c = world[i]
                if kind == "scar":
                    axes = np.array([rng.uniform(5, 12), rng.uniform(2, 4), rng.uniform(0.8, 1.5)])
                    _ellipsoid(hu, grid, lung, c, axes, random_rotation(rng), rng.uniform(-250, 0), edge)
                else:
                    axes = np.array([rng.uniform(6, 10), rng.uniform(6, 10), rng.uniform(1.5, 2.5)])
                    # flat against the wall: the thin axis along the outward normal (the sdf gradient)
                    h = 1.0
                    g = np.array([anat.lung_sdf(*(c + h * e)) - anat.lung_sdf(*(c - h * e)) for e in np.eye(3)])
                    g /= np.linalg.norm(g) + 1e-9
                    t1 = np.cross(g, [0.0, 0.0, 1.0] if abs(g[2]) < 0.9 else [1.0, 0.0, 0.0])
                    t1 /= np.linalg.norm(t1)
                    rot = np.stack([t1, np.cross(g, t1), g], 1)
                    c = c + g * (anat.lung_sdf(*c) * -1.0)  # onto the pleura
                    _ellipsoid(hu, grid, lung, c, axes, rot, SOFT_HU, edge, only_lung=False)
                out.append((kind, tuple(float(v) for v in c), round(2 * float(max(axes)), 2)))
    return out
