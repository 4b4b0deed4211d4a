"""Stage-2 settings chosen on the tuning cohort: stage-1 candidates per scan, flips averaged, and
how the final score combines stage 2 with stage 1.

    python -m noduleflow.trainer.evaluate.stage2_tuning --model PKG --cohort tuning --out DIR [--cache DIR]

For each scan the two-stage package's own stages run once (`Detector.stage1` with the contract's
candidate cap, then the stage-2 graph on each candidate in each of the 8 axis flips, through
the package's backend) and are cached per scan under ``--cache``; every variant is then ranked
from the cache: the first N stage-1 candidates (N in --caps), the mean stage-2 logit over the
first F flips (F in 1, 2, 4, 8; flip order as `engine.context.flips8`), alone or averaged
with the stage-1 CNN logit where stage 1 has one, then one candidate per lesion
(`engine.postprocess.lesion_order`: off, or within 1, 1.5, 2 x the extent radius). Writes
``stage2_tuning.json`` / ``.md`` with sensitivity at 15 and 100 candidates per scan and the CPM
of each variant, and the stage-2 seconds per scan for 1 and 8 flips (measured here, on this
machine). Settings are chosen here; the held-out cohort only reports. Phantoms are a regression
signal, not clinical evidence.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from noduleflow.engine.postprocess import lesion_order, sigmoid

from .strata import ScanResult, scan_result, score_cohort

CAPS = (50, 100, 150)
FLIPS = (1, 2, 4, 8)


def scan_scores(det, scan, cache_dir=None, stage1_from=None):
    """-> dict(centres (n, 3) zyx, radius (n,), cnn_prob (n,), logits (n, 8), seconds_stage1,
    seconds_flip) for one `CohortScan`; cached as ``<cache_dir>/<seed>.npz``. With
    ``stage1_from`` (another model's cache folder, made with the same stage-1 settings) the
    stage-1 candidates and their time are read from there and only stage 2 runs."""
    from noduleflow.engine.context import flips8

    f = Path(cache_dir) / f"{scan.seed}.npz" if cache_dir else None
    if f is not None and f.exists():
        with np.load(f) as z:
            return {k: z[k] for k in z.files}
    pre = scan.pre
    src = Path(stage1_from) / f"{scan.seed}.npz" if stage1_from else None
    if src is not None and src.exists():
        with np.load(src) as z:
            centres, radius, cnn_prob, t1 = z["centres"], z["radius"], z["cnn_prob"], z["seconds_stage1"]
    else:
        t = time.perf_counter()
        cand = det.stage1(pre)
        t1 = time.perf_counter() - t
        centres, radius, cnn_prob = cand.centres_zyx, cand.radius_mm, cand.cnn_prob
    ctx = det.stage2_scorer.context_volume(pre)
    logits = np.zeros((len(centres), 8))
    t = time.perf_counter()
    bs = min(det.config.batch_size, det.stage2_backend.max_batch)
    starts = range(0, len(centres), bs)
    views = det.stage2_backend.infer_many(v for i in starts for v in flips8(ctx.patches(centres[i:i + bs])))
    for i in starts:
        for j in range(8):
            logits[i:i + bs, j] = next(views)
    out = {"centres": centres, "radius": radius, "cnn_prob": cnn_prob, "logits": logits,
           "seconds_stage1": np.float64(t1), "seconds_flip": np.float64((time.perf_counter() - t) / 8)}
    if f is not None:
        save_npz(f, **out)
    return out


def save_npz(f: Path, **arrays) -> None:
    """``np.savez`` to ``f`` through a temporary name beside it (an interrupted run leaves no half file)."""
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(f)


def stage2_runs(n: int, flips: int, top: int) -> int:
    """Network runs stage 2 makes for ``n`` candidates: the first view for each, the other flips for
    the best ``top`` (all when 0)."""
    return n + (flips - 1) * (min(top, n) if top > 0 else n)


def ranked_result(scan, centres, radius, z, dedup: float, keep: int = 100) -> ScanResult:
    """A `CohortScan`'s candidates (zyx on its 1 mm grid, extent radius) scored by logits ``z``,
    one per lesion (`engine.postprocess.lesion_order`), the best ``keep``."""
    o = lesion_order(centres, radius, z, dedup)[:keep]
    xyz = scan.pre.volume.voxel_to_world(centres[o]).reshape(-1, 3)
    return scan_result(scan, xyz, sigmoid(z[o]))


def rank(s: dict, cap: int, flips: int, fuse: bool, top: int = 0):
    """Scores of one variant: the first ``cap`` candidates, ranked by the mean stage-2 logit over
    ``flips`` flips (averaged with the stage-1 CNN logit when ``fuse``); with ``top`` > 0 the flips
    after the first only for the ``top`` best by the first view (the contract's ``tta_top``)."""
    z = s["logits"][:cap, :flips].mean(1)
    if 0 < top < len(z):
        z = s["logits"][:cap, 0].copy()
        best = np.argsort(-z, kind="stable")[:top]
        z[best] = s["logits"][:cap][best, :flips].mean(1)
    if fuse:
        p = np.clip(s["cnn_prob"][:cap], 1e-6, 1 - 1e-6)
        cnn = np.log(p / (1 - p))
        z = np.where(np.isfinite(cnn), (z + cnn) / 2.0, z)
    return z


def main(argv=None) -> int:
    from tqdm import tqdm

    from noduleflow.engine.detector import Detector
    from noduleflow.trainer.data.cohort import CohortCache, cohort_seeds

    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.evaluate.stage2_tuning", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a two-stage model package (noduleflow export --stage2)")
    ap.add_argument("--cohort", default="tuning")
    ap.add_argument("--caps", default=",".join(map(str, CAPS)))
    ap.add_argument("--cache", help="folder caching each scan's stage-1 candidates and stage-2 logits")
    ap.add_argument("--stage1-from", help="another package's --cache folder made with the same stage-1 "
                    "settings: its stage-1 candidates are reused and only stage 2 runs (comparing stage-2 weights)")
    ap.add_argument("--tta-tops", default="25,50,100",
                    help="extra rows at the largest cap, one per lesion 1.5: flips after the first only for "
                         "the best N by the first view (the contract's tta_top)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    det = Detector(a.model, stages="2")
    caps = [int(c) for c in a.caps.split(",")]
    st1 = det.contract.stage1
    if max(caps) > st1.max_candidates + st1.subsolid_candidates:
        raise SystemExit(f"--caps above the package's stage-1 cap {st1.max_candidates} + "
                         f"{st1.subsolid_candidates} subsolid")
    seeds = cohort_seeds(a.cohort)
    cache = CohortCache()
    per = []
    for s in tqdm(seeds, desc="scans", unit="scan"):
        scan = cache.get(s)
        per.append((scan, scan_scores(det, scan, a.cache, a.stage1_from)))
    def row(cap, flips, fuse, dedup, top=0):
        results = []
        for scan, sc in per:
            z = rank(sc, cap, flips, fuse, top)
            results.append(ranked_result(scan, sc["centres"][:cap], sc["radius"][:cap], z, dedup))
        r = score_cohort(results, bootstrap=0)["all"]
        runs = float(np.median([stage2_runs(min(cap, len(sc["centres"])), flips, top) for _, sc in per]))
        return {"cap": cap, "flips": flips, "fuse_stage1": fuse, "dedup_factor": dedup, "tta_top": top,
                "network_runs_median": runs,
                "sens_at_15": r["sensitivity_at_k"]["15"]["sensitivity"],
                "sens_at_100": r["sensitivity_at_k"]["100"]["sensitivity"], "cpm": r["cpm"]}

    rows = []
    for cap in caps:
        for flips in FLIPS:
            for fuse, dedup in ((False, 0.0), (False, 1.0), (False, 1.5), (False, 2.0), (True, 1.5)):
                if fuse and not np.isfinite(per[0][1]["cnn_prob"]).any():
                    continue  # no CNN logit to fuse (a blobs-only stage 1)
                rows.append(row(cap, flips, fuse, dedup))
    tops = [int(t) for t in a.tta_tops.split(",") if t.strip()]
    rows += [row(max(caps), flips, False, 1.5, top) for flips in FLIPS[1:] for top in tops]
    secs = {"stage1": float(np.median([sc["seconds_stage1"] for _, sc in per])),
            "stage2_one_flip": float(np.median([sc["seconds_flip"] for _, sc in per])),
            "stage2_eight_flips": float(np.median([8 * sc["seconds_flip"] for _, sc in per]))}
    meta = {"model_id": det.package.manifest.model_id, "cohort": a.cohort, "seeds": [seeds[0], seeds[-1]],
            "nodules": int(sum(len(sc.nodules) for sc, _ in per)), "backend": det.stage2_backend.name,
            "seconds_median_per_scan": secs,
            "command": "python -m noduleflow.trainer.evaluate.stage2_tuning "
                       + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage2_tuning.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Stage-2 settings, {a.cohort} phantoms {seeds[0]}-{seeds[-1]} ({len(seeds)} scans, "
             f"{meta['nodules']} nodules)", "", f"`{meta['command']}`; model `{meta['model_id']}` "
             f"({meta['backend']}); median seconds per scan: stage 1 {secs['stage1']:.2f}, stage 2 "
             f"{secs['stage2_one_flip']:.2f} (1 flip) / {secs['stage2_eight_flips']:.2f} (8 flips). "
             "Phantoms: a regression signal, not clinical evidence.", "",
             "| stage-1 cap | flips | flips for the best N (tta_top) | + stage-1 logit | one per lesion (x extent) | "
             "network runs/scan | sens@15 | sens@100 | CPM |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cap']} | {r['flips']} | {r['tta_top'] or 'all'} | {'yes' if r['fuse_stage1'] else 'no'} | "
                     f"{r['dedup_factor'] or 'off'} | {r['network_runs_median']:.0f} | {r['sens_at_15']:.3f} | "
                     f"{r['sens_at_100']:.3f} | {r['cpm']:.3f} |")
    (out / "stage2_tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
