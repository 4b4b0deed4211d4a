"""`Detector(model).detect(path) -> Detections`: the engine's main job.

load -> lung mask -> crop + 1 mm resample -> stage 1 -> stage 2 -> top K in world coordinates,
each stage timed. The detector only orchestrates; each part is a function or a small object of its
own that benchmarks, model selection and calibration call too:

- `engine.preprocess`: lung mask, crop, 1 mm resampling;
- `engine.scoring`: the network's grid and its logits, in dense or patch mode, over a backend
  callable (`GridScorer`);
- `engine.postprocess`: `sigmoid`, clustering of the scored grid (`cluster_points`);
- `engine.stage1`: a two-stage package's candidates for recall (`stage1_candidates`);
- `engine.stage2`: their context patches scored, calibrated and ranked (`Stage2Scorer`,
  `rank_candidates`).

Two inference modes over the same weights:
- ``dense`` (default): the fully convolutional graph scores whole tiles of the lung box
  on the network's output grid (stride 4 mm); only tiles holding candidates run.
- ``patch``: cubic patches (the contract's size, 41^3) at the candidate centres, gathered in a
  background thread while the backend runs the previous batch.
At the same centres the two give the same scores (a test holds them to 1e-4).
"""
from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import asdict, replace

import numpy as np

from . import __version__
from .backends import open_backend
from .characterise import characterise_scan
from .config import DetectorConfig
from .errors import ConfigError
from .io import load_volume
from .io.prefetch import prefetched
from .jitclock import compile_clock
from .package import ModelPackage, default_package_path, sha256_file
from .postprocess import cluster_scored
from .preprocess import preprocess
from .results import Candidate, Detections
from .scoring import GridScorer
from .stage1 import stage1_candidates
from .stage2 import Ranked, Stage2Scorer, rank_candidates
from .volume import Volume

log = logging.getLogger(__name__)


