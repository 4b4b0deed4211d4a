"""`noduleflow train` on a LUNA16 folder, end to end through the CLI: split by fold, patches
streamed from the scan cache, the cache reused by a second run, fold errors."""
import csv
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
sitk = pytest.importorskip("SimpleITK")

from noduleflow.cli import main  # noqa: E402
from noduleflow.engine import ConfigError  # noqa: E402
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom  # noqa: E402
from noduleflow.trainer.commands.train import is_luna16_folder  # noqa: E402

SMALL = dict(shape_zyx=(60, 112, 112), spacing_zyx_mm=(2.5, 2.0, 2.0))


def _row(uid, xyz, last):
    return [uid, *(f"{v:.3f}" for v in xyz), last]


@pytest.fixture(scope="module")
def luna(tmp_path_factory):
    """subset0..2, one phantom scan each (.mhd), with annotations.csv, annotations_excluded.csv
    and candidates_V2.csv (class 1 at each nodule, class 0 rows offset from them, one class-0 row
    at an excluded finding that must never become a negative)."""
    root = tmp_path_factory.mktemp("luna16")
    ann, exc, cand, info = [], [], [], {}
    for fold, seed in enumerate((21, 22, 23)):
        params = PhantomParams(n_nodules=2, n_excluded=1, min_nodule_mm=6.0, max_nodule_mm=9.0)
        ph = generate_phantom(seed, params=params, **SMALL)
        v = ph.volume
        uid = f"1.3.6.1.4.1.14519.5.2.1.{fold}"
        img = sitk.GetImageFromArray(np.asarray(v.hu))
        img.SetSpacing(tuple(float(s) for s in v.spacing_zyx_mm[::-1]))
        img.SetOrigin(tuple(float(o) for o in v.origin_xyz_mm))
        (root / f"subset{fold}").mkdir()
        sitk.WriteImage(img, str(root / f"subset{fold}" / f"{uid}.mhd"))
        for n in ph.nodules:
            ann.append(_row(uid, n.center_xyz_mm, f"{n.diameter_mm:.2f}"))
            cand.append(_row(uid, n.center_xyz_mm, 1))
            cand.append(_row(uid, np.add(n.center_xyz_mm, (25.0, 0.0, 0.0)), 0))
        for n in ph.excluded:
            exc.append(_row(uid, n.center_xyz_mm, "-1"))
            cand.append(_row(uid, n.center_xyz_mm, 0))
        info[fold] = (uid, len(ph.nodules))
    for name, header, rows in (("annotations.csv", "diameter_mm", ann),
                               ("annotations_excluded.csv", "diameter_mm", exc),
                               ("candidates_V2.csv", "class", cand)):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seriesuid", "coordX", "coordY", "coordZ", header])
            w.writerows(rows)
    return root, info


def _args(root, out, *extra):
    return ["train", "--data", str(root), "--model", "3d-1", "--epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "4", "--negatives-per-scan", "12", "--out", str(out), *extra]


def _cache_files(cache):
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}


def test_train_luna16_folds_and_cache(luna, tmp_path, capsys):
    root, info = luna
    assert is_luna16_folder(root) and not is_luna16_folder(root / "subset0")
    out = tmp_path / "run"
    assert main(_args(root, out, "--val-fold", "2")) == 0
    text = capsys.readouterr().out
    # checkpoint and log
    assert (out / "best.safetensors").is_file() and (out / "last.safetensors").is_file()
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"] and np.isfinite(float(rows[0]["train_loss"]))
    # split by fold: validation is exactly subset2's scan, training subsets 0 and 1
    split = json.loads((out / "split.json").read_text())
    assert split == {"train": [info[0][0], info[1][0]], "val": [info[2][0]], "test": []}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["val_folds"] == [2] and summary["data"]["test_folds"] == []
    assert (summary["train_scans"], summary["val_scans"]) == (2, 1)
    assert summary["data"]["candidates_file"] == "candidates_V2.csv"
    assert json.loads((out / "best.json").read_text())["data"]["val_folds"] == [2]
    assert "train: 2 scans" in text and "validation: 1 scans" in text
    # first run: every scan preprocessed once into <out>/scan_cache
    cache = out / "scan_cache"
    assert (summary["cache_hits"], summary["cache_misses"]) == (0, 3)
    assert sorted(p.name for p in cache.iterdir()) == sorted(uid for uid, _ in info.values())
    before = _cache_files(cache)
    assert any(p.name == "hu.npy" for p in before)

    # second run on the same cache, another output folder and seed: nothing preprocessed again
    out2 = tmp_path / "run2"
    assert main(_args(root, out2, "--val-fold", "2", "--cache", str(cache), "--seed", "3")) == 0
    assert "3 hits, 0 preprocessed" in capsys.readouterr().out
    s2 = json.loads((out2 / "summary.json").read_text())
    assert (s2["cache_hits"], s2["cache_misses"]) == (3, 0) and not (out2 / "scan_cache").exists()
    assert _cache_files(cache) == before


