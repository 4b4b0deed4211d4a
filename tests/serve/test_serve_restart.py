"""`noduleflow serve` as a real subprocess, SIGKILLed while it processes a series and restarted:
every series ends with exactly one result, computed from all its instances (bench/serve_load.py
does the work and the checks).

Nothing here depends on how fast the machine is: a series counts as complete only when no
association is still sending it, its slices have no gap, and its sender was not cut off (a
series that was arriving when the service died waits for the resend, however long the restart
and the resend take); every wait polls the spool's state with a bound."""
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
