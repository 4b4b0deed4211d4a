"""Two model packages' graphs side by side: ``python -m noduleflow.bench.package_ab --before PKG``.

For a change that rewrites the exported graphs but not the weights (a different form of the same
network), what it changes:

- per graph both packages hold (stage2, patch, dense): node counts by op type in the file;
- per CPU backend installed (`bench.speed.CPU_BACKENDS`, through the engine's own backends and
  settings): the time of one call, ``before`` and ``after`` alternating, median (and min) of
  ``--repeats``; the inputs are the engine's: a batch of 64 patches (stage 2: 64 two-channel
  context patches) and one full dense tile (tile_out 32: 165^3 voxels), uniform random in [0, 1]
  with a fixed seed; the max |logit difference| between the two packages on them;
- the default detection (``--backend auto``) of the ``--seeds`` phantom chest CTs with each package:
  the candidates' counts, centres (max distance) and probabilities (max difference).

``--after`` defaults to the shipped package. Writes package_ab.json and .md to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

GRAPHS = ("stage2", "patch", "dense")
BATCH = 64
TILE_SIDE = 165  # tile_out 32: (32 - 1) * 4 + 41


def _ops(path: Path) -> dict:
    import onnx

    c = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {"nodes": sum(c.values()), "by_type": dict(c.most_common())}


def _graph_file(pkg, graph: str) -> Path | None:
    return pkg.file(f"{graph}.onnx")


def _input(pkg, graph: str, rng) -> np.ndarray:
    p = pkg.manifest.contract.patch_size
    if graph == "dense":
        shape = (1, 1, TILE_SIDE, TILE_SIDE, TILE_SIDE)
    else:
        ch = pkg.manifest.contract.stage2.channels if graph == "stage2" else 1
        shape = (BATCH, ch, p, p, p)
    return rng.uniform(size=shape).astype(np.float32)


def time_graphs(before, after, graph: str, backend: str, repeats: int) -> dict:
    """One backend, one graph: both packages opened, alternating calls on the same input."""
    from noduleflow.engine.backends import open_backend

    x = _input(after, graph, np.random.default_rng(0))
    runs = {"before": open_backend(before, backend, graph=graph), "after": open_backend(after, backend, graph=graph)}
    try:
        out = {k: np.asarray(b.infer(x)) for k, b in runs.items()}  # first call: one-off costs
        times = {k: [] for k in runs}
        for _ in range(repeats):
            for k, b in runs.items():
                t = time.perf_counter()
                b.infer(x)
                times[k].append(time.perf_counter() - t)
    finally:
        for b in runs.values():
            b.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"graph": graph, "backend": backend, "input_shape": list(x.shape),
            "before_s": med["before"], "after_s": med["after"],
            "before_min_s": min(times["before"]), "after_min_s": min(times["after"]),
            "speedup_median": med["before"] / med["after"],
            "speedup_min": min(times["before"]) / min(times["after"]),
            "max_abs_logit_diff": float(np.abs(out["before"] - out["after"]).max())}


def detections(before, after, seeds, backend: str = "auto") -> tuple[list[dict], str]:
    from noduleflow.bench.gpu import compare
    from noduleflow.engine.detector import Detector
    from noduleflow.synthetic.phantom import generate_phantom

    dets = {k: Detector(p, backend=backend) for k, p in (("before", before), ("after", after))}
    rows = []
    try:
        for seed in seeds:
            vol = generate_phantom(seed).volume
            a, b = (dets[k].detect(vol) for k in ("before", "after"))
            rows.append({"seed": seed, **compare(a, b)})
        return rows, dets["after"].backend_name
    finally:
        for d in dets.values():
            d.close()


def run(before_dir, after_dir, out_dir: Path, repeats: int = 5, seeds=(4001, 4002)) -> dict:
    from noduleflow.bench.speed import installed_cpu_backends, machine
    from noduleflow.engine.package import ModelPackage, default_package_path

    before = ModelPackage.load(before_dir)
    after = ModelPackage.load(after_dir or default_package_path())
    backends = installed_cpu_backends(after)
    graphs = [g for g in GRAPHS if _graph_file(before, g) and _graph_file(after, g)]
    r = {"machine": machine(), "before": {"path": str(before.path), "model_id": before.manifest.model_id},
         "after": {"path": str(after.path), "model_id": after.manifest.model_id}, "repeats": repeats,
         "ops": {g: {"before": _ops(_graph_file(before, g)), "after": _ops(_graph_file(after, g))} for g in graphs},
         "timings": [time_graphs(before, after, g, be, repeats) for g in graphs for be in backends]}
    r["detections"], r["detection_backend"] = detections(before, after, seeds) if seeds else ([], None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "package_ab.json").write_text(json.dumps(r, indent=1))
    (out_dir / "package_ab.md").write_text(markdown(r))
    return r


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Two packages' graphs side by side: {r['before']['path']} -> {r['after']['path']}", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores; onnxruntime {m.get('onnxruntime')}, "
             f"openvino {m.get('openvino')}. Command: `python -m noduleflow.bench.package_ab --before "
             f"{r['before']['path']} --repeats {r['repeats']} --seeds "
             f"{' '.join(str(d['seed']) for d in r['detections'])}`. Median (min) of {r['repeats']} calls per "
             "package, alternating; "
             f"random inputs of the engine's shapes. Above 1.00x the `after` package is the faster.", "",
             "| graph | backend | input | before s | after s | speed-up median (min) | max abs logit diff |",
             "|---|---|---|---:|---:|---:|---:|"]
    for t in r["timings"]:
        lines.append(f"| {t['graph']} | {t['backend']} | {'x'.join(map(str, t['input_shape']))} | "
                     f"{t['before_s']:.3f} | {t['after_s']:.3f} | {t['speedup_median']:.2f}x "
                     f"({t['speedup_min']:.2f}x) | {t['max_abs_logit_diff']:.1e} |")
    lines += ["", "Nodes in the files:", ""]
    for g, o in r["ops"].items():
        for k in ("before", "after"):
            types = ", ".join(f"{t} {n}" for t, n in o[k]["by_type"].items())
            lines.append(f"- {g} {k}: {o[k]['nodes']} ({types})")
    if r["detections"]:
        lines += ["", f"Default detection of phantom scans ({r['detection_backend']}), before vs after:", "",
                  "| seed | candidates | max centre distance mm | max probability diff |", "|---|---|---:|---:|"]
        for d in r["detections"]:
            lines.append(f"| {d['seed']} | {d['n'][0]} / {d['n'][1]} | {d['max_centre_mm']:.3f} | "
                         f"{d['max_prob_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.package_ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the package to compare against")
    ap.add_argument("--after", help="the package measured (default: the shipped one)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per package and graph (default 5)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[4001, 4002],
                    help="phantom seeds detected with both packages (none: skip)")
    ap.add_argument("--out", default="bench/results/package_ab", help="output folder")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {a.repeats}")
    r = run(a.before, a.after, Path(a.out), a.repeats, tuple(a.seeds))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
