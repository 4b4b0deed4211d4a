"""`noduleflow bench follow`: its scoring on hand-built follow-up results (each figure checked
against counts worked out by hand), its registration in the bench CLI, and (slow) one real pair
end to end. Synthetic phantoms are a regression signal, not clinical evidence."""
from __future__ import annotations

import json

import numpy as np
import pytest

from noduleflow.bench.follow import build_parser, hit, report_md, score_pair, summarise
from noduleflow.follow.result import FollowFinding
from noduleflow.synthetic.followup import PairLesion

SHIFT = np.array([5.0, -3.0, 2.0])          # the true motion: prior + SHIFT
REG = np.array([4.0, -3.0, 2.0])            # follow's registration: 1 mm off along x


def lesion(i, status, prior=None, current=None, d0=8.0, d1=8.0):
    p = None if prior is None else tuple(float(v) for v in prior)
    c = None if current is None else tuple(float(v) for v in current)
    return PairLesion(i, status, "solid", "round", "isolated", p, c, None if p is None else d0,
                      None if c is None else d1, (0, i))


def moved(xyz):
    return tuple(float(v) for v in np.asarray(xyz) + SHIFT)


def matched(prior, current, dv, growing=False):
    return FollowFinding("matched", 1, 1, prior_xyz_mm=tuple(prior), current_xyz_mm=tuple(current),
                         volume_change_pct=dv, growing=growing, diameter_change_mm=0.0)


def new(current):
    return FollowFinding("new", current_rank=1, current_xyz_mm=tuple(current))


def resolved(prior):
    return FollowFinding("resolved", prior_rank=1, prior_xyz_mm=tuple(prior))


@pytest.fixture()
def case():
    """Nine lesions, their follow-up, and what each figure must be."""
    P = {i: np.array([30.0 * i, 0.0, -100.0]) for i in range(9)}
    L = [lesion(0, "stable", P[0], moved(P[0])),
         lesion(1, "grown", P[1], moved(P[1]), 8.0, 10.0),
         lesion(2, "new", None, moved(P[2])),
         lesion(3, "resolved", P[3], None),
         lesion(4, "stable", P[4], moved(P[4])),                 # matched to a false finding: wrong
         lesion(5, "grown", P[5], moved(P[5]), 8.0, 10.0),       # missed in the current scan
         lesion(6, "shrunk", P[6], moved(P[6]), 10.0, 8.0),
         lesion(7, "stable", P[7], moved(P[7])),                 # matched, but measured +30 %: false growth
         lesion(8, "grown", P[8], moved(P[8]), 8.0, 10.0)]       # matched, +20 %: growth missed, Lung-RADS yes
    off = np.array([0.0, 1.5, 0.0])  # centroids 1.5 mm from the true centres: still hits
    F = [matched(P[0] + off, np.array(moved(P[0])) - off, 5.0),
         matched(P[1], moved(P[1]), 45.0, growing=True),
         new(moved(P[2])),
         resolved(P[3]),
         matched(P[4], (200.0, 80.0, -100.0), -3.0),          # L4's prior finding paired with a false one
         new(moved(P[4])),                                     # ... and its current finding left "new"
         resolved(P[5]),                                       # L5 seen only in the prior
         matched(P[6], moved(P[6]), -48.0),
         matched(P[7], moved(P[7]), 30.0, growing=True),
         matched(P[8], moved(P[8]), 20.0, growing=True),
         new((-200.0, -80.0, -60.0))]                          # a false finding
    return L, F


def test_hit_radius():
    centres, radii = [(0.0, 0.0, 0.0), (20.0, 0.0, 0.0)], [2.0, 6.0]
    assert hit((2.9, 0.0, 0.0), centres, radii) == 0          # within 3 mm (radius 2 mm)
    assert hit((3.5, 0.0, 0.0), centres, radii) is None
    assert hit((14.5, 0.0, 0.0), centres, radii) == 1         # within the 6 mm radius
    assert hit((13.5, 0.0, 0.0), centres, radii) is None
    assert hit(None, centres, radii) is None and hit((0, 0, 0), [], []) is None


def test_score_pair_outcomes(case):
    L, F = case
    m = np.eye(4)
    m[:3, 3] = REG
    probs = [0.9] * len(F)
    probs[-1] = 0.2                                      # the false finding is improbable
    rec, counts = score_pair(L, F, m.tolist(), lambda p: np.asarray(p) + SHIFT, pair="x", probs=probs)
    out = {r["lesion_id"]: r["outcome"] for r in rec}
    assert out == {0: "matched", 1: "matched", 2: "new", 3: "resolved", 4: "matched_wrong", 5: "missed",
                   6: "matched", 7: "matched", 8: "matched"}
    assert [r["detected_current"] for r in rec] == [True, True, True, None, True, False, True, True, True]
    assert [r["detected_prior"] for r in rec] == [True, True, None, True, True, True, True, True, True]
    assert rec[1]["finding_index"] == 2 and rec[1]["volume_change_pct"] == 45.0
    assert counts == {"false_new": 2, "false_new_persistent": 1, "false_new_confident": 1, "false_resolved": 1,
                      "false_resolved_persistent": 1, "false_resolved_confident": 1, "n_findings": 11,
                      "statuses": ["grown", "new", "resolved", "shrunk", "stable"]}
    # registration: 1 mm off everywhere; the true motion is |SHIFT|
    err = [r["registration_error_mm"] for r in rec if r["registration_error_mm"] is not None]
    assert len(err) == 8 and np.allclose(err, 1.0)
    assert rec[0]["motion_mm"] == pytest.approx(np.linalg.norm(SHIFT), abs=1e-3)


