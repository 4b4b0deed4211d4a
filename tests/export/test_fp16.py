"""Export --fp16: fp16 graphs in the package, hashed, verified, their error against fp32 reported."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from noduleflow.engine import PackageError
from noduleflow.engine.package import ModelPackage, sha256_file

pytest.importorskip("onnxconverter_common")


@pytest.fixture(scope="module")
def fp16_package(tmp_path_factory):
    """A random-weight 3D-1 checkpoint exported through the CLI with --fp16."""
    torch = pytest.importorskip("torch")
    from noduleflow.cli import main
    from noduleflow.trainer.checkpoint import save_checkpoint
    from noduleflow.trainer.models import build_model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fp16")
    save_checkpoint(root / "ckpt", build_model("3d-1").eval(), {"model": "3d-1", "model_kwargs": {}}, "best")
    rc = main(["export", str(root / "ckpt" / "best.safetensors"), str(root / "package"),
               "--model-id", "test-fp16", "--fp16"])
    assert rc == 0
    return root / "package"


def test_fp16_files_hashed_and_package_verifies(fp16_package):
    pkg = ModelPackage.load(fp16_package)
    files = pkg.manifest.files
    assert {"patch.onnx", "dense.onnx", "patch_fp16.onnx", "dense_fp16.onnx"} <= set(files)
    for name in ("patch_fp16.onnx", "dense_fp16.onnx"):
        assert files[name] == sha256_file(fp16_package / name)
    import onnx

    m = onnx.load(str(fp16_package / "patch_fp16.onnx"))
    # fp16 weights inside, fp32 at the interface
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {p.key: p.value for p in m.metadata_props}["model_id"] == "test-fp16"


def test_fp16_error_recorded_finite_and_small(fp16_package):
    err = ModelPackage.load(fp16_package).manifest.export["fp16"]
    assert set(err) == {f"{g}_fp16_max_abs_{q}_diff" for g in ("patch", "dense") for q in ("logit", "prob")}
    for v in err.values():
        assert math.isfinite(v) and v >= 0
    # random weights give logits near 0, where fp16 rounding of activations stays small
    assert err["patch_fp16_max_abs_prob_diff"] < 1e-2
    assert err["dense_fp16_max_abs_prob_diff"] < 1e-2
    # a probability difference is at most a quarter of the logit difference (sigmoid' <= 1/4)
    assert err["patch_fp16_max_abs_prob_diff"] <= err["patch_fp16_max_abs_logit_diff"] / 4 + 1e-9
    # the fp32 parity record is untouched by the fp16 figures
    assert not any("fp16" in k for k in ModelPackage.load(fp16_package).manifest.export["parity"])


def test_fp16_backend_runs_fp16_graph(fp16_package):
    from noduleflow.engine.backends.onnxruntime import OnnxRuntimeBackend

    pkg = ModelPackage.load(fp16_package)
    x = np.random.default_rng(0).uniform(size=(3, 1, 41, 41, 41)).astype(np.float32)
    b32 = OnnxRuntimeBackend(pkg, threads=1)
    b16 = OnnxRuntimeBackend(pkg, threads=1, precision="fp16")
    a, b = b32._infer(x, None), b16._infer(x, None)
    assert b.dtype == np.float32 and b.shape == a.shape == (3,)
    assert np.abs(a - b).max() < 5e-2
    assert b16.name.endswith("-fp16")


def test_fp16_backend_needs_fp16_graph(tiny_package):
    from noduleflow.engine.backends.onnxruntime import OnnxRuntimeBackend

    with pytest.raises(PackageError, match="patch_fp16.onnx"):
        OnnxRuntimeBackend(ModelPackage.load(tiny_package), precision="fp16")


def test_tampered_fp16_file_is_refused(fp16_package, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(fp16_package, bad)
    data = bytearray((bad / "dense_fp16.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bad / "dense_fp16.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="dense_fp16.onnx does not match its manifest hash"):
        ModelPackage.load(bad)
    # and a manifest that lists an fp16 file that is gone
    shutil.copytree(fp16_package, tmp_path / "gone")
    (tmp_path / "gone" / "patch_fp16.onnx").unlink()
    with pytest.raises(PackageError, match="patch_fp16.onnx is listed in the manifest but missing"):
        ModelPackage.load(tmp_path / "gone")
    assert json.loads((fp16_package / "manifest.json").read_text())["files"]["patch_fp16.onnx"]
