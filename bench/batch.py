"""`noduleflow bench batch`: scans/s of `noduleflow batch` on a local Ray against sequential `detect`.

    noduleflow bench batch [--scans 8] [--shape Z Y X] [--spacing DZ DY DX] [--out DIR]
    python -m noduleflow.bench.batch ...   (the same options)

In one run, on the same phantom series (MetaImage, default detection settings):

1. sequential detect: one `Detector` in this process (all cores), every series in turn; its
   first detection (cold: numba cache load, backend compile) reported apart from the warm rest;
2. Ray start-up: `ray.init` of a local instance, alone;
3. `batch` with 1 worker of all the cores, with 1 worker of 1 core and with one 1-core worker per
   core: actor start-up (package shipped, verified, loaded), scans/s over the run (each worker's
   cold first series included, as a user sees it), the seconds a worker spends per series, and
   each worker's resident memory.

The per-scan overhead of Ray is the batch run's seconds per scan with one worker of all the cores
less sequential detect's over the same series (both with their cold first scan). Figures are
ratios measured in this run; phantoms are a regression signal, not clinical data.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import tempfile
import time
from pathlib import Path

from .common import machine, standalone, write_report

HELP = "scans/s of `noduleflow batch` (Ray, 1 and N workers) against sequential detect"
DESCRIPTION = ("Detect the same phantom series sequentially in one process and with `noduleflow batch` on a local "
               "Ray instance (1 worker of all cores, 1 worker of 1 core, one 1-core worker per core); report "
               "scans/s, Ray's start-up, its per-scan overhead and memory per worker. Writes batch.json/.md.")
DEFAULT_SHAPE = (48, 128, 128)
DEFAULT_SPACING = (5.0, 2.6, 2.6)


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench batch` (and of ``python -m noduleflow.bench.batch``)."""
    p.add_argument("--scans", type=int, default=8, help="phantom series (default 8)")
    p.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE, metavar=("Z", "Y", "X"),
                   help=f"phantom voxel grid (default {' '.join(map(str, DEFAULT_SHAPE))})")
    p.add_argument("--spacing", type=float, nargs=3, default=DEFAULT_SPACING, metavar=("DZ", "DY", "DX"),
                   help=f"phantom voxel size in mm (default {' '.join(map(str, DEFAULT_SPACING))})")
    p.add_argument("--out", default="bench-batch", help="output folder (default ./bench-batch)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("batch", help=HELP, description=DESCRIPTION))


def _sequential(jobs) -> dict:
    from noduleflow.engine.detector import Detector

    t0 = time.perf_counter()
    det = Detector()
    times = []
    for j in jobs:
        t = time.perf_counter()
        det.detect(j.path, series_uid=j.series_uid)
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    det.close()
    warm = times[1:] or times
    return {"backend": det.backend_name, "model_load_s": det.cold_start_s, "first_scan_s": times[0],
            "warm_s_per_scan": statistics.mean(warm), "total_s": total, "scans_per_s": len(jobs) / total,
            "warm_scans_per_s": 1 / statistics.mean(warm)}


def _batch_run(src: Path, out: Path, workers: int, cpus: float) -> dict:
    from noduleflow.batch import ClusterSettings, batch
    from noduleflow.batch.manifest import RECORDS_NAME

    t0 = time.perf_counter()
    r = batch([src], out, cluster=ClusterSettings(workers=workers, cpus_per_worker=cpus), png=False, progress=False)
    total = time.perf_counter() - t0
    recs = [json.loads(line) for line in (out / RECORDS_NAME).read_text().splitlines() if line.strip()]
    per_scan = [x["wall_s"] for x in recs if x["status"] == "done"]
    rss = [x["worker"]["rss_mb"] for x in recs if x.get("worker") and "rss_mb" in x["worker"]]
    return {"workers": workers, "cpus_per_worker": cpus, "done": r.n_done, "failed": r.n_failed,
            "actor_startup_s": r.startup_s, "run_s": r.wall_s, "total_s": total, "scans_per_s": r.scans_per_s,
            "worker_s_per_scan": statistics.mean(per_scan) if per_scan else None,
            "worker_rss_mb_after_start": [w["rss_mb"] for w in r.workers], "worker_rss_mb_max": max(rss, default=0.0),
            "backend": r.workers[0]["backend"] if r.workers else None}


def measure(n_scans: int, shape_zyx, spacing_zyx_mm) -> dict:
    import ray  # the batch extra: checked by `command` before this runs

    from noduleflow.batch import find_jobs
    from noduleflow.synthetic.phantom import PhantomParams
    from noduleflow.synthetic.synth import write_cohort

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        src = Path(tmp) / "src"
        write_cohort(src, n_scans, 700, fmt="mhd", params=PhantomParams(n_nodules=3), shape_zyx=tuple(shape_zyx),
                     spacing_zyx_mm=tuple(spacing_zyx_mm), progress=False)
        jobs = find_jobs([src])
        seq = _sequential(jobs)
        t = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 object_store_memory=256 * 2**20)
        ray_init_s = time.perf_counter() - t
        try:
            runs = [_batch_run(src, Path(tmp) / f"out{i}", w, c)
                    for i, (w, c) in enumerate([(1, float(cores)), (1, 1.0), (cores, 1.0)])]
        finally:
            ray.shutdown()
    one = runs[0]
    return {"machine": machine(), "scans": n_scans, "shape_zyx": list(shape_zyx),
            "spacing_zyx_mm": list(spacing_zyx_mm),
            "sequential": seq, "ray_init_s": ray_init_s, "batch": runs,
            "ray_overhead_s_per_scan": one["run_s"] / one["done"] - seq["total_s"] / n_scans if one["done"] else None,
            "load_average_end": os.getloadavg()}


