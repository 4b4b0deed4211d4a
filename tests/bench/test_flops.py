"""bench.flops: the layer walk of a dense graph, FLOPs done and needed, the peak, the accounting."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.bench import flops as fl
from noduleflow.engine import ConfigError
from noduleflow.engine.package import ModelPackage, default_package_path
from noduleflow.engine.scoring import score_dense


@pytest.fixture(scope="module")
def pkg(tiny_package):
    """A 3D-1 package (random weights: the layer walk and the FLOPs do not depend on them)."""
    return ModelPackage.load(tiny_package)


@pytest.fixture(scope="module")
def graph(pkg):
    return fl.layers_from_onnx(pkg.file("dense.onnx"), pkg.contract)


def _random_centres(contract, shape, n, seed):
    n_out = np.asarray(contract.dense_output_shape(shape))
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, m, n) for m in n_out], 1)
    idx = np.concatenate([idx, [[0, 0, 0], n_out - 1]])  # the grid's corners too
    return np.unique(idx, axis=0) * contract.dense_stride + contract.dense_offset


def test_per_patch_flops_match_the_trainer_count(pkg, graph):
    pytest.importorskip("torch")
    from noduleflow.trainer.models import build_model
    from noduleflow.trainer.models.summary import count

    assert pkg.manifest.architecture == "3d-1"
    m = build_model("3d-1")
    # the dense graph on a one-point tile: the trainer's count of dense_forward on 41^3
    per_point = fl.region_flops(graph, (1, 1, 1))
    assert per_point == pytest.approx(count(m, dense=True)[1] * 1e9, rel=0.01)
    assert 0.11e9 < per_point < 0.125e9
    # the patch graph reads only the receptive field: the trainer's count of a patch, and the
    # receptive-field-only work of one dense point (nothing discarded)
    per_patch = fl.patch_graph_flops(pkg.file("patch.onnx"), (1, 1, 41, 41, 41))
    assert per_patch == pytest.approx(count(m)[1] * 1e9, rel=0.01)
    receptive = sum(fl.needed_layer_flops(graph, np.ones((1, 1, 1), bool), discarded=False).values())
    assert per_patch == receptive
    assert 0.09e9 < per_patch < 0.1e9


def test_block_input_is_the_engine_tile_and_ort_agrees(pkg, graph):
    import onnxruntime as ort

    k = pkg.contract
    for out in [(1, 1, 1), (2, 3, 5), (24, 24, 24)]:
        assert fl.input_shape_for(graph, out).tolist() == [(n - 1) * k.dense_stride + k.patch_size for n in out]
    tile = (45, 41, 53)
    sess = ort.InferenceSession(str(pkg.file("dense.onnx")), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 1, *tile), np.float32)})[0]
    assert fl._forward(graph, tile)[graph.output].tolist() == list(y.shape[1:]) == [2, 1, 4]
    assert fl.block_flops(graph, tile) == fl.region_flops(graph, (2, 1, 4))


def test_layers_of_a_3d1_graph(graph):
    convs = graph.convs
    assert len(convs) == 18 and sum(x.op == "MaxPool" for x in graph) == 4
    # the inception blocks trim their branches' inputs: two crops each (1 and 2 voxels per side)
    assert sum(x.op == "Slice" for x in graph) == 4 and sum(x.op == "Concat" for x in graph) == 2
    stem, fc1 = convs[0], next(x for x in convs if x.name == "/fc1/Conv")
    assert (stem.cin, stem.cout, stem.kernel, stem.inputs) == (1, 16, (3, 3, 3), (graph.input,))
    assert fc1.flops_per_position == 2 * 27 * 64 * 64
    assert fl.heaviest_conv(graph).name == "/fc1/Conv"


def test_single_point_needs_one_patch(pkg, graph):
    k = pkg.contract
    shape = (90, 100, 110)
    per_patch = fl.region_flops(graph, (1, 1, 1))
    for c in ([20, 20, 20], [44, 60, 88]):
        assert fl.needed_work(graph, k, [c], shape) == per_patch
        assert fl.work_done(graph, k, [c], shape, 24) == per_patch
        # receptive fields alone: no crop margins, no rows a floor pooling drops
        assert fl.needed_work(graph, k, [c], shape, discarded=False) < 0.85 * per_patch


def test_needed_never_exceeds_done(pkg, graph):
    k = pkg.contract
    shape = (120, 150, 170)
    for seed, n, tile in [(0, 5, 24), (1, 60, 3), (2, 300, 5), (3, 2000, 8)]:
        c = _random_centres(k, shape, n, seed)
        done = fl.work_done(graph, k, c, shape, tile)
        need = fl.needed_work(graph, k, c, shape)
        least = fl.needed_work(graph, k, c, shape, discarded=False)
        assert 0 < least < need <= done
        assert need >= fl.region_flops(graph, (1, 1, 1))


def test_all_points_of_a_block_need_exactly_the_block(pkg, graph):
    k = pkg.contract
    shape = (120, 150, 170)
    o0, size = np.array([3, 2, 5]), (4, 5, 6)
    idx = np.argwhere(np.ones(size, bool)) + o0
    c = idx * k.dense_stride + k.dense_offset
    block = fl.region_flops(graph, size)
    assert fl.needed_work(graph, k, c, shape) == block
    assert fl.work_done(graph, k, c, shape, 24) == block  # one tile, its bounding box the block
    assert fl.work_done(graph, k, c, shape, 2) > block  # 2-point tiles: their halos computed again
    one_missing = c[1:]  # a corner point off: the block's bounding box stays, the needed work falls
    assert fl.needed_work(graph, k, one_missing, shape) < block == fl.work_done(graph, k, one_missing, shape, 24)


def test_work_done_tiles_are_what_the_engine_runs(pkg, graph):
    k = pkg.contract
    rng = np.random.default_rng(7)
    hu = rng.integers(-1000, 400, size=(83, 97, 110)).astype(np.int16)
    c = _random_centres(k, hu.shape, 40, 3)
    for tile_out in (3, 4, 24):
        seen = []

        def record(tile, extra=None, seen=seen):
            seen.append(np.array(tile[0, 0]))
            return np.zeros((1, *k.dense_output_shape(tile.shape[2:])), np.float32)

        scores = score_dense(record, k, hu, c, tile_out)
        assert np.isfinite(scores).all()
        boxes = list(fl.dense_tiles(k, c, hu.shape, tile_out))
        assert len(boxes) == len(seen) > (1 if tile_out < 24 else 0)
        covered = np.concatenate([sel for sel, *_ in boxes])
        assert sorted(covered.tolist()) == list(range(len(c)))
        for got, (_sel, _o0, _o1, a0, a1) in zip(seen, boxes):
            assert got.shape == tuple(a1 - a0)
            np.testing.assert_array_equal(got, k.normalise(hu[a0[0]:a1[0], a0[1]:a1[1], a0[2]:a1[2]]))
        assert fl.work_done(graph, k, c, hu.shape, tile_out) == sum(fl.block_flops(graph, t.shape) for t in seen)


def test_centres_off_the_grid_are_refused(pkg, graph):
    with pytest.raises(ConfigError, match="outside the dense output grid"):
        fl.work_done(graph, pkg.contract, [[0, 20, 20]], (90, 90, 90), 24)
    with pytest.raises(ConfigError, match="outside the dense output grid"):
        fl.needed_work(graph, pkg.contract, [[20, 20, 80]], (90, 90, 90))


def _onnx_chain(path, nodes, inits):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "d", "h", "w"])],
                          [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_hand_made_graph_counts_by_hand(tmp_path):
    from onnx import helper

    w1, w2 = np.zeros((2, 1, 3, 3, 3), np.float32), np.zeros((4, 2, 3, 3, 3), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3, 3]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MaxPool", ["b"], ["c"], kernel_shape=[2, 2, 2], strides=[2, 2, 2]),
             helper.make_node("Conv", ["c", "w2"], ["y"], kernel_shape=[3, 3, 3])]
    g = fl.layers_from_onnx(_onnx_chain(tmp_path / "chain.onnx", nodes, {"w1": w1, "w2": w2}))
    assert [x.op for x in g] == ["Conv", "MaxPool", "Conv"] and g.output == "y"
    # one output point: conv2 reads 3^3 of the pool; the pool 7^3 (the largest input giving 3) of
    # conv1; conv1 9^3 of the input. conv1 7^3 x 2*27*1*2, conv2 1 x 2*27*2*4
    assert fl.input_shape_for(g, (1, 1, 1)).tolist() == [9, 9, 9]
    assert fl.region_flops(g, (1, 1, 1)) == 7 ** 3 * 108 + 432
    one = np.ones((1, 1, 1), bool)
    assert sum(fl.needed_layer_flops(g, one).values()) == 7 ** 3 * 108 + 432
    assert sum(fl.needed_layer_flops(g, one, discarded=False).values()) == 6 ** 3 * 108 + 432
    # two output points two apart along x: conv1 positions 0..5 and 4..9 along x, 0..5 along z and y
    two = np.zeros((1, 1, 3), bool)
    two[0, 0, [0, 2]] = True
    assert sum(fl.needed_layer_flops(g, two, discarded=False).values()) == 6 * 6 * 10 * 108 + 2 * 432


@pytest.mark.parametrize("op, extra", [("ConvTranspose", {"kernel_shape": [2, 2, 2], "strides": [2, 2, 2]}),
                                       ("GlobalAveragePool", {}), ("Resize", None)])
def test_ops_that_change_size_unhandled_are_refused(tmp_path, op, extra):
    from onnx import helper

    w = np.zeros((2, 1, 3, 3, 3), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], kernel_shape=[3, 3, 3])]
    inits = {"w": w}
    if op == "Resize":
        inits["scales"] = np.array([1, 1, 2, 2, 2], np.float32)
        nodes.append(helper.make_node("Resize", ["a", "", "scales"], ["y"]))
    elif op == "ConvTranspose":
        inits["wt"] = np.zeros((2, 2, 2, 2, 2), np.float32)
        nodes.append(helper.make_node(op, ["a", "wt"], ["y"], **extra))
    else:
        nodes.append(helper.make_node(op, ["a"], ["y"], **extra))
    with pytest.raises(ConfigError, match=f"op {op}"):
        fl.layers_from_onnx(_onnx_chain(tmp_path / "g.onnx", nodes, inits))


def test_peak_with_a_tiny_budget(graph):
    pk = fl.peak(seconds_budget=0.01, graph=graph, matmul_n=128, conv_side=10, threads=1)
    assert pk["matmul_gflops"] > 0 and pk["conv3d_gflops"] > 0 and pk["threads"] == 1
    assert pk["conv3d_layer"] == "/fc1/Conv" and pk["conv3d"] == "64->64 3x3x3 on 10^3"
    assert pk["conv3d_gflop_per_run"] == pytest.approx(2 * 27 * 64 * 64 * 8 ** 3 / 1e9)
    # the bf16 conv3d peak, apart from the float32 ones, where OpenVINO runs bf16 on this CPU
    import importlib.util

    if importlib.util.find_spec("openvino") is not None:
        from noduleflow.engine.backends.openvino import cpu_capabilities

        assert (pk["conv3d_bf16_gflops"] is not None) == ("BF16" in cpu_capabilities())
    else:
        assert pk["conv3d_bf16_gflops"] is None


@pytest.fixture(scope="module")
def graph_3d_e(tmp_path_factory):
    """3D-E's dense graph (random weights) and the model."""
    pytest.importorskip("torch")
    from noduleflow.export.onnx_export import export_dense
    from noduleflow.trainer.models import build_model

    m = build_model("3d-e").eval()
    path = export_dense(m, tmp_path_factory.mktemp("e") / "dense.onnx", False)
    return fl.layers_from_onnx(path, ModelPackage.load(default_package_path()).contract), m


