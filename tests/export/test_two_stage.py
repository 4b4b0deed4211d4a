"""Two-stage packages: stage2.onnx exported and declared in the contract, the engine running
stage 1 + stage 2 by default, the stage-2 score being what the graph gives on the candidates'
context patches, averaged over the 8 flips and calibrated."""
from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

from noduleflow.engine import ConfigError, PackageError
from noduleflow.engine.contract import InputContract, Stage1Spec, Stage2Spec, split_stage_settings
from noduleflow.engine.package import ModelPackage, write_manifest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    """Random-weight 3D-1 (stage 1) and ms-3d1 (stage 2) checkpoints exported by the CLI with a
    stage-2 spec file: blobs as stage 1, 40 candidates, calibration scale 0.5 and bias -1."""
    from noduleflow.cli import main
    from noduleflow.trainer.checkpoint import save_checkpoint
    from noduleflow.trainer.models import build_model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("two_stage")
    save_checkpoint(root / "s1", build_model("3d-1").eval(), {"model": "3d-1", "model_kwargs": {}}, "best")
    save_checkpoint(root / "s2", build_model("ms-3d1").eval(), {"model": "ms-3d1", "model_kwargs": {}}, "best")
    from noduleflow.engine.lungmask import LungMaskParams
    from noduleflow.engine.preprocess import PreprocessSpec

    # the preprocessing stage 2 was trained on replaces the stage-1 checkpoint's
    pre = PreprocessSpec(lung=LungMaskParams(dilate_mm=3.0, wall_lesion_mm=12.0)).to_dict()
    spec = {"preprocess": pre, "stage1": {"generator": "union", "max_candidates": 40, "blob_min_response": 10.0},
            "stage2": {"tta_flips": 4, "calibration_scale": 0.5, "calibration_bias": -1.0},
            "_note": "keys starting with _ are comments"}
    (root / "spec.json").write_text(json.dumps(spec))
    rc = main(["export", str(root / "s1" / "best.safetensors"), str(root / "pkg"), "--model-id", "test-2stage",
               "--stage2", str(root / "s2" / "best.safetensors"), "--stage2-spec", str(root / "spec.json")])
    assert rc == 0
    return root


@pytest.fixture(scope="module")
def phantom():
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    return generate_phantom(5, params=PhantomParams(n_nodules=2), shape_zyx=(70, 160, 160),
                            spacing_zyx_mm=(2.5, 1.6, 1.6))


def test_package_declares_both_stages(two_stage):
    pkg = ModelPackage.load(two_stage / "pkg")
    assert pkg.has_stage2 and {"patch.onnx", "dense.onnx", "stage2.onnx"} <= set(pkg.manifest.files)
    assert pkg.contract.stage1 == Stage1Spec(generator="union", max_candidates=40, blob_min_response=10.0)
    assert pkg.contract.stage2 == Stage2Spec(tta_flips=4, calibration_scale=0.5, calibration_bias=-1.0)
    assert pkg.manifest.export["parity"]["stage2_max_abs_logit_diff"] <= 1e-4
    assert pkg.manifest.training["stage2"]["model"] == "ms-3d1"
    assert pkg.contract.preprocess.lung.wall_lesion_mm == 12.0  # from the spec file, not the checkpoint
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(two_stage / "pkg" / "stage2.onnx")).metadata_props}
    assert json.loads(meta["contract"])["stage1"]["max_candidates"] == 40


def test_stage_settings(two_stage, tmp_path):
    import shutil

    from noduleflow.engine.detector import Detector

    det = Detector(two_stage / "pkg")
    assert det.two_stage and det.stage2_backend.channels == 2
    one = Detector(two_stage / "pkg", stages="1")
    assert not one.two_stage and one.stage2_backend is None
    # a one-stage package asked for two stages: an error, not a silent stage 1
    pkg_dir = tmp_path / "one"
    shutil.copytree(two_stage / "pkg", pkg_dir)
    (pkg_dir / "stage2.onnx").unlink()
    m = ModelPackage.load(two_stage / "pkg").manifest
    write_manifest(pkg_dir, dataclasses.replace(m, contract=dataclasses.replace(m.contract, stage1=None, stage2=None)))
    with pytest.raises(ConfigError, match="no stage-2 graph"):
        Detector(pkg_dir, stages="2")
    assert not Detector(pkg_dir).two_stage


