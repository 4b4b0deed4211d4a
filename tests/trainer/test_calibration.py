"""Platt scaling and the expected calibration error used for the stage-2 probability."""
from __future__ import annotations

import numpy as np
import pytest

from noduleflow.trainer.evaluate.calibration import expected_calibration_error
from noduleflow.trainer.stage2_calibrate import platt


def test_platt_recovers_the_generating_scale_and_bias():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=20000)
    y = rng.uniform(size=z.size) < 1 / (1 + np.exp(-(0.4 * z - 1.5)))
    a, b = platt(z, y)
    assert a == pytest.approx(0.4, abs=0.03) and b == pytest.approx(-1.5, abs=0.08)


def test_platt_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        platt(np.array([0.1, 0.2]), np.array([1, 1]))


def test_expected_calibration_error():
    # two bins, each perfectly calibrated: 0
    p = np.array([0.05] * 20 + [0.95] * 20)
    y = np.array([1] + [0] * 19 + [1] * 19 + [0])
    assert expected_calibration_error(p, y) == pytest.approx(0.0)
    # everything says 0.9, half are right: |0.9 - 0.5| = 0.4
    assert expected_calibration_error(np.full(10, 0.9), np.array([1, 0] * 5)) == pytest.approx(0.4)
    # weighted by bin share: 3/4 of candidates calibrated, 1/4 off by 0.8
    p = np.array([0.1] * 30 + [0.9] * 10)
    y = np.array([1] * 3 + [0] * 27 + [0] * 9 + [1] * 1)
    assert expected_calibration_error(p, y) == pytest.approx(0.25 * 0.8)
