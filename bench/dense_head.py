"""Is it faster to run the dense graph's head at the scored points only? Measured, not shipped.

    python -m noduleflow.bench.dense_head [--model PKG] [--out DIR] [--repeats 3]

The dense graph ends in a head: a 3^3 convolution over the trunk's 64 channels at the output grid
(``fc1``), then 1^3 convolutions, one logit per output point. On a tile the head computes every
point of the tile's output box, while only the lung's candidate grid points are scored (about a
quarter of the box on the phantoms): the head is most of the arithmetic the dense pass does and
does not need (`noduleflow bench speed`'s FLOP accounting). The alternative measured here: the
graph cut before the head (ONNX, the trunk's features channels-last), then per tile each scored
point's 3^3 x 64 window gathered into a row (numba) and the head as matrix products (numpy BLAS).
On one phantom scan (bench speed's: 300 mm at 1.5 x 0.7 x 0.7 mm), on the engine's tiles, for
each installed CPU runtime: the whole graph (as `Detector._score_dense` runs it) against trunk +
head at the points, alternating, median of ``--repeats``; the logits compared; the FLOPs each does.
Needs the export extra (onnx). Writes dense_head.json/.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _gather_windows(features, points, k, out):
    c = features.shape[3]
    for i in prange(points.shape[0]):
        j = 0
        for dz in range(k):
            for dy in range(k):
                for dx in range(k):
                    src = features[points[i, 0] + dz, points[i, 1] + dy, points[i, 2] + dx]
                    for ch in range(c):
                        out[i, j + ch] = src[ch]
                    j += c


def split_head(model):
    """(trunk ModelProto giving (N, D, H, W, C) features, head layers [(W (in, out), b)], kernel k):
    the graph's final Conv/Relu chain (after an optional Gather of channel 0) taken off."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.utils import Extractor

    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    node = producer[g.output[0].name]
    if node.op_type in ("Gather", "Squeeze"):
        node = producer[node.input[0]]
    convs = []
    while True:
        if node.op_type != "Conv":
            raise ValueError(f"the head's chain reaches {node.op_type}, not a Conv")
        convs.append(node)
        before = producer.get(node.input[0])
        if before is None or before.op_type != "Relu":
            break
        node = producer[before.input[0]]
    convs.reverse()
    w0 = inits[convs[0].input[1]]
    k, c = w0.shape[2], w0.shape[1]
    layers = [(np.ascontiguousarray(w0.transpose(2, 3, 4, 1, 0).reshape(k ** 3 * c, -1)), inits[convs[0].input[2]])]
    layers += [(np.ascontiguousarray(inits[n.input[1]].reshape(inits[n.input[1]].shape[:2]).T), inits[n.input[2]])
               for n in convs[1:]]
    features = convs[0].input[0]
    trunk = Extractor(model).extract_model([g.input[0].name], [features])
    trunk.graph.node.append(helper.make_node("Transpose", [features], ["features"], perm=[0, 2, 3, 4, 1]))
    del trunk.graph.output[:]
    trunk.graph.output.append(helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, None))
    return trunk, [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers], int(k)


def head_logits(features, points, layers, k, chunk: int = 4096) -> np.ndarray:
    out = np.empty(len(points), np.float32)
    buf = np.empty((min(chunk, max(len(points), 1)), layers[0][0].shape[0]), np.float32)
    for s in range(0, len(points), chunk):
        x = buf[:min(chunk, len(points) - s)]
        _gather_windows(features, points[s:s + len(x)], k, x)
        for i, (w, b) in enumerate(layers):
            x = x @ w
            x += b
            if i < len(layers) - 1:
                np.maximum(x, 0.0, out=x)
        out[s:s + len(x)] = x[:, 0]
    return out


