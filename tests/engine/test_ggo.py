"""The ground-glass pass (engine.ggo) and how its candidates join stage 1."""
import numpy as np
import pytest

from noduleflow.engine.blobs import BlobParams, detect_blobs
from noduleflow.engine.contract import Stage1Spec
from noduleflow.engine.errors import ConfigError
from noduleflow.engine.ggo import GroundGlassParams, ground_glass_regions
from noduleflow.engine.preprocess import Preprocessed
from noduleflow.engine.stage1 import stage1_candidates
from noduleflow.engine.volume import Volume


def _ball(shape, centre, r):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r * r


def _lung(seed=0, gradient=True):
    """Aerated lung (-850 HU, 25 HU noise) 1 mm, a gravity gradient of +80 HU from front to back,
    a vessel (+40 HU tube of radius 2 along z) and a grid of bright vessel dots, a faint 12 mm
    ground-glass nodule (+120 HU over its surroundings) with the vessel running through it, a
    6 mm solid nodule (+30 HU) and a 9 mm ground-glass one (+150 HU) near the back."""
    rng = np.random.default_rng(seed)
    shape = (64, 80, 96)
    hu = (-850.0 + rng.normal(0, 25, shape)).astype(np.float32)
    if gradient:
        hu += np.linspace(0, 80, shape[1], dtype=np.float32)[None, :, None]
    ggo, solid, ggo2 = np.array([32, 30, 30]), np.array([32, 40, 70]), np.array([20, 66, 60])
    hu[_ball(shape, ggo, 6)] += 120.0
    hu[_ball(shape, ggo2, 4.5)] += 150.0
    hu[_ball(shape, solid, 3)] = 30.0
    zz, yy, xx = np.indices(shape)
    hu[(yy - 30) ** 2 + (xx - 33) ** 2 <= 4] = 40.0  # the vessel through the big ground-glass nodule
    for y in range(10, 75, 16):
        for x in range(12, 90, 20):
            hu[:, y:y + 2, x:x + 2] = 20.0  # more vessels (thin tubes along z)
    mask = np.zeros(shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    return hu, mask, ggo, ggo2, solid


def _first(found, c, r):
    """Rank (1-based) of the first candidate within r of c, 0 if none."""
    d = np.linalg.norm(found.centres_zyx - c, axis=1)
    hit = np.flatnonzero(d <= r)
    return int(hit[0]) + 1 if len(hit) else 0


@pytest.mark.parametrize("method", ["regions", "peaks"])
def test_finds_faint_ground_glass_with_a_vessel_through_it_and_leaves_solid_and_vessels_alone(method):
    hu, mask, ggo, ggo2, solid = _lung()
    found = ground_glass_regions(hu, mask, GroundGlassParams(method=method))
    assert _first(found, ggo, 6) in (1, 2) and _first(found, ggo2, 4.5) in (1, 2)
    assert _first(found, solid, 3) == 0            # solid lesions are the other passes'
    # the region's size is the nodule's: radius about 6 mm
    j = _first(found, ggo, 6) - 1
    assert 4.0 <= found.radius_mm[j] <= 8.0
    assert np.all(np.diff(found.response) <= 0)    # strongest first
    # what the pass is for: the Hessian blob pass ranks the vessel crossings first
    blobs = detect_blobs(hu, mask, BlobParams(min_response=10.0))
    assert _first(blobs, ggo, 6) != 1


@pytest.mark.parametrize("method", ["regions", "peaks"])
def test_the_gravity_gradient_is_not_a_region(method):
    hu, mask, *_ = _lung(gradient=True)
    flat = np.full_like(hu, -850.0)
    flat += np.linspace(0, 80, hu.shape[1], dtype=np.float32)[None, :, None]  # the gradient alone
    assert len(ground_glass_regions(flat, mask, GroundGlassParams(method=method))) == 0


def test_a_higher_contrast_threshold_drops_the_faint_region_first():
    hu, mask, ggo, ggo2, _ = _lung()
    strict = ground_glass_regions(hu, mask, GroundGlassParams(min_contrast_hu=118.0))
    assert _first(strict, ggo2, 4.5) and not _first(strict, ggo, 6)


def test_empty_and_mismatched_inputs():
    assert len(ground_glass_regions(np.full((2, 2, 2), -850.0), np.ones((2, 2, 2), bool))) == 0
    with pytest.raises(ConfigError, match="shapes differ"):
        ground_glass_regions(np.zeros((8, 8, 8)), np.ones((8, 8, 9), bool))


def test_stage1_appends_the_ground_glass_candidates_as_source_4():
    hu, mask, ggo, *_ = _lung()
    vol = Volume(np.ascontiguousarray(np.clip(hu, -1024, 3000).astype(np.int16)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    pre = Preprocessed(vol, mask, (0, 64, 0, 80, 0, 96), {})
    base = Stage1Spec(generator="blobs", max_candidates=1, blob_min_response=10.0)  # the solid nodule only
    without = stage1_candidates(pre, base)
    t = {}
    with_ggo = stage1_candidates(pre, Stage1Spec(**{**base.__dict__, "ggo_candidates": 3}), timings=t)
    assert "ground_glass" in t
    assert len(without) == 1 and len(with_ggo) == 3
    assert set(with_ggo.source[1:]) == {4}
    assert _first(with_ggo, ggo, 6) > 1 and not _first(without, ggo, 6)


def _lesion_on_dense_lung(seed=0):
    """Lung (-850 HU, 20 HU noise) with a slightly denser zone (+80 HU, 12 x 12 x 24 mm: a smudge of
    dependent lung or atelectasis) and a 9 mm ground-glass nodule (+180 HU) touching its end."""
    rng = np.random.default_rng(seed)
    shape = (64, 80, 96)
    hu = (-850.0 + rng.normal(0, 20, shape)).astype(np.float32)
    hu[26:38, 34:46, 22:46] += 80.0
    nod = np.array([32, 40, 50])
    hu[_ball(shape, nod, 4.5)] += 180.0
    mask = np.zeros(shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    return hu, mask, nod


def test_peaks_keep_a_lesion_apart_from_the_denser_lung_it_touches():
    hu, mask, nod = _lesion_on_dense_lung()
    # one region holds the lesion and the zone: its centroid is off the lesion
    regions = ground_glass_regions(hu, mask, GroundGlassParams(method="regions"))
    assert not _first(regions, nod, 4.5)
    peaks = ground_glass_regions(hu, mask, GroundGlassParams(method="peaks"))
    j = _first(peaks, nod, 4.5)
    assert j == 1
    assert 3.0 <= peaks.radius_mm[j - 1] <= 7.0


def test_peaks_rank_a_round_lesion_above_a_tube_of_the_same_contrast():
    rng = np.random.default_rng(1)
    shape = (64, 64, 64)
    hu = (-850.0 + rng.normal(0, 15, shape)).astype(np.float32)
    ball = np.array([32, 20, 20])
    hu[_ball(shape, ball, 4)] += 200.0
    zz, yy, xx = np.indices(shape)
    hu[((yy - 44) ** 2 + (xx - 44) ** 2 <= 9) & (zz > 10) & (zz < 54)] += 200.0  # a tube below dense_hu
    mask = np.zeros(shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    found = ground_glass_regions(hu, mask, GroundGlassParams(method="peaks"))
    assert _first(found, ball, 4) == 1
    on_tube = np.flatnonzero((np.abs(found.centres_zyx[:, 1] - 44) < 4) & (np.abs(found.centres_zyx[:, 2] - 44) < 4))
    assert len(on_tube) and found.response[on_tube].max() < 0.7 * found.response[0]
    # the plain regions score both alike (peak x sqrt(diameter)): the tube's region is the larger
    plain = ground_glass_regions(hu, mask, GroundGlassParams(method="regions"))
    assert _first(plain, ball, 4) != 1


def test_elongation_of_a_ball_and_a_rod():
    from noduleflow.engine.ggo import elongation

    def moments(pts):
        pts = np.asarray(pts, float)
        m1 = np.r_[len(pts), pts.sum(0)][None]
        z, y, x = pts.T
        m2 = np.array([[(z * z).sum(), (y * y).sum(), (x * x).sum(), (z * y).sum(), (z * x).sum(), (y * x).sum()]])
        return m1, m2

    ball = np.argwhere(_ball((9, 9, 9), (4, 4, 4), 4))
    rod = [(k, 0, 0) for k in range(12)]
    assert elongation(*moments(ball))[0] == pytest.approx(1.0, abs=0.05)
    assert elongation(*moments(rod))[0] > 10
    assert np.isfinite(elongation(*moments([(3, 3, 3)]))[0])


def test_peaks_candidates_survive_earlier_candidates_inside_their_extent():
    """A large ground-glass region holds vessels that earlier passes proposed, off its centre: with
    the peaks method it is still proposed (the regions method's extent rule drops it)."""
    hu, mask, ggo, *_ = _lung()
    vol = Volume(np.ascontiguousarray(np.clip(hu, -1024, 3000).astype(np.int16)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    pre = Preprocessed(vol, mask, (0, 64, 0, 80, 0, 96), {})
    base = Stage1Spec(generator="blobs", max_candidates=1, blob_min_response=10.0)
    first = stage1_candidates(pre, base).centres_zyx[0]
    # an earlier candidate 4 mm off the nodule's centre, inside its 6 mm extent
    from noduleflow.engine.stage1 import Stage1Candidates, append_distinct
    off = Stage1Candidates(np.array([ggo + [0, 4, 0], first], float), np.array([3.0, 3.0]), np.full(2, np.nan),
                           np.full(2, np.nan), np.zeros(2, np.int8))
    g = ground_glass_regions(hu, mask, GroundGlassParams(method="peaks"))
    extent = append_distinct(off, g.centres_zyx, g.radius_mm, g.response, 3, source=4)
    nested = append_distinct(off, g.centres_zyx, g.radius_mm, g.response, 3, source=4, nested=True)
    d = lambda c: np.linalg.norm(c.centres_zyx[2:] - ggo, axis=1)  # noqa: E731
    assert not (d(extent) <= 2.0).any() and (d(nested) <= 2.0).any()


def test_manifests_without_the_method_keep_regions():
    assert Stage1Spec(ggo_candidates=5).ggo_method == "regions"
    assert GroundGlassParams().method == "regions"
    with pytest.raises(ConfigError, match="ground-glass method"):
        GroundGlassParams(method="blobs")


@pytest.mark.parametrize("bad", [{"ggo_candidates": -1}, {"ggo_candidates": 2.5}, {"ggo_dense_hu": 100.0},
                                 {"ggo_min_contrast_hu": 0.0}, {"ggo_min_contrast_hu": "x"},
                                 {"ggo_method": "blobs"}])
def test_contract_refuses_bad_ground_glass_settings(bad):
    with pytest.raises(ConfigError, match="ggo"):
        Stage1Spec(**bad)


def test_params_refuse_bad_values():
    with pytest.raises(ConfigError, match="scales"):
        GroundGlassParams(sigma_mm=12.0, background_mm=10.0)
    with pytest.raises(ConfigError, match="diameters"):
        GroundGlassParams(min_diameter_mm=50.0, max_diameter_mm=40.0)
