"""Characterised findings in the SR (TID 1500 groups with tracking UIDs, read back with pydicom)
and in the picture (the contour on the three planes)."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from noduleflow.engine.characterise import characterise
from noduleflow.engine.io.dicom_write import write_dicom_series
from noduleflow.engine.render import PLANES, finding_crop
from noduleflow.engine.results import Candidate, Detections, tracking_uid
from noduleflow.engine.volume import Volume

pytest.importorskip("highdicom")


def _volume_with_nodule():
    spacing = (1.5, 0.8, 0.8)
    shape = (24, 48, 48)
    g = np.indices(shape).astype(float)
    c = np.array([12.0, 24.0, 24.0])
    d = np.sqrt(sum(((g[i] - c[i]) * spacing[i]) ** 2 for i in range(3)))
    hu = -850.0 + np.clip(0.5 - (d - 5.0) / 0.7, 0, 1) * 880.0
    hu += np.random.default_rng(0).normal(0, 10, shape)
    vol = Volume(hu.astype(np.int16), spacing, (-20.0, -30.0, -100.0), series_uid="1.2.826.0.1.3680043.8.498.1")
    f = characterise(vol.hu, spacing, np.ones(shape, bool), c)
    cand = Candidate(tuple(float(v) for v in vol.voxel_to_world(c)), 0.95, 1, 10.0, finding=f)
    det = Detections(series_uid=vol.series_uid, candidates=(cand, Candidate((0.0, 0.0, -90.0), 0.1)), timings_s={},
                     backend="b", mode="dense", model_id="m", engine_version="0", meta={"characterise_top": 1},
                     volume=vol)
    return vol, det, c


def test_sr_holds_tid1500_groups_with_tracking_uids(tmp_path):
    from noduleflow.serve.sr import write_sr

    vol, det, _ = _volume_with_nodule()
    files = write_dicom_series(vol, tmp_path / "ct", seed=1)
    evidence = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(files)]
    det = Detections(**{**{k: getattr(det, k) for k in ("candidates", "timings_s", "backend", "mode", "model_id",
                                                         "engine_version", "meta")},
                        "series_uid": str(evidence[0].SeriesInstanceUID)})
    path = write_sr(det, evidence, tmp_path / "sr.dcm", model_id="m", engine_version="0")
    sr = pydicom.dcmread(path)
    groups = []

    def walk(items):
        for it in items:
            if it.get("ValueType") == "CONTAINER" and it.ConceptNameCodeSequence[0].CodeValue == "125007":
                groups.append(it)
            elif "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(sr.ContentSequence)
    assert len(groups) == 3   # the characterised finding, the plain candidate, the scan's Lung-RADS

    def items(g):
        out = {}
        for it in g.ContentSequence:
            name = it.ConceptNameCodeSequence[0].CodeMeaning
            if it.ValueType == "UIDREF":
                out[name] = it.UID
            elif it.ValueType == "TEXT":
                out[name] = it.TextValue
            elif it.ValueType == "NUM":
                out.setdefault(name, []).append(float(it.MeasuredValueSequence[0].NumericValue))
            elif it.ValueType == "CODE":
                out[name] = it.ConceptCodeSequence[0].CodeMeaning
        return out

    first = items(groups[0])
    f = det[0].finding
    assert first["Tracking Unique Identifier"] == tracking_uid(det.series_uid, 0, det[0].center_xyz_mm)
    assert first["Tracking Identifier"] == "finding 1"
    assert first["Volume"] == [pytest.approx(f.volume_mm3, abs=0.01)]
    assert first["Nodule type"] == "solid" and first["Lung-RADS v2022 category (proposal)"] == f.lung_rads
    assert pytest.approx(f.mean_diameter_mm) in first["Diameter"]
    last = items(groups[2])
    assert last["Lung-RADS v2022 category (proposal)"] == det.lung_rads.category
    assert last["Finding that drives the category"] == "finding 1"


def test_contour_on_the_three_planes():
    vol, det, c = _volume_with_nodule()
    f = det[0].finding
    for plane in PLANES:
        m = finding_crop(vol, f, c, plane, half_mm=15.0, size_px=60)
        area = m.sum() * (30.0 / 60) ** 2
        assert area == pytest.approx(np.pi * 25.0, rel=0.3), plane   # the 10 mm disc through the centre
    img = det.plot()
    assert img.width > 0