def test_summary_figures(case):
    L, F = case
    rec, counts = score_pair(L, F, None, None)
    s = summarise(rec, [counts])

    def pair(k):
        return (s[k]["all"]["n"], s[k]["all"]["of"], s[k]["detected"]["n"], s[k]["detected"]["of"])

    # persistent: 0, 1, 4, 5, 6, 7, 8 (7); both sides detected: all but 5 (6); correct: 0, 1, 6, 7, 8
    assert pair("persistent_matched_correctly") == (5, 7, 5, 6)
    assert s["persistent_matched_correctly"]["all"]["share"] == pytest.approx(5 / 7, abs=1e-3)
    assert pair("persistent_matched_wrongly") == (1, 7, 1, 6)
    assert pair("grown_volume_growth_reported") == (1, 3, 1, 2)     # 1: +45 %; 8: +20 %; 5: missed
    assert pair("grown_lungrads_growing") == (2, 3, 2, 2)
    assert pair("stable_false_volume_growth") == (1, 3, 1, 3)       # 7: +30 %
    assert pair("stable_false_lungrads_growing") == (1, 3, 1, 3)
    assert pair("shrunk_volume_shrinkage_reported") == (1, 1, 1, 1)
    assert pair("new_reported_new") == (1, 1, 1, 1)
    assert pair("resolved_reported_resolved") == (1, 1, 1, 1)
    assert s["false_new_per_pair"] == 2 and s["false_resolved_per_pair"] == 1
    assert s["counts"] == {"stable": 3, "grown": 3, "shrunk": 1, "new": 1, "resolved": 1}
    # volume change error: measured - true (% points) over the 5 correctly matched lesions
    true = {0: 0.0, 1: 100 * (1.25 ** 3 - 1), 6: 100 * (0.8 ** 3 - 1), 7: 0.0, 8: 100 * (1.25 ** 3 - 1)}
    meas = {0: 5.0, 1: 45.0, 6: -48.0, 7: 30.0, 8: 20.0}
    diffs = np.array([meas[k] - true[k] for k in true])
    assert s["volume_change_error_pct_points"]["median_abs"] == pytest.approx(np.median(np.abs(diffs)), abs=0.05)
    assert s["registration_error_mm"] is None


def test_a_wrong_centre_is_no_hit(case):
    """Move lesion 1's current finding 5 mm away: it no longer hits (radius 5 mm, shifted 5.5),
    and lesion 1 counts as missed in the current scan, not as matched."""
    L, F = case
    F = list(F)
    F[1] = matched(F[1].prior_xyz_mm, np.asarray(F[1].current_xyz_mm) + [0.0, 0.0, 5.5], 45.0, growing=True)
    rec, _ = score_pair(L, F)
    assert rec[1]["outcome"] == "missed" and rec[1]["detected_current"] is False


def test_report_and_cli(case, tmp_path):
    L, F = case
    rec, counts = score_pair(L, F)
    doc = {"name": "t", "command": "noduleflow bench follow --pairs 1", "summary": summarise(rec, [counts]),
           "settings": {"shape_zyx": [1, 2, 3], "spacing_zyx_mm": [1, 1, 1],
                        "follow": {"characterise_top": 10, "min_prob": 0.0}},
           "seconds_per_pair": {"make": 1.0, "follow": 2.0}, "seeds": [1],
           "versions": {"package_id": "m", "package_sha256": "0" * 64, "engine_version": "0", "backend": "b",
                        "simpleitk": "2", "machine": {"cpu": "c", "cores": 2, "numpy": "2"}}}
    text = report_md(doc)
    assert "| persistent lesions (stable, grown, shrunk) matched correctly | 0.714 (5/7) | 0.833 (5/6) |" in text
    assert "not clinical evidence" in text
    import argparse

    args = build_parser(argparse.ArgumentParser()).parse_args(["--pairs", "3", "--seed", "5"])
    assert (args.pairs, args.seed, args.shape) == (3, 5, [100, 256, 256])
    from noduleflow.bench.cli import BENCH_MODULES

    assert "noduleflow.bench.follow" in BENCH_MODULES


@pytest.mark.slow
def test_bench_follow_end_to_end(tmp_path):
    """One small pair through the real ``follow`` with the shipped model (about a minute)."""
    from noduleflow.bench.follow import main

    assert main(["--pairs", "1", "--seed", "9600", "--out", str(tmp_path), "--name", "one"]) == 0
    doc = json.loads((tmp_path / "one.json").read_text())
    s = doc["summary"]
    assert s["pairs"] == 1 and len(doc["lesions"]) == sum(s["counts"].values()) >= 3
    assert doc["intervals_wrong"] == [] and doc["pairs"][0]["interval_source"] == "StudyDate"
    # registration brings the lesion sites within a few mm (they moved several mm)
    assert s["registration_error_mm"]["max"] < 3.0
    assert s["persistent_matched_correctly"]["detected"]["share"] in (None, 1.0)
    assert (tmp_path / "one.md").read_text().count("|") > 20
