"""The numba kernels against their reference implementations (bench/reference.py)."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.bench import reference as ref
from noduleflow.engine import Volume
from noduleflow.engine.candidates import CandidateRules, candidates
from noduleflow.engine.ccl import component_boxes, component_stats, label
from noduleflow.engine.lungmask import LungMaskParams, dice, grid_factors, lung_mask
from noduleflow.engine.morphology import block_mean, clear_blocks, close, dilate, erode, fill_holes_2d, refine_blocks
from noduleflow.engine.patches import Normalisation, PatchProducer, gather
from noduleflow.engine.resample import crop, lung_bbox, resample
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

SMALL = dict(shape_zyx=(70, 160, 160), spacing_zyx_mm=(4.0, 2.0, 2.0))


def _same_partition(a, b):
    """Two labelings describe the same components (labels may differ)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("density", [0.2, 0.5, 0.7])
def test_ccl_matches_scipy(density):
    mask = np.random.default_rng(1).uniform(size=(30, 40, 50)) < density
    ours, n = label(mask)
    theirs, m = ref.label(mask)
    assert n == m and _same_partition(ours, theirs)
    sizes, border = component_stats(ours, n)
    assert sizes.sum() == mask.sum() and sizes[0] == 0


def test_morphology_matches_scipy():
    from scipy import ndimage

    mask = np.random.default_rng(2).uniform(size=(12, 40, 44)) < 0.08
    st = np.ones((3, 5, 7), bool)
    np.testing.assert_array_equal(dilate(mask, (1, 2, 3)), ndimage.binary_dilation(mask, st))
    np.testing.assert_array_equal(erode(mask | dilate(mask, (1, 2, 3)), (1, 2, 3)),
                                  ndimage.binary_erosion(mask | dilate(mask, (1, 2, 3)), st, border_value=1))
    ring = np.zeros((3, 20, 20), bool)
    ring[:, 5:15, 5:15] = True
    ring[:, 8:12, 8:12] = False
    np.testing.assert_array_equal(fill_holes_2d(ring)[1], ndimage.binary_fill_holes(ring[1]))
    assert close(ring, (0, 2, 2))[1, 10, 10]


def test_component_boxes_match_scipy():
    from scipy import ndimage

    mask = np.random.default_rng(5).uniform(size=(20, 30, 40)) < 0.3
    lab, n = label(mask)
    sizes, border, boxes = component_boxes(lab, n)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        assert tuple(boxes[i]) == (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop, sl[2].start, sl[2].stop)
    np.testing.assert_array_equal(sizes[1:], np.bincount(lab.ravel(), minlength=n + 1)[1:])


