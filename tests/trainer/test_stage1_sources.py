"""Stage-1 recall per pass and stratum (trainer.evaluate.stage1_sources) and the stage-2 data
builder's training sources (trainer.data.stage2.SourceScans)."""
import json

import numpy as np
import pytest

from noduleflow.engine import ConfigError
from noduleflow.trainer.data.stage2 import SourceScans, SourceTrainingScan
from noduleflow.trainer.evaluate.stage1_sources import PASSES, proposed_by, strata_rows
from noduleflow.trainer.stage2_train import present_files


def test_proposed_by_names_the_first_pass_within_the_radius():
    centres = np.array([[10, 10, 10], [10, 10, 13], [50, 50, 50], [80, 80, 80.0]])
    source = np.array([1, 4, 2, 0], np.int8)
    nodules = np.array([[10, 10, 12, 3.0],   # candidates of passes 1 and 4 within 3 mm: pass 1
                        [10, 10, 14, 1.5],   # only the pass-4 one: pass 4
                        [50, 50, 53, 2.0],   # 3 mm away, radius 2: not proposed
                        [80, 80, 80, 2.0]])  # a CNN peak (source 0) counts as the first pass
    np.testing.assert_array_equal(proposed_by(centres, source, nodules), [1, 4, 0, 1])
    assert proposed_by(np.zeros((0, 3)), np.zeros(0, np.int8), nodules).tolist() == [0, 0, 0, 0]


def test_strata_rows_are_cumulative_over_the_passes():
    recs = [{"kind": "ground_glass", "location": "isolated", "diameter_mm": 12.0, "pass": 4},
            {"kind": "ground_glass", "location": "juxta_pleural", "diameter_mm": 15.0, "pass": 0},
            {"kind": "solid", "location": "juxta_pleural", "diameter_mm": 20.0, "pass": 1},
            {"kind": "solid", "location": "isolated", "diameter_mm": 5.0, "pass": 2}]
    rows = {r["stratum"]: r for r in strata_rows(recs)}
    labels = [label for _, label in PASSES]
    assert [rows["all"][k] for k in labels] == [0.25, 0.5, 0.5, 0.75]
    assert [rows["kind ground_glass"][k] for k in labels] == [0.0, 0.0, 0.0, 0.5]
    assert rows["juxta_pleural 10-30 mm"]["nodules"] == 2 and rows["juxta_pleural 10-30 mm"][labels[-1]] == 0.5
    assert rows["diameter 3-6 mm"]["nodules"] == 1 and "diameter 6-10 mm" not in rows


def test_a_training_source_keeps_to_its_lung():
    scan = SourceTrainingScan(None, np.zeros((0, 4)), np.zeros((0, 4)), split_x_mm=-6.7, side="left")
    np.testing.assert_array_equal(scan.inside(np.array([[10.0, 0, 0], [-20.0, 0, 0], [-6.0, 5, 5]])),
                                  [True, False, True])
    right = SourceTrainingScan(None, np.zeros((0, 4)), np.zeros((0, 4)), split_x_mm=-6.7, side="right")
    assert right.inside(np.array([[-20.0, 0, 0]])).tolist() == [True]
    anywhere = SourceTrainingScan(None, np.zeros((0, 4)), np.zeros((0, 4)))
    assert anywhere.inside(np.array([[1e3, 0, 0]])).tolist() == [True]


def _source(tmp_path, role, region=None):
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    (tmp_path / "a.mhd").write_text("")
    info = {"name": "s", "role": role, "generator": {"region": region} if region else {}}
    (tmp_path / "source.json").write_text(json.dumps(info))
    return tmp_path


def test_only_a_training_source_may_be_trained_on(tmp_path):
    with pytest.raises(ConfigError, match="role is 'evaluation'"):
        SourceScans(_source(tmp_path, "evaluation"), None)


def test_a_region_needs_its_side_and_split(tmp_path):
    with pytest.raises(ConfigError, match="region needs"):
        SourceScans(_source(tmp_path, "training", {"lung": "left"}), None)
    ok = SourceScans(_source(tmp_path, "training", {"lung": "left", "split_x_mm": 1.5}), None)
    assert (ok.side, ok.split, len(ok)) == ("left", 1.5, 1)


def test_present_files_counts_a_seed_found_in_any_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "1.npz").write_bytes(b""), (b / "6000.npz").write_bytes(b"")
    assert present_files([a, b], [1, 2, 6000]) == [1, 6000]
