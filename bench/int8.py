"""INT8 on the CPU, measured: ``python -m noduleflow.bench.int8 [--model PKG] [--out DIR]``.

ONNX Runtime static quantization (per-channel int8 weights, uint8 activations, calibrated on
256 lung patches of a phantom that is not a held-out scan) of the shipped patch graph, in both
of ONNX Runtime's formats (QDQ and QOperator), timed against the fp32 graph in the same
process on 64 other phantom patches (best of 5, ONNX Runtime CPU, all cores), with the logit
and probability differences. The engine ships an INT8 path only if it is faster and costs at
most 0.01 CPM on the held-out phantoms; this measures the first condition.
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


def _patches(contract, n_cal: int = 256, n_test: int = 64, seed: int = 21):
    from noduleflow.engine.patches import Normalisation, gather
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    ph = generate_phantom(seed, params=PhantomParams(n_nodules=3), shape_zyx=(100, 256, 256),
                          spacing_zyx_mm=(2.5, 1.4, 1.4))
    pre = preprocess(ph.volume, contract.preprocess)
    pts = np.argwhere(pre.mask)
    rng = np.random.default_rng(0)
    pick = pts[rng.choice(len(pts), n_cal + n_test, replace=False)]
    norm = Normalisation(*contract.hu_window, pad_hu=contract.pad_hu)
    cut = gather(pre.volume.hu, pick, norm=norm, size=contract.patch_size)
    return cut[:n_cal], cut[n_cal:]


def _best(session, feed, repeats: int = 5) -> tuple[float, np.ndarray]:
    y = session.run(None, feed)[0]  # warm-up
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return best, y


def measure(model=None) -> dict:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from noduleflow.engine.package import ModelPackage, default_package_path

    pkg = ModelPackage.load(model or default_package_path())
    cal, test = _patches(pkg.contract)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"patch": cal[i:i + 32]} for i in range(0, len(cal), 32)])

        def get_next(self):
            return next(self.it, None)

    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    open_ = lambda p: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])  # noqa: E731
    fp32_s, ref = _best(open_(pkg.file("patch.onnx")), {"patch": test})
    rows = {"fp32": {"seconds": fp32_s}}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(pkg.file("patch.onnx")), str(pre))
        for fmt in ("QDQ", "QOperator"):
            out = Path(tmp) / f"int8_{fmt}.onnx"
            quantize_static(str(pre), str(out), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            s, y = _best(open_(out), {"patch": test})
            p = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))  # noqa: E731
            rows[f"int8_{fmt}"] = {"seconds": s, "speedup_vs_fp32": fp32_s / s,
                                   "max_abs_logit_diff": float(np.abs(y - ref).max()),
                                   "max_abs_prob_diff": float(np.abs(p(y) - p(ref)).max())}
    return {"model_id": pkg.manifest.model_id, "batch": len(test), "onnxruntime": ort.__version__, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.int8", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model package (default: the shipped one)")
    ap.add_argument("--out", default="bench-int8", help="output folder (default ./bench-int8)")
    a = ap.parse_args(argv)
    from noduleflow.bench.speed import machine

    res = {"machine": machine(), **measure(a.model), "load_average": os.getloadavg(),
           "command": "python -m noduleflow.bench.int8"}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8.json").write_text(json.dumps(res, indent=2))
    lines = ["# INT8 on the CPU (ONNX Runtime static quantization, patch graph)", "",
             f"{res['model_id']}, batch {res['batch']}, ONNX Runtime {res['onnxruntime']}; machine {res['machine']}; "
             f"load average {', '.join(f'{x:.1f}' for x in res['load_average'])}. Command: `{res['command']}`.", "",
             "| graph | best of 5, s | speed-up vs fp32 | max abs logit diff | max abs prob diff |",
             "|---|---:|---:|---:|---:|"]
    for k, r in res["rows"].items():
        lines.append(f"| {k} | {r['seconds']:.3f} | {r.get('speedup_vs_fp32', 1.0):.2f} | "
                     f"{r.get('max_abs_logit_diff', 0.0):.3f} | {r.get('max_abs_prob_diff', 0.0):.3f} |")
    (out / "int8.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
