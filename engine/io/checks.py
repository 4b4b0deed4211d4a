"""Bounds every loader enforces before a volume reaches the rest of the pipeline.

The mask, the resampler and the patch extractor trust the geometry they are given: a
spacing of 1e30 mm, a 0-row image or a 40 x 65535 x 65535 stack must be refused here, in
the loader, with the file and the value named, not fail (or worse, succeed) far
downstream. These checks run on header values, before any voxel buffer is allocated.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import VolumeError

#: Fewest slices accepted. A chest CT has 50-600 images; even at the thickest clinical
#: slices (5-10 mm) fewer than 10 cannot cover the lungs, so such input is a single
#: image, a scout or a fragment of a transfer, and running detection on it ends in
#: "no lung found" or a meaningless empty result instead of an error.
MIN_SLICES = 10
#: Fewest rows/columns accepted. CT matrices are 256-1024; below 16 there is no
#: anatomy to find and the 41-voxel patches cannot be cut.
MIN_INPLANE = 16
#: Most voxels accepted: 2**30 int16 voxels = 2 GiB, a 1024 x 1024 x 1000 scan fits. The
#: pipeline holds the HU array plus float copies of the lung box, so anything larger
#: would exhaust an edge machine's memory; header claims beyond it are refused before
#: allocating (a corrupt header claiming 40 x 65535 x 65535 asks for 320 GiB).
MAX_VOXELS = 2**30
#: Accepted voxel size along any axis, mm. Clinical CT lies within 0.2-10 mm; the range
#: is wider than that, yet it keeps 0, negative, NaN and absurd values (1e30 mm) out.
SPACING_RANGE_MM = (0.05, 20.0)
#: Largest deviation from unit length / orthogonality accepted for direction cosines.
#: Headers carry 5-8 significant digits; a skewed orientation (e.g. 1,0,0,0.5,1,0) would
#: place every finding tens of millimetres off.
ORTHONORMAL_TOLERANCE = 1e-3


def check_finite(name: str, what: str, values) -> tuple[float, ...]:
    """``values`` as floats; VolumeError naming NaN/inf (never "mixes ..." or a traceback)."""
    out = tuple(float(v) for v in values)
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        kind = "NaN" if any(math.isnan(v) for v in bad) else "infinite"
        raise VolumeError(f"{name}: {what} contains {kind} values: {list(out)}")
    return out


def check_spacing(name: str, what: str, values) -> tuple[float, ...]:
    """Finite voxel sizes within `SPACING_RANGE_MM`, mm."""
    out = check_finite(name, what, values)
    lo, hi = SPACING_RANGE_MM
    bad = [v for v in out if not lo <= v <= hi]
    if bad:
        raise VolumeError(f"{name}: {what} {list(out)} mm is outside the accepted range [{lo}, {hi}] mm")
    return out


def check_shape(name: str, shape_zyx) -> tuple[int, int, int]:
    """Slice count, in-plane size and voxel count within bounds (before allocating)."""
    nz, ny, nx = (int(v) for v in shape_zyx)
    if min(ny, nx) < MIN_INPLANE:
        raise VolumeError(f"{name}: image size {ny} x {nx} (rows x columns) is below the minimum "
                          f"{MIN_INPLANE} x {MIN_INPLANE} of a CT slice")
    if nz < MIN_SLICES:
        raise VolumeError(f"{name}: {nz} slice(s), fewer than the {MIN_SLICES} a chest CT needs "
                          f"(a single image, a scout or an incomplete series)")
    n = nz * ny * nx
    if n > MAX_VOXELS:
        raise VolumeError(f"{name}: {nz} x {ny} x {nx} = {n} voxels exceeds the limit of {MAX_VOXELS} "
                          f"(corrupt header, or a scan too large for this machine)")
    return nz, ny, nx


def check_orthonormal(name: str, what: str, columns: np.ndarray) -> None:
    """``columns``: (3, k) direction vectors; each unit length and mutually orthogonal."""
    cols = np.asarray(columns, dtype=np.float64)
    gram = cols.T @ cols
    dev = np.abs(gram - np.eye(gram.shape[0]))
    if not np.all(np.isfinite(gram)) or dev.max() > ORTHONORMAL_TOLERANCE:
        norms = ", ".join(f"{v:.4f}" for v in np.sqrt(np.abs(np.diag(gram))))
        raise VolumeError(f"{name}: {what} {[round(float(v), 6) for v in cols.T.ravel()]} is not orthonormal "
                          f"(lengths {norms}, largest deviation {dev.max():.4f}, tolerance "
                          f"{ORTHONORMAL_TOLERANCE}); a skewed geometry would misplace every finding")


#: Largest |world coordinate| accepted for an origin or slice position, mm. A patient lies
#: within a metre or two of the scanner's isocentre; 1e5 mm (100 m) leaves room for any
#: table offset while refusing the 1e300 that would print 300-digit coordinates.
MAX_ABS_COORD_MM = 1e5
#: HU bounds of a plausible CT voxel after rescale: air is -1000, dense cortical bone and
#: contrast stay below ~3000; metal implants exceed it, but only in a few voxels.
HU_PLAUSIBLE = (-1100, 3100)
#: Largest fraction of voxels outside `HU_PLAUSIBLE` accepted. Circular field-of-view
#: padding (-2000, -2048, -3024) fills at most 1 - pi/4 = 21.5 % of a square slice; a
#: mis-scaled or saturated volume (slope 1e6, intercept 40000) puts nearly all voxels out.
MAX_OUTSIDE_FRACTION = 0.5
#: HU range counted as air, and the range where air lands when HU are inverted (slope -1).
AIR_HU = (-1100, -900)
INVERTED_AIR_HU = (900, 1100)
#: Fraction of voxels that must be air for a volume to pass as a chest CT without a
#: warning (lungs and the air around the body are 20-60 % of a chest CT; 0.1 % is a
#: floor that only a volume with no air at all, or a wrongly scaled one, falls below).
MIN_AIR_FRACTION = 1e-3


def check_coordinates(name: str, what: str, values) -> tuple[float, ...]:
    """Finite world coordinates within +-`MAX_ABS_COORD_MM` (origins, positions, offsets), mm."""
    out = check_finite(name, what, values)
    if any(abs(v) > MAX_ABS_COORD_MM for v in out):
        raise VolumeError(f"{name}: {what} {list(out)} mm lies beyond +-{MAX_ABS_COORD_MM:g} mm of the scanner "
                          f"origin: not a patient position (corrupt header)")
    return out


def check_hu_plausible(name: str, hu: np.ndarray) -> list[str]:
    """Refuse HU that no CT has; return warnings for doubtful ones. ``hu``: int16 (z, y, x).

    Refused (VolumeError with the numbers): more than `MAX_OUTSIDE_FRACTION` of the voxels
    outside `HU_PLAUSIBLE` (saturated or mis-scaled data), and inverted HU (no air, but at
    least 1 % of the voxels at +900..+1100 HU, where air lands under a slope of -1).
    Warned: no air at all (a volume that is no chest CT, or scaled so that air vanished).
    """
    if hu.size == 0:
        return []
    # fractions from every 4th row and column (1/16 of the voxels: ~50 ms instead of ~0.7 s
    # on a 512 x 512 x 275 scan); min and max over all voxels
    sample = hu[:, ::4, ::4] if min(hu.shape[1:]) >= 64 else hu
    n = int(sample.size)
    lo, hi = HU_PLAUSIBLE
    outside = n - int(np.count_nonzero((sample >= lo) & (sample <= hi)))
    vmin, vmax = int(hu.min()), int(hu.max())
    if outside > MAX_OUTSIDE_FRACTION * n:
        raise VolumeError(f"{name}: implausible HU after rescale: {outside / n:.1%} of the voxels outside "
                          f"[{lo}, {hi}] HU (min {vmin}, max {vmax}); the scaling (slope/intercept) is wrong or "
                          f"the data saturate")
    air = int(np.count_nonzero((sample >= AIR_HU[0]) & (sample <= AIR_HU[1])))
    if air >= MIN_AIR_FRACTION * n:
        return []
    bright = int(np.count_nonzero((sample >= INVERTED_AIR_HU[0]) & (sample <= INVERTED_AIR_HU[1])))
    if bright >= 0.01 * n:
        raise VolumeError(f"{name}: HU look inverted: {air / n:.2%} of the voxels are air ({AIR_HU[0]}..{AIR_HU[1]} "
                          f"HU) but {bright / n:.1%} lie at {INVERTED_AIR_HU[0]}..{INVERTED_AIR_HU[1]} HU "
                          f"(min {vmin}, max {vmax}); a negative scale factor?")
    return [f"{name}: no air in the volume: {air / n:.2%} of the voxels within {AIR_HU[0]}..{AIR_HU[1]} HU "
            f"(min {vmin}, max {vmax}); a chest CT holds lungs and air around the body"]