def _peak_rss_mb() -> float:
    """The process's peak resident memory so far, MB (a high-water mark: after each stage it
    says how far that stage, or an earlier one, drove it)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class Detector:
    """Nodule candidates for CT series with one model package and one backend.

    >>> Detector().detect("path/to/dicom/series")           # doctest: +SKIP
    """

    def __init__(self, model=None, backend: str = "auto", config: DetectorConfig | None = None, *,
                 backend_options: dict | None = None, **settings):
        """``model``: a model package folder or `ModelPackage` (default: the shipped model).
        ``backend``: "auto" or a name from `noduleflow.engine.backends.backend_names()`.
        ``config`` and/or keyword ``settings`` (fields of `DetectorConfig`, e.g. ``top_k=25``;
        settings override the config's fields). ``backend_options``: passed to the backends as they
        open (e.g. ``threads``, ``streams``, ``precision``); a ``precision`` ("int8": the package's
        ``stage2_int8.onnx``) is the scoring network's, stage 2's in a two-stage detection."""
        t0 = time.perf_counter()
        self.package = model if isinstance(model, ModelPackage) else \
            ModelPackage.load(model or default_package_path())
        m = self.package.manifest
        self.config = (config or DetectorConfig()).replace(**settings)
        if self.config.mode == "dense" and not self.package.has_dense:
            raise ConfigError(f"model {m.model_id} ({m.architecture}) has no dense graph: use mode='patch'")
        self.contract = m.contract
        self.spec = m.contract.preprocess
        if self.config.stages == "2" and not self.package.has_stage2:
            raise ConfigError(f"model {m.model_id} has no stage-2 graph: use stages='1' or 'auto'")
        self.two_stage = self.package.has_stage2 and self.config.stages != "1"
        opts = dict(backend_options or {})
        # a precision is the scoring network's: stage 2's in a two-stage detection (its stage-1 CNN,
        # when it has one, runs fp32), else the mode graph's
        mode_opts = {k: v for k, v in opts.items() if k != "precision"} if self.two_stage else opts
        self._open = lambda graph: open_backend(self.package, backend, graph=graph,
                                                **(opts if graph == "stage2" else mode_opts))
        # the mode's graph (dense or patch) scores the CNN grid; a two-stage package whose stage 1
        # is the blob filter alone never runs it: opened then on first use only (`backend`)
        self._backend = None
        self._scorer = None
        if not self.two_stage or self.contract.stage1.uses_cnn:
            self._backend = self._open(self.config.mode)
        self.stage2_backend = self._open("stage2") if self.two_stage else None
        self._stage2_scorer = None
        self.version = __version__
        self.package_sha256 = sha256_file(self.package.path / "manifest.json")
        # a stage-2 backend on the GPU: the scan is preprocessed there too (`engine.preprocess_cuda`)
        self.preprocess_on_device = bool(self.stage2_backend is not None and self.stage2_backend.accepts_device_arrays)
        self.cold_start_s = time.perf_counter() - t0

    @property
    def backend(self):
        """The backend of the mode's graph (dense or patch), opened on first use when the
        package's stage 1 does not need it."""
        if self._backend is None:
            self._backend = self._open(self.config.mode)
        return self._backend

    @backend.setter
    def backend(self, value) -> None:
        self._backend = value
        self._scorer = None

    @property
    def scorer(self) -> GridScorer:
        """The dense CNN's `engine.scoring.GridScorer` in this detector's mode, through `backend`."""
        if self._scorer is None:
            be = self.backend
            self._scorer = GridScorer(be.infer, self.contract, self.config.mode, self.config.tile_out,
                                      min(self.config.batch_size, be.max_batch))
        return self._scorer

    @property
    def stage2_scorer(self) -> Stage2Scorer | None:
        """Stage 2's `engine.stage2.Stage2Scorer` through `stage2_backend` (None for one stage)."""
        if self.stage2_backend is None:
            return None
        if self._stage2_scorer is None or self._stage2_scorer.backend is not self.stage2_backend:
            self._stage2_scorer = Stage2Scorer(self.stage2_backend, self.contract, self.config.batch_size)
        return self._stage2_scorer

    @property
    def backend_name(self) -> str:
        """The backend that scores the detections: stage 2's for a two-stage detection."""
        return (self.stage2_backend if self.two_stage else self.backend).name

    @property
    def scores_on_gpu(self) -> bool:
        """Whether the scoring backend runs on a GPU (the CPU then has room to load the next scan
        while this one is detected: `loading`'s default)."""
        return getattr(self.stage2_backend if self.two_stage else self.backend, "device", "cpu") == "cuda"

    def loading(self, jobs, load, prefetch: bool | None = None):
        """`engine.io.prefetch.prefetched` of ``jobs`` with ``load``: with ``prefetch``, the next
        job loaded in a background thread while the caller detects the current one; default
        (None): when the scoring runs on a GPU (`scores_on_gpu`). On the CPU the detection keeps
        every core busy, so a second loader only competes for them."""
        return prefetched(jobs, load, ahead=self.scores_on_gpu if prefetch is None else bool(prefetch))

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        if self.stage2_backend is not None:
            self.stage2_backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- stages -------------------------------------------------------------------
    def stage1(self, pre, timings: dict | None = None):
        """Stage 1 of a two-stage package on a preprocessed scan -> `engine.stage1.Stage1Candidates`
        (ranked, as the contract's `Stage1Spec` declares them), each step timed into ``timings``."""
        spec = self.contract.stage1
        return stage1_candidates(pre, spec, self.scorer if spec.uses_cnn else None, self.config, timings)

    def find(self, pre, timings: dict | None = None, rss: dict | None = None) -> tuple[Ranked, int]:
        """The pipeline after preprocessing: the ranked candidates of a preprocessed scan ->
        (`engine.stage2.Ranked` on ``pre``'s 1 mm grid, number of points or candidates scored).
        Two-stage packages: stage 1 (`stage1`) then stage 2, the calibrated stage-2 probability
        ranking; else the dense CNN's grid, scores and clusters. Each step is timed into
        ``timings`` and the peak RSS after it recorded in ``rss``."""
        timings = {} if timings is None else timings
        rss = {} if rss is None else rss
        cfg = self.config
        if self.two_stage:
            st2 = self.contract.stage2
            cand = self.stage1(pre, timings)
            rss["stage1"] = _peak_rss_mb()
            t = time.perf_counter()
            probs = st2.calibrate(self.stage2_scorer(pre, cand.centres_zyx))
            timings["stage2"] = time.perf_counter() - t
            rss["stage2"] = _peak_rss_mb()
            return rank_candidates(cand, probs, st2.dedup_factor, cfg.threshold, cfg.top_k), len(cand)
        grid = self.scorer.score_grid(pre, timings)
        rss["inference"] = _peak_rss_mb()
        t = time.perf_counter()
        found = cluster_scored(grid, cfg, self.scorer.stride, self.contract.dense_stride or 0, pre.volume.hu,
                               pre.mask)
        timings["clustering"] = time.perf_counter() - t
        rss["clustering"] = _peak_rss_mb()
        return Ranked(found.centres_zyx, found.prob, found.n_points, np.full(len(found), np.nan)), len(grid)

    def provenance(self) -> dict:
        """What produced a result: the package (id, sha256 of its manifest, which hashes every
        file), the engine version, the backend and every detection setting."""
        return {"package_id": self.package.manifest.model_id, "package_sha256": self.package_sha256,
                "package_format_version": self.package.manifest.format_version,
                "engine_version": self.version, "backend": self.backend_name, "settings": asdict(self.config)}

    def detect(self, source, series_uid: str | None = None, keep_preprocessed: bool = False, *,
               prefetch: bool | None = None, load_s: float | None = None):
        """Detect nodule candidates in one scan, or in each of several.

        ``source``: a path (DICOM series folder or file, .mhd/.mha, .nii/.nii.gz), a `Volume`,
        or a list/tuple of them (-> a list of `Detections`, in order; ``prefetch``: whether each
        next scan is loaded in the background meanwhile, see `loading`). ``series_uid`` picks a
        DICOM series among several. Every stage is timed, loading included; ``load_s``: for a
        `Volume` loaded elsewhere (e.g. in the background), the seconds its loading took, reported
        as the load stage. The loaded volume travels with the result (for `Detections.plot`); the
        lung mask and the 1 mm lung box too when ``keep_preprocessed``."""
        if isinstance(source, (list, tuple)):
            def load(s):
                return s if isinstance(s, Volume) else load_volume(s, series_uid=series_uid)

            out = []
            for item in self.loading(source, load, prefetch):
                if item.error is not None:
                    raise item.error
                out.append(self.detect(item.value, keep_preprocessed=keep_preprocessed, load_s=item.seconds))
            return out
        timings, rss = {}, {}
        with compile_clock() as jit:
            t = time.perf_counter()
            vol = source if isinstance(source, Volume) else load_volume(source, series_uid=series_uid)
            timings["load"] = time.perf_counter() - t if load_s is None else float(load_s)
            rss["load"] = _peak_rss_mb()
            if self.preprocess_on_device and vol.hu.dtype == np.int16:
                # numba.cuda: imported only when a GPU backend is in use
                from .preprocess_cuda import preprocess_device

                pre, _ = preprocess_device(vol, self.spec)  # its 1 mm volume stays there for stage 2
            else:
                pre = preprocess(vol, self.spec)
            timings.update(pre.timings_s)
            rss["preprocess"] = _peak_rss_mb()
            found, n_scored = self.find(pre, timings, rss)
        cands = tuple(Candidate(tuple(float(v) for v in pre.volume.voxel_to_world(c)), float(p), int(n),
                                None if np.isnan(d) else float(d))
                      for c, p, n, d in zip(found.centres_zyx, found.prob, found.n_points, found.diameter_mm))
        n_char = min(self.config.characterise_top, len(cands))
        if n_char:   # the top candidates segmented and measured in the scan's own grid
            t = time.perf_counter()
            top = cands[:n_char]
            fs = characterise_scan(vol, pre.volume, pre.mask, [c.center_xyz_mm for c in top],
                                   size_hints_mm=[c.diameter_mm for c in top])
            cands = tuple(replace(c, finding=f) for c, f in zip(top, fs)) + cands[n_char:]
            timings["characterise"] = time.perf_counter() - t
            rss["characterise"] = _peak_rss_mb()
        timings["total"] = sum(timings.values())
        return Detections(
            series_uid=vol.series_uid, candidates=cands, timings_s=timings, backend=self.backend_name,
            mode=self.config.mode, model_id=self.package.manifest.model_id, engine_version=self.version,
            n_scored=int(n_scored),
            meta={"stages": 2 if self.two_stage else 1, "provenance": self.provenance(),
                  "shape_zyx": list(vol.shape), "spacing_zyx_mm": list(vol.spacing_zyx_mm),
                  "lung_box_1mm_zyx": list(pre.volume.shape), "source": vol.meta.get("source", ""),
                  "warnings": list(vol.meta.get("warnings", [])), "peak_rss_mb_after": rss,
                  # numba compiling kernels inside the stage times (a first run after install)
                  "numba_compile_s": round(jit.seconds, 3), "numba_kernels_compiled": jit.kernels,
                  "characterise_top": self.config.characterise_top},
            volume=vol, preprocessed=pre if keep_preprocessed else None,
        )
