"""noduleflow.bench.onnx_graph runs on the tiny package: node counts, checker, exactness, decision, report."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxslim")


def test_onnx_graph_on_tiny_package(tiny_package, tmp_path):
    from noduleflow.bench import onnx_graph

    r = onnx_graph.measure(tiny_package, repeats=1, batch=4, tile=2, phantom_shape_zyx=(40, 96, 96))
    assert set(r["graphs"]) == {"patch", "dense"}
    assert r["tool"].startswith(("onnxslim", "onnxsim"))
    for g, x in r["graphs"].items():
        n = x["nodes"]
        # by-op counts add up to the totals
        for v in n.values():
            assert sum(v["by_op"].values()) == v["nodes"] > 0
        assert n["slimmed"]["nodes"] <= n["exported"]["nodes"]
        assert n["exported_after_ort_enable_all"]["nodes"] > 0
        assert x["checker_slimmed"] == "ok"
        # slimming folds and removes nodes; it must not change a logit
        assert max(x["max_abs_logit_diff"].values()) <= 1e-5
        assert x["time"]["exported"]["runs"] == x["time"]["slimmed"]["runs"] == 1
        assert x["speedup_slimmed_vs_exported"] > 0
    assert r["graphs"]["patch"]["input_shape"] == [4, 1, 41, 41, 41]
    assert r["graphs"]["dense"]["input_shape"] == [1, 1, 45, 45, 45]
    assert isinstance(r["decision"]["slim_at_export"], bool) and len(r["decision"]["reasons"]) == 2
    md = onnx_graph.markdown(r)
    assert "| patch |" in md and "| dense |" in md and "Decision" in md
    json.dumps(r)  # the report is JSON-serialisable


def test_decision_rule():
    from noduleflow.bench.onnx_graph import decide

    def graph(n0, n1, speedup, diff):
        return {"nodes": {"exported": {"nodes": 10}, "slimmed": {"nodes": 8},
                          "exported_after_ort_enable_all": {"nodes": n0},
                          "slimmed_after_ort_enable_all": {"nodes": n1}},
                "speedup_slimmed_vs_exported": speedup, "max_abs_logit_diff": {"random": diff},
                "checker_slimmed": "ok"}

    assert decide({"graphs": {"patch": graph(5, 5, 1.01, 0.0)}})["slim_at_export"] is False
    assert decide({"graphs": {"patch": graph(5, 4, 1.0, 0.0)}})["slim_at_export"] is True
    assert decide({"graphs": {"patch": graph(5, 5, 1.10, 0.0)}})["slim_at_export"] is True
    # a logit change vetoes it, however fast
    assert decide({"graphs": {"patch": graph(5, 4, 1.10, 1e-3)}})["slim_at_export"] is False
