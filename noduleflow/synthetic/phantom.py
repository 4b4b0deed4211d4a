"""Synthetic chest-CT phantoms: the default data for the demo, the tests and the benchmarks.

Numpy only, deterministic by seed. Anatomy is defined in millimetres in a patient frame
(x to the patient's left, y posterior, z superior: DICOM/ITK LPS), then sampled on the
scan's voxel grid, so a small test scan and a 512x512x300 scan show the same chest.

What is modelled: a body contour with fat and muscle, the table, the spine and ribs,
heart and mediastinum, trachea and main bronchi, two lungs (or one, or touching ones)
with parenchymal texture, branching vessel trees from each hilum (the main confounder:
vessel cross-sections and bifurcations look like nodules on a slice), and nodules of
3-30 mm drawn from the real LUNA16 size distribution: solid, part-solid, ground-glass,
calcified; round, ellipsoid, lobulated; isolated, juxta-pleural, juxta-vascular. Then
partial-volume blur, correlated low-dose noise and a circular field of view padded
with -2048 HU.

Synthetic phantoms are a regression signal for the pipeline, not clinical evidence.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from noduleflow.engine import ConfigError, Volume

#: Quantiles (0, 5, ..., 100 %) of the 1,186 nodule diameters (mm) in LUNA16's
#: annotations.csv (Setio et al. 2017, from LIDC-IDRI, CC BY 3.0).
LUNA16_DIAMETER_QUANTILES_MM = np.array([
    3.25, 4.09, 4.4, 4.67, 4.9, 5.11, 5.31, 5.63, 5.9, 6.17, 6.43,
    6.87, 7.3, 7.92, 8.72, 9.7, 11.07, 12.86, 15.48, 18.95, 32.27])

KINDS = ("solid", "part_solid", "ground_glass", "calcified")
SHAPES = ("round", "ellipsoid", "lobulated")
LOCATIONS = ("isolated", "juxta_pleural", "juxta_vascular")

LUNG_HU = -850.0
FAT_HU, MUSCLE_HU, SOFT_HU, BLOOD_HU, BONE_HU = -100.0, 45.0, 35.0, 40.0, 450.0
PAD_HU = -2048


@dataclass(frozen=True)
class Nodule:
    """A finding: world centre (x, y, z) mm, diameter mm, and what it is."""

    center_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str = "solid"
    shape: str = "round"
    location: str = "isolated"


# Reconstruction kernels: what the scanner's filter does to edges and to the noise's texture.
# "standard" is the generator's original look (every cohort is made with it); "smooth" (a soft-tissue
# kernel) blurs the image and the noise twice more in plane; "sharp" (a lung/bone kernel) enhances
# edges (unsharp mask, gain 0.8 over the [1,2,1]/4 blur) and leaves the noise grainy (uncorrelated in
# plane) at 1.5x the standard noise level; "smooth" keeps the standard noise level. The noise is
# drawn the same way for all three, so one seed gives the same anatomy, nodules and noise field
# under each kernel (paired comparisons).
RECON_KERNELS = ("smooth", "standard", "sharp")


@dataclass(frozen=True)
class PhantomParams:
    """Generator knobs. ``None`` means: drawn from the seed."""

    n_nodules: int | None = None          # None: 0-5, with ~15 % of scans nodule-free
    touching_lungs: bool = False           # lungs meet at the anterior junction (one component)
    one_lung: bool = False                 # left lung absent (pneumonectomy-like)
    n_excluded: int | None = None          # findings < 3 mm (LUNA16's excluded list)
    noise_hu: float | None = None          # noise level (15-40 HU drawn); the noise std is 0.61 x this (see below)
    vessel_depth: int = 8                  # branching generations per vessel tree
    z_extent_mm: float | None = None       # scanned length; default 250-330 mm
    min_nodule_mm: float = 3.0
    max_nodule_mm: float = 30.0
    confounders: int = 0                   # nodule look-alikes of each kind (phantom_confounders); 0: none
    kernel: str = "standard"               # reconstruction kernel: "smooth", "standard" or "sharp" (RECON_KERNELS)

    def __post_init__(self) -> None:
        if self.n_nodules is not None and not 0 <= self.n_nodules <= 20:
            raise ConfigError(f"n_nodules must be in [0, 20], got {self.n_nodules}")
        if not 0 <= self.confounders <= 50:
            raise ConfigError(f"confounders must be in [0, 50], got {self.confounders}")
        if self.kernel not in RECON_KERNELS:
            raise ConfigError(f"kernel must be one of {sorted(RECON_KERNELS)}, got {self.kernel!r}")
        if not 3.0 <= self.min_nodule_mm <= self.max_nodule_mm <= 40.0:
            raise ConfigError(f"need 3 <= min_nodule_mm <= max_nodule_mm <= 40, got "
                              f"{self.min_nodule_mm}, {self.max_nodule_mm}")


@dataclass(frozen=True, eq=False)
class Phantom:
    volume: Volume
    lung_mask: np.ndarray          # bool (z, y, x): true lungs incl. their vessels and nodules
    nodules: tuple[Nodule, ...]
    excluded: tuple[Nodule, ...] = ()
    meta: dict = field(default_factory=dict)


def _smoothstep_inside(d_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Fraction inside for signed distance d (negative inside), with a soft edge (partial volume)."""
    return np.clip(0.5 - d_mm / max(width_mm, 1e-3), 0.0, 1.0)