def test_detect_two_stage_scores_are_the_graphs(two_stage, phantom):
    """Every returned probability is sigmoid(0.5 * mean-over-4-flips logit - 1) of stage2.onnx on the
    candidate's context patches, ranked one per lesion, with the stage-1 extent as diameter."""
    import onnxruntime as ort

    from noduleflow.engine.context import ContextVolume
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.patches import Normalisation
    from noduleflow.engine.postprocess import lesion_order
    from noduleflow.engine.preprocess import preprocess

    det = Detector(two_stage / "pkg", top_k=10)
    res = det.detect(phantom.volume, keep_preprocessed=True)
    assert res.meta["stages"] == 2 and 1 <= len(res) <= 10
    assert {"blobs", "stage2", "inference", "clustering"} <= set(res.timings_s)
    assert 0 < res.n_scored <= 40
    probs = np.array([c.prob for c in res])
    assert (np.diff(probs) <= 0).all()
    assert all(c.diameter_mm is not None and 5.0 <= c.diameter_mm <= 30.0 for c in res)

    pre = preprocess(phantom.volume, det.spec)
    cand = det.stage1(pre)
    assert len(cand) == res.n_scored
    k = det.contract
    norm = Normalisation(*k.hu_window, pad_hu=k.pad_hu)
    x = ContextVolume(pre.volume.hu, norm, k.patch_size, 2).patches(cand.centres_zyx)
    sess = ort.InferenceSession(str(two_stage / "pkg" / "stage2.onnx"), providers=["CPUExecutionProvider"])
    views = [np.ascontiguousarray(np.flip(x, tuple(2 + a for a in range(3) if f >> a & 1))) for f in range(4)]
    logit = np.mean([sess.run(None, {"patch": v})[0].reshape(-1) for v in views], axis=0)
    want = 1 / (1 + np.exp(-(0.5 * logit - 1.0)))
    order = lesion_order(cand.centres_zyx, cand.radius_mm, want, det.contract.stage2.dedup_factor)[:len(res)]
    assert np.allclose(probs, want[order], atol=1e-5)
    got_xyz = np.array([c.center_xyz_mm for c in res])
    assert np.allclose(got_xyz, pre.volume.voxel_to_world(cand.centres_zyx[order]).reshape(-1, 3))


def test_flips8_are_the_eight_axis_flips():
    from noduleflow.engine.context import flips8

    x = np.random.default_rng(0).normal(size=(2, 2, 3, 4, 5)).astype(np.float32)
    views = list(flips8(x))
    assert len(views) == 8 and views[0] is x
    flat = {v.tobytes() for v in views}
    assert len(flat) == 8
    assert np.array_equal(views[7], x[:, :, ::-1, ::-1, ::-1])


def test_stage2_spec_and_file_come_together(two_stage, tmp_path):
    import shutil

    pkg_dir = tmp_path / "pkg"
    shutil.copytree(two_stage / "pkg", pkg_dir)
    (pkg_dir / "stage2.onnx").unlink()
    m = ModelPackage.load(two_stage / "pkg").manifest
    write_manifest(pkg_dir, m)  # rehashes: stage2.onnx is no longer listed, the contract still says stage 2
    with pytest.raises(PackageError, match="stage2"):
        ModelPackage.load(pkg_dir)
    # the contract without the stages: a one-stage package again
    write_manifest(pkg_dir, dataclasses.replace(m, contract=dataclasses.replace(m.contract, stage1=None, stage2=None)))
    assert not ModelPackage.load(pkg_dir).has_stage2


def test_stage2_graph_in_the_patch_slot_is_refused(two_stage, tmp_path):
    import shutil

    from noduleflow.engine.backends import open_backend

    pkg_dir = tmp_path / "pkg"
    shutil.copytree(two_stage / "pkg", pkg_dir)
    shutil.copy(pkg_dir / "stage2.onnx", pkg_dir / "patch.onnx")
    write_manifest(pkg_dir, ModelPackage.load(two_stage / "pkg").manifest)
    with pytest.raises(PackageError, match="patch.onnx"):
        open_backend(ModelPackage.load(pkg_dir), "onnxruntime-cpu", graph="patch")


