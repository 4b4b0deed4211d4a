"""Centre selection, split by scan, balanced batches and augmentation (a sphere stays a sphere)."""
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from noduleflow.engine import ConfigError
from noduleflow.engine.patches import gather
from noduleflow.trainer.data.augment import (
    AugmentSpec,
    random_transform,
    rotation_matrix,
    transformed_patch,
    transformed_patch_reference,
    trilinear,
)
from noduleflow.trainer.data.sampling import (
    balanced_batches,
    inside_any,
    negative_centres,
    positive_centres,
    split_by_scan,
)


def test_split_by_scan_disjoint_and_deterministic():
    ids = [f"scan{i}" for i in range(23)]
    tr, va = split_by_scan(ids, 0.2, seed=3)
    assert not set(tr) & set(va) and set(tr) | set(va) == set(ids)
    assert len(va) == 5
    assert (tr, va) == split_by_scan(ids, 0.2, seed=3)
    assert va != split_by_scan(ids, 0.2, seed=4)[1]
    assert split_by_scan(["a", "b"], 0.1)[1] != []  # a validation set is never empty
    with pytest.raises(ConfigError, match="1.5"):
        split_by_scan(ids, 1.5)


def _grid(n=40, step=2):
    r = np.arange(0, n, step)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def test_positive_centres_inside_nodules():
    cand = _grid()
    nod = np.array([[10.0, 12.0, 20.0, 4.0], [30.3, 5.1, 7.7, 0.6]])  # second: between grid points
    pos = positive_centres(cand, nod, (40, 40, 40))
    d = np.linalg.norm(pos[:, None] - nod[None, :, :3], axis=-1)
    big = pos[d[:, 0] <= 4.0]
    assert len(big) == len(cand[np.linalg.norm(cand - nod[0, :3], axis=1) <= 4.0]) > 10
    assert (d.min(1) <= np.maximum(nod[d.argmin(1), 3], 0.87)).all()  # fallback: the rounded centre
    assert [30, 5, 8] in pos.tolist()


def test_negative_centres_avoid_nodules_and_excluded():
    cand = _grid()
    nod = np.array([[10.0, 12.0, 20.0, 4.0]])
    exc = np.array([[30.0, 30.0, 30.0, 2.0], [5.0, 30.0, 5.0, 0.0]])
    rng = np.random.default_rng(0)
    neg, hard = negative_centres(cand, nod, exc, None, rng, margin_mm=3.0,
                                 hard_zyx=np.array([[10.5, 12, 21], [20, 20, 20], [30, 31, 30]]))
    allf = np.concatenate([nod, exc])
    assert not inside_any(neg, allf, 3.0).any()
    assert len(neg) == len(cand) - inside_any(cand, allf, 3.0).sum()
    assert hard.tolist() == [[20, 20, 20]]
    sub, _ = negative_centres(cand, nod, exc, 50, rng)
    assert len(sub) == 50 and len({tuple(c) for c in sub}) == 50 and not inside_any(sub, allf, 3.0).any()


def test_balanced_batches():
    labels = np.r_[np.ones(7), np.zeros(100)].astype(np.int8)
    batches = list(balanced_batches(labels, 10, np.random.default_rng(0)))
    assert len(batches) == 20
    for b in batches:
        assert len(b) == 10 and labels[b].sum() == 5
    negs = np.concatenate([b[labels[b] == 0] for b in batches])
    assert sorted(negs.tolist()) == list(range(7, 107))  # each negative once per epoch
    with pytest.raises(ConfigError, match="0 positives"):
        next(balanced_batches(np.zeros(5), 4, np.random.default_rng(0)))


def test_trilinear_matches_scipy():
    rng = np.random.default_rng(1)
    v = rng.integers(-1000, 400, (20, 21, 22)).astype(np.int16)
    c = rng.uniform(0, 19, (500, 3))
    ref = map_coordinates(v.astype(np.float64), c.T, order=1)
    np.testing.assert_allclose(trilinear(v, c, -1000.0), ref, atol=1e-9)
    assert trilinear(v, np.array([[-5.0, 3, 3], [3, 3, 40.0]]), -1000.0).tolist() == [-1000.0, -1000.0]


def test_patch_kernel_matches_numpy_reference():
    rng = np.random.default_rng(3)
    v = rng.integers(-1000, 400, (48, 50, 52)).astype(np.int16)
    for c in ([24, 25, 26], [2.3, 47.6, 30.1]):  # inside; reaching outside (padding)
        rot, shift = random_transform(AugmentSpec(max_angle_deg=40, max_shift_mm=3), rng)
        np.testing.assert_allclose(transformed_patch(v, c, rot, shift), transformed_patch_reference(v, c, rot, shift),
                                   atol=1e-6)


