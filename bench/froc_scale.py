"""Evaluator check at LUNA16 scale: a synthetic submission scored on the real annotation files.

    python -m noduleflow.bench.froc_scale [--luna16 ../shared/luna16] [--out bench/results]

The submission is made up (each real nodule found with probability 0.8 at a random
offset within 45 % of its diameter, plus 5-40 random false positives per scan): this
measures the evaluator (its speed at full scale, its curve), not any model.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from noduleflow.bench.froc import evaluate, read_candidates, read_findings, read_seriesuids, save_json, write_candidates_csv


def synthetic_submission(ann, uids, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for uid in uids:
        for x, y, z, d in ann.get(uid):
            if rng.uniform() < 0.8:
                off = rng.normal(size=3)
                off *= rng.uniform(0, 0.45 * d) / np.linalg.norm(off)
                rows.append((uid, x + off[0], y + off[1], z + off[2], rng.uniform(0.5, 1.0)))
        for _ in range(rng.integers(5, 40)):
            rows.append((uid, *rng.uniform(-200, 200, 3), rng.uniform(0, 0.9)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--luna16", default=str(Path(__file__).resolve().parents[2] / "shared" / "luna16"))
    ap.add_argument("--out", default="bench-froc-scale", help="output folder (default ./bench-froc-scale)")
    args = ap.parse_args(argv)
    src, out = Path(args.luna16), Path(args.out)
    ann = read_findings(src / "annotations.csv")
    exc = read_findings(src / "annotations_excluded.csv")
    uids = read_seriesuids(src / "seriesuids.csv")
    with tempfile.TemporaryDirectory() as tmp:
        sub = write_candidates_csv(Path(tmp) / "submission.csv", synthetic_submission(ann, uids))
        t0 = time.perf_counter()
        cands = read_candidates(sub)
        t1 = time.perf_counter()
        res = evaluate(ann, cands, exc, uids, bootstrap=1000)
        t2 = time.perf_counter()
    save_json(res, out / "froc_luna16_synthetic_submission.json")
    from noduleflow.bench.plots import plot_froc

    plot_froc({"synthetic submission": res}, out / "froc_luna16_synthetic_submission.png",
              title="Evaluator check: synthetic submission, real LUNA16 annotations")
    timing = {"read_candidates_s": t1 - t0, "evaluate_with_1000_bootstraps_s": t2 - t1,
              "n_candidates": res.n_candidates, "n_scans": res.n_scans, "n_nodules": res.n_nodules,
              "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
              "python": platform.python_version(), "numpy": np.__version__}
    (out / "froc_luna16_timing.json").write_text(json.dumps(timing, indent=2))
    print(json.dumps(timing, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
