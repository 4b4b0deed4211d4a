"""Export: ONNX parity with PyTorch, dense vs patch graphs, package integrity."""
from __future__ import annotations

import json
import shutil

import pytest

from noduleflow.engine import PackageError
from noduleflow.engine.package import FORMAT_VERSION, ModelPackage


def test_package_contents_and_parity(tiny_package):
    pkg = ModelPackage.load(tiny_package)
    m = pkg.manifest
    assert set(m.files) == {"patch.onnx", "dense.onnx"}
    assert m.contract.dense_stride == 4 and m.contract.dense_offset == 20 and m.architecture == "3d-1"
    assert m.export["parity"]["patch_max_abs_logit_diff"] <= 1e-4
    assert m.export["parity"]["dense_vs_patch_max_abs_diff"] <= 1e-4
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tiny_package / "patch.onnx")).metadata_props}
    assert props["architecture"] == "3d-1" and props["package_format_version"] == str(FORMAT_VERSION)
    from noduleflow.engine.contract import InputContract

    assert InputContract.from_dict(json.loads(props["contract"])) == m.contract  # the graph carries it too


def test_3d_loc_exports_with_location_inputs(tmp_path):
    torch = pytest.importorskip("torch")
    from noduleflow.export.package import export_package
    from noduleflow.trainer.checkpoint import save_checkpoint
    from noduleflow.trainer.models import build_model

    torch.manual_seed(1)
    save_checkpoint(tmp_path / "c", build_model("3d-loc").eval(), {"model": "3d-loc", "model_kwargs": {}}, "best")
    report = export_package(tmp_path / "c" / "best.safetensors", tmp_path / "p")
    assert max(report.values()) <= 1e-4
    assert ModelPackage.load(tmp_path / "p").contract.uses_location


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_tampered_file_is_refused(tiny_package, tmp_path):
    p = _copy(tiny_package, tmp_path / "pkg")
    with open(p / "dense.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(PackageError, match="dense.onnx does not match its manifest hash"):
        ModelPackage.load(p)


def test_missing_file_and_unknown_version(tiny_package, tmp_path):
    p = _copy(tiny_package, tmp_path / "pkg")
    (p / "patch.onnx").unlink()
    with pytest.raises(PackageError, match="patch.onnx is listed in the manifest but missing"):
        ModelPackage.load(p)
    q = _copy(tiny_package, tmp_path / "pkg2")
    man = json.loads((q / "manifest.json").read_text())
    man["format_version"] = 99
    (q / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(PackageError, match="format version 99 is not supported"):
        ModelPackage.load(q)


def test_unhonourable_preprocessing(tiny_package, tmp_path):
    q = _copy(tiny_package, tmp_path / "pkg")
    man = json.loads((q / "manifest.json").read_text())
    man["contract"]["normalisation"] = "zscore"
    (q / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(PackageError, match="normalisation must be one of .* got 'zscore'"):
        ModelPackage.load(q)
    with pytest.raises(PackageError, match="no manifest.json"):
        ModelPackage.load(tmp_path)


def test_export_refuses_non_empty_out(tiny_package, tmp_path):
    from noduleflow.engine import ConfigError
    from noduleflow.export.package import export_package

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        export_package(tiny_package.parent / "ckpt" / "best.safetensors", tmp_path / "x")
    assert (tmp_path / "x" / "f").read_text() == "keep me"


def test_failed_export_keeps_the_previous_package(tiny_package, tmp_path):
    from noduleflow.engine import ConfigError
    from noduleflow.export.package import export_package

    ckpt = tiny_package.parent / "ckpt" / "best.safetensors"
    out = tmp_path / "pkg"
    export_package(ckpt, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # a stage-1 checkpoint is not a stage-2 one: refused before anything is written
    with pytest.raises(ConfigError, match="needs a stage-2 checkpoint"):
        export_package(ckpt, out, overwrite=True, stage2=str(ckpt))
    with pytest.raises(ConfigError, match="needs"):
        export_package(ckpt, out, overwrite=True, stage2=str(tmp_path / "missing.safetensors"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no staging folder left behind
    export_package(ckpt, out, overwrite=True, model_id="again")  # --overwrite replaces it whole
    assert ModelPackage.load(out).manifest.model_id == "again"
    made = tmp_path / "plain"
    made.mkdir()
    assert out.stat().st_mode & 0o777 == made.stat().st_mode & 0o777  # not the staging folder's 0700


def test_one_stage_export_int8_writes_the_patch_graph(tiny_package, tmp_path):
    """A one-stage package's `export --int8` quantizes the patch graph; patch mode runs it with
    precision int8 (scores close to fp32's), and dense mode, which has no INT8 graph, is refused
    saying which graphs --int8 writes."""
    pytest.importorskip("onnxruntime.quantization")
    import numpy as np

    from noduleflow.engine.detector import Detector
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.export.package import export_package
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    out = tmp_path / "pkg8"
    report = export_package(tiny_package.parent / "ckpt" / "best.safetensors", out, model_id="test-3d-1", int8=True)
    assert "patch_int8_max_abs_prob_diff" in report
    pkg = ModelPackage.load(out)
    assert "patch_int8.onnx" in pkg.manifest.files and "stage2_int8.onnx" not in pkg.manifest.files
    assert pkg.manifest.export["int8"]["patch_calibration_patches"] == 256
    fp32 = Detector(out, mode="patch", backend="onnxruntime-cpu")
    int8 = Detector(out, mode="patch", backend="onnxruntime-cpu", backend_options={"precision": "int8"})
    assert int8.backend_name == "onnxruntime-cpu-int8"
    ph = generate_phantom(3, params=PhantomParams(n_nodules=1), shape_zyx=(60, 128, 128), spacing_zyx_mm=(4, 2.4, 2.4))
    pre = preprocess(ph.volume, fp32.spec)
    c = fp32.scorer.centres(pre)[:64]
    a, b = fp32.scorer(pre.volume.hu, c), int8.scorer(pre.volume.hu, c)
    assert len(c) == 64 and not np.array_equal(a, b) and np.abs(a - b).max() < 1.0
    with pytest.raises(PackageError, match=r"no dense_int8\.onnx \(noduleflow export --int8 writes stage2_int8"):
        Detector(out, mode="dense", backend="onnxruntime-cpu", backend_options={"precision": "int8"})