def report_text(res: dict, command: str) -> str:
    seq = res["sequential"]
    lines = [f"# noduleflow batch vs sequential detect ({res['scans']} phantom scans, "
             f"{'x'.join(map(str, res['shape_zyx']))} voxels)", "",
             f"Command: `{command}`", f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; "
             f"load average at the end {', '.join(f'{v:.1f}' for v in res['load_average_end'])}", "",
             "| run | scans/s | vs sequential | worker s/scan | start-up s | worker RSS MB (max) |",
             "|---|---:|---:|---:|---:|---:|",
             f"| sequential detect, 1 process, all cores | {seq['scans_per_s']:.3f} | 1.00 | "
             f"{seq['warm_s_per_scan']:.2f} (warm) | {seq['model_load_s']:.2f} (model) | |"]
    for r in res["batch"]:
        lines.append(f"| batch, {r['workers']} worker(s) x {r['cpus_per_worker']:g} CPU | {r['scans_per_s']:.3f} | "
                     f"{r['scans_per_s'] / seq['scans_per_s']:.2f} | {r['worker_s_per_scan']:.2f} | "
                     f"{r['actor_startup_s']:.2f} (actors) | {r['worker_rss_mb_max']:.0f} |")
    lines += ["", f"Ray start-up (local `ray.init`): {res['ray_init_s']:.1f} s. Ray's overhead per scan (1 worker of "
                  f"all cores against sequential detect, cold first scans included in both): "
                  f"{res['ray_overhead_s_per_scan']:+.2f} s. Sequential detect's first scan "
                  f"{seq['first_scan_s']:.2f} s, then {seq['warm_s_per_scan']:.2f} s per scan.",
              "", "Synthetic phantoms: a regression signal for throughput, not clinical evidence."]
    return "\n".join(lines) + "\n"


def command(args: argparse.Namespace) -> int:
    from noduleflow.batch import require_ray
    from noduleflow.engine.errors import ConfigError

    require_ray()
    if args.scans < 2:
        raise ConfigError(f"--scans must be >= 2, got {args.scans}")
    cmd = shlex.join(["noduleflow", "bench", "batch", "--scans", str(args.scans), "--shape", *map(str, args.shape),
                      "--spacing", *(f"{v:g}" for v in args.spacing), "--out", str(args.out)])
    res = measure(args.scans, args.shape, args.spacing)
    res["command"] = cmd
    write_report(Path(args.out), "batch", res, report_text(res, cmd))
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "batch", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
