"""The model's input contract: everything that must be the same when a patch is cut for
training and when it is cut for inference.

A model package's manifest carries one `InputContract` (``manifest.json["contract"]``); the
trainer, the exporter and the engine read it from here and nowhere else, so the patch size,
the HU window, the normalisation, the location input of 3D-LOC models, the dense grid and the
preprocessing cannot drift between them. The defaults are the seed papers' choices: 41^3
patches at 1 mm (seed 000), HU window [-1000, 400] scaled to [0, 1] (seed 001).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .config import HU_WINDOW, CandidateRules
from .errors import ConfigError
from .postprocess import sigmoid
from .preprocess import PreprocessSpec

PATCH_SIZE = 41            # voxels per axis: the receptive field of every network of seed 000
NORMALISATIONS = ("window_to_unit",)
# stage 1's candidate generators (`Stage1Spec.generator`): the one tuple of their names
STAGE1_GENERATORS = ("cnn", "blobs", "union")
GGO_METHODS = ("regions", "peaks")   # engine.ggo's methods (engine.ggo imports this table)


@dataclass(frozen=True)
class Stage1Spec:
    """Stage 1 of a two-stage package: candidates for recall (`engine.stage1.stage1_candidates`).

    Up to ``max_candidates`` candidates per scan from ``generator``: the dense CNN's clustered peaks
    ("cnn"), Hessian blobs with responses of at least ``blob_min_response`` ("blobs"), or their
    union; one candidate per lesion, merged by the lesion's extent.

    ``subsolid_candidates`` (0: off) more candidates come from a second blob pass for subsolid
    (ground-glass) lesions, appended after the first ``max_candidates``: voxels denser than
    ``subsolid_solid_hu`` (walls, vessels, solid tissue) are set to ``subsolid_fill_hu`` (aerated
    lung) and blobs with responses of at least ``subsolid_min_response`` are sought at scales up
    to 4 mm (`engine.stage1.subsolid_blobs`): a faint nodule that touches the pleura or a vessel
    is then a ball on dark lung, which the first pass misses.

    ``wall_candidates`` (0: off) more candidates come from a third blob pass for lesions on the
    pleura, appended after the subsolid ones: everything outside the lung (the lung mask closed by
    ``wall_close_mm``, so that a nodule in an indentation of the lung's surface stays inside, then
    shrunk by ``wall_shrink_mm``, the mask's own margin) is set to ``wall_fill_hu`` and blobs with
    responses of at least ``blob_min_response`` are sought within ``wall_band_mm`` of it
    (`engine.stage1.wall_blobs`): the chest wall is gone and a small solid nodule on it is a
    ball on dark lung, where the first pass saw the Hessian of a bump on a plate.

    ``ggo_candidates`` (0: off) more candidates come from a fourth pass for ground-glass lesions,
    appended last: regions of the parenchyma (voxels below ``ggo_dense_hu``) at least
    ``ggo_min_contrast_hu`` denser than the parenchyma around them (`engine.ggo`), which the blob
    passes rank below the vessel branchings or do not answer at all. ``ggo_method`` "regions" (one
    candidate per connected region) or "peaks" (one per local maximum of the contrast, with its own
    extent, ranked down when elongated; a candidate already in the list drops it only when it lies
    within the smaller of the two extents, not the larger: a ground-glass region spans vessels
    that earlier passes proposed). Manifests without the key get "regions", as they were made."""

    generator: str = "union"
    max_candidates: int = 150
    blob_min_response: float = 20.0
    subsolid_candidates: int = 0
    subsolid_solid_hu: float = -400.0
    subsolid_fill_hu: float = -850.0
    subsolid_min_response: float = 3.0
    wall_candidates: int = 0
    wall_close_mm: float = 4.0
    wall_shrink_mm: float = 3.0
    wall_fill_hu: float = -850.0
    wall_band_mm: float = 12.0
    ggo_candidates: int = 0
    ggo_dense_hu: float = -350.0
    ggo_min_contrast_hu: float = 50.0
    ggo_method: str = "regions"

    def __post_init__(self) -> None:
        if self.generator not in STAGE1_GENERATORS:
            raise ConfigError(f"stage1.generator must be one of {STAGE1_GENERATORS}, got {self.generator!r}")
        if not _is_int(self.max_candidates) or not 1 <= self.max_candidates <= 2000:
            raise ConfigError(f"stage1.max_candidates must be an integer in [1, 2000], got {self.max_candidates!r}")
        if not _is_number(self.blob_min_response) or self.blob_min_response < 0:
            raise ConfigError(f"stage1.blob_min_response must be a number >= 0, got {self.blob_min_response!r}")
        if not _is_int(self.subsolid_candidates) or not 0 <= self.subsolid_candidates <= 1000:
            raise ConfigError(f"stage1.subsolid_candidates must be an integer in [0, 1000], got "
                              f"{self.subsolid_candidates!r}")
        for name in ("subsolid_solid_hu", "subsolid_fill_hu"):
            v = getattr(self, name)
            if not _is_number(v) or not -1024 <= v <= 400:
                raise ConfigError(f"stage1.{name} must be a number in [-1024, 400] HU, got {v!r}")
        if self.subsolid_fill_hu >= self.subsolid_solid_hu:
            raise ConfigError(f"stage1.subsolid_fill_hu ({self.subsolid_fill_hu}) must be below "
                              f"subsolid_solid_hu ({self.subsolid_solid_hu})")
        if not _is_number(self.subsolid_min_response) or self.subsolid_min_response < 0:
            raise ConfigError(f"stage1.subsolid_min_response must be a number >= 0, got {self.subsolid_min_response!r}")
        if not _is_int(self.wall_candidates) or not 0 <= self.wall_candidates <= 1000:
            raise ConfigError(f"stage1.wall_candidates must be an integer in [0, 1000], got {self.wall_candidates!r}")
        for name in ("wall_close_mm", "wall_shrink_mm", "wall_band_mm"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v <= 30:
                raise ConfigError(f"stage1.{name} must be a number in [0, 30] mm, got {v!r}")
        if not _is_number(self.wall_fill_hu) or not -1024 <= self.wall_fill_hu <= 400:
            raise ConfigError(f"stage1.wall_fill_hu must be a number in [-1024, 400] HU, got {self.wall_fill_hu!r}")
        if not _is_int(self.ggo_candidates) or not 0 <= self.ggo_candidates <= 1000:
            raise ConfigError(f"stage1.ggo_candidates must be an integer in [0, 1000], got {self.ggo_candidates!r}")
        if not _is_number(self.ggo_dense_hu) or not -900 <= self.ggo_dense_hu <= 0:
            raise ConfigError(f"stage1.ggo_dense_hu must be a number in [-900, 0] HU, got {self.ggo_dense_hu!r}")
        if not _is_number(self.ggo_min_contrast_hu) or not 0 < self.ggo_min_contrast_hu <= 500:
            raise ConfigError(f"stage1.ggo_min_contrast_hu must be a number in (0, 500] HU, got "
                              f"{self.ggo_min_contrast_hu!r}")
        if self.ggo_method not in GGO_METHODS:
            raise ConfigError(f"stage1.ggo_method must be one of {GGO_METHODS}, got {self.ggo_method!r}")

    @property
    def uses_cnn(self) -> bool:
        """Whether this stage 1 runs the dense CNN (the blob generator alone does not)."""
        return self.generator != "blobs"


@dataclass(frozen=True)
class Stage2Spec:
    """Stage 2 of a two-stage package (false-positive reduction, ``stage2.onnx``): each stage-1
    candidate is scored on ``channels`` multi-scale context patches (`engine.context.ContextVolume`:
    the contract's patch at 1 mm, then at 2 mm), the mean logit over the first ``tta_flips`` of the
    8 axis flips (1, 2, 4 or 8; order of `engine.context.flips8`, identity first). Ranked by that, a
    candidate within ``dedup_factor`` x the larger extent radius of it and a better-ranked one is
    the same lesion and dropped (0: off). The final probability is
    ``sigmoid(calibration_scale * logit + calibration_bias)`` (Platt scaling, fitted on
    validation phantoms; 1 and 0: uncalibrated).

    ``tta_top`` (0: every candidate): the flips after the first only for the ``tta_top``
    candidates with the highest first-view logits; the others keep their first-view logit (they
    rank far below the ones that matter, and the extra views cost one network run each)."""

    channels: int = 2
    tta_flips: int = 8
    dedup_factor: float = 1.5
    calibration_scale: float = 1.0
    calibration_bias: float = 0.0
    tta_top: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.channels) or not 1 <= self.channels <= 4:
            raise ConfigError(f"stage2.channels must be an integer in [1, 4], got {self.channels!r}")
        if not _is_int(self.tta_flips) or self.tta_flips not in (1, 2, 4, 8):
            raise ConfigError(f"stage2.tta_flips must be 1, 2, 4 or 8, got {self.tta_flips!r}")
        if not _is_number(self.dedup_factor) or not 0 <= self.dedup_factor <= 5:
            raise ConfigError(f"stage2.dedup_factor must be in [0, 5], got {self.dedup_factor!r}")
        if not _is_int(self.tta_top) or not 0 <= self.tta_top <= 2000:
            raise ConfigError(f"stage2.tta_top must be an integer in [0, 2000], got {self.tta_top!r}")
        if not _is_number(self.calibration_scale) or not 0 < self.calibration_scale <= 100:
            raise ConfigError(f"stage2.calibration_scale must be in (0, 100], got {self.calibration_scale!r}")
        if not _is_number(self.calibration_bias) or not -100 <= self.calibration_bias <= 100:
            raise ConfigError(f"stage2.calibration_bias must be in [-100, 100], got {self.calibration_bias!r}")

    def calibrate(self, logits):
        """Calibrated probabilities of stage-2 logits (float64). The calibrated logit is clipped to
        [-60, 60]: beyond that the probability is 0 or 1 to float64 precision anyway."""
        z = self.calibration_scale * np.asarray(logits, dtype=np.float64) + self.calibration_bias
        return sigmoid(np.clip(z, -60.0, 60.0))


def split_stage_settings(raw: dict) -> tuple[Stage1Spec, Stage2Spec]:
    """A two-stage package's stage settings -> (Stage1Spec, Stage2Spec), from either form:
    ``{"stage1": {...}, "stage2": {...}}`` (the contract's blocks, manifest format 3), or one flat
    object holding both (a format-2 manifest's ``stage2`` block; a ``--stage2-spec`` file written
    before stage 1 had its own block). Keys starting with "_" (notes such as a fit record) and a
    ``preprocess`` block (read by `noduleflow export`) are ignored; ConfigError names an unknown key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"stage settings must be an object, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if not str(k).startswith("_") and k != "preprocess"}
    if set(raw) <= {"stage1", "stage2"} and all(isinstance(v, dict) for v in raw.values()):
        flat = {**raw.get("stage1", {}), **raw.get("stage2", {})}
    else:
        flat = raw
    s1, s2 = set(Stage1Spec.__dataclass_fields__), set(Stage2Spec.__dataclass_fields__)
    unknown = sorted(set(flat) - s1 - s2)
    if unknown:
        raise ConfigError(f"unknown stage settings {unknown}; known: {sorted(s1 | s2)}")
    return (Stage1Spec(**{k: v for k, v in flat.items() if k in s1}),
            Stage2Spec(**{k: v for k, v in flat.items() if k in s2}))


@dataclass(frozen=True)
class InputContract:
    """How a CT becomes network input.

    patch_size: edge of the cubic patch, voxels of the preprocessed (1 mm) grid.
    hu_window: (lo, hi) HU mapped linearly to [0, 1] and clipped ("window_to_unit").
    pad_hu: value of voxels outside the volume.
    uses_location: the network takes a second input, the patch centre's position in the lung
        box as fractions in [0, 1] (z, y, x) (3D-LOC).
    dense_stride, dense_offset: for fully convolutional graphs, output point i of a tile scores
        the window starting at input voxel ``stride * i``, centred at ``offset + stride * i``
        (offset = patch_size // 2; None: no dense graph).
    preprocess: lung mask, crop margin and target spacing (`PreprocessSpec`).
    candidate_rules: which grid points the dense CNN scores at detection (`CandidateRules`). The
        trainer does not sample its patches with these rules: it cuts positives at the findings
        and negatives on a finer grid of its own (`trainer.data.sampling.SamplingSpec`), so that
        the network also sees the background between the detector's grid points.
    stage1, stage2: a two-stage package's candidate generator (`Stage1Spec`) and false-positive
        reduction (`Stage2Spec`), both or neither (None: the dense CNN alone, clustered by the
        detector's settings).
    """
    patch_size: int = PATCH_SIZE
    hu_window: tuple[float, float] = HU_WINDOW
    normalisation: str = "window_to_unit"
    pad_hu: float = -1000.0
    uses_location: bool = False
    dense_stride: int | None = None
    dense_offset: int | None = None
    preprocess: PreprocessSpec = field(default_factory=lambda: PreprocessSpec())
    candidate_rules: CandidateRules = CandidateRules(stride=4, center_min_hu=-650.0, reach=2)
    stage1: Stage1Spec | None = None
    stage2: Stage2Spec | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.patch_size, int) or isinstance(self.patch_size, bool) or \
                not 9 <= self.patch_size <= 255 or self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be an odd integer in [9, 255], got {self.patch_size!r}")
        w = self.hu_window
        if not (isinstance(w, (tuple, list)) and len(w) == 2 and all(_is_number(v) for v in w)
                and -4000 <= w[0] < w[1] <= 5000):
            raise ConfigError(f"hu_window must be (lo, hi) HU with -4000 <= lo < hi <= 5000, got {w!r}")
        object.__setattr__(self, "hu_window", (float(w[0]), float(w[1])))
        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        if not _is_number(self.pad_hu) or not -4000 <= self.pad_hu <= 5000:
            raise ConfigError(f"pad_hu must be a number of HU in [-4000, 5000], got {self.pad_hu!r}")
        if not isinstance(self.uses_location, bool):
            raise ConfigError(f"uses_location must be true or false, got {self.uses_location!r}")
        if (self.dense_stride is None) != (self.dense_offset is None):
            raise ConfigError(f"dense_stride and dense_offset come together, got {self.dense_stride!r} "
                              f"and {self.dense_offset!r}")
        if self.dense_stride is not None:
            s, o = self.dense_stride, self.dense_offset
            if not (_is_int(s) and 1 <= s <= self.patch_size):
                raise ConfigError(f"dense_stride must be an integer in [1, {self.patch_size}], got {s!r}")
            # output point i scores the window [s i, s i + P): its centre is s i + P // 2, whatever s
            if not (_is_int(o) and o == self.patch_size // 2):
                raise ConfigError(f"dense_offset must be patch_size // 2 = {self.patch_size // 2} (the centre of "
                                  f"each output point's window), got {o!r}")
        if not isinstance(self.preprocess, PreprocessSpec):
            raise ConfigError(f"preprocess must be a PreprocessSpec, got {type(self.preprocess).__name__}")
        sp = self.preprocess.target_spacing_zyx_mm
        # bounded: a 0.001 mm grid would ask the resampler for terabytes
        if len(sp) != 3 or not all(_is_number(v) and 0.25 <= v <= 5.0 for v in sp):
            raise ConfigError(f"preprocess.target_spacing_zyx_mm must be 3 numbers in [0.25, 5] mm, got {sp!r}")
        if not _is_number(self.preprocess.margin_mm) or not 0 <= self.preprocess.margin_mm <= 200:
            raise ConfigError(f"preprocess.margin_mm must be in [0, 200] mm, got {self.preprocess.margin_mm!r}")
        if not isinstance(self.candidate_rules, CandidateRules):
            raise ConfigError(f"candidate_rules must be CandidateRules, got {type(self.candidate_rules).__name__}")
        if self.stage1 is not None and not isinstance(self.stage1, Stage1Spec):
            raise ConfigError(f"stage1 must be a Stage1Spec or null, got {type(self.stage1).__name__}")
        if self.stage2 is not None and not isinstance(self.stage2, Stage2Spec):
            raise ConfigError(f"stage2 must be a Stage2Spec or null, got {type(self.stage2).__name__}")
        if (self.stage1 is None) != (self.stage2 is None):
            raise ConfigError(f"stage1 and stage2 come together (a two-stage package), got stage1 "
                              f"{'set' if self.stage1 else 'null'} and stage2 {'set' if self.stage2 else 'null'}")

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> InputContract:
        """From the manifest's JSON; ConfigError names any unknown or mistyped key."""
        if not isinstance(d, dict):
            raise ConfigError(f"contract must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown contract keys {unknown}")
        if "preprocess" in d:
            pre = d["preprocess"]
            if not isinstance(pre, dict) or not isinstance(pre.get("lung", {}), dict):
                raise ConfigError(f"preprocess must be an object with a 'lung' object, got {pre!r}")
            try:
                d["preprocess"] = PreprocessSpec.from_dict(pre)
            except TypeError as exc:
                raise ConfigError(f"preprocess: {exc}") from None
        if "candidate_rules" in d:
            rules = d["candidate_rules"]
            if not isinstance(rules, dict) or set(rules) - set(CandidateRules.__dataclass_fields__):
                raise ConfigError(f"candidate_rules must be an object with keys among "
                                  f"{sorted(CandidateRules.__dataclass_fields__)}, got {rules!r}")
            try:
                d["candidate_rules"] = CandidateRules(**rules)
            except TypeError as exc:
                raise ConfigError(f"candidate_rules: {exc}") from None
        for key, spec in (("stage1", Stage1Spec), ("stage2", Stage2Spec)):
            if d.get(key) is not None:
                block = d[key]
                if not isinstance(block, dict) or set(block) - set(spec.__dataclass_fields__):
                    raise ConfigError(f"{key} must be an object with keys among "
                                      f"{sorted(spec.__dataclass_fields__)}, got {block!r}")
                d[key] = spec(**block)
        if isinstance(d.get("hu_window"), list):
            d["hu_window"] = tuple(d["hu_window"])
        return cls(**d)

    # -- the contract applied ----------------------------------------------------------------
    @property
    def half(self) -> int:
        return self.patch_size // 2

    @property
    def target_spacing_zyx_mm(self) -> tuple[float, float, float]:
        return self.preprocess.target_spacing_zyx_mm

    def normalise(self, hu: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """HU (any shape) -> float32 in [0, 1] by the window (``out`` reused when given)."""
        lo, hi = self.hu_window
        out = np.subtract(hu, lo, out=out, dtype=np.float32)
        out *= np.float32(1.0 / (hi - lo))
        return np.clip(out, 0.0, 1.0, out=out)

    @property
    def pad_value(self) -> float:
        """`pad_hu` after normalisation."""
        lo, hi = self.hu_window
        return min(max((self.pad_hu - lo) / (hi - lo), 0.0), 1.0)

    def location(self, centres_zyx: np.ndarray, shape_zyx) -> np.ndarray:
        """3D-LOC input: (N, 3) float32 centre positions as fractions of the lung box."""
        return (np.asarray(centres_zyx, dtype=np.float64) /
                np.maximum(np.asarray(shape_zyx) - 1, 1)).astype(np.float32)

    def dense_output_shape(self, tile_shape_zyx) -> tuple[int, int, int]:
        """Output grid of the dense graph on a tile: (n - patch) // stride + 1 per axis."""
        if self.dense_stride is None:
            raise ConfigError("this model has no dense graph")
        return tuple((int(n) - self.patch_size) // self.dense_stride + 1 for n in tile_shape_zyx)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
