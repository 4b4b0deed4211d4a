"""One acquisition of one patient per volume: identity mixes in a DICOM series.

Base: the phantom's 20-slice series (`corrupt.series`). A series whose slices disagree on
PatientID, StudyInstanceUID, FrameOfReferenceUID or acquisition geometry is one
`VolumeError` naming the values and files; a series without FrameOfReferenceUID is refused
at load; two acquisitions over the same positions in one series are split (the largest is
loaded, a warning names the others); an empty SeriesInstanceUID gets one generated id.
"""
from __future__ import annotations

import re

import numpy as np
import pydicom
import pytest

from noduleflow.engine import Volume, VolumeError
from noduleflow.engine.io.dicom import load_dicom
from noduleflow.engine.results import Candidate, Detections, safe_name

from .corrupt import edit, outcome, phantom, series, setter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

HALF = slice(10, 20)
FIRST, MID, LAST = slice(0, 1), slice(10, 11), slice(19, 20)


def _hdr(which, fn):
    return lambda paths, folder: (edit(paths[which], fn), folder)[1]


def _per_slice(keyword, fmt):
    """Each slice its own value (e.g. an anonymiser's per-instance FrameOfReferenceUID)."""
    return lambda ds: setattr(ds, keyword, fmt(int(ds.InstanceNumber)))


def _delete(keyword):
    return lambda ds: delattr(ds, keyword) if keyword in ds else None


def _second_acquisition(dz_mm: float, n: int | None = None, numbers=(1, 2)):
    """Add a copy of the first ``n`` slices shifted ``dz_mm`` along z with new SOP UIDs, as
    AcquisitionNumber numbers[1]; the originals become numbers[0]."""
    def mutate(paths, folder):
        edit(paths, setter(AcquisitionNumber=numbers[0]))
        for p in paths[:n]:
            ds = pydicom.dcmread(p)
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + dz_mm]
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            ds.AcquisitionNumber = numbers[1]
            ds.save_as(folder / f"b_{p.name}")
        return folder
    return mutate


def _rows32(ds):
    ds.Rows = 32
    ds.PixelData = ds.PixelData[: 32 * 64 * 2]


