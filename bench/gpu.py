"""`noduleflow bench gpu`: the GPU pipeline, DICOM in to candidates out, against the CPU in the same run.

    noduleflow bench gpu [--out DIR] [--scans 5] [--package PKG] [--cpu-backend auto]
    python -m noduleflow.bench.gpu ...   (the same options)

On a machine with a CUDA GPU (PyTorch built for CUDA, numba-cuda):
1. the shipped package with its patch and stage-2 networks compiled for the GPU by AOTInductor
   (`export.aoti.export_aoti`, device "cuda", from the shipped checkpoints; ``--package``: an
   already exported one), its stage-2 logits checked against ONNX Runtime's on context patches;
2. ``--scans`` phantom chest CTs (bench speed's: 300 mm at 1.5 x 0.7 x 0.7 mm, ~200 x 512 x 512)
   written as DICOM series;
3. the default detection on the GPU (``--backend torch-compiled``: the scan preprocessed on the
   device, `engine.preprocess_cuda`; stage 1's blob filter on the CPU; stage 2's context patches
   gathered and scored on the device) and on the CPU backend, each after a first scan that pays
   its one-off costs (numba cache loads, CUDA context, kernel JIT), stage by stage per scan, and
   whether the two found the same candidates;
4. scans per second on the GPU: one scan after another (load included), and with the next scan
   loaded by a second thread while the current one is detected (two scans in flight).
Writes gpu.json and gpu.md, the device named. Without a GPU it refuses, saying why, unless
``--backend`` names a CPU backend (the run then only exercises this script: no GPU figure).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from noduleflow.engine.errors import ConfigError

from .common import machine, phantom_series, standalone

HELP = "the GPU pipeline, DICOM in to candidates out, against the CPU (needs a GPU)"
DESCRIPTION = ("The GPU pipeline, DICOM in to candidates out, against the CPU in the same run: the shipped networks "
               "exported for CUDA, phantom scans as DICOM, stage by stage on the GPU and the CPU backend, scans/s one "
               "at a time and two in flight; writes gpu.json/.md.")


def cuda_package(out: Path) -> tuple[Path, float]:
    """The shipped package copied to ``out`` with ``patch.pt2``/``stage2.pt2`` compiled for CUDA from
    the shipped checkpoints -> (folder, seconds)."""
    from noduleflow.engine.package import default_package_path
    from noduleflow.export.aoti import export_aoti
    from noduleflow.trainer.checkpoint import shipped_checkpoint

    t = time.perf_counter()
    shutil.copytree(default_package_path(), out)
    export_aoti(shipped_checkpoint(1), out, device="cuda", stage2_checkpoint=shipped_checkpoint(2))
    return out, time.perf_counter() - t


def stage2_parity(pkg, pre, centres, gpu_backend: str) -> float:
    """Max |logit| difference of stage 2 on ``gpu_backend`` against ONNX Runtime's CPU graph, on the
    context patches of ``centres`` (``pkg``: the loaded package; None when ONNX Runtime is not
    installed)."""
    import importlib.util

    from noduleflow.engine.backends import open_backend
    from noduleflow.engine.context import ContextVolume
    from noduleflow.engine.patches import Normalisation

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    k = pkg.contract
    x = ContextVolume(pre.volume.hu, Normalisation(*k.hu_window, pad_hu=k.pad_hu), k.patch_size,
                      k.stage2.channels).patches(centres)
    with open_backend(pkg, gpu_backend, graph="stage2") as g, \
            open_backend(pkg, "onnxruntime-cpu", graph="stage2", streams=1) as c:
        return float(np.abs(g.infer(x) - c.infer(x)).max())


def compare(a, b) -> dict:
    """How far detections ``a`` and ``b`` of one scan agree: candidate counts, centres matched in
    order (max distance, mm) and probabilities (max difference)."""
    n = min(len(a.candidates), len(b.candidates))
    ca = np.array([c.center_xyz_mm for c in a.candidates[:n]]).reshape(-1, 3)
    cb = np.array([c.center_xyz_mm for c in b.candidates[:n]]).reshape(-1, 3)
    pa, pb = np.array([c.prob for c in a.candidates[:n]]), np.array([c.prob for c in b.candidates[:n]])
    return {"n": [len(a.candidates), len(b.candidates)],
            "max_centre_mm": float(np.linalg.norm(ca - cb, axis=1).max()) if n else 0.0,
            "max_prob_diff": float(np.abs(pa - pb).max()) if n else 0.0}


def in_flight(det, scans) -> float:
    """Seconds to detect ``scans`` with the next one loaded by a background thread meanwhile
    (`Detector.detect` of a list: `engine.io.prefetch`)."""
    t = time.perf_counter()
    det.detect(list(scans), prefetch=True)
    return time.perf_counter() - t


def run(out_dir: Path, n_scans: int = 5, package=None, backend: str = "torch-compiled", cpu_backend: str = "auto",
        seed0: int = 700, z_extent_mm: float = 300.0, spacing_zyx_mm=(1.5, 0.7, 0.7), shape_zyx=None) -> dict:
    from noduleflow.engine.backends import AUTO_ORDER
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.errors import BackendUnavailableError

    info = machine()
    on_gpu = backend in ("torch-compiled", "onnxruntime-cuda", "tensorrt")
    if on_gpu and info["gpu"] is None:
        raise ConfigError(f"--backend {backend} needs a CUDA GPU, and PyTorch sees none here "
                          "(a CPU backend runs this script without GPU figures)")
    if n_scans < 2:
        raise ConfigError(f"--scans must be >= 2 (the first pays the one-off costs), got {n_scans}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": info, "backend": backend, "n_scans": n_scans}
    with tempfile.TemporaryDirectory(prefix="nf-gpu-") as tmp:
        tmp = Path(tmp)
        if package is None and backend == "torch-compiled":
            package, res["export_s"] = cuda_package(tmp / "pkg")
        scans = phantom_series(tmp, n_scans, seed0, z_extent_mm, spacing_zyx_mm, shape_zyx)
        t = time.perf_counter()
        gpu = Detector(package, backend=backend)
        res["open_s"] = time.perf_counter() - t
        res["preprocess_on_device"] = gpu.preprocess_on_device
        cpu, why = None, []  # auto's CPU choice: the first CPU backend in its order that opens here
        for name in [n for n in AUTO_ORDER if n.endswith("-cpu")] if cpu_backend == "auto" else [cpu_backend]:
            try:
                cpu = Detector(gpu.package, backend=name)
                break
            except BackendUnavailableError as exc:
                why.append(f"{name}: {exc}")
        if cpu is None:  # no CPU backend installed here: no side-by-side figure
            res["cpu_skipped"] = "; ".join(why)
        res["cpu_backend"] = cpu.backend_name if cpu is not None else None
        t = time.perf_counter()
        first = gpu.detect(scans[0], keep_preprocessed=True)
        res["first_scan_s"] = time.perf_counter() - t
        res["first_scan_stages_s"] = first.timings_s
        if cpu is not None:
            cpu.detect(scans[0])  # its own one-off costs
        pre = first.preprocessed
        cands = gpu.stage1(pre).centres_zyx[:64]
        res["stage2_parity_patches"] = len(cands)
        res["stage2_parity_max_abs_logit"] = stage2_parity(gpu.package, pre, cands, backend) if len(cands) else None
        per = []
        for i, s in enumerate(scans):
            t = time.perf_counter()
            d = gpu.detect(s)
            wall = time.perf_counter() - t
            row = {"scan": i, "shape_zyx": d.meta["shape_zyx"], "lung_box_1mm": d.meta["lung_box_1mm_zyx"],
                   "wall_s": wall, "stages_s": d.timings_s, "candidates_scored": d.n_scored}
            if cpu is not None:
                t = time.perf_counter()
                c = cpu.detect(s)
                row.update(cpu_wall_s=time.perf_counter() - t, cpu_stages_s=c.timings_s, agreement=compare(d, c))
                row["cpu_over_gpu"] = row["cpu_wall_s"] / wall
            per.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("stages_s")}), flush=True)
        t = time.perf_counter()
        for s in scans:
            gpu.detect(s)
        seq = time.perf_counter() - t
        flight = in_flight(gpu, scans)
        gpu.close()
        if cpu is not None:
            cpu.close()
    walls = [r["wall_s"] for r in per]
    res.update(per_scan=per, scan_s_median=statistics.median(walls),
               stage_s_median={k: statistics.median(r["stages_s"].get(k, 0.0) for r in per)
                               for k in per[0]["stages_s"]},
               scans_per_s_one_at_a_time=n_scans / seq, scans_per_s_two_in_flight=n_scans / flight)
    if cpu is not None:
        res["cpu_scan_s_median"] = statistics.median(r["cpu_wall_s"] for r in per)
        res["cpu_over_gpu_median"] = statistics.median(r["cpu_over_gpu"] for r in per)
    (out_dir / "gpu.json").write_text(json.dumps(res, indent=2))
    (out_dir / "gpu.md").write_text(markdown(res))
    return res


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# GPU pipeline: DICOM in, candidates out", "",
             f"Device: {m.get('gpu') or 'no GPU (script check only: no GPU figure)'}"
             + (f" (compute {m['gpu_capability']}, {m['gpu_memory_gib']} GiB, CUDA {m['cuda']})"
                if m.get("gpu") else "")
             + f"; CPU {m['cpu']}, {m['cores']} cores; torch {m.get('torch')}, numba {m['numba']}, "
               f"onnxruntime {m.get('onnxruntime')}, openvino {m.get('openvino')}.",
             f"Backend {r['backend']}; the scan preprocessed on the device: {r['preprocess_on_device']}. "
             f"{r['n_scans']} phantom scans (~200 x 512 x 512, written as DICOM). Command: "
             "`python -m noduleflow.bench.gpu`.", ""]
    if "export_s" in r:
        lines.append(f"- AOTInductor export of the patch and stage-2 networks for CUDA: {r['export_s']:.1f} s")
    lines += [f"- detector open: {r['open_s']:.2f} s; first scan (one-off costs): {r['first_scan_s']:.2f} s",
              f"- stage-2 logits against ONNX Runtime (CPU) on {r['stage2_parity_patches']} context patches: "
              "max |diff| "
              f"{r['stage2_parity_max_abs_logit']}",
              f"- per scan, warm, load to candidates (median): **{r['scan_s_median']:.3f} s**",
              f"- scans/s: {r['scans_per_s_one_at_a_time']:.2f} one at a time, {r['scans_per_s_two_in_flight']:.2f} "
              "with the next scan loaded meanwhile"]
    if r.get("cpu_backend"):
        lines.append(f"- {r['cpu_backend']} on the same scans, same run: {r['cpu_scan_s_median']:.3f} s per scan, "
                     f"{r['cpu_over_gpu_median']:.2f}x the GPU's time")
    elif r.get("cpu_skipped"):
        lines.append(f"- no CPU comparison: {r['cpu_skipped']}")
    lines += ["", "| stage | median s |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["stage_s_median"].items()]
    if r.get("cpu_backend"):
        lines += ["", "| scan | GPU s | CPU s | candidates (GPU, CPU) | max centre mm | max prob diff |",
                  "|---:|---:|---:|---|---:|---:|"]
        for p in r["per_scan"]:
            a = p["agreement"]
            lines.append(f"| {p['scan']} | {p['wall_s']:.3f} | {p['cpu_wall_s']:.3f} | {a['n']} | "
                         f"{a['max_centre_mm']:.2f} | {a['max_prob_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench gpu` (and of ``python -m noduleflow.bench.gpu``)."""
    p.add_argument("--scans", type=int, default=5, help="phantom scans (>= 2; the first pays one-off costs)")
    p.add_argument("--package", help="a package exported with --torch-compiled on this GPU (default: the shipped "
                                     "one, compiled for CUDA here)")
    p.add_argument("--backend", default="torch-compiled", help="the GPU backend (default torch-compiled)")
    p.add_argument("--cpu-backend", default="auto", help="the CPU backend it is compared with (default: auto's CPU "
                                                         "choice)")
    p.add_argument("--out", default="bench-gpu", help="output folder (default ./bench-gpu)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("gpu", help=HELP, description=DESCRIPTION))


def command(args: argparse.Namespace) -> int:
    print(markdown(run(Path(args.out), args.scans, args.package, args.backend, args.cpu_backend)))
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "gpu", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
