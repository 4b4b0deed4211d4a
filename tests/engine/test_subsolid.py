"""The subsolid blob pass (engine.stage1.subsolid_blobs) and how its candidates join stage 1."""
import numpy as np
import pytest

from noduleflow.engine.blobs import BlobParams, detect_blobs
from noduleflow.engine.contract import Stage1Spec
from noduleflow.engine.errors import ConfigError
from noduleflow.engine.stage1 import Stage1Candidates, append_distinct, subsolid_blobs


def _ball(shape, centre, r):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r * r


def _pleural_ggo(r=2.0, depth=0.5):
    """Aerated lung (-850 HU) with a chest wall (+40 HU, x < 20) and a faint ground-glass nodule
    (-600 HU) sitting on it (centre ``depth`` mm from the wall's surface: the part in the wall is
    wall), plus an isolated one of the same size and density."""
    shape = (48, 48, 64)
    hu = np.full(shape, -850.0, np.float32)
    pleural = (24, 24, 20 + depth)
    isolated = (24, 24, 48)
    hu[_ball(shape, pleural, r)] = -600.0
    hu[_ball(shape, isolated, r)] = -600.0
    hu[:, :, :20] = 40.0
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 17:-2] = True  # the lung mask reaches 3 mm into the wall, as after dilation
    return hu, mask, np.array(pleural), np.array(isolated), r


def _near(blobs, c, r, first=None):
    cs = blobs.centres_zyx if first is None else blobs.centres_zyx[:first]
    return bool(len(cs)) and bool((np.linalg.norm(cs - c, axis=1) < r).any())


def test_subsolid_pass_finds_a_ground_glass_nodule_on_the_pleura_the_first_pass_misses():
    hu, mask, pleural, isolated, r = _pleural_ggo()
    first = detect_blobs(hu, mask, BlobParams(min_response=10.0))
    assert _near(first, isolated, r)           # the isolated one is found by both passes
    assert not _near(first, pleural, r)        # the wall takes the pleural one's response away
    second = subsolid_blobs(hu, mask)
    assert _near(second, pleural, r) and _near(second, isolated, r)
    # the flattening changes nothing below the solid threshold: same response on the isolated one
    j = int(np.argmin(np.linalg.norm(second.centres_zyx - isolated, axis=1)))
    k = int(np.argmin(np.linalg.norm(first.centres_zyx - isolated, axis=1)))
    assert second.response[j] == pytest.approx(first.response[k], rel=0.05)


def test_solid_lesions_vanish_from_the_subsolid_pass():
    shape = (40, 40, 40)
    hu = np.full(shape, -850.0, np.float32)
    c = np.array([20, 20, 20])
    hu[_ball(shape, c, 3)] = 30.0
    mask = np.ones(shape, bool)
    assert _near(detect_blobs(hu, mask, BlobParams(min_response=10.0)), c, 3)
    assert not _near(subsolid_blobs(hu, mask), c, 3)


def _cands(centres, radius):
    n = len(radius)
    return Stage1Candidates(np.asarray(centres, float).reshape(-1, 3), np.asarray(radius, float), np.full(n, np.nan),
                            np.arange(n, 0, -1, dtype=float), np.ones(n, np.int8))


def test_append_distinct_skips_what_is_already_there_and_caps():
    first = _cands([[10, 10, 10], [30, 30, 30]], [4.0, 3.0])
    new_c = np.array([[12, 10, 10],    # inside the first candidate's extent: skipped
                      [50, 50, 50],    # new
                      [50, 52, 50],    # inside the one just added (extent 3): skipped
                      [70, 70, 70],    # new
                      [90, 90, 90]])   # new, but over the cap
    out = append_distinct(first, new_c, np.array([3.0, 3.0, 3.0, 3.0, 3.0]), np.array([9.0, 8, 7, 6, 5]), n=2)
    assert len(out) == 4
    np.testing.assert_array_equal(out.centres_zyx[2:], [[50, 50, 50], [70, 70, 70]])
    np.testing.assert_array_equal(out.source, [1, 1, 2, 2])
    np.testing.assert_array_equal(out.blob_response[2:], [8.0, 6.0])
    assert np.isnan(out.cnn_prob[2:]).all()
    assert len(append_distinct(first, new_c, np.full(5, 3.0), np.ones(5), n=0)) == 2


@pytest.mark.parametrize("bad", [{"subsolid_candidates": -1}, {"subsolid_candidates": 1.5},
                                 {"subsolid_solid_hu": 900.0}, {"subsolid_fill_hu": -300.0},
                                 {"subsolid_min_response": -1.0}, {"subsolid_solid_hu": "x"}])
def test_contract_refuses_bad_subsolid_settings(bad):
    with pytest.raises(ConfigError, match="subsolid"):
        Stage1Spec(**bad)


def test_contract_without_subsolid_settings_means_off():
    assert Stage1Spec().subsolid_candidates == 0
    assert Stage1Spec(subsolid_candidates=50).subsolid_candidates == 50