@pytest.mark.parametrize("density", [0.2, 0.5, 0.8])
def test_run_components_match_scipy(density):
    from scipy import ndimage

    from noduleflow.engine.ccl import RunComponents

    values = np.random.default_rng(10).uniform(size=(16, 25, 31)).astype(np.float32)
    mask = values < density
    runs = RunComponents(values, density)
    theirs, m = ref.label(mask)
    assert runs.n == m
    np.testing.assert_array_equal(runs.sizes[1:], np.bincount(theirs.ravel(), minlength=m + 1)[1:])
    for i, sl in enumerate(ndimage.find_objects(theirs), start=1):  # both number in raster order
        assert tuple(runs.boxes[i]) == tuple(v for s in sl for v in (s.start, s.stop))
        touches = (theirs[:, [0, -1]] == i).any() or (theirs[:, :, [0, -1]] == i).any()
        assert runs.border[i] == touches
    keep = [1, m // 2, m]
    np.testing.assert_array_equal(runs.mask(keep), np.isin(theirs, keep))
    np.testing.assert_array_equal(runs.mask(keep, (2, 9, 3, 20, 5, 31)), np.isin(theirs, keep)[2:9, 3:20, 5:31])


@pytest.mark.parametrize("radius", [(0, 0, 1), (0, 3, 0), (2, 0, 0), (3, 4, 4), (1, 1, 1), (0, 25, 2)])
def test_dilate_erode_every_axis_match_scipy(radius):
    from scipy import ndimage

    mask = np.random.default_rng(sum(radius)).uniform(size=(17, 33, 29)) < 0.04
    st = np.ones([2 * r + 1 for r in radius], bool)
    np.testing.assert_array_equal(dilate(mask, radius), ndimage.binary_dilation(mask, st))
    big = dilate(mask, (1, 2, 2))
    np.testing.assert_array_equal(erode(big, radius), ndimage.binary_erosion(big, st, border_value=1))


@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_fill_holes_2d_matches_scipy(density):
    from scipy import ndimage

    mask = np.random.default_rng(6).uniform(size=(6, 37, 41)) < density
    mask[2] = False  # an empty slice
    mask[3, 0, :] = True  # a slice whose mask touches its edge
    want = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    np.testing.assert_array_equal(fill_holes_2d(mask), want)


@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 2, 2), (3, 1, 2), (1, 4, 4)])
def test_block_mean_matches_numpy(factors):
    hu = np.random.default_rng(7).integers(-3024, 3000, (13, 22, 19)).astype(np.int16)
    got = block_mean(hu, factors)
    pad = [(0, -n % f) for n, f in zip(hu.shape, factors)]
    vals = np.pad(hu.astype(np.float64), pad, constant_values=np.nan)
    shp = [s // f for s, f in zip(vals.shape, factors)]
    want = np.nanmean(vals.reshape(shp[0], factors[0], shp[1], factors[1], shp[2], factors[2]), axis=(1, 3, 5))
    assert got.shape == tuple(shp) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize("factors,origin", [((2, 2, 2), (0, 0, 0)), ((1, 2, 3), (2, 1, 1)), ((2, 3, 2), (1, 2, 0))])
def test_refine_and_clear_blocks_match_numpy(factors, origin):
    rng = np.random.default_rng(8)
    hu = rng.integers(-1000, 200, (11, 20, 17)).astype(np.int16)
    cshape = [-(-n // f) for n, f in zip(hu.shape, factors)]
    code = rng.integers(0, 3, [c - o for c, o in zip(cshape, origin)]).astype(np.uint8)
    full = np.zeros(cshape, np.uint8)
    full[origin[0]:, origin[1]:, origin[2]:] = code
    up = full.repeat(factors[0], 0).repeat(factors[1], 1).repeat(factors[2], 2)
    up = up[:hu.shape[0], :hu.shape[1], :hu.shape[2]]
    want = (up == 1) | ((up == 2) & (hu < -320))
    got = refine_blocks(hu, code, factors, -320.0, origin_zyx=origin)
    np.testing.assert_array_equal(got, want)
    cut = code == 1
    clear_blocks(got, cut, factors, origin_zyx=origin)
    np.testing.assert_array_equal(got, want & (up != 1))


def test_grid_factors():
    assert grid_factors((1.0, 0.7, 0.7), 2.0) == (2, 2, 2)
    assert grid_factors((2.5, 0.5, 0.66), 2.0) == (1, 4, 3)
    assert grid_factors((1.0, 0.7, 0.7), 0.0) == (1, 1, 1)


@pytest.fixture(scope="module")
def phantoms():
    cases = {"two": PhantomParams(n_nodules=3), "touching": PhantomParams(n_nodules=2, touching_lungs=True),
             "one_lung": PhantomParams(n_nodules=2, one_lung=True)}
    return {k: generate_phantom(21 + i, params=p, **SMALL) for i, (k, p) in enumerate(cases.items())}


@pytest.mark.parametrize("case", ["two", "touching", "one_lung"])
def test_lung_mask_dice_and_reference(phantoms, case):
    ph = phantoms[case]
    ours = lung_mask(ph.volume)
    assert dice(ours, ph.lung_mask) >= 0.97
    # the scipy/skimage version of the same algorithm gives the same mask
    theirs = ref.lung_mask(ph.volume, LungMaskParams())
    assert dice(ours, theirs) > 0.999
    assert ours.shape == ph.volume.shape and ours.dtype == bool


@pytest.fixture(scope="module")
def fine_phantom():
    # fine enough that the mask's topology runs on 2 x 2 blocks in plane (grid_factors (1, 2, 2))
    return generate_phantom(31, params=PhantomParams(n_nodules=4), shape_zyx=(60, 224, 224),
                            spacing_zyx_mm=(2.5, 1.0, 1.0))


@pytest.mark.parametrize("dilate_mm", [0.0, 3.0])
def test_lung_mask_on_coarse_grid_matches_full_resolution_reference(fine_phantom, dilate_mm):
    vol = fine_phantom.volume
    p = LungMaskParams(dilate_mm=dilate_mm)
    assert grid_factors(vol.spacing_zyx_mm, p.grid_mm) == (1, 2, 2)
    theirs = ref.lung_mask(vol, p)
    full = lung_mask(vol, p, grid_mm=0)
    assert dice(full, theirs) > 0.999  # the same algorithm at full resolution
    ours = lung_mask(vol, p)
    assert ours.shape == vol.shape and ours.dtype == bool
    assert dice(ours, theirs) >= 0.99
    if dilate_mm == 0:
        assert dice(ours, fine_phantom.lung_mask) >= 0.97


def test_lung_mask_keeps_nodules_and_removes_trachea(phantoms):
    ph = phantoms["two"]
    m = lung_mask(ph.volume)
    for n in ph.nodules:
        z, y, x = np.round(ph.volume.world_to_voxel(n.center_xyz_mm)).astype(int)
        if ph.lung_mask[z, y, x]:
            assert m[z, y, x], n
    # the top slices hold the trachea only: not lung in truth, not lung in ours
    top = ph.volume.shape[0] - 1
    trachea = ~ph.lung_mask[top] & (ph.volume.hu[top] < -900)
    trachea[:, :10] = trachea[:, -10:] = False  # not the outside air
    trachea[:10] = trachea[-10:] = False
    assert trachea.sum() > 20 and (m[top] & trachea).sum() == 0


def test_lung_mask_dilation_grows():
    ph = generate_phantom(3, params=PhantomParams(n_nodules=0), **SMALL)
    a, b = lung_mask(ph.volume), lung_mask(ph.volume, dilate_mm=4)
    assert (a <= b).all() and b.sum() > a.sum() * 1.05


def test_lung_mask_refuses_a_volume_without_lungs():
    from noduleflow.engine import VolumeError

    vol = Volume(np.full((10, 40, 40), 40, np.int16), (1, 1, 1), (0, 0, 0))
    with pytest.raises(VolumeError, match="no lung"):
        lung_mask(vol)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("spacing_zyx_mm", [(1.0, 1.0, 1.0), (0.8, 1.7, 0.6)])
def test_resample_dtypes_and_spacings_equal_simpleitk(dtype, spacing_zyx_mm):
    ph = generate_phantom(9, shape_zyx=(24, 70, 60), spacing_zyx_mm=(2.0, 0.75, 1.3))
    vol = ph.volume.with_array(ph.volume.hu.astype(dtype))
    out = resample(vol, spacing_zyx_mm)
    assert out.hu.dtype == (np.int16 if dtype == np.int16 else np.float32)
    theirs = ref.resample_sitk(vol, out)
    tol = 0.5 + 1e-3 if dtype == np.int16 else 1e-2  # int16: rounding only
    assert np.abs(theirs[1:-1, 1:-1, 1:-1] - out.hu[1:-1, 1:-1, 1:-1]).max() <= tol


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, 1, 0, 0, 0, -1)])
def test_resample_equals_simpleitk(direction):
    ph = generate_phantom(5, shape_zyx=(30, 90, 80), spacing_zyx_mm=(2.5, 0.7, 0.8))
    vol = ph.volume.with_array(ph.volume.hu, direction=direction)
    out = resample(vol, (1.0, 1.0, 1.0))
    assert out.spacing_zyx_mm == (1.0, 1.0, 1.0) and out.origin_xyz_mm == vol.origin_xyz_mm
    assert out.shape == (73, 63, 64)  # covers the input extent, no extrapolation
    theirs = ref.resample_sitk(vol, out)
    assert np.abs(theirs[1:-1, 1:-1, 1:-1] - out.hu[1:-1, 1:-1, 1:-1]).max() <= 1.0
    # world geometry: the same world point has the same HU in both
    p = vol.voxel_to_world((10, 40, 30))
    zi, yi, xi = np.round(out.world_to_voxel(p)).astype(int)
    assert abs(int(out.hu[zi, yi, xi]) - int(vol.hu[10, 40, 30])) < 400