@pytest.mark.parametrize("bad, match", [
    ({"channels": 0}, "channels"), ({"generator": "dots"}, "generator"), ({"max_candidates": 0}, "max_candidates"),
    ({"blob_min_response": -1}, "blob_min_response"), ({"tta_flips": 3}, "tta_flips"),
    ({"tta_flips": True}, "tta_flips"),
    ({"tta_top": -1}, "tta_top"), ({"tta_top": 2.5}, "tta_top"),
    ({"calibration_scale": 0}, "calibration_scale"), ({"calibration_bias": float("nan")}, "calibration_bias"),
])
def test_stage_specs_reject_bad_values(bad, match):
    with pytest.raises(ConfigError, match=match):
        split_stage_settings(bad)


def test_contract_roundtrip_with_both_stages():
    k = InputContract(dense_stride=4, dense_offset=20, stage1=Stage1Spec(max_candidates=77), stage2=Stage2Spec())
    assert InputContract.from_dict(json.loads(json.dumps(k.to_dict()))) == k
    with pytest.raises(ConfigError, match="stage2"):
        InputContract.from_dict({"stage1": {}, "stage2": {"tta_flips": 4, "unknown": 1}})
    # a stage-1 key in the stage-2 block: format 3 keeps them apart
    with pytest.raises(ConfigError, match="stage2 must be an object with keys among"):
        InputContract.from_dict({"stage1": {}, "stage2": {"max_candidates": 5}})
    with pytest.raises(ConfigError, match="come together"):
        InputContract(stage2=Stage2Spec())
    assert Stage2Spec(calibration_scale=2.0, calibration_bias=1.0).calibrate([0.0, -0.5]).tolist() == \
        pytest.approx([1 / (1 + np.exp(-1.0)), 0.5])


def test_stage_settings_read_flat_or_by_stage():
    """A flat object of both stages' keys (a format-2 manifest's stage2 block, an older
    --stage2-spec file) reads as the two blocks do."""
    flat = {"generator": "blobs", "max_candidates": 150, "subsolid_candidates": 50, "tta_top": 25,
            "calibration_scale": 1.8, "_fit": {"note": "ignored"}}
    nested = {"stage1": {"generator": "blobs", "max_candidates": 150, "subsolid_candidates": 50},
              "stage2": {"tta_top": 25, "calibration_scale": 1.8}}
    s1, s2 = split_stage_settings(flat)
    assert (s1, s2) == split_stage_settings(nested)
    assert s1.subsolid_candidates == 50 and s2.tta_top == 25 and s1.uses_cnn is False
    with pytest.raises(ConfigError, match="unknown stage settings"):
        split_stage_settings({"max_candidates": 5, "colour": "red"})


