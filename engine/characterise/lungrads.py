"""Lung-RADS v2022 baseline categories from a finding's type and size.

A proposal for a reader to confirm, never a diagnosis: the rules below see only what the
segmentation measured; benign features (perifissural shape, fat), the reader's judgement of
suspicious features (category 4X) and the clinical context are theirs.

Source: American College of Radiology, Lung-RADS v2022 assessment categories (released
November 2022), baseline screening rows. Sizes are the mean diameter: the average of the long
and short axis measured on the same axial image, rounded to one decimal (mm).

=========================  ========================================================  ========
Type                       Baseline size rule                                         Category
=========================  ========================================================  ========
no nodule                  --                                                         1
calcified (benign pattern) complete, central, popcorn or concentric calcification     1
solid                      < 6 mm                                                     2
solid                      6 to < 8 mm                                                3
solid                      8 to < 15 mm                                               4A
solid                      >= 15 mm                                                   4B
part-solid                 total mean diameter < 6 mm                                 2
part-solid                 >= 6 mm total, solid component < 6 mm                      3
part-solid                 solid component 6 to < 8 mm                                4A
part-solid                 solid component >= 8 mm                                    4B
ground glass (non-solid)   < 30 mm                                                    2
ground glass (non-solid)   >= 30 mm                                                   3
=========================  ========================================================  ========

The scan's category is the highest of its findings', reported with the finding that drives it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

CATEGORIES = ("1", "2", "3", "4A", "4B")
TYPES = ("solid", "part_solid", "ground_glass", "calcified")
DISCLAIMER = ("Lung-RADS v2022 baseline category proposed from automatic measurements: for a reader to "
              "confirm, not a diagnosis")
SOURCE = "ACR Lung-RADS v2022 (baseline screening)"


def category(nodule_type: str, mean_diameter_mm: float, solid_core_mm: float | None = None) -> str:
    """The v2022 baseline category of one nodule (see the module's table). ``solid_core_mm``:
    the mean diameter of a part-solid nodule's solid component (mm; None counts as 0)."""
    if nodule_type not in TYPES:
        raise ConfigError(f"nodule type must be one of {TYPES}, got {nodule_type!r}")
    if not mean_diameter_mm >= 0:
        raise ConfigError(f"mean diameter must be >= 0 mm, got {mean_diameter_mm}")
    d = round(float(mean_diameter_mm), 1)
    if nodule_type == "calcified":
        return "1"
    if nodule_type == "ground_glass":
        return "2" if d < 30.0 else "3"
    if nodule_type == "solid":
        return "2" if d < 6.0 else "3" if d < 8.0 else "4A" if d < 15.0 else "4B"
    core = round(float(solid_core_mm or 0.0), 1)
    if d < 6.0:
        return "2"
    return "3" if core < 6.0 else "4A" if core < 8.0 else "4B"


def rank(cat: str) -> int:
    """Order of a category (higher: more suspicious)."""
    if cat not in CATEGORIES:
        raise ConfigError(f"Lung-RADS category must be one of {CATEGORIES}, got {cat!r}")
    return CATEGORIES.index(cat)


@dataclass(frozen=True)
class ScanCategory:
    """The scan's proposed category, the finding that drives it (its index in the list given to
    `scan_category`, None without one) and the text that says what this is."""
    category: str
    driver: int | None
    n_findings: int
    version: str = "v2022"
    source: str = SOURCE
    note: str = DISCLAIMER

    def to_dict(self) -> dict:
        return {"category": self.category, "driver_index": self.driver, "n_findings": self.n_findings,
                "version": self.version, "source": self.source, "note": self.note}


def scan_category(categories) -> ScanCategory:
    """``categories``: one category per finding (None: not assessed) -> the highest, with the
    index of the first finding that has it; "1" when no finding has one."""
    best, driver, n = "1", None, 0
    for i, c in enumerate(categories):
        if c is None:
            continue
        n += 1
        if driver is None or rank(c) > rank(best):
            best, driver = c, i
    return ScanCategory(best, driver, n)
