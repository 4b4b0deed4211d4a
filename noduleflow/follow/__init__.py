"""Follow-up of lung nodules across two CT scans of one patient.

    res = follow("prior/series", "current/series")      # or detect result JSONs, Volumes, Detections
    res.save("out/")                                    # follow.json, follow.csv, pair_<n>.png
    print("\\n".join(res.table()))

Register the prior onto the current scan (`register`: lungs, rigid, affine, optional B-spline;
SimpleITK), match the characterised findings one to one (`match`), and report each nodule as
matched, new or resolved with its diameter and volume change, volume-doubling time and the
Lung-RADS v2022 follow-up category (`lungrads_followup`: a proposal for a reader to confirm, not
a diagnosis). Application code over the engine: it may use everything the engine does.
"""
from .compare import FollowConfig, compare, follow
from .lungrads_followup import growing_category, growth, new_category, stable_category
from .match import assignment, match_findings
from .register import Registration, RegistrationParams, register
from .result import FollowFinding, FollowResult, volume_doubling_days
from .timepoint import TimePoint, load_timepoint

__all__ = ["FollowConfig", "FollowFinding", "FollowResult", "Registration", "RegistrationParams", "TimePoint",
           "assignment", "compare", "follow", "growing_category", "growth", "load_timepoint", "match_findings",
           "new_category", "register", "stable_category", "volume_doubling_days"]
