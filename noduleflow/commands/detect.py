"""`noduleflow detect PATH...`: nodule candidates for one or many CT series."""
from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "detect", help="detect nodule candidates in CT series (DICOM, .mhd, .nii.gz)",
        description="Detect lung-nodule candidates. Each PATH is a DICOM series folder, a folder tree "
                    "of several series (each one is detected), a DICOM file, or a .mhd/.mha/.nii.gz. "
                    "Writes OUT/candidates.csv (LUNA16 submission layout, all scans), "
                    "OUT/<seriesuid>.json (candidates, stage timings, backend, model) and "
                    "OUT/<seriesuid>.png (three planes through each top candidate). A series that "
                    "fails is reported and skipped; the exit code is 1 if any failed.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--model", help="model package folder (default: the shipped phantom-trained model)")
    p.add_argument("--backend", default="auto",
                   help="auto (default), tensorrt, onnxruntime-cuda, onnxruntime-tensorrt, onnxruntime-cpu, "
                        "torch-compiled")
    p.add_argument("--mode", choices=("dense", "patch"), default="dense",
                   help="dense: fully convolutional tiles (default); patch: 41^3 patches at the candidates")
    p.add_argument("--top-k", type=int, default=15, help="candidates kept per scan (default 15)")
    p.add_argument("--threshold", type=float, default=0.0, help="drop candidates below this probability")
    p.add_argument("--clustering", choices=("nms", "components"), default="components",
                   help="components: connected components of the grid points with p >= 0.5 (default: the "
                        "better FROC on held-out phantoms, bench/results/clustering.md); nms: greedy 10 mm "
                        "radius NMS")
    p.add_argument("--series", metavar="UID", help="only this SeriesInstanceUID")
    p.add_argument("--out", default="noduleflow-out", help="output folder (default ./noduleflow-out)")
    p.add_argument("--no-png", action="store_true", help="skip the pictures")
    p.set_defaults(func=run)


def expand(paths, series):
    """(path, series_uid or None) for every series named by the arguments."""
    from pathlib import Path

    from noduleflow.engine.io import IMAGE_SUFFIXES
    from noduleflow.engine.io.dicom import list_series

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            images = sorted(f for f in p.rglob("*") if f.name.lower().endswith(IMAGE_SUFFIXES) and
                            not f.name.lower().endswith(".raw"))
            uids = list_series(p)
            out += [(f, None) for f in images]
            out += [(p, u) for u in uids if series in (None, u)]
            if not images and not uids:
                out.append((p, series))  # let the loader say what is wrong
        else:
            out.append((p, series))
    return out


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from noduleflow.engine import NoduleflowError
    from noduleflow.engine.detector import Detector, write_candidates_csv, write_outputs
    from noduleflow.engine.io import load_volume
    from noduleflow.engine.render import candidates_png

    out = Path(args.out)
    det = Detector(args.model, backend=args.backend, mode=args.mode, top_k=args.top_k, threshold=args.threshold,
                   clustering=args.clustering)
    print(f"model {det.package.manifest.model_id} ({det.package.manifest.architecture}), backend {det.backend.name}, "
          f"mode {args.mode}, ready in {det.cold_start_s:.2f} s")
    rows, failed = [], 0
    jobs = expand(args.paths, args.series)
    for path, uid in tqdm(jobs, desc="detect", unit="scan", disable=len(jobs) < 2):
        try:
            vol = load_volume(path, series_uid=uid)
            d = det.detect(vol)
        except NoduleflowError as exc:
            failed += 1
            print(f"FAILED {path}{' ' + uid if uid else ''}: {exc}", file=sys.stderr)
            continue
        rows += write_outputs(d, out)["rows"]
        if not args.no_png:
            candidates_png(vol, d, out / f"{d.series_uid}.png")
        t = d.timings_s
        print(f"{d.series_uid}: {len(d.candidates)} candidates, top p={d.candidates[0].prob if d.candidates else 0:.3f}; "
              + " ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    out.mkdir(parents=True, exist_ok=True)
    write_candidates_csv(out / "candidates.csv", rows)
    print(f"wrote {out / 'candidates.csv'} ({len(rows)} candidates from {len(jobs) - failed} scans)"
          + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0
