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

The parts are drawn by `phantom_anatomy`, `phantom_lesions` and `phantom_confounders`, on the
grid, tissue values and helpers of `phantom_base`.

Generators (``generate_phantom(..., generator=...)``): ``"default"`` is the phantom above, bit for
bit what it always was (every cached cohort is made with it). ``"wide"`` (`phantom_base.WIDE`)
draws every knob far wider for training: pixel 0.5-0.95 mm, slices 0.6-3 mm with a box slice
profile wider than the spacing on half the scans, noise 5-60 HU with a drawn in-plane correlation
length (Gaussian, partly band-passed) and a drawn kernel, -2048/-3024/-1024 padding outside a
circular FOV of drawn size, patient size, parenchyma and texture, vessel trees and bronchi beside
the vessels; lesions of every kind (ground glass -800 to -450 HU), shape (round, ellipsoid,
lobulated, spiculated, cavitary, irregular), size and attachment, wall-attached ones partly in the
wall's place. ``"heldout"`` (`phantom_base.HELDOUT`, never trained on) has its own noise texture,
reconstruction, slice profile, lesion shape model and anatomy; its docstring lists how it differs.

Synthetic phantoms are a regression signal for the pipeline, not clinical evidence.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
from pydicom.uid import generate_uid

from noduleflow.engine import ConfigError, Volume

from .phantom_anatomy import Anatomy, draw_anatomy_style
from .phantom_base import (
    GENERATORS,
    HELDOUT,
    KINDS,
    LOCATIONS,
    SHAPES,
    WIDE,
    GeneratorConfig,
    Grid,
    Nodule,
    blur3,
    resolve_generator,
)
from .phantom_confounders import add_confounders
from .phantom_lesions import place_findings, place_findings_variant

__all__ = ["GENERATORS", "HELDOUT", "KINDS", "LOCATIONS", "PAD_HU", "RECON_KERNELS", "SHAPES", "WIDE",
           "GeneratorConfig", "Nodule", "Phantom", "PhantomParams", "Scene", "default_scene", "generate_phantom",
           "scanner_default", "slice_profile"]

PAD_HU = -2048  # outside the circular field of view


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
    lesion_shapes: tuple = ()      # wide / held-out: one `phantom_lesions.LesionShape` (or None) per nodule


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
                     params: PhantomParams | None = None, generator: str | GeneratorConfig | None = None,
                     noise_seed: int | None = None) -> Phantom:
    """Make one synthetic chest CT.

    Args:
        seed: everything is drawn from ``np.random.default_rng(seed)``.
        shape_zyx: voxel grid (z, y, x); default 512x512 in-plane and a 250-330 mm scan length.
        spacing_zyx_mm: voxel size; default 0.6-0.9 mm in plane, 1-2.5 mm slices.
        params: generator knobs, see `PhantomParams`.
        generator: ``None`` / ``"default"`` (the original phantom, unchanged), ``"wide"``, ``"heldout"``
            or a `GeneratorConfig` (see the module docstring). The variants draw their scan settings
            from their own stream (``default_rng([seed, 3501])``); ``params.kernel`` must stay
            "standard" for them (they draw the kernel: set ``GeneratorConfig.kernels`` to fix it).
        noise_seed: ``None`` (the phantom as it always was) or, wide and held-out generators only,
            another noise realisation of the same scan: the noise (and the held-out streaks) drawn
            from their own stream of (seed, noise_seed); anatomy, lesions and every other draw
            unchanged (repeatability).

    Returns:
        `Phantom` with an int16 HU `Volume` (identity direction, scanner-like origin),
        the true lung mask (bool, same shape), the nodules (>= 3 mm) and the excluded
        findings (< 3 mm), all in world mm.
    """
    params = params or PhantomParams()
    cfg = resolve_generator(generator)
    if noise_seed is not None and cfg is None:
        raise ConfigError(f"noise_seed needs the wide or held-out generator, got noise_seed={noise_seed} "
                          f"with the default one")
    if cfg is not None:
        return _generate_variant(seed, shape_zyx, spacing_zyx_mm, params, cfg, noise_seed)
    scene = default_scene(seed, shape_zyx=shape_zyx, spacing_zyx_mm=spacing_zyx_mm, params=params)
    rng, grid, anat, hu, lung = scene.rng, scene.grid, scene.anatomy, scene.hu, scene.lung
    nodules, excluded = place_findings(rng, grid, hu, lung, anat, params)
    confounders = []
    if params.confounders:  # their own random stream: phantoms without them are unchanged
        confounders = add_confounders(seed, grid, hu, lung, anat, params.confounders)
    sigma = params.noise_hu if params.noise_hu is not None else float(rng.uniform(15, 40))
    out = scanner_default(hu, lung, grid, sigma, rng, params.kernel)

    vol = Volume(out, scene.spacing_zyx_mm, scene.origin_xyz_mm,
                 series_uid=generate_uid(entropy_srcs=["noduleflow-phantom", str(seed)]),
                 meta={"source": f"phantom seed={seed}", "format": "phantom"})
    return Phantom(vol, lung, tuple(nodules), tuple(excluded),
                   meta={"seed": seed, "noise_hu": sigma, "scale": scene.scale, "len_z_mm": scene.len_z_mm,
                         "touching_lungs": params.touching_lungs, "one_lung": params.one_lung,
                         "confounders": confounders, "kernel": params.kernel})


