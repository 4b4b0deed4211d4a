"""Detections as a DICOM Structured Report, built with highdicom.

A Comprehensive 3D SR holding a TID 1500 Measurement Report: one TID 1411 volumetric ROI
group per candidate, its location a SCOORD3D POINT (world mm, LPS) in the source series'
frame of reference, finding type "Nodule" (SCT 27925004), finding site "Lung", and the
model's probability as a measurement (DCM 122157 "Probability", unit "1"). A series with no
candidate gets one TID 1501 group saying "Nodule: Absent". The source CT
instances are the SR's evidence, so it references the series it was computed from.

Characterised findings (`noduleflow.engine.characterise`) add, in their group: volume (mm3),
long and short axis, the Lung-RADS mean diameter (Diameter, derivation Mean), the solid core's
mean diameter (part-solid), mean and maximum HU, and qualitative evaluations (type, calcification,
spiculation, lobulation, cavity, juxta-pleural, juxta-vascular, side, zone, the proposed Lung-RADS
v2022 category) in the private scheme ``99NDF``. The tracking identifier is "finding N" with the
UID of the result JSON (`engine.results.tracking_uid`), so a follow-up report can refer to it; the
scan's proposed category and the note that it is for a reader to confirm go in a last group.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

from noduleflow.engine.results import tracking_uid

log = logging.getLogger("noduleflow.serve")

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SERIES_NUMBER = 9901   # SR series number; the SR is a derived series of its own
PRIVATE_SCHEME = "99NDF"   # this project's codes for what SNOMED / DCM do not name (coding scheme 99*: private)

# Patient and study attributes the SR copies from its evidence (highdicom reads them as
# attributes). Type 2 in the CT and SR IODs: present but possibly empty, and often absent in
# anonymised or scanner-exported data. A missing one must never cost a series its results.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2(ds):
    """``ds``, or a copy of it with every missing (or None) `TYPE2_COPIED` attribute set empty."""
    missing = [k for k in TYPE2_COPIED if ds.get(k) is None]
    if not missing:
        return ds
    log.info("series %s: no %s in the images; left empty in the SR", ds.get("SeriesInstanceUID", "?"),
             ", ".join(missing))
    ds = copy.deepcopy(ds)
    for k in missing:
        setattr(ds, k, "")
    return ds


def build_sr(detections, evidence, *, model_id: str, engine_version: str, device_uid: str | None = None,
             complete: bool = True, previous=None, tracking=None, extra=None, extra_groups=None,
             description: str | None = None):
    """``evidence``: the source CT instances' headers (pydicom Datasets, pixel data not needed).
    ``complete``: whether the series is known to be whole; False gives CompletionFlag PARTIAL
    (a series whose sender was cut off). ``previous``: the SR this one supersedes (an earlier
    version of the series), referenced as its predecessor document. ``tracking``: {candidate
    index (0-based): (tracking UID, identifier)} in place of a characterised finding's own (a
    follow-up gives a matched nodule the prior report's UID); ``extra``: {candidate index:
    callable (highdicom module, algorithm id) -> (measurements, qualitative evaluations)} added
    to its group; ``extra_groups``: callable
    (highdicom module, algorithm id) -> more groups at the end. Returns a highdicom
    ``Comprehensive3DSR``."""
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if not evidence:
        raise ValueError("an SR needs the source instances as evidence")
    evidence = [_with_type2(evidence[0]), *evidence[1:]]
    ref = evidence[0]
    frame_uid = str(ref.FrameOfReferenceUID)
    series_uid = str(ref.SeriesInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(name=model_id, version=engine_version)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid or generate_uid(entropy_srcs=["noduleflow", model_id]),
            name="noduleflow", manufacturer_name="noduleflow", model_name=model_id))
    groups = []
    for i, c in enumerate(detections.candidates, 1):
        surface = hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([c.center_xyz_mm], dtype=np.float64),
            frame_of_reference_uid=frame_uid,
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid))
        prob = hd.sr.Measurement(name=codes.DCM.Probability, value=float(round(c.prob, 6)),
                                 unit=codes.UCUM.NoUnits, algorithm_id=algorithm)
        measurements = [prob]
        f = getattr(c, "finding", None)
        characterised = f is not None and f.segmented
        if c.diameter_mm is not None and not characterised:  # the detector's estimate (stage-1 extent)
            measurements.append(hd.sr.Measurement(name=codes.SCT.Diameter, value=float(round(c.diameter_mm, 1)),
                                                  unit=codes.UCUM.Millimeter, algorithm_id=algorithm))
        qualitative = []
        if characterised:
            measurements += _finding_measurements(hd, codes, f, algorithm)
            qualitative = _finding_evaluations(hd, f)
        if tracking and (i - 1) in tracking:
            uid, name = tracking[i - 1]
            track = hd.sr.TrackingIdentifier(uid=uid, identifier=name)
        elif f is not None:
            track = hd.sr.TrackingIdentifier(uid=tracking_uid(detections.series_uid, i - 1, c.center_xyz_mm),
                                             identifier=f"finding {i}")
        else:
            track = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"candidate {i}")
        if extra and (i - 1) in extra:
            more_m, more_q = extra[i - 1](hd, algorithm)
            measurements += more_m
            qualitative += more_q
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=track,
            referenced_volume_surface=surface,
            finding_type=codes.SCT.Nodule,
            finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
            algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=qualitative or None))
    lr = detections.lung_rads if hasattr(detections, "lung_rads") else None
    if lr is not None:   # the scan's proposal, with the finding that drives it and what it is
        driver = "none" if lr.driver is None else f"finding {lr.driver + 1}"
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[detections.series_uid, "lung-rads"]), identifier="Lung-RADS"),
            algorithm_id=algorithm,
            qualitative_evaluations=[
                private_evaluation(hd, "LungRADS", "Lung-RADS v2022 category (proposal)", lr.category),
                private_evaluation(hd, "LungRADSDriver", "Finding that drives the category", driver),
                private_evaluation(hd, "Note", "Note", lr.note)]))
    if extra_groups is not None:
        groups += extra_groups(hd, algorithm)
    if not groups:   # TID 1500 needs one group: say "Nodule: absent" for the series (TID 1501)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="no candidates"),
            finding_type=codes.SCT.Nodule, algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Nodule, codes.SCT.Absent)]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("24627-2", "LN", "CT Chest"),
        imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=generate_uid(), series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="noduleflow",
        series_description=description or f"noduleflow nodule candidates ({model_id})", is_complete=bool(complete),
        previous_versions=[previous] if previous is not None else None)


def private_code(hd, value: str, meaning: str):
    return hd.sr.CodedConcept(value[:16], PRIVATE_SCHEME, meaning[:64])


def private_evaluation(hd, name: str, meaning: str, value: str):
    """A TID 1500 qualitative evaluation in the private scheme: ``meaning`` = ``value``."""
    return hd.sr.QualitativeEvaluation(private_code(hd, name, meaning),
                                       private_code(hd, str(value).replace(" ", "_"), str(value)))


def _finding_measurements(hd, codes, f, algorithm) -> list:
    mm, hu = codes.UCUM.Millimeter, codes.UCUM.HounsfieldUnit

    def m(name, value, unit, derivation=None):
        return hd.sr.Measurement(name=name, value=float(round(value, 2)), unit=unit, algorithm_id=algorithm,
                                 derivation=derivation)

    out = [m(codes.SCT.Volume, f.volume_mm3, codes.UCUM.CubicMillimeter),
           m(codes.SCT.LongAxis, f.long_axis_mm, mm), m(codes.SCT.ShortAxis, f.short_axis_mm, mm),
           m(codes.SCT.Diameter, f.mean_diameter_mm, mm, codes.SCT.Mean)]
    if f.solid_core_mean_diameter_mm is not None:
        out.append(m(private_code(hd, "SolidCoreDiam", "Solid component mean diameter"),
                     f.solid_core_mean_diameter_mm, mm))
    out += [m(private_code(hd, "MeanHU", "Mean attenuation"), f.mean_hu, hu),
            m(private_code(hd, "MaxHU", "Maximum attenuation"), f.max_hu, hu)]
    return out


def _finding_evaluations(hd, f) -> list:
    yes = {True: "present", False: "absent"}
    out = [private_evaluation(hd, "NoduleType", "Nodule type", f.type),
           private_evaluation(hd, "Calcification", "Calcification", f.calcification),
           private_evaluation(hd, "Spiculation", "Spiculation", yes[f.spiculation]),
           private_evaluation(hd, "Lobulation", "Lobulation", yes[f.lobulation]),
           private_evaluation(hd, "Cavity", "Cavity", yes[f.cavity]),
           private_evaluation(hd, "JuxtaPleural", "Juxta-pleural", yes[f.juxta_pleural]),
           private_evaluation(hd, "JuxtaVascular", "Juxta-vascular", yes[f.juxta_vascular])]
    if f.location is not None:
        out += [private_evaluation(hd, "Side", "Lung side", f.location.side),
                private_evaluation(hd, "Zone", "Lung zone", f.location.zone)]
    if f.lung_rads is not None:
        out.append(private_evaluation(hd, "LungRADS", "Lung-RADS v2022 category (proposal)", f.lung_rads))
    return out


def write_sr(detections, evidence, path, **kw) -> Path:
    sr = build_sr(detections, evidence, **kw)
    path = Path(path)
    sr.save_as(path, enforce_file_format=True)
    return path


def read_sr_points(path) -> list[tuple[tuple[float, float, float], float, str]]:
    """Read an SR written by `write_sr` back with pydicom: [(xyz mm, probability, frame UID)]."""
    import pydicom

    ds = pydicom.dcmread(path)
    out = []

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if name == "Volumetric ROI Measurements" or name.startswith("Measurement Group"):
                point, prob = None, None
                for sub in it.ContentSequence:
                    if sub.ValueType == "SCOORD3D":
                        point = (tuple(float(v) for v in sub.GraphicData), str(sub.ReferencedFrameOfReferenceUID))
                    elif sub.ValueType == "NUM" and sub.ConceptNameCodeSequence[0].CodeValue == "122157":
                        prob = float(sub.MeasuredValueSequence[0].NumericValue)
                if point is not None and prob is not None:
                    out.append((point[0], prob, point[1]))
            elif "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    return out
