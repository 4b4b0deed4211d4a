import json

from noduleflow.bench import memory


def test_memory_bench_measures_fresh_detect_processes(tmp_path):
    r = memory.run((60, 160, 160), (3.0, 2.0, 2.0), tmp_path, seed=5, backends=("auto", "onnxruntime-cpu"))
    assert [x["stages"] for x in r["rows"]] == ["auto", "1", "auto", "1"]
    assert [x["backend"] for x in r["rows"]][2:] == ["onnxruntime-cpu"] * 2
    for x in r["rows"]:
        assert x["shape_zyx"] == [60, 160, 160]
        # the OS figure covers the whole process, so it is at least the engine's own high-water mark
        assert x["process_peak_rss_mb"] >= max(x["engine_peak_rss_mb_after"].values()) > 50
        assert x["timings_s"]["total"] > 0
    assert r["rows"][0]["stages_run"] == 2 and r["rows"][1]["stages_run"] == 1
    assert json.loads((tmp_path / "memory.json").read_text())["rows"][0]["stages"] == "auto"
    assert "| auto (2) | onnxruntime-cpu |" in (tmp_path / "memory.md").read_text()
