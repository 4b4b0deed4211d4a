"""bench.bf16: the shipped graphs in OpenVINO's bfloat16 against fp32, on a CPU that has it."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")


def _has_bf16() -> bool:
    from noduleflow.engine.backends.openvino import cpu_capabilities

    return "BF16" in cpu_capabilities()


pytestmark = pytest.mark.skipif(not _has_bf16(), reason="this CPU has no bfloat16 arithmetic (AVX512_BF16 or AMX)")


def test_pair_times_both_and_reports_the_difference():
    from noduleflow.bench.bf16 import _pair
    from noduleflow.engine.package import ModelPackage, default_package_path

    pkg = ModelPackage.load(default_package_path())
    x = np.random.default_rng(0).uniform(0, 1, (4, 2, 41, 41, 41)).astype(np.float32)
    r = _pair(pkg.file("stage2.onnx"), x, repeats=1)
    assert r["input_shape"] == [4, 2, 41, 41, 41] and r["fp32_s"] > 0 and r["bf16_s"] > 0
    assert r["speedup"] == pytest.approx(r["fp32_s"] / r["bf16_s"])
    assert 0 < r["max_abs_prob_diff"] < 0.1 and r["max_abs_logit_diff"] > 0


def test_scan_timing_in_bf16_alternates_and_reports(tmp_path):
    from noduleflow.bench.bf16 import markdown
    from noduleflow.bench.int8 import scan_timing

    t = scan_timing(None, "openvino-cpu", scans=1, repeats=1, shape_zyx=(48, 128, 128), spacing_zyx_mm=(5.0, 2.2, 2.2),
                    precision="bf16")
    assert t["backends"] == {"fp32": "openvino-cpu", "bf16": "openvino-cpu-bf16"} and t["precision"] == "bf16"
    assert t["fp32_over_bf16"]["stage2"] == pytest.approx(t["median_s"]["fp32"]["stage2"] / t["median_s"]["bf16"]["stage2"])
    (a,) = t["top15_agreement"]
    assert 0 <= a["fp32_top15_in_bf16"] <= a["n"] <= 15 and 0 <= a["bf16_top15_in_fp32"] <= a["n"]
    g = {"input_shape": [1], "fp32_s": 2.0, "bf16_s": 1.0, "speedup": 2.0, "max_abs_logit_diff": 0.1,
         "max_abs_prob_diff": 0.01}
    text = markdown({"model_id": "m", "machine": {"cpu": "c", "cores": 2}, "load_average": (0, 0, 0), "command": "c",
                     "graphs": {"stage2": g}, "scan_timing": t})
    assert "| fp32 / bf16 |" in text and "openvino-cpu-bf16" in text and "| stage2 | 1 | 2.000 | 1.000 | 2.00x |" in text
