"""The DICOM SR: built with highdicom, read back with pydicom (and dcmtk's dsrdump where installed)."""
from __future__ import annotations

import subprocess

import pydicom
import pytest

from noduleflow.engine.detector import Candidate, Detections
from noduleflow.serve.sr import COMPREHENSIVE_3D_SR, read_sr_points, write_sr

from .conftest import dcmtk

# Module -> attributes it requires (PS3.3 A.35.13 Comprehensive 3D SR IOD, type 1/2 attributes).
REQUIRED = {
    "Patient": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex"],
    "General Study": ["StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                      "AccessionNumber"],
    "SR Document Series": ["Modality", "SeriesInstanceUID", "SeriesNumber"],
    "General Equipment": ["Manufacturer"],
    "SR Document General": ["InstanceNumber", "CompletionFlag", "VerificationFlag", "ContentDate", "ContentTime"],
    "SR Document Content": ["ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentSequence"],
    "SOP Common": ["SOPClassUID", "SOPInstanceUID"],
}


def _detections(uid, n=3):
    cands = tuple(Candidate((-30.5 + 10 * i, 12.25 - i, -140.0 + 2.5 * i), 0.9 - 0.2 * i, 5) for i in range(n))
    return Detections(series_uid=uid, candidates=cands, timings_s={}, backend="onnxruntime-cpu", mode="dense",
                      model_id="test-model", engine_version="0.1.0")


@pytest.mark.parametrize("n", [3, 0])
def test_sr_reads_back_with_its_points_probabilities_and_references(tmp_path, series_pool, n):
    files = series_pool[0]
    evidence = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    ref = evidence[0]
    det = _detections(str(ref.SeriesInstanceUID), n)
    path = write_sr(det, evidence, tmp_path / "sr.dcm", model_id="test-model", engine_version="0.1.0")

    sr = pydicom.dcmread(path)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.file_meta.MediaStorageSOPClassUID == COMPREHENSIVE_3D_SR
    missing = {m: [a for a in attrs if a not in sr] for m, attrs in REQUIRED.items()}
    assert not any(missing.values()), missing
    assert sr.Modality == "SR" and sr.CompletionFlag == "COMPLETE"
    assert sr.StudyInstanceUID == ref.StudyInstanceUID and sr.PatientID == ref.PatientID
    assert sr.SeriesInstanceUID != ref.SeriesInstanceUID     # its own series
    # the evidence names the source series and every one of its instances
    ev = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert ev.SeriesInstanceUID == ref.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ev.ReferencedSOPSequence} == {e.SOPInstanceUID for e in evidence}

    points = read_sr_points(path)
    assert len(points) == n
    for (xyz, prob, frame), c in zip(points, det.candidates):
        assert xyz == pytest.approx(c.center_xyz_mm, abs=1e-4)
        assert prob == pytest.approx(c.prob, abs=1e-6)
        assert frame == ref.FrameOfReferenceUID

    tool = dcmtk("dsrdump")
    if tool:   # an SR reader the project did not write: it parses the document tree and checks it
        r = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "error" not in r.stderr.lower(), r.stderr
        assert r.stdout.count("SCOORD3D") == n and "Comprehensive 3D SR" in r.stdout


def test_sr_needs_evidence():
    with pytest.raises(ValueError, match="evidence"):
        write_sr(_detections("1.2.3"), [], "/nonexistent/sr.dcm", model_id="m", engine_version="0")


def test_missing_type2_patient_and_study_attributes_give_empty_values(tmp_path, series_pool):
    """Anonymised or scanner-exported images often lack PatientBirthDate & co.: the SR is still
    written, with those attributes present and empty (Type 2), and the rest copied."""
    from noduleflow.serve.sr import TYPE2_COPIED

    evidence = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_pool[0]]
    for ds in evidence:
        for k in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
            if k in ds:
                delattr(ds, k)
    assert "PatientBirthDate" not in evidence[0]
    path = write_sr(_detections(str(evidence[0].SeriesInstanceUID)), evidence, tmp_path / "sr.dcm",
                    model_id="m", engine_version="0")
    sr = pydicom.dcmread(path)
    for k in TYPE2_COPIED:
        assert k in sr, k
    assert sr.PatientBirthDate == "" and sr.PatientSex == "" and sr.AccessionNumber == ""
    assert sr.PatientID == evidence[0].PatientID and sr.CompletionFlag == "COMPLETE"
    assert "PatientBirthDate" not in evidence[0]          # the caller's datasets are left alone


def test_an_sr_for_a_series_not_known_to_be_whole_is_partial(tmp_path, series_pool):
    evidence = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_pool[0][:20]]
    path = write_sr(_detections(str(evidence[0].SeriesInstanceUID)), evidence, tmp_path / "sr.dcm",
                    model_id="m", engine_version="0", complete=False)
    assert pydicom.dcmread(path).CompletionFlag == "PARTIAL"


def test_sr_carries_the_estimated_diameter(tmp_path, series_pool):
    """A candidate with a diameter gets a second NUM (SCT 81827009 Diameter, mm); one without none."""
    evidence = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_pool[0]]
    cands = (Candidate((-30.5, 12.25, -140.0), 0.9, 1, 7.5), Candidate((10.0, 2.0, -120.0), 0.4, 1, None))
    det = Detections(series_uid=str(evidence[0].SeriesInstanceUID), candidates=cands, timings_s={},
                     backend="onnxruntime-cpu", mode="dense", model_id="test-model", engine_version="0.1.0")
    sr = pydicom.dcmread(write_sr(det, evidence, tmp_path / "sr.dcm", model_id="test-model", engine_version="0"))
    groups = []

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if name == "Volumetric ROI Measurements" or name.startswith("Measurement Group"):
                groups.append({s.ConceptNameCodeSequence[0].CodeValue: s for s in it.ContentSequence
                               if s.ValueType == "NUM"})
            elif "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(sr.ContentSequence)
    assert len(groups) == 2
    d = groups[0]["81827009"].MeasuredValueSequence[0]
    assert float(d.NumericValue) == pytest.approx(7.5)
    assert d.MeasurementUnitsCodeSequence[0].CodeValue == "mm"
    assert "81827009" not in groups[1] and "122157" in groups[1]
