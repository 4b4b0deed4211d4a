"""`noduleflow serve` as a real subprocess, SIGKILLed while it processes a series and restarted:
every series ends with exactly one result (bench/serve_load.py does the work and the checks)."""
from __future__ import annotations

import pytest

from noduleflow.bench.serve_load import run_load


def _assert_ok(report):
    failed = {k: v for k, v in report["checks"].items() if not v}
    assert not failed, (failed, report["errors"], report["kill"])


def test_sigkill_mid_processing_then_restart_gives_exactly_one_result_per_series(tmp_path):
    r = run_load(tmp_path / "load", n_series=3, clients=2, kill_after=0, quiet_s=1.0, timeout_s=400,
                 progress=lambda *_: None)
    assert r["kill"] is not None and r["kill"]["processing"], "the service was killed while processing"
    assert set(r["kill"]["processing"]) <= set(r["requeued_series"])
    _assert_ok(r)


@pytest.mark.slow
def test_twenty_series_from_four_clients_with_a_kill(tmp_path):
    r = run_load(tmp_path / "load", n_series=20, clients=4, kill_after=3, quiet_s=2.0, timeout_s=1500,
                 progress=lambda *_: None)
    assert r["kill"] is not None and r["series"] == 20
    _assert_ok(r)
