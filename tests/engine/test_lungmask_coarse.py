"""The coarse grid never changes the lung mask: ``grid_mm=2`` (the default) against ``grid_mm=0``.

The scans are phantoms (`noduleflow.synthetic.phantom`) post-processed the way real scans differ
from them: a circular field of view drawn tight around the lungs (the chest wall between a lung and
the -2048 / -3024 padding 1.5-4 mm thick, as in a large patient whose arms and flanks fall outside
the reconstruction), or the body cut down to a thin wall with air around it inside a wider field of
view. Before the fix, a coarse block straddling the padding averaged below the air threshold and
joined the lung to the outside air: "no lung found" on a scan whose lungs the full resolution finds.
Synthetic phantoms are a regression signal, not clinical evidence.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from noduleflow.engine import Volume
from noduleflow.engine.ccl import RunComponents, label
from noduleflow.engine.lungmask import LungMaskParams, dice, grid_factors, lung_mask
from noduleflow.engine.morphology import block_mean, block_stats
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

SLICE_MM = (0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


def _cut(ph, wall_mm: float, pad_hu: int, air_outside_mm: float | None) -> Volume:
    """The phantom with a circular field of view ``wall_mm`` beyond its farthest lung voxel (the image
    centre is the circle's centre), padded with ``pad_hu`` and cropped to the circle's square. With
    ``air_outside_mm``, the body beyond ``wall_mm`` is air (-1000 HU) instead, and the field of view
    lies that much further out."""
    vol = ph.volume
    hu = vol.hu.copy()
    _, sy, sx = vol.spacing_zyx_mm
    _, ny, nx = hu.shape
    r = np.hypot((np.arange(ny)[:, None] - (ny - 1) / 2) * sy, (np.arange(nx)[None, :] - (nx - 1) / 2) * sx)
    r_lung = float(r[ph.lung_mask.any(axis=0)].max())
    fov = r_lung + wall_mm
    if air_outside_mm is not None:
        hu[:, r > fov] = -1000
        fov += air_outside_mm
    hu[:, r > fov] = pad_hu
    # crop to the field of view's square (+ 2 voxels), as a reconstruction of that diameter would be
    hy, hx = int(fov / sy) + 2, int(fov / sx) + 2
    cy, cx = ny // 2, nx // 2
    y0, x0 = max(cy - hy, 0), max(cx - hx, 0)
    hu = np.ascontiguousarray(hu[:, y0:cy + hy, x0:cx + hx])
    origin = (vol.origin_xyz_mm[0] + x0 * sx, vol.origin_xyz_mm[1] + y0 * sy, vol.origin_xyz_mm[2])
    return Volume(hu, vol.spacing_zyx_mm, origin, series_uid=vol.series_uid)


def varied_scans(n_phantoms: int, max_voxels: float = 2.2e6):
    """Two scans from each of ``n_phantoms`` phantoms: in-plane spacing 0.5-0.95 mm, slices 0.6-3 mm,
    60-120 mm long, small to large patients (the in-plane size sets the body's, 0.4-0.8 x an adult's),
    (a) the -2048 padding 1.5-4 mm past the nearest lung, (b) a 2-5 mm wall with air around it and
    -3024 padding. Yields (name, Volume)."""
    for i in range(n_phantoms):
        rng = np.random.default_rng(3500 + i)
        dz = SLICE_MM[i % len(SLICE_MM)]
        dxy = float(rng.uniform(0.5, 0.95))
        fov_mm = float(rng.uniform(160.0, 300.0))
        n = int(np.clip(fov_mm / dxy, 200, 360))
        nz = int(round(float(rng.uniform(60.0, 120.0)) / dz))
        nz = max(min(nz, int(max_voxels / n**2)), int(60 / dz))
        ph = generate_phantom(3500 + i, shape_zyx=(nz, n, n), spacing_zyx_mm=(dz, dxy, dxy),
                              params=PhantomParams(n_nodules=int(rng.integers(0, 4)), touching_lungs=i % 7 == 3))
        tag = f"{i}: {nz}x{n}x{n} at {dz}x{dxy:.2f} mm, patient x{ph.meta['scale']:.2f}"
        yield f"{tag}, -2048 at the wall", _cut(ph, float(rng.uniform(1.5, 4.0)), -2048, None)
        yield f"{tag}, thin wall in air, -3024", _cut(ph, float(rng.uniform(2.0, 5.0)), -3024,
                                                      float(rng.uniform(3.0, 15.0)))


def _lungs(mask: np.ndarray, voxel_ml: float) -> list[np.ndarray]:
    """The mask's 6-connected components of at least 5 mL, as bool masks, largest first."""
    lab, n = label(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    ids = [i for i in np.argsort(sizes[1:])[::-1] + 1 if sizes[i] * voxel_ml >= 5.0]
    return [lab == i for i in ids]


def _same_lungs(a: np.ndarray, b: np.ndarray, voxel_ml: float) -> str:
    """'' when every lung of either mask lies (>= 97 % of it) in the other mask, else what differs.
    (Two lungs that one mask joins by a main bronchus the other cuts out are the same lungs.)"""
    for x, y, what in ((a, b, "full resolution"), (b, a, "coarse grid")):
        lungs = _lungs(x, voxel_ml)
        if not lungs:
            return f"no lung at {what}"
        for k, c in enumerate(lungs):
            inside = np.count_nonzero(c & y) / np.count_nonzero(c)
            if inside < 0.97:
                return (f"lung {k} at {what} ({np.count_nonzero(c) * voxel_ml:.0f} mL) is "
                        f"{100 * inside:.1f} % in the other")
    return ""


def _compare(vol: Volume, params: LungMaskParams):
    full = lung_mask(vol, params, grid_mm=0)
    coarse = lung_mask(vol, params, grid_mm=2)
    return full, coarse, _same_lungs(full, coarse, float(np.prod(vol.spacing_zyx_mm)) / 1000.0)


def test_coarse_grid_finds_the_same_lungs_on_50_varied_scans():
    p = LungMaskParams(dilate_mm=3.0)  # the detection pipeline's mask (`PreprocessSpec().lung`)
    scans, worst = 0, (1.0, "")
    for name, vol in varied_scans(25):
        assert grid_factors(vol.spacing_zyx_mm, p.grid_mm) != (1, 1, 1), name
        full, coarse, differ = _compare(vol, p)
        assert not differ, f"{name}: {differ}"
        worst = min(worst, (dice(full, coarse), name))
        scans += 1
    assert scans >= 50
    assert worst[0] >= 0.99, f"worst Dice {worst[0]:.4f} on {worst[1]}"


def test_thin_wall_at_the_padding_no_longer_loses_the_lungs():
    """The reported failure in small: 0.74 mm pixels, 1 mm slices, the -2048 padding 1.5 mm past the
    nearest lung. The coarse blocks at the edge of the field of view average below -320 HU; the old
    coarse path joined both lungs to the outside air ("no lung found")."""
    ph = generate_phantom(1, shape_zyx=(60, 320, 320), spacing_zyx_mm=(1.0, 0.74, 0.74),
                          params=PhantomParams(n_nodules=2))
    vol = _cut(ph, 1.5, -2048, None)
    f = grid_factors(vol.spacing_zyx_mm, 2.0)
    mean = block_mean(vol.hu, f)
    # the premise: the blocks' means join the lungs to the padding (the old coarse path's first labelling)
    runs = RunComponents(mean, -320.0)
    inside = (~runs.border) & (runs.sizes * np.prod(vol.spacing_zyx_mm) * np.prod(f) / 1000.0 >= 50.0)
    assert not inside[1:].any()
    full, coarse, differ = _compare(vol, LungMaskParams())
    assert not differ and dice(full, coarse) >= 0.99
    assert full.sum() >= 0.95 * ph.lung_mask.sum()  # both lungs (the crop keeps every lung voxel)


@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 2, 2), (3, 1, 2), (2, 3, 3)])
def test_block_stats_and_run_counts_per_block_match_numpy(factors):
    """`block_stats` (a block's mean and its count below a threshold from one read, over the whole
    scan or a box of blocks) and `RunComponents.block_counts` (components' voxels per block), against
    numpy on a random scan with partial blocks at its far edges."""
    from scipy import ndimage

    rng = np.random.default_rng(sum(factors))
    shape = (13, 22, 19)
    hu = (ndimage.uniform_filter(rng.normal(size=shape), 3) * 3000).astype(np.int16)
    thr = float(rng.uniform(-300, 300))
    mean, below = block_stats(hu, factors, thr - 500.5)
    np.testing.assert_array_equal(mean, block_mean(hu, factors))
    pad = [(0, -n % f) for n, f in zip(shape, factors)]
    grid = (mean.shape[0], factors[0], mean.shape[1], factors[1], mean.shape[2], factors[2])

    def per_block(m):
        return np.pad(m, pad).reshape(grid).sum(axis=(1, 3, 5))

    np.testing.assert_array_equal(below, per_block(hu < thr - 500.5))
    box = (1, mean.shape[0], 0, 2, 1, mean.shape[2])
    sub = tuple(slice(box[2 * a], box[2 * a + 1]) for a in range(3))
    m2, b2 = block_stats(hu, factors, thr - 500.5, box)
    np.testing.assert_array_equal(m2, mean[sub])
    np.testing.assert_array_equal(b2, below[sub])
    runs = RunComponents(hu, thr)
    group = rng.integers(0, 4, runs.n + 1)  # each component in group 1-3, or none (0)
    group[0] = 0
    group[int(np.argmax(runs.sizes))] = 2  # the largest: long runs across many blocks
    group[int(np.argmin(runs.sizes[1:])) + 1] = 3
    full = (0, mean.shape[0], 0, mean.shape[1], 0, mean.shape[2])
    for b, part in ((full, (slice(None),) * 3), (box, sub)):
        got = runs.block_counts(group, factors, b)
        assert got.shape[0] == 3
        for g in (1, 2, 3):
            np.testing.assert_array_equal(got[g - 1], per_block(runs.mask(np.flatnonzero(group == g)))[part])


