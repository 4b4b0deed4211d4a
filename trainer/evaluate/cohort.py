"""Detection accuracy on a cached phantom cohort, overall and per stratum.

    python -m noduleflow.trainer.evaluate.cohort --cohort heldout [--model PKG] --out DIR
    noduleflow bench accuracy --cohort heldout [--model PKG] [--out DIR]   (the same run)

The cohort's scans come from `trainer.data.cohort.CohortCache` (synthesised and preprocessed once, then
read back). The detector runs its own stages on them: `Detector.find`, what `Detector.detect` runs
after its (deterministic) preprocessing, which the cache has already done with the same
`PreprocessSpec` (stage 1 + stage 2 for a two-stage package, `--stages 1` for the CNN path alone).
Writes ``accuracy.json`` (every figure, FROC points), ``candidates.json`` (per-scan candidates),
``accuracy.md`` (the table, the calibration error and reliability table), ``froc.png`` and
``calibration.png``.

Cohorts (seeds) are defined once in `trainer.data.cohort.COHORTS`; held-out figures are for reporting,
never for choosing a setting. Phantoms are a regression signal, not clinical evidence.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .calibration import expected_calibration_error
from .froc import DEFAULT_EXCLUDED_DIAMETER_MM
from .plots import plot_reliability, plot_strata_froc
from .stage1_recall import cnn_list
from .strata import KS, format_markdown, scan_result, score_cohort


def detect_cached(det, scan, keep: int = 100, lists_root=None, n: int = 0):
    """Run ``det``'s stages on a `CohortScan` -> (xyz (n, 3) world mm, prob (n,)): the first ``keep``
    of the detector's clustered list with top_k=``n`` (the list with top_k=keep, as clustering is
    greedy in rank order; `stage1_recall.cnn_list`, cached under ``lists_root``); n=0: keep."""
    c, p, _, _ = cnn_list(det, scan, max(n, keep), lists_root)
    return scan.pre.volume.voxel_to_world(c[:keep]).reshape(-1, 3), p[:keep]


def detect_package(det, scan, keep: int = 100):
    """``det``'s own pipeline after preprocessing (`Detector.find`: stage 1 + stage 2 for two-stage
    packages) on a `CohortScan` -> (xyz (n, 3) world mm, prob (n,), best first, at most ``keep``)."""
    saved = det.config
    det.config = saved.replace(top_k=keep)
    try:
        found, _ = det.find(scan.pre)
    finally:
        det.config = saved
    return scan.pre.volume.voxel_to_world(found.centres_zyx).reshape(-1, 3), found.prob


def candidate_labels(r) -> np.ndarray:
    """Per candidate of a `ScanResult`: 1 within some nodule's radius, 0 outside every nodule and
    excluded finding, -1 on an excluded finding only (left out of calibration figures). As the
    LUNA16 script (`froc`), a finding without a size (diameter < 0, LUNA16's -1) counts as 10 mm."""
    xyz = np.asarray(r.xyz, float).reshape(-1, 3)
    lab = np.zeros(len(xyz), np.int8)
    for f, v in ((np.asarray(r.excluded, float).reshape(-1, 4), -1), (np.asarray(r.nodules, float).reshape(-1, 4), 1)):
        if len(f) and len(xyz):
            diam = np.where(f[:, 3] < 0, DEFAULT_EXCLUDED_DIAMETER_MM, f[:, 3])
            d = np.linalg.norm(xyz[:, None, :] - f[None, :, :3], axis=-1)
            lab[(d < diam[None, :] / 2).any(1)] = v
    return lab


def false_candidates(results, thresholds=(0.5, 0.9)) -> dict:
    """False candidates (`candidate_labels` 0: on no nodule and no excluded finding; a second hit on
    a nodule is not false) at or above each probability threshold, among each scan's candidates as
    given (the report's top 100): {"0.5": {"per_scan": mean over scans, "total", "max_scan",
    "scans_with_any"}, ...}."""
    out = {}
    for t in thresholds:
        n = np.array([int(((candidate_labels(r) == 0) & (np.asarray(r.prob, float) >= t)).sum()) for r in results])
        out[f"{t:g}"] = {"per_scan": float(n.mean()) if len(n) else float("nan"), "total": int(n.sum()),
                         "max_scan": int(n.max()) if len(n) else 0, "scans_with_any": int((n > 0).sum())}
    return out


def calibration(results, ks=(15, 100), bins: int = 10) -> dict:
    """Expected calibration error of the candidates' probabilities against "is a nodule" over each
    scan's top K, and the reliability table (top 100)."""
    out = {}
    for k in ks:
        p = np.concatenate([np.asarray(r.prob, float)[:k] for r in results])
        y = np.concatenate([candidate_labels(r)[:k] for r in results])
        keep = y >= 0
        out[f"ece_top{k}"] = expected_calibration_error(p[keep], y[keep], bins)
        out[f"candidates_top{k}"] = int(keep.sum())
    idx = np.minimum((p[keep] * bins).astype(int), bins - 1)
    out["reliability_top100"] = [{"bin": [b / bins, (b + 1) / bins], "n": int((idx == b).sum()),
                                  "mean_prob": float(p[keep][idx == b].mean()) if (idx == b).any() else None,
                                  "hit_rate": float(y[keep][idx == b].mean()) if (idx == b).any() else None}
                                 for b in range(bins)]
    return out


def run_cohort(detect, seeds, cache, progress: bool = True):
    """``detect(scan) -> (xyz, prob)`` over the cohort -> (list of ScanResult, seconds per scan)."""
    from tqdm import tqdm

    results, times = [], []
    for s in tqdm(list(seeds), desc="scans", unit="scan", disable=not progress):
        scan = cache.get(s)
        t = time.perf_counter()
        xyz, prob = detect(scan)[:2]
        times.append(time.perf_counter() - t)
        results.append(scan_result(scan, xyz, prob))
    return results, times


def compact(res: dict, n_points: int = 100) -> dict:
    """The figures with each FROC curve sampled at ``n_points`` log-spaced FP rates (1/64 to the
    curve's end; the curve is a step function, so this keeps its shape) and floats rounded to 5
    digits: the full curves of 14 strata take megabytes."""
    def rnd(v):
        if isinstance(v, float):
            return round(v, 5)
        if isinstance(v, dict):
            return {k: rnd(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [rnd(x) for x in v]
        return v

    out = {}
    for name, e in res.items():
        e = dict(e)
        if "froc" in e and len(e["froc"]["fps"]) > n_points:
            fps, sens = np.asarray(e["froc"]["fps"]), np.asarray(e["froc"]["sensitivity"])
            grid = np.geomspace(1 / 64, max(float(fps[-1]), 1 / 32), n_points)
            e["froc"] = {"fps": grid.tolist(), "sensitivity": np.interp(grid, fps, sens).tolist(),
                         "sampled": f"{n_points} log-spaced FP rates"}
        out[name] = rnd(e)
    return out


def write_report(res: dict, meta: dict, out: Path, title: str) -> None:
    """``accuracy.json`` (``meta`` and the `compact` figures), ``accuracy.md`` (the table and,
    with ``meta["calibration"]``, the calibration), ``froc.png`` and ``calibration.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps({"meta": meta, "strata": compact(res)}, indent=1))
    md = [f"# {title}", "", f"Model `{meta['model_id']}`; {meta['data']}; {meta['scans']} scans, "
          f"{res['all']['nodules']} nodules; command: `{meta['command']}`.", "",
          "Sensitivity at K candidates/scan (a candidate within the nodule's radius among the scan's K most "
          "probable) and LUNA16 CPM (mean sensitivity at 1/8-8 FPs/scan, top 100 per scan); 95 % intervals "
          f"by bootstrap over scans ({meta['bootstrap']} resamples). Within a stratum, hits on the other "
          "nodules are ignored. Synthetic phantoms: a regression signal, not clinical evidence.", "",
          format_markdown(res, KS), ""]
    cal = meta.get("calibration")
    if cal:
        md += ["## Calibration", "", "Expected calibration error (10 equal-width bins) of the candidates' "
               "probabilities against \"lies within a nodule's radius\" (candidates on an excluded finding "
               f"left out): top 15 per scan {cal['ece_top15']:.3f} ({cal['candidates_top15']} candidates), "
               f"top 100 per scan {cal['ece_top100']:.3f} ({cal['candidates_top100']}). Reliability (top 100): "
               "`calibration.png`.", "", "| probability | candidates | mean probability | nodule rate |",
               "|---|---:|---:|---:|"]
        for b in cal["reliability_top100"]:
            if b["n"]:
                md.append(f"| {b['bin'][0]:.1f}-{b['bin'][1]:.1f} | {b['n']} | {b['mean_prob']:.3f} | "
                          f"{b['hit_rate']:.3f} |")
        md.append("")
    (out / "accuracy.md").write_text("\n".join(md))
    plot_strata_froc(res, out / "froc.png", title)
    if cal:
        plot_reliability(cal, out / "calibration.png", title)


def detect_cohort(det, cohort: str, keep: int = 100, cache=None, lists_cache=None):
    """``det`` on the cached ``cohort`` (a name of `trainer.data.cohort.COHORTS` or FIRST-LAST seeds;
    ``cache``: a `CohortCache` or its root, default ``$NODULEFLOW_COHORT_CACHE``; the scans are
    preprocessed with ``det``'s own `PreprocessSpec`) -> (seeds, list
    of ScanResult, seconds per scan): `detect_package` for a two-stage detector, else `detect_cached`."""
    from noduleflow.trainer.data.cohort import CohortCache, cohort_seeds

    seeds = cohort_seeds(cohort)
    # the scans preprocessed as the package's contract says (its lung mask settings), not the defaults
    cohort_cache = cache if isinstance(cache, CohortCache) else CohortCache(cache, spec=det.spec)
    if det.two_stage:
        results, times = run_cohort(lambda s: detect_package(det, s, keep), seeds, cohort_cache)
    else:
        results, times = run_cohort(lambda s: detect_cached(det, s, keep, lists_cache), seeds, cohort_cache)
    return seeds, results, times


def candidate_records(seeds, results) -> list[dict]:
    """``candidates.json``'s rows: per scan its uid, seed, candidates (world mm, 0.01 mm) and
    probabilities (5 digits)."""
    return [{"uid": r.uid, "seed": s, "xyz": np.round(r.xyz, 2).tolist(), "prob": np.round(r.prob, 5).tolist()}
            for s, r in zip(seeds, results)]


def run(cohort: str, out: Path, model=None, backend: str = "auto", keep: int = 100, bootstrap: int = 1000,
        cache=None, lists_cache=None, stages: str = "auto", component_min_prob: float | None = None,
        command: str = "") -> dict:
    """Detect on the cached ``cohort`` (a name of `trainer.data.cohort.COHORTS` or FIRST-LAST seeds)
    with the package ``model`` (default: the shipped one), score it overall and per stratum, and
    write the report into ``out`` (`write_report`, ``candidates.json``); the figures by stratum."""
    from noduleflow.engine.detector import Detector

    settings = {} if component_min_prob is None else {"component_min_prob": component_min_prob}
    det = Detector(model, backend=backend, stages=stages, **settings)
    seeds, results, times = detect_cohort(det, cohort, keep, cache, lists_cache)
    res = score_cohort(results, bootstrap=bootstrap)
    contract = det.contract
    meta = {"model_id": det.package.manifest.model_id, "stages": 2 if det.two_stage else 1,
            "stage1": dataclasses.asdict(contract.stage1) if det.two_stage else None,
            "stage2": dataclasses.asdict(contract.stage2) if det.two_stage else None,
            "calibration": calibration(results),
            "backend": det.backend_name, "mode": det.config.mode, "provenance": det.provenance(),
            "config": {k: v for k, v in vars(det.config).items() if k != "rules"},
            "data": f"phantom seeds {seeds[0]}-{seeds[-1]} ({cohort})", "scans": len(seeds), "keep": keep,
            "bootstrap": bootstrap, "detect_seconds_median": float(np.median(times)),
            "command": command, "python": platform.python_version()}
    out = Path(out)
    write_report(res, meta, out, f"{meta['model_id']} on {meta['data']}")
    (out / "candidates.json").write_text(json.dumps(candidate_records(seeds, results)))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.evaluate.cohort", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", default="heldout", help="cohort name (trainer.data.cohort.COHORTS) or FIRST-LAST seeds")
    ap.add_argument("--model", help="model package (default: the shipped one)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--keep", type=int, default=100, help="candidates kept per scan (100, the LUNA16 limit)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--cache", help="cohort cache root (default: $NODULEFLOW_COHORT_CACHE)")
    ap.add_argument("--lists-cache", help="folder caching each scan's stage-1 lists (stage1_recall)")
    ap.add_argument("--stages", default="auto", choices=("auto", "1", "2"),
                    help="the detector's stages (auto: both for a two-stage package)")
    ap.add_argument("--component-min-prob", type=float,
                    help="stage 1's component threshold (default: the detector's, DetectorConfig)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cmd = "python -m noduleflow.trainer.evaluate.cohort " + " ".join(argv if argv is not None else sys.argv[1:])
    run(a.cohort, Path(a.out), a.model, a.backend, a.keep, a.bootstrap, a.cache, a.lists_cache, a.stages,
        a.component_min_prob, command=cmd)
    print((Path(a.out) / "accuracy.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