def test_shipped_dense_graph_is_3d_e(graph_3d_e):
    """The shipped package's stage-1 CNN is 3D-E: its dense graph walks as a fresh 3D-E export does."""
    shipped = ModelPackage.load(default_package_path())
    assert shipped.manifest.architecture == "3d-e"
    g = fl.layers_from_onnx(shipped.file("dense.onnx"), shipped.contract)
    fresh, _ = graph_3d_e
    assert [(x.cin, x.cout, x.kernel, x.stride) for x in g.convs] == \
        [(x.cin, x.cout, x.kernel, x.stride) for x in fresh.convs]
    assert fl.region_flops(g, (2, 3, 4)) == fl.region_flops(fresh, (2, 3, 4))
    assert fl.heaviest_conv(g).cin == 48


def test_3d_e_graph_counts_as_the_trainer(pkg, graph_3d_e):
    """The strided convolutions of 3D-E walk like 3D-1's poolings: one point's FLOPs are the trainer's
    count, the engine's tiles map to the graph's input, and needed never exceeds done."""
    from noduleflow.trainer.models.summary import count

    g, m = graph_3d_e
    assert [(x.kernel, x.stride) for x in g.convs[:2]] == [((4, 4, 4), (2, 2, 2)), ((3, 3, 3), (2, 2, 2))]
    assert not any(x.op in ("MaxPool", "Concat") for x in g)
    assert fl.region_flops(g, (1, 1, 1)) == pytest.approx(count(m, dense=True)[1] * 1e9, rel=1e-6)
    # without the contract, the largest input giving one point: 3 voxels more than the engine's tile
    bare = fl.DenseLayers(g.layers, g.input, g.output)
    assert fl.input_shape_for(bare, (1, 1, 1)).tolist() == [43, 43, 43]
    assert fl.region_flops(bare, (1, 1, 1)) > fl.region_flops(g, (1, 1, 1))
    k = pkg.contract
    for out in [(1, 1, 1), (2, 3, 5), (24, 24, 24)]:
        assert fl.input_shape_for(g, out).tolist() == [(n - 1) * k.dense_stride + k.patch_size for n in out]
    shape = (150, 120, 170)
    c = _random_centres(k, shape, 60, 3)
    assert 0 < fl.needed_work(g, k, c, shape) <= fl.work_done(g, k, c, shape, 8)


