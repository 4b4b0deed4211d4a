"""The truth that `bench characterise` measures a phantom lesion against: its own drawn shape.

The wide and held-out generators draw each lesion as a signed-distance surface (`LesionShape`, the
surface where the renderer's occupancy is one half, i.e. where the drawn lesion reaches half its
contrast before the scanner's blur and noise). The truth is that surface's inside, evaluated
again on a fine grid (not the scan's voxels), less any part beyond the lungs' surface (a
juxta-pleural lesion drawn partly in the wall's place adds nothing visible there: the wall is as
dense). A cavity counts as part of the lesion (as a reader's diameter and the engine's filled
holes count it).

- volume: the fine grid's count x its cell volume (cells of about r / 12, 0.1-0.5 mm);
- Lung-RADS mean diameter: (long + short axis) / 2 (long: the largest distance across; short: the
  largest extent perpendicular to it), on the axial slice of largest area among the scan's own
  slice positions, that slice sampled finely in plane (cells of about r / 40, 0.05-0.2 mm);
- part-solid: the same for the solid core (its own slice of largest area), and its volume;
- the Lung-RADS v2022 category of that type, mean diameter and core.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noduleflow.engine.characterise.lungrads import category
from noduleflow.engine.errors import ConfigError


@dataclass(frozen=True)
class LesionTruth:
    """One lesion's true measurements (mm, mm^3); the ``core`` ones for part-solid lesions only."""
    volume_mm3: float
    long_axis_mm: float
    short_axis_mm: float
    mean_diameter_mm: float
    core_mean_diameter_mm: float | None
    core_volume_mm3: float | None
    lung_rads: str


def _inside(lesion, dx, dy, dz, core: bool):
    sd, core_sd, _cavity = lesion.signed_distances(dx, dy, dz)
    m = sd < 0
    if lesion.lung_sdf is not None:
        cx, cy, cz = lesion.center_xyz_mm
        m = m & (lesion.lung_sdf(cx + dx, cy + dy, cz + dz) < 0)
    return m, (m & (core_sd < 0)) if core and core_sd is not None else None


def _volumes(lesion, step_mm: float, core: bool) -> tuple[float, float]:
    reach = lesion.reach_mm
    t = np.arange(-reach + step_mm / 2, reach, step_mm)
    dy, dx = t[None, :, None], t[None, None, :]
    n = n_core = 0
    for i in range(0, len(t), 16):   # slabs of 16 planes: bounded memory for the large ones
        dz = t[i:i + 16, None, None]
        m, c = _inside(lesion, dx, dy, dz, core)
        n += int(m.sum())
        n_core += int(c.sum()) if c is not None else 0
    cell = step_mm ** 3
    return n * cell, n_core * cell


def _long_short(sl: np.ndarray, step_mm: float) -> tuple[float, float]:
    """Long axis (largest distance across) and short axis (largest extent perpendicular to it), mm,
    of a finely sampled 2-D mask: the spread of its cells' centres plus one cell."""
    inner = sl.copy()
    inner[1:-1, 1:-1] = sl[1:-1, 1:-1] & sl[:-2, 1:-1] & sl[2:, 1:-1] & sl[1:-1, :-2] & sl[1:-1, 2:]
    pts = np.argwhere(sl & ~inner).astype(np.float64) * step_mm
    if len(pts) < 2:
        return step_mm, step_mm
    if len(pts) > 2000:
        pts = pts[np.linspace(0, len(pts) - 1, 2000).astype(np.int64)]
    diff = pts[:, None, :] - pts[None, :, :]
    d2 = (diff ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    u = diff[i, j] / max(np.sqrt(d2[i, j]), 1e-9)
    proj = pts @ np.array([-u[1], u[0]])
    return float(np.sqrt(d2[i, j])) + step_mm, float(proj.max() - proj.min()) + step_mm


def _largest_section(lesion, zs, r: float, core: bool):
    """(long, short) mm on the slice (among world z ``zs``) where the lesion (``core``: its core)
    has the largest area; None when it has none. Slices are ranked on a coarse grid, the best
    three measured on a fine one."""
    cz = lesion.center_xyz_mm[2]
    reach = lesion.reach_mm

    def section(z, step):
        t = np.arange(-reach, reach + step / 2, step)
        m, c = _inside(lesion, t[None, None, :], t[None, :, None], np.full((1, 1, 1), z - cz), core)
        return (c if core else m)[0]

    coarse = float(np.clip(r / 8.0, 0.1, 0.5))
    areas = np.array([section(z, coarse).sum() for z in zs])
    if not len(areas) or areas.max() == 0:
        return None
    fine = float(np.clip(r / 40.0, 0.05, 0.2))
    best = max((section(zs[k], fine) for k in np.argsort(-areas)[:3]), key=lambda m: int(m.sum()))
    return _long_short(best, fine) if best.any() else None


def lesion_truth(lesion, kind: str, slice_z_mm) -> LesionTruth:
    """The truth of one drawn lesion (`phantom_lesions.LesionShape`) of ``kind`` (the `Nodule`'s),
    on a scan whose axial slices lie at world z ``slice_z_mm`` (mm, 1-D). See the module's text."""
    if lesion is None:
        raise ConfigError("the lesion was not drawn (it lies outside the scan): it has no truth")
    r = float(lesion.radius_mm)
    part_solid = kind == "part_solid"
    vol, core_vol = _volumes(lesion, float(np.clip(r / 12.0, 0.1, 0.5)), part_solid)
    zs = np.asarray(slice_z_mm, float)
    zs = zs[np.abs(zs - lesion.center_xyz_mm[2]) <= lesion.reach_mm]
    long_mm, short_mm = _largest_section(lesion, zs, r, False) or (0.0, 0.0)
    mean_d = round((long_mm + short_mm) / 2.0, 1)
    core_d = None
    if part_solid:
        core_axes = _largest_section(lesion, zs, r, True)
        core_d = round(sum(core_axes) / 2.0, 1) if core_axes else 0.0
    cat = category(kind, mean_d, core_d)
    return LesionTruth(round(float(vol), 2), round(float(long_mm), 2), round(float(short_mm), 2), float(mean_d),
                       None if core_d is None else float(core_d), round(float(core_vol), 2) if part_solid else None,
                       cat)