@dataclass(frozen=True, eq=False)
class Scene:
    """The default generator's chest before any lesion and before the scanner (blur, noise, field
    of view): what `generate_phantom` draws first. ``hu``: float32 (z, y, x), ``lung``: bool true
    lungs, both on ``grid``; ``rng``: the seed's stream at the point where the findings are drawn
    (`generate_phantom` goes on with it, so its phantoms are unchanged); ``scale``: the patient's
    size factor; ``len_z_mm``: the scanned length; ``spacing_zyx_mm`` / ``origin_xyz_mm``: the
    grid's, as the `Volume` takes them. A follow-up pair (`followup`) renders one scene twice with
    changed lesions."""
    rng: np.random.Generator
    grid: Grid
    anatomy: Anatomy
    hu: np.ndarray
    lung: np.ndarray
    scale: float
    len_z_mm: float
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]


def default_scene(seed: int, *, shape_zyx=None, spacing_zyx_mm=None, params: PhantomParams | None = None) -> Scene:
    """The default generator's lesion-free chest for ``seed`` (see `Scene`); the arguments as in
    `generate_phantom`."""
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
    grid = Grid(shape, spacing, origin)
    anat = Anatomy(rng, grid, scale, grid.z[0], grid.z[-1], params)
    hu, lung = anat.render()
    return Scene(rng, grid, anat, hu, lung, scale, len_z, spacing, origin)


def scanner_default(hu: np.ndarray, lung: np.ndarray, grid: Grid, sigma: float, rng: np.random.Generator,
                    kernel: str = "standard") -> np.ndarray:
    """The default generator's scanner on a rendered chest: partial-volume blur and correlated
    low-dose noise (``sigma`` HU, drawn from ``rng``, shaped by the reconstruction ``kernel``),
    then the circular field of view (`PAD_HU` outside, where ``lung`` is cleared in place).
    ``hu``: float32 (z, y, x), modified in place. -> int16 HU on ``grid``."""
    nz, ny, nx = grid.shape
    spacing, origin = grid.spacing, grid.origin
    fov_x, fov_y = nx * spacing[2], ny * spacing[1]
    blur3(hu, axes=(1, 2))
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    # The standard noise is the draw blurred by [1,2,1]/4 along y and x and scaled by sigma / 0.6124:
    # 0.6124 is the blur's factor on the std along one axis, both axes keep 0.375, so its std is
    # 0.375 / 0.6124 = 0.61 x sigma (left as it is: every cohort was made with it).
    std_noise = sigma * 0.375 / 0.6124
    if kernel == "sharp":
        hu += np.float32(0.8) * (hu - blur3(hu.copy(), axes=(1, 2)))
        hu += noise * np.float32(1.5 * std_noise)                 # grainy: uncorrelated in plane
    else:
        blur3(noise, axes=(1, 2))
        if kernel == "smooth":
            for _ in range(2):
                blur3(hu, axes=(1, 2))
                blur3(noise, axes=(1, 2))
            noise *= np.float32(0.375 / 0.2256)  # [1,2,1]/4 three times per axis keeps 0.2256, not 0.375
        hu += noise * np.float32(sigma / 0.6124)
    yy = grid.y[:, None] - (origin[1] + (ny - 1) / 2 * spacing[1])
    xx = grid.x[None, :] - (origin[0] + (nx - 1) / 2 * spacing[2])
    outside = yy ** 2 + xx ** 2 > (0.5 * min(fov_x, fov_y) - spacing[1]) ** 2
    hu[:, outside] = PAD_HU
    lung[:, outside] = False
    return np.clip(np.rint(hu), -3024, 3071).astype(np.int16)


# -- the wide and held-out generators -----------------------------------------------------------------