def test_format2_manifest_reads_with_its_stage1_settings_split_out(tmp_path, caplog):
    """The shipped package as format 2 wrote it (stage 1's settings inside contract.stage2) opens
    with the same contract as format 3, and says it read an older format."""
    import logging
    import shutil

    from noduleflow.engine.package import default_package_path

    pkg = tmp_path / "pkg"
    shutil.copytree(default_package_path(), pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m["contract"]["stage2"] = {**m["contract"].pop("stage1"), **m["contract"]["stage2"]}
    m["format_version"] = 2
    (pkg / "manifest.json").write_text(json.dumps(m))
    with caplog.at_level(logging.INFO, logger="noduleflow.engine.package"):
        old = ModelPackage.load(pkg)
    assert old.contract == ModelPackage.load(default_package_path()).contract
    assert "format version 2" in caplog.text


def test_bench_speed_reports_both_stages(two_stage, tmp_path):
    from noduleflow.bench import speed

    r = speed.run(1, two_stage / "pkg", 20, tmp_path, seed0=4000, baseline=False, shape_zyx=(60, 128, 128),
                  spacing_zyx_mm=(2.5, 2.0, 2.0), batches=(8,), peak_budget_s=0.5)
    t = r["two_stage"]
    assert {"blobs", "stage2", "total"} <= set(t["stage_s_median"])
    row = r["per_scan"][0]
    assert t["over_stage1_only_median"] == pytest.approx(row["two_stage_stages_s"]["total"] /
                                                         row["stages_s"]["total"])
    assert "stage2" not in row["stages_s"]  # the stage-1-only detection beside it
    assert "two stages" in (tmp_path / "speed_cpu.md").read_text()
    f2 = t["stage2_flops"]
    assert f2["network_runs"] == row["two_stage_candidates"] * 4  # 4 flips, every candidate
    assert f2["gflops"] > 0 and 0 < f2["over_matmul_peak"]
    assert "stage 2:" in (tmp_path / "speed_cpu.md").read_text()
    sm = t["stage2_streams"]  # ONNX Runtime's default streams against one batch at a time, same candidates
    assert sm["streams"] >= 1 and f2["streams"] >= 1 and sm["candidates"] > 0
    cb = r["cpu_backends"]  # every CPU backend installed on the same scan, stage 2 on the same candidates
    assert cb["stage2_candidates"] == sm["candidates"]
    assert all(set(cb["median_s"][n]) == {"scan", "stage2", "dense_pass"} for n in cb["backends"])
    assert len(sm["runs_s"]["default"]) == len(sm["runs_s"]["one"]) == 3
    assert sm["one_stream_over_default"] == pytest.approx(sm["seconds_one_stream"] / sm["seconds_default"])
    assert "batches at once" in (tmp_path / "speed_cpu.md").read_text()


def test_lesion_order_keeps_one_candidate_per_lesion():
    from noduleflow.engine.postprocess import lesion_order

    c = np.array([[0, 0, 0], [5, 0, 0], [20, 0, 0], [22.5, 0, 0]], float)
    r = np.array([4.0, 2.0, 2.0, 1.0])
    score = np.array([0.2, 0.9, 0.8, 0.7])
    # 1 (best) covers 0 (5 mm < 1.5 x max(2, 4) = 6); 2 covers 3 (2.5 mm < 1.5 x 2)
    assert lesion_order(c, r, score, 1.5).tolist() == [1, 2]
    assert lesion_order(c, r, score, 0.0).tolist() == [1, 2, 3, 0]
    # factor 1: 5 mm is beyond max(2, 4) = 4 and 2.5 mm beyond max(2, 1) = 2: all four are kept
    assert lesion_order(c, r, score, 1.0).tolist() == [1, 2, 3, 0]


def test_tta_top_flips_only_the_best_by_the_first_view(two_stage, phantom, tmp_path):
    """stage2.tta_top = 5: every candidate gets the first view's logit, the 5 best by it the mean
    over the 4 flips; the same as running stage2.onnx by hand."""
    import shutil

    import onnxruntime as ort

    from noduleflow.engine.context import ContextVolume
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.patches import Normalisation
    from noduleflow.engine.preprocess import preprocess

    pkg = tmp_path / "pkg"
    shutil.copytree(two_stage / "pkg", pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m["contract"]["stage2"]["tta_top"] = 5
    (pkg / "manifest.json").write_text(json.dumps(m))
    det = Detector(pkg)
    assert det.contract.stage2.tta_top == 5 and det.contract.stage2.tta_flips == 4
    pre = preprocess(phantom.volume, det.spec)
    cand = det.stage1(pre)
    assert len(cand) > 5
    got = det.stage2_scorer(pre, cand.centres_zyx)
    k = det.contract
    x = ContextVolume(pre.volume.hu, Normalisation(*k.hu_window, pad_hu=k.pad_hu), k.patch_size, 2).patches(
        cand.centres_zyx)
    sess = ort.InferenceSession(str(pkg / "stage2.onnx"), providers=["CPUExecutionProvider"])
    views = [sess.run(None, {"patch": np.ascontiguousarray(np.flip(x, tuple(2 + a for a in range(3)
                                                                          if f >> a & 1)))})[0]
             .reshape(-1) for f in range(4)]
    want = views[0].astype(np.float64).copy()
    best = np.argsort(-views[0], kind="stable")[:5]
    want[best] = np.mean([v[best] for v in views], axis=0)
    assert np.allclose(got, want, atol=1e-4)
    assert not np.allclose(got[best], views[0][best], atol=1e-6)  # the extra views did change the best


def test_stage2_select_ranks_as_the_engine_detects(two_stage, tmp_path):
    """trainer.evaluate.stage2_select scores a package as `Detector.find` detects (same candidates, same
    order), with stage 1 cached by its settings."""
    from noduleflow.engine.detector import Detector
    from noduleflow.trainer.data.cohort import CohortCache
    from noduleflow.trainer.evaluate.cohort import detect_package
    from noduleflow.trainer.evaluate.stage2_select import cached_stage1, evaluate, stage1_key
    from noduleflow.trainer.evaluate.strata import scan_result, score_cohort

    cache = CohortCache(tmp_path / "cohorts", phantom_kwargs={"shape_zyx": (70, 140, 140),
                                                              "spacing_zyx_mm": (2.0, 1.6, 1.6)})
    scans = [cache.get(s) for s in (11, 12)]
    det = Detector(two_stage / "pkg", stages="2")
    got = evaluate(det, scans, tmp_path / "s1", progress=False)
    ref = score_cohort([scan_result(s, *detect_package(det, s)) for s in scans], bootstrap=0)["all"]
    assert sum(len(s.nodules) for s in scans) > 0 and got["sensitivity_at_k"]["100"] > 0  # something to rank
    assert got["cpm"] == pytest.approx(ref["cpm"])
    assert got["sensitivity_at_k"] == {k: ref["sensitivity_at_k"][k]["sensitivity"] for k in got["sensitivity_at_k"]}
    cached = sorted((tmp_path / "s1" / f"stage1-{stage1_key(det.contract)}").glob("*.npz"))
    assert [p.stem for p in cached] == ["11", "12"]
    c, r = cached_stage1(det, scans[0], tmp_path / "s1")  # read back, equal to a fresh run
    fresh = det.stage1(scans[0].pre)
    assert np.array_equal(c, fresh.centres_zyx) and np.array_equal(r, fresh.radius_mm)


def test_stage2_tuning_rows_score_as_the_engine(two_stage, phantom, tmp_path):
    """trainer.evaluate.stage2_tuning's variant (F flips for the best N by the first view), ranked from its
    cache of all 8 flips, equals `Detector.stage2_scorer` of a package declaring F and N."""
    import shutil

    from noduleflow.engine.detector import Detector
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.trainer.data.cohort import CohortScan
    from noduleflow.trainer.evaluate.stage2_tuning import rank, scan_scores

    det = Detector(two_stage / "pkg", stages="2")
    pre = preprocess(phantom.volume, det.spec)
    scan = CohortScan(seed=7, pre=pre, nodules=(), excluded=(), meta={})
    sc = scan_scores(det, scan, tmp_path / "cache")
    assert (tmp_path / "cache" / "7.npz").exists() and sc["logits"].shape == (len(sc["centres"]), 8)
    for flips, top in ((2, 3), (4, 0), (4, 6)):
        pkg = tmp_path / f"pkg_{flips}_{top}"
        shutil.copytree(two_stage / "pkg", pkg)
        m = json.loads((pkg / "manifest.json").read_text())
        m["contract"]["stage2"].update(tta_flips=flips, tta_top=top)
        (pkg / "manifest.json").write_text(json.dumps(m))
        want = Detector(pkg, stages="2").stage2_scorer(pre, sc["centres"])
        assert np.allclose(rank(sc, len(sc["centres"]), flips, False, top), want, atol=1e-4), (flips, top)


def test_stage2_streams_run_batches_at_once_in_order(two_stage, phantom):
    """The CPU stage-2 backend runs one single-threaded batch per core by default; `infer_many`
    overlaps `streams` batches (seen running at once), returns them in order, and gives what one
    batch at a time gives; the detector's stage-2 logits do not depend on the streams."""
    import threading
    import time

    from noduleflow.engine.backends import open_backend
    from noduleflow.engine.backends.onnxruntime import default_streams
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.preprocess import preprocess

    assert default_streams("stage2", "cpu", 4) == 4 and default_streams("dense", "cpu", 4) == 1
    assert default_streams("stage2", "cpu", 16) == 4 and default_streams("stage2", "cpu", 1) == 1
    assert default_streams("patch", "cpu", 4) == 1 and default_streams("stage2", "cuda", 4) == 1
    pkg = ModelPackage.load(two_stage / "pkg")
    with pytest.raises(ConfigError, match="streams must be >= 1, got 0"):
        open_backend(pkg, "onnxruntime-cpu", graph="stage2", streams=0)
    rng = np.random.default_rng(0)
    batches = [rng.random((n, 2, 41, 41, 41), dtype=np.float32) for n in (3, 1, 5, 2, 4)]
    with open_backend(pkg, "onnxruntime-cpu", graph="stage2", streams=1, threads=1) as one:
        want = [one.infer(b) for b in batches]
    with open_backend(pkg, "onnxruntime-cpu", graph="stage2", streams=3, threads=3) as many:
        assert many.describe()["streams"] == 3
        running, peak, lock = [0], [0], threading.Lock()
        run = many._infer

        def slow(batch, extra):  # each run lasts long enough for the next to start beside it
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.2)
            try:
                return run(batch, extra)
            finally:
                with lock:
                    running[0] -= 1

        many._infer = slow
        got = list(many.infer_many(iter(batches)))
    assert peak[0] >= 2
    assert [len(g) for g in got] == [len(b) for b in batches]
    for g, w in zip(got, want):
        assert np.allclose(g, w, atol=1e-5)

    dets = [Detector(two_stage / "pkg", backend_options={"streams": s}) for s in (1, 2)]
    assert [d.stage2_backend.streams for d in dets] == [1, 2]
    pre = preprocess(phantom.volume, dets[0].spec)
    cand = dets[0].stage1(pre)
    a, b = (d.stage2_scorer(pre, cand.centres_zyx) for d in dets)
    assert len(a) == len(cand) > 8 and np.allclose(a, b, atol=1e-5)


def test_export_int8_writes_a_calibrated_stage2_graph_the_cpu_backends_run(two_stage, phantom, tmp_path, capsys):
    """`export --int8` writes stage2_int8.onnx (hashed, the contract in its metadata, its error
    against fp32 in the manifest and printed); `export.int8.quantize` on the same calibration
    patches makes it again byte for byte (the calibration is reproducible); precision
    "int8" runs it on onnxruntime-cpu and openvino-cpu, named so, scoring close to fp32; a package
    without one refuses int8, naming the file and the export option."""
    pytest.importorskip("onnxruntime.quantization")
    import onnx

    from noduleflow.cli import main
    from noduleflow.engine.detector import Detector
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.export.int8 import calibration_patches, quantize

    out = tmp_path / "pkg8"
    rc = main(["export", str(two_stage / "s1" / "best.safetensors"), str(out), "--model-id", "test-2stage",
               "--stage2", str(two_stage / "s2" / "best.safetensors"), "--stage2-spec", str(two_stage / "spec.json"),
               "--int8"])
    assert rc == 0 and "stage2_int8_max_abs_prob_diff" in capsys.readouterr().out
    pkg = ModelPackage.load(out)
    assert "stage2_int8.onnx" in pkg.manifest.files and "patch_int8.onnx" not in pkg.manifest.files
    rep = pkg.manifest.export["int8"]
    assert rep["stage2_calibration_patches"] == 256 and 0 < rep["stage2_int8_max_abs_prob_diff"] < 0.5
    g = onnx.load(str(out / "stage2_int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in g.graph.node)
    assert {p.key: p.value for p in g.metadata_props}["model_id"] == "test-2stage"
    # the fp32 graphs are those of the package exported without --int8
    for f in ("patch.onnx", "dense.onnx", "stage2.onnx"):
        assert (out / f).read_bytes() == (two_stage / "pkg" / f).read_bytes()
    again = quantize(out / "stage2.onnx", tmp_path / "again.onnx", calibration_patches(pkg.contract, "stage2")[0])
    assert again.read_bytes() == (out / "stage2_int8.onnx").read_bytes()

    backends = ["onnxruntime-cpu"] + (["openvino-cpu"] if importlib.util.find_spec("openvino") else [])
    fp32 = Detector(out, backend="onnxruntime-cpu")
    pre = preprocess(phantom.volume, fp32.spec)
    c = fp32.stage1(pre).centres_zyx
    a = fp32.stage2_scorer(pre, c)
    for name in backends:
        det = Detector(out, backend=name, backend_options={"precision": "int8"})
        assert det.backend_name == f"{name}-int8" and det.stage2_backend.precision == "int8"
        assert det.backend.precision == "fp32"  # the precision is stage 2's: stage 1's CNN (union) stays fp32
        b = det.stage2_scorer(pre, c)
        assert len(b) == len(c) > 8 and not np.array_equal(a, b)
        assert np.abs(a - b).max() < 1.0 and np.corrcoef(a, b)[0, 1] > 0.9
    for name in backends:
        with pytest.raises(PackageError, match=r"no stage2_int8\.onnx \(noduleflow export --int8 writes"):
            Detector(two_stage / "pkg", backend=name, backend_options={"precision": "int8"})
