"""`noduleflow bench froc`: score a LUNA16-layout submission (`trainer.evaluate.froc`).

    noduleflow bench froc --annotations annotations.csv --candidates candidates.csv [--json OUT] [--plot OUT.png]
    python -m noduleflow.bench.froc ...   (the same options)
"""
from __future__ import annotations

import argparse

from .common import standalone

HELP = "FROC / CPM of a candidates CSV with the LUNA16 protocol"
DESCRIPTION = ("Score candidates (seriesuid,coordX,coordY,coordZ,probability) against annotations with the "
               "LUNA16 protocol: at most 100 candidates per scan, hits within the nodule radius, duplicates "
               "and excluded findings ignored, sensitivity at 1/8..8 FPs/scan, CPM with a bootstrap 95 % "
               "interval, and sensitivity using the top-K candidates per scan.")


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench froc` (and of ``python -m noduleflow.bench.froc``)."""
    p.add_argument("--annotations", required=True, help="annotations.csv (LUNA16 layout)")
    p.add_argument("--candidates", required=True, help="candidates CSV (LUNA16 submission layout)")
    p.add_argument("--excluded", help="annotations_excluded.csv: hits on these are ignored")
    p.add_argument("--seriesuids", help="scans to evaluate (one UID per line); default: every scan "
                                        "in the annotations or the candidates")
    p.add_argument("--top-k", type=int, default=15, help="candidates per scan for the top-K figure (15)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples (0: none; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write the FROC curve as PNG")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("froc", help=HELP, description=DESCRIPTION))


def command(args: argparse.Namespace) -> int:
    if args.plot:
        from noduleflow.engine.extras import require_extra

        require_extra("bench", "bench froc --plot")
    from noduleflow.trainer.evaluate.froc import (
        evaluate,
        format_table,
        read_candidates,
        read_findings,
        read_seriesuids,
        save_json,
    )

    result = evaluate(
        read_findings(args.annotations), read_candidates(args.candidates),
        excluded=read_findings(args.excluded) if args.excluded else None,
        seriesuids=read_seriesuids(args.seriesuids) if args.seriesuids else None,
        top_k=args.top_k, bootstrap=args.bootstrap, seed=args.seed)
    print(format_table(result))
    if args.json:
        save_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        from noduleflow.trainer.evaluate.plots import plot_froc

        plot_froc({"submission": result}, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    return standalone(build_parser, "froc", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
