"""Export --slim (default) vs --no-slim: fewer nodes, the same logits, recorded in the manifest."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine.package import ModelPackage

pytest.importorskip("onnxslim")


def test_slim_export_fewer_nodes_same_logits(tmp_path):
    torch = pytest.importorskip("torch")
    import onnx
    import onnxruntime as ort

    from noduleflow.export.package import export_package
    from noduleflow.trainer.checkpoint import save_checkpoint
    from noduleflow.trainer.models import build_model

    torch.manual_seed(3)
    save_checkpoint(tmp_path / "c", build_model("3d-1").eval(), {"model": "3d-1", "model_kwargs": {}}, "best")
    ck = tmp_path / "c" / "best.safetensors"
    export_package(ck, tmp_path / "raw", slim=False)
    report = export_package(ck, tmp_path / "slim")  # default: slim
    assert max(report.values()) <= 1e-4  # parity judged on the slimmed graphs
    assert ModelPackage.load(tmp_path / "raw").manifest.export["slim"] is None
    assert ModelPackage.load(tmp_path / "slim").manifest.export["slim"].startswith("onnxslim")
    rng = np.random.default_rng(0)
    for g, shapes in (("patch", [(1, 1, 41, 41, 41), (5, 1, 41, 41, 41)]),
                      ("dense", [(1, 1, 45, 49, 53), (1, 1, 61, 45, 41)])):
        raw, slim = (onnx.load(str(tmp_path / p / f"{g}.onnx")) for p in ("raw", "slim"))
        assert len(slim.graph.node) < len(raw.graph.node)
        assert not any(n.op_type == "Constant" for n in slim.graph.node)
        s0, s1 = (ort.InferenceSession(str(tmp_path / p / f"{g}.onnx"), providers=["CPUExecutionProvider"])
                  for p in ("raw", "slim"))
        for shape in shapes:  # dynamic axes survive slimming
            x = rng.uniform(size=shape).astype(np.float32)
            a = s0.run(None, {s0.get_inputs()[0].name: x})[0]
            b = s1.run(None, {s1.get_inputs()[0].name: x})[0]
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
