"""bench.blob_passes: the stage-1 blob passes of this checkout against another checkout's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ref():
    """This checkout as its own reference: separate modules (compiled from a copy), the same code."""
    from noduleflow.bench.blob_passes import load_reference

    return load_reference(ROOT)


def _box():
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    ph = generate_phantom(3, params=PhantomParams(n_nodules=3), shape_zyx=(48, 128, 128), spacing_zyx_mm=(5.0, 2.2, 2.2))
    pre = preprocess(ph.volume)
    return pre.volume.hu, pre.mask


def test_reference_module_runs_its_own_blob_passes_and_restores_stage1(ref):
    from noduleflow.bench.blob_passes import load_reference, same_blobs, three_passes, using
    from noduleflow.engine import stage1
    from noduleflow.engine.blobs import Blobs, detect_blobs

    assert ref.__name__ == "noduleflow.engine._reference.stage1"
    assert ref.detect_blobs is not detect_blobs and ref.detect_blobs.__module__ == "noduleflow.engine._reference.blobs"
    assert ref.dilate.__module__ == "noduleflow.engine._reference.morphology"
    assert Path(ref.__file__).parent != ROOT / "engine"   # a copy: its numba caches go there, not here
    hu, mask = _box()
    a, ta = three_passes(ref, hu, mask)
    b, tb = three_passes(stage1, hu, mask)
    assert set(a) == set(ta) == {"blobs", "subsolid", "wall"} and min(ta.values()) > 0
    assert len(a["blobs"]) > 0 and same_blobs(a, b)
    moved = dict(b, wall=Blobs(b["wall"].centres_zyx + 1.0, b["wall"].radius_mm, b["wall"].response))
    assert not same_blobs(a, moved)
    mine = stage1.stage1_candidates
    with pytest.raises(RuntimeError):
        with using(ref):
            assert stage1.stage1_candidates is ref.stage1_candidates
            raise RuntimeError
    assert stage1.stage1_candidates is mine   # put back, also on an error
    with pytest.raises(SystemExit, match="no engine/blobs.py"):
        load_reference(ROOT / "tests")


def test_timings_alternate_and_report(ref, tmp_path):
    from noduleflow.bench.blob_passes import markdown, pass_timing, scan_timing
    from noduleflow.bench.speed import phantom_series

    box = _box()
    p = pass_timing(ref, {"box": box}, repeats=2)
    assert p["same_blobs"] == {"box": True} and p["boxes"]["box"] == list(box[0].shape)
    m = p["median_s"]
    assert m["this"]["all three"] == pytest.approx(sum(m["this"][k] for k in ("blobs", "subsolid", "wall")))
    assert p["reference_over_this"]["wall"] == pytest.approx(m["reference"]["wall"] / m["this"]["wall"])
    series = phantom_series(tmp_path, 1, shape_zyx=(48, 128, 128), spacing_zyx_mm=(5.0, 2.2, 2.2))
    s = scan_timing(ref, series, repeats=1, backend="onnxruntime-cpu")
    assert s["same_candidates"] and s["backend"] == "onnxruntime-cpu"
    assert s["median_s"]["this"]["blob passes"] == pytest.approx(
        sum(s["median_s"]["this"][k] for k in ("blobs", "subsolid", "wall")))
    assert np.isfinite(s["reference_over_this"]["detect"])
    text = markdown({"machine": {"cpu": "c", "cores": 2, "numba": "0"}, "this_commit": "a", "reference_commit": "b",
                     "reference_tree": "/r", "load_average": (0, 0, 0), "command": "c", "passes": p, "scans": s,
                     "identity": {"cohort": "heldout", "seeds": [1, 2], "scans": 2, "differ": [2],
                                  "seconds": {"reference": 2.0, "this": 1.0}, "reference_over_this": 2.0}})
    assert "differ on 1 (2)" in text and "| reference / this |" in text and "Same blobs on every box: yes" in text
    assert "from both versions in every detection: yes" in text
