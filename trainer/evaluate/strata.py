"""Detection figures overall and per stratum: sensitivity at K candidates/scan and the LUNA16
FROC/CPM, each with a 95 % bootstrap interval over scans.

A stratum is a subset of the nodules (diameter band, kind, location, shape where the findings
name it, and juxta-pleural 10-30 mm, the wall-attached nodules a lung mask is most likely to
drop). Within a stratum the
other nodules are treated as excluded findings: a candidate on them is neither a true nor a
false positive, so a stratum's FROC counts exactly the false positives the overall FROC counts.
Sensitivity at K: a nodule is found when one of the scan's K most probable candidates lies
within its radius (strictly, as `froc`); the same hit rule as the FROC.

Inputs are plain arrays, so this module scores any detector: per scan, a `ScanResult` with the
candidates (world mm, probabilities) and the nodules with their attributes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noduleflow.engine import ConfigError

from .froc import Candidates, Findings, evaluate

KS = (5, 10, 15, 25, 50, 100)
DIAMETER_BANDS_MM = ((3.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, 30.0))
KINDS = ("solid", "part_solid", "ground_glass", "calcified")
LOCATIONS = ("isolated", "juxta_vascular", "juxta_pleural")
# every shape an evaluation source's findings.csv may name (the phantom generator draws the first three)
SHAPES = ("round", "ellipsoid", "lobulated", "spiculated", "cavitary", "irregular")
# the wall-attached nodules reported on their own: juxta-pleural, diameter in this band (inclusive)
JUXTA_PLEURAL_BAND_MM = (10.0, 30.0)
JUXTA_PLEURAL_STRATUM = f"juxta_pleural {JUXTA_PLEURAL_BAND_MM[0]:g}-{JUXTA_PLEURAL_BAND_MM[1]:g} mm"


@dataclass(frozen=True, eq=False)
class ScanResult:
    """One scan: ``xyz`` (n, 3) float64 world mm and ``prob`` (n,) candidates (any order);
    ``nodules`` (m, 4) [x, y, z, diameter mm]; ``kinds``/``locations`` (m,) str;
    ``excluded`` (e, 4) findings whose hits are ignored; ``shapes`` (m,) str, or () when the
    findings do not say (then no shape strata)."""

    uid: str
    xyz: np.ndarray
    prob: np.ndarray
    nodules: np.ndarray
    kinds: tuple
    locations: tuple
    excluded: np.ndarray
    shapes: tuple = ()

    def __post_init__(self) -> None:
        if len(self.xyz) != len(self.prob):
            raise ConfigError(f"{self.uid}: {len(self.xyz)} candidate centres but {len(self.prob)} probabilities")
        if not len(self.kinds) == len(self.locations) == len(self.nodules):
            raise ConfigError(f"{self.uid}: {len(self.nodules)} nodules but {len(self.kinds)} kinds and "
                              f"{len(self.locations)} locations")
        if self.shapes and len(self.shapes) != len(self.nodules):
            raise ConfigError(f"{self.uid}: {len(self.nodules)} nodules but {len(self.shapes)} shapes")


def scan_result(scan, xyz, prob) -> ScanResult:
    """A `trainer.data.cohort.CohortScan`'s candidates ``xyz`` (n, 3) world mm and ``prob`` (n,),
    with its nodules, their kinds, locations and shapes, and its excluded findings."""
    return ScanResult(scan.series_uid, xyz, prob, scan.xyzd(), tuple(n.kind for n in scan.nodules),
                      tuple(n.location for n in scan.nodules), scan.xyzd(excluded=True),
                      tuple(n.shape for n in scan.nodules))


def band_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g} mm"


def strata(scans: list[ScanResult]) -> dict[str, list[np.ndarray]]:
    """name -> per scan, a bool mask over that scan's nodules. Shape strata only when every scan's
    findings name their shapes (a scan without nodules has nothing to name)."""
    out = {"all": [np.ones(len(s.nodules), bool) for s in scans]}
    for i, (lo, hi) in enumerate(DIAMETER_BANDS_MM):
        last = i == len(DIAMETER_BANDS_MM) - 1
        out[f"diameter {band_name(lo, hi)}"] = [
            (s.nodules[:, 3] >= lo) & ((s.nodules[:, 3] <= hi) if last else (s.nodules[:, 3] < hi)) for s in scans]
    for k in KINDS:
        out[f"kind {k}"] = [np.array([v == k for v in s.kinds], bool) for s in scans]
    for loc in LOCATIONS:
        out[f"location {loc}"] = [np.array([v == loc for v in s.locations], bool) for s in scans]
    lo, hi = JUXTA_PLEURAL_BAND_MM
    out[JUXTA_PLEURAL_STRATUM] = [np.array([v == "juxta_pleural" for v in s.locations], bool)
                                  & (s.nodules[:, 3] >= lo) & (s.nodules[:, 3] <= hi) for s in scans]
    if all(s.shapes or not len(s.nodules) for s in scans):
        for sh in SHAPES:
            out[f"shape {sh}"] = [np.array([v == sh for v in s.shapes], bool).reshape(len(s.nodules))
                                  for s in scans]
    return out


def first_hit_rank(xyz: np.ndarray, prob: np.ndarray, nodules: np.ndarray) -> np.ndarray:
    """(m,) int: 1-based rank (by descending probability, ties in input order) of the best-ranked
    candidate within each nodule's radius; 0 where none hits."""
    if len(nodules) == 0:
        return np.zeros(0, np.int64)
    if len(prob) == 0:
        return np.zeros(len(nodules), np.int64)
    order = np.argsort(-np.asarray(prob), kind="stable")
    d2 = ((np.asarray(xyz)[order][:, None, :] - nodules[None, :, :3]) ** 2).sum(-1)
    hit = d2 < (nodules[None, :, 3] / 2.0) ** 2
    return np.where(hit.any(0), hit.argmax(0) + 1, 0).astype(np.int64)


