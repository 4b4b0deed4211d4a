"""bench.graph_profile: per-node times of a package's graph in OpenVINO, convolutions with FLOPs."""
from __future__ import annotations

import pytest

pytest.importorskip("openvino")


def test_stage2_profile_counts_every_convolution(tmp_path):
    from noduleflow.bench import flops as fl
    from noduleflow.bench.graph_profile import run
    from noduleflow.engine.package import ModelPackage, default_package_path

    r = run(tmp_path, graph="stage2", batch=2, repeats=1)
    pkg = ModelPackage.load(default_package_path())
    want = fl.patch_graph_flops(pkg.file("stage2.onnx"), (2, 2, 41, 41, 41))
    assert r["gflop"] * 1e9 == pytest.approx(want)
    assert r["input_shape"] == [2, 2, 41, 41, 41] and r["seconds"] > 0
    convs = [n for n in r["nodes"] if n["gflop"] is not None]
    assert convs and all(n["gflops"] > 0 for n in convs)
    # the stem is the largest convolution of the network: its FLOPs are attributed to it
    stem = next(n for n in convs if n["node"].startswith("/stem/"))
    assert stem["gflop"] == max(n["gflop"] for n in convs)
    assert sum(n["share"] for n in r["nodes"]) == pytest.approx(1.0)
    assert "| /stem/" in (tmp_path / "graph_profile_stage2.md").read_text()


def test_the_profile_runs_the_engine_s_arithmetic(tmp_path):
    """fp32 unless asked: OpenVINO's own default is bf16 where the CPU has it, the engine's is fp32
    (its kernels name the arithmetic); bf16 where the CPU has it; int8 the package's INT8 graph."""
    from noduleflow.bench.graph_profile import run
    from noduleflow.engine.backends.openvino import cpu_capabilities

    def stem_impl(r):
        return next(n["impl"] for n in r["nodes"] if n["node"].startswith("/stem/") and n["gflop"])

    r = run(tmp_path, graph="stage2", batch=2, repeats=1)
    assert r["precision"] == "fp32" and "f32" in stem_impl(r) and "bf16" not in stem_impl(r)
    if "BF16" in cpu_capabilities():
        r = run(tmp_path, graph="stage2", batch=2, repeats=1, precision="bf16")
        assert "bf16" in stem_impl(r)
        assert "--precision bf16" in (tmp_path / "graph_profile_stage2_bf16.md").read_text()
    r = run(tmp_path, graph="stage2", batch=2, repeats=1, precision="int8")
    assert (tmp_path / "graph_profile_stage2_int8.json").exists() and r["precision"] == "int8"
