"""ONNX Runtime CPU session settings for the 3-D graphs, measured: ``python -m noduleflow.bench.ort_settings``.

Times the dense graph on one engine-sized tile and the patch graph on one batch under
intra-op thread counts, graph optimisation levels and the CPU memory arena on/off,
best of N, in one run; writes bench/results/ort_settings.json. The engine's defaults
(engine/backends/onnxruntime.py) follow this measurement.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np


def measure(package=None, repeats: int = 3, tile: int = 24) -> dict:
    import onnxruntime as ort

    from noduleflow.bench.speed import machine
    from noduleflow.engine.package import ModelPackage, default_package_path

    pkg = ModelPackage.load(package or default_package_path())
    rng = np.random.default_rng(0)
    p = pkg.contract.patch_size
    side = pkg.contract.dense_stride * (tile - 1) + p
    inputs = {"dense.onnx": rng.uniform(size=(1, 1, side, side, side)).astype(np.float32),
              "patch.onnx": rng.uniform(size=(64, 1, p, p, p)).astype(np.float32)}
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    threads = sorted({1, os.cpu_count() or 1})  # on a bigger machine also try half the cores
    if (os.cpu_count() or 1) >= 8:
        threads = sorted(set(threads) | {(os.cpu_count() or 1) // 2})
    rows = []
    for graph, x in inputs.items():
        for level, nthreads, arena in itertools.product(levels, threads, (True, False)):
            so = ort.SessionOptions()
            so.graph_optimization_level = levels[level]
            so.intra_op_num_threads = nthreads
            so.inter_op_num_threads = 1
            so.enable_cpu_mem_arena = arena
            sess = ort.InferenceSession(str(pkg.path / graph), sess_options=so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            sess.run(None, {name: x})  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                sess.run(None, {name: x})
                best = min(best, time.perf_counter() - t)
            rows.append({"graph": graph, "opt_level": level, "intra_op_threads": nthreads, "cpu_mem_arena": arena,
                         "best_s": best})
            print(json.dumps(rows[-1]), flush=True)
    out = {"machine": machine(), "model_id": pkg.manifest.model_id, "dense_tile_side": side, "patch_batch": 64,
           "repeats": repeats, "rows": rows}
    for graph in inputs:
        g = [r for r in rows if r["graph"] == graph]
        fastest = min(g, key=lambda r: r["best_s"])
        out[f"fastest_{graph}"] = fastest
        ref = next(r for r in g if r["opt_level"] == "basic" and r["intra_op_threads"] == 1 and r["cpu_mem_arena"])
        out[f"speedup_{graph}_fastest_vs_basic_1thread"] = ref["best_s"] / fastest["best_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench-ort-settings",
                    help="folder for ort_settings.json")
    a = ap.parse_args(argv)
    res = measure(a.model, a.repeats)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "ort_settings.json").write_text(json.dumps(res, indent=2))
    for g in ("dense.onnx", "patch.onnx"):
        f = res[f"fastest_{g}"]
        print(f"{g}: fastest {f['opt_level']}, {f['intra_op_threads']} threads, arena {f['cpu_mem_arena']}: "
              f"{f['best_s']:.3f} s ({res[f'speedup_{g}_fastest_vs_basic_1thread']:.2f}x vs basic/1 thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
