"""`noduleflow bench load`: DICOM series load time against SimpleITK's ImageSeriesReader."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("load", help="DICOM load time vs SimpleITK ImageSeriesReader (512x512x300 phantom)",
                       description="Write a phantom as a DICOM series and time engine.io.load_volume "
                                   "against SimpleITK's ImageSeriesReader on the same files (warm, best "
                                   "of N); writes load.json.")
    p.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="decode threads for load_volume")
    p.add_argument("--out", default="bench-load", help="folder for load.json (default ./bench-load)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noduleflow.bench.load import main

    argv = ["--shape", *map(str, args.shape), "--repeats", str(args.repeats), "--out", args.out]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    return main(argv)