def slice_profile(spacing_mm: float, thickness_mm: float, kind: str = "box") -> np.ndarray:
    """Weights (float64, odd length, sum 1) that turn slices sampled every ``spacing_mm`` into slices
    ``thickness_mm`` thick: a box of that width (``"box"``: each tap its overlap with the box) or a
    Gaussian of that FWHM (``"gaussian"``). ``[1.0]`` when the thickness does not exceed the spacing."""
    if spacing_mm <= 0 or thickness_mm <= 0:
        raise ConfigError(f"spacing and thickness must be > 0 mm, got {spacing_mm}, {thickness_mm}")
    if thickness_mm <= spacing_mm * (1 + 1e-6):
        return np.ones(1)
    if kind == "box":
        half = int(np.ceil(thickness_mm / (2 * spacing_mm) - 0.5))
        k = np.arange(-half, half + 1) * spacing_mm
        t = thickness_mm / 2
        w = np.clip(np.minimum(k + spacing_mm / 2, t) - np.maximum(k - spacing_mm / 2, -t), 0, None)
    elif kind == "gaussian":
        sigma = thickness_mm / 2.3548
        half = int(np.ceil(3 * sigma / spacing_mm))
        w = np.exp(-0.5 * (np.arange(-half, half + 1) * spacing_mm / sigma) ** 2)
    else:
        raise ConfigError(f"slice profile must be 'box' or 'gaussian', got {kind!r}")
    return w / w.sum()


def _convolve_axis(a: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """``a`` (float32) convolved with the odd-length weights ``w`` along ``axis`` (edges repeated)."""
    half = len(w) // 2
    if half == 0:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (half, half)
    src = np.pad(a, pad, mode="edge")
    out = np.zeros_like(a)
    n = a.shape[axis]
    for i, wi in enumerate(w):
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(i, i + n)
        out += np.float32(wi) * src[tuple(sl)]
    return out


def _gaussian_taps(sigma_vox: float) -> np.ndarray:
    if sigma_vox < 0.2:
        return np.ones(1)
    half = int(np.ceil(3 * sigma_vox))
    w = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_vox) ** 2)
    return w / w.sum()


def _gaussian_in_plane(a: np.ndarray, sigma_mm: float, spacing) -> np.ndarray:
    for axis in (1, 2):
        a = _convolve_axis(a, _gaussian_taps(sigma_mm / spacing[axis]), axis)
    return a


def _unit_std(a: np.ndarray) -> np.ndarray:
    a *= np.float32(1.0 / max(float(a[:, ::4, ::4].std()), 1e-6))
    return a


def _filtered_noise(rng, shape, spacing, amp, profile) -> np.ndarray:
    """Unit-std noise: white noise filtered in plane by the transfer function ``amp`` ((ny, nx // 2 + 1),
    over `np.fft.rfft2`'s frequencies), 32 slices at a time, then the slice profile along z."""
    nz, ny, nx = shape
    out = np.empty(shape, np.float32)
    for z0 in range(0, nz, 32):
        white = rng.standard_normal((min(32, nz - z0), ny, nx), dtype=np.float32)
        out[z0:z0 + 32] = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(ny, nx)).astype(np.float32)
    return _unit_std(_convolve_axis(_unit_std(out), profile, 0))


def _frequencies(shape, spacing):
    """In-plane spatial frequencies (cycles/mm) of `np.fft.rfft2`: fy (ny, 1), fx (1, nx // 2 + 1)."""
    return np.fft.fftfreq(shape[1], spacing[1])[:, None], np.fft.rfftfreq(shape[2], spacing[2])[None, :]


def _wide_noise(rng, shape, spacing, corr_mm: float, band: float, profile) -> np.ndarray:
    """The wide generator's noise (unit std): white noise low-passed in plane by a Gaussian of
    ``corr_mm``, minus ``band`` x a 2.5 times wider one (a CT-like dip at low frequencies)."""
    fy, fx = _frequencies(shape, spacing)
    f2 = fx ** 2 + fy ** 2
    amp = np.exp(-2 * np.pi ** 2 * corr_mm ** 2 * f2) - band * np.exp(-2 * np.pi ** 2 * (2.5 * corr_mm) ** 2 * f2)
    return _filtered_noise(rng, shape, spacing, amp.astype(np.float32), profile)


