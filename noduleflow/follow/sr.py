"""A follow-up as a DICOM Structured Report of the current scan that tracks each nodule across time.

The report is the current scan's Comprehensive 3D SR (`noduleflow.serve.sr.build_sr`: TID 1500,
one TID 1411 group per candidate) with what the follow-up adds:

- a nodule matched to a prior finding keeps the prior report's tracking UID (TID 1500's way of
  saying "the same lesion at another time point"; its identifier names both ranks), and its group
  adds the changes: volume change (%), mean-diameter change (mm), volume-doubling time (days),
  the follow-up status and the Lung-RADS v2022 growth criterion and follow-up category;
- a new nodule keeps the current scan's own tracking UID, status "new";
- a resolved nodule (a prior finding with no match) gets a group of its own under the prior
  report's tracking UID, status "resolved", without geometry (it is not in this scan).

The private codes are those of `noduleflow.serve.sr` (scheme ``99NDF``). The categories are
proposals for a reader to confirm, not a diagnosis.
"""
from __future__ import annotations

from noduleflow.engine.errors import ConfigError

from . import timepoint
from .result import FollowResult

DESCRIPTION = "noduleflow nodule follow-up"


def series_headers(volume) -> list:
    """The headers (pydicom Datasets, no pixel data) of the DICOM files of ``volume``'s series
    under its ``meta["source"]``, sorted by InstanceNumber; [] when it was not read from DICOM."""
    return sorted(timepoint.series_headers(volume), key=lambda d: int(d.get("InstanceNumber", 0) or 0))


def _changes(ff):
    def extra(hd, algorithm):
        from pydicom.sr.codedict import codes

        from noduleflow.serve.sr import private_code, private_evaluation

        def m(name, meaning, value, unit):
            return hd.sr.Measurement(name=private_code(hd, name, meaning), value=float(round(value, 2)), unit=unit,
                                     algorithm_id=algorithm)

        ms = []
        if ff.volume_change_pct is not None:
            ms.append(m("VolumeChange", "Volume change", ff.volume_change_pct, codes.UCUM.Percent))
        if ff.diameter_change_mm is not None:
            ms.append(m("DiameterChange", "Mean diameter change", ff.diameter_change_mm, codes.UCUM.Millimeter))
        if ff.vdt_days is not None:
            ms.append(m("VDT", "Volume doubling time", ff.vdt_days, codes.UCUM.Day))
        qs = [private_evaluation(hd, "FollowUpStatus", "Follow-up status", ff.status)]
        if ff.growing is not None:
            qs.append(private_evaluation(hd, "Growing", "Lung-RADS growth", "present" if ff.growing else "absent"))
        if ff.lung_rads is not None:
            qs.append(private_evaluation(hd, "LungRADSFollowUp", "Lung-RADS v2022 follow-up category (proposal)",
                                         ff.lung_rads))
        return ms, qs
    return extra


def _resolved_groups(resolved):
    def groups(hd, algorithm):
        from noduleflow.serve.sr import private_evaluation

        return [hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=ff.prior_tracking_uid,
                                                         identifier=f"prior finding {ff.prior_rank}"),
            algorithm_id=algorithm,
            qualitative_evaluations=[private_evaluation(hd, "FollowUpStatus", "Follow-up status", "resolved")])
            for ff in resolved if ff.prior_tracking_uid]
    return groups


def build_follow_sr(result: FollowResult, evidence, *, model_id: str, engine_version: str):
    """The follow-up SR of ``result`` (see the module's text). ``evidence``: the current series'
    headers (`series_headers`). ConfigError when there are none (the current scan is not DICOM,
    or the result holds no time point)."""
    from noduleflow.serve.sr import build_sr

    tp = result.current_tp
    if tp is None or not evidence:
        raise ConfigError("a follow-up SR needs the current scan as a DICOM series (its headers are the SR's "
                          "evidence)")
    tracking, extra = {}, {}
    for ff in result.findings:
        if ff.status == "resolved" or ff.current_rank is None:
            continue
        i = ff.current_rank - 1
        extra[i] = _changes(ff)
        if ff.status == "matched" and ff.prior_tracking_uid:
            tracking[i] = (ff.prior_tracking_uid, f"finding {ff.current_rank} (prior finding {ff.prior_rank})")
    return build_sr(tp.detections, evidence, model_id=model_id, engine_version=engine_version, tracking=tracking,
                    extra=extra, extra_groups=_resolved_groups(result.of_status("resolved")),
                    description=DESCRIPTION)
