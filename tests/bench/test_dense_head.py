"""bench.dense_head: the dense graph split before its head gives the whole graph's logits (so the
bench times the same computation both ways), and the per-node profile adds up."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")


def test_trunk_and_head_at_points_give_the_whole_graphs_logits(tiny_package):
    """On a 3D-1 dense graph (random weights), whose head is a 3^3 convolution over 64 channels."""
    import onnx
    import onnxruntime as ort

    from noduleflow.bench.dense_head import head_logits, split_head

    path = tiny_package / "dense.onnx"
    trunk, layers, k = split_head(onnx.load(str(path)))
    assert k == 3 and layers[0][0].shape[0] == 27 * 64 and layers[-1][0].shape[1] == 1
    x = np.random.default_rng(0).uniform(size=(1, 1, 57, 49, 61)).astype(np.float32)
    whole = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"volume": x})[0][0]
    feats = ort.InferenceSession(trunk.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"volume": x})[0][0]
    assert feats.shape == (*(np.array(whole.shape) + 2), 64)
    pts = np.argwhere(np.ones(whole.shape, bool))[::3]  # every third output point
    got = head_logits(feats, np.ascontiguousarray(pts), layers, k, chunk=5)  # several chunks
    assert np.abs(got - whole[pts[:, 0], pts[:, 1], pts[:, 2]]).max() <= 1e-4


def test_layer_profile_names_the_convolutions_and_their_rates(tiny_package):
    pytest.importorskip("openvino")
    from noduleflow.bench.dense_head import layer_profile

    r = layer_profile(tiny_package / "dense.onnx", tile_out=2, repeats=1)
    assert r["tile_side"] == [45, 45, 45] and r["seconds"] > 0
    shares = [n["share"] for n in r["nodes"]]
    assert abs(sum(shares) - 1.0) < 1e-6 and shares == sorted(shares, reverse=True)
    stem = [n for n in r["nodes"] if n["node"].startswith("/stem/stem.0/Conv")]
    assert stem and stem[0]["gflop"] > 0 and stem[0]["gflops"] > 0