# (id, mutation, expected "error" | "warn" | "volume", regex the error / warning must match)
CASES = [
    # -- patient, study, frame of reference --
    ("patient-half", _hdr(HALF, setter(PatientID="OTHER-PATIENT")), "error",
     r"mixes patients: PatientID '(PHANTOM|OTHER-PATIENT)' in 10 file\(s\) \(slice_00.*vs PatientID"),
    ("patient-one-last", _hdr(LAST, setter(PatientID="P2")), "error", r"PatientID 'P2' in 1 file\(s\) \(slice_0019"),
    ("patient-one-mid", _hdr(MID, setter(PatientID="P2")), "error", r"mixes patients.*'P2'.*slice_0010"),
    ("patient-empty-half", _hdr(HALF, setter(PatientID="")), "error", r"mixes patients.*PatientID ''"),
    ("patient-missing-half", _hdr(HALF, _delete("PatientID")), "error", r"mixes patients.*PatientID ''"),
    ("study-half", _hdr(HALF, setter(StudyInstanceUID="1.2.3.4.5")), "error", r"mixes studies.*'1\.2\.3\.4\.5'"),
    ("study-one-first", _hdr(FIRST, setter(StudyInstanceUID="1.2.3.4.6")), "error",
     r"mixes studies.*'1\.2\.3\.4\.6' in 1 file\(s\) \(slice_0000"),
    ("frame-half", _hdr(HALF, setter(FrameOfReferenceUID="1.2.3.9")), "error",
     r"mixes frames of reference: FrameOfReferenceUID.*'1\.2\.3\.9'"),
    ("frame-one-mid", _hdr(MID, setter(FrameOfReferenceUID="1.2.3.9")), "error", r"'1\.2\.3\.9' in 1 file.*slice_0010"),
    ("frame-two-values-alternating", _hdr(slice(0, 20, 2), setter(FrameOfReferenceUID="1.2.3.9")), "error",
     r"mixes frames of reference"),
    ("frame-missing-all", _hdr(slice(None), _delete("FrameOfReferenceUID")), "error",
     r"20 of 20 file\(s\) have no FrameOfReferenceUID"),
    ("frame-missing-last", _hdr(LAST, _delete("FrameOfReferenceUID")), "error",
     r"1 of 20 file\(s\) have no FrameOfReferenceUID.*slice_0019"),
    ("frame-empty-all", _hdr(slice(None), setter(FrameOfReferenceUID="")), "error", r"no FrameOfReferenceUID"),
    # LIDC-IDRI's anonymiser gave every slice its own FrameOfReferenceUID: not a mix
    ("frame-per-slice-unique", _hdr(slice(None), _per_slice("FrameOfReferenceUID", lambda i: f"1.2.3.{i}")),
     "volume", None),
    ("patient-and-acquisition-mixed", lambda p, f: (_hdr(HALF, setter(PatientID="P2"))(p, f),
                                                    _second_acquisition(1.25, 5)(p, f))[1], "error", "mixes patients"),
    # -- acquisition geometry --
    ("orientation-half", _hdr(HALF, setter(ImageOrientationPatient=[0, 1, 0, 1, 0, 0])), "error",
     r"mixes orientations: slice_0000\.dcm .* vs slice_0010\.dcm"),
    ("rows-half", _hdr(HALF, _rows32), "error", r"mixes image sizes: slice_0000\.dcm 64x64 vs slice_0010\.dcm 32x64"),
    ("pixel-spacing-half", _hdr(HALF, setter(PixelSpacing=[0.7, 0.7])), "error",
     r"mixes pixel spacings: slice_0000\.dcm \[2\.0, 2\.0\] vs slice_0010\.dcm \[0\.7, 0\.7\]"),
    # -- two acquisitions in one series --
    ("acq-interleaved-1.25mm", _second_acquisition(1.25), "warn",
     r"2 acquisitions over overlapping slice positions.*AcquisitionNumber '1': 20 slices.*"
     r"loaded AcquisitionNumber '1'"),
    ("acq-repeated-same-positions", _second_acquisition(0.0, 12), "warn",
     r"AcquisitionNumber '2': 12 slices.*loaded AcquisitionNumber '1' \(most slices"),
    ("acq-second-larger", _second_acquisition(1.25, numbers=(2, 1)), "warn", r"loaded AcquisitionNumber '1'"),
    ("acq-step-and-shoot-blocks", _hdr(slice(None), _per_slice("AcquisitionNumber", lambda i: (i - 1) // 5)),
     "volume", None),
    ("acq-one-per-slice", _hdr(slice(None), _per_slice("AcquisitionNumber", lambda i: i)), "volume", None),
    ("acq-same-number-everywhere", _hdr(slice(None), setter(AcquisitionNumber=3)), "volume", None),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_identity_case(tmp_path, master_root, case):
    name, mutate, expect, match = case
    target = mutate(series(tmp_path, master_root), tmp_path / "s")
    result = outcome(target)
    got = ("warn" if result.meta["warnings"] else "volume") if isinstance(result, Volume) else "error"
    shown = result if got == "error" else result.meta["warnings"]
    assert got == expect, f"{name}: expected {expect}, got {got}: {shown}"
    text = str(result) if got == "error" else " ".join(result.meta["warnings"])
    if match:
        assert re.search(match, text), f"{name}: {text!r} does not match {match!r}"
    if got != "error":
        assert result.shape == phantom().shape  # one acquisition, never both stacks
        np.testing.assert_array_equal(result.hu, phantom().hu)


def test_interleaved_acquisitions_choose_either(tmp_path, master_root):
    """Each acquisition of an interleaved pair loads as its own regular stack."""
    folder = _second_acquisition(1.25)(series(tmp_path, master_root), tmp_path / "s")
    first = load_dicom(folder)
    second = load_dicom(folder, acquisition=2)
    assert first.shape == second.shape == phantom().shape
    assert first.spacing_zyx_mm[0] == pytest.approx(2.5, abs=1e-4)
    assert second.origin_xyz_mm[2] - first.origin_xyz_mm[2] == pytest.approx(1.25, abs=1e-4)
    assert "loaded AcquisitionNumber '2' of 2 acquisitions, as asked" in second.meta["warnings"]
    with pytest.raises(VolumeError, match=r"no AcquisitionNumber '7'; present: '1', '2'"):
        load_dicom(folder, acquisition=7)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", ["", None], ids=["empty", "missing"])
def test_empty_series_uid_gets_one_id_everywhere(tmp_path, master_root, value):
    paths = series(tmp_path, master_root)
    edit(paths, (lambda ds: delattr(ds, "SeriesInstanceUID")) if value is None else setter(SeriesInstanceUID=value))
    vol = outcome(tmp_path / "s")
    assert isinstance(vol, Volume) and vol.series_uid, vol
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)+", vol.series_uid) and len(vol.series_uid) <= 64
    assert any(vol.series_uid in w and "empty SeriesInstanceUID" in w for w in vol.meta["warnings"])
    assert outcome(tmp_path / "s").series_uid == vol.series_uid  # stable: the same files, the same id
    det = Detections(series_uid=vol.series_uid, candidates=(Candidate((1.0, 2.0, 3.0), 0.9),), timings_s={},
                     backend="none", mode="test", model_id="m", engine_version="0", meta={"source": "x"})
    csv_uid = det.to_csv().splitlines()[1].split(",")[0]
    assert csv_uid == det.to_dict()["series_uid"] == det.name == vol.series_uid == safe_name(vol.series_uid)
