"""TensorRT: the parts that run without TensorRT, and the build/run where it imports."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine import ConfigError, PackageError
from noduleflow.engine.backends.tensorrt import PlanKey, plan_path, read_plan, write_plan
from noduleflow.export.tensorrt_build import calibration_batches, profiles

KEY = PlanKey("NVIDIA H100 80GB HBM3", "9.0", "10.7.0", "fp16", "patch")


def test_plan_key_filename_is_safe_and_distinct():
    name = KEY.filename()
    assert "/" not in name and " " not in name and name.endswith(".plan")
    other = PlanKey(KEY.gpu, KEY.compute_capability, KEY.tensorrt, "fp32", "patch")
    assert other.filename() != name


def test_plan_cache_refuses_other_keys(tmp_path):
    write_plan(tmp_path, KEY, b"plan-bytes")
    assert read_plan(tmp_path, KEY) == b"plan-bytes"
    newer = PlanKey(KEY.gpu, KEY.compute_capability, "10.8.0", "fp16", "patch")
    with pytest.raises(PackageError, match="no TensorRT plan"):
        read_plan(tmp_path, newer)
    # a plan whose recorded key was tampered with is refused, not run
    plan_path(tmp_path, KEY).with_suffix(".json").write_text(
        '{"gpu": "A100", "compute_capability": "8.0", "tensorrt": "10.7.0", "precision": "fp16", "graph": "patch"}')
    with pytest.raises(PackageError, match="was built for"):
        read_plan(tmp_path, KEY)


def test_profiles():
    (p,) = profiles("patch", max_batch=128, opt_batch=32)
    assert p.min[0] == 1 and p.opt[0] == 32 and p.max == (128, 1, 41, 41, 41)
    (d,) = profiles("dense", tile_out=(24, 24, 24), stride=4)
    assert d.max == (1, 1, 133, 133, 133) and d.min == (1, 1, 41, 41, 41)
    from noduleflow.engine.config import DENSE_TILE_OUT, DetectorConfig

    (d,) = profiles("dense", stride=4)  # the engine's own tile unless told
    side = 4 * (DetectorConfig().tile_out - 1) + 41
    assert DetectorConfig().tile_out == DENSE_TILE_OUT and d.max == d.opt == (1, 1, side, side, side)
    with pytest.raises(ConfigError):
        profiles("patch", max_batch=8, opt_batch=16)


def test_calibration_batches():
    x = np.zeros((70, 1, 41, 41, 41), np.float32)
    batches = list(calibration_batches(x, 32))
    assert len(batches) == 2 and all(b.shape == (32, 1, 41, 41, 41) for b in batches)
    with pytest.raises(ConfigError):
        list(calibration_batches(np.zeros((4, 41, 41, 41)), 2))


@pytest.mark.tensorrt
def test_build_and_run_plan(tiny_package):
    pytest.importorskip("tensorrt")
    from noduleflow.engine.backends import open_backend
    from noduleflow.engine.package import ModelPackage
    from noduleflow.export.tensorrt_build import build_plan

    build_plan(tiny_package, "patch", "fp32")
    pkg = ModelPackage.load(tiny_package)
    x = np.random.default_rng(0).uniform(size=(4, 1, 41, 41, 41)).astype(np.float32)
    with open_backend(pkg, "tensorrt", precision="fp32") as trt_b, open_backend(pkg, "onnxruntime-cpu") as ort_b:
        assert np.abs(trt_b.infer(x) - ort_b.infer(x)).max() < 1e-3
