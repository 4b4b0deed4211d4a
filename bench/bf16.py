"""bfloat16 on the CPU, measured:
``python -m noduleflow.bench.bf16 [--model PKG] [--accuracy COHORT --cache DIR] [--scans N [--repeats R]]
[--out DIR]``.

``--precision bf16`` runs a package's fp32 graphs in OpenVINO's bfloat16 arithmetic (weights and
activations rounded to bf16, sums in float32) on a CPU that has it (AVX512_BF16 or AMX); the engine's
default stays fp32 on every CPU, so that its scores do not depend on the machine. Measured here,
each time fp32 and bf16 in the same process, alternating (median of 7 calls, or of ``--repeats``
detections):

- the graphs: stage 2 on 64 phantom context patches (`export.int8.calibration_patches`' test set:
  blob candidates and lung points of a phantom in no evaluation cohort) and the dense graph on a full
  tile (165^3) of bench speed's first phantom, with the largest logit and probability differences;
- the dense pass over that phantom's grid points through the detector (`--stages 1`): seconds,
  the largest and the 99th-percentile probability difference, and the one-stage detection's top 15;
- with ``--accuracy COHORT`` (e.g. heldout): stage 2 fp32 and bf16 on that cohort with the same
  stage-1 candidates (cached under ``--cache``), scored as `bench.stage2_select` scores a package:
  sensitivity at 5-100 candidates per scan, CPM, and the change;
- with ``--scans N``: the default detection, fp32 against stage 2 in bf16, on N phantom DICOM series
  (`bench.int8.scan_timing`).

Writes bf16.json and bf16.md to ``--out``.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .int8 import (_openvino_pair, _sigmoid, accuracy_table, compare_stage2, near, scan_timing_lines,
                   write_report)


def _pair(path, x, repeats: int = 7) -> dict:
    """fp32 and bf16 OpenVINO compilations of one graph on input ``x`` (`bench.int8._openvino_pair`:
    alternating median seconds of one call each, which goes first alternating too), and their
    output differences."""
    t32, t16, a, b = _openvino_pair(path, path, x, repeats, hints=("f32", "bf16"), swap_order=True)
    return {"input_shape": list(x.shape), "fp32_s": t32, "bf16_s": t16, "speedup": t32 / t16,
            "max_abs_logit_diff": float(np.abs(a - b).max()),
            "max_abs_prob_diff": float(np.abs(_sigmoid(a) - _sigmoid(b)).max())}


@functools.lru_cache(maxsize=1)
def _phantom(pkg_path: str, seed: int):
    """Bench speed's phantom of ``seed`` and its preprocessing by the package's contract, made once
    per process (`graphs` and `dense_pass` both use it)."""
    from noduleflow.engine.package import ModelPackage
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    ph = generate_phantom(seed, params=PhantomParams(z_extent_mm=300.0), spacing_zyx_mm=(1.5, 0.7, 0.7))
    return ph, preprocess(ph.volume, ModelPackage.load(pkg_path).contract.preprocess)


def graphs(model=None, seed: int = 500) -> dict:
    """The stage-2 and dense graphs, fp32 against bf16 (`_pair`)."""
    from noduleflow.engine.package import ModelPackage, default_package_path
    from noduleflow.export.int8 import calibration_patches

    pkg = ModelPackage.load(model or default_package_path())
    k = pkg.contract
    res = {}
    if pkg.has_stage2:
        _, test = calibration_patches(k, "stage2")
        res["stage2"] = _pair(pkg.file("stage2.onnx"), np.ascontiguousarray(test[:64]))
    if pkg.has_dense:
        pre = _phantom(str(pkg.path), seed)[1]
        n = 4 * 31 + k.patch_size  # a full tile of 32^3 output points
        c = np.maximum((np.asarray(pre.volume.shape) - n) // 2, 0)
        hu = pre.volume.hu[c[0]:c[0] + n, c[1]:c[1] + n, c[2]:c[2] + n]
        res["dense_tile"] = _pair(pkg.file("dense.onnx"), np.ascontiguousarray(k.normalise(hu)[None, None],
                                                                                dtype=np.float32))
    return res


def dense_pass(model=None, seed: int = 500, repeats: int = 3) -> dict:
    """The dense pass over a phantom's grid points through the detector (one stage, openvino-cpu),
    fp32 against bf16: alternating median seconds, probability differences over the grid points, and
    the one-stage detections' top 15 (how many of one's within 2 mm of one of the other's)."""
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.package import ModelPackage, default_package_path

    pkg = ModelPackage.load(model or default_package_path())
    ph, pre = _phantom(str(pkg.path), seed)
    dets = {p: Detector(pkg, mode="dense", stages="1", backend="openvino-cpu", backend_options={"precision": p})
            for p in ("fp32", "bf16")}
    centres = dets["fp32"].grid_centres(pre)
    logits = {p: d.score(pre, centres) for p, d in dets.items()}  # warm-up
    times = {p: [] for p in dets}
    for i in range(repeats):
        for p in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
            t = time.perf_counter()
            dets[p].score(pre, centres)
            times[p].append(time.perf_counter() - t)
    top = {p: np.array([[c.x, c.y, c.z] for c in d.detect(ph.volume)][:15]).reshape(-1, 3) for p, d in dets.items()}
    for d in dets.values():
        d.close()
    diff = np.abs(_sigmoid(logits["fp32"]) - _sigmoid(logits["bf16"]))

    med = {p: statistics.median(v) for p, v in times.items()}
    return {"grid_points": int(len(centres)), "lung_box_1mm": list(pre.volume.shape), "fp32_s": med["fp32"],
            "bf16_s": med["bf16"], "speedup": med["fp32"] / med["bf16"], "max_abs_prob_diff": float(diff.max()),
            "p99_abs_prob_diff": float(np.percentile(diff, 99)),
            "top15": {"n": int(len(top["fp32"])), "fp32_in_bf16": near(top["fp32"], top["bf16"]),
                      "bf16_in_fp32": near(top["bf16"], top["fp32"])}}


