"""`noduleflow bench speed`: throughput of the whole pipeline on phantom DICOM series, against
the seed-style baseline.

    noduleflow bench speed [--scans 5] [--model PKG] [--subset 1500] [--out DIR]
    python -m noduleflow.bench.speed ...   (the same options)

Per scan (512 x 512 x ~200 phantom, written as DICOM): wall time of each stage in dense
mode (load, mask, resample, candidates, inference, clustering), and, on a random subset
of the same output-grid points, the scoring throughput (points/s) of
  - dense mode (the whole lung box, fully convolutional),
  - patch mode with the gather overlapped with inference (streaming), and without,
  - the seed-style baseline: scipy.ndimage.zoom (cubic) to 1 mm, the scipy/skimage lung
    mask, and the classifier applied one patch at a time in PyTorch eager.
For a two-stage package, each scan also runs the default detection (stage 1 + stage 2) and its
time is given beside stage 1 alone (the CNN's dense pass and clustering) on the same scan.
Ratios are measured in the same run on the same machine; cold start (model load and
ONNX Runtime session, numba JIT or cache load) is reported apart from warm runs.
FLOP accounting of the dense pass (`noduleflow.bench.flops`): per scan, the FLOPs the dense
detector ran for its grid points (work done: its tiles' bounding boxes) and the FLOPs those points
need (each layer's positions once), over its inference time, against the machine's float32 peak
(numpy matmul, the dense graph's heaviest convolution in ONNX Runtime) measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import machine, phantom_series, standalone
from .speed_report import markdown, plot_stages

TILES = (8, 16, 24, 32, 48)
BATCHES = (1, 8, 32, 64, 128)
HELP = "whole-scan throughput, CPU backends side by side, dense vs patch, seed-style baseline"
DESCRIPTION = ("Write phantom chest CTs (about 200x512x512) as DICOM series and time the pipeline stage by stage "
               "(the default two-stage detection and the dense stage 1 alone); compare the installed CPU backends "
               "(ONNX Runtime, OpenVINO) on the same scan; compare, on the same grid points, dense scoring, patch "
               "scoring with and without the overlapped gather, and the seed-style baseline (scipy zoom + "
               "scipy/skimage mask + one patch at a time in PyTorch eager; needs the train extra). Writes "
               "speed_cpu.json/.md.")


def run(n_scans: int, package, subset: int, out_dir: Path, seed0: int = 500, baseline: bool = True,
        z_extent_mm: float = 300.0, spacing_zyx_mm=(1.5, 0.7, 0.7), shape_zyx=None, checkpoint=None,
        compiled: bool = False, batches=BATCHES, peak_budget_s: float = 6.0, backend: str = "auto") -> dict:
    """Measure ``n_scans`` phantom series; write speed_cpu.json/.md into ``out_dir``.

    Default phantom: 300 mm of chest at 1.5 x 0.7 x 0.7 mm (about 200 x 512 x 512 voxels).
    ``checkpoint``: the PyTorch checkpoint the baseline runs and ``compiled`` compiles (default: the
    one the shipped package's stage-1 CNN was exported from; its architecture must be the package's). ``compiled``: also
    build an AOTInductor patch graph (needs torch) and compare it in the backend sweep.
    ``peak_budget_s``: seconds for each of two measurements of the machine's float32 peak (`bench.flops.peak`,
    at the start and at the end of the run; the higher of each figure is kept: `flops.merge_peaks`).
    ``backend``: what every detection runs on (default "auto", as `noduleflow detect`); the CPU
    backends installed are also compared side by side on the last scan (`cpu_backends`)."""
    from noduleflow.bench import flops as fl
    from noduleflow.bench.baseline import seed_style
    from noduleflow.bench.preprocess import resample_vs_simpleitk
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.io import load_volume
    from noduleflow.engine.package import default_package_path
    from noduleflow.engine.preprocess import preprocess

    package = Path(package or default_package_path())
    t0 = time.perf_counter()
    dense = Detector(package, mode="dense", backend=backend, stages="1")
    cold_model = time.perf_counter() - t0
    if baseline or compiled:
        checkpoint = stage1_checkpoint(dense.package, checkpoint)
    # the peak is measured at the start and again at the end (`flop_accounting`), the higher kept
    early_peak = fl.peak(seconds_budget=peak_budget_s, graph=fl.layers_from_onnx(dense.package.file("dense.onnx"),
                                                                                     dense.contract))
    patch = Detector(package, mode="patch", backend=backend, stages="1")
    # the default detection of a two-stage package: stage 1 (the contract's generator) + stage 2
    two = Detector(package, backend=backend) if dense.package.has_stage2 else None
    scans, per, grids = [], [], []
    from noduleflow.engine.patches import Normalisation, PatchProducer

    with tempfile.TemporaryDirectory() as tmp:
        scans = phantom_series(Path(tmp), n_scans, seed0, z_extent_mm, spacing_zyx_mm, shape_zyx)
        # cold: first scan pays numba compile (or cache load) and ONNX Runtime warm-up
        t0 = time.perf_counter()
        first = dense.detect(scans[0])
        cold_first_scan = time.perf_counter() - t0
        if two is not None:
            two.detect(scans[0])  # its own first-call costs (blob kernels, the stage-2 session)
        rng = np.random.default_rng(0)
        for i, s in enumerate(scans):
            d = dense.detect(s)
            vol = load_volume(s)
            pre = preprocess(vol, dense.spec)
            centres = dense.scorer.centres(pre)
            # counted after the loop, so that the counting cannot raise the per-scan peak RSS
            grids.append((centres, tuple(pre.volume.shape), d.timings_s["inference"]))
            sub = centres[rng.choice(len(centres), min(subset, len(centres)), replace=False)]
            t0 = time.perf_counter()
            patch.scorer(pre.volume.hu, sub)
            t_stream = time.perf_counter() - t0
            t0 = time.perf_counter()
            norm = Normalisation(*patch.contract.hu_window, pad_hu=patch.contract.pad_hu)
            for _, b in PatchProducer(pre.volume.hu, sub, patch.config.batch_size, norm, overlap=False):
                patch.backend.infer(b)
            t_serial = time.perf_counter() - t0
            row = {"scan": i, "shape_zyx": list(vol.shape), "lung_box_1mm": list(pre.volume.shape),
                   "grid_points": int(len(centres)), "stages_s": d.timings_s,
                   "dense_points_per_s": len(centres) / d.timings_s["inference"],
                   "dense_voxels_per_s": float(np.prod(pre.volume.shape)) / d.timings_s["inference"],
                   "patch_stream_points_per_s": len(sub) / t_stream,
                   "patch_serial_points_per_s": len(sub) / t_serial,
                   "peak_rss_mb_after": d.meta["peak_rss_mb_after"]}
            if two is not None:
                d2 = two.detect(s)
                row.update(two_stage_stages_s=d2.timings_s, two_stage_candidates=d2.n_scored,
                           two_stage_over_stage1_only=d2.timings_s["total"] / d.timings_s["total"],
                           two_stage_peak_rss_mb_after=d2.meta["peak_rss_mb_after"])
            if baseline and i == 0:
                row["baseline"] = seed_style(vol, checkpoint, pre.volume.voxel_to_world(sub[:300]))
                # the whole scan to 1 mm, engine vs SimpleITK (bench preprocess's comparison)
                row["resample_vs_simpleitk"] = resample_vs_simpleitk(vol, repeats=3, ref_repeats=1)
            per.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "stages_s"}), flush=True)
        flops = flop_accounting(dense, grids, peak_budget_s, earlier_peaks=[early_peak])
        streams = stage2_streams(package, two, pre) if two is not None else None  # the last scan
        backends = cpu_backends(package, scans[-1], pre, centres)
        flops["last_scan_by_variant"] = variant_accounting(flops, backends)
        tiles = tile_sweep(package, pre, centres, backend=backend)
        sweep = backend_sweep(package, pre, sub[:256], batches, compiled, checkpoint, Path(tmp))
    totals = [r["stages_s"]["total"] for r in per]

    def med(k):
        return statistics.median(r[k] for r in per)

    res = {
        "machine": machine(), "model_id": dense.package.manifest.model_id, "n_scans": n_scans,
        "backend": dense.backend.name, "stage2_backend": two.stage2_backend.name if two is not None else None,
        "cpu_backends": backends,
        "cold_start": {"model_load_s": cold_model, "first_scan_s": cold_first_scan,
                       "first_scan_stages_s": first.timings_s},
        "scan_s_median": statistics.median(totals), "scan_s_p95": float(np.percentile(totals, 95)),
        "scans_per_s": n_scans / sum(totals),
        "stage_s_median": {k: statistics.median(r["stages_s"][k] for r in per) for k in per[0]["stages_s"]},
        "dense_over_patch_stream": med("dense_points_per_s") / med("patch_stream_points_per_s"),
        "stream_over_serial": med("patch_stream_points_per_s") / med("patch_serial_points_per_s"),
        "dense_tile_sweep": tiles,
        "patch_backend_batch_sweep": sweep,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "per_scan": per,
        "flops": flops,
    }
    if two is not None:
        st = per[0]["two_stage_stages_s"]
        res["two_stage"] = {
            "stage1": dataclasses.asdict(two.contract.stage1),
            "stage2": dataclasses.asdict(two.contract.stage2),
            "scan_s_median": statistics.median(r["two_stage_stages_s"]["total"] for r in per),
            "stage_s_median": {k: statistics.median(r["two_stage_stages_s"][k] for r in per) for k in st},
            "over_stage1_only_median": statistics.median(r["two_stage_over_stage1_only"] for r in per),
            "stage1_candidates_median": statistics.median(r["two_stage_candidates"] for r in per),
            "stage2_flops": stage2_accounting(two, per, flops.get("peak")),
            "stage2_streams": streams}
    b = per[0].get("baseline")
    if b:
        eng = per[0]
        res["baseline"] = b
        res["resample_and_mask_speedup_vs_baseline"] = (b["mask_s"] + b["resample_s"]) / \
            (eng["stages_s"]["mask"] + eng["stages_s"]["resample"])
        # the detection's mask stage against the scipy/skimage mask with the same parameters
        res["mask_speedup_vs_reference"] = b["mask_s"] / eng["stages_s"]["mask"]
        res["resample_vs_simpleitk"] = eng["resample_vs_simpleitk"]
        res["dense_over_baseline_points_per_s"] = eng["dense_points_per_s"] / b["points_per_s"]
        # whole scan, seed style: preprocessing + every grid point one at a time
        base_scan = b["mask_s"] + b["resample_s"] + eng["grid_points"] / b["points_per_s"]
        res["scan_speedup_vs_baseline"] = base_scan / eng["stages_s"]["total"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed_cpu.json").write_text(json.dumps(res, indent=2))
    (out_dir / "speed_cpu.md").write_text(markdown(res))
    plot_stages(res, out_dir / "speed_cpu_stages.png")
    return res


def stage2_streams(package, two, pre, repeats: int = 3) -> dict:
    """ONNX Runtime's stage 2 of a preprocessed scan's stage-1 candidates with its default streams
    (`engine.backends.onnxruntime.default_streams`: one single-threaded batch per core) against one
    batch at a time over every core (``streams=1``), alternating, median of ``repeats`` each."""
    from noduleflow.engine.detector import Detector

    c = two.stage1(pre).centres_zyx
    times = {"default": [], "one": []}
    with Detector(package, backend="onnxruntime-cpu") as many, \
            Detector(package, backend="onnxruntime-cpu", backend_options={"streams": 1}) as one:
        for det in (many, one):  # warm-up at these shapes
            det.stage2_scorer(pre, c[:8])
        for _ in range(repeats):
            for key, det in (("default", many), ("one", one)):
                t = time.perf_counter()
                det.stage2_scorer(pre, c)
                times[key].append(time.perf_counter() - t)
        n_streams = int(many.stage2_backend.streams)
    a, b = statistics.median(times["default"]), statistics.median(times["one"])
    return {"candidates": int(len(c)), "streams": n_streams, "seconds_default": a,
            "seconds_one_stream": b, "one_stream_over_default": b / a, "runs_s": times}


CPU_BACKENDS = ("onnxruntime-cpu", "openvino-cpu")


def installed_cpu_backends(pkg) -> list[str]:
    """The `CPU_BACKENDS` that can run the package (``pkg``: a loaded `ModelPackage`) here."""
    from noduleflow.engine.backends import open_backend
    from noduleflow.engine.errors import BackendUnavailableError

    names = []
    for name in CPU_BACKENDS:
        try:
            open_backend(pkg, name, graph="patch").close()
            names.append(name)
        except BackendUnavailableError:
            pass
    return names


def cpu_backends(package, scan, pre, grid_centres, repeats: int = 3) -> dict:
    """The CPU backends installed (`CPU_BACKENDS`), side by side on one scan, alternating, median
    of ``repeats``: the default detection of the DICOM series ``scan`` (load to candidates; two
    stages for a two-stage package), its stage 2 alone on the same stage-1 candidates, and the
    dense pass over its grid points ``grid_centres`` of the preprocessed ``pre`` (the default tile).
    Each backend's times and its ratio to ONNX Runtime's. A package with ``stage2_int8.onnx`` adds
    "openvino-cpu-int8" (``--precision int8``: stage 2 in INT8; the scan and stage 2 only, its dense
    pass being fp32's) with its ratio to openvino-cpu, and a CPU with bfloat16 arithmetic
    "openvino-cpu-bf16" (``--precision bf16``: the same graphs in bf16, the dense pass too) with its
    ratio to openvino-cpu."""
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.package import ModelPackage

    pkg = ModelPackage.load(package)
    names = installed_cpu_backends(pkg)
    variants = {n: (n, {}) for n in names}
    if pkg.has_stage2 and pkg.file("stage2_int8.onnx") is not None and "openvino-cpu" in names:
        variants["openvino-cpu-int8"] = ("openvino-cpu", {"precision": "int8"})
    if "openvino-cpu" in names:
        from noduleflow.engine.backends.openvino import cpu_capabilities

        if "BF16" in cpu_capabilities():
            variants["openvino-cpu-bf16"] = ("openvino-cpu", {"precision": "bf16"})
    # the dense pass of each variant that has a dense graph in its arithmetic (not INT8: fp32's)
    dets = {n: (Detector(pkg, backend=b, backend_options=o),
                None if o.get("precision") == "int8" else Detector(pkg, mode="dense", stages="1", backend=b,
                                                                   backend_options=o))
            for n, (b, o) in variants.items()}
    cands = dets[names[0]][0].stage1(pre).centres_zyx if pkg.has_stage2 else None
    jobs = {"scan": lambda d: d[0].detect(scan), "dense_pass": lambda d: d[1].scorer(pre.volume.hu, grid_centres)}
    if cands is not None:
        jobs["stage2"] = lambda d: d[0].stage2_scorer(pre, cands)
    runs = {n: [j for j in jobs if j != "dense_pass" or dets[n][1] is not None] for n in dets}
    times = {n: {j: [] for j in runs[n]} for n in dets}
    for n in dets:  # warm-up: first runs, shapes
        for j in runs[n]:
            jobs[j](dets[n])
    for _ in range(repeats):
        for j, fn in jobs.items():
            for n in dets:
                if j in runs[n]:
                    t = time.perf_counter()
                    fn(dets[n])
                    times[n][j].append(time.perf_counter() - t)
    for a, b in dets.values():
        a.close()
        if b is not None:
            b.close()
    med = {n: {j: statistics.median(v) for j, v in t.items()} for n, t in times.items()}
    ref = med.get("onnxruntime-cpu")
    out = {"backends": list(dets), "stage2_candidates": int(len(cands)) if cands is not None else None,
           "grid_points": int(len(grid_centres)), "median_s": med, "runs_s": times,
           "speedup_over_onnxruntime": {n: {j: ref[j] / m[j] for j in m} for n, m in med.items()} if ref else {}}
    for prec in ("int8", "bf16"):
        if f"openvino-cpu-{prec}" in med:
            fp, q = med["openvino-cpu"], med[f"openvino-cpu-{prec}"]
            out[f"{prec}_over_fp32_openvino"] = {j: fp[j] / q[j] for j in q}
    return out


def stage2_accounting(two, per, pk) -> dict:
    """Stage 2's achieved GFLOP/s over all scans: per-patch convolution FLOPs of stage2.onnx
    (`flops.patch_graph_flops`) x network runs / stage-2 seconds (context patches and flips
    included), against the peak measured in this run. All of it is needed work (one run per
    candidate and view)."""
    from noduleflow.bench import flops as fl
    from noduleflow.trainer.evaluate.stage2_tuning import stage2_runs

    st2 = two.contract.stage2
    p = two.contract.patch_size
    per_patch = fl.patch_graph_flops(two.package.file("stage2.onnx"), (1, st2.channels, p, p, p))
    runs = sum(stage2_runs(r["two_stage_candidates"], st2.tta_flips, st2.tta_top) for r in per)
    secs = sum(r["two_stage_stages_s"]["stage2"] for r in per)
    gflops = per_patch * runs / secs / 1e9 if secs > 0 else float("nan")
    out = {"per_patch_gflop": per_patch / 1e9, "network_runs": runs, "seconds": secs, "gflops": gflops,
           "streams": int(two.stage2_backend.streams)}
    if pk:
        out["over_matmul_peak"] = gflops / pk["matmul_gflops"]
        out["over_conv3d_peak"] = gflops / pk["conv3d_gflops"]
    return out


def flop_accounting(dense, grids, peak_budget_s: float, earlier_peaks: list | None = None) -> dict:
    """FLOPs of the dense pass per scan and achieved/peak. ``grids``: per scan (the grid centres
    the dense detector scored, its lung box shape, its inference seconds). Work done: what its tiles
    ran (`flops.work_done`); needed: what the centres' output points need, each layer's positions
    once, as the graph computes them (`flops.needed_work`), and by receptive fields alone
    (``discarded=False``). The peak is measured now and merged with ``earlier_peaks`` (measurements
    of the same run: `flops.merge_peaks`, the highest of each figure)."""
    from noduleflow.bench import flops as fl

    graph = fl.layers_from_onnx(dense.package.file("dense.onnx"), dense.contract)
    k, t = dense.contract, dense.config.tile_out
    counts = [{"scan": i, "grid_points": int(len(c)), "inference_s": sec,
               "flop_done": fl.work_done(graph, k, c, shape, t),
               "flop_needed": fl.needed_work(graph, k, c, shape),
               "flop_needed_receptive": fl.needed_work(graph, k, c, shape, discarded=False)}
              for i, (c, shape, sec) in enumerate(grids)]
    pk = fl.merge_peaks([*(earlier_peaks or []), fl.peak(seconds_budget=peak_budget_s, graph=graph)])
    per = [dict(r, **fl.accounting(r["flop_done"], r["flop_needed"], r["inference_s"], pk)) for r in counts]
    done, need = sum(r["flop_done"] for r in counts), sum(r["flop_needed"] for r in counts)
    total = fl.accounting(done, need, sum(r["inference_s"] for r in counts), pk)
    total["gflop_needed_receptive"] = sum(r["flop_needed_receptive"] for r in counts) / 1e9
    return {"tile_out": t, "per_patch_gflop": fl.region_flops(graph, (1, 1, 1)) / 1e9,
            "per_patch_receptive_gflop": fl.needed_work(graph, k, [[k.dense_offset] * 3], [k.patch_size] * 3,
                                                        discarded=False) / 1e9,
            "peak": pk, "all_scans": total, "per_scan": per}


def variant_accounting(flops: dict, backends: dict) -> dict:
    """Achieved/peak of the last scan's dense pass for each variant `cpu_backends` timed it with
    (its median seconds; the FLOPs done and needed of that scan, as `flop_accounting` counted them
    with the default tile), each against the peak of its own arithmetic: float32 (matmul and conv3d)
    for fp32 variants; for "openvino-cpu-bf16", OpenVINO's bf16 conv3d peak (as ``conv3d``; no bf16
    matmul is measured, so ``matmul`` stays the float32 one)."""
    from noduleflow.bench import flops as fl

    last, pk = flops["per_scan"][-1], flops["peak"]
    out = {}
    for name, med in backends.get("median_s", {}).items():
        if "dense_pass" not in med:
            continue
        peak = pk
        if name.endswith("-bf16"):
            if not pk.get("conv3d_bf16_gflops"):
                continue
            peak = dict(pk, conv3d_gflops=pk["conv3d_bf16_gflops"])
        out[name] = fl.accounting(last["flop_done"], last["flop_needed"], med["dense_pass"], peak)
    return out


def stage1_checkpoint(package, checkpoint=None) -> Path:
    """``checkpoint`` (default: the shipped package's stage-1 checkpoint), checked to be a model of
    ``package``'s architecture (the baseline and the compiled graph stand for the package's graphs)."""
    from noduleflow.engine import ConfigError
    from noduleflow.trainer.checkpoint import read_config, shipped_checkpoint

    ckpt = Path(checkpoint) if checkpoint else shipped_checkpoint(1)
    arch, want = read_config(ckpt)["model"], package.manifest.architecture
    if arch != want:
        raise ConfigError(f"checkpoint {ckpt} is a {arch}, package {package.manifest.model_id} a {want}: pass the "
                          f"checkpoint its graphs were exported from (--checkpoint), or --no-baseline")
    return ckpt


def backend_sweep(package, pre, centres, batches, compiled, checkpoint, tmp: Path) -> list[dict]:
    """Patch-mode points/s per backend and batch size on the same gathered patches."""
    from noduleflow.engine.backends import open_backend
    from noduleflow.engine.package import ModelPackage
    from noduleflow.engine.patches import Normalisation, gather

    pkg = ModelPackage.load(package)
    names = {n: pkg for n in installed_cpu_backends(pkg)}
    if compiled:
        from noduleflow.export.aoti import export_aoti

        copy = tmp / "package_compiled"
        shutil.copytree(pkg.path, copy)
        export_aoti(checkpoint, copy)
        names["torch-compiled"] = ModelPackage.load(copy)
    norm = Normalisation(*pkg.contract.hu_window, pad_hu=pkg.contract.pad_hu)
    patches = gather(pre.volume.hu, centres, norm=norm)
    rows = []
    for name, p in names.items():
        be = open_backend(p, name, graph="patch")
        for bs in batches:
            be.infer(patches[:bs])  # warm-up at this shape
            t0 = time.perf_counter()
            for k in range(0, len(patches), bs):
                be.infer(patches[k:k + bs])
            rows.append({"backend": be.name, "batch": bs, "points_per_s": len(patches) / (time.perf_counter() - t0)})
        be.close()
    return rows


def tile_sweep(package, pre, centres, tiles=TILES, backend: str = "onnxruntime-cpu") -> list[dict]:
    """Dense scoring time of one scan's grid points for each tile size (output points per axis;
    each tile reads (4 (t - 1) + 41)^3 voxels, so smaller tiles recompute more halo)."""
    from noduleflow.engine.detector import Detector, DetectorConfig

    rows = []
    for t in tiles:
        d = Detector(package, backend=backend, config=DetectorConfig(mode="dense", tile_out=t))
        d.scorer(pre.volume.hu, centres[:1])  # warm-up: session, first allocation
        t0 = time.perf_counter()
        d.scorer(pre.volume.hu, centres)
        side = d.contract.dense_stride * (t - 1) + d.contract.patch_size
        rows.append({"tile_out": t, "tile_side_voxels": side, "seconds": time.perf_counter() - t0})
        d.close()
    return rows


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench speed` (and of ``python -m noduleflow.bench.speed``)."""
    p.add_argument("--scans", type=int, default=5, help="phantom scans (median over them)")
    p.add_argument("--model", help="model package (default: the shipped one)")
    p.add_argument("--subset", type=int, default=1500, help="grid points scored in patch mode per scan")
    p.add_argument("--no-baseline", action="store_true", help="skip the seed-style baseline (no torch needed)")
    p.add_argument("--compiled", action="store_true", help="also time an AOTInductor patch graph (needs torch)")
    p.add_argument("--checkpoint", help="the PyTorch checkpoint --model's stage-1 graphs were exported from (the "
                                        "baseline and --compiled run it; default: the shipped package's)")
    p.add_argument("--backend", default="auto", help="backend of every detection (default auto, as `detect`); the "
                   "installed CPU backends are compared side by side on the last scan either way")
    p.add_argument("--out", default="bench-speed", help="output folder (default ./bench-speed)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("speed", help=HELP, description=DESCRIPTION))


def command(args: argparse.Namespace) -> int:
    from noduleflow.engine.extras import require_extra

    require_extra("bench", "noduleflow bench speed")
    if not args.no_baseline:
        require_extra("train", "noduleflow bench speed's seed-style baseline (--no-baseline skips it)")
    if args.compiled:
        require_extra("export", "noduleflow bench speed --compiled")
    print(markdown(run(args.scans, args.model, args.subset, Path(args.out), baseline=not args.no_baseline,
                       compiled=args.compiled, backend=args.backend, checkpoint=args.checkpoint)))
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "speed", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
