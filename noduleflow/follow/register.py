"""Register a prior scan to a current one (SimpleITK): lungs first, then rigid, affine, and an
optional B-spline.

The images registered are the detector's 1 mm lung boxes (`engine.preprocess.Preprocessed`:
``volume`` and its lung ``mask``), so both scans are compared on one isotropic grid whatever
their slice thickness, and only around the lungs. Steps:

1. lungs: the centres of mass of the two lung masks give the initial translation (moments);
2. rigid (`Euler3DTransform`), then affine: Mattes mutual information on HU clamped to
   ``hu_range`` (air, lung, vessels and soft tissue; the -2048 padding and bone do not drive it),
   sampled inside the prior's lung mask only, multi-resolution (shrink factors on the 1 mm grid,
   Gaussian smoothing in mm), regular-step gradient descent with scales from the physical shift;
3. optionally (``deformable``) a cubic B-spline on a coarse mesh over the affine result (mean
   squares, L-BFGS-B): breathing changes the lungs' shape, which no affine map follows.

A stage is kept only when it does not lower the overlap (Dice) of the two lung masks by more
than ``max_dice_drop``; otherwise the result stays the previous stage's, and the stage's record
says so (``kept``: False).

The prior is the *fixed* image: the transform then maps a prior world point (x, y, z mm, LPS)
straight onto the current scan, which is what moving the prior findings needs (a B-spline has no
closed-form inverse).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from noduleflow.engine.errors import ConfigError
from noduleflow.engine.volume import Volume

log = logging.getLogger(__name__)

TRANSFORMS = ("rigid", "affine")


@dataclass(frozen=True)
class RegistrationParams:
    """``transform``: the last linear stage ("rigid" or "affine"); ``deformable``: a B-spline
    after it (knots every ``bspline_mesh_mm``). ``grid_mm``: both scans are first averaged
    down (bin shrink) to about this voxel size; ``shrink_factors`` / ``smoothing_mm``: the
    resolution levels on that grid (default 4 mm then 2 mm: sub-millimetre agreement is not
    needed to match nodules, and it keeps a scan pair to seconds on a CPU). ``sampling``: the
    fraction of the masked voxels the metric samples (random, ``seed``: repeatable).
    ``max_dice_drop``: a stage that lowers the lung masks' Dice by more than this is dropped (the
    default, 0.005, was chosen on synthetic follow-up pairs 9500-9523: drops up to 0.002 came with
    better maps by the true motion, drops from 0.017 with worse ones, up to 14 mm off)."""
    transform: str = "affine"
    deformable: bool = False
    grid_mm: float = 2.0
    shrink_factors: tuple[int, ...] = (2, 1)
    smoothing_mm: tuple[float, ...] = (2.0, 0.0)
    sampling: float = 0.2
    iterations: int = 200
    bspline_mesh_mm: float = 60.0
    hu_range: tuple[float, float] = (-1000.0, 300.0)
    seed: int = 1
    max_dice_drop: float = 0.005

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if len(self.shrink_factors) != len(self.smoothing_mm) or not self.shrink_factors:
            raise ConfigError(f"need one smoothing per shrink factor, got {self.shrink_factors} and "
                              f"{self.smoothing_mm}")
        if min(self.shrink_factors) < 1:
            raise ConfigError(f"shrink factors must be >= 1, got {self.shrink_factors}")
        if not 0.0 < self.sampling <= 1.0:
            raise ConfigError(f"sampling must be in (0, 1], got {self.sampling}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if not self.grid_mm > 0:
            raise ConfigError(f"grid_mm must be > 0, got {self.grid_mm}")
        if not self.bspline_mesh_mm > 0:
            raise ConfigError(f"bspline_mesh_mm must be > 0, got {self.bspline_mesh_mm}")
        if not 0.0 <= self.max_dice_drop <= 1.0:
            raise ConfigError(f"max_dice_drop must be in [0, 1], got {self.max_dice_drop}")


@dataclass(frozen=True, eq=False)
class Registration:
    """The result: ``transform`` (SimpleITK) maps prior world (x, y, z mm) to current world;
    ``stages``: per stage its metric value, iterations, stop reason, seconds, the lungs' Dice
    after it and whether it was ``kept``; ``kind``: the stages kept ("rigid", "affine", with
    "+bspline"); ``lung_dice_before`` / ``lung_dice``: overlap of the two lung masks after the
    moments initialisation and after the stages kept (a low value says it failed)."""
    transform: object
    kind: str
    stages: tuple[dict, ...]
    lung_dice_before: float
    lung_dice: float
    seconds: float

    def map_points(self, xyz_mm) -> np.ndarray:
        """Prior world points (n, 3) x, y, z mm -> their places in the current scan (n, 3) float64."""
        pts = np.asarray(xyz_mm, dtype=np.float64).reshape(-1, 3)
        return np.array([self.transform.TransformPoint(tuple(float(v) for v in p)) for p in pts]).reshape(-1, 3)

    def linear_part(self) -> np.ndarray:
        """The 4x4 homogeneous matrix of the linear stages (prior world -> current world, mm): for
        a rigid or affine result the whole map, for a deformable one the map before the B-spline."""
        t = self.transform
        if isinstance(t, sitk.CompositeTransform):
            t = t.GetNthTransform(0)
        o = np.zeros(3)
        base = np.array(t.TransformPoint(tuple(o)))
        m = np.eye(4)
        for k in range(3):
            e = np.zeros(3)
            e[k] = 1.0
            m[:3, k] = np.array(t.TransformPoint(tuple(e))) - base
        m[:3, 3] = base
        return m

    def to_dict(self) -> dict:
        m = self.linear_part()
        return {"kind": self.kind, "matrix_prior_to_current": [[round(float(v), 6) for v in row] for row in m],
                "translation_mm": [round(float(v), 3) for v in m[:3, 3]], "stages": list(self.stages),
                "lung_dice_before": round(self.lung_dice_before, 4), "lung_dice": round(self.lung_dice, 4),
                "seconds": round(self.seconds, 3)}


def to_sitk(volume: Volume, array: np.ndarray | None = None, clamp=None) -> sitk.Image:
    """``volume``'s voxels (or ``array`` on its grid) as a float32 SimpleITK image with its
    geometry (spacing, origin, direction); values clipped to ``clamp`` (low, high) when given."""
    a = np.asarray(volume.hu if array is None else array, dtype=np.float32)
    if clamp is not None:
        a = np.clip(a, clamp[0], clamp[1])
    img = sitk.GetImageFromArray(a)
    img.SetSpacing(tuple(float(s) for s in volume.spacing_xyz_mm))
    img.SetOrigin(tuple(float(s) for s in volume.origin_xyz_mm))
    img.SetDirection(tuple(float(s) for s in volume.direction))
    return img


def _coarse(volume: Volume, mask: np.ndarray, p: RegistrationParams) -> tuple[sitk.Image, sitk.Image]:
    """The clamped scan and its mask (float32, 0/1) averaged down to about ``p.grid_mm`` voxels
    (bin shrink: each coarse voxel the mean of the fine ones, so no aliasing); the mask's
    coarse voxels are the fraction of lung they hold."""
    f = [max(1, int(round(p.grid_mm / s))) for s in volume.spacing_xyz_mm]
    img, m = to_sitk(volume, clamp=p.hu_range), to_sitk(volume, mask.astype(np.float32))
    if f != [1, 1, 1]:
        img, m = sitk.BinShrink(img, f), sitk.BinShrink(m, f)
    return img, m


def _dice(fixed_mask: sitk.Image, moving_mask: sitk.Image, transform) -> float:
    warped = sitk.Resample(moving_mask, fixed_mask, transform, sitk.sitkNearestNeighbor, 0.0)
    a = sitk.GetArrayViewFromImage(fixed_mask) > 0.5
    b = sitk.GetArrayViewFromImage(warped) > 0.5
    n = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / n if n else 0.0


def _method(p: RegistrationParams, fixed_mask: sitk.Image, levels=None) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(p.sampling, p.seed)
    r.SetMetricFixedMask(fixed_mask)
    r.SetInterpolator(sitk.sitkLinear)
    shrink, smooth = levels or (p.shrink_factors, p.smoothing_mm)
    r.SetShrinkFactorsPerLevel(list(shrink))
    r.SetSmoothingSigmasPerLevel(list(smooth))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return r


def _linear_stage(name, p, fixed, moving, fixed_mask, initial, stages, step_mm: float) -> sitk.Transform:
    t = time.perf_counter()
    # the affine stage starts where the rigid one ended: its finest level only, in small steps
    r = _method(p, fixed_mask, None if name == "rigid" else ((p.shrink_factors[-1],), (p.smoothing_mm[-1],)))
    # steps in mm of the largest voxel shift; scales from the physical shift make rotations and
    # translations (and the affine's scalings) comparable
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=step_mm, minStep=0.01, numberOfIterations=p.iterations,
                                               relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetInitialTransform(initial, inPlace=False)
    out = r.Execute(fixed, moving)
    stages.append({"stage": name, "metric": round(float(r.GetMetricValue()), 5),
                   "iterations": int(r.GetOptimizerIteration()), "stop": r.GetOptimizerStopConditionDescription(),
                   "seconds": round(time.perf_counter() - t, 3)})
    log.info("registration %s: metric %.4f after %d iterations (%.2f s)", name, r.GetMetricValue(),
             r.GetOptimizerIteration(), time.perf_counter() - t)
    # Execute returns a composite holding the optimised transform: unwrap it
    if isinstance(out, sitk.CompositeTransform) and out.GetNumberOfTransforms() == 1:
        out = out.GetNthTransform(0)
    return out


def _as_affine(rigid: sitk.Transform) -> sitk.AffineTransform:
    e = sitk.Euler3DTransform(rigid)
    a = sitk.AffineTransform(3)
    a.SetCenter(e.GetCenter())
    a.SetMatrix(e.GetMatrix())
    a.SetTranslation(e.GetTranslation())
    return a


def _bspline_stage(p, fixed, moving, fixed_mask, linear, stages) -> sitk.Transform:
    t = time.perf_counter()
    extent = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())
    mesh = [max(1, int(round(e / p.bspline_mesh_mm))) for e in extent]
    bs = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMeanSquares()
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(p.sampling, p.seed)
    r.SetMetricFixedMask(fixed_mask)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetShrinkFactorsPerLevel([max(p.shrink_factors[-1], 2)])
    r.SetSmoothingSigmasPerLevel([p.smoothing_mm[-1]])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=min(p.iterations, 100),
                           maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=400)
    r.SetMovingInitialTransform(linear)
    r.SetInitialTransform(bs, inPlace=True)
    r.Execute(fixed, moving)
    stages.append({"stage": "bspline", "metric": round(float(r.GetMetricValue()), 5),
                   "iterations": int(r.GetOptimizerIteration()), "stop": r.GetOptimizerStopConditionDescription(),
                   "mesh": mesh, "seconds": round(time.perf_counter() - t, 3)})
    # the full map is linear(bspline(x)): a composite applies its last-added transform first
    return sitk.CompositeTransform([linear, bs])


def register(prior: Volume, prior_mask: np.ndarray, current: Volume, current_mask: np.ndarray,
             params: RegistrationParams | None = None) -> Registration:
    """Register ``prior`` onto ``current`` -> `Registration` whose transform maps prior world
    points onto the current scan.

    ``prior`` / ``current``: the scans (int16 HU (z, y, x), any grid; the detector's 1 mm lung
    boxes are what `noduleflow.follow.follow` passes); ``prior_mask`` / ``current_mask``: bool
    lung masks on those grids. A stage that lowers the lungs' overlap by more than
    ``params.max_dice_drop`` is dropped (logged). ConfigError when a mask is empty or its shape
    differs from its scan's."""
    p = params or RegistrationParams()
    for name, vol, m in (("prior", prior, prior_mask), ("current", current, current_mask)):
        if np.shape(m) != vol.shape:
            raise ConfigError(f"{name} lung mask has shape {np.shape(m)}, its scan {vol.shape}")
        if not np.any(m):
            raise ConfigError(f"{name} lung mask is empty: nothing to register on")
    t0 = time.perf_counter()
    fixed, fmask_f = _coarse(prior, prior_mask, p)
    moving, mmask_f = _coarse(current, current_mask, p)
    fixed_mask = sitk.Cast(fmask_f > 0.5, sitk.sitkUInt8)
    # 1. lungs: the masks' centres of mass
    init = sitk.CenteredTransformInitializer(fmask_f, mmask_f, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    before = _dice(fmask_f, mmask_f, init)
    stages: list[dict] = [{"stage": "lungs", "translation_mm": [round(v, 3) for v in
                                                                sitk.Euler3DTransform(init).GetTranslation()],
                           "lung_dice": round(before, 4)}]
    # 2. rigid, then affine; 3. the optional deformable step. Each stage is kept only when it does
    # not lower the lungs' overlap (beyond the coarse masks' noise): an optimiser can leave a stage
    # worse than it found it (an affine step that squashes the lungs by a sixth, 10 mm off at the
    # lesions), and a stage that made the registration worse is no reason to report it.
    t, best, last, bspline = init, before, "lungs", False
    todo = [("rigid", lambda prev: _linear_stage("rigid", p, fixed, moving, fixed_mask, prev, stages, 4.0))]
    if p.transform == "affine":
        todo.append(("affine", lambda prev: _linear_stage("affine", p, fixed, moving, fixed_mask, _as_affine(prev),
                                                          stages, 1.0)))
    if p.deformable:
        todo.append(("bspline", lambda prev: _bspline_stage(p, fixed, moving, fixed_mask, prev, stages)))
    for name, stage in todo:
        cand = stage(t)
        dice = _dice(fmask_f, mmask_f, cand)
        stages[-1]["lung_dice"] = round(dice, 4)
        stages[-1]["kept"] = bool(dice >= best - p.max_dice_drop)
        if not stages[-1]["kept"]:
            log.warning("registration: the %s stage lowered the lungs' overlap (Dice %.3f -> %.3f): kept the %s "
                        "result", name, best, dice, last)
            continue
        t, best, last = cand, dice, name
        bspline = bspline or name == "bspline"
    # the lungs' centres alone are a rigid transform (a translation)
    kind = ("affine" if any(s["stage"] == "affine" and s["kept"] for s in stages) else "rigid") + \
        ("+bspline" if bspline else "")
    return Registration(t, kind, tuple(stages), float(before), float(best), time.perf_counter() - t0)
