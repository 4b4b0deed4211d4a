"""LUNA16 FROC/CPM: hand-computed cases and a full-scale run on the real annotation files."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from noduleflow.cli import main as cli
from noduleflow.engine.results import write_candidates_csv
from noduleflow.trainer.evaluate.froc import (
    FP_POINTS,
    Candidates,
    Findings,
    evaluate,
    read_candidates,
    read_findings,
    read_seriesuids,
)

LUNA = Path(__file__).resolve().parents[3] / "shared" / "luna16"


def F(d):
    return Findings({k: np.asarray(v, float).reshape(-1, 4) for k, v in d.items()})


def C(d):
    return Candidates({k: (np.asarray(v, float).reshape(-1, 4)[:, :3], np.asarray(v, float).reshape(-1, 4)[:, 3])
                       for k, v in d.items()})


def test_duplicates_excluded_and_misses():
    ann = F({"a": [[0, 0, 0, 10], [50, 0, 0, 6]], "b": [[0, 0, 0, 8]]})
    exc = F({"a": [[100, 0, 0, -1]]})  # diameter -1: the official 10 mm default
    cand = C({"a": [[1, 0, 0, 0.9],      # TP for nodule 1
                    [2, 1, 0, 0.5],      # second hit on nodule 1: ignored duplicate
                    [104, 0, 0, 0.8],    # inside the 10 mm default of the excluded finding
                    [106, 0, 0, 0.7],    # just outside it: FP
                    [200, 0, 0, 0.3]]})  # FP
    r = evaluate(ann, cand, exc, seriesuids=["a", "b"], bootstrap=0)
    assert (r.true_positives, r.false_positives, r.false_negatives) == (1, 2, 2)
    assert r.ignored_duplicates == 1 and r.ignored_excluded == 1
    assert r.sensitivity == pytest.approx(1 / 3)
    assert r.n_scans == 2 and r.candidates_per_scan == pytest.approx(2.5)


def test_radius_is_strict_like_the_official_script():
    ann = F({"a": [[0, 0, 0, 10]]})
    assert evaluate(ann, C({"a": [[5, 0, 0, 1.0]]}), bootstrap=0).true_positives == 0
    assert evaluate(ann, C({"a": [[4.999, 0, 0, 1.0]]}), bootstrap=0).true_positives == 1


def test_curve_interpolation_by_hand():
    # 2 scans, 4 nodules; events by probability: TP .9, FP .8, TP .7, FP .6, FP .5, TP .4
    ann = F({"a": [[0, 0, 0, 10], [50, 0, 0, 10]], "b": [[0, 0, 0, 10], [50, 0, 0, 10]]})
    cand = C({"a": [[0, 0, 0, .9], [300, 0, 0, .8], [50, 0, 0, .7]],
              "b": [[300, 0, 0, .6], [400, 0, 0, .5], [0, 0, 0, .4]]})
    r = evaluate(ann, cand, bootstrap=0)
    # points (fps, sens): (0,0) (0,.25) (.5,.25) (.5,.5) (1,.5) (1.5,.5) (1.5,.75)
    assert r.froc_fps == pytest.approx([0, 0, .5, .5, 1, 1.5, 1.5])
    assert r.froc_sensitivity == pytest.approx([0, .25, .25, .5, .5, .5, .75])
    want = {"0.125": .25, "0.25": .25, "0.5": .5, "1": .5, "2": .75, "4": .75, "8": .75}
    assert r.sensitivity_at_fp == pytest.approx(want)
    assert r.cpm == pytest.approx(np.mean(list(want.values())))


def test_ties_are_one_threshold():
    ann = F({"a": [[0, 0, 0, 10]]})
    cand = C({"a": [[0, 0, 0, .5], [300, 0, 0, .5]]})  # TP and FP at the same probability
    r = evaluate(ann, cand, bootstrap=0)
    assert r.froc_fps == pytest.approx([0, 1]) and r.froc_sensitivity == pytest.approx([0, 1])
    assert r.sensitivity_at_fp["0.5"] == pytest.approx(0.5)  # halfway along the joint step


def test_hundred_candidate_cap_and_top_k():
    ann = F({"a": [[0, 0, 0, 10]]})
    fps = [[1000 + i, 0, 0, 0.9] for i in range(100)]
    r = evaluate(ann, C({"a": fps + [[0, 0, 0, 0.1]]}), bootstrap=0, top_k=15)
    assert r.true_positives == 0 and r.false_negatives == 1 and r.false_positives == 100
    assert r.candidates_per_scan == 101
    r2 = evaluate(ann, C({"a": fps[:20] + [[0, 0, 0, 0.95]]}), bootstrap=0, top_k=15)
    assert r2.sensitivity_at_top_k == 1.0 and r2.candidates_per_scan_top_k == 15
    r3 = evaluate(ann, C({"a": fps[:20] + [[0, 0, 0, 0.5]]}), bootstrap=0, top_k=15)
    assert r3.sensitivity == 1.0 and r3.sensitivity_at_top_k == 0.0


def test_empty_scans_count_in_denominator():
    ann = F({"a": [[0, 0, 0, 10]]})
    cand = C({"a": [[0, 0, 0, .9], [300, 0, 0, .8]]})
    r1 = evaluate(ann, cand, seriesuids=["a"], bootstrap=0)
    r4 = evaluate(ann, cand, seriesuids=["a", "b", "c", "d"], bootstrap=0)
    assert r1.froc_fps[-1] == 1.0 and r4.froc_fps[-1] == 0.25


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    ann = F({f"s{i}": [[0, 0, 0, 10], [80, 0, 0, 8]] for i in range(30)})
    cand = C({f"s{i}": [[0, 0, 0, rng.uniform()], [80, 0, 0, rng.uniform()]] +
              [[500 + j, 0, 0, rng.uniform()] for j in range(5)] for i in range(30)})
    a = evaluate(ann, cand, bootstrap=200, seed=1)
    b = evaluate(ann, cand, bootstrap=200, seed=1)
    assert a.cpm_ci95 == b.cpm_ci95
    assert a.cpm_ci95[0] <= a.cpm <= a.cpm_ci95[1] and a.cpm_ci95[0] < a.cpm_ci95[1]


def _luna_submission(ann: Findings, uids, rng, perfect: bool):
    rows = []
    for uid in uids:
        for x, y, z, d in ann.get(uid):
            if perfect or rng.uniform() < 0.8:
                off = rng.normal(size=3)
                off *= rng.uniform(0, 0.45 * d) / np.linalg.norm(off)
                rows.append((uid, x + off[0], y + off[1], z + off[2], rng.uniform(0.5, 1.0)))
        if not perfect:
            for _ in range(rng.integers(5, 40)):
                rows.append((uid, *rng.uniform(-200, 200, 3), rng.uniform(0, 0.9)))
    return rows


@pytest.mark.skipif(not (LUNA / "annotations.csv").exists(), reason="../shared/luna16 not present")
def test_full_scale_luna16_in_seconds(tmp_path):
    t0 = time.perf_counter()
    ann = read_findings(LUNA / "annotations.csv")
    exc = read_findings(LUNA / "annotations_excluded.csv")
    uids = read_seriesuids(LUNA / "seriesuids.csv")
    assert len(uids) == 888 and ann.count == 1186
    rng = np.random.default_rng(0)
    perfect = write_candidates_csv(tmp_path / "perfect.csv", _luna_submission(ann, uids, rng, True))
    r = evaluate(ann, read_candidates(perfect), exc, uids, bootstrap=100)
    assert r.sensitivity == 1.0 and r.cpm == 1.0 and r.false_positives == 0
    noisy = write_candidates_csv(tmp_path / "noisy.csv", _luna_submission(ann, uids, rng, False))
    t1 = time.perf_counter()
    r = evaluate(ann, read_candidates(noisy), exc, uids, bootstrap=1000)
    elapsed = time.perf_counter() - t1
    assert 0.7 < r.sensitivity < 0.9
    sens = list(r.sensitivity_at_fp.values())
    assert all(a <= b + 1e-12 for a, b in zip(sens, sens[1:]))  # FROC is monotone
    assert r.cpm_ci95[0] < r.cpm < r.cpm_ci95[1]
    assert elapsed < 30, f"full-scale evaluation took {elapsed:.1f} s"
    assert time.perf_counter() - t0 < 60
    # random candidates only: near zero
    rand = Candidates({u: (rng.uniform(-200, 200, (30, 3)), rng.uniform(size=30)) for u in uids})
    assert evaluate(ann, rand, exc, uids, bootstrap=0).cpm < 0.05


def test_cli_json_and_plot(tmp_path, capsys):
    ann = tmp_path / "ann.csv"
    ann.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,0,0,10\nb,5,5,5,6\n")
    cand = write_candidates_csv(tmp_path / "c.csv", [("a", 0, 0, 1, .9), ("a", 50, 0, 0, .4), ("b", 90, 9, 9, .3)])
    out, png = tmp_path / "r.json", tmp_path / "froc.png"
    assert cli(["bench", "froc", "--annotations", str(ann), "--candidates", str(cand), "--json", str(out),
                "--plot", str(png), "--bootstrap", "50"]) == 0
    res = json.loads(out.read_text())
    for key in ("cpm", "sensitivity_at_fp", "cpm_ci95", "true_positives", "false_positives", "false_negatives",
                "ignored_excluded", "ignored_duplicates", "sensitivity", "candidates_per_scan",
                "sensitivity_at_top_k", "top_k"):
        assert key in res
    assert list(res["sensitivity_at_fp"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert res["true_positives"] == 1 and png.stat().st_size > 5000
    assert "CPM" in capsys.readouterr().out


def test_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,zero,0,10\n")
    assert cli(["bench", "froc", "--annotations", str(bad), "--candidates", str(bad)]) == 2
    assert "not a number" in capsys.readouterr().err
    assert len(FP_POINTS) == 7
