"""Scan cache (hit / miss / invalidation) and the patch stream on small phantoms."""
import json
import subprocess
import sys

import numpy as np
import pytest

import noduleflow.trainer.data.dataset as dataset_module
import noduleflow.trainer.data.phantoms as phantoms_module
import noduleflow.trainer.data.sources as sources_module
from noduleflow.engine import ConfigError
from noduleflow.engine.candidates import CandidateRules
from noduleflow.engine.patches import gather
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom
from noduleflow.synthetic.synth import write_cohort
from noduleflow.trainer.data.annotations import Candidate, Finding, read_findings
from noduleflow.trainer.data.cache import CacheSpec, ScanCache
from noduleflow.trainer.data.dataset import PatchStream, StreamSpec, to_patchset
from noduleflow.trainer.data.patchset import PatchSet
from noduleflow.trainer.data.sources import ScanSource, sources_from_folder, with_hard_negatives

SMALL = dict(shape_zyx=(56, 128, 128), spacing_zyx_mm=(5.0, 2.5, 2.5))


@pytest.fixture(scope="module")
def phantoms():
    out = []
    for seed in (11, 12):
        ph = generate_phantom(seed, params=PhantomParams(n_nodules=3, n_excluded=2, min_nodule_mm=6.0), **SMALL)
        out.append(ph)
    return out


def _finding(uid, n):
    return Finding(uid, tuple(float(v) for v in n.center_xyz_mm), float(n.diameter_mm))


def _sources(phantoms):
    return [ScanSource(ph.volume.series_uid, (lambda v=ph.volume: v),
                       tuple(_finding(ph.volume.series_uid, n) for n in ph.nodules),
                       tuple(_finding(ph.volume.series_uid, n) for n in ph.excluded)) for ph in phantoms]


def _never():
    raise AssertionError("cache hit expected, but the scan was loaded")


def test_cache_hit_miss_invalidation(tmp_path, phantoms):
    vol = phantoms[0].volume
    cache = ScanCache(tmp_path)
    a = cache.get("scan-a", lambda: vol)
    assert (cache.hits, cache.misses) == (0, 1)
    assert isinstance(a.volume.hu, np.memmap) and a.volume.hu.dtype == np.int16
    assert a.volume.spacing_zyx_mm == (1.0, 1.0, 1.0) and a.mask.dtype == bool and a.mask.shape == a.volume.shape
    assert len(a.candidates) > 0 and a.mask[tuple(np.asarray(a.candidates).T)].all()
    # a new cache object on the same folder and spec: a hit, nothing loaded
    again = ScanCache(tmp_path)
    b = again.get("scan-a", _never)
    assert (again.hits, again.misses) == (1, 0)
    np.testing.assert_array_equal(a.volume.hu, b.volume.hu)
    np.testing.assert_array_equal(a.candidates, b.candidates)
    assert b.volume.origin_xyz_mm == a.volume.origin_xyz_mm and b.volume.series_uid == vol.series_uid
    # a changed spec is a miss, and the stale entry of that scan is removed
    changed = ScanCache(tmp_path, CacheSpec(rules=CandidateRules(stride=3)))
    assert changed.digest != cache.digest and not changed.has("scan-a")
    c = changed.get("scan-a", lambda: vol)
    assert changed.misses == 1 and len(c.candidates) < len(a.candidates)
    assert [p.name for p in (tmp_path / "scan-a").iterdir()] == [changed.digest]
    assert not ScanCache(tmp_path).has("scan-a")
    # a half-written entry (no meta.json) is a miss and is replaced; other writers' temp folders stay
    half = cache.entry_dir("scan-b")
    half.mkdir(parents=True)
    (half / "hu.npy").write_bytes(b"truncated")
    (half.parent / ".tmp-other").mkdir()
    assert not cache.has("scan-b")
    assert cache.get("scan-b", lambda: vol).volume.shape == a.volume.shape
    assert (half.parent / ".tmp-other").is_dir()
    # ids that are not file names are kept apart
    assert cache.entry_dir("a/b") != cache.entry_dir("a_b")


