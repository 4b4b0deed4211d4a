"""Throughput of the whole pipeline on phantom DICOM series, against the seed-style baseline.

    python -m noduleflow.bench.speed [--scans 5] [--model PKG] [--subset 1500] [--out bench/results]

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
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TILES = (8, 16, 24, 32, 48)
BATCHES = (1, 8, 32, 64, 128)


CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> dict:
    """CPU, cores and versions, as far as installed (onnxruntime, openvino, torch: None when not),
    and the GPU PyTorch sees (name, compute capability, memory, CUDA version), or None."""
    import numba

    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first processor's lines
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cpu = model or platform.processor() or platform.machine()
    # what decides the kernels the runtimes pick (one "AMD EPYC" may have AVX2 only, another
    # AVX-512 with bfloat16 and VNNI): named beside the model
    features = [f for f in CPU_FEATURES if f in flags]
    info = {"cpu": f"{cpu} ({', '.join(features)})" if features else cpu, "cpu_model": cpu,
            "cpu_features": features, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "gpu": None}
    for mod in ("onnxruntime", "openvino", "torch"):
        info[mod] = __import__(mod).__version__.split("-")[0] if importlib.util.find_spec(mod) else None
    if info["torch"] is not None:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_capability=f"{p.major}.{p.minor}",
                        gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda)
    return info


def phantom_series(folder: Path, n: int, seed0: int = 500, z_extent_mm: float = 300.0,
                   spacing_zyx_mm=(1.5, 0.7, 0.7), shape_zyx=None) -> list[Path]:
    """``n`` phantom chest CTs (seeds ``seed0``...; by default 300 mm at 1.5 x 0.7 x 0.7 mm, about
    200 x 512 x 512) written as DICOM series ``folder``/s0, s1, ...; their folders."""
    from noduleflow.engine.io.dicom_write import write_dicom_series
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    out = []
    for i in range(n):
        ph = generate_phantom(seed0 + i, params=PhantomParams(z_extent_mm=z_extent_mm),
                              spacing_zyx_mm=tuple(spacing_zyx_mm), shape_zyx=shape_zyx)
        write_dicom_series(ph.volume, folder / f"s{i}", seed=i)
        out.append(folder / f"s{i}")
    return out


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
    from noduleflow.engine.patches import PatchProducer

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
            centres = dense.grid_centres(pre)
            # counted after the loop, so that the counting cannot raise the per-scan peak RSS
            grids.append((centres, tuple(pre.volume.shape), d.timings_s["inference"]))
            sub = centres[rng.choice(len(centres), min(subset, len(centres)), replace=False)]
            t0 = time.perf_counter()
            patch.score(pre, sub)
            t_stream = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _, b in PatchProducer(pre.volume.hu, sub, patch.config.batch_size, patch.norm, overlap=False):
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
    med = lambda k: statistics.median(r[k] for r in per)  # noqa: E731
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
    from noduleflow.bench.plots import plot_stages

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
            det.score_stage2(pre, c[:8])
        for _ in range(repeats):
            for key, det in (("default", many), ("one", one)):
                t = time.perf_counter()
                det.score_stage2(pre, c)
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
    jobs = {"scan": lambda d: d[0].detect(scan), "dense_pass": lambda d: d[1].score(pre, grid_centres)}
    if cands is not None:
        jobs["stage2"] = lambda d: d[0].score_stage2(pre, cands)
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


def stage2_runs(n: int, flips: int, top: int) -> int:
    """Network runs stage 2 makes for ``n`` candidates: the first view for each, the other flips for
    the best ``top`` (all when 0)."""
    return n + (flips - 1) * (min(top, n) if top > 0 else n)


def stage2_accounting(two, per, pk) -> dict:
    """Stage 2's achieved GFLOP/s over all scans: per-patch convolution FLOPs of stage2.onnx
    (`flops.patch_graph_flops`) x network runs / stage-2 seconds (context patches and flips
    included), against the peak measured in this run. All of it is needed work (one run per
    candidate and view)."""
    from noduleflow.bench import flops as fl

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
        d.score(pre, centres[:1])  # warm-up: session, first allocation
        t0 = time.perf_counter()
        d.score(pre, centres)
        side = d.contract.dense_stride * (t - 1) + d.contract.patch_size
        rows.append({"tile_out": t, "tile_side_voxels": side, "seconds": time.perf_counter() - t0})
        d.close()
    return rows


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, GPU {m.get('gpu')}; onnxruntime {m['onnxruntime']}, "
             f"openvino {m.get('openvino')}, numba {m['numba']}, torch {m.get('torch')}. Model {r['model_id']}. "
             f"{r['n_scans']} phantom scans. Backend: {r.get('backend', 'onnxruntime-cpu')}"
             + (f" (stage 2: {r['stage2_backend']})" if r.get("stage2_backend") else "") + ".",
             "", "| stage | median s |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["stage_s_median"].items()]
    t = r.get("two_stage")
    if t:
        lines += ["", f"Default detection, stage 1 ({t['stage2']['generator']}, at most "
                  f"{t['stage2']['max_candidates']} candidates"
                  + (f" + {t['stage2']['subsolid_candidates']} subsolid" if t['stage2'].get('subsolid_candidates') else "")
                  + (f" + {t['stage2']['wall_candidates']} pleural" if t['stage2'].get('wall_candidates') else "")
                  + f") + stage 2 ({t['stage2']['tta_flips']} flip view(s)"
                  + (f" for the best {t['stage2']['tta_top']}" if t['stage2'].get('tta_top') else "") + "), "
                  f"median {t['stage1_candidates_median']:.0f} candidates scored:", "", "| stage | median s |",
                  "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in t["stage_s_median"].items()]
        lines += ["", f"- whole scan, two stages (warm): median {t['scan_s_median']:.1f} s, "
                  f"{t['over_stage1_only_median']:.2f}x the stage-1-only scan below (same scans, same run)"]
        f2 = t.get("stage2_flops")
        if f2:
            lines.append(f"- stage 2: {f2['network_runs']} network runs of {f2['per_patch_gflop']:.3f} GFLOP in "
                         f"{f2['seconds']:.2f} s (all scans, context patches included; {f2.get('streams', 1)} "
                         f"batch(es) at once) = {f2['gflops']:.1f} GFLOP/s"
                         + (f", {100 * f2['over_matmul_peak']:.0f} % of the matmul peak, "
                            f"{100 * f2['over_conv3d_peak']:.0f} % of the conv3d peak (all of it needed work)"
                            if "over_matmul_peak" in f2 else ""))
        sm = t.get("stage2_streams")
        if sm:
            lines.append(f"- ONNX Runtime's stage 2 of the last scan's {sm['candidates']} candidates: {sm['streams']} batches at once, "
                         f"one thread each, {sm['seconds_default']:.2f} s; one batch at a time over every core "
                         f"{sm['seconds_one_stream']:.2f} s: {sm['one_stream_over_default']:.2f}x "
                         f"(median of {len(sm['runs_s']['default'])}, alternating)")
    lines += _backend_lines(r)
    lines += ["", f"- whole scan (dense, stage 1 only, warm): median {r['scan_s_median']:.1f} s, p95 {r['scan_s_p95']:.1f} s, "
              f"{r['scans_per_s']:.3f} scans/s",
              f"- cold start: model load {r['cold_start']['model_load_s']:.2f} s, first scan "
              f"{r['cold_start']['first_scan_s']:.1f} s",
              f"- dense vs patch (streaming), same grid points: {r['dense_over_patch_stream']:.1f}x points/s",
              f"- patch streaming vs serial gather: {r['stream_over_serial']:.2f}x"]
    if r.get("patch_backend_batch_sweep"):
        lines.append("- patch scoring, points/s by backend and batch: " + "; ".join(
            f"{x['backend']} b{x['batch']}: {x['points_per_s']:.0f}" for x in r["patch_backend_batch_sweep"]))
    if "peak_rss_mb" in r:
        lines.append(f"- peak host RSS of the benchmark process: {r['peak_rss_mb']:.0f} MB")
        if r["per_scan"] and "peak_rss_mb_after" in r["per_scan"][0]:
            lines.append("- peak RSS (high-water mark) after each stage of the first scan, MB: " + ", ".join(
                f"{k} {v:.0f}" for k, v in r["per_scan"][0]["peak_rss_mb_after"].items()))
    if r.get("dense_tile_sweep"):
        best = min(r["dense_tile_sweep"], key=lambda x: x["seconds"])
        lines.append("- dense tile size (output points per axis -> seconds for the last scan's grid): " +
                     ", ".join(f"{x['tile_out']}: {x['seconds']:.2f}" for x in r["dense_tile_sweep"]) +
                     f" (fastest {best['tile_out']})")
    lines += _flops_lines(r) + _mask_and_rss_lines(r)
    if "mask_speedup_vs_reference" in r:
        rs = r["resample_vs_simpleitk"]
        lines += [f"- lung mask (the first scan's mask stage) vs the scipy/skimage reference with the same "
                  f"parameters (`bench.reference.lung_mask`, full resolution): {r['mask_speedup_vs_reference']:.1f}x "
                  f"(goal 20x)",
                  f"- resampling the whole first scan ({' x '.join(map(str, rs['in_shape_zyx']))}) to 1 mm vs SimpleITK "
                  f"linear on the same grid: {rs['speedup_vs_simpleitk']:.1f}x (goal 3x; best of 3 against best of "
                  f"3; max |HU difference| inside {rs['max_abs_diff_hu_vs_simpleitk_interior']:.1f})"]
    if "baseline" in r:
        lines += [f"- mask + resampling vs seed-style (scipy zoom cubic, scipy/skimage mask): "
                  f"{r['resample_and_mask_speedup_vs_baseline']:.1f}x",
                  f"- dense scoring vs one patch at a time in PyTorch eager: "
                  f"{r['dense_over_baseline_points_per_s']:.0f}x points/s",
                  f"- whole scan vs seed-style pipeline (extrapolated from the measured per-point rate): "
                  f"{r['scan_speedup_vs_baseline']:.0f}x"]
    lines.append("\nAbsolute times on a shared 2-core machine are indicative only; the ratios are the result.")
    return "\n".join(lines) + "\n"


def _backend_lines(r: dict) -> list[str]:
    b = r.get("cpu_backends")
    if not b or len(b["backends"]) < 2:
        return []
    what = {"scan": "whole scan (load to candidates)",
            "stage2": f"stage 2 ({b['stage2_candidates']} candidates)",
            "dense_pass": f"dense pass ({b['grid_points']} grid points)"}
    lines = [f"- CPU backends on the last scan (median of {len(next(iter(b['runs_s'].values()))['scan'])}, alternating):"]
    for job, label in what.items():
        if job not in b["median_s"][b["backends"][0]]:
            continue
        times = ", ".join(f"{n} {b['median_s'][n][job]:.2f} s" for n in b["backends"] if job in b["median_s"][n])
        ups = "; ".join(f"{n} {v[job]:.2f}x" for n, v in b["speedup_over_onnxruntime"].items()
                        if n != "onnxruntime-cpu" and job in v)
        lines.append(f"  - {label}: {times}; over onnxruntime-cpu: {ups}")
    for prec, label in (("int8", "stage 2's INT8 graph, `--precision int8`"),
                        ("bf16", "the same graphs in bfloat16, `--precision bf16`")):
        q = b.get(f"{prec}_over_fp32_openvino")
        if q:
            lines.append(f"  - openvino-cpu-{prec} ({label}) over openvino-cpu: "
                         + "; ".join(f"{what[j].split(' (')[0]} {v:.2f}x" for j, v in q.items()))
    return lines


def _peak_measurements(pk: dict) -> str:
    """", the highest of N measurements (...)" for a merged peak (`flops.merge_peaks`), else ""."""
    ms = pk.get("measurements") or []
    if len(ms) < 2:
        return ""
    return (f"; the highest of {len(ms)} measurements, at the start and the end of the run: matmul "
            + "/".join(f"{m['matmul_gflops']:.0f}" for m in ms) + ", conv3d "
            + "/".join(f"{max(m['conv3d_gflops_by_runtime'].values()):.0f}" for m in ms)
            + ("" if not ms[0].get("conv3d_bf16_gflops") else ", bf16 conv3d "
               + "/".join(f"{m['conv3d_bf16_gflops']:.0f}" if m.get("conv3d_bf16_gflops") else "-" for m in ms)))


def _flops_lines(r: dict) -> list[str]:
    f = r.get("flops")
    if not f:
        return []
    a, pk = f["all_scans"], f["peak"]
    pct = lambda v: f"{100 * v:.0f} %"  # noqa: E731
    lines = [
        f"- dense pass FLOPs (convolutions, 2 per multiply-add; all scans, tile {f['tile_out']}): work done "
        f"{a['gflop_done']:.1f} GFLOP, needed {a['gflop_needed']:.1f} GFLOP, needed/done {a['needed_over_done']:.2f} "
        f"(receptive fields alone {a['gflop_needed_receptive']:.1f} GFLOP; per patch {f['per_patch_gflop']:.3f}, "
        f"{f['per_patch_receptive_gflop']:.3f} by receptive field)",
        f"- float32 peak measured in this run: matmul {pk['matmul_gflops']:.0f} GFLOP/s (numpy {pk['matmul_n']}^2), "
        f"conv3d {pk['conv3d_gflops']:.0f} GFLOP/s ({pk.get('conv3d_runtime', 'onnxruntime')}, {pk['conv3d']}, "
        f"{pk['threads']} threads" + "".join(f"; {k} {v:.0f}" for k, v in pk.get("conv3d_gflops_by_runtime", {}).items())
        + ")" + _peak_measurements(pk),
        f"- achieved/peak on work done ({r.get('backend', 'onnxruntime-cpu')}): {a['gflops_done']:.1f} GFLOP/s in "
        f"{a['seconds']:.2f} s of inference = "
        f"{pct(a['done_over_matmul_peak'])} of matmul, {pct(a['done_over_conv3d_peak'])} of conv3d",
        f"- achieved/peak on needed work: {a['gflops_needed']:.1f} GFLOP/s = {pct(a['needed_over_matmul_peak'])} of "
        f"matmul, {pct(a['needed_over_conv3d_peak'])} of conv3d"]
    if pk.get("conv3d_bf16_gflops"):
        lines.append(f"- bfloat16 conv3d peak measured in this run (OpenVINO, same Conv): {pk['conv3d_bf16_gflops']:.0f} "
                     "GFLOP/s")
    for name, v in (f.get("last_scan_by_variant") or {}).items():
        bf = name.endswith("-bf16")
        lines.append(f"- last scan's dense pass, {name} (median of the CPU-backend comparison, {v['seconds']:.2f} s): "
                     f"on work done {pct(v['done_over_conv3d_peak'])}, on needed work "
                     f"{pct(v['needed_over_conv3d_peak'])} of the {'bf16' if bf else 'float32'} conv3d peak"
                     + ("" if bf else f" ({pct(v['needed_over_matmul_peak'])} of matmul)"))
    return lines


def _mask_and_rss_lines(r: dict) -> list[str]:
    lines = []
    runs = [("one stage", r.get("stage_s_median") or {})]
    if r.get("two_stage"):
        runs.append(("two stages", r["two_stage"].get("stage_s_median") or {}))
    share = [f"{name} {100 * s['mask'] / s['total']:.0f} % ({s['mask']:.2f} of {s['total']:.2f} s)"
             for name, s in runs if "mask" in s and s.get("total")]
    if share:
        lines.append("- lung mask share of the whole scan (median mask s / median total s): " + "; ".join(share))
    rss = []
    for name, key in (("one stage", "peak_rss_mb_after"), ("two stages", "two_stage_peak_rss_mb_after")):
        v = [max(x[key].values()) for x in r.get("per_scan") or [] if x.get(key)]
        if v:
            rss.append(f"{name} median {statistics.median(v):.0f}, max {max(v):.0f}")
    if rss:
        lines.append("- peak RSS at the end of each scan's detection, MB (the process's high-water mark: it never "
                     "falls from scan to scan, and each scan's two-stage run follows its one-stage run): " +
                     "; ".join(rss))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=5)
    ap.add_argument("--model", help="model package (default: the shipped one)")
    ap.add_argument("--subset", type=int, default=1500, help="grid points scored in patch mode per scan")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--compiled", action="store_true", help="also time an AOTInductor patch graph (needs torch)")
    ap.add_argument("--checkpoint", help="the PyTorch checkpoint --model's stage-1 graphs were exported from "
                                         "(default: the shipped package's)")
    ap.add_argument("--backend", default="auto", help="backend of every detection (default auto, as `detect`); "
                    "the CPU backends installed are compared side by side on the last scan either way")
    ap.add_argument("--out", default="bench-speed", help="output folder (default ./bench-speed)")
    a = ap.parse_args(argv)
    print(markdown(run(a.scans, a.model, a.subset, Path(a.out), baseline=not a.no_baseline, compiled=a.compiled,
                       backend=a.backend, checkpoint=a.checkpoint)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
