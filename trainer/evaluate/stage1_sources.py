"""Stage-1 recall per stratum on evaluation sources: which lesions stage 1 proposes at all.

    python -m noduleflow.trainer.evaluate.stage1_sources --model PKG --source NAME=DIR... \\
        [--cohort heldout] [--ggo N] --out DIR

For each source (an evaluation-source folder, `trainer.evaluate.sources`; or a cached phantom
cohort), each scan is loaded and preprocessed as the package's contract says, and its stage 1
(`engine.stage1.stage1_candidates` with the package's `Stage1Spec`, or that spec with
``ggo_candidates`` replaced by ``--ggo``) proposes its candidates. A nodule is proposed when a
candidate lies within its radius (the LUNA16 rule). Reported per stratum (kind, location, diameter
band, juxta-pleural 10-30 mm) and cumulatively per pass: the first pass alone, then with the
subsolid, pleural and ground-glass passes, each at the cap the spec gives it. Stage 2 is not run:
a nodule stage 1 does not propose cannot be found, whatever stage 2 does. Synthetic and inserted
lesions: a regression signal, not clinical evidence.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from noduleflow.engine.fileio import atomic_write
from noduleflow.engine.io import load_volume
from noduleflow.engine.package import ModelPackage, default_package_path
from noduleflow.engine.preprocess import preprocess
from noduleflow.engine.stage1 import stage1_candidates

from ..data.cohort import CohortCache, cohort_seeds
from .sources import parse_source_arg, read_source

PASSES = ((1, "first pass"), (2, "+ subsolid"), (3, "+ pleural"), (4, "+ ground-glass"))
BANDS = ((3, 6), (6, 10), (10, 20), (20, 30))


def proposed_by(centres_zyx: np.ndarray, source: np.ndarray, nodules_zyxr: np.ndarray) -> np.ndarray:
    """int (m,): for each nodule the first pass (1-4, `engine.stage1.Stage1Candidates.source`; a CNN
    peak counts as the first pass) with a candidate within its radius, 0 for none."""
    out = np.zeros(len(nodules_zyxr), int)
    for j, (z, y, x, r) in enumerate(nodules_zyxr):
        d = np.linalg.norm(centres_zyx - (z, y, x), axis=1) if len(centres_zyx) else np.zeros(0)
        hit = np.flatnonzero(d <= r)
        if len(hit):
            out[j] = max(1, int(source[hit].min()))
    return out


def strata_rows(records: list[dict]) -> list[dict]:
    """Per stratum: nodules and the cumulative recall after each pass (records: one per nodule
    with ``kind``, ``location``, ``diameter_mm`` and ``pass`` (0: not proposed))."""
    def row(name, sel):
        p = np.array([r["pass"] for r in sel], int)
        out = {"stratum": name, "nodules": len(sel)}
        for k, label in PASSES:
            out[label] = round(float(np.mean((p > 0) & (p <= k))), 3) if len(p) else None
        return out

    rows = [row("all", records)]
    for key in ("kind", "location"):
        for v in sorted({r[key] for r in records}):
            rows.append(row(f"{key} {v}", [r for r in records if r[key] == v]))
    for lo, hi in BANDS:
        rows.append(row(f"diameter {lo}-{hi} mm", [r for r in records if lo <= r["diameter_mm"] < hi]))
    rows.append(row("juxta_pleural 10-30 mm", [r for r in records if r["location"] == "juxta_pleural"
                                               and 10 <= r["diameter_mm"] <= 30]))
    return [r for r in rows if r["nodules"]]


def _source_scans(name, folder, spec):
    src = read_source(name, folder)
    for s in src.scans:
        vol = load_volume(s.path, series_uid=None if s.path.is_file() else s.uid)
        yield s.uid, preprocess(vol, spec), s.nodules, s.kinds, s.locations


def _cohort_scans(cohort, spec):
    cache = CohortCache(spec=spec)
    for seed in cohort_seeds(cohort):
        scan = cache.get(seed)
        yield (str(seed), scan.pre, scan.xyzd(), tuple(n.kind for n in scan.nodules),
               tuple(n.location for n in scan.nodules))


def evaluate(scans, stage1, progress_name: str = "") -> dict:
    """Stage 1 on each (uid, pre, nodules (m, 4) world mm, kinds, locations) -> figures."""
    from tqdm import tqdm  # an application dependency, not the engine's

    records, n_cand, seconds = [], [], []
    for uid, pre, nodules, kinds, locations in tqdm(scans, desc=progress_name, unit="scan"):
        t = time.perf_counter()
        cand = stage1_candidates(pre, stage1)
        seconds.append(time.perf_counter() - t)
        n_cand.append(len(cand))
        nod = np.asarray(nodules, float).reshape(-1, 4)
        zyxr = np.c_[pre.volume.world_to_voxel(nod[:, :3]).reshape(-1, 3), nod[:, 3] / 2.0] if len(nod) \
            else np.zeros((0, 4))
        for n, p, k, loc in zip(nod, proposed_by(cand.centres_zyx, cand.source, zyxr), kinds, locations):
            records.append({"uid": uid, "xyz_mm": [round(float(v), 2) for v in n[:3]],
                            "diameter_mm": round(float(n[3]), 2), "kind": k, "location": loc, "pass": int(p)})
    return {"scans": len(n_cand), "candidates_per_scan_median": float(np.median(n_cand)) if n_cand else 0.0,
            "stage1_seconds_median": round(float(np.median(seconds)), 3) if seconds else None,
            "strata": strata_rows(records), "nodules": records}


def markdown(report: dict) -> str:
    lines = [f"# Stage-1 recall per stratum: {report['model_id']}", "",
             f"Stage 1 `{json.dumps(report['stage1'])}`; command: `{report['command']}`.", "",
             "A nodule is proposed when a stage-1 candidate lies within its radius; cumulative over "
             "the passes in their order. Stage 2 not run. Synthetic and inserted lesions: a "
             "regression signal, not clinical evidence.", ""]
    for s in report["sources"]:
        lines += [f"## {s['name']} ({s['scans']} scans, median {s['candidates_per_scan_median']:.0f} candidates)", "",
                  "| stratum | nodules | " + " | ".join(label for _, label in PASSES) + " |",
                  "|---|---:|" + "---:|" * len(PASSES)]
        for r in s["strata"]:
            lines.append(f"| {r['stratum']} | {r['nodules']} | " +
                         " | ".join("" if r[label] is None else f"{r[label]:.3f}" for _, label in PASSES) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.evaluate.stage1_sources", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model package (default: the shipped one)")
    ap.add_argument("--source", action="append", default=[], metavar="NAME=DIR",
                    help="an evaluation-source folder (repeatable; reported in the order given)")
    ap.add_argument("--cohort", help="also a cached phantom cohort (heldout, tuning, FIRST-LAST), reported last")
    ap.add_argument("--ggo", type=int, default=None, metavar="N",
                    help="the package's stage 1 with N ground-glass candidates instead of its own setting")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if not a.source and not a.cohort:
        ap.error("give at least one --source or --cohort")
    pkg = ModelPackage.load(a.model or default_package_path())
    contract = pkg.contract
    if contract.stage1 is None:
        ap.error(f"{pkg.path} has no stage 1 (a one-stage package)")
    stage1 = contract.stage1 if a.ggo is None else replace(contract.stage1, ggo_candidates=a.ggo)
    report = {"model_id": pkg.manifest.model_id, "package": str(pkg.path), "stage1": stage1.__dict__,
              "command": "python -m noduleflow.trainer.evaluate.stage1_sources " + " ".join(sys.argv[1:] if argv is None
                                                                                       else argv),
              "machine": platform.processor() or platform.machine(), "sources": []}
    for text in a.source:
        name, folder = parse_source_arg(text)
        fig = evaluate(_source_scans(name, folder, contract.preprocess), stage1, name)
        report["sources"].append({"name": name, "folder": str(folder), **fig})
    if a.cohort:
        fig = evaluate(_cohort_scans(a.cohort, contract.preprocess), stage1, a.cohort)
        report["sources"].append({"name": f"phantom cohort {a.cohort}", **fig})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "stage1.json", json.dumps(report, indent=1))
    atomic_write(out / "stage1.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