def test_peak_measures_the_reference_conv_beside_a_narrower_graph(graph_3d_e):
    """A graph whose heaviest convolution is not 64 -> 64 3^3: both are measured and the conv3d peak is
    the faster, so a narrow network is not set against a lower peak."""
    g, _ = graph_3d_e
    assert fl.heaviest_conv(g).cin == 48
    pk = fl.peak(seconds_budget=0.01, graph=g, matmul_n=128, conv_side=10, threads=1)
    measured = pk["conv3d_measured"]
    assert [d["conv"] for d in measured] == ["64->64 3x3x3 on 10^3", "48->48 3x3x3 on 10^3"]
    fastest = max(max(d["gflops_by_runtime"].values()) for d in measured)
    assert pk["conv3d_gflops"] == fastest
    assert pk["conv3d"] == next(d["conv"] for d in measured if max(d["gflops_by_runtime"].values()) == fastest)
    for rt, v in pk["conv3d_gflops_by_runtime"].items():
        assert v == max(d["gflops_by_runtime"][rt] for d in measured)


def test_accounting_arithmetic():
    a = fl.accounting(20e9, 5e9, 2.0, {"matmul_gflops": 100.0, "conv3d_gflops": 40.0})
    assert a["gflop_done"] == 20 and a["gflop_needed"] == 5 and a["needed_over_done"] == 0.25
    assert a["gflops_done"] == 10 and a["gflops_needed"] == 2.5
    assert a["done_over_matmul_peak"] == pytest.approx(0.1) and a["done_over_conv3d_peak"] == pytest.approx(0.25)
    assert a["needed_over_matmul_peak"] == pytest.approx(0.025)
    assert a["needed_over_conv3d_peak"] == pytest.approx(0.0625)
    with pytest.raises(ConfigError):
        fl.accounting(1.0, 1.0, 0.0, {"matmul_gflops": 1.0, "conv3d_gflops": 1.0})


