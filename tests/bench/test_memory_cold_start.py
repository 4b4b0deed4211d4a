"""`noduleflow bench memory` and `noduleflow bench cold-start` run end to end on small phantoms, in
fresh child processes, and write their reports (no timing asserts beyond "measured")."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from noduleflow.cli import main


def test_memory_measures_fresh_detect_processes(tmp_path, capsys):
    out = tmp_path / "memory"
    assert main(["bench", "memory", "--shape", "40", "96", "96", "--spacing", "5", "3", "3", "--out", str(out)]) == 0
    r = json.loads((out / "memory.json").read_text())
    assert [x["stages"] for x in r["rows"]] == ["auto", "1"]
    assert r["rows"][1]["stages_run"] == 1
    for x in r["rows"]:
        assert x["shape_zyx"] == [40, 96, 96]
        assert x["engine_peak_rss_mb_after"]
        # the OS's figure covers the whole process, so it is at least the engine's own high-water mark
        assert x["process_peak_rss_mb"] >= max(x["engine_peak_rss_mb_after"].values()) > 0
        assert x["timings_s"]["total"] > 0
    assert r["command"].startswith("noduleflow bench memory --shape 40 96 96 --spacing 5.0 3.0 3.0")
    assert r["machine"]["cores"] and r["machine"]["cpu"]
    md = (out / "memory.md").read_text()
    assert "| auto (" in md and "| 1 (1) |" in md
    assert "process peak RSS MB" in capsys.readouterr().out


def test_cold_start_warm_only_times_first_and_warm(tmp_path):
    out = tmp_path / "cold"
    # a smaller phantom than warmup's (80 x 192 x 192 at 3 x 1.8 x 1.8 mm) and one warm detection keep
    # the two child processes short
    assert main(["bench", "cold-start", "--warm-only", "--shape", "40", "96", "96", "--spacing", "2.5", "2", "2",
                 "--repeats", "1", "--out", str(out)]) == 0
    r = json.loads((out / "cold_start.json").read_text())
    assert list(r["runs"]) == ["warm_cache", "warm_cache_again"]  # --warm-only: no empty-cache process
    for run in r["runs"].values():
        assert run["first_s"] > 0 and run["warm_s"] > 0 and run["import_s"] > 0
        assert run["process_s"] > run["first_s"] + run["warm_s"]
        assert run["first_over_warm"] == pytest.approx(run["first_s"] / run["warm_s"])
        assert run["backend"] == "auto"
    assert r["shape_zyx"] == [40, 96, 96] and r["precision"] == "fp32" and r["warm_repeats"] == 1
    assert "--warm-only" in r["command"] and r["machine"]["cores"]
    assert "| warm_cache_again | auto |" in (out / "cold_start.md").read_text()


@pytest.mark.parametrize("name, options", [
    ("memory", ["--shape", "--spacing", "--backend", "--model", "--out"]),
    ("cold-start", ["--warm-only", "--backend", "--precision", "--shape", "--spacing", "--repeats", "--out"]),
])
def test_help_lists_the_options(name, options, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", name, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in options:
        assert opt in text, opt


@pytest.mark.parametrize("module", ["memory", "cold_start"])
def test_standalone_module_has_the_same_options(module, capsys):
    """``python -m noduleflow.bench.X`` builds its parser from the same declaration."""
    p = subprocess.run([sys.executable, "-m", f"noduleflow.bench.{module}", "--help"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"python -m noduleflow.bench.{module}" in p.stdout
    assert "--backend" in p.stdout and "--shape" in p.stdout and "--out" in p.stdout


def test_bad_options_are_refused_with_their_value(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "memory", "--backend", "nope"])
    assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err
    assert main(["bench", "cold-start", "--repeats", "0", "--out", str(tmp_path)]) == 2
    assert "got 0" in capsys.readouterr().err
