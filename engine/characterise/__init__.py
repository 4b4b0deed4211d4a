"""Characterise findings: per-finding segmentation, measurements, type, attributes, location and
the Lung-RADS v2022 baseline category (a proposal for a reader to confirm, not a diagnosis).

    finding = characterise(hu, spacing_zyx_mm, lung_mask, center_zyx)          # one lesion
    findings = characterise_scan(volume, pre, centres_xyz_mm)                    # a detection's

Torch-free: numpy and numba only, like the rest of the engine.
"""
from .finding import CALCIFICATION, NODULE_TYPES, Finding
from .location import LungGeometry
from .lungrads import DISCLAIMER, ScanCategory, scan_category
from .scan import characterise_scan, lung_mask_on
from .segment import CharacteriseParams, characterise

__all__ = ["CALCIFICATION", "NODULE_TYPES", "DISCLAIMER", "CharacteriseParams", "Finding", "LungGeometry",
           "ScanCategory", "characterise", "characterise_scan", "lung_mask_on", "scan_category"]