def test_coarse_path_falls_back_to_full_resolution_when_its_lungs_disagree(caplog):
    """A lung in two halves joined by a bridge one voxel wide: one component at full resolution, two
    on 2 x 2 x 2 blocks (the bridge is a minority of its blocks), so the coarse path keeps the other
    lung and one half only. Its check sees the lost air, warns, and the scan's own voxels decide:
    the result is the full-resolution mask."""
    hu = np.full((40, 120, 120), 40, np.int16)
    hu[:, :4] = hu[:, -4:] = hu[:, :, :4] = hu[:, :, -4:] = -1000  # air around the body
    hu[5:35, 20:50, 15:45] = -850   # right lung, upper half
    hu[5:35, 70:100, 15:45] = -850  # right lung, lower half ...
    hu[20, 50:70, 30] = -850        # ... joined by a bridge one voxel wide
    hu[5:35, 20:60, 70:100] = -850  # left lung, larger than either half, smaller than both
    vol = Volume(hu, (1.0, 0.7, 0.7), (0.0, 0.0, 0.0))
    p = LungMaskParams(min_lung_ml=1.0, second_lung_ratio=0.15, wall_lesion_mm=0.0, close_mm=0.0)
    full = lung_mask(vol, p, grid_mm=0)
    assert full[20, 40, 80] and full[20, 30, 30] and full[20, 80, 30]  # both lungs, the bridge joins the halves
    with caplog.at_level(logging.WARNING, logger="noduleflow.engine.lungmask"):
        coarse = lung_mask(vol, p)
    assert "recomputed at full resolution" in caplog.text
    np.testing.assert_array_equal(coarse, full)


@pytest.mark.slow
def test_reported_scan_size_coarse_matches_full_resolution():
    """The reported case at full size: 316 x 512 x 512, 0.74 mm pixels, 1 mm slices, -2048 padding
    2 mm past the nearest lung."""
    ph = generate_phantom(35, shape_zyx=(316, 512, 512), spacing_zyx_mm=(1.0, 0.74, 0.74),
                          params=PhantomParams(n_nodules=4))
    vol = _cut(ph, 2.0, -2048, None)
    full, coarse, differ = _compare(vol, LungMaskParams(dilate_mm=3.0))
    assert not differ and dice(full, coarse) >= 0.99