def test_resample_nearest_for_masks():
    m = np.zeros((10, 20, 20), bool)
    m[3:7, 5:15, 5:15] = True
    v = Volume(m, (2.0, 0.5, 0.5), (0, 0, 0))
    r = resample(v, (1, 1, 1), order=0)
    assert r.hu.dtype == bool and r.shape == (19, 10, 10)
    assert r.hu[6:13, 3:7, 3:7].all() and not r.hu[:5].any()


def test_crop_and_bbox_keep_world_geometry():
    ph = generate_phantom(6, **SMALL)
    c = crop(ph.volume, (5, 40, 10, 100, 20, 150))
    np.testing.assert_allclose(c.voxel_to_world((3, 4, 5)), ph.volume.voxel_to_world((8, 14, 25)))
    bb = lung_bbox(ph.lung_mask, ph.volume.spacing_zyx_mm, 20.0)
    zs, ys, xs = np.nonzero(ph.lung_mask)
    assert bb[2] <= ys.min() - 10 or bb[2] == 0  # 20 mm at 2 mm spacing
    assert bb[1] >= min(zs.max() + 1 + 5, ph.volume.shape[0])


@pytest.mark.parametrize("rules", [CandidateRules(), CandidateRules(stride=3, offset=1, center_min_hu=-400),
                                   CandidateRules(stride=4, center_min_hu=-650, reach=2),
                                   CandidateRules(stride=2, center_min_hu=100, box_min_hu=0)])
