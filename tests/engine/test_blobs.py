"""The Hessian blob detector and stage-1 merging: balls are found at their scale, tubes are not,
one candidate per lesion."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine import ConfigError
from noduleflow.engine.blobs import (
    BlobParams,
    _dot_response,
    _peaks,
    block_any2,
    block_mean2,
    detect_blobs,
    gaussian,
    merge_by_extent,
)
from noduleflow.engine.stage1 import combine, component_radius_mm


def _scene(shape=(64, 64, 64)):
    g = np.indices(shape).transpose(1, 2, 3, 0).astype(float)
    hu = np.full(shape, -850.0)
    balls = [((20, 20, 20), 3.0), ((40, 44, 30), 8.0)]
    for c, r in balls:
        hu[((g - c) ** 2).sum(-1) <= r * r] = 40.0
    # a vessel (radius 2.5 mm) along x, away from the balls
    hu[((g[..., 0] - 50) ** 2 + (g[..., 1] - 15) ** 2) <= 2.5 ** 2] = 40.0
    # a scanner's point spread (~0.8 mm): CT never shows a voxel-sharp staircase surface
    return gaussian(hu.astype(np.float32), 0.8).astype(np.int16), balls


def test_gaussian_preserves_mean_and_smooths():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 21, 22)).astype(np.float32)
    b = gaussian(a, 2.0)
    assert b.shape == a.shape and b.dtype == np.float32
    assert abs(b.mean() - a.mean()) < 0.05 and b.std() < 0.5 * a.std()


def test_gaussian_equals_scipy_and_leaves_its_input_alone():
    """Against scipy.ndimage.gaussian_filter (replicated edges, the same truncation at 3 sigma),
    and the caller's float32 array is not touched (the passes swap two buffers)."""
    ndi = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    a = (rng.normal(size=(17, 23, 29)) * 100).astype(np.float32)
    before = a.copy()
    for sigma in (0.8, 1.0, 1.4, 2.0):
        got = gaussian(a, sigma)
        want = ndi.gaussian_filter(a.astype(np.float64), sigma, mode="nearest", truncate=3.0)
        # the kernel radius is ceil(3 sigma) taps, scipy's int(3 sigma + 0.5): compare where both agree
        if int(np.ceil(3 * sigma)) == int(3 * sigma + 0.5):
            np.testing.assert_allclose(got, want, atol=1e-3)
        assert np.array_equal(a, before), f"gaussian(sigma={sigma}) changed its input"
    # a second blur of the same array gives the same result (it was blurring its own output before)
    np.testing.assert_array_equal(gaussian(a, 1.4), gaussian(a, 1.4))


def test_gaussian_on_rows_shorter_than_its_kernel_equals_scipy():
    """The x pass blurs the interior of each row tap by tap and the clamped edges apart: rows of
    1-7 voxels (shorter than the 7-tap kernel, or with no interior at all) as scipy gives them."""
    ndi = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(2)
    for shape in ((3, 4, 1), (3, 4, 2), (2, 5, 5), (4, 3, 6), (3, 3, 7), (2, 2, 8)):
        a = (rng.normal(size=shape) * 100).astype(np.float32)
        want = ndi.gaussian_filter(a.astype(np.float64), 1.0, mode="nearest", truncate=3.0)
        np.testing.assert_allclose(gaussian(a, 1.0), want, atol=1e-3, err_msg=str(shape))


