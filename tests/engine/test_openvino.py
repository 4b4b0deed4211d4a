"""The OpenVINO CPU backend: the package's own ONNX graphs give ONNX Runtime's logits (patch,
dense, stage 2, 3D-LOC's location input), whole detections agree, `infer_many` keeps order with
several streams, and what it cannot run is refused with the bad value named."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine import BackendUnavailableError, ConfigError, PackageError
from noduleflow.engine.backends import open_backend
from noduleflow.engine.package import ModelPackage, default_package_path

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def default_pkg():
    return ModelPackage.load(default_package_path())


@pytest.mark.parametrize("graph, shape", [("patch", (5, 1, 41, 41, 41)), ("stage2", (5, 2, 41, 41, 41)),
                                          ("dense", (1, 1, 61, 57, 49))])
def test_logits_equal_onnxruntime(default_pkg, graph, shape):
    x = np.random.default_rng(0).normal(0.0, 1.0, shape).astype(np.float32)
    with open_backend(default_pkg, "openvino-cpu", graph=graph) as ov, \
            open_backend(default_pkg, "onnxruntime-cpu", graph=graph, streams=1) as ort:
        got, want = ov.infer(x), ort.infer(x)
        assert ov.describe()["backend"] == "openvino-cpu" and ov.describe()["streams"] == 1
    assert got.shape == want.shape and got.shape[0] == shape[0]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_location_input_reaches_the_graph(tmp_path):
    """A 3D-LOC package: the location is the graph's second input (patch and dense)."""
    torch = pytest.importorskip("torch")
    from noduleflow.export.package import export_package
    from noduleflow.trainer.checkpoint import save_checkpoint
    from noduleflow.trainer.models import build_model

    torch.manual_seed(1)
    save_checkpoint(tmp_path / "c", build_model("3d-loc").eval(), {"model": "3d-loc", "model_kwargs": {}}, "best")
    export_package(tmp_path / "c" / "best.safetensors", tmp_path / "p")
    pkg = ModelPackage.load(tmp_path / "p")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 1, 41, 41, 41)).astype(np.float32)
    loc = rng.uniform(size=(3, 3)).astype(np.float32)
    with open_backend(pkg, "openvino-cpu") as ov, open_backend(pkg, "onnxruntime-cpu") as ort:
        a, b = ov.infer(x, loc), ort.infer(x, loc)
        assert np.abs(a - b).max() <= 1e-4
        assert np.abs(ov.infer(x, loc[::-1].copy()) - a).max() > 0  # the location changes the logits
        with pytest.raises(PackageError, match="location"):
            ov.infer(x)


def test_streams_run_in_order_and_equal_one_at_a_time(default_pkg):
    rng = np.random.default_rng(0)
    batches = [rng.random((n, 2, 41, 41, 41), dtype=np.float32) for n in (3, 1, 4, 2)]
    with open_backend(default_pkg, "openvino-cpu", graph="stage2", threads=2, streams=1) as one:
        want = [one.infer(b) for b in batches]
    with open_backend(default_pkg, "openvino-cpu", graph="stage2", threads=2, streams=2) as two:
        assert two.streams == 2
        got = list(two.infer_many(iter(batches)))
        partial = two.infer_many(iter(batches))
        assert np.abs(next(partial) - want[0]).max() <= 1e-5
        partial.close()  # dropped with a batch still running: waited for, nothing left behind
        with pytest.raises(ConfigError, match=r"\(2, 2, 40, 41, 41\)"):
            list(two.infer_many([np.zeros((2, 2, 40, 41, 41), np.float32)]))
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= 1e-5


def test_refusals_name_the_bad_value(default_pkg, tiny_package):
    with pytest.raises(BackendUnavailableError, match="fp32, int8, bf16, not 'fp16'"):
        open_backend(default_pkg, "openvino-cpu", precision="fp16")
    with pytest.raises(ConfigError, match="streams must be in \\[1, threads=2\\], got 3"):
        open_backend(default_pkg, "openvino-cpu", threads=2, streams=3)
    with open_backend(default_pkg, "openvino-cpu", graph="patch") as b:
        with pytest.raises(ConfigError, match="float32"):
            b.infer(np.zeros((1, 1, 41, 41, 41), np.float64))
        with pytest.raises(ConfigError, match=r"batch of 0"):
            b.infer(np.zeros((0, 1, 41, 41, 41), np.float32))
    with pytest.raises(ConfigError, match="closed"):
        b.infer(np.zeros((1, 1, 41, 41, 41), np.float32))
    # a package without a stage-2 graph
    with pytest.raises(PackageError, match="stage2.onnx"):
        open_backend(ModelPackage.load(tiny_package), "openvino-cpu", graph="stage2")


