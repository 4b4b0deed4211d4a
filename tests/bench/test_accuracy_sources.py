"""`noduleflow bench accuracy --source NAME=DIR ...`: each evaluation source detected on (the whole
`Detector.detect` path on MetaImage files) and reported on its own, in the order given."""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from noduleflow.bench import accuracy
from noduleflow.engine import ConfigError
from noduleflow.engine.io import save_volume
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom
from noduleflow.trainer.evaluate.sources import midline_x_mm, parse_source_arg, read_source
from noduleflow.trainer.evaluate.strata import JUXTA_PLEURAL_STRATUM

pytest.importorskip("matplotlib")

SHAPE_ZYX, SPACING_ZYX_MM = (60, 128, 128), (2.5, 1.4, 1.4)  # a small chest: ~7 s per detection on 2 cores
HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]


def make_source(folder, seeds, name, excluded_point=True):
    """An evaluation-source folder: each seed's small phantom as ``<uid>.mhd`` with its nodules in
    annotations.csv and findings.csv, its < 3 mm findings (and one LUNA16-style -1 finding) in
    annotations_excluded.csv, and source.json. -> the phantoms."""
    folder.mkdir(parents=True)
    phs = [generate_phantom(s, params=PhantomParams(n_nodules=3, n_excluded=1), shape_zyx=SHAPE_ZYX,
                            spacing_zyx_mm=SPACING_ZYX_MM) for s in seeds]
    with open(folder / "annotations.csv", "w", newline="") as fa, \
            open(folder / "annotations_excluded.csv", "w", newline="") as fe, \
            open(folder / "findings.csv", "w", newline="") as ff:
        wa, we, wf = csv.writer(fa), csv.writer(fe), csv.writer(ff)
        wa.writerow(HEADER)
        we.writerow(HEADER)
        wf.writerow(HEADER + ["kind", "shape", "location"])
        for ph in phs:
            uid = ph.volume.series_uid
            save_volume(ph.volume, folder / f"{uid}.mhd")
            for n in ph.nodules:
                wa.writerow([uid, *n.center_xyz_mm, n.diameter_mm])
                wf.writerow([uid, *n.center_xyz_mm, n.diameter_mm, n.kind, n.shape, n.location])
            for n in ph.excluded:
                we.writerow([uid, *n.center_xyz_mm, n.diameter_mm])
            if excluded_point:  # a finding without a size: LUNA16's -1, a 10 mm sphere when scoring
                we.writerow([uid, 0.0, 0.0, float(ph.volume.origin_xyz_mm[2]) + 50.0, -1])
    (folder / "source.json").write_text(json.dumps({
        "name": name, "description": f"test phantoms {name}", "role": "evaluation",
        "generator": {"generate_phantom": {"shape_zyx": SHAPE_ZYX}}, "seeds": list(seeds), "command": "pytest"}))
    return phs


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One run over two sources given in reverse alphabetical order: ``zeta`` (2 scans), ``alpha`` (1)."""
    root = tmp_path_factory.mktemp("sources")
    make_source(root / "zeta", (11, 12), "zeta")
    make_source(root / "alpha", (13,), "alpha", excluded_point=False)
    out = root / "out"
    rc = accuracy.main(["--source", f"zeta={root / 'zeta'}", "--source", f"alpha={root / 'alpha'}",
                        "--bootstrap", "100", "--out", str(out)])
    assert rc == 0
    return root, out, json.loads((out / "accuracy.json").read_text())


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_block_per_source_in_the_order_given(report):
    root, out, rep = report
    assert [b["name"] for b in rep["sources"]] == ["zeta", "alpha"]
    assert rep["meta"]["sources_in_order"] == ["zeta", "alpha"]
    assert [b["scans"] for b in rep["sources"]] == [2, 1]
    md = (out / "accuracy.md").read_text()
    assert 0 < md.index("## 1. zeta") < md.index("## 2. alpha")
    pkg = rep["meta"]["package"]
    assert pkg["package_sha256"] in md and pkg["package_id"] in md
    assert rep["meta"]["training"] and "what the package's manifest says trained it" in md.lower()
    for b in rep["sources"]:
        assert b["role"] == "evaluation" and b["description"] == f"test phantoms {b['name']}"
        assert b["description"] in md
        for name in ("candidates.json", "froc.png", "calibration.png"):
            assert (out / b["name"] / name).is_file()
        a = b["strata"]["all"]
        assert set(a["sensitivity_at_k"]) >= {"5", "15", "100"} and a["cpm_ci95"][0] <= a["cpm"] <= a["cpm_ci95"][1]


def test_strata_rows_for_the_kinds_shapes_and_locations_present(report):
    root, out, rep = report
    for b in rep["sources"]:
        rows = _rows(root / b["name"] / "findings.csv")
        assert b["nodules"] == len(rows) > 0
        for attr, prefix in (("kind", "kind"), ("shape", "shape"), ("location", "location")):
            for value in {r[attr] for r in rows}:
                assert b["strata"][f"{prefix} {value}"]["nodules"] == sum(r[attr] == value for r in rows)
        n_jp = sum(r["location"] == "juxta_pleural" and 10 <= float(r["diameter_mm"]) <= 30 for r in rows)
        assert b["strata"][JUXTA_PLEURAL_STRATUM]["nodules"] == n_jp
        assert "| kind solid |" in (out / "accuracy.md").read_text()


def _recount(cands, nodules, excluded, t):
    """False candidates at p >= t, recounted by the LUNA16 rules: within a nodule's radius (strict) is
    not false; else within an excluded finding's radius (-1: 10 mm diameter) is ignored."""
    n = 0
    for xyz, p in zip(np.asarray(cands["xyz"]).reshape(-1, 3), cands["prob"]):
        if p < t:
            continue
        on_nodule = any(np.sum((xyz - f[:3]) ** 2) < (f[3] / 2) ** 2 for f in nodules)
        on_excluded = any(np.sum((xyz - f[:3]) ** 2) < ((10.0 if f[3] < 0 else f[3]) / 2) ** 2 for f in excluded)
        n += not on_nodule and not on_excluded
    return n


