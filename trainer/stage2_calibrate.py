"""Calibrate a two-stage package's final probability on validation phantoms (Platt scaling).

    python -m noduleflow.trainer.stage2_calibrate --model PKG --out spec.json [--cohort validation]

The package's own stages run on each validation scan (`Detector.stage1`, then the stage-2 graph
averaged over the flips the contract asks for, uncalibrated); each stage-1 candidate is labelled
as the stage-2 training data are (`trainer.data.labels.label_candidates`: 1 within a nodule's
radius, 0 farther than radius + 3 mm from every finding, the ones between left out), and
``p = sigmoid(a * logit + b)`` is fitted by maximum likelihood (Newton's method). Writes the
package's stage settings (``{"stage1": ..., "stage2": ...}``, the contract's blocks) with stage 2's
``calibration_scale`` = a and ``calibration_bias`` = b, plus a ``_fit`` record (candidates,
positives, expected calibration error before and after on these scans), for ``noduleflow export
--stage2-spec``. The held-out cohort is never used here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from noduleflow.engine.detector import Detector
from noduleflow.engine.postprocess import sigmoid

from .data.cohort import CohortCache, cohort_seeds
from .data.labels import label_candidates
from .data.stage2 import SourceScans
from .evaluate.calibration import expected_calibration_error


def platt(logits: np.ndarray, labels: np.ndarray, iters: int = 100, ridge: float = 1e-6) -> tuple[float, float]:
    """Maximum-likelihood (a, b) of ``P(y=1) = sigmoid(a * logit + b)``: Newton's method with a
    backtracking line search (plain Newton overshoots from a poor start), from a = 0 and b = the
    base rate's log-odds."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    if len(z) < 2 or y.min() == y.max():
        raise ValueError(f"calibration needs both classes, got {int(y.sum())} positives of {len(y)}")
    X = np.c_[z, np.ones_like(z)]

    def nll(w):
        t = X @ w
        return float(np.sum(np.logaddexp(0.0, t) - y * t) + 0.5 * ridge * w @ w)

    w = np.array([0.0, np.log(y.mean() / (1 - y.mean()))])
    f = nll(w)
    for _ in range(iters):
        p = sigmoid(np.clip(X @ w, -60, 60))
        g = X.T @ (p - y) + ridge * w
        H = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(H, g)
        t = 1.0
        while nll(w - t * step) > f and t > 1e-8:
            t /= 2
        w = w - t * step
        f_new = nll(w)
        if abs(f - f_new) < 1e-12 * max(1.0, abs(f)):
            break
        f = f_new
    return float(w[0]), float(w[1])


def candidate_logits(det, scan, cand=None):
    """Stage-1 candidates (``cand``, else ``det.stage1``) of a `CohortScan` (or a
    `trainer.data.stage2.SourceTrainingScan`) and their uncalibrated stage-2 logits, with labels."""
    pre = scan.pre
    cand = det.stage1(pre) if cand is None else cand
    logits = det.stage2_scorer(pre, cand.centres_zyx)
    vol = pre.volume

    def zyxr(xyzd):
        if len(xyzd) == 0:
            return np.zeros((0, 4))
        return np.c_[vol.world_to_voxel(xyzd[:, :3]).reshape(-1, 3), xyzd[:, 3] / 2.0]

    lab = label_candidates(cand.centres_zyx, zyxr(scan.xyzd()), zyxr(scan.xyzd(excluded=True)))
    return logits, lab


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.stage2_calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a two-stage model package (noduleflow export --stage2)")
    ap.add_argument("--cohort", default="validation", help="calibration scans (default: validation, 2000-2005)")
    ap.add_argument("--source", action="append", default=[], metavar="DIR",
                    help="also the scans of this training-source folder (repeatable; only the lung its "
                         "source.json names): real anatomy beside the phantoms")
    ap.add_argument("--out", required=True, help="the stage-2 spec JSON to write")
    a = ap.parse_args(argv)
    if a.cohort in ("heldout", "tuning"):
        raise SystemExit(f"calibrate on validation phantoms, not on the {a.cohort} cohort")
    det = Detector(a.model, stages="2")
    spec = det.contract.stage2  # its flips; the stage-2 scorer gives uncalibrated logits
    seeds = cohort_seeds(a.cohort)
    cache = CohortCache()
    zs, ys = [], []
    for s in tqdm(seeds, desc="calibration scans", unit="scan"):
        z, y = candidate_logits(det, cache.get(s))
        zs.append(z[y >= 0])
        ys.append(y[y >= 0])
    n_phantom = sum(len(y) for y in ys)
    for folder in a.source:
        scans = SourceScans(folder, det.contract.preprocess)
        for i in tqdm(range(len(scans)), desc=Path(folder).name, unit="scan"):
            scan = scans.get(i)
            cand = det.stage1(scan.pre)
            z, y = candidate_logits(det, scan, cand)
            y[~scan.inside(scan.pre.volume.voxel_to_world(cand.centres_zyx).reshape(-1, 3))] = -1
            zs.append(z[y >= 0])
            ys.append(y[y >= 0])
    z, y = np.concatenate(zs), np.concatenate(ys)
    scale, bias = platt(z, y)
    raw = sigmoid(z)
    cal = sigmoid(scale * z + bias)
    out = {"preprocess": det.contract.preprocess.to_dict(), "stage1": dataclasses.asdict(det.contract.stage1),
           "stage2": {**dataclasses.asdict(spec), "calibration_scale": round(scale, 6),
                      "calibration_bias": round(bias, 6)},
           "_fit": {"package": det.package.manifest.model_id, "cohort": a.cohort, "seeds": [seeds[0], seeds[-1]],
                    "sources": list(a.source), "candidates_phantoms": int(n_phantom),
                    "candidates": int(len(y)), "positives": int(y.sum()),
                    "ece_uncalibrated": expected_calibration_error(raw, y),
                    "ece_calibrated": expected_calibration_error(cal, y),
                    "command": "python -m noduleflow.trainer.stage2_calibrate " + " ".join(
                        argv if argv is not None else sys.argv[1:])}}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