def _has_bf16() -> bool:
    from noduleflow.engine.backends.openvino import cpu_capabilities

    return "BF16" in cpu_capabilities()


@pytest.mark.skipif(not _has_bf16(), reason="this CPU has no bfloat16 arithmetic (AVX512_BF16 or AMX)")
@pytest.mark.parametrize("graph, shape", [("stage2", (8, 2, 41, 41, 41)), ("dense", (1, 1, 69, 73, 77))])
def test_bf16_runs_the_fp32_graph_in_bfloat16(default_pkg, graph, shape):
    """precision "bf16": the same graph file, other arithmetic: close to fp32 but not equal to it."""
    x = np.random.default_rng(3).uniform(0, 1, shape).astype(np.float32)
    with open_backend(default_pkg, "openvino-cpu", graph=graph) as f32, \
            open_backend(default_pkg, "openvino-cpu", graph=graph, precision="bf16") as b16:
        assert (b16.name, b16.precision) == ("openvino-cpu-bf16", "bf16")
        assert b16.describe()["precision"] == "bf16"
        a, b = f32.infer(x), b16.infer(x)
    assert a.shape == b.shape
    d = np.abs(1 / (1 + np.exp(-a)) - 1 / (1 + np.exp(-b)))
    assert 0 < d.max() < 0.1, d.max()  # bfloat16 rounding shows, and stays small


def test_bf16_on_a_cpu_without_it_is_refused_naming_what_it_has(default_pkg, monkeypatch):
    from noduleflow.engine.backends import openvino as ovb

    monkeypatch.setattr(ovb, "cpu_capabilities", lambda: ("FP32", "INT8", "BIN"))
    with pytest.raises(BackendUnavailableError, match=r"no bfloat16 arithmetic .*FP32, INT8, BIN\): run fp32"):
        open_backend(default_pkg, "openvino-cpu", graph="stage2", precision="bf16")
    # auto: every backend present refused it, and each one's reason is given
    with pytest.raises(BackendUnavailableError, match=r"openvino-cpu: this CPU has no bfloat16.*"
                                                      r"onnxruntime-cpu: ONNX Runtime runs fp32, fp16 or int8, "
                                                      r"not 'bf16' \(bf16: the openvino-cpu backend"):
        open_backend(default_pkg, "auto", graph="stage2", precision="bf16")


def test_graph_in_the_wrong_slot_is_refused(default_pkg, tmp_path):
    """The signature check is the runtime-independent one: a patch graph where the dense graph
    belongs is refused by OpenVINO as by ONNX Runtime."""
    import json
    import shutil

    from noduleflow.engine.package import sha256_file

    pkg = tmp_path / "pkg"
    shutil.copytree(default_pkg.path, pkg)
    shutil.copy(pkg / "patch.onnx", pkg / "dense.onnx")
    m = json.loads((pkg / "manifest.json").read_text())
    m["files"]["dense.onnx"] = sha256_file(pkg / "dense.onnx")
    (pkg / "manifest.json").write_text(json.dumps(m))
    p = ModelPackage.load(pkg)
    for name in ("openvino-cpu", "onnxruntime-cpu"):
        with pytest.raises(PackageError, match="is not a dense graph"):
            open_backend(p, name, graph="dense")


def test_auto_takes_openvino_and_a_missing_openvino_is_named(default_pkg, monkeypatch):
    from noduleflow.engine import backends

    with open_backend(default_pkg, "auto", graph="patch") as b:
        assert b.name == "openvino-cpu"
    real = backends._has
    monkeypatch.setattr(backends, "_has", lambda mod: False if mod == "openvino" else real(mod))
    with pytest.raises(BackendUnavailableError, match=r"noduleflow\[openvino\]"):
        open_backend(default_pkg, "openvino-cpu")
    with open_backend(default_pkg, "auto", graph="patch") as b:
        assert b.name == "onnxruntime-cpu"


def test_two_stage_detection_equals_onnxruntime():
    """The default detection of a phantom: same candidates, probabilities within 1e-5."""
    from noduleflow.engine.detector import Detector
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    vol = generate_phantom(7, params=PhantomParams(n_nodules=3), shape_zyx=(90, 256, 256),
                           spacing_zyx_mm=(3.0, 1.4, 1.4)).volume
    with Detector(backend="openvino-cpu") as a, Detector(backend="onnxruntime-cpu") as b:
        da, db = a.detect(vol), b.detect(vol)
    assert da.backend == "openvino-cpu" and db.backend == "onnxruntime-cpu"
    assert len(da.candidates) == len(db.candidates) > 0
    pa, pb = np.array([c.prob for c in da.candidates]), np.array([c.prob for c in db.candidates])
    assert np.abs(pa - pb).max() <= 1e-5
    assert [c.center_xyz_mm for c in da.candidates] == [c.center_xyz_mm for c in db.candidates]