def test_candidates_match_reference(rules):
    ph = generate_phantom(8, params=PhantomParams(n_nodules=4), **SMALL)
    vol1 = resample(ph.volume)
    mask1 = resample(ph.volume.with_array(ph.lung_mask), order=0).hu
    ours = candidates(vol1.hu, mask1, rules)
    theirs = ref.candidates(vol1.hu, mask1, rules)
    np.testing.assert_array_equal(ours, theirs)
    assert (ours % rules.stride == rules.offset % rules.stride).all()
    if rules.box_min_hu is None:  # the seed's literal rule (HU > 100, box min > 0) may keep none
        assert len(ours) > 0


def test_gather_matches_numpy_slicing():
    rng = np.random.default_rng(3)
    hu = rng.integers(-1500, 800, (50, 60, 70)).astype(np.int16)
    centres = np.array([[25, 30, 35], [0, 0, 0], [49, 59, 69], [3, 58, 40], [20, 1, 68]])
    norm = Normalisation()
    buf = np.full((8, 1, 41, 41, 41), 7.0, np.float32)
    out = gather(hu, centres, buf, norm)
    assert out.base is buf or out is buf[:5] or np.shares_memory(out, buf)
    np.testing.assert_allclose(out, ref.gather(hu, centres, norm), atol=1e-6)
    assert out[1, 0, 0, 0, 0] == 0.0  # padding = -1000 HU -> 0
    assert (buf[5:] == 7.0).all()  # rows past N untouched


@pytest.mark.parametrize("overlap", [True, False])
def test_producer_batches_equal_reference(overlap):
    rng = np.random.default_rng(4)
    hu = rng.integers(-1000, 400, (40, 40, 40)).astype(np.int16)
    centres = rng.integers(0, 40, (23, 3))
    seen = []
    for c, p in PatchProducer(hu, centres, batch_size=5, overlap=overlap):
        np.testing.assert_allclose(p, ref.gather(hu, c, Normalisation()), atol=1e-6)
        seen.append(c)
    np.testing.assert_array_equal(np.concatenate(seen), centres)


def test_producer_propagates_errors():
    from noduleflow.engine import ConfigError

    with pytest.raises(ConfigError):
        PatchProducer(np.zeros((5, 5, 5), np.int16), np.zeros((3, 3)), batch_size=0)
