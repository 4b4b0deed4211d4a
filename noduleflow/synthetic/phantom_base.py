"""What the phantom's parts share: tissue values, the findings' vocabulary, the voxel grid in
patient mm and the partial-volume helpers.

`phantom` (the generator) and its parts (`phantom_anatomy`, `phantom_lesions`,
`phantom_confounders`) all import from here, and the parts never import from `phantom`, so
the generator can import its parts at the top of its module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noduleflow.engine import ConfigError

# Tissue values (HU) of the phantom's anatomy.
LUNG_HU = -850.0
FAT_HU, MUSCLE_HU, SOFT_HU, BLOOD_HU, BONE_HU = -100.0, 45.0, 35.0, 40.0, 450.0

# What a nodule can be (`Nodule.kind`, `.shape`, `.location`). The default generator draws the
# first three shapes only; the wide and held-out generators (`GeneratorConfig`) draw all six.
KINDS = ("solid", "part_solid", "ground_glass", "calcified")
SHAPES = ("round", "ellipsoid", "lobulated", "spiculated", "cavitary", "irregular")
LOCATIONS = ("isolated", "juxta_pleural", "juxta_vascular")

# Generators: "default" is the original phantom (every cached cohort is made with it, bit for bit);
# "wide" randomises it far wider for training; "heldout" is a configuration never trained on.
GENERATORS = ("default", "wide", "heldout")
# Field-of-view padding values real scanners write outside the reconstruction circle (HU).
PAD_VALUES_HU = (-2048, -3024, -1024)


@dataclass(frozen=True)
class Nodule:
    """A finding: world centre (x, y, z) mm, diameter mm, and what it is."""

    center_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str = "solid"
    shape: str = "round"
    location: str = "isolated"


def _check_range(name: str, value, lo: float, hi: float) -> None:
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise ConfigError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {value}")


def _check_probabilities(name: str, p, n: int) -> None:
    if len(p) != n or min(p) < 0 or abs(sum(p) - 1.0) > 1e-6:
        raise ConfigError(f"{name} must be {n} probabilities summing to 1, got {p}")


@dataclass(frozen=True)
class GeneratorConfig:
    """The wide and held-out phantom generators: what each scan draws, and from which ranges.

    ``family`` picks the models: ``"wide"`` (the training family: the default's anatomy and
    lesion models with every knob drawn wide, plus spiculated, cavitary and irregular lesions,
    bronchovascular airways, a box slice profile and Gaussian-correlated noise) or
    ``"heldout"`` (its own models, see `HELDOUT`). The default generator has no config: it is
    the original code path, kept bit-identical. Ranges are (low, high), drawn uniformly per scan
    from the scan's own random stream; explicit ``shape_zyx`` / ``spacing_zyx_mm`` and the
    `PhantomParams` knobs (``n_nodules``, ``noise_hu``, sizes, ...) still win.
    """

    family: str = "wide"
    in_plane_mm: tuple[float, float] = (0.5, 0.95)        # pixel size
    slice_spacing_mm: tuple[float, float] = (0.6, 3.0)    # slice spacing
    thick_slice_p: float = 0.5                            # P(slice thickness > spacing: overlapping slices)
    thickness_ratio: tuple[float, float] = (1.2, 2.0)     # thickness / spacing then (capped at 3 mm)
    noise_hu: tuple[float, float] = (5.0, 60.0)           # std of the added noise (HU)
    noise_corr_mm: tuple[float, float] = (0.25, 1.6)      # in-plane correlation length of the noise
    kernels: tuple[str, ...] = ("smooth", "standard", "sharp")
    pad_hu: tuple[int, ...] = PAD_VALUES_HU               # value outside the circular field of view
    fov_fraction: tuple[float, float] = (0.9, 1.0)        # FOV circle diameter / image width
    patient_scale: tuple[float, float] = (0.8, 1.12)      # patient size relative to the FOV fit
    nodules_per_scan: tuple[int, int] = (1, 6)            # when PhantomParams.n_nodules is None
    nodule_free_p: float = 0.1                            # ... and this share of scans has none
    kind_p: tuple[float, ...] = (0.35, 0.2, 0.3, 0.15)    # over KINDS
    shape_p: tuple[float, ...] = (0.2, 0.15, 0.2, 0.15, 0.15, 0.15)  # over SHAPES (where the kind allows)
    location_p: tuple[float, ...] = (0.4, 0.3, 0.3)       # over LOCATIONS
    ground_glass_hu: tuple[float, float] = (-800.0, -450.0)
    size_mix: float = 0.5                                 # wide family: share of sizes log-uniform in 3-30 mm
                                                          # (the rest LUNA16's); the held-out family: log-normal

    def __post_init__(self) -> None:
        if self.family not in GENERATORS[1:]:
            raise ConfigError(f"family must be one of {list(GENERATORS[1:])}, got {self.family!r}")
        _check_range("in_plane_mm", self.in_plane_mm, 0.3, 2.0)
        _check_range("slice_spacing_mm", self.slice_spacing_mm, 0.3, 6.0)
        _check_range("thickness_ratio", self.thickness_ratio, 1.0, 4.0)
        _check_range("noise_hu", self.noise_hu, 0.0, 200.0)
        _check_range("noise_corr_mm", self.noise_corr_mm, 0.0, 5.0)
        _check_range("fov_fraction", self.fov_fraction, 0.5, 1.0)
        _check_range("patient_scale", self.patient_scale, 0.5, 1.3)
        _check_range("ground_glass_hu", self.ground_glass_hu, -900.0, -300.0)
        _check_range("nodules_per_scan", self.nodules_per_scan, 0, 20)
        for name, p in (("thick_slice_p", self.thick_slice_p), ("nodule_free_p", self.nodule_free_p),
                        ("size_mix", self.size_mix)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {p}")
        _check_probabilities("kind_p", self.kind_p, len(KINDS))
        _check_probabilities("shape_p", self.shape_p, len(SHAPES))
        _check_probabilities("location_p", self.location_p, len(LOCATIONS))
        if not self.kernels or any(k not in ("smooth", "standard", "sharp") for k in self.kernels):
            raise ConfigError(f"kernels must name some of smooth, standard, sharp; got {self.kernels}")
        if not self.pad_hu or any(not -3024 <= v <= -1000 for v in self.pad_hu):
            raise ConfigError(f"pad_hu must be values in [-3024, -1000], got {self.pad_hu}")


#: The training family, randomised wide (issue 35, item 4).
WIDE = GeneratorConfig()

#: The held-out configuration: never trained, tuned or calibrated on. It differs from `WIDE` (and the
#: default) in its models, not only in its ranges:
#:  - noise texture: a CT-like ramp noise-power spectrum (|f| x Gaussian roll-off, filtered in the
#:    Fourier domain), anisotropic in plane (frequencies along a random angle scaled by 1.5-3), plus
#:    photon-starvation streaks (3-8 near-horizontal lines through the spine per 8 mm slab, 0.6-1.5 x
#:    the noise std); the training family: isotropic Gaussian-correlated noise (partly band-passed),
#:    no streaks;
#:  - reconstruction: a Gaussian blur (0.35-0.8 mm) then an unsharp mask (gain 0.2-1.0, 1 mm) instead
#:    of the three named kernels; a Gaussian slice profile (FWHM = thickness) instead of a box;
#:  - lesion shape model (`phantom_lesions.HeldoutShape`): superellipsoids (round, ellipsoid) and sums
#:    of Gaussian blobs cut at an isosurface after adding fractal (fBm) noise (lobulated, irregular;
#:    spiculated: chains of shrinking blobs along rays; cavitary: an air blob off centre), with a
#:    density that fades by 10-25 % of the contrast towards the margin; the training family: spheres,
#:    ellipsoids and cosine-bumped spheres of one HU, capsule spicules, spherical cavities and cores;
#:  - attachment: juxta-vascular lesions engulf their vessel (it runs through them) instead of touching
#:    it; juxta-pleural ones are flattened against the wall (0.6-0.8 along the normal, volume kept);
#:  - anatomy (`phantom_anatomy.draw_anatomy_style`): boxier lungs and body (superellipse
#:    cross-sections, exponent 2.4-3.2), a larger patient (0.95-1.15 of the FOV fit), a higher, flatter
#:    diaphragm, narrower lungs, vessel trees that trifurcate (30 % of the branchings of generations
#:    0-3) and bend (generations 0-4) with narrower (12-28 deg) or wider (30-55 deg) angles, an own
#:    bronchial tree from each main bronchus instead of bronchi paired with vessels, and a finer
#:    parenchymal texture (3-4 mm grain instead of 4.5-8);
#:  - sizes: log-normal around 8 mm (3-30 mm) instead of LUNA16's distribution mixed with log-uniform.
#: Shared with the training family, because they define the strata: the kinds' HU ranges (ground glass
#: -800 to -450), the padding values, and pixel / slice sizes within the wide ranges.
HELDOUT = GeneratorConfig(
    family="heldout", in_plane_mm=(0.55, 0.9), slice_spacing_mm=(0.7, 2.5), thick_slice_p=0.4,
    thickness_ratio=(1.25, 1.8), noise_hu=(10.0, 45.0), noise_corr_mm=(0.3, 1.0), kernels=("standard",),
    fov_fraction=(0.92, 1.0), patient_scale=(0.95, 1.15), nodules_per_scan=(1, 6), nodule_free_p=0.07,
    kind_p=(0.4, 0.2, 0.25, 0.15), shape_p=(0.15, 0.15, 0.2, 0.15, 0.12, 0.23), location_p=(0.4, 0.35, 0.25),
    size_mix=0.0)


def resolve_generator(generator) -> GeneratorConfig | None:
    """``None`` or ``"default"`` -> None (the original code path); ``"wide"`` / ``"heldout"`` -> the
    preset; a `GeneratorConfig` as is."""
    if generator is None or generator == "default":
        return None
    if isinstance(generator, GeneratorConfig):
        return generator
    presets = {"wide": WIDE, "heldout": HELDOUT}
    if generator not in presets:
        raise ConfigError(f"generator must be one of {list(GENERATORS)} or a GeneratorConfig, got {generator!r}")
    return presets[generator]


def smoothstep_inside(d_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Fraction inside for signed distance d (negative inside), with a soft edge (partial volume)."""
    return np.clip(0.5 - d_mm / max(width_mm, 1e-3), 0.0, 1.0)


def blur3(a: np.ndarray, axes=(0, 1, 2)) -> np.ndarray:
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


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (from a random unit quaternion; draws 4 normals)."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


class Grid:
    """The scan's voxel grid in patient mm: ``shape`` (z, y, x), ``spacing`` (z, y, x) mm,
    ``origin`` (x, y, z) mm; ``z``, ``y``, ``x`` are the voxel centres' coordinates along each axis."""

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
