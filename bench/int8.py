"""INT8 on the CPU, measured:
``python -m noduleflow.bench.int8 [--model PKG] [--graph stage2|patch] [--accuracy COHORT --cache DIR]
[--backend onnxruntime-cpu|openvino-cpu] [--scans N [--repeats R]] [--out DIR]``.

ONNX Runtime static quantization (per-channel int8 weights, uint8 activations) of one graph of a
package, as ``noduleflow export --int8`` makes it (`export.int8`: calibrated on 256 context
patches at the blob candidates of a phantom in no evaluation cohort, topped up with random lung
points, for the stage-2 graph; 256 random lung patches for the patch graph). Both of ONNX
Runtime's formats (QDQ and QOperator) are timed against the fp32 graph in the same process on 64
other patches (best of 5, ONNX Runtime CPU, all cores), with the logit and probability
differences; with OpenVINO installed, the QDQ graph against fp32 on OpenVINO's CPU plugin too.
With ``--accuracy``, the INT8 stage-2 graph for ``--backend`` (QDQ on openvino-cpu, the faster
format on onnxruntime-cpu) goes into a copy of the package and both packages are scored on that
cohort with that backend as `bench.stage2_select` scores them (the same stage-1 candidates, cached
under ``--cache``): sensitivity at 5-100 candidates per scan and CPM, fp32 and INT8, and the
change. The report says whether that graph is byte for byte the package's own
``stage2_int8.onnx``. With ``--scans``, the default detection with the package's own
``stage2_int8.onnx`` is timed against fp32 on ``--backend`` scan by scan (`scan_timing`). The
engine ships an INT8 graph only if it is faster on some backend and costs at most 0.01 CPM on
the held-out phantoms.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v.astype(np.float64)))


def _best(session, feed, repeats: int = 5) -> tuple[float, np.ndarray]:
    y = session.run(None, feed)[0]  # warm-up
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return best, y


def _openvino_pair(first_path, second_path, x, repeats: int = 7, hints=("f32", "f32"),
                   swap_order: bool = False) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Median seconds of one OpenVINO CPU inference of two graphs on ``x`` (by default the fp32 and
    the INT8 graph; the same file twice with other ``hints`` compares arithmetics), the two called
    alternately ``repeats`` times each after a warm-up (the engine's settings:
    `engine.backends.openvino`, all cores, OpenVINO's precision hint per graph, f32 by default; the
    QDQ graph's quantized convolutions run as int8 kernels), and their outputs. Alternating, so a
    change in the machine's load during the measurement falls on both; ``swap_order``: the second
    goes first in odd repeats."""
    import statistics

    import openvino as ov

    core = ov.Core()
    reqs = [core.compile_model(core.read_model(str(p)), "CPU",
                               {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": os.cpu_count() or 1,
                                "INFERENCE_PRECISION_HINT": h}).create_infer_request()
            for p, h in zip((first_path, second_path), hints)]
    ys = [r.infer({0: x})[0].copy() for r in reqs]  # warm-up
    times = [[], []]
    for rep in range(repeats):
        for i in ((1, 0) if swap_order and rep % 2 else (0, 1)):
            t = time.perf_counter()
            reqs[i].infer({0: x})
            times[i].append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1]), ys[0], ys[1]


def near(a: np.ndarray, b: np.ndarray, mm: float = 2.0) -> int:
    """How many of points ``a`` (n, 3) lie within ``mm`` of one of points ``b``."""
    return int(sum(np.linalg.norm(b - x, axis=1).min() <= mm for x in a)) if len(b) else 0