def _blur3(a: np.ndarray, axes=(0, 1, 2)) -> np.ndarray:
    """In-place-ish separable [1, 2, 1]/4 blur along the given axes (float32)."""
    for ax in axes:
        if a.shape[ax] < 3:
            continue
        s = [slice(None)] * 3
        lo, mid, hi = list(s), list(s), list(s)
        lo[ax], mid[ax], hi[ax] = slice(0, -2), slice(1, -1), slice(2, None)
        inner = 0.25 * a[tuple(lo)] + 0.5 * a[tuple(mid)] + 0.25 * a[tuple(hi)]
        a[tuple(mid)] = inner
    return a


class _Grid:
    """The scan's voxel grid in patient mm."""

    def __init__(self, shape, spacing, origin):
        self.shape, self.spacing, self.origin = shape, np.asarray(spacing, float), np.asarray(origin, float)
        nz, ny, nx = shape
        self.z = origin[2] + spacing[0] * np.arange(nz)
        self.y = origin[1] + spacing[1] * np.arange(ny)
        self.x = origin[0] + spacing[2] * np.arange(nx)

    def index_range(self, axis: int, lo_mm: float, hi_mm: float) -> slice:
        coords = (self.z, self.y, self.x)[axis]
        step = self.spacing[axis]
        i0 = int(np.floor((lo_mm - coords[0]) / step))
        i1 = int(np.ceil((hi_mm - coords[0]) / step)) + 1
        n = len(coords)
        return slice(min(max(i0, 0), n), min(max(i1, 0), n))

    def box(self, lo_xyz, hi_xyz):
        return (self.index_range(0, lo_xyz[2], hi_xyz[2]),
                self.index_range(1, lo_xyz[1], hi_xyz[1]),
                self.index_range(2, lo_xyz[0], hi_xyz[0]))

    def coords(self, box):
        return (self.z[box[0]][:, None, None], self.y[box[1]][None, :, None], self.x[box[2]][None, None, :])

    def index_of(self, xyz):
        return np.round((np.asarray(xyz)[::-1] - self.origin[::-1]) / self.spacing).astype(int)


def _draw_spacing(rng, shape_zyx, spacing_zyx_mm, params):
    if spacing_zyx_mm is None:
        dxy = float(rng.uniform(0.6, 0.9))
        dz = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5]))
        spacing_zyx_mm = (dz, dxy, dxy)
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    if shape_zyx is None:
        z_extent = params.z_extent_mm or float(rng.uniform(250, 330))
        shape_zyx = (int(round(z_extent / spacing[0])), 512, 512)
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or min(shape) < 8:
        raise ConfigError(f"shape_zyx must be 3 sizes >= 8, got {shape_zyx}")
    return shape, spacing


