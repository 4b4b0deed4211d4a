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
