"""`Finding`: what the characterisation of one candidate gives (frozen), and its JSON form."""
from __future__ import annotations

import base64
from dataclasses import dataclass, fields

import numpy as np

from ..errors import ConfigError
from .location import Location

NODULE_TYPES = ("solid", "part_solid", "ground_glass", "calcified")
CALCIFICATION = ("none", "partial", "total")


def pack_mask(mask: np.ndarray) -> str:
    """A bool array as base64 of its packed bits (C order); its shape travels beside it."""
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool).ravel()).tobytes()).decode("ascii")


def unpack_mask(text: str, shape_zyx) -> np.ndarray:
    """`pack_mask`'s inverse -> bool array of ``shape_zyx``."""
    n = int(np.prod(shape_zyx))
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    if bits.size < n:
        raise ConfigError(f"packed mask holds {bits.size} bits, shape {tuple(shape_zyx)} needs {n}")
    return bits[:n].astype(bool).reshape(tuple(int(s) for s in shape_zyx))


@dataclass(frozen=True, eq=False)
class Finding:
    """One characterised finding, in the grid of the scan it was measured on.

    ``mask``: bool (z, y, x), the lesion's tight box; ``offset_zyx``: the scan index of
    ``mask[0, 0, 0]``; ``spacing_zyx_mm``: that scan's voxel size. ``segmented`` is False when
    nothing lesion-like was found at the point (then every measurement is 0 and ``type`` is
    "none"). Sizes in mm (``mean_diameter_mm``: Lung-RADS's, (long + short) / 2 on the axial
    slice ``axial_index`` of largest extent, rounded to 0.1 mm), volumes in mm^3, HU of the
    unsmoothed scan. ``solid_core_*``: part-solid lesions only (None otherwise).
    """
    segmented: bool
    mask: np.ndarray
    offset_zyx: tuple[int, int, int]
    spacing_zyx_mm: tuple[float, float, float]
    centroid_zyx: tuple[float, float, float]
    volume_mm3: float
    long_axis_mm: float
    short_axis_mm: float
    mean_diameter_mm: float
    axial_index: int
    solid_core_mean_diameter_mm: float | None
    solid_core_volume_mm3: float | None
    mean_hu: float
    max_hu: float
    type: str
    calcification: str
    spiculation: bool
    lobulation: bool
    cavity: bool
    juxta_pleural: bool
    juxta_vascular: bool
    location: Location | None
    lung_rads: str | None
    note: str = ""

    @property
    def volume_equivalent_diameter_mm(self) -> float:
        """The diameter of the sphere of ``volume_mm3`` (mm)."""
        return float((6.0 * self.volume_mm3 / np.pi) ** (1.0 / 3.0))

    def full_mask(self, shape_zyx) -> np.ndarray:
        """The mask in the whole scan grid of ``shape_zyx`` (bool)."""
        out = np.zeros(tuple(shape_zyx), dtype=bool)
        z, y, x = self.offset_zyx
        dz, dy, dx = self.mask.shape
        out[z:z + dz, y:y + dy, x:x + dx] = self.mask
        return out

    def to_dict(self, include_mask: bool = True) -> dict:
        """JSON-ready; the mask as packed bits (`pack_mask`) with its shape and offset."""
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "mask":
                continue
            if isinstance(v, Location):
                v = {"side": v.side, "zone": v.zone, "height": v.height}
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, float):
                v = round(v, 3)
            d[f.name] = v
        if include_mask:
            d["mask"] = {"shape_zyx": list(self.mask.shape), "packbits_b64": pack_mask(self.mask)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Finding:
        """`to_dict`'s inverse (a result JSON's ``finding`` entry); without a saved mask the mask
        is empty."""
        d = dict(d)
        m = d.pop("mask", None)
        mask = unpack_mask(m["packbits_b64"], m["shape_zyx"]) if m else np.zeros((0, 0, 0), bool)
        loc = d.pop("location", None)
        known = {f.name for f in fields(cls)} - {"mask", "location"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown finding field(s) {unknown}")
        for k in ("offset_zyx", "spacing_zyx_mm", "centroid_zyx"):
            d[k] = tuple(d[k])
        return cls(mask=mask, location=Location(**loc) if loc else None, **d)