def _runner(runtime: str, model_bytes: bytes):
    """A function tile -> first output, for ONNX Runtime or OpenVINO on all cores."""
    if runtime == "onnxruntime-cpu":
        import onnxruntime as ort

        from noduleflow.engine.backends.onnxruntime import session_options

        s = ort.InferenceSession(model_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return lambda x: s.run(None, {name: x})[0]
    import openvino as ov

    core = ov.Core()
    req = core.compile_model(core.read_model(model_bytes, b""), "CPU",
                             {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    return lambda x: req.infer({0: x})[0]


def layer_profile(dense_path, tile_out: int = 32, repeats: int = 3, input_shape=None,
                  precision: str = "fp32", flops_path=None, contract=None) -> dict | None:
    """Where a full dense tile's time goes in OpenVINO (its per-node profiling counters, the best of
    ``repeats`` runs on a random tile of ``tile_out``^3 output points): per node, milliseconds, its
    share, and for a convolution its FLOPs (`bench.flops`) and GFLOP/s. ``input_shape`` (N, C, D, H,
    W): instead, any graph with a static input of that shape (e.g. stage 2's batch of context
    patches; FLOPs from ONNX shape inference). ``precision``: "fp32" (the engine's default) or
    "bf16" (OpenVINO's bfloat16 arithmetic, `--precision bf16`). ``flops_path``: the graph to count
    the FLOPs on, when not the one timed (an INT8 graph's weights are not initializers of its
    convolutions: its fp32 original's node names and FLOPs). ``contract``: the package's, for the
    engine's tile (`bench.flops.input_shape_for`). None without OpenVINO."""
    import importlib.util

    from noduleflow.bench import flops as fl

    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino as ov

    if input_shape is None:
        graph = fl.layers_from_onnx(dense_path, contract)
        side = [int(v) for v in fl.input_shape_for(graph, (tile_out,) * 3)]
        conv_flops = fl.layer_flops(graph, side)
        shape = (1, 1, *side)
    else:
        shape = tuple(int(v) for v in input_shape)
        side = list(shape[2:])
        conv_flops = fl.conv_flops_by_node(flops_path or dense_path, shape)
    core = ov.Core()
    # the engine's arithmetic: fp32 unless asked (OpenVINO's own default is bf16 where the CPU has it)
    req = core.compile_model(core.read_model(str(dense_path)), "CPU",
                             {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True,
                              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}).create_infer_request()
    x = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
    req.infer({0: x})
    best, rows = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        req.infer({0: x})
        if time.perf_counter() - t < best:
            best = time.perf_counter() - t
            rows = [(p.node_name, p.node_type, p.exec_type, p.real_time.total_seconds()) for p in req.profiling_info]
    total = sum(r[3] for r in rows)
    nodes = []
    for name, kind, impl, sec in sorted(rows, key=lambda r: -r[3]):
        if sec <= 0:
            continue
        base = name.split("/WithoutBiases")[0]
        f = conv_flops.get(base)
        nodes.append({"node": name, "type": kind, "impl": impl, "ms": sec * 1e3, "share": sec / total,
                      "gflop": None if f is None else f / 1e9, "gflops": None if f is None else f / sec / 1e9})
    return {"tile_side": side, "input_shape": list(shape), "seconds": best, "gflop": sum(conv_flops.values()) / 1e9,
            "nodes": nodes}


def run(out_dir: Path, repeats: int = 3, seed: int = 500, model=None) -> dict:
    import onnx

    from noduleflow.bench import flops as fl
    from noduleflow.bench.speed import installed_cpu_backends, machine
    from noduleflow.engine.detector import Detector, dense_tiles
    from noduleflow.engine.package import ModelPackage, default_package_path
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    pkg = ModelPackage.load(model or default_package_path())
    det = Detector(pkg, mode="dense", stages="1", backend="onnxruntime-cpu")
    k, t_out = det.contract, det.config.tile_out
    whole_bytes = pkg.file("dense.onnx").read_bytes()
    trunk, layers, kernel = split_head(onnx.load_from_string(whole_bytes))
    trunk_bytes = trunk.SerializeToString()
    vol = generate_phantom(seed, params=PhantomParams(z_extent_mm=300.0), spacing_zyx_mm=(1.5, 0.7, 0.7)).volume
    pre = preprocess(vol, det.spec)
    centres = det.grid_centres(pre)
    hu = pre.volume.hu
    idx = (centres - k.dense_offset) // k.dense_stride
    tiles = [(sel, o0, k.normalise(hu[a0[0]:a1[0], a0[1]:a1[1], a0[2]:a1[2]])[None, None])
             for sel, o0, _, a0, a1 in dense_tiles(k, centres, np.asarray(hu.shape), t_out)]
    graph = fl.layers_from_onnx(pkg.file("dense.onnx"), pkg.contract)
    done_whole = fl.work_done(graph, k, centres, hu.shape, t_out)
    head_per_point = sum(2 * w.shape[0] * w.shape[1] for w, _ in layers)
    head_convs = graph.convs[-len(layers):]
    head_done = sum(fl.layer_flops(graph, x[2].shape[2:])[c.name] for x in tiles for c in head_convs)
    done_split = done_whole - head_done + head_per_point * len(centres)
    res = {"machine": machine(), "lung_box_1mm": list(hu.shape), "grid_points": int(len(centres)),
           "tiles": len(tiles), "tile_out": t_out, "gflop_whole": done_whole / 1e9, "gflop_split": done_split / 1e9,
           "gflop_needed": fl.needed_work(graph, k, centres, hu.shape) / 1e9,
           # no tiles at all: one run over the box of every scored point (no halo computed twice)
           "gflop_one_run": fl.work_done(graph, k, centres, hu.shape, 1 << 20) / 1e9,
           "head_gflop_done": head_done / 1e9, "head_gflop_needed": head_per_point * len(centres) / 1e9,
           "repeats": repeats, "runtimes": {}}
    for rt in installed_cpu_backends(pkg):
        whole, part = _runner(rt, whole_bytes), _runner(rt, trunk_bytes)

        def run_whole():
            out = np.empty(len(centres), np.float32)
            for sel, o0, x in tiles:
                y = whole(x)[0]
                loc = idx[sel] - o0
                out[sel] = y[loc[:, 0], loc[:, 1], loc[:, 2]]
            return out

        def run_split():
            out, t_head = np.empty(len(centres), np.float32), 0.0
            for sel, o0, x in tiles:
                f = part(x)[0]
                t = time.perf_counter()
                out[sel] = head_logits(f, np.ascontiguousarray(idx[sel] - o0), layers, kernel)
                t_head += time.perf_counter() - t
            return out, t_head

        a, (b, _) = run_whole(), run_split()  # warm-up: every tile shape once
        tw, ts, th = [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            run_whole()
            tw.append(time.perf_counter() - t)
            t = time.perf_counter()
            _, h = run_split()
            ts.append(time.perf_counter() - t)
            th.append(h)
        res["runtimes"][rt] = {"whole_s": statistics.median(tw), "split_s": statistics.median(ts),
                               "head_s": statistics.median(th), "whole_over_split": statistics.median(tw) / statistics.median(ts),
                               "head_gflops": head_per_point * len(centres) / statistics.median(th) / 1e9,
                               "max_abs_logit_diff": float(np.abs(a - b).max())}
        print(rt, json.dumps(res["runtimes"][rt]), flush=True)
    res["layer_profile"] = layer_profile(pkg.file("dense.onnx"), t_out, repeats, contract=pkg.contract)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dense_head.json").write_text(json.dumps(res, indent=2))
    (out_dir / "dense_head.md").write_text(markdown(res))
    return res


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# The dense head at the scored points only (measured, not shipped)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}, openvino {m.get('openvino')}. "
             "Command: `python -m noduleflow.bench.dense_head`.", "",
             f"One phantom scan: lung box {r['lung_box_1mm']} at 1 mm, {r['grid_points']} scored grid points, "
             f"{r['tiles']} tiles of up to {r['tile_out']}^3 output points. FLOPs: the whole graph on the tiles "
             f"{r['gflop_whole']:.1f} GFLOP (one run over the points' whole box, no tiles: {r['gflop_one_run']:.1f}), "
             f"trunk + head at the points {r['gflop_split']:.1f}, needed {r['gflop_needed']:.1f}; of these the head "
             f"(the last convolutions) does {r['head_gflop_done']:.1f} on the tiles and needs {r['head_gflop_needed']:.1f}.", "",
             "| runtime | whole graph s | trunk + head at points s | of which head s | head GFLOP/s | whole / split | max logit diff |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for rt, x in r["runtimes"].items():
        lines.append(f"| {rt} | {x['whole_s']:.3f} | {x['split_s']:.3f} | {x['head_s']:.3f} | {x['head_gflops']:.0f} | "
                     f"{x['whole_over_split']:.2f}x | {x['max_abs_logit_diff']:.1e} |")
    lines += ["", f"Median of {r['repeats']}, alternating. Above 1.00x the split would be the faster."]
    lp = r.get("layer_profile")
    if lp:
        lines += ["", f"Where a full tile's time goes (OpenVINO's profiling counters; a {lp['tile_side'][0]}^3 tile, "
                  f"{lp['gflop']:.1f} GFLOP in {lp['seconds'] * 1e3:.0f} ms = {lp['gflop'] / lp['seconds']:.0f} GFLOP/s; "
                  "nodes above 1 % of the time):", "",
                  *profile_table(lp["nodes"])]
    return "\n".join(lines) + "\n"


def profile_table(nodes, min_share: float = 0.01) -> list[str]:
    """`layer_profile`'s nodes above ``min_share`` of the time as markdown table lines."""
    lines = ["| node | type | implementation | ms | share | GFLOP | GFLOP/s |", "|---|---|---|---:|---:|---:|---:|"]
    for n in nodes:
        if n["share"] < min_share:
            continue
        g = "" if n["gflop"] is None else f"{n['gflop']:.2f}"
        rate = "" if n["gflops"] is None else f"{n['gflops']:.0f}"
        lines.append(f"| {n['node']} | {n['type']} | {n['impl']} | {n['ms']:.1f} | {100 * n['share']:.1f} % | {g} | {rate} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.dense_head", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model package (default: the shipped one; the committed figures are "
                                    "3D-1 v6's, the stage-1 CNN up to v13: trainer/checkpoints/default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench-dense-head", help="output folder (default ./bench-dense-head)")
    a = ap.parse_args(argv)
    print(markdown(run(Path(a.out), a.repeats, model=a.model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
