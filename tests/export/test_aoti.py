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



def test_torch_compiled_refuses_a_precision_it_has_no_graph_for(tiny_package):
    """`detect --backend torch-compiled --precision int8`: one line naming the precision, not a
    TypeError from the backend's constructor."""
    from noduleflow.engine import BackendUnavailableError
    from noduleflow.engine.backends import open_backend
    from noduleflow.engine.package import ModelPackage

    with pytest.raises(BackendUnavailableError, match="fp32 only, not 'int8'"):
        open_backend(ModelPackage.load(tiny_package), "torch-compiled", precision="int8")


def test_aoti_stage2_graph_scores_stage2_as_onnx(tmp_path):
    """`export --torch-compiled --stage2` compiles the stage-2 network too (``stage2.pt2``, for the
    device the export ran on: the CPU here); the torch-compiled backend runs it with ONNX Runtime's
    logits and the detector's stage 2 on it gives the same scores."""
    import torch

    from noduleflow.engine.backends import open_backend
    from noduleflow.engine.contract import Stage1Spec
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.package import ModelPackage
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.export.package import export_package
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom
    from noduleflow.trainer.checkpoint import save_checkpoint
    from noduleflow.trainer.models import build_model

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "s1", build_model("3d-1").eval(), {"model": "3d-1", "model_kwargs": {}}, "best")
    save_checkpoint(tmp_path / "s2", build_model("ms-3d1").eval(), {"model": "ms-3d1", "model_kwargs": {}}, "best")
    export_package(tmp_path / "s1" / "best.safetensors", tmp_path / "pkg", torch_compiled=True,
                   stage2=str(tmp_path / "s2" / "best.safetensors"), stage1_spec=Stage1Spec(generator="blobs"))
    pkg = ModelPackage.load(tmp_path / "pkg")
    assert {"patch.pt2", "stage2.pt2"} <= set(pkg.manifest.files) and pkg.manifest.export["aoti_device"] == "cpu"
    x = np.random.default_rng(1).uniform(size=(3, 2, 41, 41, 41)).astype(np.float32)
    with open_backend(pkg, "torch-compiled", graph="stage2") as tc, \
            open_backend(pkg, "onnxruntime-cpu", graph="stage2", streams=1) as ort_b:
        assert tc.name == "torch-compiled-cpu" and not tc.accepts_device_arrays
        assert np.abs(tc.infer(x) - ort_b.infer(x)).max() <= 1e-4
    with pytest.raises(Exception, match="compiled for cpu, not cuda"):
        open_backend(pkg, "torch-compiled", graph="stage2", device="cuda")
    vol = generate_phantom(4, params=PhantomParams(n_nodules=1), shape_zyx=(60, 128, 128),
                           spacing_zyx_mm=(3.0, 2.2, 2.2)).volume
    # a detection whose stage 1 is the blob filter alone (as the shipped model's) opens no dense graph,
    # which torch 2.13 cannot
    # compile: the torch-compiled backend runs it in the default mode
    a = Detector(pkg, backend="torch-compiled")
    b = Detector(pkg, backend="onnxruntime-cpu")
    pre = preprocess(vol, b.spec)
    c = b.stage1(pre).centres_zyx[:12]
    assert len(c) and np.abs(a.stage2_scorer(pre, c) - b.stage2_scorer(pre, c)).max() <= 1e-4
    da, db = a.detect(vol), b.detect(vol)
    assert da.backend == "torch-compiled-cpu" and db.backend == "onnxruntime-cpu"
    assert [c.center_xyz_mm for c in da.candidates] == [c.center_xyz_mm for c in db.candidates]
    assert np.abs(np.array([c.prob for c in da.candidates]) - [c.prob for c in db.candidates]).max() <= 1e-4
