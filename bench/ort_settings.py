"""`noduleflow bench ort-settings`: ONNX Runtime CPU session settings for the 3-D graphs, measured.

    noduleflow bench ort-settings [--model PKG] [--repeats 3] [--out DIR]
    python -m noduleflow.bench.ort_settings ...   (the same options)

Times the dense graph on one engine-sized tile and the patch graph on one batch under
intra-op thread counts, graph optimisation levels and the CPU memory arena on/off,
best of N, in one run; writes ort_settings.json/.md. The engine's defaults
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

from .common import machine, standalone, write_report

HELP = "ONNX Runtime CPU threads / graph optimisation / arena, measured"
DESCRIPTION = ("Time dense.onnx on one engine-sized tile and patch.onnx on one batch under each intra-op thread "
               "count, graph optimisation level and arena setting; writes ort_settings.json/.md.")


def measure(package=None, repeats: int = 3, tile: int = 24) -> dict:
    import onnxruntime as ort

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


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench ort-settings` (and of ``python -m noduleflow.bench.ort_settings``)."""
    p.add_argument("--model", help="model package (default: the shipped one)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each setting (best of)")
    p.add_argument("--out", default="bench-ort-settings", help="output folder (default ./bench-ort-settings)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("ort-settings", help=HELP, description=DESCRIPTION))


def command(args: argparse.Namespace) -> int:
    res = measure(args.model, args.repeats)
    lines = [f"# ONNX Runtime CPU session settings, {res['model_id']}", "",
             f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, onnxruntime "
             f"{res['machine']['onnxruntime']}; best of {res['repeats']}.", ""]
    for g in ("dense.onnx", "patch.onnx"):
        f = res[f"fastest_{g}"]
        lines.append(f"- {g}: fastest {f['opt_level']}, {f['intra_op_threads']} threads, arena {f['cpu_mem_arena']}: "
                     f"{f['best_s']:.3f} s ({res[f'speedup_{g}_fastest_vs_basic_1thread']:.2f}x vs basic/1 thread)")
    write_report(Path(args.out), "ort_settings", res, "\n".join(lines) + "\n")
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "ort_settings", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
