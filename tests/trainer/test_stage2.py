"""Stage 2: cohort seeds and cache, candidate labels, context patches, the stage-2 net."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine import ConfigError
from noduleflow.engine.context import ContextVolume, downsample2
from noduleflow.trainer.data.cohort import COHORTS, CohortCache, cohort_seeds
from noduleflow.trainer.data.stage2 import label_candidates


def test_cohorts_are_disjoint_and_large_enough():
    names = list(COHORTS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(COHORTS[a]) & set(COHORTS[b]), (a, b)
    assert len(COHORTS["heldout"]) >= 40
    assert cohort_seeds("5-7") == [5, 6, 7]
    with pytest.raises(ConfigError, match="'nope'"):
        cohort_seeds("nope")


def test_cohort_cache_roundtrip(tmp_path):
    cache = CohortCache(tmp_path, phantom_kwargs={"shape_zyx": (48, 96, 96), "spacing_zyx_mm": (2.5, 3.0, 3.0)})
    assert not cache.has(7)
    a = cache.get(7)
    assert cache.has(7)
    b = cache.get(7)
    assert a.series_uid == b.series_uid and np.array_equal(np.asarray(a.pre.volume.hu), np.asarray(b.pre.volume.hu))
    assert a.pre.volume.spacing_zyx_mm == (1.0, 1.0, 1.0) and a.pre.mask.shape == a.pre.volume.shape
    assert a.xyzd().shape == (len(a.nodules), 4)
    assert all(n.kind and n.location for n in a.nodules)


def test_label_candidates():
    nod = np.array([[0, 0, 0, 5.0]])
    exc = np.array([[40, 0, 0, 1.0]])
    c = np.array([[1, 0, 0], [7, 0, 0], [20, 0, 0], [41, 0, 0]], float)
    assert label_candidates(c, nod, exc, 3.0).tolist() == [1, -1, 0, -1]


def test_context_patches_centre_and_scale():
    hu = np.full((90, 90, 90), -1000, np.int16)
    hu[40:50, 40:50, 40:50] = 400  # a 10 mm cube centred at 44.5
    p = ContextVolume(hu).patches(np.array([[44.5, 44.5, 44.5]]))
    assert p.shape == (1, 2, 41, 41, 41) and p.dtype == np.float32
    # 1 mm channel: about 10 bright voxels across; 2 mm channel: about 5
    assert 9 <= (p[0, 0, 20, 20] > 0.5).sum() <= 11
    assert 4 <= (p[0, 1, 20, 20] > 0.5).sum() <= 6
    assert downsample2(hu).shape == (45, 45, 45)


def test_stage2_net_starts_as_stage1():
    torch = pytest.importorskip("torch")
    from noduleflow.trainer.models import build_model
    from noduleflow.trainer.models.stage2 import from_stage1

    torch.manual_seed(0)
    s1 = build_model("3d-1").eval()
    s2 = from_stage1(s1.state_dict()).eval()
    x = torch.rand(3, 2, 41, 41, 41)
    with torch.no_grad():
        assert torch.allclose(s2(x), s1(x[:, :1]), atol=1e-5)
    s2.train()
    s2(x).sum().backward()
    assert s2.stem[0].weight.grad[:, 1].abs().sum() > 0  # the context channel learns


def _wall_scan(pleural_x: float, pleural_hu: float):
    """A scan for the supplement tests: aerated lung beside a chest wall (+40 HU, x < 20), a
    2 mm-radius nodule of ``pleural_hu`` on it (centre x = ``pleural_x``), an isolated solid
    3 mm-radius one, and the lung mask grown 3 mm into the wall as the preprocessing grows it."""
    from types import SimpleNamespace

    import numpy as np

    from noduleflow.engine.preprocess import Preprocessed
    from noduleflow.engine.volume import Volume

    shape = (48, 48, 64)
    hu = np.full(shape, -850.0, np.float32)
    zz, yy, xx = np.indices(shape)
    hu[(zz - 24) ** 2 + (yy - 24) ** 2 + (xx - pleural_x) ** 2 <= 2.0 ** 2] = pleural_hu
    hu[(zz - 24) ** 2 + (yy - 10) ** 2 + (xx - 48) ** 2 <= 3 ** 2] = 40.0   # isolated: the first pass's
    hu[:, :, :20] = 40.0
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 17:-2] = True
    vol = Volume(hu.astype(np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    nodules = np.array([[pleural_x, 24.0, 24.0, 4.0], [48.0, 10.0, 24.0, 6.0]])  # x, y, z, diameter
    return SimpleNamespace(pre=Preprocessed(vol, mask, (0, 48, 0, 48, 0, 64), {}),
                           xyzd=lambda excluded=False: np.zeros((0, 4)) if excluded else nodules)


def test_subsolid_supplement_keeps_only_that_pass_and_labels_it():
    """`scan_examples` with the supplement's spec: only candidates of the subsolid pass, the pleural
    ground-glass nodule (which only that pass finds) a positive, no jittered positives."""
    import numpy as np

    from noduleflow.engine.contract import Stage1Spec
    from noduleflow.trainer.data.stage2 import Stage2DataSpec, scan_examples

    scan = _wall_scan(20.5, -600.0)
    spec = Stage2DataSpec(stage1=Stage1Spec(generator="blobs", max_candidates=200, blob_min_response=10.0,
                                            subsolid_candidates=50),
                          jittered_per_nodule=0, source=2)
    p, y, rank = scan_examples(None, scan, spec, np.random.default_rng(0))
    assert p.shape[1:] == (2, 41, 41, 41) and p.dtype == np.uint8
    assert y.sum() >= 1 and (rank >= 0).all()
    # every kept candidate comes after the first pass's list (the subsolid pass is appended)
    first = Stage2DataSpec(stage1=Stage1Spec(generator="blobs", max_candidates=200, blob_min_response=10.0),
                           jittered_per_nodule=0)
    from noduleflow.engine.stage1 import stage1_candidates

    assert rank.min() >= len(stage1_candidates(scan.pre, first.stage1))
    _, y1, _ = scan_examples(None, scan, first, np.random.default_rng(0))
    assert y1.sum() == 1  # the first pass finds the solid nodule only


def test_wall_supplement_keeps_only_the_pleural_pass_and_labels_it():
    """`scan_examples` with the pleural supplement's spec (as ``--wall N`` builds it, here with a
    first-pass cap of 1): only the pleural pass's candidates, no jittered positives. The small
    solid nodule on the wall answers the first pass weakly (its peak on the wall's edge, below the
    isolated nodule's: capped out, as in a scan with a hundred stronger blobs); the pleural pass
    finds it at its centre, a positive."""
    import numpy as np

    from noduleflow.engine.contract import Stage1Spec
    from noduleflow.trainer.data.stage2 import Stage2DataSpec, scan_examples

    scan = _wall_scan(21.0, 40.0)
    s1 = Stage1Spec(generator="blobs", max_candidates=1, blob_min_response=10.0, subsolid_candidates=50,
                    wall_candidates=30)
    p, y, rank = scan_examples(None, scan, Stage2DataSpec(stage1=s1, jittered_per_nodule=0, source=3),
                               np.random.default_rng(0))
    assert p.shape[1:] == (2, 41, 41, 41) and y.sum() == 1 and (rank >= 0).all()
    first = Stage2DataSpec(stage1=Stage1Spec(generator="blobs", max_candidates=1, blob_min_response=10.0),
                           jittered_per_nodule=0)
    _, y1, r1 = scan_examples(None, scan, first, np.random.default_rng(0))
    assert y1.sum() == 1 and rank.min() >= len(r1)  # the first pass: the isolated nodule; the pleural after


def test_hard_pool_picks_the_highest_scoring_negatives():
    torch = pytest.importorskip("torch")
    from noduleflow.trainer.stage2_train import hard_pool

    class Mean(torch.nn.Module):  # logit = mean intensity: the brightest patches score highest
        def forward(self, x):
            return x.mean(dim=(1, 2, 3, 4))

    levels = np.array([5, 200, 30, 250, 90, 10, 180], np.uint8)
    x = np.broadcast_to(levels[:, None, None, None, None], (7, 2, 41, 41, 41)).copy()
    neg = np.array([0, 2, 3, 4, 6])  # 1 and 5 are positives
    assert hard_pool(Mean(), x, neg, 2).tolist() == [3, 6]
    assert sorted(hard_pool(Mean(), x, neg, 10).tolist()) == sorted(neg.tolist())


def test_hard_pool_subset_keeps_the_previous_pool_and_draws_others():
    """``score`` > 0: only the previous pool and ``score`` random others are scored; the previous
    pool always competes, and negatives outside the draw cannot enter."""
    torch = pytest.importorskip("torch")
    from noduleflow.trainer.stage2_train import hard_pool

    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(1, 2, 3, 4))

    levels = np.arange(20, dtype=np.uint8) * 10
    x = np.broadcast_to(levels[:, None, None, None, None], (20, 2, 41, 41, 41)).copy()
    neg = np.arange(20)
    prev = np.array([0, 1])  # the weakest two, kept from an earlier scoring
    top = hard_pool(Mean(), x, neg, 3, score=2, previous=prev, rng=np.random.default_rng(1))
    drawn = hard_pool(Mean(), x, neg, 20, score=2, previous=prev, rng=np.random.default_rng(1))
    assert len(drawn) == 4 and set(prev) <= set(drawn.tolist())  # pool + 2 drawn, nothing else scored
    assert top.tolist() == sorted(drawn.tolist(), reverse=True)[:3]
    # score >= the number of negatives: every negative is scored, as without it
    assert hard_pool(Mean(), x, neg, 2, score=50, previous=prev).tolist() == [19, 18]


def test_load_many_concatenates_in_order(tmp_path):
    from noduleflow.trainer.data.stage2 import load, load_many

    for d, seed, n in (("a", 1, 2), ("a", 2, 3), ("b", 1, 1)):
        (tmp_path / d).mkdir(exist_ok=True)
        p = np.full((n, 2, 41, 41, 41), seed * 10 + n, np.uint8)
        np.savez(tmp_path / d / f"{seed}.npz", patches=p, labels=np.arange(n, dtype=np.int8),
                 rank=np.zeros(n, np.int32), seed=np.int64(seed))
    x, y, s = load_many([(tmp_path / "a", [2, 1]), (tmp_path / "b", [1])])
    assert x.shape == (6, 2, 41, 41, 41)
    assert x[:, 0, 0, 0, 0].tolist() == [23, 23, 23, 12, 12, 11]
    assert y.tolist() == [0, 1, 2, 0, 1, 0] and s.tolist() == [2, 2, 2, 1, 1, 1]
    x1, y1, s1 = load(tmp_path / "a", [1])
    assert x1.shape[0] == 2 and s1.tolist() == [1, 1]
    assert load_many([])[0].shape == (0, 2, 41, 41, 41)


def test_average_state_means_floats_and_keeps_counters():
    torch = pytest.importorskip("torch")
    from noduleflow.trainer.stage2_average import average_state

    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    m = average_state([a, b])
    assert torch.equal(m["w"], torch.tensor([2.0, 4.0])) and int(m["n"]) == 9
    with pytest.raises(ValueError):
        average_state([a, {"w": a["w"]}])


def test_recompute_bn_estimates_the_data_statistics():
    """After `recompute_bn` the stem's batch norm holds the mean of its input's activations (not
    the stale statistics it had), so eval-mode outputs match a train-mode pass over the same data."""
    torch = pytest.importorskip("torch")
    from noduleflow.trainer.models import build_model
    from noduleflow.trainer.stage2_average import recompute_bn

    torch.manual_seed(0)
    model = build_model("ms-3d1")
    bn = model.stem[1]
    bn.running_mean.fill_(100.0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(16, 2, 41, 41, 41), dtype=np.uint8)
    y = np.r_[np.ones(8), np.zeros(8)].astype(np.int8)
    recompute_bn(model, x, y, batches=4, batch_size=8)
    with torch.no_grad():
        act = model.stem[0](torch.from_numpy(x.astype(np.float32) / 255.0))
    expect = act.mean(dim=(0, 2, 3, 4))
    assert not model.training
    assert torch.allclose(bn.running_mean, expect, rtol=0.05, atol=1e-3)


def test_stage2_train_resume_keeps_the_hard_pool(tmp_path, monkeypatch):
    """A run resumed with the same --out reuses its saved hard-negative pool instead of starting
    without one: with --rescore-every 2, epoch 2 of the resumed run scores nothing."""
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    import noduleflow.trainer.stage2_train as st

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for seed in [1000, 1001, *range(2000, 2006)]:
        y = np.array([1, 1, 0, 0, 0, 0], np.int8)
        p = rng.integers(0, 255, size=(len(y), 2, 41, 41, 41), dtype=np.uint8)
        np.savez(data / f"{seed}.npz", patches=p, labels=y, rank=np.arange(len(y), dtype=np.int32),
                 seed=np.int64(seed))
    calls = []
    real = st.hard_pool

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(st, "hard_pool", counting)
    out = tmp_path / "run"
    common = ["--data", str(data), "--out", str(out), "--train-seeds", "1000-1001", "--steps", "1",
              "--batch-size", "4", "--threads", "1", "--min-train-scans", "1", "--hard-negatives", "1.0",
              "--hard-pool", "3", "--rescore-every", "2"]
    assert st.main(common + ["--epochs", "1"]) == 0
    assert len(calls) == 1
    with np.load(out / "hard_pool.npz") as z:
        pool, n = z["pool"], int(z["negatives"])
    assert n == 8 and len(pool) == 3
    assert st.main(common + ["--epochs", "2"]) == 0
    assert len(calls) == 1  # epoch 2 (odd, 0-based 1) used the saved pool
    assert len((out / "train_log.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    assert st.main(common + ["--epochs", "3"]) == 0
    assert len(calls) == 2  # epoch 3 (0-based 2) rescored on schedule
