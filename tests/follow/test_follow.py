"""Follow-up on a synthetic pair with a known motion and known lesion changes: registration,
matching, new / resolved, growth, the outputs, result-JSON inputs and the CLI. Synthetic phantoms
are a regression signal, not clinical evidence."""
from __future__ import annotations

import csv
import datetime
import json
import math

import numpy as np
import pydicom
import pytest
from conftest import INTERVAL_DAYS, LESIONS
from PIL import Image

from noduleflow.cli import main
from noduleflow.engine.config import DetectorConfig
from noduleflow.engine.detector import Detector
from noduleflow.engine.errors import ConfigError
from noduleflow.engine.io import load_volume, save_volume
from noduleflow.engine.io.dicom_write import write_dicom_series
from noduleflow.engine.preprocess import preprocess
from noduleflow.engine.volume import Volume
from noduleflow.follow import FollowConfig, RegistrationParams, follow, register
from noduleflow.follow.timepoint import study_date


def _true_volume(name, which):
    return 4.0 / 3.0 * math.pi * LESIONS[name][which] ** 3


@pytest.mark.parametrize("transform", ["rigid", "affine"])
def test_registration_recovers_the_known_motion(pair, transform):
    pp, pc = preprocess(pair.prior), preprocess(pair.current)
    reg = register(pp.volume, pp.mask, pc.volume, pc.mask, RegistrationParams(transform=transform))
    sites = np.array(list(pair.sites_prior_xyz.values()))
    err = np.linalg.norm(reg.map_points(sites) - pair.prior_to_current(sites), axis=1)
    assert err.max() < 2.0, err
    # without registration the sites are 8-11 mm off: the test can fail
    assert np.linalg.norm(sites - pair.prior_to_current(sites), axis=1).min() > 5.0
    assert reg.lung_dice > reg.lung_dice_before > 0.8
    m = reg.linear_part()
    assert np.allclose(m[3], [0, 0, 0, 1]) and abs(np.linalg.det(m[:3, :3]) - 1.0) < 0.03


def test_follow_matches_grows_new_and_resolved(pair, pair_detections):
    res = follow(*pair_detections)
    assert res.interval_days == INTERVAL_DAYS and res.interval_source == "StudyDate"
    by = {}
    for f in res:
        where = f.current_xyz_mm if f.current_xyz_mm is not None else f.prior_xyz_mm
        table = pair.sites_current_xyz if f.current_xyz_mm is not None else pair.sites_prior_xyz
        name = min(table, key=lambda n: np.linalg.norm(np.asarray(where) - table[n]))
        by[name] = f
    assert {n: f.status for n, f in by.items()} == {"stable": "matched", "growing": "matched", "new": "new",
                                                    "resolved": "resolved"}
    assert len(res) == 4
    # the detections list the current findings as new, growing, stable: ranks follow that order
    assert (by["growing"].prior_rank, by["growing"].current_rank) == (2, 2)
    assert (by["stable"].prior_rank, by["stable"].current_rank) == (1, 3)
    g, s = by["growing"], by["stable"]
    true_dv = 100 * (_true_volume("growing", 1) / _true_volume("growing", 0) - 1)       # +192 %
    true_vdt = INTERVAL_DAYS * math.log(2) / math.log(_true_volume("growing", 1) / _true_volume("growing", 0))
    assert g.growing and g.diameter_change_mm > 1.5 and abs(g.volume_change_pct - true_dv) < 40, g
    assert abs(g.vdt_days - true_vdt) / true_vdt < 0.25, (g.vdt_days, true_vdt)
    assert g.lung_rads == "4B" and g.match_distance_mm < 3.0   # growing solid >= 8 mm
    assert not s.growing and abs(s.volume_change_pct) < 25 and s.match_distance_mm < 3.0
    assert by["new"].lung_rads == "4B" and by["resolved"].lung_rads is None   # a new 8 mm solid nodule
    assert res.lung_rads["category"] == "4B" and "not a diagnosis" in res.lung_rads["note"]
    # the same pair with the matching distance cut below the residual motion: nothing matches
    none = follow(*pair_detections, config=FollowConfig(match_min_mm=0.1, match_radius_factor=0.01))
    assert not none.of_status("matched") and len(none.of_status("new")) == 3


