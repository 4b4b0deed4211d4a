"""Detection settings as frozen dataclasses, free of numba and onnxruntime so that building
the CLI (whose options are derived from `DetectorConfig`) stays cheap."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .errors import ConfigError

# The HU window mapped to [0, 1] (seed 001's DSB2017 preprocessing): the contract's default and
# the window of the centre refinement (`engine.postprocess.refine_centre`).
HU_WINDOW = (-1000.0, 400.0)

# The dense pass's default tile edge (output grid points): the fastest tile of `bench speed`'s tile
# sweep that keeps a 600-slice scan's peak memory well under 2 GB (larger tiles cost hundreds of MB
# more); TensorRT's dense profile follows it.
DENSE_TILE_OUT = 32


@dataclass(frozen=True)
class CandidateRules:
    """Rules on the 1 mm volume. ``stride``: grid step in voxels; ``offset``: grid phase
    (the dense mode aligns it with the network's output grid); ``center_min_hu``: the
    centre voxel's HU must be at least this; ``box_min_hu``: if set, the minimum HU of
    the ``box`` ^3 neighbourhood must be at least this (the seed's second rule);
    ``reach``: the centre rule passes if any voxel within +-``reach`` of the point passes it
    (on a coarse grid, a small nodule between grid points is then still scored from the
    nearest points; the dense detector uses stride 4 with reach 2)."""

    stride: int = 2
    offset: int = 0
    center_min_hu: float = -650.0
    box_min_hu: float | None = None
    box: int = 5
    reach: int = 0

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if self.box < 1 or self.box % 2 == 0:
            raise ConfigError(f"box must be a positive odd size, got {self.box}")



MODES = ("dense", "patch")
CLUSTERINGS = ("nms", "components")
STAGES = ("auto", "1", "2")


def _opt(default, help: str, cli: bool = True):
    """A `DetectorConfig` field; ``help`` is the one text the CLI options and the docs show."""
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass(frozen=True)
class DetectorConfig:
    """Every detection setting, declared once: the options of ``detect``, ``demo`` and ``serve``
    (names, defaults, help) are derived from these fields by the CLI."""
    stages: str = _opt("auto", "auto: stage 1 (candidates for recall) then stage 2 (false-positive reduction) when "
                               "the model package has a stage-2 graph, else stage 1 alone; 1: stage 1 alone "
                               "(the dense CNN's clustered peaks); 2: both, an error without a stage-2 graph")
    mode: str = _opt("dense", "dense: the fully convolutional graph on tiles of the lung box; patch: 41^3 "
                              "patches at the candidate centres (same scores, slower)")
    top_k: int = _opt(15, "candidates kept per scan")
    threshold: float = _opt(0.0, "drop candidates below this probability")
    clustering: str = _opt("components", "components: connected components of the grid points with p >= "
                                         "--component-min-prob, the list filled by radius NMS below it; nms: "
                                         "greedy radius NMS")
    component_min_prob: float = _opt(0.9, "components: grid points at or above this probability are joined "
                                          "(chosen on tuning phantoms)")
    nms_radius_mm: float = _opt(10.0, "one candidate per this radius (NMS)")
    merge_radius_mm: float = _opt(5.0, "grid points within this radius are merged into a candidate's centre "
                                       "(NMS)", cli=False)
    tile_out: int = _opt(DENSE_TILE_OUT, "dense mode: tile edge in output grid points (larger tiles are "
                                         "faster and take more memory)")
    batch_size: int = _opt(64, "patch mode: patches per batch")
    refine: bool = _opt(True, "move each centre onto the strongest image blob within 3 mm")
    in_mask: bool = _opt(True, "drop candidates whose final centre lies outside the lung mask")
    characterise_top: int = _opt(0, "segment, measure and type the top this many candidates (type, size, "
                                    "Lung-RADS v2022 proposal; experimental, see the README); 0: none")

    def __post_init__(self) -> None:
        if self.stages not in STAGES:
            raise ConfigError(f"stages must be one of {STAGES}, got {self.stages!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.clustering not in CLUSTERINGS:
            raise ConfigError(f"clustering must be one of {CLUSTERINGS}, got {self.clustering!r}")
        if not 0.0 < self.component_min_prob < 1.0:
            raise ConfigError(f"component_min_prob must be in (0, 1), got {self.component_min_prob}")
        if self.characterise_top < 0:
            raise ConfigError(f"characterise_top must be >= 0, got {self.characterise_top}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {self.threshold}")
        for name in ("nms_radius_mm", "merge_radius_mm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("tile_out", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    def replace(self, **changes) -> DetectorConfig:
        """A copy with ``changes``; an unknown setting is a ConfigError naming it."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"unknown detector setting(s) {unknown}; known: {[f.name for f in fields(self)]}")
        return replace(self, **changes)
