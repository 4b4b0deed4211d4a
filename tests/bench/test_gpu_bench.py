"""`python -m noduleflow.bench.gpu`: the GPU pipeline bench. Without a GPU it refuses the GPU
backends; with a CPU backend in the GPU's place it runs its whole course (no GPU figure)."""
from __future__ import annotations

import json

import pytest


def test_gpu_bench_refuses_without_a_gpu(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    from noduleflow.bench import gpu

    with pytest.raises(SystemExit) as e:
        gpu.main(["--out", str(tmp_path)])
    assert e.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()


def test_gpu_bench_runs_its_course_on_a_cpu_backend(tmp_path):
    from noduleflow.bench import gpu

    r = gpu.run(tmp_path, n_scans=2, backend="onnxruntime-cpu", cpu_backend="onnxruntime-cpu",
                shape_zyx=(60, 128, 128), spacing_zyx_mm=(3.0, 2.2, 2.2))
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["n_scans"] == 2 and len(saved["per_scan"]) == 2 and not saved["preprocess_on_device"]
    assert r["scans_per_s_one_at_a_time"] > 0 and r["scans_per_s_two_in_flight"] > 0
    assert r["stage2_parity_max_abs_logit"] == 0.0  # the same runtime on both sides
    for row in r["per_scan"]:  # the same backend twice finds the same candidates
        assert row["agreement"]["max_centre_mm"] == 0.0 and row["agreement"]["max_prob_diff"] == 0.0
        assert row["agreement"]["n"][0] == row["agreement"]["n"][1] > 0
        assert {"load", "mask", "stage2", "total"} <= set(row["stages_s"])
    md = (tmp_path / "gpu.md").read_text()
    assert "no GPU (script check only" in md and "onnxruntime-cpu on the same scans" in md
