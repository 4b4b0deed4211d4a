import numpy as np

from noduleflow.trainer.evaluate.stage1_recall import evaluate_lists, hits


def test_hits_is_strictly_within_the_radius():
    nod = np.array([[10.0, 10.0, 10.0, 3.0]])
    h = hits(np.array([[10.0, 10.0, 12.9], [10.0, 10.0, 13.0]]), nod)
    assert h[:, 0].tolist() == [True, False]


def test_evaluate_lists_counts_recall_per_generator_and_the_subsolid_supplement():
    """Two nodules: the blobs hit the first at rank 0; only the subsolid pass hits the second."""
    nod = np.array([[20.0, 20.0, 20.0, 3.0], [60.0, 60.0, 60.0, 2.5]])
    blobs = (np.array([[20.5, 20.0, 20.0], [90.0, 90.0, 90.0]]), np.array([50.0, 40.0]), np.array([3.0, 3.0]))
    cnn = (np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    sub = (np.array([[20.0, 20.0, 21.0], [60.0, 61.0, 60.0]]), np.array([30.0, 20.0]), np.array([3.0, 3.0]))
    raw = {"cnn": cnn, "blobs": blobs, "subsolid": sub}
    rows, strata = evaluate_lists([(raw, nod, ["solid", "ground_glass"], ["isolated", "juxta_pleural"])],
                                  generators=("blobs",), caps=(1, 2), subsolid=5)
    by = {(r["generator"], r["cap"]): r for r in rows}
    assert by[("blobs", 1)]["recall"] == 0.5 and by[("blobs", 2)]["recall"] == 0.5
    # the subsolid blob on the first nodule is inside the kept blob's extent: only the second is added
    assert by[("blobs+subsolid5", 1)]["recall"] == 1.0
    assert by[("blobs+subsolid5", 1)]["candidates_per_scan"] == 2
    assert by[("blobs+subsolid5", 2)]["candidates_per_scan"] == 3
    assert strata["blobs+subsolid5"]["kind ground_glass"]["recall"] == 1.0
    assert strata["blobs"]["kind ground_glass"]["recall"] == 0.0


def test_evaluate_lists_appends_the_pleural_pass_after_the_subsolid_one():
    """Three nodules: blobs hit the first, the subsolid pass the second, only the pleural pass the
    third; the pleural blob on the first is inside a kept candidate's extent and is not added."""
    nod = np.array([[20.0, 20.0, 20.0, 3.0], [60.0, 60.0, 60.0, 2.5], [40.0, 80.0, 10.0, 2.0]])
    blobs = (np.array([[20.5, 20.0, 20.0]]), np.array([50.0]), np.array([3.0]))
    cnn = (np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    sub = (np.array([[60.0, 61.0, 60.0]]), np.array([20.0]), np.array([3.0]))
    wall = (np.array([[20.0, 21.0, 20.0], [40.0, 80.0, 10.5], [5.0, 5.0, 5.0]]), np.array([90.0, 80.0, 70.0]),
            np.array([2.5, 2.5, 2.5]))
    raw = {"cnn": cnn, "blobs": blobs, "subsolid": sub, "wall": wall}
    rows, strata = evaluate_lists([(raw, nod, ["solid"] * 3, ["isolated", "juxta_vascular", "juxta_pleural"])],
                                  generators=("blobs",), caps=(1,), subsolid=5, wall=1)
    by = {r["generator"]: r for r in rows}
    assert by["blobs+subsolid5"]["recall"] == 2 / 3
    assert by["blobs+subsolid5+pleural1"]["recall"] == 1.0
    assert by["blobs+subsolid5+pleural1"]["candidates_per_scan"] == 3   # capped at 1 from the pleural pass
    assert strata["blobs+subsolid5+pleural1"]["location juxta_pleural"]["recall"] == 1.0