def generate_phantom(seed: int, *, shape_zyx=None, spacing_zyx_mm=None,
                     params: PhantomParams | None = None) -> Phantom:
    """Make one synthetic chest CT.

    Args:
        seed: everything is drawn from ``np.random.default_rng(seed)``.
        shape_zyx: voxel grid (z, y, x); default 512x512 in-plane and a 250-330 mm scan length.
        spacing_zyx_mm: voxel size; default 0.6-0.9 mm in plane, 1-2.5 mm slices.
        params: generator knobs, see `PhantomParams`.

    Returns:
        `Phantom` with an int16 HU `Volume` (identity direction, scanner-like origin),
        the true lung mask (bool, same shape), the nodules (>= 3 mm) and the excluded
        findings (< 3 mm), all in world mm.
    """
    params = params or PhantomParams()
    rng = np.random.default_rng(seed)
    shape, spacing = _draw_spacing(rng, shape_zyx, spacing_zyx_mm, params)
    nz, ny, nx = shape
    fov_x, fov_y, len_z = nx * spacing[2], ny * spacing[1], nz * spacing[0]
    # Patient size: an adult chest (~340 x 240 mm) shrunk to fit the field of view.
    scale = min(1.0, 0.9 * min(fov_x / 340.0, fov_y / 280.0)) * float(rng.uniform(0.9, 1.05))
    origin = (-(nx - 1) / 2 * spacing[2] + float(rng.uniform(-5, 5)),
              -(ny - 1) / 2 * spacing[1] + float(rng.uniform(-5, 5)) - 15 * scale,
              float(rng.uniform(-400, -100)))
    grid = _Grid(shape, spacing, origin)
    z_top = grid.z[-1]
    z0 = grid.z[0]

    from .phantom_anatomy import Anatomy

    anat = Anatomy(rng, grid, scale, z0, z_top, params)
    hu, lung = anat.render()
    from .phantom_lesions import place_findings

    nodules, excluded = place_findings(rng, grid, hu, lung, anat, params)
    confounders = []
    if params.confounders:  # their own random stream: phantoms without them are unchanged
        from .phantom_confounders import add_confounders

        confounders = add_confounders(seed, grid, hu, lung, anat, params.confounders)

    # Partial-volume blur and correlated low-dose noise (shaped by the reconstruction kernel), then
    # the field of view.
    _blur3(hu, axes=(1, 2))
    sigma = params.noise_hu if params.noise_hu is not None else float(rng.uniform(15, 40))
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    # The standard noise is the draw blurred by [1,2,1]/4 along y and x and scaled by sigma / 0.6124:
    # 0.6124 is the blur's factor on the std along one axis, both axes keep 0.375, so its std is
    # 0.375 / 0.6124 = 0.61 x sigma (left as it is: every cohort was made with it).
    std_noise = sigma * 0.375 / 0.6124
    if params.kernel == "sharp":
        hu += np.float32(0.8) * (hu - _blur3(hu.copy(), axes=(1, 2)))
        hu += noise * np.float32(1.5 * std_noise)                 # grainy: uncorrelated in plane
    else:
        _blur3(noise, axes=(1, 2))
        if params.kernel == "smooth":
            for _ in range(2):
                _blur3(hu, axes=(1, 2))
                _blur3(noise, axes=(1, 2))
            noise *= np.float32(0.375 / 0.2256)  # [1,2,1]/4 three times per axis keeps 0.2256, not 0.375
        hu += noise * np.float32(sigma / 0.6124)
    yy = grid.y[:, None] - (origin[1] + (ny - 1) / 2 * spacing[1])
    xx = grid.x[None, :] - (origin[0] + (nx - 1) / 2 * spacing[2])
    outside = yy ** 2 + xx ** 2 > (0.5 * min(fov_x, fov_y) - spacing[1]) ** 2
    hu[:, outside] = PAD_HU
    out = np.clip(np.rint(hu), -3024, 3071).astype(np.int16)
    lung[:, outside] = False

    from pydicom.uid import generate_uid

    vol = Volume(out, spacing, origin, series_uid=generate_uid(entropy_srcs=["noduleflow-phantom", str(seed)]),
                 meta={"source": f"phantom seed={seed}", "format": "phantom"})
    return Phantom(vol, lung, tuple(nodules), tuple(excluded),
                   meta={"seed": seed, "noise_hu": sigma, "scale": scale, "len_z_mm": len_z,
                         "touching_lungs": params.touching_lungs, "one_lung": params.one_lung,
                         "confounders": confounders, "kernel": params.kernel})
