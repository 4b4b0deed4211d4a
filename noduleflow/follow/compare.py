"""`follow(prior, current)`: detect and characterise both scans, register the prior onto the
current one, match the findings one to one, and report each nodule's change."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from noduleflow.engine.config import DetectorConfig
from noduleflow.engine.detector import Detector
from noduleflow.engine.errors import ConfigError

from .lungrads_followup import GROWTH_MM, growing_category, growth, new_category, stable_category
from .match import MATCH_MIN_MM, MATCH_RADIUS_FACTOR, match_findings
from .register import Registration, RegistrationParams, register
from .result import FollowFinding, FollowResult, scan_followup_category, volume_doubling_days
from .timepoint import TimePoint, load_timepoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FollowConfig:
    """``characterise_top``: candidates characterised per scan when `follow` runs the detector
    itself; ``min_prob``: findings below this probability take no part; matching: a pair may be
    max(``match_min_mm``, ``match_radius_factor`` x the larger radius) apart after registration;
    ``growth_mm``: the Lung-RADS growth threshold on the mean diameter (v2022: 1.5 mm);
    ``registration``: `RegistrationParams`."""
    characterise_top: int = 10
    min_prob: float = 0.0
    match_min_mm: float = MATCH_MIN_MM
    match_radius_factor: float = MATCH_RADIUS_FACTOR
    growth_mm: float = GROWTH_MM
    registration: RegistrationParams = field(default_factory=RegistrationParams)

    def __post_init__(self) -> None:
        if self.characterise_top < 1:
            raise ConfigError(f"characterise_top must be >= 1, got {self.characterise_top}")
        if not 0.0 <= self.min_prob < 1.0:
            raise ConfigError(f"min_prob must be in [0, 1), got {self.min_prob}")
        if not self.match_min_mm > 0 or not self.match_radius_factor > 0:
            raise ConfigError(f"match_min_mm and match_radius_factor must be > 0, got {self.match_min_mm} and "
                              f"{self.match_radius_factor}")
        if not self.growth_mm > 0:
            raise ConfigError(f"growth_mm must be > 0, got {self.growth_mm}")


def _findings(tp: TimePoint, min_prob: float):
    """(candidate index, finding, world centroid x, y, z mm) of the segmented findings."""
    out = []
    for i, c in enumerate(tp.detections):
        f = c.finding
        if f is None or not f.segmented or c.prob < min_prob:
            continue
        out.append((i, f, tp.volume.voxel_to_world(np.asarray(f.centroid_zyx, dtype=np.float64))))
    return out


def _xyz(v) -> tuple[float, float, float]:
    return tuple(round(float(a), 3) for a in v)


def _interval(prior: TimePoint, current: TimePoint, interval_days):
    if interval_days is not None:
        if not interval_days > 0:
            raise ConfigError(f"interval_days must be > 0, got {interval_days}")
        return float(interval_days), "given"
    if prior.study_date is None or current.study_date is None:
        return None, "unknown: no StudyDate in " + " and ".join(
            r for r, tp in (("prior", prior), ("current", current)) if tp.study_date is None)
    days = (current.study_date - prior.study_date).days
    if days < 0:
        raise ConfigError(f"the prior scan ({prior.study_date}) is later than the current one ({current.study_date}): "
                          "swap PRIOR and CURRENT")
    if days == 0:
        return None, "unknown: both scans have StudyDate " + current.study_date.isoformat()
    return float(days), "StudyDate"


def _matched(i, fp, xp, mp, j, fc, xc, dist, prior, current, interval, growth_mm) -> FollowFinding:
    g = growth(fc.type, fp.mean_diameter_mm, fc.mean_diameter_mm, prior_core_mm=fp.solid_core_mean_diameter_mm,
                   current_core_mm=fc.solid_core_mean_diameter_mm, interval_days=interval, threshold_mm=growth_mm)
    core = fc.solid_core_mean_diameter_mm
    if fp.type == "ground_glass" and fc.type == "part_solid":
        cat, rule = new_category("part_solid", fc.mean_diameter_mm, core), "ground glass with a new solid component"
    elif g.growing:
        cat, rule = growing_category(fc.type, fc.mean_diameter_mm, core), f"growing {fc.type}"
    else:
        cat = stable_category(fc.type, fc.mean_diameter_mm, core, prior_category=fp.lung_rads,
                                  interval_days=interval)
        rule = f"stable {fc.type}" + (f", stepped down from {fp.lung_rads}" if cat != fc.lung_rads else "")
    dv = 100.0 * (fc.volume_mm3 - fp.volume_mm3) / fp.volume_mm3 if fp.volume_mm3 > 0 else None
    return FollowFinding(
        "matched", i + 1, j + 1, prior.tracking_uids[i], current.tracking_uids[j], _xyz(xp), _xyz(mp), _xyz(xc),
        round(dist, 2), fp.type, fc.type, fp.mean_diameter_mm, fc.mean_diameter_mm,
        round(fc.mean_diameter_mm - fp.mean_diameter_mm, 1), fp.solid_core_mean_diameter_mm, core,
        round(fp.volume_mm3, 1), round(fc.volume_mm3, 1), None if dv is None else round(dv, 1),
        volume_doubling_days(fp.volume_mm3, fc.volume_mm3, interval), interval, g.growing, cat, rule, g.note)


def compare(prior: TimePoint, current: TimePoint, config: FollowConfig | None = None,
            interval_days: float | None = None, registration: Registration | None = None) -> FollowResult:
    """The follow-up of two loaded, characterised time points (`timepoint.load_timepoint`):
    register (unless ``registration`` is given), match, measure. See `follow`."""
    cfg = config or FollowConfig()
    timings = {}
    warnings = []
    if prior.detections.series_uid == current.detections.series_uid:
        warnings.append(f"prior and current are the same series {prior.detections.series_uid}")
        log.warning("%s", warnings[-1])
    interval, interval_source = _interval(prior, current, interval_days)
    t = time.perf_counter()
    reg = registration or register(prior.lung_box, prior.lung_mask, current.lung_box, current.lung_mask,
                                   cfg.registration)
    timings["register"] = time.perf_counter() - t
    if reg.lung_dice < 0.7:
        warnings.append(f"the lungs overlap poorly after registration (Dice {reg.lung_dice:.3f}): matches may be wrong")
        log.warning("%s", warnings[-1])
    t = time.perf_counter()
    pf, cf = _findings(prior, cfg.min_prob), _findings(current, cfg.min_prob)
    mapped = reg.map_points([x for _, _, x in pf]) if pf else np.zeros((0, 3))
    pairs, lost, fresh = match_findings(
        mapped, [f.mean_diameter_mm / 2 for _, f, _ in pf], [x for _, _, x in cf],
        [f.mean_diameter_mm / 2 for _, f, _ in cf], min_mm=cfg.match_min_mm, radius_factor=cfg.match_radius_factor)
    out = []
    for a, b, dist in sorted(pairs, key=lambda p: cf[p[1]][0]):
        (i, fp, xp), (j, fc, xc) = pf[a], cf[b]
        out.append(_matched(i, fp, xp, mapped[a], j, fc, xc, dist, prior, current, interval, cfg.growth_mm))
    for b in fresh:
        j, fc, xc = cf[b]
        out.append(FollowFinding(
            "new", current_rank=j + 1, current_tracking_uid=current.tracking_uids[j], current_xyz_mm=_xyz(xc),
            current_type=fc.type, current_mean_diameter_mm=fc.mean_diameter_mm,
            current_solid_core_mm=fc.solid_core_mean_diameter_mm, current_volume_mm3=round(fc.volume_mm3, 1),
            interval_days=interval,
            lung_rads=new_category(fc.type, fc.mean_diameter_mm, fc.solid_core_mean_diameter_mm),
            lung_rads_rule=f"new {fc.type}"))
    for a in lost:
        i, fp, xp = pf[a]
        out.append(FollowFinding(
            "resolved", prior_rank=i + 1, prior_tracking_uid=prior.tracking_uids[i], prior_xyz_mm=_xyz(xp),
            prior_in_current_xyz_mm=_xyz(mapped[a]), prior_type=fp.type, prior_mean_diameter_mm=fp.mean_diameter_mm,
            prior_solid_core_mm=fp.solid_core_mean_diameter_mm, prior_volume_mm3=round(fp.volume_mm3, 1),
            interval_days=interval, note="no current finding within the matching distance"))
    timings["match"] = time.perf_counter() - t
    settings = {**asdict(cfg), "interval_days_given": interval_days}
    return FollowResult(prior.summary(), current.summary(), interval, interval_source, reg.to_dict(), tuple(out),
                        scan_followup_category(out), settings, timings, tuple(warnings), prior, current)


def follow(prior, current, detector: Detector | None = None, *, config: FollowConfig | None = None,
           interval_days: float | None = None, series_uid: str | None = None) -> FollowResult:
    """Compare a prior scan with a current one, nodule by nodule.

    ``prior`` / ``current``: each a series path (DICOM folder or file, .mhd/.mha, .nii/.nii.gz), a
    ``detect`` result JSON (its characterised findings are reused; its scan is loaded from the
    JSON's ``meta.source``, refused when that is not there), a `Volume`, or `Detections` from
    ``Detector.detect(..., keep_preprocessed=True)`` (with ``characterise_top`` > 0).
    ``detector``: the `Detector` for the scans that need detecting (default: the shipped model
    with ``characterise_top=config.characterise_top``; yours must characterise). ``interval_days``:
    the time between the scans, overriding their StudyDates (needed for the volume-doubling time
    and the 12-month growth window when the scans carry no date, e.g. MetaImage). ``series_uid``:
    picks a DICOM series among several (both inputs).

    Steps: detect and characterise both; register the prior's 1 mm lung box onto the current's
    (`register.register`: lungs' centres of mass, rigid, affine, optional B-spline); map each prior
    finding's centroid into the current scan; match one to one (`match.match_findings`); report
    per nodule matched / new / resolved, diameter and volume change, volume-doubling time and the
    Lung-RADS v2022 follow-up category (`lungrads_followup`: a proposal for a reader to confirm).
    -> `FollowResult` (``.save(folder)`` writes follow.json, follow.csv and the pictures)."""
    cfg = config or FollowConfig()
    if detector is not None and detector.config.characterise_top < 1:
        raise ConfigError("the detector must characterise its findings: create it with characterise_top > 0")
    own = []
    timings = {}

    def detect(volume):
        if not own and detector is None:
            own.append(Detector(config=DetectorConfig(characterise_top=cfg.characterise_top)))
        return (detector or own[0]).detect(volume, keep_preprocessed=True)

    try:
        t = time.perf_counter()
        tp_prior = load_timepoint(prior, detect, role="prior", series_uid=series_uid)
        timings["prior"] = time.perf_counter() - t
        t = time.perf_counter()
        tp_current = load_timepoint(current, detect, role="current", series_uid=series_uid)
        timings["current"] = time.perf_counter() - t
    finally:
        for d in own:
            d.close()
    res = compare(tp_prior, tp_current, cfg, interval_days)
    res.timings_s.update(timings)
    res.timings_s["total"] = sum(v for k, v in res.timings_s.items() if k != "total")
    return res