def test_train_luna16_test_fold_never_read_and_default_val(luna, tmp_path, capsys):
    root, info = luna
    out = tmp_path / "run"
    # subset0 held out; validation defaults to the last fold left (2); training on subset1 only
    assert main(_args(root, out, "--test-fold", "0")) == 0
    split = json.loads((out / "split.json").read_text())
    assert split == {"train": [info[1][0]], "val": [info[2][0]], "test": [info[0][0]]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["val_folds"] == [2] and summary["data"]["test_folds"] == [0]
    # the test scan was never loaded: it is not in the cache
    assert not (out / "scan_cache" / info[0][0]).exists()
    assert (out / "scan_cache" / info[1][0]).is_dir()
    assert "test folds [0] (1 scans, not read)" in capsys.readouterr().out


def test_train_luna16_streams_respect_exclusions(luna, tmp_path):
    """The streams the command builds: candidates_V2 class-0 rows are negatives, but never the
    one at an excluded finding; nodules give positives."""
    import argparse

    from noduleflow.engine.preprocess import PreprocessSpec
    from noduleflow.trainer.commands.train import _luna16_data
    from noduleflow.trainer.train import TrainConfig

    root, info = luna
    args = argparse.Namespace(val_fold=[2], test_fold=None, hard_negatives=None, hard_negatives_csv=None,
                              negatives_per_scan=12, cache=str(tmp_path / "cache"))
    tr, va, record, split, stats = _luna16_data(args, TrainConfig(batch_size=4), str(root), {}, PreprocessSpec(),
                                                tmp_path)
    assert tr.training and not va.training
    for stream in (tr, va):
        idx = stream.index
        assert (idx.label == 1).sum() >= 1
        # engine candidates: at most 12 per scan; candidates_V2 class 0: one per nodule (the excluded one dropped)
        for i, src in enumerate(stream.sources):
            n_hard = int((idx.hard & (idx.scan == i)).sum())
            assert n_hard <= len(src.nodules)
            assert len(src.hard_negatives_xyz_mm) == len(src.nodules) + len(src.excluded)
            sc = stream.scan(i)
            hard = idx.centre_zyx[idx.hard & (idx.scan == i)]
            for e in src.excluded:
                ez = np.asarray(sc.volume.world_to_voxel(np.asarray([e.center_xyz_mm])))[0]
                assert (np.linalg.norm(hard - ez, axis=1) > 3.0).all()
            assert ((~idx.hard) & (idx.label == 0) & (idx.scan == i)).sum() <= 12


@pytest.mark.parametrize("flag, bad", [("--val-fold", "7"), ("--test-fold", "5")])
def test_train_luna16_bad_fold(luna, tmp_path, capsys, flag, bad):
    root, _ = luna
    from noduleflow.cli import build_parser
    from noduleflow.trainer.commands.train import run

    args = build_parser().parse_args(_args(root, tmp_path / "out", flag, bad))
    with pytest.raises(ConfigError, match=rf"folds \[{bad}\] not in .*has \[0, 1, 2\]"):
        run(args)
    # through the CLI: one line on stderr, exit status 2, nothing trained
    assert main(_args(root, tmp_path / "out", flag, bad)) == 2
    assert f"[{bad}]" in capsys.readouterr().err
    assert not (tmp_path / "out" / "train_log.csv").exists()
    assert os.listdir(tmp_path / "out") == []


def test_train_luna16_val_and_test_fold_overlap(luna, tmp_path):
    root, _ = luna
    from noduleflow.cli import build_parser
    from noduleflow.trainer.commands.train import run

    with pytest.raises(ConfigError, match=r"folds \[1\] are both validation and test"):
        run(build_parser().parse_args(_args(root, tmp_path / "out", "--val-fold", "1", "--test-fold", "1")))


def test_train_luna16_dataloader_workers(luna, tmp_path):
    """Streamed patches through 2 forked DataLoader workers (a fresh process: numba must get a
    fork-safe threading layer before its first parallel call)."""
    import subprocess
    import sys
    from pathlib import Path

    root, _ = luna
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    env.pop("NUMBA_THREADING_LAYER", None)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "noduleflow.cli", *_args(root, out, "--val-fold", "1", "--workers", "2")],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"])) and np.isfinite(float(rows[0]["val_auc"]))
    assert json.loads((out / "best.json").read_text())["train"]["workers"] == 2


def test_luna16_toml_config(luna, tmp_path):
    """trainer/configs/luna16.toml parses; [data] folds are used when no option is given."""
    from pathlib import Path

    import tomllib

    from noduleflow.trainer.train import TrainConfig

    path = Path(__file__).resolve().parents[2] / "trainer" / "configs" / "luna16.toml"
    cfg = TrainConfig.from_toml(path)
    assert (cfg.model, cfg.workers) == ("3d-1", 2)
    data = tomllib.loads(path.read_text())["data"]
    assert (data["val_folds"], data["test_folds"]) == ([9], [8])
    # the same keys on the tiny folder, through --config
    root, info = luna
    conf = tmp_path / "luna.toml"
    conf.write_text(f'[train]\nmodel = "3d-1"\nepochs = 1\nbatch_size = 4\nsteps_per_epoch = 1\n'
                    f'[data]\nsource = "{root}"\nval_folds = [0]\ntest_folds = [1]\nnegatives_per_scan = 6\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(conf), "--out", str(out)]) == 0
    split = json.loads((out / "split.json").read_text())
    assert split == {"train": [info[2][0]], "val": [info[0][0]], "test": [info[1][0]]}
    assert json.loads((out / "summary.json").read_text())["data"]["negatives_per_scan"] == 6