def test_markdown_reports_flops_mask_share_and_rss():
    from noduleflow.bench.speed_report import flops_lines, mask_and_rss_lines

    acc = fl.accounting(20e9, 5e9, 2.0, {"matmul_gflops": 100.0, "conv3d_gflops": 40.0})
    r = {"flops": {"tile_out": 24, "per_patch_gflop": 0.138, "per_patch_receptive_gflop": 0.095,
                   "all_scans": dict(acc, gflop_needed_receptive=4.0),
                   "peak": {"matmul_gflops": 100.0, "matmul_n": 4096, "conv3d_gflops": 40.0,
                            "conv3d": "64->64 3x3x3 on 48^3", "threads": 2}},
         "stage_s_median": {"mask": 1.0, "total": 4.0},
         "two_stage": {"stage_s_median": {"mask": 1.0, "total": 5.0}},
         "per_scan": [{"peak_rss_mb_after": {"load": 100.0, "clustering": 300.0},
                       "two_stage_peak_rss_mb_after": {"stage2": 400.0}},
                      {"peak_rss_mb_after": {"load": 500.0}, "two_stage_peak_rss_mb_after": {"stage2": 600.0}}]}
    text = "\n".join(flops_lines(r) + mask_and_rss_lines(r))
    assert "needed/done 0.25" in text and "10.0 GFLOP/s" in text and "10 % of matmul, 25 % of conv3d" in text
    assert "one stage 25 %" in text and "two stages 20 %" in text
    assert "one stage median 400, max 500" in text and "two stages median 500, max 600" in text
    assert flops_lines({}) == [] and mask_and_rss_lines({}) == []


