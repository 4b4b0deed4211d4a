"""`noduleflow bench accuracy`: detect on a cohort and score it with the LUNA16 protocol, in one step.

    noduleflow bench accuracy --data COHORT_DIR [--model PKG] [--out DIR]
    noduleflow bench accuracy --phantoms 10 --seed 3000 [--model PKG] [--out DIR]
    noduleflow bench accuracy --cohort heldout [--model PKG] [--out DIR]

COHORT_DIR: a folder written by `noduleflow synth`, or any folder of DICOM series / .mhd
scans with a LUNA16-style annotations.csv (and optionally annotations_excluded.csv).
--phantoms generates held-out phantom scans in memory (seeds S, S+1, ...; the default
model was trained on seeds 1000-1071, validated on 2000-2005, and its detection settings
tuned on 2100-2109).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def register(sub) -> None:
    p = sub.add_parser("accuracy", help="detect on a cohort and score it (FROC, CPM, sensitivity at top-K)",
                       description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="cohort folder with annotations.csv")
    src.add_argument("--phantoms", type=int, help="number of held-out phantom scans generated in memory")
    src.add_argument("--cohort", help="a cached phantom cohort by name (heldout, tuning, ...: "
                                      "trainer.data.cohort.COHORTS) or FIRST-LAST seeds: overall and per-stratum "
                                      "figures (bench.accuracy_cohort; the detector's default settings)")
    p.add_argument("--seed", type=int, default=3000, help="first phantom seed (with --phantoms)")
    p.add_argument("--model", help="model package (default: the shipped one)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--mode", choices=("dense", "patch"), default="dense")
    p.add_argument("--clustering", choices=("nms", "components"), default="components")
    p.add_argument("--no-refine", action="store_true", help="keep the grid-derived centres (no blob refinement)")
    p.add_argument("--top-k", type=int, default=15, help="candidates per scan for the top-K figure (15)")
    p.add_argument("--keep", type=int, default=100, help="candidates kept per scan for the FROC (100)")
    p.add_argument("--out", default="bench-accuracy", help="output folder (candidates.csv, accuracy.json, froc.png)")
    p.set_defaults(func=run)


def _scans(args):
    """Yield (volume, nodules (n,4), excluded (n,4))."""
    from noduleflow.engine.io import load_volume

    if args.phantoms:
        from noduleflow.trainer.data.annotations import as_xyzd
        from noduleflow.synthetic.phantom import generate_phantom

        for i in range(args.phantoms):
            ph = generate_phantom(args.seed + i)
            yield ph.volume, as_xyzd(ph.nodules), as_xyzd(ph.excluded)
        return
    from noduleflow.trainer.data.annotations import read_annotations

    folder = Path(args.data)
    ann = read_annotations(folder / "annotations.csv")
    exc = read_annotations(folder / "annotations_excluded.csv")
    scans = sorted(folder.rglob("*.mhd")) + sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.dcm")))
    for path in scans:
        vol = load_volume(path)
        yield vol, ann.get(vol.series_uid, np.zeros((0, 4))), exc.get(vol.series_uid, np.zeros((0, 4)))


def run(args: argparse.Namespace) -> int:
    from noduleflow.engine.extras import require_extra

    require_extra("bench", "noduleflow bench accuracy")
    if args.cohort:
        from noduleflow.bench.accuracy_cohort import main as cohort_main

        return cohort_main(["--cohort", args.cohort, "--out", args.out, "--keep", str(args.keep),
                            "--backend", args.backend] + (["--model", args.model] if args.model else []))
    from tqdm import tqdm

    from noduleflow.bench.froc import Candidates, Findings, evaluate, format_table, save_json
    from noduleflow.engine.detector import Detector, DetectorConfig
    from noduleflow.engine.results import write_candidates_csv

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    det = Detector(args.model, backend=args.backend, config=DetectorConfig(
        mode=args.mode, top_k=args.keep, clustering=args.clustering, refine=not args.no_refine))
    ann, exc, cands, rows, times = {}, {}, {}, [], []
    n = args.phantoms
    for vol, nod, ex in tqdm(_scans(args), total=n, desc="scans", unit="scan"):
        t = time.perf_counter()
        d = det.detect(vol)
        times.append(time.perf_counter() - t)
        uid = vol.series_uid
        ann[uid], exc[uid] = nod, ex
        xyz = np.array([c.center_xyz_mm for c in d.candidates]).reshape(-1, 3)
        prob = np.array([c.prob for c in d.candidates])
        cands[uid] = (xyz, prob)
        rows += [(uid, *c.center_xyz_mm, c.prob) for c in d.candidates]
    write_candidates_csv(out / "candidates.csv", rows)
    res = evaluate(Findings({k: v for k, v in ann.items() if len(v)}), Candidates(cands),
                   Findings({k: v for k, v in exc.items() if len(v)}), seriesuids=sorted(ann), top_k=args.top_k)
    save_json(res, out / "accuracy.json")
    meta = {"model_id": det.package.manifest.model_id, "backend": det.backend_name, "mode": args.mode,
            "clustering": args.clustering, "refine": not args.no_refine,
            "data": args.data or f"phantoms seeds {args.seed}..{args.seed + args.phantoms - 1}",
            "scan_seconds_median": float(np.median(times))}
    (out / "accuracy_meta.json").write_text(json.dumps(meta, indent=2))
    from noduleflow.bench.plots import plot_froc

    plot_froc({meta["model_id"]: res}, out / "froc.png", title=f"FROC on {meta['data']}")
    print(format_table(res))
    print(json.dumps(meta))
    return 0