def found_at(result: ScanResult, k: int = 15) -> np.ndarray:
    """(m,) bool: each nodule of ``result`` hit by one of its ``k`` most probable candidates."""
    rank = first_hit_rank(np.asarray(result.xyz, float).reshape(-1, 3), np.asarray(result.prob),
                          np.asarray(result.nodules, float).reshape(-1, 4))
    return (rank > 0) & (rank <= k)


def sensitivity_at_k(ranks: list[np.ndarray], masks: list[np.ndarray], ks=KS, bootstrap: int = 1000,
                     seed: int = 0) -> dict:
    """Per K: {"sensitivity", "ci95", "found", "nodules"}; bootstrap over scans (seeded)."""
    n_scans = len(ranks)
    found = np.array([[int(((r > 0) & (r <= k) & m).sum()) for k in ks] for r, m in zip(ranks, masks)],
                     dtype=np.float64).reshape(n_scans, len(ks))
    nods = np.array([int(m.sum()) for m in masks], dtype=np.float64)
    total = nods.sum()
    out = {}
    if bootstrap and total:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n_scans, size=(bootstrap, n_scans))
        counts = np.stack([np.bincount(d, minlength=n_scans) for d in draws]).astype(np.float64)
        denom = counts @ nods
        ok = denom > 0
        samples = (counts @ found)[ok] / denom[ok, None]
        lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
    else:
        lo = hi = np.full(len(ks), np.nan)
    for i, k in enumerate(ks):
        out[str(k)] = {"sensitivity": float(found[:, i].sum() / total) if total else float("nan"),
                       "ci95": [float(lo[i]), float(hi[i])], "found": int(found[:, i].sum()), "nodules": int(total)}
    return out


def score_cohort(scans: list[ScanResult], ks=KS, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Overall and per-stratum figures: {stratum: {"nodules", "sensitivity_at_k", "cpm",
    "cpm_ci95", "sensitivity_at_fp", "froc": {"fps", "sensitivity"}}}. Candidates beyond the
    100 most probable of a scan are ignored by the FROC (LUNA16 rule), not by sensitivity at K."""
    if not scans:
        raise ConfigError("no scans to score")
    uids = [s.uid for s in scans]
    if len(set(uids)) != len(uids):
        raise ConfigError(f"duplicate series UIDs among {len(uids)} scans")
    cands = Candidates({s.uid: (np.asarray(s.xyz, float).reshape(-1, 3), np.asarray(s.prob, float)) for s in scans})
    ranks = [first_hit_rank(s.xyz, s.prob, s.nodules) for s in scans]
    out = {}
    for name, masks in strata(scans).items():
        n = int(sum(m.sum() for m in masks))
        entry = {"nodules": n, "scans_with": int(sum(bool(m.any()) for m in masks))}
        if n:
            entry["sensitivity_at_k"] = sensitivity_at_k(ranks, masks, ks, bootstrap, seed)
            inc = Findings({s.uid: s.nodules[m] for s, m in zip(scans, masks) if m.any()})
            exc = Findings({s.uid: np.concatenate([s.nodules[~m], s.excluded.reshape(-1, 4)])
                            for s, m in zip(scans, masks)})
            r = evaluate(inc, cands, exc, seriesuids=uids, top_k=15, bootstrap=bootstrap, seed=seed)
            entry.update(cpm=r.cpm, cpm_ci95=list(r.cpm_ci95), sensitivity_at_fp=r.sensitivity_at_fp,
                         sensitivity_at_fp_ci95={k: list(v) for k, v in r.sensitivity_at_fp_ci95.items()},
                         false_positives=r.false_positives, candidates_per_scan=r.candidates_per_scan,
                         froc={"fps": r.froc_fps, "sensitivity": r.froc_sensitivity})
        out[name] = entry
    return out


def format_markdown(res: dict, ks=KS) -> str:
    """The table: one row per stratum, sensitivity at each K (95 % CI at 15), CPM (95 % CI)."""
    head = "| stratum | nodules | " + " | ".join(f"sens@{k}" for k in ks) + " | sens@15 95 % CI | CPM (95 % CI) |"
    lines = [head, "|" + "---|" * 2 + "---:|" * len(ks) + "---|---|"]
    for name, e in res.items():
        if not e["nodules"]:
            lines.append(f"| {name} | 0 |" + " - |" * len(ks) + " - | - |")
            continue
        sk = e["sensitivity_at_k"]
        ci = sk["15"]["ci95"] if "15" in sk else [float("nan")] * 2
        lines.append(f"| {name} | {e['nodules']} | " + " | ".join(f"{sk[str(k)]['sensitivity']:.3f}" for k in ks)
                     + f" | {ci[0]:.3f}-{ci[1]:.3f} | {e['cpm']:.3f} ({e['cpm_ci95'][0]:.3f}-{e['cpm_ci95'][1]:.3f}) |")
    return "\n".join(lines)
