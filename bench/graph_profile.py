"""Where one call of a package's graph spends its time, node by node, in OpenVINO:
``python -m noduleflow.bench.graph_profile [--graph stage2] [--batch 64] [--precision fp32|bf16|int8]
[--package PKG]``.

OpenVINO's per-node profiling counters (the best of ``--repeats`` calls on random inputs of the
engine's shapes: a batch of context patches for stage 2 or of patches for the patch graph, a full
165^3 tile for the dense graph), each convolution with its FLOPs and GFLOP/s
(`bench.dense_head.layer_profile`), in the arithmetic the engine runs with ``--precision``: fp32 (the
default, as the engine's), bf16 (the same graph in bfloat16) or int8 (the package's
``GRAPH_int8.onnx``). Writes graph_profile_GRAPH[_PRECISION].json and .md to ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(out_dir: Path, graph: str = "stage2", batch: int = 64, package=None, repeats: int = 5,
        precision: str = "fp32") -> dict:
    from noduleflow.bench.dense_head import layer_profile
    from noduleflow.bench.speed import machine
    from noduleflow.engine.errors import ConfigError
    from noduleflow.engine.package import ModelPackage, default_package_path

    pkg = ModelPackage.load(package or default_package_path())
    fname = f"{graph}_int8.onnx" if precision == "int8" else f"{graph}.onnx"
    path = pkg.file(fname)
    if path is None:
        raise ConfigError(f"package {pkg.manifest.model_id} has no {fname}")
    p = pkg.contract.patch_size
    if graph == "dense":
        prof = layer_profile(path, repeats=repeats, precision=precision, contract=pkg.contract)
    else:
        ch = pkg.contract.stage2.channels if graph == "stage2" else 1
        prof = layer_profile(path, repeats=repeats, input_shape=(batch, ch, p, p, p), precision=precision,
                             flops_path=pkg.file(f"{graph}.onnx"))
    if prof is None:
        raise ConfigError("the profile needs OpenVINO: pip install openvino")
    r = {"machine": machine(), "model_id": pkg.manifest.model_id, "graph": graph, "precision": precision,
         "repeats": repeats, **prof}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"graph_profile_{graph}" + ("" if precision == "fp32" else f"_{precision}")
    (out_dir / f"{stem}.json").write_text(json.dumps(r, indent=1))
    (out_dir / f"{stem}.md").write_text(markdown(r))
    return r


def markdown(r: dict) -> str:
    from noduleflow.bench.dense_head import profile_table

    m = r["machine"]
    shape = "x".join(map(str, r["input_shape"]))
    prec = r.get("precision", "fp32")
    lines = [f"# Where one call of {r['model_id']}'s {r['graph']} graph spends its time (OpenVINO, {prec})", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores; openvino {m.get('openvino')}. Command: `python -m "
             f"noduleflow.bench.graph_profile --graph {r['graph']} --precision {prec}`. Input {shape}, the best of "
             f"{r['repeats']} calls: "
             f"{r['gflop']:.2f} GFLOP of convolutions in {r['seconds'] * 1e3:.0f} ms = "
             f"{r['gflop'] / r['seconds']:.0f} GFLOP/s. Nodes above 1 % of the time (OpenVINO's counters; "
             "their sum can exceed the call's time).", "", *profile_table(r["nodes"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.graph_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", choices=("stage2", "patch", "dense"), default="stage2")
    ap.add_argument("--batch", type=int, default=64, help="patches per call (stage2, patch; default 64)")
    ap.add_argument("--package", help="model package (default: the shipped one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                    help="fp32 (default, the engine's), bf16 (the same graph in bfloat16, on a CPU that has it) or "
                         "int8 (the package's GRAPH_int8.onnx)")
    ap.add_argument("--out", default="bench/results/graph_profile", help="output folder")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.repeats < 1:
        ap.error(f"--batch and --repeats must be >= 1, got {a.batch} and {a.repeats}")
    print(markdown(run(Path(a.out), a.graph, a.batch, a.package, a.repeats, a.precision)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