def test_identity_transform_is_engine_gather():
    v = np.random.default_rng(2).integers(-1000, 400, (50, 50, 50)).astype(np.int16)
    for c in ([25, 25, 25], [3, 47, 10]):  # the second one reaches outside: padding must agree
        np.testing.assert_array_equal(transformed_patch(v, c), gather(v, np.array([c]))[0])


def _ball(n=81, r=6.0):
    # a soft-edged ball (2 mm ramp, like a partial-volume edge) so interpolation error is small
    g = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), -1)
    d = np.linalg.norm(g - n // 2, axis=-1)
    return np.rint(-1000 + 1000 * np.clip((r + 1 - d) / 2, 0, 1)).astype(np.int16)


def test_rotation_keeps_a_sphere_a_sphere():
    v = _ball()
    ref = transformed_patch(v, (40, 40, 40))
    rng = np.random.default_rng(5)
    for _ in range(3):
        rot, _ = random_transform(AugmentSpec(max_angle_deg=30), rng)
        p = transformed_patch(v, (40, 40, 40), rot)[0]
        assert abs((p > 0.5).sum() - (ref > 0.5).sum()) / (ref > 0.5).sum() < 0.03
        com = np.argwhere(p > 0.5).mean(0)
        np.testing.assert_allclose(com, [20, 20, 20], atol=0.1)
    # a shift moves the content the other way, by the same amount, size unchanged
    p = transformed_patch(v, (40, 40, 40), None, (0, 0, 2.0))[0]
    np.testing.assert_allclose(np.argwhere(p > 0.5).mean(0), [20, 20, 18], atol=1e-6)
    assert (p > 0.5).sum() == (ref > 0.5).sum()


def test_rotation_direction():
    v = np.full((61, 61, 61), -1000, np.int16)
    v[30, 30, 30:40] = 300  # a rod along +x
    rot = rotation_matrix([1, 0, 0], 90)  # about z (zyx vectors): the rod turns into the y axis
    p = transformed_patch(v, (30, 30, 30), rot)[0]
    # output voxel o samples the input at R @ o: the content turns by R^-1, x -> +y here
    assert np.argwhere(p > 0.9).tolist() == [[20, 20 + k, 20] for k in range(10)]
    back = transformed_patch(v, (30, 30, 30), rot.T)[0]
    assert np.argwhere(back > 0.9).tolist() == [[20, 20 - k, 20] for k in range(9, -1, -1)]


def test_random_transform_within_limits():
    rng = np.random.default_rng(0)
    spec = AugmentSpec(max_shift_mm=1.5, max_angle_deg=10)
    for _ in range(50):
        rot, shift = random_transform(spec, rng)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))
        assert angle <= 10 + 1e-9 and np.abs(shift).max() <= 1.5
    with pytest.raises(ConfigError, match="120"):
        AugmentSpec(max_angle_deg=120)


def test_sample_scan_positives_reach_the_dense_grid_and_negatives_keep_away():
    from noduleflow.engine import Volume
    from noduleflow.engine.preprocess import Preprocessed
    from noduleflow.trainer.data.sampling import SamplingSpec, sample_scan

    hu = np.full((90, 90, 90), -850, np.int16)
    hu[::7, :, :] = 40  # dense sheets: candidates for the negatives
    vol = Volume(hu, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    pre = Preprocessed(vol, np.ones(hu.shape, bool), (0, 90, 0, 90, 0, 90), {})
    # a 3 mm nodule (0.35 r = 0.5 mm) and a 30 mm one (0.35 r = 5.25 mm) at world (x, y, z)
    nod = np.array([[30.0, 30.0, 30.0, 3.0], [60.0, 60.0, 60.0, 30.0]])
    spec = SamplingSpec(positives_per_nodule=400, negatives_per_scan=200)
    _, labels, _, centres = sample_scan(pre, nod, np.zeros((0, 4)), spec, np.random.default_rng(0))
    pos, neg = centres[labels == 1], centres[labels == 0]
    d_small = np.linalg.norm(pos[:400] - [30, 30, 30], axis=1)
    d_big = np.linalg.norm(pos[400:] - [60, 60, 60], axis=1)
    rounding = np.sqrt(3) / 2
    # the small nodule's positives spread to the grid's reach (3.5 mm), not 0.35 r = 0.5 mm
    assert d_small.max() <= spec.min_jitter_mm + rounding and d_small.max() > 2.5
    assert d_big.max() <= spec.max_jitter_mm + rounding
    assert len(neg) == 200
    for c, r in ((30, 1.5), (60, 15.0)):
        assert (np.linalg.norm(neg - c, axis=1) > r + 3.0).all()
