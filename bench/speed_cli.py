"""`noduleflow bench speed` (the whole pipeline against the seed-style baseline) and
`noduleflow bench ort-settings` (ONNX Runtime CPU session settings for the 3-D graphs)."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("speed", help="whole-scan throughput, CPU backends side by side, dense vs patch, "
                                     "seed-style baseline",
                       description="Write phantom chest CTs (about 200x512x512) as DICOM series and time the "
                                   "pipeline stage by stage (the default two-stage detection and the dense "
                                   "stage 1 alone); compare the installed CPU backends (ONNX Runtime, OpenVINO) "
                                   "on the same scan; compare, on the same grid points, dense scoring, patch "
                                   "scoring with and without the overlapped gather, and the seed-style baseline "
                                   "(scipy zoom + scipy/skimage mask + one patch at a time in PyTorch eager; "
                                   "needs the train extra). Writes speed_cpu.json/.md.")
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
    p.set_defaults(func=_speed)
    q = sub.add_parser("ort-settings", help="ONNX Runtime CPU threads / graph optimisation / arena, measured",
                       description="Time dense.onnx on one engine-sized tile and patch.onnx on one batch under "
                                   "each intra-op thread count, graph optimisation level and arena setting; "
                                   "writes ort_settings.json.")
    q.add_argument("--model", help="model package (default: the shipped one)")
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--out", default="bench-ort-settings", help="output folder (default ./bench-ort-settings)")
    q.set_defaults(func=_ort)


def _speed(args: argparse.Namespace) -> int:
    from noduleflow.engine.extras import require_extra

    require_extra("bench", "noduleflow bench speed")
    if not args.no_baseline:
        require_extra("train", "noduleflow bench speed's seed-style baseline (--no-baseline skips it)")
    if args.compiled:
        require_extra("export", "noduleflow bench speed --compiled")
    from noduleflow.bench.speed import main

    argv = ["--scans", str(args.scans), "--subset", str(args.subset), "--out", args.out, "--backend", args.backend]
    argv += ["--model", args.model] if args.model else []
    argv += ["--no-baseline"] if args.no_baseline else []
    argv += ["--compiled"] if args.compiled else []
    argv += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    return main(argv)


def _ort(args: argparse.Namespace) -> int:
    from noduleflow.bench.ort_settings import main

    argv = ["--repeats", str(args.repeats), "--out", args.out] + (["--model", args.model] if args.model else [])
    return main(argv)
