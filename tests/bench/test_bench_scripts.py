"""The bench commands (and the candidate-rules sweep of trainer.evaluate) run end to end on tiny
phantoms and produce their JSON keys (no timing asserts)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from noduleflow.bench import load, preprocess
from noduleflow.trainer.evaluate import candidate_rules

TINY = dict(shape_zyx=(60, 96, 96), spacing_zyx_mm=(2.5, 2.0, 2.0))


def test_load_runs_and_readers_agree():
    r = load.run(shape_zyx=(12, 64, 64), spacing_zyx_mm=(2.5, 2.0, 2.0), repeats=1)
    assert r["series"]["files"] == 12
    assert r["voxel_equal"] is True
    assert r["ours"]["best_s"] > 0 and r["simpleitk"]["best_s"] > 0
    assert r["speedup_vs_simpleitk"] == pytest.approx(r["simpleitk"]["best_s"] / r["ours"]["best_s"])
    for key in ("cpu", "cores", "numba", "pydicom", "SimpleITK"):
        assert key in r["machine"]
    assert "x SimpleITK" in load.summary(r)


def test_preprocess_kernels_keys_and_equalities(tmp_path):
    r = preprocess.run(**TINY, repeats=1, ref_repeats=1, dice_scans=0, n_patches=4)
    k = r["kernels"]
    assert k["lung_mask"]["dice_vs_reference"] > 0.99
    assert k["resample"]["max_abs_diff_hu_vs_simpleitk_interior"] <= 1.0
    assert all(c["equal_to_reference"] for c in k["candidates"].values())
    assert k["gather"]["max_abs_diff_vs_reference"] < 1e-6
    assert k["gather"]["bytes_written"] == k["gather"]["patches"] * 41 ** 3 * 4
    for key in ("speedup", "first_s", "ours_s"):
        assert key in k["lung_mask"] and key in k["ccl"]
    for key in ("speedup_vs_simpleitk", "speedup_vs_zoom"):
        assert key in k["resample"]
    md = preprocess.markdown(r)
    assert "lung mask" in md and "np.copyto" in md
    json.dumps(r)  # serialisable


def test_dice_study_covers_special_cases():
    d = preprocess.dice_study(5, shape_zyx=(50, 96, 96), spacing_zyx_mm=(2.5, 2.0, 2.0))
    assert [s["case"] for s in d["scans"]].count("touching_lungs") == 1
    assert [s["case"] for s in d["scans"]].count("one_lung") == 1
    assert 0.0 <= d["min"] <= d["mean"] <= 1.0


def test_kept_uses_the_nodule_radius_in_mm():
    cands = np.array([[10, 10, 10], [30, 30, 30]])
    nod = np.array([[10.0, 10.0, 13.0], [30.0, 30.0, 30.0], [50.0, 50.0, 50.0]])
    k = candidate_rules.kept(cands, nod, np.array([2.0, 0.5, 5.0]), np.array([1.0, 1.0, 1.0]))
    assert k.tolist() == [False, True, False]
    # 3 voxels at 0.5 mm are 1.5 mm: inside a 2 mm radius
    k = candidate_rules.kept(cands, nod[:1], np.array([2.0]), np.array([1.0, 1.0, 0.5]))
    assert k.tolist() == [True]


def test_candidate_rules_sweep_and_choice(tmp_path):
    r = candidate_rules.run(2, 4000, **TINY, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("scan_*.npz"))) == 2
    rows = r["rows"]
    n_rules = len(candidate_rules.CENTER_MIN_HU) * len(candidate_rules.BOX_RULES) * len(candidate_rules.STRIDES)
    n_reach = sum(len(candidate_rules.CENTER_MIN_HU) - 1 for rs in candidate_rules.REACHES.values() for x in rs if x)
    assert len(rows) == n_rules + n_reach
    for stride in candidate_rules.STRIDES:
        none = [x for x in rows if x["stride"] == stride and x["box_rule"] == "none" and x["reach"] == 0]
        # a higher centre threshold never adds candidates
        counts = [x["candidates_per_scan"] for x in none[1:]]
        assert counts == sorted(counts, reverse=True)
        for reach in candidate_rules.REACHES.get(stride, ()):
            if not reach:
                continue
            # reaching out only adds candidates and never loses a nodule
            wide = {x["center_min_hu"]: x for x in rows if x["stride"] == stride and x["reach"] == reach}
            for x in none[1:]:
                assert wide[x["center_min_hu"]]["candidates_per_scan"] >= x["candidates_per_scan"]
                assert wide[x["center_min_hu"]]["nodules_kept"] >= x["nodules_kept"]
    assert set(r["chosen"]) == {"4", "2", "4+reach2", "2+reach1"}
    assert "| stride |" in candidate_rules.markdown(r)
    # cached scans give the same table
    again = candidate_rules.run(2, 4000, **TINY, cache_dir=tmp_path)
    assert [x["candidates_per_scan"] for x in again["rows"]] == [x["candidates_per_scan"] for x in rows]


def test_speed_runs_end_to_end_with_baseline(tiny_package, tmp_path):
    from noduleflow.bench import speed

    ckpt = tiny_package.parent / "ckpt" / "best.safetensors"
    r = speed.run(1, tiny_package, 40, tmp_path, seed0=4000, shape_zyx=TINY["shape_zyx"],
                  spacing_zyx_mm=TINY["spacing_zyx_mm"], checkpoint=ckpt, peak_budget_s=0.5)
    row = r["per_scan"][0]
    f = r["flops"]["all_scans"]
    assert 0 < f["gflop_needed"] <= f["gflop_done"] and f["needed_over_done"] <= 1
    assert r["flops"]["peak"]["matmul_gflops"] > 0 and r["flops"]["peak"]["conv3d_gflops"] > 0
    assert "achieved/peak on needed work" in speed.markdown(r)
    # the mask against its reference and the resampling against SimpleITK, in the same run
    rs = r["resample_vs_simpleitk"]
    assert r["mask_speedup_vs_reference"] > 0 and rs["speedup_vs_simpleitk"] > 0
    assert rs["in_shape_zyx"] == list(TINY["shape_zyx"]) and rs["max_abs_diff_hu_vs_simpleitk_interior"] < 2
    text = speed.markdown(r)
    assert "vs the scipy/skimage reference" in text and "to 1 mm vs SimpleITK" in text
    stages = row["stages_s"]
    for k in ("load", "mask", "resample", "candidates", "inference", "total"):
        assert stages[k] >= 0
    assert stages["total"] >= stages["inference"]
    assert row["grid_points"] > 40
    assert r["dense_over_patch_stream"] == pytest.approx(row["dense_points_per_s"] / row["patch_stream_points_per_s"])
    b = r["baseline"]
    assert b["points_per_s"] > 0 and b["mask_voxels"] > 0
    assert r["scan_speedup_vs_baseline"] > 0
    assert [x["tile_out"] for x in r["dense_tile_sweep"]] == list(speed.TILES)
    assert all(x["seconds"] > 0 for x in r["dense_tile_sweep"])
    sweep = r["patch_backend_batch_sweep"]
    names = list(dict.fromkeys(x["backend"] for x in sweep))
    assert names[0] == "onnxruntime-cpu" and all(x["points_per_s"] > 0 for x in sweep)
    for n in names:
        assert [x["batch"] for x in sweep if x["backend"] == n] == list(speed.BATCHES)
    # the CPU backends installed, side by side on the last scan (no stage 2 in this package)
    cb = r["cpu_backends"]
    bf16 = set()
    if "openvino-cpu" in names:
        from noduleflow.engine.backends.openvino import cpu_capabilities

        bf16 = {"openvino-cpu-bf16"} if "BF16" in cpu_capabilities() else set()  # the same graphs in bf16
    assert cb["backends"][0] == "onnxruntime-cpu" and set(cb["backends"]) == set(names) | bf16
    # each variant's dense pass on the last scan against its own arithmetic's peak
    assert set(r["flops"]["last_scan_by_variant"]) == set(names) | bf16
    assert cb["stage2_candidates"] is None and cb["grid_points"] == r["per_scan"][-1]["grid_points"]
    for n in cb["backends"]:
        assert set(cb["median_s"][n]) == {"scan", "dense_pass"} and len(cb["runs_s"][n]["scan"]) == 3
        assert cb["speedup_over_onnxruntime"][n]["dense_pass"] == pytest.approx(
            cb["median_s"]["onnxruntime-cpu"]["dense_pass"] / cb["median_s"][n]["dense_pass"])
    assert r["backend"] == names[-1]  # auto: OpenVINO when installed
    if len(names) > 1:
        assert "over onnxruntime-cpu: openvino-cpu" in speed.markdown(r)
    assert r["peak_rss_mb"] > 100 and row["dense_voxels_per_s"] > 0
    assert (tmp_path / "speed_cpu_stages.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "speed_cpu.json").read_text())
    assert saved["model_id"] == "test-3d-1"
    assert "dense vs patch" in (tmp_path / "speed_cpu.md").read_text()


def test_ort_settings_measures_every_combination(tiny_package):
    from noduleflow.bench import ort_settings

    r = ort_settings.measure(tiny_package, repeats=1, tile=2)
    n = len(r["rows"]) // 2
    assert n >= 6  # 3 optimisation levels x arena on/off x thread counts
    for g in ("dense.onnx", "patch.onnx"):
        rows = [x for x in r["rows"] if x["graph"] == g]
        assert len(rows) == n and all(x["best_s"] > 0 for x in rows)
        assert r[f"fastest_{g}"]["best_s"] == min(x["best_s"] for x in rows)


def test_speed_cpu_backends_add_the_shipped_int8_stage2(tmp_path):
    """With the shipped two-stage package (it carries stage2_int8.onnx) and OpenVINO installed,
    the CPU-backend comparison adds openvino-cpu-int8 (scan and stage 2; its dense pass is fp32's,
    not run twice) and its ratio to openvino-cpu, reported in the markdown."""
    pytest.importorskip("openvino")
    from noduleflow.bench import speed
    from noduleflow.bench.speed_report import backend_lines
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.io.dicom_write import write_dicom_series
    from noduleflow.engine.package import default_package_path
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    ph = generate_phantom(4, params=PhantomParams(n_nodules=2), **TINY)
    write_dicom_series(ph.volume, tmp_path / "scan")
    with Detector(stages="1", mode="dense") as d:
        pre = preprocess(ph.volume, d.spec)
        centres = d.scorer.centres(pre)
    from noduleflow.engine.backends.openvino import cpu_capabilities

    b = speed.cpu_backends(default_package_path(), tmp_path / "scan", pre, centres, repeats=1)
    bf16 = "BF16" in cpu_capabilities()
    assert b["backends"][-2 if bf16 else -1] == "openvino-cpu-int8" and "openvino-cpu" in b["backends"]
    assert set(b["median_s"]["openvino-cpu-int8"]) == {"scan", "stage2"}
    assert set(b["median_s"]["openvino-cpu"]) == {"scan", "stage2", "dense_pass"}
    q = b["int8_over_fp32_openvino"]
    med = b["median_s"]
    assert q["stage2"] == pytest.approx(med["openvino-cpu"]["stage2"] / med["openvino-cpu-int8"]["stage2"])
    text = "\n".join(backend_lines({"cpu_backends": b}))
    assert "openvino-cpu-int8 (stage 2's INT8 graph" in text and "openvino-cpu-int8" in text.split("stage 2 (")[1]
    # a CPU with bfloat16 adds openvino-cpu-bf16: its dense pass as well (the same graphs in bf16)
    assert ("openvino-cpu-bf16" in b["backends"]) == bf16
    if bf16:
        assert set(b["median_s"]["openvino-cpu-bf16"]) == {"scan", "stage2", "dense_pass"}
        assert set(b["bf16_over_fp32_openvino"]) == {"scan", "stage2", "dense_pass"}
        assert "openvino-cpu-bf16 (the same graphs in bfloat16" in text
        # its dense pass against the bf16 peak, the fp32 one's against the float32 peak
        pk = {"matmul_gflops": 100.0, "conv3d_gflops": 50.0, "conv3d_bf16_gflops": 200.0}
        flops = {"peak": pk, "per_scan": [{"flop_done": 4e9, "flop_needed": 2e9}]}
        acc = speed.variant_accounting(flops, b)
        assert set(acc) == {"onnxruntime-cpu", "openvino-cpu", "openvino-cpu-bf16"}
        t = b["median_s"]["openvino-cpu-bf16"]["dense_pass"]
        assert acc["openvino-cpu-bf16"]["needed_over_conv3d_peak"] == pytest.approx(2.0 / t / 200.0)
        t = b["median_s"]["openvino-cpu"]["dense_pass"]
        assert acc["openvino-cpu"]["needed_over_conv3d_peak"] == pytest.approx(2.0 / t / 50.0)


def test_speed_checkpoint_must_be_the_packages_architecture(tiny_package):
    """The baseline and the compiled graph stand for the package's stage-1 graphs: a checkpoint of
    another architecture is refused before any timing; the shipped package's default checkpoint is
    the one its graphs were exported from (the same logits)."""
    pytest.importorskip("torch")
    import onnxruntime as ort
    import torch

    from noduleflow.bench.speed import stage1_checkpoint
    from noduleflow.engine import ConfigError
    from noduleflow.engine.package import ModelPackage, default_package_path
    from noduleflow.trainer.checkpoint import load_checkpoint, shipped_checkpoint

    tiny = ModelPackage.load(tiny_package)  # a 3D-1
    own = tiny_package.parent / "ckpt" / "best.safetensors"
    assert stage1_checkpoint(tiny, own) == own
    with pytest.raises(ConfigError, match="is a 3d-e, package test-3d-1 a 3d-1"):
        stage1_checkpoint(tiny)
    shipped = ModelPackage.load(default_package_path())
    assert stage1_checkpoint(shipped) == shipped_checkpoint(1)
    model, _ = load_checkpoint(shipped_checkpoint(1))
    x = np.random.default_rng(0).uniform(size=(3, 1, 41, 41, 41)).astype(np.float32)
    sess = ort.InferenceSession(str(shipped.file("patch.onnx")), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(None, {sess.get_inputs()[0].name: x})[0].reshape(-1)
    with torch.no_grad():
        torch_logits = model.eval()(torch.from_numpy(x)).numpy().reshape(-1)
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4


def test_bench_models_refuses_bad_counts_and_reports_the_ratio(capsys):
    from noduleflow.bench import models

    with pytest.raises(SystemExit) as e:
        models.main(["--model", "a", "--reference", "b", "--scans", "0"])
    assert e.value.code == 2 and "--scans and --repeats must be >= 1, got 0" in capsys.readouterr().err
    side = {"package": "p", "total_s": 3.0, "stages_s": {"stage2": 2.0}, "scored_median": 235}
    res = {"machine": {"cpu": "x"}, "scans": 1, "repeats": 1, "shape_zyx": [1, 2, 3], "backend": "b",
           "model": side, "reference": {**side, "package": "q", "total_s": 2.0, "stages_s": {"mask": 1.0}},
           "ratio_total": 1.5}
    text = models.markdown(res)
    assert "1.50x" in text and "| mask | 0.000 | 1.000 |" in text and "| stage2 | 2.000 | 0.000 |" in text
