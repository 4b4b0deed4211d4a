"""`noduleflow bench preprocess`: the numba preprocessing kernels against their references."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("preprocess", help="numba kernels vs scipy/skimage/SimpleITK references (512x512x300 phantom)",
                       description="Time the lung mask, crop + resampling (and whole-scan resampling at several "
                                   "sizes), connected components, candidate rules and patch gather against their "
                                   "reference implementations in one run (numba first call apart from warm runs), "
                                   "the lung-mask Dice on phantoms, and the mask and resampling on the real scan in "
                                   "../shared/realct when present; writes preprocess.json and preprocess.md.")
    p.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--repeats", type=int, default=3, help="warm runs of ours (best of)")
    p.add_argument("--ref-repeats", type=int, default=1, help="runs of each reference (best of)")
    p.add_argument("--dice-scans", type=int, default=10, help="phantoms for the Dice study (0: skip)")
    p.add_argument("--resample-slices", type=int, nargs="*", default=[100, 200, 300],
                   help="whole-scan resampling at 512 x 512 x N for each N")
    p.add_argument("--realct", default=None, help="a real DICOM series folder (default: ../shared/realct if present; "
                                                  "'none' to skip)")
    p.add_argument("--baseline-commit", default=None,
                   help="git revision whose engine lung mask ours is compared with (Dice, peak memory)")
    p.add_argument("--out", default="bench-preprocess", help="output folder (default ./bench-preprocess)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noduleflow.bench.preprocess import main

    argv = ["--shape", *map(str, args.shape), "--repeats", str(args.repeats), "--ref-repeats",
            str(args.ref_repeats), "--dice-scans", str(args.dice_scans), "--out", args.out,
            "--resample-slices", *map(str, args.resample_slices)]
    if args.realct:
        argv += ["--realct", args.realct]
    if args.baseline_commit:
        argv += ["--baseline-commit", args.baseline_commit]
    return main(argv)
