"""bench.package_ab: two packages' graphs side by side."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from noduleflow.engine.package import ModelPackage, default_package_path


def test_the_shipped_package_against_a_copy_of_itself(tmp_path):
    from noduleflow.bench import package_ab

    copy = tmp_path / "copy"
    shutil.copytree(default_package_path(), copy)
    r = package_ab.run(copy, None, tmp_path / "out", repeats=1, seeds=())
    graphs = {t["graph"] for t in r["timings"]}
    assert graphs == {"stage2", "patch", "dense"}
    for t in r["timings"]:
        assert t["max_abs_logit_diff"] == 0.0  # the same graph on the same input
        assert t["before_s"] > 0 and t["after_s"] > 0
        assert t["speedup_median"] == pytest.approx(t["before_s"] / t["after_s"])
    assert r["ops"]["stage2"]["before"] == r["ops"]["stage2"]["after"]
    assert r["detections"] == [] and r["detection_backend"] is None
    saved = json.loads((tmp_path / "out" / "package_ab.json").read_text())
    assert saved["timings"] == r["timings"]
    md = (tmp_path / "out" / "package_ab.md").read_text()
    assert "| stage2 |" in md and "Nodes in the files" in md


def test_inputs_have_the_engines_shapes():
    from noduleflow.bench.package_ab import TILE_SIDE, _input

    pkg = ModelPackage.load(default_package_path())
    rng = np.random.default_rng(0)
    assert _input(pkg, "stage2", rng).shape == (64, 2, 41, 41, 41)
    assert _input(pkg, "patch", rng).shape == (64, 1, 41, 41, 41)
    assert _input(pkg, "dense", rng).shape == (1, 1, TILE_SIDE, TILE_SIDE, TILE_SIDE)
    # tile_out 32 of the engine's dense tiling
    assert pkg.contract.dense_output_shape((TILE_SIDE,) * 3) == (32, 32, 32)