def compare_stage2(variants: dict, cohort: str, cache=None, progress: bool = True) -> dict:
    """Stage 2 of each variant (name -> `Detector` arguments; the first is the reference) on
    ``cohort``, scored as `bench.stage2_select` scores a package (the same stage-1 candidates):
    per variant sensitivity at K, CPM, stage-2 seconds per scan; the change of the second against
    the first as ``"{second}_minus_{first}"``."""
    from noduleflow.engine.detector import Detector
    from noduleflow.trainer.data.cohort import CohortCache, cohort_seeds

    from .stage2_select import evaluate

    seeds = cohort_seeds(cohort)
    cc = CohortCache()
    scans = [cc.get(s) for s in seeds]
    rows = {}
    for key, kw in variants.items():
        with Detector(stages="2", **kw) as det:
            rows[key] = evaluate(det, scans, cache, progress=progress)
    a, b = list(rows)
    delta = {"cpm": rows[b]["cpm"] - rows[a]["cpm"],
             "sensitivity_at_k": {k: rows[b]["sensitivity_at_k"][k] - rows[a]["sensitivity_at_k"][k]
                                  for k in rows[a]["sensitivity_at_k"]}}
    return {"cohort": cohort, "seeds": [seeds[0], seeds[-1]], "scans": len(scans),
            "nodules": int(sum(len(s.nodules) for s in scans)), "rows": rows, f"{b}_minus_{a}": delta}


