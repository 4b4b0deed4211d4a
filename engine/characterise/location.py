"""Where a finding lies: which lung (patient left / right) and which third of it (upper, middle,
lower zone, from the apex to the base of that lung).

Lobes need fissures, which this engine does not find: zones are the thirds of the lung's
cranio-caudal extent, a proxy that a reader maps onto lobes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import VolumeError
from ..volume import Volume

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")


@dataclass(frozen=True)
class Location:
    """``side``: "right" / "left" (the patient's); ``zone``: "upper" / "middle" / "lower";
    ``height``: 0 at the apex of that lung to 1 at its base."""
    side: str
    zone: str
    height: float


@dataclass(frozen=True)
class LungGeometry:
    """The lungs' extent in world mm (LPS: +x is the patient's left, +z superior).
    ``midline_x_mm``: the x that separates the lungs; ``right_z_mm`` / ``left_z_mm``: (inferior,
    superior) z of each lung."""
    midline_x_mm: float
    right_z_mm: tuple[float, float]
    left_z_mm: tuple[float, float]

    @classmethod
    def from_mask(cls, volume: Volume, mask: np.ndarray, step: int = 2) -> LungGeometry:
        """From a bool lung mask on ``volume``'s grid (subsampled by ``step`` per axis: the
        extent is all that is wanted). VolumeError when the mask is empty."""
        if mask.shape != volume.shape:
            raise VolumeError(f"lung mask shape {mask.shape} differs from the volume's {volume.shape}")
        idx = np.argwhere(mask[::step, ::step, ::step]) * step
        if len(idx) == 0:
            raise VolumeError("the lung mask is empty: no location can be given")
        if len(idx) > 200_000:
            idx = idx[np.linspace(0, len(idx) - 1, 200_000).astype(np.int64)]
        xyz = volume.voxel_to_world(idx.astype(np.float64))
        x, z = xyz[:, 0], xyz[:, 2]
        # the midline: the emptiest 1 mm column of x between the 30th and 70th percentiles
        lo, hi = np.percentile(x, [30, 70])
        bins = np.arange(lo, hi + 1.0, 1.0)
        mid = float(np.median(x)) if len(bins) < 3 else \
            float(bins[np.argmin(np.histogram(x, bins=bins)[0])] + 0.5)
        right, left = z[x < mid], z[x >= mid]

        def extent(zz):
            return (float(np.percentile(zz, 0.5)), float(np.percentile(zz, 99.5))) if len(zz) else \
                (float(z.min()), float(z.max()))

        return cls(mid, extent(right), extent(left))

    def locate(self, center_xyz_mm) -> Location:
        """The side and zone of a world point (x, y, z) mm."""
        x, _, z = (float(v) for v in center_xyz_mm)
        side = "left" if x >= self.midline_x_mm else "right"
        inf, sup = self.left_z_mm if side == "left" else self.right_z_mm
        h = float(np.clip((sup - z) / max(sup - inf, 1e-6), 0.0, 1.0))
        return Location(side, ZONES[min(int(h * 3), 2)], round(h, 3))
