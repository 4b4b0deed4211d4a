"""Lung-RADS v2022 on a follow-up scan: the growth criterion and the categories of growing,
stable and new nodules.

A proposal for a reader to confirm, never a diagnosis: the rules see only the automatic
measurements of the two scans; benign features, the reader's judgement (category 4X, perifissural
or juxtapleural nodules, airway nodules, atypical cysts) and the clinical context are theirs.

Source: American College of Radiology, Lung-RADS v2022 assessment categories (released November
2022). Sizes are mean diameters (the average of the long and short axis on one axial image,
rounded to 0.1 mm); for a part-solid nodule, "solid component" is the mean diameter of its solid
core. The rows encoded here (the baseline rows are `noduleflow.engine.characterise.lungrads`):

* **Growth**: an increase in mean diameter of more than 1.5 mm within a 12-month interval (v2022
  replaced v1.1's > 1.5 mm without an interval). For a part-solid nodule the solid component's
  growth counts as growth too; a ground-glass nodule that gains a solid component is treated as a
  part-solid nodule with a new solid component.

==========================  ===========================================================  ========
Type                        Follow-up rule                                               Category
==========================  ===========================================================  ========
calcified (benign pattern)  any                                                           1
solid                       new < 4 mm                                                    2
solid                       new 4 to < 6 mm                                               3
solid                       new 6 to < 8 mm, or growing < 8 mm                            4A
solid                       new or growing >= 8 mm                                        4B
part-solid                  new, total mean diameter < 6 mm                               3
part-solid                  new or growing, solid component < 4 mm (total >= 6 mm)        4A
part-solid                  new or growing, solid component >= 4 mm                       4B
ground glass (non-solid)    new or growing < 30 mm                                        2
ground glass (non-solid)    new >= 30 mm                                                  3
ground glass (non-solid)    >= 30 mm, stable or slowly growing                            2
any                         category 3 stable or smaller at a >= 6-month follow-up        2
any                         category 4A stable or smaller at a >= 3-month follow-up       3
==========================  ===========================================================  ========

A matched nodule that is neither growing nor stepped down by the last two rows keeps the
category its current size gives under the baseline rules. Growth over more than 12 months
(v2022's "slow-growing" solid or part-solid nodule, 4B after growth over several screening
exams) is reported with a note for the reader and categorised as growing.
"""
from __future__ import annotations

from dataclasses import dataclass

from noduleflow.engine.characterise.lungrads import TYPES, category
from noduleflow.engine.errors import ConfigError

GROWTH_MM = 1.5            # v2022: mean diameter increase > 1.5 mm ...
GROWTH_WINDOW_DAYS = 365   # ... within a 12-month interval
STABLE_3_DAYS = 180        # a category 3 nodule stable at the 6-month follow-up -> 2
STABLE_4A_DAYS = 90        # a category 4A nodule stable at the 3-month follow-up -> 3
SOURCE = "ACR Lung-RADS v2022 (follow-up: growth, new and stable nodules)"
DISCLAIMER = ("Lung-RADS v2022 follow-up category proposed from automatic measurements of two scans: for a "
              "reader to confirm, not a diagnosis")


@dataclass(frozen=True)
class Growth:
    """The growth criterion: ``growing`` (None when a size is missing), the diameter change (mm)
    that decided it and a note (which diameter, interval caveats)."""
    growing: bool | None
    change_mm: float | None
    note: str = ""


def growth(nodule_type: str, prior_mm: float | None, current_mm: float | None, *,
           prior_core_mm: float | None = None, current_core_mm: float | None = None,
           interval_days: float | None = None, threshold_mm: float = GROWTH_MM) -> Growth:
    """The v2022 growth criterion of one matched nodule: mean diameter (mm, prior and current)
    up by more than ``threshold_mm``; for a part-solid nodule the solid core's mean diameter too
    (a missing core counts as 0 mm). ``interval_days``: between the two scans (None: unknown, the
    diameters decide alone, and the note says so)."""
    _check_type(nodule_type)
    if prior_mm is None or current_mm is None:
        return Growth(None, None, "a diameter is missing")
    change = round(float(current_mm), 1) - round(float(prior_mm), 1)
    grows = change > threshold_mm
    note = "mean diameter"
    if nodule_type == "part_solid":
        core_change = round(float(current_core_mm or 0.0), 1) - round(float(prior_core_mm or 0.0), 1)
        if core_change > threshold_mm and not grows:
            grows, change, note = True, core_change, "solid component"
    if interval_days is None:
        note += "; interval unknown: judged on the diameters alone"
    elif grows and interval_days > GROWTH_WINDOW_DAYS:
        note += (f"; over {interval_days:.0f} days (> 12 months): slow growth, which v2022 rates 4B for solid "
                 "and part-solid nodules that grow over several exams; reader to judge")
    return Growth(bool(grows), round(change, 1), note)


def new_category(nodule_type: str, mean_diameter_mm: float, solid_core_mm: float | None = None) -> str:
    """The v2022 category of a nodule that the prior scan did not have (see the module's table)."""
    _check_type(nodule_type)
    d = _mm(mean_diameter_mm)
    if nodule_type == "calcified":
        return "1"
    if nodule_type == "ground_glass":
        return "2" if d < 30.0 else "3"
    if nodule_type == "solid":
        return "2" if d < 4.0 else "3" if d < 6.0 else "4A" if d < 8.0 else "4B"
    if d < 6.0:
        return "3"
    return "4A" if _mm(solid_core_mm or 0.0) < 4.0 else "4B"


def growing_category(nodule_type: str, mean_diameter_mm: float, solid_core_mm: float | None = None) -> str:
    """The v2022 category of a matched nodule that meets the growth criterion."""
    _check_type(nodule_type)
    d = _mm(mean_diameter_mm)
    if nodule_type == "calcified":
        return "1"
    if nodule_type == "ground_glass":
        return "2" if d < 30.0 else "3"
    if nodule_type == "solid":
        return "4A" if d < 8.0 else "4B"
    return "4A" if _mm(solid_core_mm or 0.0) < 4.0 else "4B"


def stable_category(nodule_type: str, mean_diameter_mm: float, solid_core_mm: float | None = None, *,
                    prior_category: str | None = None, interval_days: float | None = None) -> str:
    """The v2022 category of a matched nodule that does not grow: the baseline category of its
    current size, stepped down when the prior's was 3 (-> 2, interval >= 6 months) or 4A (-> 3,
    interval >= 3 months); a ground-glass nodule >= 30 mm stable -> 2. Unknown interval: no step."""
    base = category(nodule_type, mean_diameter_mm, solid_core_mm)
    if nodule_type == "ground_glass" and base == "3":
        return "2"
    if interval_days is None or prior_category is None:
        return base
    if prior_category == "3" and base == "3" and interval_days >= STABLE_3_DAYS:
        return "2"
    if prior_category == "4A" and base in ("3", "4A") and interval_days >= STABLE_4A_DAYS:
        return "3"
    return base


def _check_type(nodule_type: str) -> None:
    if nodule_type not in TYPES:
        raise ConfigError(f"nodule type must be one of {TYPES}, got {nodule_type!r}")


def _mm(v: float) -> float:
    if not v >= 0:
        raise ConfigError(f"a diameter must be >= 0 mm, got {v}")
    return round(float(v), 1)
