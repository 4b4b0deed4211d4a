"""LUNA16 detection scoring: FROC, CPM with bootstrap intervals, sensitivity at top-K.

Follows the official LUNA16 evaluation script (noduleCADEvaluationLUNA16.py, Setio et
al. 2017) rule for rule:

- per scan, at most the 100 most probable candidates are kept (ties: first in file order);
- a candidate hits a finding when its squared distance to the centre is *below* the
  squared radius (strict, as the script); findings with a negative diameter (the
  excluded list has some, diameter -1) get a 10 mm diameter, as the script does;
- a candidate that hits an included nodule is never a false positive; a nodule's
  score is its most probable hit; its other hits are neither TP nor FP
  ("ignored_duplicates", counted per nodule as the script does); a candidate that
  hits one nodule may also be the hit of another;
- a candidate that hits only excluded findings is ignored ("ignored_excluded");
- every scan in ``seriesuids`` counts in the FP-per-scan denominator, with or without
  candidates; its nodules without a hit are misses;
- FROC: sensitivity = TP / nodules against mean FPs per scan, one point per distinct
  probability threshold (as sklearn's roc_curve gives), linearly interpolated at
  1/8, 1/4, 1/2, 1, 2, 4, 8 FPs per scan (exactly at those points; the script reads
  the nearest point of a 10001-point grid, which differs by < 1e-4 FP/scan);
  CPM = the mean of those seven sensitivities;
- 95 % intervals by bootstrap over scans (resampled with replacement, seeded).

Plus the seed paper's figure: sensitivity using only the top-K candidates of each
scan, and the mean number of candidates per scan.

`noduleflow bench froc` scores a submission CSV with it (written by
`engine.results.write_candidates_csv`); model selection scores cohorts with it (`strata`).
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError

FP_POINTS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_CANDIDATES_PER_SCAN = 100
DEFAULT_EXCLUDED_DIAMETER_MM = 10.0


@dataclass(frozen=True)
class Findings:
    """Annotations (or excluded findings) grouped by series: uid -> (n, 4) [x, y, z, diameter]."""

    by_uid: dict

    def get(self, uid: str) -> np.ndarray:
        return self.by_uid.get(uid, np.zeros((0, 4)))

    @property
    def count(self) -> int:
        return int(sum(len(v) for v in self.by_uid.values()))


@dataclass(frozen=True)
class Candidates:
    """Submitted candidates grouped by series: uid -> ((n, 3) xyz, (n,) prob), file order kept."""

    by_uid: dict

    @property
    def count(self) -> int:
        return int(sum(len(p) for _, p in self.by_uid.values()))


@dataclass(frozen=True)
class FrocResult:
    cpm: float
    sensitivity_at_fp: dict
    cpm_ci95: tuple
    sensitivity_at_fp_ci95: dict
    true_positives: int
    false_positives: int
    false_negatives: int
    ignored_excluded: int
    ignored_duplicates: int
    sensitivity: float
    candidates_per_scan: float
    sensitivity_at_top_k: float
    candidates_per_scan_top_k: float
    top_k: int
    n_scans: int
    n_nodules: int
    n_candidates: int
    bootstrap: int
    froc_fps: list = field(repr=False, default_factory=list)
    froc_sensitivity: list = field(repr=False, default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _read_rows(path, min_cols: int):
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no such file: {path}")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() == "seriesuid":
        rows = rows[1:]
    for i, r in enumerate(rows):
        if len(r) < min_cols:
            raise ConfigError(f"{path.name} line {i + 2}: expected {min_cols} columns, got {len(r)}: {r}")
    return path, rows


def _read_groups(path) -> dict[str, np.ndarray]:
    """seriesuid, then four numbers per row -> {uid: (n, 4) float64}."""
    path, rows = _read_rows(path, 5)
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        try:
            groups[r[0].strip()].append([float(r[1]), float(r[2]), float(r[3]), float(r[4])])
        except ValueError as exc:
            raise ConfigError(f"{path.name} line {i + 2}: not a number in {r}") from exc
    return {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()}


def read_findings(path) -> Findings:
    """Read a LUNA16 annotations CSV: seriesuid,coordX,coordY,coordZ,diameter_mm."""
    return Findings(_read_groups(path))


def read_candidates(path) -> Candidates:
    """Read a LUNA16 submission CSV: seriesuid,coordX,coordY,coordZ,probability."""
    return Candidates({k: (v[:, :3], v[:, 3]) for k, v in _read_groups(path).items()})


def read_seriesuids(path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no such file: {path}")
    with open(path, newline="") as f:
        uids = [r[0].strip() for r in csv.reader(f) if r and r[0].strip()]
    return [u for u in uids if u.lower() != "seriesuid"]


def _hits(xyz: np.ndarray, findings: np.ndarray) -> np.ndarray:
    """(n_cand, n_find) bool: squared distance below the squared radius (strict)."""
    if len(xyz) == 0 or len(findings) == 0:
        return np.zeros((len(xyz), len(findings)), dtype=bool)
    diam = np.where(findings[:, 3] < 0, DEFAULT_EXCLUDED_DIAMETER_MM, findings[:, 3])
    d2 = ((xyz[:, None, :] - findings[None, :, :3]) ** 2).sum(-1)
    return d2 < (diam / 2.0) ** 2


def _top(xyz, prob, k):
    """The k most probable candidates, ties broken by file order (stable)."""
    if len(prob) <= k:
        return xyz, prob
    order = np.argsort(-prob, kind="stable")[:k]
    return xyz[order], prob[order]


def _curve(prob, is_tp, weights_tp, weights_fp, n_scans, n_nodules):
    """FROC points (fps, sens) at every distinct threshold, from events sorted by -prob."""
    ctp = np.cumsum(weights_tp, axis=-1)
    cfp = np.cumsum(weights_fp, axis=-1)
    if prob.size:
        last_of_tie = np.r_[np.flatnonzero(np.diff(prob) != 0), prob.size - 1]
        ctp, cfp = ctp[..., last_of_tie], cfp[..., last_of_tie]
    zeros = np.zeros(ctp.shape[:-1] + (1,))
    fps = np.concatenate([zeros, cfp], axis=-1) / n_scans
    nn = np.maximum(np.asarray(n_nodules, dtype=np.float64), 1e-12)
    sens = np.concatenate([zeros, ctp], axis=-1) / (nn[..., None] if nn.ndim else nn)
    return fps, sens


def evaluate(annotations: Findings, candidates: Candidates, excluded: Findings | None = None,
             seriesuids: list[str] | None = None, top_k: int = 15, bootstrap: int = 1000,
             seed: int = 0) -> FrocResult:
    """Score a submission with the LUNA16 protocol (module docstring). Pure numpy."""
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if bootstrap < 0:
        raise ConfigError(f"bootstrap must be >= 0, got {bootstrap}")
    excluded = excluded or Findings({})
    if seriesuids is None:
        seriesuids = sorted(set(annotations.by_uid) | set(candidates.by_uid))
    if not seriesuids:
        raise ConfigError("no scans to evaluate: seriesuids, annotations and candidates are all empty")
    n_scans = len(seriesuids)
    ev_prob, ev_tp, ev_scan = [], [], []
    nodules_per_scan = np.zeros(n_scans)
    tp = fp = fn = ign_exc = ign_dup = 0
    topk_hits = 0
    n_cands_topk = 0
    for s, uid in enumerate(seriesuids):
        nods = annotations.get(uid)
        nodules_per_scan[s] = len(nods)
        xyz, prob = candidates.by_uid.get(uid, (np.zeros((0, 3)), np.zeros(0)))
        xyz, prob = _top(xyz, prob, MAX_CANDIDATES_PER_SCAN)
        h_inc = _hits(xyz, nods)
        h_exc = _hits(xyz, excluded.get(uid))
        matched = h_inc.any(1)
        for j in range(len(nods)):
            m = np.flatnonzero(h_inc[:, j])
            if m.size:
                tp += 1
                ign_dup += m.size - 1
                ev_prob.append(prob[m].max())
                ev_tp.append(True)
                ev_scan.append(s)
            else:
                fn += 1
        ignored = ~matched & h_exc.any(1)
        ign_exc += int(ignored.sum())
        is_fp = ~matched & ~ignored
        fp += int(is_fp.sum())
        ev_prob += prob[is_fp].tolist()
        ev_tp += [False] * int(is_fp.sum())
        ev_scan += [s] * int(is_fp.sum())
        # the seed paper's operating point: only the top-K candidates of the scan
        xk, pk = _top(xyz, prob, top_k)
        n_cands_topk += len(pk)
        topk_hits += int(_hits(xk, nods).any(0).sum())

    n_nodules = int(nodules_per_scan.sum())
    prob = np.asarray(ev_prob, dtype=np.float64)
    is_tp = np.asarray(ev_tp, dtype=bool)
    scan = np.asarray(ev_scan, dtype=np.int64)
    order = np.argsort(-prob, kind="stable")
    prob, is_tp, scan = prob[order], is_tp[order], scan[order]
    fps, sens = _curve(prob, is_tp, is_tp.astype(float), (~is_tp).astype(float), n_scans, n_nodules)
    at_fp = np.interp(FP_POINTS, fps, sens)
    cpm = float(at_fp.mean())

    ci_cpm, ci_points = (float("nan"), float("nan")), {str_fp(p): (float("nan"),) * 2 for p in FP_POINTS}
    if bootstrap:
        samples = _bootstrap(prob, is_tp, scan, nodules_per_scan, n_scans, bootstrap, seed)
        cpms = samples.mean(1)
        ci_cpm = tuple(float(v) for v in np.percentile(cpms, [2.5, 97.5]))
        lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
        ci_points = {str_fp(p): (float(a), float(b)) for p, a, b in zip(FP_POINTS, lo, hi)}

    n_cands = sum(len(candidates.by_uid[u][1]) for u in seriesuids if u in candidates.by_uid)
    return FrocResult(
        cpm=cpm,
        sensitivity_at_fp={str_fp(p): float(v) for p, v in zip(FP_POINTS, at_fp)},
        cpm_ci95=ci_cpm,
        sensitivity_at_fp_ci95=ci_points,
        true_positives=tp, false_positives=fp, false_negatives=fn,
        ignored_excluded=ign_exc, ignored_duplicates=ign_dup,
        sensitivity=tp / n_nodules if n_nodules else float("nan"),
        candidates_per_scan=n_cands / n_scans,
        sensitivity_at_top_k=topk_hits / n_nodules if n_nodules else float("nan"),
        candidates_per_scan_top_k=n_cands_topk / n_scans,
        top_k=top_k, n_scans=n_scans, n_nodules=n_nodules, n_candidates=int(n_cands),
        bootstrap=bootstrap,
        froc_fps=[float(v) for v in fps], froc_sensitivity=[float(v) for v in sens],
    )


def str_fp(p: float) -> str:
    """JSON key of an FP rate: "0.125", ..., "1", "2", "4", "8"."""
    return f"{p:g}"


def _bootstrap(prob, is_tp, scan, nodules_per_scan, n_scans, n_samples, seed, chunk=64):
    """(n_samples, 7) sensitivities at FP_POINTS over scan-resampled cohorts.

    A resampled cohort is a count per scan (how often it was drawn); each event of a
    scan is weighted by that count, so one cumulative sum per sample replaces building
    the resampled lists.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n_samples, len(FP_POINTS)))
    for start in range(0, n_samples, chunk):
        b = min(chunk, n_samples - start)
        draws = rng.integers(0, n_scans, size=(b, n_scans))
        counts = np.stack([np.bincount(d, minlength=n_scans) for d in draws]).astype(np.float32)
        w = counts[:, scan] if scan.size else np.zeros((b, 0), np.float32)
        nod = counts @ nodules_per_scan
        fps, sens = _curve(prob, is_tp, w * is_tp, w * ~is_tp, n_scans, nod)
        for i in range(b):
            out[start + i] = np.interp(FP_POINTS, fps[i], sens[i])
    return out


def format_table(r: FrocResult) -> str:
    lines = [f"scans {r.n_scans}  nodules {r.n_nodules}  candidates {r.n_candidates} "
             f"({r.candidates_per_scan:.1f}/scan)",
             f"TP {r.true_positives}  FP {r.false_positives}  FN {r.false_negatives}  "
             f"ignored: excluded {r.ignored_excluded}, duplicates {r.ignored_duplicates}",
             f"sensitivity (all candidates) {r.sensitivity:.4f}",
             f"sensitivity at top-{r.top_k}/scan {r.sensitivity_at_top_k:.4f} "
             f"({r.candidates_per_scan_top_k:.1f} candidates/scan)",
             "FPs/scan   " + "  ".join(f"{k:>6}" for k in r.sensitivity_at_fp),
             "sensitivity" + "  ".join(f"{v:6.3f}" for v in r.sensitivity_at_fp.values()),
             f"CPM {r.cpm:.4f}  95% CI [{r.cpm_ci95[0]:.4f}, {r.cpm_ci95[1]:.4f}] ({r.bootstrap} bootstraps)"]
    return "\n".join(lines)


def save_json(r: FrocResult, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r.to_json(), indent=2))
    return path
