"""bench.dense_pass: two packages' dense passes on the same grid points, timed and accounted."""
from __future__ import annotations

import pytest

from noduleflow.bench import dense_pass as dp
from noduleflow.engine import ConfigError
from noduleflow.engine.io.dicom_write import write_dicom_series
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    ph = generate_phantom(7, params=PhantomParams(n_nodules=2), shape_zyx=(70, 160, 160), spacing_zyx_mm=(3.5, 2.0, 2.0))
    out = tmp_path_factory.mktemp("dp") / "s0"
    write_dicom_series(ph.volume, out, seed=0)
    return out


def test_two_packages_on_one_scan(tiny_package, tiny_package_e, series):
    r = dp.measure(tiny_package, tiny_package_e, n_scans=0, tiles=(4, 8), repeats=1, backend="onnxruntime-cpu",
                   peak_budget_s=0.05, series=[series])
    assert [s["name"] for s in r["scans"]] == ["s0"] and r["scans"][0]["grid_points"] > 100
    assert {(x["package"], x["architecture"], x["tile_out"]) for x in r["rows"]} == \
        {(p, a, t) for p, a in (("before", "3d-1"), ("after", "3d-e")) for t in (4, 8)}
    for x in r["rows"]:
        assert 0 < x["gflop_needed"] <= x["gflop_done"] and x["seconds"] > 0
        assert x["gflops_needed"] == pytest.approx(x["gflop_needed"] / x["seconds"])
    # the needed work does not depend on the tiling; what is done does
    for p in ("before", "after"):
        need = {x["gflop_needed"] for x in r["rows"] if x["package"] == p}
        assert len(need) == 1
    assert len(r["peak"]["measurements"]) == 2
    best = {p: min(x["seconds"] for x in r["rows"] if x["package"] == p) for p in ("before", "after")}
    assert r["speedup_after_over_before"] == pytest.approx(best["before"] / best["after"])
    text = dp.markdown(r, "python -m noduleflow.bench.dense_pass ...")
    assert "test-3d-1 (3d-1) -> test-3d-e (3d-e)" in text and text.count("| before:") == 2


def test_packages_of_different_grids_are_refused(tiny_package, tmp_path, series):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_package, other)
    m = json.loads((other / "manifest.json").read_text())
    m["contract"]["candidate_rules"]["center_min_hu"] = -500.0  # other grid points
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="dense contracts differ"):
        dp.measure(tiny_package, other, n_scans=0, series=[series], peak_budget_s=0.01)
    with pytest.raises(ConfigError, match="no scans"):
        dp.measure(tiny_package, tiny_package, n_scans=0, peak_budget_s=0.01)
