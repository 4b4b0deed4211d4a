"""`noduleflow batch SOURCE... --out DIR`: every series of an archive, on a Ray cluster (`noduleflow.batch`)."""
from __future__ import annotations

import argparse

from .options import add_detector_options, add_model_options, backend_options, detector_config


def register(sub) -> None:
    p = sub.add_parser(
        "batch", help="detect every series of an archive on a Ray cluster (resumable; needs noduleflow[batch])",
        description="Detect every series under SOURCE (DICOM trees, grouped by SeriesInstanceUID however the "
                    "files lie; .mhd/.mha/.nii.gz files; LUNA16 folders; a .txt/.csv list of paths) on Ray: one "
                    "model replica per worker, each series loaded where the worker runs, a bounded number in "
                    "flight. OUT gets what `detect` writes for each series (<name>.json, <name>.png), one "
                    "candidates.csv (LUNA16 submission layout), summary.csv (status, seconds, stage times per "
                    "series), batch-manifest.json and batch-series.jsonl (the outcome of every series), and "
                    "froc.json with --annotations. Rerunning the same command skips the series that are done "
                    "and retries the failed ones; a series whose worker dies is run again elsewhere; a failed "
                    "series never stops the run. Exit code 1 if any series failed.")
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--out", required=True, help="output folder (created 0700, locked while the run lasts)")
    add_model_options(p)
    add_detector_options(p)
    g = p.add_argument_group("cluster")
    g.add_argument("--address", metavar="auto|HOST:PORT",
                   help="a running Ray cluster (auto: the one this machine belongs to); default: start a local "
                        "Ray instance on this machine")
    g.add_argument("--workers", type=int, default=1, metavar="N", help="model replicas (Ray actors) (default 1)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="N",
                   help="CPUs each worker reserves, and its threads (default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="N",
                   help="GPUs each worker reserves; fractions share one GPU, e.g. 0.25 (default 0)")
    g.add_argument("--in-flight", type=int, default=2, metavar="N",
                   help="series submitted per worker ahead of its results: the backpressure (default 2)")
    g.add_argument("--retries", type=int, default=2, metavar="N",
                   help="times a series whose worker died is run again (default 2)")
    g.add_argument("--ship-package", choices=("object-store", "path"), default="object-store",
                   help="how the model package reaches the workers: through Ray's object store (default), or "
                        "by its path (storage every node mounts); its sha256 is checked on arrival either way")
    p.add_argument("--no-png", action="store_true", help="skip the pictures")
    p.add_argument("--annotations", metavar="CSV", help="LUNA16 annotations.csv: score the run (FROC/CPM, froc.json)")
    p.add_argument("--excluded", metavar="CSV", help="annotations_excluded.csv: hits on these are ignored")
    p.add_argument("--force-mix", action="store_true",
                   help="add to an OUT that holds results of another package or other settings (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noduleflow.batch import ClusterSettings, batch, require_ray
    from noduleflow.engine.package import printable
    from noduleflow.trainer.evaluate.froc import format_table

    require_ray()   # before anything is read or written: one line saying what to install
    cluster = ClusterSettings(address=args.address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                              gpus_per_worker=args.gpus_per_worker, inflight_per_worker=args.in_flight,
                              retries=args.retries, ship=args.ship_package)
    r = batch(args.sources, args.out, model=args.model, backend=args.backend, config=detector_config(args),
              backend_options=backend_options(args), cluster=cluster, png=not args.no_png,
              annotations=args.annotations, excluded=args.excluded, force_mix=args.force_mix,
              progress=not args.no_progress)
    if r.workers:
        w = r.workers[0]
        print(f"{len(r.workers)} worker(s), backend {w['backend']}, Ray and workers ready in {r.startup_s:.1f} s")
    print(f"{r.n_done} done, {r.n_failed} failed, {r.n_skipped} already done"
          + (f"; {r.scans_per_s:.2f} scans/s" if r.n_done else ""))
    if r.froc is not None:
        print(format_table(r.froc))
    print(f"wrote {printable(r.out / 'candidates.csv')} and {printable(r.out / 'summary.csv')}")
    return 1 if r.n_failed else 0
