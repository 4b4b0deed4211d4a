"""Detection accuracy on a cached phantom cohort, overall and per stratum.

    python -m noduleflow.bench.accuracy_cohort --cohort heldout [--model PKG] --out DIR

The cohort's scans come from `trainer.data.cohort.CohortCache` (synthesised and preprocessed once, then
read back). The detector runs its own stages on them: `Detector.find`, what `Detector.detect` runs
after its (deterministic) preprocessing, which the cache has already done with the same
`PreprocessSpec` (stage 1 + stage 2 for a two-stage package, `--stages 1` for the CNN path alone).
Writes ``accuracy.json`` (every figure, FROC points, per-scan candidates), ``accuracy.md`` (the
table, the calibration error and reliability table), ``froc.png`` and ``calibration.png``.

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


def detect_cached(det, scan, keep: int = 100, lists_root=None, n: int = 0):
    """Run ``det``'s stages on a `CohortScan` -> (xyz (n, 3) world mm, prob (n,)): the first ``keep``
    of the detector's clustered list with top_k=``n`` (the list with top_k=keep, as clustering is
    greedy in rank order; `bench.stage1_recall.cnn_list`, cached under ``lists_root``); n=0: keep."""
    from .stage1_recall import cnn_list

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
    c = np.array([f[0] for f in found], np.float64).reshape(-1, 3)
    return scan.pre.volume.voxel_to_world(c).reshape(-1, 3), np.array([f[1] for f in found], np.float64)


def candidate_labels(r) -> np.ndarray:
    """Per candidate of a `ScanResult`: 1 within some nodule's radius, 0 outside every nodule and
    excluded finding, -1 on an excluded finding only (left out of calibration figures)."""
    xyz = np.asarray(r.xyz, float).reshape(-1, 3)
    lab = np.zeros(len(xyz), np.int8)
    for f, v in ((np.asarray(r.excluded, float).reshape(-1, 4), -1), (np.asarray(r.nodules, float).reshape(-1, 4), 1)):
        if len(f) and len(xyz):
            d = np.linalg.norm(xyz[:, None, :] - f[None, :, :3], axis=-1)
            lab[(d < f[None, :, 3] / 2).any(1)] = v
    return lab


def calibration(results, ks=(15, 100), bins: int = 10) -> dict:
    """Expected calibration error of the candidates' probabilities against "is a nodule" over each
    scan's top K, and the reliability table (top 100)."""
    from noduleflow.trainer.stage2_calibrate import expected_calibration_error

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


def scan_result(scan, xyz, prob):
    from .strata import ScanResult

    return ScanResult(scan.series_uid, xyz, prob, scan.xyzd(), tuple(n.kind for n in scan.nodules),
                      tuple(n.location for n in scan.nodules), scan.xyzd(excluded=True))


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
    from .plots import _save
    from .strata import KS, format_markdown

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in ("all", "diameter 3-6 mm", "kind ground_glass", "location juxta_vascular"):
        e = res.get(name)
        if e and e["nodules"]:
            ax.plot(e["froc"]["fps"], e["froc"]["sensitivity"], lw=1.6,
                    label=f"{name} ({e['nodules']}; CPM {e['cpm']:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlim(0.125, 8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    _save(fig, out / "froc.png")
    if cal:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        rows = [b for b in cal["reliability_top100"] if b["n"]]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
        ax.plot([b["mean_prob"] for b in rows], [b["hit_rate"] for b in rows], "o-", lw=1.6,
                label=f"top 100/scan (ECE {cal['ece_top100']:.3f})")
        for b in rows:
            ax.annotate(str(b["n"]), (b["mean_prob"], b["hit_rate"]), fontsize=6, xytext=(3, -8),
                        textcoords="offset points")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability (bin mean)")
        ax.set_ylabel("share that are nodules")
        ax.set_title(f"{title}: reliability", fontsize=8)
        ax.legend(loc="upper left", fontsize=7)
        _save(fig, out / "calibration.png")


def main(argv=None) -> int:
    from noduleflow.trainer.data.cohort import CohortCache, cohort_seeds
    from .strata import score_cohort

    ap = argparse.ArgumentParser(prog="python -m noduleflow.bench.accuracy_cohort", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", default="heldout", help="cohort name (trainer.data.cohort.COHORTS) or FIRST-LAST seeds")
    ap.add_argument("--model", help="model package (default: the shipped one)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--keep", type=int, default=100, help="candidates kept per scan (100, the LUNA16 limit)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--cache", help="cohort cache root (default: $NODULEFLOW_COHORT_CACHE)")
    ap.add_argument("--lists-cache", help="folder caching each scan's stage-1 lists (bench.stage1_recall)")
    ap.add_argument("--stages", default="auto", choices=("auto", "1", "2"),
                    help="the detector's stages (auto: both for a two-stage package)")
    ap.add_argument("--component-min-prob", type=float,
                    help="stage 1's component threshold (default: the detector's, DetectorConfig)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    from noduleflow.engine.detector import Detector

    seeds = cohort_seeds(a.cohort)
    cache = CohortCache(a.cache)
    settings = {} if a.component_min_prob is None else {"component_min_prob": a.component_min_prob}
    det = Detector(a.model, backend=a.backend, stages=a.stages, **settings)
    if det.two_stage:
        results, times = run_cohort(lambda s: detect_package(det, s, a.keep), seeds, cache)
    else:
        results, times = run_cohort(lambda s: detect_cached(det, s, a.keep, a.lists_cache), seeds, cache)
    res = score_cohort(results, bootstrap=a.bootstrap)
    calib = calibration(results)
    st2 = det.contract.stage2 if det.two_stage else None
    meta = {"model_id": det.package.manifest.model_id, "stages": 2 if det.two_stage else 1,
            "stage2": dataclasses.asdict(st2) if st2 else None, "calibration": calib,
            "backend": det.backend_name, "mode": det.config.mode,
            "config": {k: v for k, v in vars(det.config).items() if k != "rules"},
            "data": f"phantom seeds {seeds[0]}-{seeds[-1]} ({a.cohort})", "scans": len(seeds), "keep": a.keep,
            "bootstrap": a.bootstrap, "detect_seconds_median": float(np.median(times)),
            "command": "python -m noduleflow.bench.accuracy_cohort " + " ".join(argv if argv is not None
                                                                                else sys.argv[1:]),
            "python": platform.python_version()}
    out = Path(a.out)
    write_report(res, meta, out, f"{meta['model_id']} on {meta['data']}")
    per_scan = [{"uid": r.uid, "seed": s, "xyz": np.round(r.xyz, 2).tolist(), "prob": np.round(r.prob, 5).tolist()}
                for s, r in zip(seeds, results)]
    (out / "candidates.json").write_text(json.dumps(per_scan))
    print((out / "accuracy.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