def test_outputs(pair, pair_detections, tmp_path):
    res = follow(*pair_detections, interval_days=30)
    assert res.interval_days == 30 and res.interval_source == "given"
    out = res.save(tmp_path / "out")
    d = json.loads((tmp_path / "out" / "follow.json").read_text())
    assert [f["status"] for f in d["findings"]] == [f.status for f in res]
    assert d["registration"]["kind"] == "affine" and len(d["registration"]["matrix_prior_to_current"]) == 4
    rows = list(csv.DictReader((tmp_path / "out" / "follow.csv").open()))
    assert len(rows) == len(res) and rows[0]["status"] == "matched"
    pngs = sorted(p.name for p in (tmp_path / "out").glob("pair_*.png"))
    assert pngs == [f"pair_{i}.png" for i, f in enumerate(res, 1) if f.status == "matched"] and "json" in out
    im = Image.open(tmp_path / "out" / pngs[0]).convert("RGB")
    a = np.asarray(im)
    half = a.shape[1] // 2
    green = (a[..., 1] > 200) & (a[..., 0] < 100)     # the contours (60, 255, 120) on both panels
    assert green[:, :half].sum() > 10 and green[:, half:].sum() > 10
    assert any("LR" in line or "Lung-RADS" in line for line in res.table())


def test_bad_inputs(pair, pair_detections, tmp_path):
    prior, current = pair_detections
    with pytest.raises(ConfigError, match="swap PRIOR and CURRENT"):
        follow(current, prior)
    with pytest.raises(ConfigError, match="interval_days must be > 0"):
        follow(prior, current, interval_days=0)
    with pytest.raises(ConfigError, match="characterise_top > 0"):
        follow(prior, current, detector=Detector(config=DetectorConfig(characterise_top=0)))
    # a result JSON whose scan is not a file here is refused in one line
    p = tmp_path / "d.json"
    p.write_text(prior.to_json())
    with pytest.raises(ConfigError, match="give the series instead"):
        follow(p, current)


