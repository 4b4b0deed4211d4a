"""AOTInductor export and the torch-compiled backend, on the CPU."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("torch")


def test_aoti_patch_package_matches_onnx(tiny_package, tmp_path):
    from noduleflow.engine.backends import open_backend
    from noduleflow.engine.package import ModelPackage
    from noduleflow.export.aoti import export_aoti

    pkg_dir = shutil.copytree(tiny_package, tmp_path / "pkg")
    export_aoti(tiny_package.parent / "ckpt" / "best.safetensors", pkg_dir)
    pkg = ModelPackage.load(pkg_dir)
    assert "patch.pt2" in pkg.manifest.files
    x = np.random.default_rng(0).uniform(size=(5, 1, 41, 41, 41)).astype(np.float32)
    with open_backend(pkg, "torch-compiled") as tc, open_backend(pkg, "onnxruntime-cpu") as ort_b:
        assert tc.name == "torch-compiled-cpu"
        assert np.abs(tc.infer(x) - ort_b.infer(x)).max() <= 1e-4


def test_torch_compiled_without_pt2_says_how_to_export(tiny_package):
    from noduleflow.engine import PackageError
    from noduleflow.engine.backends import open_backend
    from noduleflow.engine.package import ModelPackage

    with pytest.raises(PackageError, match="--torch-compiled"):
        open_backend(ModelPackage.load(tiny_package), "torch-compiled")