def test_patch_graph_flops_agree_with_the_dense_count_and_count_input_channels():
    from noduleflow.bench import flops as fl
    from noduleflow.engine.package import default_package_path

    pkg = default_package_path()
    graph = fl.layers_from_onnx(pkg / "dense.onnx")
    # the patch graph computes one dense point's receptive field, nothing it would discard
    one = sum(fl.needed_layer_flops(graph, np.ones((1, 1, 1), bool), discarded=False).values())
    assert one < fl.region_flops(graph, (1, 1, 1))
    assert fl.patch_graph_flops(pkg / "patch.onnx", (1, 1, 41, 41, 41)) == one
    # stage 2: same network with a second input channel -> only the first convolution(s) grow
    s2 = fl.patch_graph_flops(pkg / "stage2.onnx", (1, 2, 41, 41, 41))
    assert one < s2 < 2 * one
    assert fl.patch_graph_flops(pkg / "patch.onnx", (3, 1, 41, 41, 41)) == 3 * one


def test_stage2_runs():
    from noduleflow.trainer.evaluate.stage2_tuning import stage2_runs

    assert stage2_runs(200, 2, 0) == 400
    assert stage2_runs(200, 4, 50) == 350
    assert stage2_runs(30, 4, 50) == 120
    assert stage2_runs(200, 1, 50) == 200


def test_merge_peaks_keeps_the_highest_of_each_figure():
    """Two measurements of one run: each figure the higher (a transient load only lowers one), the
    conv3d peak the faster runtime's of the merged figures, both measurements kept; none refused."""
    from noduleflow.bench.flops import merge_peaks
    from noduleflow.engine import ConfigError

    a = {"matmul_gflops": 150.0, "conv3d_gflops_by_runtime": {"onnxruntime": 140.0, "openvino": 105.0},
         "conv3d_gflops": 140.0, "conv3d_runtime": "onnxruntime", "conv3d_bf16_gflops": 198.0, "seconds": 6.0,
         "threads": 2}
    b = {"matmul_gflops": 189.0, "conv3d_gflops_by_runtime": {"onnxruntime": 100.0, "openvino": 188.0},
         "conv3d_gflops": 188.0, "conv3d_runtime": "openvino", "conv3d_bf16_gflops": None, "seconds": 5.0,
         "threads": 2}
    m = merge_peaks([a, b])
    assert m["matmul_gflops"] == 189.0 and m["conv3d_gflops_by_runtime"] == {"onnxruntime": 140.0, "openvino": 188.0}
    assert m["conv3d_runtime"] == "openvino" and m["conv3d_gflops"] == 188.0 and m["conv3d_bf16_gflops"] == 198.0
    assert m["seconds"] == 11.0 and len(m["measurements"]) == 2 and m["measurements"][0]["matmul_gflops"] == 150.0
    assert merge_peaks([b])["conv3d_bf16_gflops"] is None and merge_peaks([b])["matmul_gflops"] == 189.0
    # the Conv described is the one the merged peak was measured on
    a2, b2 = dict(a, conv3d="48->48 3x3x3 on 48^3"), dict(b, conv3d="64->64 3x3x3 on 48^3")
    assert merge_peaks([b2, a2])["conv3d"] == "64->64 3x3x3 on 48^3"
    with pytest.raises(ConfigError):
        merge_peaks([])
    from noduleflow.bench.speed_report import peak_measurements

    assert "the highest of 2 measurements" in peak_measurements(m) and "matmul 150/189" in peak_measurements(m)
    assert "bf16 conv3d 198/-" in peak_measurements(m) and peak_measurements(merge_peaks([b])) == ""
