"""The pleural blob pass (engine.stage1.wall_blobs) and how its candidates join stage 1."""
import numpy as np
import pytest

from noduleflow.engine.blobs import BlobParams, detect_blobs
from noduleflow.engine.contract import Stage1Spec
from noduleflow.engine.errors import ConfigError
from noduleflow.engine.stage1 import WALL_SIGMAS_MM, wall_blobs, wall_params


def _ball(shape, centre, r):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r * r


def _pleural_solid(r=2.0, depth=1.0, wall_x=20):
    """Aerated lung (-850 HU) beside a chest wall (+40 HU, x < ``wall_x``) with a small solid
    nodule (+40 HU) sitting on the wall (centre ``depth`` mm from its surface), an isolated one of
    the same size far from it (x = 52), and the lung mask as the preprocessing makes it: the
    threshold mask closed (the nodule's voxels are lung), then grown by 3 mm into the wall."""
    shape = (48, 48, 64)
    hu = np.full(shape, -850.0, np.float32)
    pleural = np.array((24.0, 24.0, wall_x + depth))
    isolated = np.array((24.0, 24.0, 52.0))
    hu[_ball(shape, pleural, r)] = 40.0
    hu[_ball(shape, isolated, r)] = 40.0
    hu[:, :, :wall_x] = 40.0
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, wall_x - 3:-2] = True
    return hu, mask, pleural, isolated, r


def _near(blobs, c, r):
    cs = blobs.centres_zyx
    return bool(len(cs)) and bool((np.linalg.norm(cs - c, axis=1) < r).any())


def test_wall_pass_finds_a_small_solid_nodule_on_the_pleura_the_first_pass_misses():
    hu, mask, pleural, isolated, r = _pleural_solid()
    first = detect_blobs(hu, mask, BlobParams(min_response=10.0))
    assert _near(first, isolated, r)
    # a bump on a plate: the first pass's peak sits on the wall's edge, outside the nodule's radius
    assert not _near(first, pleural, r)
    spec = Stage1Spec(blob_min_response=10.0)
    params = wall_params(spec)
    assert params == BlobParams(sigmas_mm=WALL_SIGMAS_MM, min_response=10.0)
    wall = wall_blobs(hu, mask, spec)
    assert _near(wall, pleural, r)
    # peaks are sought near the filled wall only: the isolated nodule, 32 mm from it, is the
    # first pass's
    assert not _near(wall, isolated, r)
    # with the band as wide as the volume, the isolated one is found with the first pass's response
    everywhere = wall_blobs(hu, mask, Stage1Spec(blob_min_response=10.0, wall_band_mm=0))
    assert _near(everywhere, isolated, r)
    j = int(np.argmin(np.linalg.norm(everywhere.centres_zyx - isolated, axis=1)))
    same = detect_blobs(hu, mask, params)
    k = int(np.argmin(np.linalg.norm(same.centres_zyx - isolated, axis=1)))
    assert everywhere.response[j] == pytest.approx(same.response[k], rel=1e-5)


def test_the_filled_wall_leaves_no_blob_of_its_own():
    # a plain wall (no nodule on it), its mask grown 3 mm into it as the preprocessing grows it: the
    # fill's edge is a plate, not a ball: no candidate
    hu, mask = _pleural_solid()[:2]
    hu = np.where(np.arange(hu.shape[2])[None, None, :] < 20, np.float32(40.0), np.float32(-850.0)) * np.ones_like(hu)
    assert len(wall_blobs(hu, mask, Stage1Spec(blob_min_response=10.0))) == 0


def test_contract_declares_the_wall_pass_and_stage1_reads_it():
    st1 = Stage1Spec(wall_candidates=10, wall_close_mm=5.0, wall_band_mm=8.0)
    assert (st1.wall_candidates, st1.wall_close_mm, st1.wall_shrink_mm, st1.wall_band_mm, st1.wall_fill_hu) == \
        (10, 5.0, 3.0, 8.0, -850.0)
    p = wall_params(st1)
    assert p.sigmas_mm == WALL_SIGMAS_MM and p.min_response == st1.blob_min_response
    assert Stage1Spec().wall_candidates == 0


@pytest.mark.parametrize("bad", [{"wall_candidates": -1}, {"wall_candidates": 2.5}, {"wall_close_mm": -1.0},
                                 {"wall_band_mm": 99.0}, {"wall_fill_hu": 900.0}, {"wall_shrink_mm": "x"}])
def test_contract_refuses_bad_wall_settings(bad):
    with pytest.raises(ConfigError, match="wall"):
        Stage1Spec(**bad)