def test_cli_on_result_jsons(pair, pair_detections, tmp_path, capsys):
    """Result JSONs whose meta.source points at MetaImage scans (no StudyDate: --interval-days)."""
    paths = []
    for role, d in zip(("prior", "current"), pair_detections):
        img = save_volume(d.volume, tmp_path / f"{role}.mha")
        vol = load_volume(img)
        assert vol.shape == d.volume.shape
        meta = {**d.meta, "source": str(img), "shape_zyx": list(vol.shape)}
        js = json.loads(d.to_json())
        js["meta"] = meta
        paths.append(tmp_path / f"{role}.json")
        paths[-1].write_text(json.dumps(js))
    rc = main(["follow", str(paths[0]), str(paths[1]), "--out", str(tmp_path / "out"), "--interval-days",
               str(INTERVAL_DAYS), "--transform", "rigid"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "matched" in text and "new" in text and "resolved" in text and "Lung-RADS" in text
    d = json.loads((tmp_path / "out" / "follow.json").read_text())
    assert d["interval_source"] == "given" and d["registration"]["kind"] == "rigid"
    assert sorted(f["status"] for f in d["findings"]) == ["matched", "matched", "new", "resolved"]
    # the tracking UIDs are the JSONs' own
    prior_uids = {c["tracking_uid"] for c in json.loads(paths[0].read_text())["candidates"]}
    assert {f["prior_tracking_uid"] for f in d["findings"] if f["prior_tracking_uid"]} <= prior_uids
    rc = main(["follow", str(paths[0]), str(tmp_path / "missing"), "--out", str(tmp_path / "out2")])
    assert rc == 2 and "current scan" in capsys.readouterr().err
    assert "no follow_sr.dcm: a follow-up SR needs the current scan as a DICOM series" in text


def test_study_date_from_dicom_headers(tmp_path):
    vol = load_volume(save_volume(Volume(np.full((12, 64, 64), -800, np.int16), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
                                  tmp_path / "v.mha"))
    assert study_date(vol) is None
    files = write_dicom_series(vol, tmp_path / "ct", series_uid="1.2.826.0.1.3680043.8.498.77")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyDate = "20230301"
        ds.save_as(f)
    dv = load_volume(tmp_path / "ct")
    assert study_date(dv) == datetime.date(2023, 3, 1)


def test_detector_end_to_end(pair):
    """The shipped model on the pair: the four lesions come out right among the detector's other
    findings (its false positives on this small phantom are matched, new or resolved too)."""
    res = follow(pair.prior, pair.current)
    assert res.interval_days == INTERVAL_DAYS

    def at(name, status):
        key, table = ("current_xyz_mm", pair.sites_current_xyz) if status != "resolved" else \
            ("prior_xyz_mm", pair.sites_prior_xyz)
        near = [f for f in res if getattr(f, key) is not None and
                np.linalg.norm(np.asarray(getattr(f, key)) - table[name]) < 4.0]
        assert len(near) == 1, (name, near)
        assert near[0].status == status, (name, near[0])
        return near[0]

    assert at("growing", "matched").growing
    assert not at("stable", "matched").growing
    at("new", "new")
    at("resolved", "resolved")


def _sr_groups(path):
    """[(tracking UID, identifier, {concept meaning: value})] of each measurement group of an SR."""
    ds = pydicom.dcmread(path)
    out = []

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if name in ("Volumetric ROI Measurements", "Measurement Group"):
                uid = ident = None
                values = {}
                for sub in it.ContentSequence:
                    m = sub.ConceptNameCodeSequence[0].CodeMeaning
                    if sub.ValueType == "UIDREF" and m == "Tracking Unique Identifier":
                        uid = str(sub.UID)
                    elif sub.ValueType == "TEXT" and m == "Tracking Identifier":
                        ident = str(sub.TextValue)
                    elif sub.ValueType == "NUM":
                        values[m] = float(sub.MeasuredValueSequence[0].NumericValue)
                    elif sub.ValueType == "CODE":
                        values[m] = sub.ConceptCodeSequence[0].CodeMeaning
                out.append((uid, ident, values))
            elif "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    return out


def test_follow_sr_tracks_each_nodule_by_the_prior_uid(pair, pair_detections, tmp_path):
    pytest.importorskip("highdicom")
    from noduleflow.follow.sr import build_follow_sr, series_headers

    res = follow(*pair_detections, interval_days=INTERVAL_DAYS)
    cur = res.current_tp.volume
    write_dicom_series(cur, tmp_path / "ct", series_uid=cur.series_uid)
    evidence = series_headers(load_volume(tmp_path / "ct"))
    assert len(evidence) == cur.shape[0] and all("PixelData" not in ds for ds in evidence)
    assert series_headers(load_volume(save_volume(cur, tmp_path / "cur.mha"))) == []   # not DICOM: none
    with pytest.raises(ConfigError, match="DICOM series"):
        build_follow_sr(res, [], model_id="m", engine_version="0")
    sr = build_follow_sr(res, evidence, model_id="m", engine_version="0")
    sr.save_as(tmp_path / "follow_sr.dcm", enforce_file_format=True)
    groups = _sr_groups(tmp_path / "follow_sr.dcm")
    by_uid = {uid: (ident, values) for uid, ident, values in groups}
    matched, new, resolved = res.of_status("matched"), res.of_status("new"), res.of_status("resolved")
    assert matched and new and resolved
    for ff in matched:   # the prior report's UID, the changes beside
        ident, values = by_uid[ff.prior_tracking_uid]
        assert ident == f"finding {ff.current_rank} (prior finding {ff.prior_rank})"
        assert values["Follow-up status"] == "matched"
        assert values["Volume change"] == pytest.approx(ff.volume_change_pct, abs=0.01)
        assert ff.current_tracking_uid not in by_uid
    for ff in new:
        assert by_uid[ff.current_tracking_uid][1]["Follow-up status"] == "new"
    for ff in resolved:   # a group of its own, no geometry in this scan
        ident, values = by_uid[ff.prior_tracking_uid]
        assert ident == f"prior finding {ff.prior_rank}" and values == {"Follow-up status": "resolved"}
    ds = pydicom.dcmread(tmp_path / "follow_sr.dcm")
    assert ds.SeriesDescription == "noduleflow nodule follow-up"
    assert ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID == \
        evidence[0].SeriesInstanceUID
    out = res.save(tmp_path / "out", png=False, sr=(tmp_path / "follow_sr.dcm").read_bytes())
    assert out["sr"].name == "follow_sr.dcm" and out["sr"].stat().st_size > 1000


def test_cli_on_dicom_series_writes_the_follow_sr(pair, tmp_path, capsys):
    pytest.importorskip("highdicom")
    dirs = []
    for role, vol, date in (("prior", pair.prior, "20230101"), ("current", pair.current, "20230301")):
        for f in write_dicom_series(vol, tmp_path / role):
            ds = pydicom.dcmread(f)
            ds.StudyDate = date
            ds.save_as(f)
        dirs.append(str(tmp_path / role))
    rc = main(["follow", *dirs, "--out", str(tmp_path / "out"), "--no-png", "--transform", "rigid"])
    text = capsys.readouterr().out
    assert rc == 0, text
    d = json.loads((tmp_path / "out" / "follow.json").read_text())
    assert d["interval_days"] == 59 and "follow_sr.dcm" in text
    groups = _sr_groups(tmp_path / "out" / "follow_sr.dcm")
    uids = {uid for uid, _, _ in groups}
    matched = [f for f in d["findings"] if f["status"] == "matched"]
    assert matched and all(f["prior_tracking_uid"] in uids for f in matched)
    rc = main(["follow", *dirs, "--out", str(tmp_path / "out2"), "--no-png", "--no-sr", "--transform", "rigid"])
    assert rc == 0 and not (tmp_path / "out2" / "follow_sr.dcm").exists()