def test_auto_on_a_cpu_build_does_not_import_onnxruntime(default_pkg, tmp_path, monkeypatch):
    """ONNX Runtime's CUDA provider is looked for as a file beside the package (a GPU build ships
    it); without one, "auto" takes OpenVINO without importing ONNX Runtime at all."""
    import importlib.machinery
    import subprocess
    import sys

    from noduleflow.engine import backends

    fake = tmp_path / "onnxruntime"
    (fake / "capi").mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec("onnxruntime", None, is_package=True)
    spec.submodule_search_locations = [str(fake)]
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: spec)
    assert not backends.ort_gpu_build()
    (fake / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"")
    assert backends.ort_gpu_build()
    monkeypatch.undo()
    code = ("import sys; from noduleflow.engine.backends import open_backend; "
            "from noduleflow.engine.package import ModelPackage, default_package_path; "
            "b = open_backend(ModelPackage.load(default_package_path()), 'auto', graph='stage2'); "
            "print(b.name, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["openvino-cpu", "False"], out.stderr[-2000:]


def test_compiled_graphs_are_cached_between_opens(default_pkg, tmp_path, monkeypatch):
    """OpenVINO's model cache: the first open writes the compiled graph into the cache folder, a
    second open of the same graph adds nothing (it imports it); "off" opens without a cache."""
    from noduleflow.engine.backends import openvino as ovb

    monkeypatch.setenv(ovb.CACHE_ENV, str(tmp_path / "cache"))
    with open_backend(default_pkg, "openvino-cpu", graph="stage2") as b:
        assert b.cache_dir == tmp_path / "cache"
    first = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert first  # the compiled graph
    with open_backend(default_pkg, "openvino-cpu", graph="stage2") as b:
        x = np.zeros((2, 2, 41, 41, 41), np.float32)
        assert b.infer(x).shape == (2,)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == first
    monkeypatch.setenv(ovb.CACHE_ENV, "off")
    assert ovb.cache_dir() is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(ovb.CACHE_ENV, str(blocker / "sub"))  # cannot be created: no cache, no error
    assert ovb.cache_dir() is None
    with open_backend(default_pkg, "openvino-cpu", graph="patch") as b:
        assert b.cache_dir is None


def test_a_graph_openvino_cannot_compile_leaves_it_to_onnxruntime(default_pkg, tmp_path, monkeypatch):
    """A graph OpenVINO's ONNX reader cannot convert (ONNX Runtime's QOperator INT8 graphs are
    one) makes the backend unavailable, named with the reason; "auto" then opens ONNX Runtime.
    Here OpenVINO's compile is made to fail as it does on such a graph; a file that no runtime
    reads is still refused as a bad package by ONNX Runtime."""
    import json
    import shutil

    import openvino as ov

    from noduleflow.engine.package import sha256_file

    real = ov.Core.compile_model

    def refuse(self, model, *a, **k):
        raise RuntimeError("FrontEnd API failed with OpConversionFailure: QLinearConv")

    monkeypatch.setattr(ov.Core, "compile_model", refuse)
    with pytest.raises(BackendUnavailableError, match="OpenVINO cannot compile stage2.onnx .*QLinearConv"):
        open_backend(default_pkg, "openvino-cpu", graph="stage2")
    with open_backend(default_pkg, "auto", graph="stage2") as b:
        assert b.name == "onnxruntime-cpu"
    monkeypatch.setattr(ov.Core, "compile_model", real)
    pkg = tmp_path / "pkg"
    shutil.copytree(default_pkg.path, pkg)
    (pkg / "stage2.onnx").write_bytes(b"not an onnx graph")
    m = json.loads((pkg / "manifest.json").read_text())
    m["files"]["stage2.onnx"] = sha256_file(pkg / "stage2.onnx")
    (pkg / "manifest.json").write_text(json.dumps(m))
    # refused when the package opens (its graphs are parsed for external data) or when a backend loads it
    with pytest.raises(PackageError, match="not a (loadable|well-formed) ONNX graph"):
        open_backend(ModelPackage.load(pkg), "auto", graph="stage2")