def test_false_candidates_per_scan_match_a_recount(report):
    root, out, rep = report
    for b in rep["sources"]:
        ann, exc = _rows(root / b["name"] / "annotations.csv"), _rows(root / b["name"] / "annotations_excluded.csv")

        def xyzd(rows, uid):
            return [np.array([float(r[k]) for k in HEADER[1:]]) for r in rows if r["seriesuid"] == uid]

        cands = json.loads((out / b["name"] / "candidates.json").read_text())
        assert len(cands) == b["scans"]
        for t in (0.5, 0.9):
            counts = [_recount(c, xyzd(ann, c["uid"]), xyzd(exc, c["uid"]), t) for c in cands]
            fc = b["false_candidates"][f"{t:g}"]
            assert fc["total"] == sum(counts) and fc["max_scan"] == max(counts)
            assert fc["per_scan"] == pytest.approx(sum(counts) / len(counts))
        # every candidate list is the detector's, best first, at most --keep long
        assert all(c["prob"] == sorted(c["prob"], reverse=True) and len(c["prob"]) <= 100 for c in cands)


def test_bad_sources_are_one_error_line(report, tmp_path, capsys):
    good = report[0] / "alpha"
    (tmp_path / "noann").mkdir()
    cases = [(["--source", "justafolder"], "--source must be NAME=DIR"),
             (["--source", f"bad name={good}"], "--source NAME must be"),
             (["--source", f"x={tmp_path / 'noann'}"], "annotations.csv missing"),
             (["--source", f"x={tmp_path / 'absent'}"], "is not a folder"),
             (["--source", f"x={good}", "--source", f"x={good}"], "given twice"),
             (["--source", f"x={good}", "--data", str(good)], "give one of"),
             (["--source", f"x={good}", "--cohort", "nosuchcohort"], "cohort must be one of"),
             (["--source", f"x={good}", "--realct", str(tmp_path / "absent")], "--realct"),
             (["--source", f"realct={good}", "--realct", str(good)], "given twice")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            accuracy.main(argv + ["--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], (argv, err)
    assert not (tmp_path / "out").exists()  # refused before any detection or output


def test_findings_must_match_annotations(report, tmp_path):
    shutil.copytree(report[0] / "alpha", tmp_path / "s")
    rows = _rows(tmp_path / "s" / "findings.csv")
    rows[0]["kind"] = "glassy"
    with open(tmp_path / "s" / "findings.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ConfigError, match="kind must be one of .*'glassy'"):
        read_source("s", tmp_path / "s")
    rows[0]["kind"], rows[0]["coordX"] = "solid", str(float(rows[0]["coordX"]) + 1.0)
    with open(tmp_path / "s" / "findings.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ConfigError, match="findings.csv must hold the rows of annotations.csv"):
        read_source("s", tmp_path / "s")


def test_parse_source_arg_and_the_order_of_sources():
    assert parse_source_arg("hybrid_eval=/x/y") == ("hybrid_eval", Path("/x/y"))
    for bad in ("=/x", "../up=/x", "a b=/x"):
        with pytest.raises(ConfigError, match="NAME must be"):
            parse_source_arg(bad)
    with pytest.raises(ConfigError, match="NAME=DIR"):
        parse_source_arg("name=")
    args = accuracy.build_parser(argparse.ArgumentParser()).parse_args(
        ["--source", "b=/x", "--cohort", "heldout", "--source", "a=/y"])
    assert args.sources_in_order == [("source", "b=/x"), ("cohort", "heldout"), ("source", "a=/y")]
    assert args.source == ["b=/x", "a=/y"] and args.cohort == "heldout"


def test_midline_sits_between_the_lungs():
    from noduleflow.engine.preprocess import preprocess

    ph = generate_phantom(11, shape_zyx=SHAPE_ZYX, spacing_zyx_mm=SPACING_ZYX_MM)
    pre = preprocess(ph.volume)
    mid = midline_x_mm(pre)
    xyz = ph.volume.voxel_to_world(np.argwhere(ph.lung_mask)[::50].astype(float))
    right, left = xyz[xyz[:, 0] < mid], xyz[xyz[:, 0] >= mid]
    # two lungs of comparable size on either side: the plane splits the lung voxels roughly in half
    assert 0.3 < len(right) / len(xyz) < 0.7 and right[:, 0].max() < left[:, 0].min() + 5.0


@pytest.mark.slow
def test_cached_cohort_is_a_source_in_its_place(report, tmp_path):
    from noduleflow.engine.detector import Detector
    from noduleflow.trainer.data.cohort import CohortCache
    from noduleflow.trainer.evaluate.cohort import detect_package

    cache = CohortCache(tmp_path / "cohorts", phantom_kwargs={"shape_zyx": SHAPE_ZYX, "spacing_zyx_mm": SPACING_ZYX_MM})
    det = Detector(top_k=100)
    rep = accuracy.evaluate_sources(det, ["5000-5000", read_source("alpha", report[0] / "alpha")], tmp_path / "out",
                                    bootstrap=50, cohort_cache=cache, progress=False)
    assert [b["name"] for b in rep["sources"]] == ["5000-5000", "alpha"]
    assert rep["sources"][0]["role"] == "unknown" and "seeds 5000-5000" in rep["sources"][0]["description"]
    # the cohort's candidates.json as `trainer.evaluate.cohort.run` writes it: the detector's own stages
    xyz, prob = detect_package(det, cache.get(5000), 100)
    got = json.loads((tmp_path / "out" / "5000-5000" / "candidates.json").read_text())
    assert got[0]["seed"] == 5000 and got[0]["prob"] == np.round(prob, 5).tolist()
    assert got[0]["xyz"] == np.round(xyz, 2).tolist()


REALCT = Path(__file__).resolve().parents[2].parent / "shared" / "realct"


@pytest.mark.slow
@pytest.mark.skipif(not REALCT.is_dir(), reason="../shared/realct (LIDC-IDRI-0314) is not present")
def test_realct_reports_the_nodule_rank_and_right_lung_counts(report, tmp_path):
    out = tmp_path / "out"
    assert accuracy.main(["--source", f"alpha={report[0] / 'alpha'}", "--realct", str(REALCT), "--bootstrap", "20",
                          "--out", str(out)]) == 0
    real = json.loads((out / "accuracy.json").read_text())["realct"]
    (scan,) = real["scans"]
    (nod,) = scan["nodules"]  # LUNA16's one nodule of LIDC-IDRI-0314, right upper lobe
    assert nod["side"] == "right" and nod["rank"] >= 0 and scan["midline_x_mm"] > nod["xyz_mm"][0]
    c = scan["at_prob"]["0.9"]
    assert 0 <= c["right_lung_false"] <= c["right_lung"] <= scan["candidates"]
    assert "## Real scan" in (out / "accuracy.md").read_text()
    from PIL import Image
    assert Image.open(out / "realct" / scan["picture"]).size[0] > 0


def test_right_lung_picture_shows_only_the_right_lung_among_the_top(tmp_path):
    from PIL import Image

    from noduleflow.engine.results import Candidate, Detections
    from noduleflow.engine.volume import Volume
    from noduleflow.trainer.evaluate.sources import right_lung_picture
    from noduleflow.trainer.evaluate.strata import ScanResult

    vol = Volume(np.full((40, 64, 64), -850, np.int16), (1.0, 1.0, 1.0), (-32.0, -32.0, -20.0))
    xs = [-20, 15, -10, -25, 20, -5]          # right lung: x < 0 (the midline here)
    cands = tuple(Candidate((float(x), 0.0, 0.0), 0.9 - 0.1 * i, diameter_mm=6.0) for i, x in enumerate(xs))
    d = Detections("1.2.3", cands, {}, "test", "dense", "m", "0", volume=vol)
    r = ScanResult("1.2.3", np.array([c.center_xyz_mm for c in cands]), np.array([c.prob for c in cands]),
                   np.array([[-20.0, 0, 0, 8.0]]), ("solid",), ("isolated",), np.zeros((0, 4)))

    def rows(top):
        im = Image.open(right_lung_picture(d, r, 0.0, tmp_path / f"p{top}.png", top=top))
        return im.size[1]

    # the picture grows by one row of crops (two candidates a row) per two right-lung candidates kept
    h2, h4, h6 = rows(2), rows(4), rows(6)     # right-lung ones: 1 (of 2), 3 (of 4), 4 (of 6)
    assert h2 < h4 and h4 == h6


def test_false_candidates_follow_the_luna16_rules():
    from noduleflow.trainer.evaluate.cohort import candidate_labels, false_candidates
    from noduleflow.trainer.evaluate.strata import ScanResult

    # candidates: on the nodule (0.95), a second hit on it (0.92), on a sizeless excluded finding 4 mm away
    # (-1: a 10 mm sphere; 0.97), 6 mm from it (outside: false, 0.91), far away (false, 0.6), low (0.1)
    xyz = [[0, 0, 0], [1, 0, 0], [104, 0, 0], [106, 0, 0], [200, 0, 0], [300, 0, 0]]
    r = ScanResult("a", np.asarray(xyz, float), np.array([0.95, 0.92, 0.97, 0.91, 0.6, 0.1]),
                   np.array([[0, 0, 0, 6.0]]), ("solid",), ("isolated",), np.array([[100, 0, 0, -1.0]]))
    empty = ScanResult("b", np.zeros((0, 3)), np.zeros(0), np.zeros((0, 4)), (), (), np.zeros((0, 4)))
    assert candidate_labels(r).tolist() == [1, 1, -1, 0, 0, 0]
    fc = false_candidates([r, empty])
    assert fc["0.9"] == {"per_scan": 0.5, "total": 1, "max_scan": 1, "scans_with_any": 1}
    assert fc["0.5"]["total"] == 2 and fc["0.5"]["per_scan"] == 1.0
