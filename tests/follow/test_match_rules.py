"""Matching (Hungarian assignment, distance thresholds) and the Lung-RADS v2022 follow-up rules."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from noduleflow.engine.errors import ConfigError
from noduleflow.follow import (
    assignment,
    growing_category,
    growth,
    match_findings,
    new_category,
    stable_category,
    volume_doubling_days,
)


def _brute(c):
    n, m = c.shape
    if n <= m:
        return min(sum(c[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
    return min(sum(c[p[j], j] for j in range(m)) for p in itertools.permutations(range(n), m))


def test_assignment_is_optimal_and_one_to_one():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, m = (int(v) for v in rng.integers(1, 6, 2))
        c = rng.uniform(0, 10, (n, m)).round(1)
        pairs = assignment(c)
        assert len(pairs) == min(n, m)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        assert abs(sum(c[i, j] for i, j in pairs) - _brute(c)) < 1e-9
    assert assignment(np.zeros((0, 3))) == []
    with pytest.raises(ConfigError, match="finite"):
        assignment(np.array([[1.0, np.inf]]))


def test_matching_keeps_both_pairs_where_greedy_would_lose_one():
    # greedy by distance takes b-c (1 mm) first and leaves a without a partner within 5 mm
    prior = [[0, 0, 0], [4, 0, 0]]          # a, b
    current = [[3, 0, 0], [8, 0, 0]]        # c, d
    pairs, lost, new = match_findings(prior, [1, 1], current, [1, 1], min_mm=5.0)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 0), (1, 1)] and lost == [] and new == []


def test_matching_threshold_grows_with_the_radius():
    prior, current = [[0, 0, 0]], [[14, 0, 0]]
    pairs, lost, new = match_findings(prior, [3.0], current, [3.0])          # limit max(10, 4.5) = 10 mm
    assert pairs == [] and lost == [0] and new == [0]
    pairs, _, _ = match_findings(prior, [3.0], current, [10.0])             # limit 1.5 x 10 = 15 mm
    assert [(i, j) for i, j, _ in pairs] == [(0, 0)] and pairs[0][2] == pytest.approx(14.0)
    assert match_findings([], [], current, [1.0]) == ([], [], [0])
    with pytest.raises(ConfigError, match="one radius per finding"):
        match_findings(prior, [1.0, 2.0], current, [1.0])


def test_growth_criterion_v2022():
    assert growth("solid", 6.0, 7.5).growing is False          # exactly 1.5 mm: not more than 1.5
    g = growth("solid", 6.0, 7.6, interval_days=180)
    assert g.growing and g.change_mm == pytest.approx(1.6) and "unknown" not in g.note
    assert "interval unknown" in growth("solid", 6.0, 8.0).note
    assert "slow growth" in growth("solid", 6.0, 8.0, interval_days=500).note
    # a part-solid nodule whose solid core grows while its total size does not
    g = growth("part_solid", 12.0, 12.0, prior_core_mm=2.0, current_core_mm=5.0)
    assert g.growing and g.note.startswith("solid component")
    assert growth("solid", None, 7.0).growing is None
    with pytest.raises(ConfigError, match="nodule type"):
        growth("nodule", 1.0, 2.0)


@pytest.mark.parametrize("kind, d, core, want", [
    ("solid", 3.9, None, "2"), ("solid", 4.0, None, "3"), ("solid", 6.0, None, "4A"), ("solid", 7.9, None, "4A"),
    ("solid", 8.0, None, "4B"), ("part_solid", 5.9, 2.0, "3"), ("part_solid", 8.0, 3.9, "4A"),
    ("part_solid", 8.0, 4.0, "4B"), ("ground_glass", 29.9, None, "2"), ("ground_glass", 30.0, None, "3"),
    ("calcified", 12.0, None, "1")])
def test_new_nodule_categories(kind, d, core, want):
    assert new_category(kind, d, core) == want


def test_growing_and_stable_categories():
    assert growing_category("solid", 7.9) == "4A" and growing_category("solid", 8.0) == "4B"
    assert growing_category("part_solid", 10.0, 3.0) == "4A" and growing_category("part_solid", 10.0, 4.0) == "4B"
    assert growing_category("ground_glass", 12.0) == "2"
    # 4A stable at a 3-month follow-up -> 3; not before; 3 stable at 6 months -> 2
    assert stable_category("solid", 10.0, prior_category="4A", interval_days=90) == "3"
    assert stable_category("solid", 10.0, prior_category="4A", interval_days=60) == "4A"
    assert stable_category("solid", 7.0, prior_category="3", interval_days=180) == "2"
    assert stable_category("solid", 7.0, prior_category="3", interval_days=None) == "3"
    assert stable_category("ground_glass", 32.0) == "2"
    with pytest.raises(ConfigError, match=">= 0 mm"):
        new_category("solid", -1.0)


def test_volume_doubling_time():
    assert volume_doubling_days(100.0, 200.0, 100.0) == pytest.approx(100.0)
    assert volume_doubling_days(200.0, 100.0, 100.0) == pytest.approx(-100.0)   # halving time
    assert volume_doubling_days(100.0, 100.0, 100.0) is None
    assert volume_doubling_days(100.0, 200.0, None) is None
