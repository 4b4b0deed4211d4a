"""Post-processing of scored points: sigmoid, NMS, components, centre refinement, clustering."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine import ConfigError
from noduleflow.engine.config import DetectorConfig
from noduleflow.engine.postprocess import cluster_points, components, nms, refine_centre, sigmoid, smooth


def test_sigmoid_is_the_logistic_function_without_overflow_warnings():
    x = np.array([-1000.0, -5.0, 0.0, 2.0, 1000.0])
    with np.errstate(all="raise"):
        p = sigmoid(x)
    np.testing.assert_allclose(p, [0.0, 1 / (1 + np.exp(5.0)), 0.5, 1 / (1 + np.exp(-2.0)), 1.0], rtol=1e-15)
    assert p.dtype == np.float64 and sigmoid(3).shape == ()


def test_nms_merges_and_suppresses():
    pts = np.array([[0, 0, 0], [0, 0, 4], [0, 0, 30], [0, 0, 8]])
    out = nms(pts, np.array([0.9, 0.9, 0.5, 0.2]), top_k=5, nms_radius=10, merge_radius=5)
    assert len(out) == 2
    np.testing.assert_allclose(out[0][0], [0, 0, 2])  # two equal peaks 4 mm apart: centre between
    assert out[1][1] == 0.5


def test_components_join_neighbours_on_the_grid_and_rank_by_peak():
    # stride-4 lattice with offset 1: a run of three points, a lone point, a point below threshold
    pts = np.array([[1, 1, 1], [1, 1, 5], [1, 1, 9], [21, 21, 21], [41, 41, 41], [1, 5, 13]])
    probs = np.array([0.6, 0.9, 0.6, 0.95, 0.3, 0.7])
    out = components(pts, probs, top_k=10, stride=4, min_prob=0.5)
    # [1,5,13] touches the run only diagonally: not 6-connected, its own component
    assert [round(p, 2) for _, p, _ in out] == [0.95, 0.9, 0.7]
    assert [n for _, _, n in out] == [1, 3, 1]
    np.testing.assert_allclose(out[0][0], [21, 21, 21])
    w = probs[:3] ** 2
    np.testing.assert_allclose(out[1][0], (pts[:3] * w[:, None]).sum(0) / w.sum())
    assert components(pts, probs, top_k=1, stride=4)[0][1] == 0.95
    assert components(pts, np.full(len(pts), 0.1), top_k=5, stride=4) == []
    with pytest.raises(ConfigError, match="clustering"):
        DetectorConfig(clustering="dbscan")


@pytest.mark.parametrize("sigma", [1.0, 1.5, 3.0])
def test_blob_smoothing_equals_scipy_gaussian(sigma):
    from scipy import ndimage

    a = np.random.default_rng(1).normal(size=(31, 29, 33))
    ref = ndimage.gaussian_filter(a, sigma, mode="constant", truncate=3.0)
    np.testing.assert_allclose(smooth(a, sigma), ref, atol=1e-12)


@pytest.mark.parametrize("wall", [False, True])
def test_refine_centre_finds_the_ball_not_the_wall(wall):
    z, y, x = np.mgrid[:41, :41, :41]
    hu = np.full((41, 41, 41), -850, np.int16)
    hu[(z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 9] = 40      # a 6 mm solid nodule
    if wall:
        hu[:, :, 24:] = 40                                            # chest wall touching it
    got = refine_centre(hu, (21.0, 22.0, 21.4))
    np.testing.assert_allclose(got, [20, 20, 20], atol=1.0)
    # a density centroid over the same neighbourhood is pulled into the wall
    if wall:
        box = hu[9:34, 10:35, 9:34].astype(float) + 600
        w = np.clip(box, 0, None)
        cx = (x[9:34, 10:35, 9:34] * w).sum() / w.sum()
        assert cx > 22


def test_cluster_points_refines_and_checks_the_mask():
    """Two scored components on a stride-4 grid: the one outside the mask is dropped, the other is
    refined onto the ball of the volume."""
    hu = np.full((48, 48, 48), -850, np.int16)
    z, y, x = np.mgrid[:48, :48, :48]
    hu[(z - 21) ** 2 + (y - 21) ** 2 + (x - 22) ** 2 <= 9] = 40
    mask = np.zeros(hu.shape, bool)
    mask[:, :, :32] = True
    pts = np.array([[20, 20, 20], [20, 20, 24], [20, 20, 40]])
    probs = np.array([0.95, 0.92, 0.99])
    cfg = DetectorConfig(top_k=5)
    got = cluster_points(pts, probs, np.log(probs / (1 - probs)), cfg, stride=4, dense_stride=4, hu=hu, mask=mask)
    assert len(got) == 1 and got.prob[0] == 0.95 and got.n_points[0] == 2
    np.testing.assert_allclose(got.centres_zyx[0], [21, 21, 22], atol=1.0)
    raw = cluster_points(pts, probs, np.zeros(3), cfg.replace(refine=False, in_mask=False), stride=4)
    assert raw.prob.tolist() == [0.99, 0.95] and raw.n_points.tolist() == [1, 2]