def _heldout_noise(rng, shape, spacing, corr_mm, ratio, angle, profile) -> np.ndarray:
    """The held-out generator's noise (unit std): a ramp noise-power spectrum |f| exp(-(f/fc)^2),
    fc = 0.25 / corr_mm cycles per mm, anisotropic in plane (frequencies along ``angle`` scaled by
    ``ratio``)."""
    fy, fx = _frequencies(shape, spacing)
    fu = fx * np.cos(angle) + fy * np.sin(angle)
    fv = -fx * np.sin(angle) + fy * np.cos(angle)
    f = np.sqrt((fu * ratio) ** 2 + fv ** 2)
    amp = np.sqrt(f) * np.exp(-0.5 * (f / (0.25 / corr_mm)) ** 2)
    return _filtered_noise(rng, shape, spacing, amp.astype(np.float32), profile)


def _streaks(rng, grid, centre_xy, sigma_hu: float) -> np.ndarray:
    """Photon-starvation streaks (HU, float32): per 8 mm slab, 3-8 bright or dark lines of 0.6-1.5 mm
    through the spine, near horizontal (within 25 degrees), amplitude 0.6-1.5 x the noise std."""
    out = np.zeros(grid.shape, np.float32)
    X, Y = grid.x[None, :] - centre_xy[0], grid.y[:, None] - centre_xy[1]
    slab = max(1, int(round(8.0 / grid.spacing[0])))
    for z0 in range(0, grid.shape[0], slab):
        pattern = np.zeros((grid.shape[1], grid.shape[2]), np.float32)
        for _ in range(int(rng.integers(3, 9))):
            a = np.deg2rad(rng.uniform(-25, 25))
            off = rng.uniform(-15, 15)
            dist = np.abs(-X * np.sin(a) + Y * np.cos(a) - off)
            width = rng.uniform(0.6, 1.5)
            pattern += np.float32(rng.choice([-1, 1]) * rng.uniform(0.6, 1.5) * sigma_hu) * \
                np.exp(-0.5 * (dist / width) ** 2).astype(np.float32)
        out[z0:z0 + slab] = pattern
    return out


def _draw_scan(rv, cfg: GeneratorConfig, shape_zyx, spacing_zyx_mm, params) -> dict:
    """The scan-level draws of a variant generator, always all of them in one order (so overriding
    one leaves the others unchanged)."""
    u = rv.uniform
    d = {"dxy": u(*cfg.in_plane_mm), "dz": u(*cfg.slice_spacing_mm), "thick": u() < cfg.thick_slice_p,
         "ratio": u(*cfg.thickness_ratio), "z_extent": u(250, 330), "noise": u(*cfg.noise_hu),
         "corr": u(*cfg.noise_corr_mm), "band": u(0.0, 0.6), "kernel": str(rv.choice(cfg.kernels)),
         "pad": int(rv.choice(cfg.pad_hu)), "fov": u(*cfg.fov_fraction), "scale": u(*cfg.patient_scale),
         "aniso": u(1.5, 3.0), "angle": u(0, np.pi), "blur_mm": u(0.35, 0.8), "gain": u(0.2, 1.0)}
    spacing = (d["dz"], d["dxy"], d["dxy"]) if spacing_zyx_mm is None else tuple(float(v) for v in spacing_zyx_mm)
    if shape_zyx is None:
        shape_zyx = (int(round((params.z_extent_mm or d["z_extent"]) / spacing[0])), 512, 512)
    shape = tuple(int(v) for v in shape_zyx)
    if len(shape) != 3 or min(shape) < 8:
        raise ConfigError(f"shape_zyx must be 3 sizes >= 8, got {shape_zyx}")
    d["shape"], d["spacing"] = shape, spacing
    d["thickness"] = min(max(spacing[0], 3.0), spacing[0] * d["ratio"]) if d["thick"] else spacing[0]
    d["sigma"] = params.noise_hu if params.noise_hu is not None else d["noise"]
    return d


def _uid_tag(cfg: GeneratorConfig) -> str:
    if cfg in (WIDE, HELDOUT):
        return cfg.family
    return hashlib.sha256(repr(cfg).encode()).hexdigest()[:16]


