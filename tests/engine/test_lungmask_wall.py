"""Juxta-pleural nodules stay inside the lung mask; the space between the lungs stays out.

The air threshold cuts a solid nodule on the chest wall out of the lung, and the part of it that
lies in the wall's position is not seen at all: before the wall pass (`LungMaskParams.wall_lesion_mm`,
`engine.wall_pockets.fill_wall_pockets`), 20-30 mm nodules half in the wall were 30-50 % inside the
detection pipeline's mask, and stage 1 dropped their centres. Synthetic phantoms are a regression
signal, not clinical evidence.
"""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine.lungmask import lung_mask
from noduleflow.engine.preprocess import PreprocessSpec
from noduleflow.engine.wall_pockets import convex_hull_2d, fill_wall_pockets
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

SHAPE, SPACING = (96, 320, 320), (1.25, 0.9, 0.9)
# (diameter mm, height as a fraction of the scan, lung ("R" patient right, "L" left), position along
# the lung's y extent (-1 anterior .. 1 posterior), centre's distance beyond the lung's surface mm)
NODULES = [(10, 0.45, "L", 0.0, 0.0), (15, 0.45, "R", 0.0, 0.0), (20, 0.70, "L", 0.3, 1.5),
           (25, 0.72, "R", -0.3, 0.0), (30, 0.58, "L", -0.5, 2.5)]