def _separable_reference(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The blur as three numpy passes, each voxel's float32 sum over the taps in order (edges
    replicated): the arithmetic the fused kernel promises, voxel for voxel."""
    h = (len(k) - 1) // 2
    out = a.astype(np.float32)
    for axis in range(3):
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for t in range(-h, h + 1):
            idx = np.clip(np.arange(n) + t, 0, n - 1)
            acc += k[t + h] * np.take(out, idx, axis=axis)
        out = acc
    return out


def test_fused_blur_equals_three_separate_passes_bit_for_bit():
    """The plane-by-plane fused kernel against three numpy passes in the same float32 tap order:
    equal to the last bit, for kernels longer than some rows and on uneven shapes."""
    from noduleflow.engine.blobs import _kernel

    rng = np.random.default_rng(6)
    for shape, sigma in (((13, 17, 19), 1.0), ((9, 30, 31), 2.0), ((5, 4, 40), 1.4), ((20, 6, 5), 2.8)):
        a = (rng.normal(size=shape) * 300).astype(np.float32)
        np.testing.assert_array_equal(gaussian(a, sigma), _separable_reference(a, _kernel(sigma)), err_msg=str(shape))


def test_gaussian_rows_and_out():
    """``rows``: the wanted x rows come out as in the whole blur, the others 0; ``out`` is written
    and returned, and one that is the input, or of another shape or type, is refused."""
    rng = np.random.default_rng(7)
    a = (rng.normal(size=(15, 21, 18)) * 200).astype(np.float32)
    whole = gaussian(a, 1.4)
    rows = np.zeros(a.shape[:2], bool)
    rows[3:5, 2:9] = True
    rows[11, 0] = rows[14, 20] = True   # at the edges: the z and y passes read clamped rows
    buf = np.full(a.shape, np.nan, np.float32)
    got = gaussian(a, 1.4, rows=rows, out=buf)
    assert got is buf
    np.testing.assert_array_equal(got[rows], whole[rows])
    assert (got[~rows] == 0).all()
    with pytest.raises(ConfigError, match="share memory"):
        gaussian(a, 1.0, out=a)
    with pytest.raises(ConfigError, match="C-contiguous float32"):
        gaussian(a, 1.0, out=np.empty(a.shape, np.float64))
    with pytest.raises(ConfigError, match="C-contiguous float32"):
        gaussian(a, 1.0, out=np.empty((15, 21, 17), np.float32))


def test_peaks_on_given_rows_equal_all_rows():
    """``_peaks`` told which rows can hold a value above the threshold finds what the search of
    every row finds; with a threshold below 0 (a row of zeros could hold peaks) it searches all."""
    rng = np.random.default_rng(8)
    r = np.round(rng.random((12, 14, 16)) * 20).astype(np.float32)
    rows = rng.random(r.shape[:2]) < 0.5
    r[~rows] = 0.0
    pa, va = _peaks(r, 5.0)
    pb, vb = _peaks(r, 5.0, rows)
    assert len(pa) > 5 and np.array_equal(pa, pb) and np.array_equal(va, vb)
    none = np.zeros(r.shape[:2], bool)
    assert len(_peaks(r, 5.0, none)[0]) == 0   # the rows given are the rows searched
    np.testing.assert_array_equal(_peaks(r, -1.0, none)[0], _peaks(r, -1.0)[0])


def test_block_mean_and_any_equal_numpy_reshape():
    """The 2x2x2 block kernels against numpy's reshape-and-reduce, odd edges dropped."""
    rng = np.random.default_rng(3)
    for shape in ((8, 6, 4), (9, 7, 5), (3, 2, 11)):
        a = (rng.normal(size=shape) * 300).astype(np.float32)
        nz, ny, nx = (s // 2 * 2 for s in shape)
        blocks = a[:nz, :ny, :nx].reshape(nz // 2, 2, ny // 2, 2, nx // 2, 2)
        np.testing.assert_allclose(block_mean2(a), blocks.mean(axis=(1, 3, 5), dtype=np.float64), rtol=1e-6, atol=1e-4)
        m = a > 250
        want = m[:nz, :ny, :nx].reshape(nz // 2, 2, ny // 2, 2, nx // 2, 2).any(axis=(1, 3, 5))
        assert np.array_equal(block_any2(m), want) and want.any() and not want.all()
        # integer HU: exact
        h = np.rint(a).astype(np.float32)
        hb = h[:nz, :ny, :nx].reshape(nz // 2, 2, ny // 2, 2, nx // 2, 2)
        assert np.array_equal(block_mean2(h), hb.mean(axis=(1, 3, 5), dtype=np.float32))


def test_peaks_equal_a_maximum_filter():
    """26-neighbour maxima above the threshold, border excluded, in (z, y, x) order, against
    scipy's maximum_filter (ties: a plateau's voxels are all peaks, as >= each neighbour)."""
    ndi = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(4)
    for shape in ((9, 11, 13), (3, 3, 3), (2, 5, 5), (20, 4, 30)):
        r = np.round(rng.random(shape) * 20).astype(np.float32)   # rounded: plateaus happen
        pk, val = _peaks(r, 5.0)
        want = (r == ndi.maximum_filter(r, size=3, mode="nearest")) & (r > 5.0)
        inner = np.zeros(shape, bool)
        inner[1:-1, 1:-1, 1:-1] = True
        idx = np.argwhere(want & inner)
        assert np.array_equal(pk, idx) and np.array_equal(val, r[tuple(idx.T)].astype(np.float64))
        if shape == (9, 11, 13):
            assert len(idx) > 10


def test_dot_response_equals_numpy_eigenvalues_and_its_floor_changes_no_peak():
    """The response against numpy's eigvalsh of the same finite-difference Hessian; with a floor,
    responses above it are unchanged, the rest are <= it, and the peaks above it are the same."""
    rng = np.random.default_rng(5)
    hu = _scene((40, 40, 40))[0].astype(np.float32) + (rng.normal(size=(40, 40, 40)) * 30).astype(np.float32)
    sm = gaussian(hu, 1.4)   # two balls (one cut by the edge), lung noise
    mask = rng.random(sm.shape) < 0.8
    s = sm.astype(np.float64)
    c = s[1:-1, 1:-1, 1:-1]
    d2 = [s[2:, 1:-1, 1:-1] - 2 * c + s[:-2, 1:-1, 1:-1], s[1:-1, 2:, 1:-1] - 2 * c + s[1:-1, :-2, 1:-1],
          s[1:-1, 1:-1, 2:] - 2 * c + s[1:-1, 1:-1, :-2]]
    zy = 0.25 * (s[2:, 2:, 1:-1] - s[2:, :-2, 1:-1] - s[:-2, 2:, 1:-1] + s[:-2, :-2, 1:-1])
    zx = 0.25 * (s[2:, 1:-1, 2:] - s[2:, 1:-1, :-2] - s[:-2, 1:-1, 2:] + s[:-2, 1:-1, :-2])
    yx = 0.25 * (s[1:-1, 2:, 2:] - s[1:-1, 2:, :-2] - s[1:-1, :-2, 2:] + s[1:-1, :-2, :-2])
    h = np.stack([np.stack([d2[0], zy, zx], -1), np.stack([zy, d2[1], yx], -1), np.stack([zx, yx, d2[2]], -1)], -2)
    ev = np.linalg.eigvalsh(h)                      # ascending: ev[..., 2] is the largest
    neg = (ev[..., 2] < 0) & mask[1:-1, 1:-1, 1:-1]
    want = np.zeros(sm.shape)
    want[1:-1, 1:-1, 1:-1] = np.where(neg, 1.44 * ev[..., 2] ** 2 / np.maximum(-ev[..., 0], 1e-30), 0.0)
    got = np.empty_like(sm)
    _dot_response(sm, mask, got, 1.44, 0.0)
    assert (want > 0).sum() > 20
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    # a floor that half of the negative-definite voxels cannot reach (their norm * |trace| / 3 is below it)
    floor = float(np.median(1.44 * -(d2[0] + d2[1] + d2[2])[neg] / 3))
    cut = np.empty_like(sm)
    _dot_response(sm, mask, cut, 1.44, floor)
    assert np.array_equal(cut[got > floor], got[got > floor]) and (cut[got <= floor] <= floor).all()
    below = (got > 0) & (got <= floor)
    assert (cut[below] == 0).mean() > 0.3  # the floor did skip work
    (pa, va), (pb, vb) = _peaks(got, floor), _peaks(cut, floor)
    assert len(pa) > 0 and np.array_equal(pa, pb) and np.array_equal(va, vb)


def test_balls_found_at_their_scale_and_tube_ignored():
    hu, balls = _scene()
    mask = np.ones(hu.shape, bool)
    b = detect_blobs(hu, mask, BlobParams(min_response=20.0))
    for c, r in balls:
        d = np.linalg.norm(b.centres_zyx - np.asarray(c), axis=1)
        inside = np.flatnonzero(d < r)
        assert len(inside) == 1, f"one candidate per ball, got {len(inside)} for r={r}"
        assert 0.7 * r <= b.radius_mm[inside[0]] <= 1.3 * r  # the extent estimates the radius
    on_tube = np.abs(b.centres_zyx[:, 0] - 50) + np.abs(b.centres_zyx[:, 1] - 15) < 4
    assert not on_tube.any()
    assert np.all(np.diff(b.response) <= 0)


def test_mask_excludes_peaks():
    hu, _ = _scene()
    assert len(detect_blobs(hu, np.zeros(hu.shape, bool))) == 0


def test_merge_by_extent_keeps_the_strongest_per_lesion():
    c = np.array([[0, 0, 0], [3, 0, 0], [30, 0, 0]], float)
    r = np.array([2.0, 6.0, 2.0])
    v = np.array([1.0, 5.0, 2.0])
    assert merge_by_extent(c, r, v)[0].tolist() == [1, 2]


def _merge_reference(centres, radius, response, factor, max_out, vol):
    """The greedy merge written plainly in numpy (the compiled loop's reference)."""
    from noduleflow.engine.blobs import lesion_radius_mm

    kept, kc, kr = [], np.zeros((0, 3)), np.zeros(0)
    for i in np.argsort(-response, kind="stable"):
        if len(kept) and (np.linalg.norm(kc - centres[i], axis=1) < factor * np.maximum(kr, radius[i])).any():
            continue
        kept.append(int(i))
        kc = np.vstack([kc, centres[i]])
        kr = np.append(kr, max(radius[i], lesion_radius_mm(vol, centres[i])) if vol is not None else radius[i])
        if max_out is not None and len(kept) >= max_out:
            break
    return kept, kr


@pytest.mark.parametrize("with_volume,max_out", [(True, None), (True, 25), (False, None)])
def test_merge_by_extent_equals_the_plain_loop(with_volume, max_out):
    """The compiled merge keeps the same blobs with the same extents as the plain numpy loop, on
    a scene of many overlapping blobs (extents measured on a smoothed volume with balls in it)."""
    hu, _ = _scene()
    vol = gaussian(hu.astype(np.float32), 1.0) if with_volume else None
    rng = np.random.default_rng(3)
    c = rng.uniform(2, np.array(hu.shape) - 3, size=(300, 3))
    r = rng.uniform(1.0, 6.0, 300)
    v = rng.uniform(0, 100, 300)
    v[:20] = v[20:40]  # ties: the stable order decides
    keep, ext = merge_by_extent(c, r, v, 1.2, max_out, extent_volume=vol)
    want_keep, want_ext = _merge_reference(c, r, v, 1.2, max_out, vol)
    assert keep.tolist() == want_keep and 10 < len(keep) <= (max_out or 300)
    np.testing.assert_array_equal(ext, want_ext)
    if with_volume:
        assert (ext > r[keep]).any()  # some extents came from the volume, not the radius


def test_union_merges_by_extent_and_interleaves():
    cnn_c = np.array([[0, 0, 0], [50, 0, 0]], float)
    blob_c = np.array([[4, 0, 0], [90, 0, 0]], float)
    u = combine(cnn_c, np.array([0.9, 0.5]), np.array([2.5, 2.5]), blob_c, np.array([80.0, 40.0]),
                np.array([6.0, 3.0]), "union", 10)
    # blob 0 overlaps CNN 0 (within its 6 mm extent): the same lesion, centred on the blob
    # interleaved: CNN 0 (on blob 0), the remaining blob, CNN 1
    assert len(u) == 3 and u.source.tolist() == [0, 1, 0]
    assert u.centres_zyx[0].tolist() == [4, 0, 0] and u.radius_mm[0] == 6.0 and u.blob_response[0] == 80.0
    assert np.isnan(u.cnn_prob[1]) and np.isnan(u.blob_response[2])
    assert len(combine(cnn_c, np.array([0.9, 0.5]), np.array([2.5, 2.5]), blob_c, np.array([80.0, 40.0]),
                       np.array([6.0, 3.0]), "union", 2)) == 2
    assert component_radius_mm(np.array([1, 1000]), 4.0).tolist() == [2.5, 15.0]


def test_bad_params():
    with pytest.raises(ConfigError, match="max_blobs"):
        BlobParams(max_blobs=0)
    with pytest.raises(ConfigError, match="shapes differ"):
        detect_blobs(np.zeros((8, 8, 8)), np.zeros((8, 8, 9), bool))


def test_window_equals_numpy_clip_and_where():
    """`window` (one parallel pass) against numpy's clip of where, for int16 and float32 input,
    with a value threshold, a keep mask, both and neither; a keep mask of another shape is refused."""
    from noduleflow.engine.blobs import window

    rng = np.random.default_rng(9)
    for dtype in (np.int16, np.float32):
        hu = (rng.normal(size=(7, 9, 11)) * 600).astype(dtype)
        keep = rng.random(hu.shape) < 0.6
        f = hu.astype(np.float32)
        np.testing.assert_array_equal(window(hu, -1000, 400), np.clip(f, -1000, 400))
        np.testing.assert_array_equal(window(hu, above=-400, fill=-850), np.where(f > -400, np.float32(-850), f))
        np.testing.assert_array_equal(window(hu, fill=-850, keep=keep), np.where(keep, f, np.float32(-850)))
        np.testing.assert_array_equal(window(hu, -1000, 400, above=100, fill=-900, keep=keep),
                                      np.clip(np.where(keep & (f <= 100), f, np.float32(-900)), -1000, 400))
        assert window(hu).dtype == np.float32 and np.array_equal(window(hu), f)
    with pytest.raises(ConfigError, match="keep must have"):
        window(hu, keep=keep[:, :, :5])