def _generate_variant(seed: int, shape_zyx, spacing_zyx_mm, params: PhantomParams, cfg: GeneratorConfig,
                      noise_seed: int | None = None) -> Phantom:
    """`generate_phantom` for the wide and held-out generators."""
    if params.kernel != "standard":
        raise ConfigError(f"the {cfg.family} generator draws its kernel (GeneratorConfig.kernels); "
                          f"PhantomParams.kernel must stay 'standard', got {params.kernel!r}")
    rv = np.random.default_rng([int(seed), 3501])
    rng = np.random.default_rng(seed)
    d = _draw_scan(rv, cfg, shape_zyx, spacing_zyx_mm, params)
    style = draw_anatomy_style(rv, cfg.family)
    shape, spacing = d["shape"], d["spacing"]
    nz, ny, nx = shape
    fov_x, fov_y = nx * spacing[2], ny * spacing[1]
    scale = min(1.0, 0.9 * min(fov_x / 340.0, fov_y / 280.0)) * d["scale"]
    origin = (-(nx - 1) / 2 * spacing[2] + float(rng.uniform(-5, 5)),
              -(ny - 1) / 2 * spacing[1] + float(rng.uniform(-5, 5)) - 15 * scale,
              float(rng.uniform(-400, -100)))
    grid = Grid(shape, spacing, origin)
    anat = Anatomy(rng, grid, scale, grid.z[0], grid.z[-1], params, style)
    hu, lung = anat.render()
    shapes: list = []
    nodules, excluded, records = place_findings_variant(rng, grid, hu, lung, anat, params, cfg, shapes=shapes)
    confounders = add_confounders(seed, grid, hu, lung, anat, params.confounders) if params.confounders else []

    heldout = cfg.family == "heldout"
    # the noise is the last thing drawn from ``rv``: its own stream gives the same scan, noise aside
    rn = rv if noise_seed is None else np.random.default_rng([int(seed), 3501, int(noise_seed)])
    profile = slice_profile(spacing[0], d["thickness"], "gaussian" if heldout else "box")
    sigma = float(d["sigma"])
    if heldout:  # Gaussian blur, Gaussian slice profile, unsharp mask, ramp noise and streaks
        hu = _convolve_axis(_gaussian_in_plane(hu, d["blur_mm"], spacing), profile, 0)
        hu += np.float32(d["gain"]) * (hu - _gaussian_in_plane(hu, 1.0, spacing))
        if sigma > 0:
            hu += np.float32(sigma) * _heldout_noise(rn, shape, spacing, d["corr"], d["aniso"], d["angle"], profile)
            hu += _streaks(rn, grid, anat.spine[:2], sigma)
        kernel = "heldout"
    else:  # the default's kernels, a box slice profile, Gaussian-correlated noise
        blur3(hu, axes=(1, 2))
        hu = _convolve_axis(hu, profile, 0)
        kernel = d["kernel"]
        if kernel == "sharp":
            hu += np.float32(0.8) * (hu - blur3(hu.copy(), axes=(1, 2)))
        elif kernel == "smooth":
            for _ in range(2):
                blur3(hu, axes=(1, 2))
        if sigma > 0:
            hu += np.float32(sigma) * _wide_noise(rn, shape, spacing, d["corr"], d["band"], profile)
    yy = grid.y[:, None] - (origin[1] + (ny - 1) / 2 * spacing[1])
    xx = grid.x[None, :] - (origin[0] + (nx - 1) / 2 * spacing[2])
    fov_r = 0.5 * d["fov"] * min(fov_x, fov_y) - spacing[1]
    outside = yy ** 2 + xx ** 2 > fov_r ** 2
    hu[:, outside] = d["pad"]
    out = np.clip(np.rint(hu), -3024, 3071).astype(np.int16)
    lung[:, outside] = False

    uid = generate_uid(entropy_srcs=["noduleflow-phantom", _uid_tag(cfg), str(seed)])
    vol = Volume(out, spacing, origin, series_uid=uid,
                 meta={"source": f"phantom generator={cfg.family} seed={seed}", "format": "phantom",
                       "slice_thickness_mm": round(d["thickness"], 3)})
    meta = {"seed": seed, "generator": cfg.family, "noise_hu": sigma, "scale": scale, "len_z_mm": nz * spacing[0],
            "touching_lungs": params.touching_lungs, "one_lung": params.one_lung, "confounders": confounders,
            "kernel": kernel, "slice_thickness_mm": d["thickness"], "slice_profile": "gaussian" if heldout else "box",
            "noise_corr_mm": d["corr"], "pad_hu": d["pad"], "fov_radius_mm": fov_r, "lesions": records,
            "anatomy": asdict(style)}
    if noise_seed is not None:
        meta["noise_seed"] = int(noise_seed)
    if heldout:
        meta.update(noise_anisotropy=d["aniso"], blur_mm=d["blur_mm"], unsharp_gain=d["gain"])
    else:
        meta.update(noise_band=d["band"])
    return Phantom(vol, lung, tuple(nodules), tuple(excluded), meta=meta, lesion_shapes=tuple(shapes))
