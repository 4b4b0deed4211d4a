"""Characterise a detection's candidates in the scan's own grid.

The detector keeps its lung mask on the 1 mm lung box; each finding is measured at the scan's
native resolution (the finer grid), with the mask sampled onto the finding's crop (nearest).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ..volume import Volume
from .finding import Finding
from .location import LungGeometry
from .segment import CharacteriseParams, characterise

log = logging.getLogger(__name__)

REACH_MM = 34.0   # the largest crop `characterise` takes (+-32 mm) and a little more


def lung_mask_on(volume: Volume, box, mask_volume: Volume, mask: np.ndarray) -> np.ndarray:
    """The bool lung ``mask`` (on ``mask_volume``'s grid) sampled (nearest) at the voxels of
    ``volume`` inside ``box`` (three slices, z, y, x); False outside ``mask``'s grid."""
    # one grid's voxel index to the other's is an affine map: found from four points, then applied
    # axis by axis (a world round trip per voxel cost most of a finding's time)
    corners = np.vstack([np.zeros(3), np.eye(3)])
    m = mask_volume.world_to_voxel(volume.voxel_to_world(corners))
    b, a = m[0], (m[1:] - m[0]).T                     # src = a @ idx + b
    axes = [np.arange(s.start, s.stop, dtype=np.float64) for s in box]
    shape = tuple(len(v) for v in axes)
    out = np.ones(shape, dtype=bool)
    src = []
    for k in range(3):
        v = (b[k] + a[k, 0] * axes[0][:, None, None] + a[k, 1] * axes[1][None, :, None]
             + a[k, 2] * axes[2][None, None, :])
        i = np.rint(np.broadcast_to(v, shape)).astype(np.int64)
        out &= (i >= 0) & (i < mask.shape[k])
        src.append(i)
    out[out] = mask[src[0][out], src[1][out], src[2][out]]
    return out


def _shifted(f: Finding, off) -> Finding:
    if not f.segmented:
        c = tuple(float(a + b) for a, b in zip(f.centroid_zyx, off))
        return replace(f, centroid_zyx=c, offset_zyx=tuple(int(round(v)) for v in c), axial_index=int(round(c[0])))
    return replace(f, offset_zyx=tuple(int(a + b) for a, b in zip(f.offset_zyx, off)),
                   centroid_zyx=tuple(float(a + b) for a, b in zip(f.centroid_zyx, off)),
                   axial_index=int(f.axial_index + off[0]))


def characterise_scan(volume: Volume, mask_volume: Volume, mask: np.ndarray, centres_xyz_mm, params=None,
                      size_hints_mm=None, lungs: LungGeometry | None = None) -> tuple[Finding, ...]:
    """One `Finding` per world centre (x, y, z mm), each in ``volume``'s grid (native resolution).

    ``mask_volume`` / ``mask``: the lung mask and the grid it lies on (the detector's 1 mm lung
    box, `Preprocessed.volume` and `.mask`, or ``volume`` itself); ``size_hints_mm``: the
    detector's diameter estimates (None entries allowed); ``lungs``: the lungs' extent for the
    location (default: from ``mask``)."""
    p = params or CharacteriseParams()
    if lungs is None and mask.any():
        lungs = LungGeometry.from_mask(mask_volume, mask)
    hints = list(size_hints_mm) if size_hints_mm is not None else [None] * len(centres_xyz_mm)
    reach = np.ceil(REACH_MM / np.asarray(volume.spacing_zyx_mm)).astype(int)
    out = []
    for xyz, hint in zip(centres_xyz_mm, hints):
        c = volume.world_to_voxel(np.asarray(xyz, dtype=np.float64))
        ci = np.round(c).astype(int)
        lo = np.clip(ci - reach, 0, np.asarray(volume.shape))
        hi = np.clip(ci + reach + 1, 0, np.asarray(volume.shape))
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        lung = lung_mask_on(volume, box, mask_volume, mask)
        loc = lungs.locate(xyz) if lungs is not None else None
        f = characterise(volume.hu[box], volume.spacing_zyx_mm, lung, c - lo, p, size_hint_mm=hint, location=loc)
        out.append(_shifted(f, lo))
    return tuple(out)
