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