def write_report(out: Path, name: str, res: dict, text: str) -> None:
    """``res`` as ``out``/NAME.json and ``text`` as NAME.md (the folder made), the text printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2))
    (out / f"{name}.md").write_text(text)
    print(text, end="")


def measure(model=None, graph: str = "patch", keep: Path | None = None, backend: str = "onnxruntime-cpu") -> dict:
    """fp32 vs INT8 (QDQ, QOperator) of ``graph``: seconds, speed-up, logit/probability changes, on
    ONNX Runtime's CPU provider, and the QDQ graph on OpenVINO's CPU plugin too when it is installed
    (OpenVINO reads QDQ graphs, not QOperator ones). ``keep``: a folder where the INT8 graph for
    ``backend`` is written (``int8.onnx``): the faster format on onnxruntime-cpu, QDQ on openvino-cpu."""
    import shutil

    import onnxruntime as ort

    from noduleflow.engine.package import ModelPackage, default_package_path, sha256_file
    from noduleflow.export.int8 import calibration_patches, quantize

    if graph not in ("patch", "stage2"):
        raise SystemExit(f"--graph must be patch or stage2, got {graph!r}")
    pkg = ModelPackage.load(model or default_package_path())
    src = pkg.file(f"{graph}.onnx")
    if src is None:
        raise SystemExit(f"package {pkg.manifest.model_id} has no {graph}.onnx")
    cal, test = calibration_patches(pkg.contract, graph)
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    open_ = lambda p: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])  # noqa: E731
    fp32 = open_(src)
    name = fp32.get_inputs()[0].name

    fp32_s, ref = _best(fp32, {name: test})
    rows = {"fp32": {"seconds": fp32_s}}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("QDQ", "QOperator"):
            out = quantize(src, Path(tmp) / f"int8_{fmt}.onnx", cal, fmt)
            s, y = _best(open_(out), {name: test})
            rows[f"int8_{fmt}"] = {"seconds": s, "speedup_vs_fp32": fp32_s / s,
                                   "max_abs_logit_diff": float(np.abs(y - ref).max()),
                                   "max_abs_prob_diff": float(np.abs(_sigmoid(y) - _sigmoid(ref)).max())}
        fastest = min((k for k in rows if k != "fp32"), key=lambda k: rows[k]["seconds"])
        try:
            import openvino  # noqa: F401
        except ImportError:
            openvino = None
        if openvino is not None:
            ov32_s, ov8_s, ov_ref, ov_y = _openvino_pair(src, Path(tmp) / "int8_QDQ.onnx", test)
            rows["openvino_fp32"] = {"seconds": ov32_s, "timing": "median of 7, alternating with INT8",
                                     "max_abs_logit_diff": float(np.abs(ov_ref - ref).max())}
            rows["openvino_int8_QDQ"] = {"seconds": ov8_s, "timing": "median of 7, alternating with fp32",
                                         "speedup_vs_fp32": ov32_s / ov8_s,
                                         "max_abs_logit_diff": float(np.abs(ov_y - ov_ref).max()),
                                         "max_abs_prob_diff": float(np.abs(_sigmoid(ov_y) - _sigmoid(ov_ref)).max())}
        if backend == "openvino-cpu":
            if openvino is None:
                raise SystemExit("--backend openvino-cpu needs openvino: pip install 'noduleflow[openvino]'")
            fastest = "int8_QDQ"
        kept = Path(tmp) / f"{fastest}.onnx"
        shipped = pkg.file(f"{graph}_int8.onnx")
        same = shipped is not None and sha256_file(kept) == sha256_file(shipped)
        if keep is not None:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kept, Path(keep) / "int8.onnx")
    return {"model_id": pkg.manifest.model_id, "model": str(pkg.path), "graph": graph, "batch": len(test),
            "onnxruntime": ort.__version__, "rows": rows, "int8_kept": fastest,
            "kept_is_package_int8_graph": same}


def int8_package(model, int8_graph: Path, out: Path):
    """A copy of package ``model`` whose stage-2 graph is ``int8_graph`` (model id + "-int8s2")."""
    import dataclasses
    import shutil

    from noduleflow.engine.package import ModelPackage, write_manifest

    src = ModelPackage.load(model)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src.path, out)
    shutil.copyfile(int8_graph, out / "stage2.onnx")
    m = src.manifest
    write_manifest(out, dataclasses.replace(m, model_id=m.model_id + "-int8s2"))
    return ModelPackage.load(out)


def accuracy(model, int8_graph: Path, cohort: str, cache=None, work: Path = Path("."), progress: bool = True,
             backend: str = "onnxruntime-cpu") -> dict:
    """fp32 and INT8 stage 2 of ``model`` on ``cohort``, scored as `bench.stage2_select` scores a
    package (same stage-1 candidates): sensitivity at K, CPM, stage-2 seconds per scan, and the
    change (INT8 - fp32)."""
    from noduleflow.engine.package import default_package_path

    model = model or default_package_path()
    q = int8_package(model, int8_graph, Path(work) / "pkg_int8")
    r = compare_stage2({"fp32": {"model": model, "backend": backend}, "int8": {"model": q.path, "backend": backend}},
                       cohort, cache, progress)
    return {"cohort": r.pop("cohort"), "backend": backend, **r}


def scan_timing(model, backend: str, scans: int = 3, repeats: int = 3, seed0: int = 500, shape_zyx=None,
                spacing_zyx_mm=(1.5, 0.7, 0.7), z_extent_mm: float = 300.0, precision: str = "int8") -> dict:
    """The default detection with stage 2 in ``precision`` (default "int8": the package's own
    ``stage2_int8.onnx``; "bf16": the same graph in OpenVINO's bfloat16) against fp32, on the same
    backend, in one process: ``scans`` phantom chest CTs written as DICOM (`bench.speed.phantom_series`,
    by default bench speed's ~200 x 512 x 512), each detected ``repeats`` times by both, alternating
    (after one warm-up detection each; fp32 first in even repeats, the other first in odd ones). Per
    variant the median of every stage (the whole scan: load to candidates) over every detection,
    the ratios (fp32 over the other) of the whole scan and of stage 2, and how far the two agree:
    per scan, the top-15 candidates of one within 2 mm of one of the other's."""
    import statistics

    from noduleflow.engine.detector import Detector
    from noduleflow.engine.package import ModelPackage, default_package_path

    from .speed import phantom_series

    pkg = ModelPackage.load(model or default_package_path())
    if precision == "int8" and pkg.file("stage2_int8.onnx") is None:
        raise SystemExit(f"package {pkg.manifest.model_id} has no stage2_int8.onnx (noduleflow export --int8)")
    p = precision
    with tempfile.TemporaryDirectory(prefix=f"noduleflow-{p}-scans-") as tmp:
        series = phantom_series(Path(tmp), scans, seed0, z_extent_mm, spacing_zyx_mm, shape_zyx)
        dets = {"fp32": Detector(pkg, backend=backend), p: Detector(pkg, backend=backend,
                                                                    backend_options={"precision": p})}
        times = {k: {} for k in dets}
        last = {}
        for k, d in dets.items():  # warm-up
            d.detect(series[0])
        for rep in range(repeats):
            for s in series:
                # which variant goes first alternates too, so what one detection leaves to the next
                # (caches, threads still winding down) falls on both alike
                for k, d in (list(dets.items()) if rep % 2 == 0 else list(dets.items())[::-1]):
                    r = d.detect(s)
                    for stage, sec in r.timings_s.items():  # every stage: where a difference lies
                        times[k].setdefault(stage, []).append(sec)
                    last[(k, str(s))] = np.array([[c.x, c.y, c.z] for c in r][:15]).reshape(-1, 3)
        names = {k: d.backend_name for k, d in dets.items()}
        for d in dets.values():
            d.close()

    agree = []
    for s in series:
        a, b = last[("fp32", str(s))], last[(p, str(s))]
        agree.append({f"fp32_top15_in_{p}": near(a, b), f"{p}_top15_in_fp32": near(b, a), "n": int(len(a))})
    med = {k: {j: statistics.median(v) for j, v in t.items()} for k, t in times.items()}
    return {"backend": backend, "precision": p, "backends": names, "scans": scans, "repeats": repeats,
            "median_s": med, f"fp32_over_{p}": {j: med["fp32"][j] / med[p][j] for j in ("total", "stage2")},
            "runs_s": times, "top15_agreement": agree}


def _machine_text(m) -> str:
    if isinstance(m, dict) and "cpu" in m:
        return f"{m['cpu']}, {m.get('cores')} cores, openvino {m.get('openvino')}"
    return str(m)


def markdown(res: dict) -> str:
    """The report of a `main` result (its int8.json)."""
    lines = [f"# INT8 on the CPU (ONNX Runtime static quantization, {res['graph']} graph)", "",
             f"{res['model_id']}, batch {res['batch']}, ONNX Runtime {res['onnxruntime']}; machine {_machine_text(res['machine'])}; "
             f"load average {', '.join(f'{x:.1f}' for x in res['load_average'])}. Command: `{res['command']}`.", "",
             "| graph | best of 5, s | speed-up vs fp32 | max abs logit diff | max abs prob diff |",
             "|---|---:|---:|---:|---:|"]
    for k, r in res["rows"].items():
        lines.append(f"| {k} | {r['seconds']:.3f} | {r.get('speedup_vs_fp32', 1.0):.2f} | "
                     f"{r.get('max_abs_logit_diff', 0.0):.3f} | {r.get('max_abs_prob_diff', 0.0):.3f} |")
    if any("timing" in r for r in res["rows"].values()):
        lines += ["", "The openvino rows' seconds are the median of 7 calls, fp32 and INT8 alternating (the others: "
                  "best of 5, one graph after the other)."]
    lines += ["", "The differences are against the fp32 graph on the same runtime (openvino_fp32: against ONNX Runtime's "
              "fp32), the largest over the 64 test patches; a logit difference of several units falls where the "
              "probability is saturated (the probability column)."]
    if res.get("accuracy"):
        acc = res["accuracy"]
        same = "is" if res.get("kept_is_package_int8_graph") else "is not"
        lines += ["", f"The INT8 graph scored below {same} byte for byte the package's own {res['graph']}_int8.onnx."]
        lines += ["", f"Accuracy on the {acc['cohort']} phantoms {acc['seeds'][0]}-{acc['seeds'][1]} ({acc['scans']} scans, "
                  f"{acc['nodules']} nodules), the same stage-1 candidates, stage 2 fp32 vs {res['int8_kept']} on "
                  f"{acc.get('backend', 'onnxruntime-cpu')} "
                  "(phantoms: a regression signal, not clinical evidence):", "",
                  *accuracy_table(acc, "int8", "INT8")]
    t = res.get("scan_timing")
    if t:
        lines += scan_timing_lines(t, "INT8", "with the package's own stage2_int8.onnx against fp32")
    return "\n".join(lines) + "\n"


def accuracy_table(acc: dict, p: str, label: str) -> list[str]:
    """The markdown table of an accuracy result (fp32 and precision ``p`` rows, their change)."""
    ks = list(acc["rows"]["fp32"]["sensitivity_at_k"])
    lines = ["| stage 2 | " + " | ".join(f"sens@{k}" for k in ks) + " | CPM | stage 2 s/scan |",
             "|---|" + "---:|" * (len(ks) + 2)]
    for k, r in acc["rows"].items():
        lines.append(f"| {k} | " + " | ".join(f"{r['sensitivity_at_k'][x]:.3f}" for x in ks)
                     + f" | {r['cpm']:.3f} | {r['stage2_seconds_median']:.2f} |")
    d = acc[f"{p}_minus_fp32"]
    lines.append(f"| {label} - fp32 | " + " | ".join(f"{d['sensitivity_at_k'][x]:+.3f}" for x in ks)
                 + f" | {d['cpm']:+.3f} | |")
    return lines


def scan_timing_lines(t: dict, label: str, what: str) -> list[str]:
    """The markdown of a `scan_timing` result: per-stage medians of both variants, the ratios, the
    top-15 agreement; ``label`` names the other precision (e.g. "INT8"), ``what`` says what it ran."""
    p = t.get("precision", "int8")
    m, up = t["median_s"], t[f"fp32_over_{p}"]
    stages = [x for x in m["fp32"] if x not in ("total", "stage2")]
    lines = ["", f"The default detection on {t['backend']} {what}: {t['scans']} phantom DICOM series, {t['repeats']} "
             f"detections each per variant, alternating (and which goes first) (`--scans {t['scans']} --repeats "
             f"{t['repeats']}`); medians over every detection, seconds:", "",
             "| variant | backend | whole scan | stage 2 | " + " | ".join(stages) + " |",
             "|---|---|---:|---:|" + "---:|" * len(stages)]
    for k in ("fp32", p):
        lines.append(f"| {k} | {t['backends'][k]} | {m[k]['total']:.2f} | {m[k]['stage2']:.2f} | "
                     + " | ".join(f"{m[k][x]:.2f}" for x in stages) + " |")
    lines.append(f"| fp32 / {label} | | {up['total']:.2f}x | {up['stage2']:.2f}x |" + " |" * len(stages))
    ag = "; ".join(f"{a[f'fp32_top15_in_{p}']}/{a['n']} and {a[f'{p}_top15_in_fp32']}/{a['n']}"
                   for a in t["top15_agreement"])
    return lines + ["", f"Top-15 candidates within 2 mm of one of the other variant's, per scan (fp32 in {label}, "
                    f"{label} in fp32): {ag}."]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.int8", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model package (default: the shipped one)")
    ap.add_argument("--graph", default="stage2", choices=("stage2", "patch"),
                    help="graph to quantize (default stage2, the network of the default two-stage engine)")
    ap.add_argument("--accuracy", metavar="COHORT",
                    help="also score fp32 and INT8 stage 2 on this cohort (e.g. heldout; stage2 graph only)")
    ap.add_argument("--cache", help="folder caching each scan's stage-1 candidates (as bench.stage2_select)")
    ap.add_argument("--backend", default="onnxruntime-cpu", choices=("onnxruntime-cpu", "openvino-cpu"),
                    help="the backend --accuracy scores both packages with (default onnxruntime-cpu); on "
                         "openvino-cpu the INT8 graph is the QDQ one (OpenVINO's int8 kernels run it)")
    ap.add_argument("--scans", type=int, default=0,
                    help="also time the default detection with the package's own stage2_int8.onnx against fp32 on "
                         "--backend, on this many phantom DICOM series (bench speed's size), alternating")
    ap.add_argument("--repeats", type=int, default=3, help="with --scans: detections per scan and variant (default 3)")
    ap.add_argument("--out", default="bench-int8", help="output folder (default ./bench-int8)")
    a = ap.parse_args(argv)
    if a.accuracy and a.graph != "stage2":
        ap.error("--accuracy scores the stage-2 graph: use --graph stage2")
    from noduleflow.bench.speed import machine

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python -m noduleflow.bench.int8 " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="noduleflow-int8-") as work:  # the INT8 graph and package copy
        work = Path(work)
        res = {"machine": machine(), **measure(a.model, a.graph, keep=work if a.accuracy else None, backend=a.backend),
               "load_average": os.getloadavg(), "command": cmd.strip()}
        if a.accuracy:
            res["accuracy"] = accuracy(a.model, work / "int8.onnx", a.accuracy, a.cache, work=work, backend=a.backend)
    if a.scans > 0:
        res["scan_timing"] = scan_timing(a.model, a.backend, a.scans, a.repeats)
    write_report(out, "int8", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