def test_patch_stream_training(tmp_path, phantoms):
    sources = _sources(phantoms)
    spec = StreamSpec(negatives_per_scan=16, batch_size=8)
    stream = PatchStream(sources, ScanCache(tmp_path), spec, training=True, seed=1)
    idx = stream.index
    assert set(np.unique(idx.scan)) == {0, 1}
    # positives lie inside a nodule (before augmentation), negatives outside every finding + margin
    for i, src in enumerate(sources):
        sc = stream.scan(i)
        nod = np.array([[*sc.volume.world_to_voxel(np.array(f.center_xyz_mm)), f.radius_mm] for f in src.nodules])
        exc = np.array([[*sc.volume.world_to_voxel(np.array(f.center_xyz_mm)), f.radius_mm]
                        for f in src.excluded]).reshape(-1, 4)
        m = idx.scan == i
        pos, neg = idx.centre_zyx[m & (idx.label == 1)], idx.centre_zyx[m & (idx.label == 0)]
        d_pos = np.linalg.norm(pos[:, None] - nod[None, :, :3], axis=-1)
        assert len(pos) >= len(nod) and (d_pos <= nod[None, :, 3] + 0.87).any(1).all()
        allf = np.concatenate([nod, exc])
        d_neg = np.linalg.norm(neg[:, None] - allf[None, :, :3], axis=-1)
        assert len(neg) == 16 and (d_neg > allf[None, :, 3] + 3.0).all()
    items = list(stream)
    assert len(items) == len(stream) > 0
    labels = np.array([y for _, y, _ in items])
    assert (labels.reshape(-1, 8).sum(1) == 4).all()  # balanced batches
    p, y, loc = items[0]
    assert p.shape == (1, 41, 41, 41) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    assert loc.shape == (3,) and loc.dtype == np.float32
    assert all(((q >= 0) & (q <= 1)).all() for _, _, q in items)
    # a new epoch reshuffles; the same epoch repeats exactly
    first = stream.order()
    stream.set_epoch(1)
    assert not np.array_equal(first, stream.order())
    stream.set_epoch(0)
    np.testing.assert_array_equal(first, stream.order())
    # shards partition the epoch
    assert sum(1 for _ in stream.iter_shard(0, 2)) + sum(1 for _ in stream.iter_shard(1, 2)) == len(stream)


def test_patch_stream_eval_is_engine_gather_and_hard_negatives(tmp_path, phantoms):
    src = _sources(phantoms[:1])
    uid = src[0].scan_id
    near = src[0].nodules[0].center_xyz_mm
    stream0 = PatchStream(src, ScanCache(tmp_path), StreamSpec(negatives_per_scan=5), training=False)
    sc = stream0.scan(0)
    far = tuple(sc.volume.voxel_to_world(np.asarray(sc.candidates[len(sc.candidates) // 2], float)))
    hard = with_hard_negatives(src, [Candidate(uid, far, 0), Candidate(uid, near, 0), Candidate(uid, far, 1),
                                     Candidate("other", far, 0)])
    assert hard[0].hard_negatives_xyz_mm == (far, near)
    stream = PatchStream(hard, ScanCache(tmp_path), StreamSpec(negatives_per_scan=5), training=False)
    idx = stream.index
    assert idx.hard.sum() == 1 and idx.label[idx.hard].tolist() == [0]  # the one on a nodule is dropped
    items = list(stream)
    assert len(items) == len(idx.label)  # evaluation: every sample once, in index order
    for k in (0, len(items) - 1):
        expect = gather(sc.volume.hu, idx.centre_zyx[k][None])[0]
        np.testing.assert_array_equal(items[k][0], expect)
    ps = to_patchset(stream)
    assert len(ps) == len(items) and ps.patches.dtype == np.uint8 and ps.labels.tolist() == [y for _, y, _ in items]
    np.testing.assert_allclose(ps.patches[0] / 255.0, items[0][0], atol=0.5 / 255 + 1e-6)
    assert (ps.scan == 0).all()
    with pytest.raises(ConfigError, match="duplicate"):
        PatchStream(src + src, ScanCache(tmp_path))


def test_torch_wrapper(tmp_path, phantoms):
    torch = pytest.importorskip("torch")
    from noduleflow.trainer.data.torch_dataset import TorchPatchDataset

    stream = PatchStream(_sources(phantoms[:1]), ScanCache(tmp_path), StreamSpec(negatives_per_scan=6, batch_size=4))
    loader = torch.utils.data.DataLoader(TorchPatchDataset(stream), batch_size=4)
    x, y, loc = next(iter(loader))
    assert x.shape == (4, 1, 41, 41, 41) and x.dtype == torch.float32 and y.sum().item() == 2
    assert loc.shape == (4, 3)


@pytest.mark.parametrize("fmt", ["mhd", "dicom"])
def test_synth_folder_sources(tmp_path, fmt):
    write_cohort(tmp_path, 2, seed=21, fmt=fmt, params=PhantomParams(n_nodules=2, n_excluded=1), progress=False,
                 **SMALL)
    src = sources_from_folder(tmp_path)
    uids = {f.series_uid for f in read_findings(tmp_path / "annotations.csv")}
    assert len(src) == 2 and {s.scan_id for s in src} == uids
    assert all(len(s.nodules) == 2 and len(s.excluded) == 1 for s in src)
    assert src[0].load().series_uid == src[0].scan_id


def test_data_modules_do_not_import_torch():
    names = ", ".join(f"noduleflow.trainer.data.{m}" for m in
                      ("dataset", "sources", "patchset", "phantoms", "lidc", "luna16", "cache"))
    code = f"import {names}, sys, json; print(json.dumps(sorted(sys.modules)))"
    mods = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                     text=True).stdout.strip().splitlines()[-1])
    assert "noduleflow.trainer.data.dataset" in mods and "torch" not in mods


def test_moved_names_stay_importable_from_their_old_modules():
    for name in ("ScanSource", "sources_from_records", "with_hard_negatives", "sources_from_folder"):
        assert getattr(dataset_module, name) is getattr(sources_module, name)
    assert phantoms_module.PatchSet is PatchSet