def accuracy(model, cohort: str, cache=None, progress: bool = True) -> dict:
    """Stage 2 fp32 and bf16 (openvino-cpu) on ``cohort`` (`bench.int8.compare_stage2`: the same
    stage-1 candidates): sensitivity at K, CPM, stage-2 seconds per scan, and the change."""
    from noduleflow.engine.package import default_package_path

    model = model or default_package_path()
    r = compare_stage2({p: {"model": model, "backend": "openvino-cpu", "backend_options": {"precision": p}}
                        for p in ("fp32", "bf16")}, cohort, cache, progress)
    return {"cohort": r.pop("cohort"), "backend": "openvino-cpu", **r}


def markdown(res: dict) -> str:
    """The report of a `main` result (its bf16.json)."""
    lines = ["# bfloat16 on the CPU (OpenVINO, `--precision bf16`)", "",
             f"{res['model_id']}; machine {res['machine']['cpu']}, {res['machine']['cores']} cores, openvino "
             f"{res['machine'].get('openvino')}; load average {', '.join(f'{x:.1f}' for x in res['load_average'])}. "
             f"Command: `{res['command']}`.", "",
             "| graph | input | fp32 s | bf16 s | fp32 / bf16 | max abs logit diff | max abs prob diff |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for g, r in res["graphs"].items():
        lines.append(f"| {g} | {'x'.join(map(str, r['input_shape']))} | {r['fp32_s']:.3f} | {r['bf16_s']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['max_abs_logit_diff']:.3f} | {r['max_abs_prob_diff']:.3f} |")
    lines += ["", "Median of 7 calls each, fp32 and bf16 alternating; the differences are bf16's against fp32's "
              "outputs on the same input (stage 2: 64 phantom context patches; the dense tile: a full 32^3-point "
              "tile of bench speed's first phantom)."]
    d = res.get("dense_pass")
    if d:
        t = d["top15"]
        lines += ["", f"The dense pass over a phantom's {d['grid_points']} grid points (lung box "
                  f"{'x'.join(map(str, d['lung_box_1mm']))}, the detector's tiles, `--stages 1`): fp32 {d['fp32_s']:.2f} s, "
                  f"bf16 {d['bf16_s']:.2f} s, **{d['speedup']:.2f}x**; probability difference at the grid points: max "
                  f"{d['max_abs_prob_diff']:.3f}, 99th percentile {d['p99_abs_prob_diff']:.4f}; the one-stage "
                  f"detection's top 15: {t['fp32_in_bf16']}/{t['n']} of fp32's within 2 mm of one of bf16's, "
                  f"{t['bf16_in_fp32']}/{t['n']} the other way."]
    acc = res.get("accuracy")
    if acc:
        lines += ["", f"Accuracy on the {acc['cohort']} phantoms {acc['seeds'][0]}-{acc['seeds'][1]} ({acc['scans']} "
                  f"scans, {acc['nodules']} nodules), the same stage-1 candidates, stage 2 fp32 vs bf16 on "
                  f"{acc['backend']} (phantoms: a regression signal, not clinical evidence):", "",
                  *accuracy_table(acc, "bf16", "bf16")]
    t = res.get("scan_timing")
    if t:
        lines += scan_timing_lines(t, "bf16", "with stage 2 in bf16 against fp32")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.bf16", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model package (default: the shipped one)")
    ap.add_argument("--accuracy", metavar="COHORT", help="also score stage 2 fp32 and bf16 on this cohort (e.g. heldout)")
    ap.add_argument("--cache", help="folder caching each scan's stage-1 candidates (as bench.stage2_select)")
    ap.add_argument("--scans", type=int, default=0,
                    help="also time the default detection, stage 2 in bf16 against fp32, on this many phantom DICOM "
                         "series (bench speed's size), alternating")
    ap.add_argument("--repeats", type=int, default=3, help="detections per scan and variant (default 3)")
    ap.add_argument("--out", default="bench-bf16", help="output folder (default ./bench-bf16)")
    a = ap.parse_args(argv)
    if a.scans < 0 or a.repeats < 1:
        ap.error(f"--scans must be >= 0 and --repeats >= 1, got {a.scans} and {a.repeats}")
    from noduleflow.engine.backends.openvino import cpu_capabilities
    from noduleflow.engine.package import ModelPackage, default_package_path

    from .int8 import scan_timing
    from .speed import machine

    try:
        caps = cpu_capabilities()
    except ImportError:
        ap.error("bf16 runs on openvino-cpu: pip install 'noduleflow[openvino]'")
    if "BF16" not in caps:
        ap.error(f"this CPU has no bfloat16 arithmetic (OpenVINO's CPU capabilities: {', '.join(caps)})")
    cmd = "python -m noduleflow.bench.bf16 " + " ".join(argv if argv is not None else sys.argv[1:])
    res = {"machine": machine(), "model_id": ModelPackage.load(a.model or default_package_path()).manifest.model_id,
           "command": cmd.strip(), "graphs": graphs(a.model), "dense_pass": dense_pass(a.model, repeats=a.repeats)}
    if a.accuracy:
        res["accuracy"] = accuracy(a.model, a.accuracy, a.cache)
    if a.scans > 0:
        res["scan_timing"] = scan_timing(a.model, "openvino-cpu", a.scans, a.repeats, precision="bf16")
    res["load_average"] = os.getloadavg()
    write_report(Path(a.out), "bf16", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