@pytest.fixture(scope="module")
def chest():
    """A phantom without nodules, then solid nodules (+40 HU, partial-volume edge) centred on the lateral
    chest wall: half of each (more for the 20 and 30 mm ones) lies where the wall is, as a nodule that
    pushes the pleura out does. Returns (volume, [(diameter, bool ball)], mediastinum bool): the
    mediastinum is each row's stretch between the two true lungs, 5 mm in from each."""
    ph = generate_phantom(11, shape_zyx=SHAPE, spacing_zyx_mm=SPACING, params=PhantomParams(n_nodules=0, n_excluded=0))
    lung, hu = ph.lung_mask, ph.volume.hu.astype(np.float32)
    nz, ny, nx = SHAPE
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING)), indexing="ij", sparse=True)
    balls = []
    for d, zf, side, yoff, beyond in NODULES:
        z = int(zf * nz)
        ys, xs = np.nonzero(lung[z])
        half = xs < nx / 2 if side == "R" else xs >= nx / 2
        ys, xs = ys[half], xs[half]
        yc = ys.mean() + yoff * (ys.max() - ys.min()) / 2
        row = np.abs(ys - yc) < 1
        out = -1 if side == "R" else 1  # lateral: -x on the patient's right (LPS)
        x_edge = xs[row].min() if side == "R" else xs[row].max()
        c = (z * SPACING[0], round(yc) * SPACING[1], (x_edge + 0.5 * out) * SPACING[2] + out * beyond)
        dist = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        f = np.clip(0.5 - (dist - d / 2) / SPACING[1], 0, 1).astype(np.float32)
        np.maximum(hu, hu + f * (40.0 - hu), out=hu)
        balls.append((d, dist <= d / 2))
    med = np.zeros(SHAPE, bool)
    right, left = lung[:, :, : nx // 2], lung[:, :, nx // 2:]
    has = right.any(axis=2) & left.any(axis=2)
    a = nx // 2 - np.argmax(right[:, :, ::-1], axis=2) + int(5 / SPACING[2])  # right lung's medial edge + 5 mm
    b = nx // 2 + np.argmax(left, axis=2) - int(5 / SPACING[2])
    xi = np.arange(nx)[None, None, :]
    med = has[:, :, None] & (xi >= a[:, :, None]) & (xi < b[:, :, None])
    return ph.volume.with_array(np.clip(np.rint(hu), -3024, 3071).astype(np.int16)), balls, med


@pytest.mark.parametrize("grid_mm", [2.0, 0.0])
def test_wall_nodules_of_10_to_30_mm_are_inside_the_mask(chest, grid_mm):
    vol, balls, _ = chest
    spec = PreprocessSpec().lung  # the detection pipeline's mask: 3 mm dilation
    m = lung_mask(vol, spec, grid_mm=grid_mm)
    inside = {d: float((m & b).sum() / b.sum()) for d, b in balls}
    assert all(v >= 0.99 for v in inside.values()), inside
    # the premise: without the wall pass the larger ones are mostly outside
    off = lung_mask(vol, spec, grid_mm=grid_mm, wall_lesion_mm=0.0)
    before = {d: float((off & b).sum() / b.sum()) for d, b in balls}
    assert all(before[d] < 0.7 for d in (20, 25, 30)), before


def test_wall_pass_keeps_out_of_the_mediastinum(chest):
    """The mask grows at the nodules, not elsewhere: nothing between the lungs, and away from the
    nodules (10 mm around them) by less than 0.1 % of the mask."""
    vol, balls, med = chest
    spec = PreprocessSpec().lung
    on, off = lung_mask(vol, spec), lung_mask(vol, spec, wall_lesion_mm=0.0)
    added = on & ~off
    assert off.sum() <= on.sum() and not (off & ~on).any()
    assert med.sum() > 100_000 and not (added & med).any()
    near = np.zeros(vol.shape, bool)
    r = int(10 / SPACING[1])
    for _, b in balls:
        lo = [max(int(v.min()) - r, 0) for v in np.nonzero(b)]
        hi = [int(v.max()) + r for v in np.nonzero(b)]
        near[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    assert (added & ~near).sum() < 1e-3 * off.sum()


def test_convex_hull_matches_skimage():
    skimage_morphology = pytest.importorskip("skimage.morphology")  # the bench extra
    rng = np.random.default_rng(0)
    for _ in range(40):
        m = np.zeros((1, 40, 50), bool)
        for _ in range(int(rng.integers(1, 5))):
            y, x = int(rng.integers(0, 40)), int(rng.integers(0, 50))
            m[0, max(y - int(rng.integers(0, 8)), 0):y + int(rng.integers(1, 8)),
              max(x - int(rng.integers(0, 8)), 0):x + int(rng.integers(1, 8))] = True
        want = skimage_morphology.convex_hull_image(m[0], offset_coordinates=False)
        np.testing.assert_array_equal(convex_hull_2d(m)[0], want)


def _slab(nodule_x: float, d: float = 20.0, both_lungs: bool = False):
    """Two slabs of lung in a 60 mm stack of 1 mm slices (1 mm pixels): x 20-70 and 110-160, y 20-140,
    tissue elsewhere; a ball of diameter ``d`` at (z 30, y 80, ``nodule_x``) cut out of the lung."""
    shape = (60, 160, 180)
    zz, yy, xx = np.indices(shape, sparse=True)
    lungs = (((xx >= 20) & (xx < 70)) | ((xx >= 110) & (xx < 160))) & (yy >= 20) & (yy < 140) & (zz >= 2) & (zz < 58)
    ball = (zz - 30) ** 2 + (yy - 80) ** 2 + (xx - nodule_x) ** 2 <= (d / 2) ** 2
    lungs = lungs & ~ball
    ids = np.where(xx < 90, 1, 2).astype(np.uint8) * lungs
    vals = np.where(lungs, -850.0, 40.0).astype(np.float32)
    return lungs, vals, ids, ball


def test_fill_wall_pockets_completes_a_lesion_on_the_wall_only():
    """A 20 mm ball half in the lateral wall of a lung slab comes back whole; the same ball on the
    slab's medial side (it opens towards the midline) and a notch wider than a lesion do not."""
    lungs, vals, ids, ball = _slab(20.0)  # centred on the right slab's lateral surface (x = 20)
    out = fill_wall_pockets(lungs, vals, -320.0, (1.0, 1.0, 1.0), 30.0, ids)
    assert (out & ball).sum() >= 0.97 * ball.sum()
    assert (out & ~lungs & ~ball).sum() < 0.5 * ball.sum()  # a rim of a pixel or so around it at most
    medial, vals, ids, ball = _slab(70.0)  # on the right slab's medial surface
    out = fill_wall_pockets(medial, vals, -320.0, (1.0, 1.0, 1.0), 30.0, ids)
    assert not (out & ~medial).any()
    wide, vals, ids, ball = _slab(20.0, d=40.0)  # wider than the 30 mm lesions the pass takes
    out = fill_wall_pockets(wide, vals, -320.0, (1.0, 1.0, 1.0), 30.0, ids)
    assert (out & ball).sum() < 0.6 * ball.sum()
