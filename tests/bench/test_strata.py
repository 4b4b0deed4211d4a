"""Per-stratum detection figures: ranks, sensitivity at K, strata masks and their FROC."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.engine import ConfigError
from noduleflow.trainer.evaluate.strata import (
    JUXTA_PLEURAL_STRATUM,
    ScanResult,
    first_hit_rank,
    score_cohort,
    sensitivity_at_k,
    strata,
)


def _scan(uid, nodules, kinds, locs, xyz, prob):
    return ScanResult(uid, np.asarray(xyz, float).reshape(-1, 3), np.asarray(prob, float),
                      np.asarray(nodules, float).reshape(-1, 4), tuple(kinds), tuple(locs), np.zeros((0, 4)))


def test_first_hit_rank_uses_probability_order_and_strict_radius():
    nod = np.array([[0, 0, 0, 10.0], [50, 0, 0, 4.0]])
    xyz = np.array([[100, 0, 0], [1, 0, 0], [52, 0, 0], [0, 0, 0]], float)  # [52,...] sits on the radius
    prob = np.array([0.9, 0.5, 0.8, 0.7])
    r = first_hit_rank(xyz, prob, nod)
    assert r.tolist() == [3, 0]  # by prob: 0.9, 0.8 (on the radius: no hit), 0.7 (hit), 0.5 (hit)


def test_sensitivity_at_k_counts_and_bootstrap_brackets():
    ranks = [np.array([1, 20, 0]), np.array([3])]
    masks = [np.ones(3, bool), np.ones(1, bool)]
    s = sensitivity_at_k(ranks, masks, ks=(5, 25), bootstrap=200)
    assert s["5"]["found"] == 2 and s["25"]["found"] == 3 and s["5"]["nodules"] == 4
    assert s["5"]["ci95"][0] <= s["5"]["sensitivity"] <= s["5"]["ci95"][1]


def test_strata_partition_each_attribute():
    sc = [_scan("a", [[0, 0, 0, 4], [50, 0, 0, 8], [90, 0, 0, 30.0]], ["solid", "ground_glass", "calcified"],
                ["isolated", "juxta_pleural", "juxta_vascular"], [], [])]
    st = strata(sc)
    for prefix in ("diameter", "kind", "location"):
        total = sum(m[0].astype(int) for k, m in st.items() if k.startswith(prefix))
        assert total.tolist() == [1, 1, 1]  # every nodule in exactly one stratum of each attribute


def test_score_cohort_stratum_ignores_other_strata_hits():
    # one solid and one ground-glass nodule; the only candidates hit them; no false positives at all
    sc = [_scan("a", [[0, 0, 0, 6], [40, 0, 0, 6]], ["solid", "ground_glass"], ["isolated", "isolated"],
                [[0, 0, 0], [40, 0, 0]], [0.9, 0.8])]
    res = score_cohort(sc, ks=(1, 2), bootstrap=50)
    assert res["all"]["sensitivity_at_k"]["2"]["sensitivity"] == 1.0
    assert res["kind solid"]["false_positives"] == 0 and res["kind ground_glass"]["false_positives"] == 0
    assert res["kind ground_glass"]["cpm"] == pytest.approx(1.0)
    assert res["kind part_solid"]["nodules"] == 0


def test_bad_input_is_a_config_error():
    with pytest.raises(ConfigError, match="2 candidate centres but 1"):
        _scan("a", [], [], [], [[0, 0, 0], [1, 1, 1]], [0.5])
    with pytest.raises(ConfigError, match="no scans"):
        score_cohort([])


def test_juxta_pleural_band_and_shape_strata():
    nod = [[0, 0, 0, 12], [50, 0, 0, 8], [90, 0, 0, 30.0], [0, 60, 0, 20]]
    locs = ["juxta_pleural", "juxta_pleural", "juxta_pleural", "isolated"]
    with_shapes = ScanResult("a", np.zeros((0, 3)), np.zeros(0), np.asarray(nod, float), ("solid",) * 4, tuple(locs),
                             np.zeros((0, 4)), ("round", "lobulated", "spiculated", "round"))
    st = strata([with_shapes])
    assert st[JUXTA_PLEURAL_STRATUM][0].tolist() == [True, False, True, False]  # 10-30 mm inclusive, wall-attached
    assert sum(m[0].astype(int) for k, m in st.items() if k.startswith("shape")).tolist() == [1, 1, 1, 1]
    assert st["shape round"][0].tolist() == [True, False, False, True]
    # findings that do not name shapes: no shape strata (rather than rows of zeros that read as "none")
    assert not any(k.startswith("shape") for k in strata([_scan("b", nod, ["solid"] * 4, locs, [], [])]))
    with pytest.raises(ConfigError, match="4 nodules but 1 shapes"):
        ScanResult("c", np.zeros((0, 3)), np.zeros(0), np.asarray(nod, float), ("solid",) * 4, tuple(locs),
                   np.zeros((0, 4)), ("round",))
