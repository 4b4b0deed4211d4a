"""bench.prefetch on small phantoms: both ways run, agree, and are reported."""
from __future__ import annotations

import json


def test_prefetch_bench_small(tmp_path):
    from noduleflow.bench.prefetch import run

    r = run(tmp_path, n_scans=2, repeats=1, shape_zyx=(60, 128, 128), spacing_zyx_mm=(4.0, 2.4, 2.4))
    assert r["same_candidates"] is True
    for how in ("one_after_another", "prefetch"):
        assert len(r[how]["seconds"]) == 1 and r[how]["scans_per_s_median"] > 0
    assert r["speedup_median"] == r["speedups"][0] > 0
    assert r["load_s_median"] > 0
    assert json.loads((tmp_path / "prefetch.json").read_text())["n_scans"] == 2
    assert "next scan loaded meanwhile" in (tmp_path / "prefetch.md").read_text()
