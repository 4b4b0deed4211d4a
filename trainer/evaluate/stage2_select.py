"""Stage-2 weights compared on the tuning cohort, each package at its own settings.

    python -m noduleflow.trainer.evaluate.stage2_select --models PKG [PKG ...] --cohort tuning --cache DIR --out DIR

Each two-stage package runs as the engine runs it: `Detector.stage1` (cached per scan under
``--cache`` by the contract's stage-1 settings, so packages that share them share one run), then
`Detector.stage2_scorer` (the contract's flips and ``tta_top``), one candidate per lesion
(`engine.postprocess.lesion_order` with the contract's ``dedup_factor``), the best 100 per scan
kept. Reports sensitivity at 5-100 candidates per scan and the CPM of each package on the same
scans, and the seconds per scan of stage 2. This is where the shipped stage-2 checkpoint is
chosen; the held-out cohort only reports. Phantoms are a regression signal, not clinical evidence.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from .stage2_tuning import ranked_result, save_npz
from .strata import score_cohort

KS = ("5", "10", "15", "25", "50", "100")


def stage1_key(contract) -> str:
    """A short digest of stage 1 as the contract declares it (`engine.contract.Stage1Spec`; with a
    CNN generator, the whole contract, whose graph proposes the peaks)."""
    fields = {"stage1": dataclasses.asdict(contract.stage1)}
    if contract.stage1.uses_cnn:
        fields["contract"] = contract.to_dict()
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_stage1(det, scan, cache_dir=None):
    """(centres (n, 3) zyx, radius (n,)) of `Detector.stage1` on a `CohortScan`, cached by settings."""
    f = Path(cache_dir) / f"stage1-{stage1_key(det.contract)}" / f"{scan.seed}.npz" if cache_dir else None
    if f is not None and f.exists():
        with np.load(f) as z:
            return z["centres"], z["radius"]
    c = det.stage1(scan.pre)
    if f is not None:
        save_npz(f, centres=c.centres_zyx, radius=c.radius_mm)
    return c.centres_zyx, c.radius_mm


def evaluate(det, scans, cache_dir=None, progress: bool = True) -> dict:
    """One package on a list of `CohortScan`: its score_cohort "all" block plus stage-2 seconds."""
    from tqdm import tqdm

    results, secs = [], []
    for scan in tqdm(scans, desc=det.package.manifest.model_id, unit="scan", disable=not progress):
        centres, radius = cached_stage1(det, scan, cache_dir)
        t = time.perf_counter()
        z = det.stage2_scorer(scan.pre, centres)
        secs.append(time.perf_counter() - t)
        results.append(ranked_result(scan, centres, radius, z, det.contract.stage2.dedup_factor))
    r = score_cohort(results, bootstrap=0)["all"]
    return {"sensitivity_at_k": {k: r["sensitivity_at_k"][k]["sensitivity"] for k in KS}, "cpm": r["cpm"],
            "stage2_seconds_median": float(np.median(secs)) if secs else float("nan")}


def main(argv=None) -> int:
    from noduleflow.engine.detector import Detector
    from noduleflow.trainer.data.cohort import CohortCache, cohort_seeds

    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.evaluate.stage2_select", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, help="two-stage model packages (noduleflow export --stage2)")
    ap.add_argument("--cohort", default="tuning")
    ap.add_argument("--cache", help="folder caching each scan's stage-1 candidates (by stage-1 settings)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    seeds = cohort_seeds(a.cohort)
    cache = CohortCache()
    scans = [cache.get(s) for s in seeds]
    rows = []
    for m in a.models:
        det = Detector(m, stages="2")
        st1, st2 = det.contract.stage1, det.contract.stage2
        rows.append({"model": str(m), "model_id": det.package.manifest.model_id,
                     "settings": f"{st1.generator} {st1.max_candidates} + subsolid {st1.subsolid_candidates}"
                                 + (f" + pleural {st1.wall_candidates}" if st1.wall_candidates else "")
                                 + f", {st2.tta_flips} flips for the best {st2.tta_top or 'all'}"
                                 + f", dedup {st2.dedup_factor}",
                     **evaluate(det, scans, a.cache)})
    n_nod = sum(len(s.nodules) for s in scans)
    cmd = "python -m noduleflow.trainer.evaluate.stage2_select " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage2_select.json").write_text(json.dumps({"cohort": a.cohort, "seeds": [seeds[0], seeds[-1]],
                                                        "nodules": n_nod, "command": cmd, "rows": rows}, indent=1))
    lines = [f"# Stage-2 weights, {a.cohort} phantoms {seeds[0]}-{seeds[-1]} ({len(seeds)} scans, {n_nod} nodules)",
             "", f"`{cmd}`. Each package at its own settings, as the engine runs it. Phantoms: a regression signal, "
             "not clinical evidence.", "",
             "| package | model id | settings | " + " | ".join(f"sens@{k}" for k in KS) + " | CPM | stage 2 s/scan |",
             "|---|---|---|" + "---:|" * (len(KS) + 2)]
    for r in rows:
        lines.append(f"| {Path(r['model']).name} | {r['model_id']} | {r['settings']} | "
                     + " | ".join(f"{r['sensitivity_at_k'][k]:.3f}" for k in KS)
                     + f" | {r['cpm']:.3f} | {r['stage2_seconds_median']:.2f} |")
    (out / "stage2_select.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
