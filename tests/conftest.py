"""Shared fixtures: a small exported model package (random weights) built once per session."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# OpenVINO's model cache: one throw-away folder per test run (subprocesses inherit it), so the
# random-weight packages the tests export never fill the user's cache folder
if "NODULEFLOW_OPENVINO_CACHE" not in os.environ:
    os.environ["NODULEFLOW_OPENVINO_CACHE"] = _OV_CACHE = tempfile.mkdtemp(prefix="noduleflow-ov-cache-")
    atexit.register(shutil.rmtree, _OV_CACHE, ignore_errors=True)


def _random_package(tmp_path_factory, name: str):
    """``name``'s package exported from random weights (seed 0): ROOT/package, its checkpoint in ROOT/ckpt."""
    pytest.importorskip("torch")
    import torch

    from noduleflow.export.package import export_package
    from noduleflow.trainer.checkpoint import save_checkpoint
    from noduleflow.trainer.models import build_model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp(f"pkg_{name}")
    model = build_model(name).eval()
    save_checkpoint(root / "ckpt", model, {"model": name, "model_kwargs": {}}, "best")
    export_package(root / "ckpt" / "best.safetensors", root / "package", model_id=f"test-{name}")
    return root / "package"


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory):
    """A 3D-1 package (patch.onnx + dense.onnx + manifest) exported from random weights."""
    return _random_package(tmp_path_factory, "3d-1")


@pytest.fixture(scope="session")
def tiny_package_e(tmp_path_factory):
    """A 3D-E package (the dense pass's efficient network) exported from random weights."""
    return _random_package(tmp_path_factory, "3d-e")
