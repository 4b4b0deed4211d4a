"""`Detector(model).detect(path) -> Detections`: the engine's main job.

load -> lung mask -> crop + 1 mm resample -> candidate centres -> inference -> clustering
-> top K in world coordinates, each stage timed.

Two inference modes over the same weights:
- ``dense`` (default): the fully convolutional graph scores whole tiles of the lung box
  on the network's output grid (stride 4 mm); only tiles holding candidates run.
- ``patch``: cubic patches (the contract's size, 41^3) at the candidate centres, gathered in a background thread
  while the backend runs the previous batch.
At the same centres the two give the same scores (a test holds them to 1e-4).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from .candidates import CandidateRules, candidates
from .contract import HU_WINDOW
from .config import CLUSTERINGS, MODES, DetectorConfig  # noqa: F401  (public here too)
from .errors import ConfigError
from .package import ModelPackage, default_package_path
from .patches import Normalisation, PatchProducer
from .preprocess import preprocess
from .results import Candidate, Detections
from .volume import Volume

log = logging.getLogger(__name__)

def _peak_rss_mb() -> float:
    """The process's peak resident memory so far, MB (a high-water mark: after each stage it
    says how far that stage, or an earlier one, drove it)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in voxels), zero padding; one shifted sum per tap."""
    h = int(np.ceil(3 * sigma))
    x = np.arange(-h, h + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    for ax in range(3):
        pad = [(0, 0)] * 3
        pad[ax] = (h, h)
        p = np.pad(a, pad)
        n = a.shape[ax]
        out = np.zeros_like(a)
        for i, w in enumerate(k):
            out += w * np.take(p, np.arange(i, i + n), axis=ax)
        a = out
    return a


def refine_centre(hu: np.ndarray, centre_zyx, search: int = 3, sigmas=(1.0, 1.5, 2.0, 3.0), half: int = 16):
    """Sub-grid centre: the strongest blob within ``search`` voxels of ``centre_zyx``.

    A multi-scale blob detector on the 1 mm volume: the scale-normalised negative Laplacian of
    Gaussian (sigma^2 * -LoG of HU clipped to [-1000, 400]) peaks at the centre of a bright ball
    of radius about sigma * sqrt(3); a wall or a vessel gives a weaker response, so a
    juxta-pleural or juxta-vascular nodule's centre is not pulled into its neighbour (which a
    density centroid is). The grid point's score says a nodule is near; this says where.
    Returns (3,) float64 voxel coordinates (zyx)."""
    c = np.round(np.asarray(centre_zyx, dtype=np.float64)).astype(int)
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, hu.shape)
    # half >= search + 3 max(sigma) + 1: the blur's zero padding never reaches the searched voxels
    box = np.clip(hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64), *HU_WINDOW)
    cc = c - lo
    s0 = np.maximum(cc - search, 1)
    s1 = np.minimum(cc + search + 1, np.asarray(box.shape) - 1)
    if (s1 <= s0).any():
        return np.asarray(centre_zyx, dtype=np.float64)
    g = np.meshgrid(*[np.arange(a, b) for a, b in zip(s0, s1)], indexing="ij")
    inside = sum((gi - ci) ** 2 for gi, ci in zip(g, cc)) <= search * search
    best, arg = -np.inf, np.asarray(centre_zyx, dtype=np.float64)
    for sigma in sigmas:
        sm = _smooth(box, sigma)
        core = sm[s0[0]:s1[0], s0[1]:s1[1], s0[2]:s1[2]]
        lap = -6.0 * core
        for ax in range(3):
            lo_s = [slice(a, b) for a, b in zip(s0, s1)]
            hi_s = list(lo_s)
            lo_s[ax] = slice(s0[ax] - 1, s1[ax] - 1)
            hi_s[ax] = slice(s0[ax] + 1, s1[ax] + 1)
            lap = lap + sm[tuple(lo_s)] + sm[tuple(hi_s)]
        resp = np.where(inside, -(sigma ** 2) * lap, -np.inf)
        i = np.unravel_index(int(np.argmax(resp)), resp.shape)
        if resp[i] > best:
            best = resp[i]
            arg = np.array([g[0][i], g[1][i], g[2][i]], dtype=np.float64) + lo
    return arg


def nms(points_zyx: np.ndarray, probs: np.ndarray, top_k: int, nms_radius: float, merge_radius: float,
        logits: np.ndarray | None = None, stride: int = 0):
    """Greedy radius NMS with sub-grid centres.

    Repeatedly takes the most probable remaining point and suppresses everything within
    ``nms_radius``. Its centre: where the grid neighbours at +-``stride`` along an axis
    were scored, the vertex of the parabola through the three logits (sub-grid peak);
    along other axes, the prob^2-weighted mean of the points within ``merge_radius``
    scoring at least half the peak. -> [(centre zyx, prob, n merged)].
    """
    order = np.argsort(-probs, kind="stable")
    pts, pr = points_zyx[order].astype(np.float64), probs[order]
    lg = logits[order] if logits is not None else None
    lookup = {tuple(p): i for i, p in enumerate(points_zyx[order].astype(np.int64))} if stride and lg is not None \
        else {}
    alive = np.ones(len(pr), bool)
    out = []
    for i in range(len(pr)):
        if not alive[i]:
            continue
        d = np.linalg.norm(pts - pts[i], axis=1)
        near = alive & (d <= merge_radius) & (pr >= 0.5 * pr[i])
        w = pr[near] ** 2
        centre = (pts[near] * w[:, None]).sum(0) / w.sum()
        for a in range(3):
            step = np.zeros(3, np.int64)
            step[a] = stride
            key = pts[i].astype(np.int64)
            im, ip = lookup.get(tuple(key - step)), lookup.get(tuple(key + step))
            if im is None or ip is None:
                continue
            lm, l0, lp = lg[im], lg[i], lg[ip]
            curv = lm - 2.0 * l0 + lp
            if curv < 0:
                centre[a] = pts[i, a] + float(np.clip(0.5 * (lm - lp) / curv, -0.5, 0.5)) * stride
        out.append((centre, float(pr[i]), int(near.sum())))
        alive &= d > nms_radius
        if len(out) >= top_k:
            break
    return out


def components(points_zyx: np.ndarray, probs: np.ndarray, top_k: int, stride: int, min_prob: float = 0.5):
    """Connected components of the scored points with ``probs >= min_prob``, 6-connected on
    their grid (points lie on one lattice of step ``stride``). Each component becomes one
    candidate: its centre the prob^2-weighted mean of its points, its probability the
    maximum. Ranked by probability, the first ``top_k`` -> [(centre zyx, prob, n points)]."""
    from .ccl import label

    sel = probs >= min_prob
    if not sel.any():
        return []
    pts, pr = points_zyx[sel].astype(np.int64), probs[sel]
    g = (pts - pts.min(0)) // max(int(stride), 1)
    grid = np.zeros(tuple(g.max(0) + 1), bool)
    grid[g[:, 0], g[:, 1], g[:, 2]] = True
    lab, n = label(grid)
    ids = lab[g[:, 0], g[:, 1], g[:, 2]] - 1
    w = pr ** 2
    wsum = np.bincount(ids, w, minlength=n)
    centre = np.stack([np.bincount(ids, w * pts[:, a], minlength=n) for a in range(3)], 1) / wsum[:, None]
    best = np.full(n, -np.inf)
    np.maximum.at(best, ids, pr)
    size = np.bincount(ids, minlength=n)
    order = np.argsort(-best, kind="stable")[:top_k]
    return [(centre[i], float(best[i]), int(size[i])) for i in order]


def lesion_order(centres_zyx: np.ndarray, radius_mm: np.ndarray, score: np.ndarray, factor: float) -> np.ndarray:
    """Indices of candidates, best score first, one per lesion: a candidate within ``factor`` x the
    larger extent radius of itself and a better one (1 mm grid: voxels are mm) is dropped
    (``factor`` 0: nothing dropped)."""
    order = np.argsort(-np.asarray(score), kind="stable")
    if not factor or len(order) < 2:
        return order
    c = np.asarray(centres_zyx, np.float64).reshape(-1, 3)
    r = np.asarray(radius_mm, np.float64)
    kept: list[int] = []
    for i in order:
        if kept:
            d = np.linalg.norm(c[kept] - c[i], axis=1)
            if (d < factor * np.maximum(r[kept], r[i])).any():
                continue
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)



def dense_tiles(contract, centres_zyx, volume_shape, tile_out: int):
    """The dense graph's runs for grid centres ``centres_zyx`` (n, 3) on a lung box of
    ``volume_shape``: for each tile of ``tile_out`` output points per axis that holds centres, in
    order, (indices of its centres, output box o0..o1, input box a0..a1). A tile runs only over
    the bounding box of the output points its centres need, not the whole tile (the lung's edge
    leaves most tiles partly empty; the scores are the same)."""
    s, off, p = contract.dense_stride, contract.dense_offset, contract.patch_size
    n_out = np.asarray(contract.dense_output_shape(np.asarray(volume_shape)))
    idx = (np.asarray(centres_zyx) - off) // s
    if len(idx) and ((idx < 0).any() or (idx >= n_out).any()):
        raise ConfigError(f"centres outside the dense output grid {n_out.tolist()} (see Detector.grid_centres)")
    t = tile_out
    tile_id = idx // t
    for key in np.unique(tile_id, axis=0):
        sel = np.flatnonzero((tile_id == key).all(1))
        o0 = np.maximum(key * t, idx[sel].min(0))
        o1 = np.minimum(np.minimum(key * t + t, n_out), idx[sel].max(0) + 1)
        yield sel, o0, o1, o0 * s, (o1 - 1) * s + p

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
        from . import __version__
        from .backends import open_backend

        t0 = time.perf_counter()
        self.package = model if isinstance(model, ModelPackage) else \
            ModelPackage.load(model or default_package_path())
        m = self.package.manifest
        self.config = (config or DetectorConfig()).replace(**settings)
        if self.config.mode == "dense" and not self.package.has_dense:
            raise ConfigError(f"model {m.model_id} ({m.architecture}) has no dense graph: use mode='patch'")
        self.contract = m.contract
        self.spec = m.contract.preprocess
        self.norm = Normalisation(*m.contract.hu_window, pad_hu=m.contract.pad_hu)
        if self.config.stages == "2" and not self.package.has_stage2:
            raise ConfigError(f"model {m.model_id} has no stage-2 graph: use stages='1' or 'auto'")
        self.two_stage = self.package.has_stage2 and self.config.stages != "1"
        opts = dict(backend_options or {})
        # a precision is the scoring network's: stage 2's in a two-stage detection (its stage-1 CNN,
        # when it has one, runs fp32), else the mode graph's
        mode_opts = {k: v for k, v in opts.items() if k != "precision"} if self.two_stage else opts
        self._open = lambda graph: open_backend(self.package, backend, graph=graph,
                                                **(opts if graph == "stage2" else mode_opts))
        # the mode's graph (dense or patch) scores stage 1's CNN grid; a two-stage package whose stage 1
        # is the blob filter alone never runs it: opened then on first use only (`backend`)
        self._backend = None
        if not self.two_stage or m.contract.stage2.generator != "blobs":
            self._backend = self._open(self.config.mode)
        self.stage2_backend = self._open("stage2") if self.two_stage else None
        self.version = __version__
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
        every core busy: 1.0x measured on 2 cores (bench/results/prefetch)."""
        from .io.prefetch import prefetched

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
    def score(self, pre, centres) -> np.ndarray:
        """Logits (n,) at ``centres`` (n, 3) on ``pre``'s 1 mm grid, in this detector's mode."""
        if not len(centres):
            return np.zeros(0)
        return self._score_dense(pre, centres) if self.config.mode == "dense" else self._score_patch(pre, centres)

    def grid_centres(self, pre) -> np.ndarray:
        """Candidate centres on the network's output grid (dense and patch alike)."""
        k = self.contract
        rules = k.candidate_rules  # the model's own: the grid points it was trained to score
        stride = k.dense_stride or rules.stride
        offset = k.dense_offset if k.dense_offset is not None else k.half
        rules = CandidateRules(stride=stride, offset=offset % stride, center_min_hu=rules.center_min_hu,
                               box_min_hu=rules.box_min_hu, box=rules.box, reach=rules.reach)
        c = candidates(pre.volume.hu, pre.mask, rules)
        if k.dense_stride:  # keep the points that are output-grid points of a complete patch
            n_out = np.asarray(k.dense_output_shape(pre.volume.shape))
            idx = (c - offset) // stride
            ok = ((c - offset) >= 0).all(1) & (idx < n_out).all(1)
            c = c[ok]
        return c

    def _score_patch(self, pre, centres) -> np.ndarray:
        from tqdm import tqdm

        out = np.empty(len(centres), np.float64)
        k = 0
        loc_all = self.contract.location(centres, pre.volume.shape) if self.contract.uses_location else None
        bs = min(self.config.batch_size, self.backend.max_batch)
        producer = PatchProducer(pre.volume.hu, centres, bs, self.norm, size=self.contract.patch_size)
        # patch mode can take minutes on a large scan: progress on a terminal (tqdm: not when piped)
        for c, batch in tqdm(producer, desc="patches", unit="batch", disable=None if len(producer) > 20 else True,
                             leave=False):
            extra = loc_all[k:k + len(c)] if loc_all is not None else None
            out[k:k + len(c)] = self.backend.infer(batch, extra)
            k += len(c)
        return out

    def _score_dense(self, pre, centres) -> np.ndarray:
        k = self.contract
        s, off = k.dense_stride, k.dense_offset
        hu = pre.volume.hu
        shape = np.asarray(hu.shape)
        idx = (centres - off) // s
        scores = np.full(len(centres), np.nan)
        for sel, o0, o1, a0, a1 in dense_tiles(k, centres, shape, self.config.tile_out):
            tile = k.normalise(hu[a0[0]:a1[0], a0[1]:a1[1], a0[2]:a1[2]])[None, None]
            extra = None
            if k.uses_location:
                g = np.stack(np.meshgrid(*[np.arange(a, b) * s + off for a, b in zip(o0, o1)], indexing="ij"))
                extra = k.location(g.reshape(3, -1).T, shape).T.reshape(g.shape)[None]
            logits = self.backend.infer(tile, extra)[0]
            local = idx[sel] - o0
            scores[sel] = logits[local[:, 0], local[:, 1], local[:, 2]]
        return scores

    def score_stage2(self, pre, centres_zyx) -> np.ndarray:
        """Stage-2 logits (n,) of candidates at ``centres_zyx`` (n, 3) on ``pre``'s 1 mm grid: each
        candidate's multi-scale context patches, the mean logit over the contract's number of axis
        flips (`engine.context.flips8`, identity first; with ``tta_top``, the flips after the first
        only for the best ``tta_top`` candidates by the first view). The batches stream through the
        backend's `infer_many` (several at once on the CPU)."""
        st2 = self.contract.stage2
        c = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
        if not len(c):
            return np.zeros(0, np.float64)
        ctx = self._context_volume(pre)
        flips = max(1, st2.tta_flips)
        top = st2.tta_top if 0 < st2.tta_top < len(c) else len(c)
        if top == len(c):  # every flip for every candidate
            return self._stage2_sums(ctx, c, np.arange(len(c)), 0, flips) / flips
        # the first view for all, the other flips for the best ``top`` by it
        out = self._stage2_sums(ctx, c, np.arange(len(c)), 0, 1)
        if flips > 1:
            best = np.argsort(-out, kind="stable")[:top]
            out[best] = (out[best] + self._stage2_sums(ctx, c, best, 1, flips)[best]) / flips
        return out

    def _context_volume(self, pre):
        """Stage 2's context patches of a preprocessed scan: on the GPU (`engine.patches_cuda.
        DeviceContextVolume`: the volumes uploaded once, each batch gathered into device memory the
        backend reads without a copy) when the stage-2 backend takes device arrays, else on the host
        (`engine.context.ContextVolume`). Both give the same patches (tested under numba's CUDA
        simulator)."""
        st2 = self.contract.stage2
        if self.stage2_backend.accepts_device_arrays:
            from .patches_cuda import DeviceContextVolume

            return DeviceContextVolume(pre.volume.hu, self.norm, self.contract.patch_size, st2.channels,
                                       d_hu_1mm=pre.device_hu)
        from .context import ContextVolume

        return ContextVolume(pre.volume.hu, self.norm, self.contract.patch_size, st2.channels)

    def _stage2_sums(self, ctx, c, which, first: int, last: int) -> np.ndarray:
        """Per candidate in ``which``, the sum of stage 2's logits over flips ``first``..``last`` - 1
        (zero elsewhere; ``ctx``: `_context_volume`). Chunks small enough that every stream of the
        backend gets at least two batches, at most the configured batch size."""
        bs = min(self.config.batch_size, self.stage2_backend.max_batch,
                 max(8, -(-len(which) // (2 * self.stage2_backend.streams))))
        chunks = [which[i:i + bs] for i in range(0, len(which), bs)]

        def batches():
            for ch in chunks:
                yield from ctx.views(c[ch], first, last)

        sums = np.zeros(len(c), np.float64)
        logits = self.stage2_backend.infer_many(batches())
        for ch in chunks:
            for _ in range(first, last):
                sums[ch] += next(logits)
        return sums

    def stage1(self, pre, timings: dict | None = None):
        """Stage 1 of a two-stage package on a preprocessed scan -> `engine.stage1.Stage1Candidates`
        (ranked; at most the contract's ``stage2.max_candidates`` + ``subsolid_candidates``), each step timed into
        ``timings``: the dense CNN's grid points, their scores, their clustered peaks, the blobs."""
        from .stage1 import Stage1Params, stage1_candidates

        return stage1_candidates(self, pre, Stage1Params.from_stage2(self.contract.stage2), timings)

    def score_grid(self, pre, timings: dict) -> tuple[np.ndarray, np.ndarray]:
        """The CNN's grid points of a preprocessed scan and their logits, timed into ``timings``
        ("candidates", "inference")."""
        t = time.perf_counter()
        centres = self.grid_centres(pre)
        timings["candidates"] = time.perf_counter() - t
        t = time.perf_counter()
        logits = np.asarray(self.score(pre, centres))
        timings["inference"] = time.perf_counter() - t
        return centres, logits

    def find(self, pre, timings: dict | None = None, rss: dict | None = None):
        """The pipeline after preprocessing: ranked candidates of a preprocessed scan ->
        (found [(centre zyx on ``pre``'s grid, probability, grid points merged, diameter mm or
        None)], number scored). Two-stage packages: stage 1 (`stage1`) then stage 2, the
        calibrated stage-2 probability ranking; else the dense CNN's grid, scores and clusters.
        Each step is timed into ``timings`` and the peak RSS after it recorded in ``rss``."""
        timings = {} if timings is None else timings
        rss = {} if rss is None else rss
        cfg = self.config
        if self.two_stage:
            st2 = self.contract.stage2
            cand = self.stage1(pre, timings)
            rss["stage1"] = _peak_rss_mb()
            t = time.perf_counter()
            probs = st2.calibrate(self.score_stage2(pre, cand.centres_zyx))
            timings["stage2"] = time.perf_counter() - t
            rss["stage2"] = _peak_rss_mb()
            order = [i for i in lesion_order(cand.centres_zyx, cand.radius_mm, probs, st2.dedup_factor)
                     if probs[i] >= cfg.threshold]
            return [(cand.centres_zyx[i], float(probs[i]), 1, 2.0 * float(cand.radius_mm[i]))
                    for i in order[:cfg.top_k]], len(cand)
        centres, logits = self.score_grid(pre, timings)
        rss["inference"] = _peak_rss_mb()
        t = time.perf_counter()
        probs = _sigmoid(logits)
        keep = probs >= cfg.threshold
        found = [(c, p, n, None) for c, p, n in self.cluster(pre, centres[keep], probs[keep], logits[keep])]
        timings["clustering"] = time.perf_counter() - t
        rss["clustering"] = _peak_rss_mb()
        return found, int(len(centres))

    def detect(self, source, series_uid: str | None = None, keep_preprocessed: bool = False, *,
               prefetch: bool | None = None, load_s: float | None = None):
        """Detect nodule candidates in one scan, or in each of several.

        ``source``: a path (DICOM series folder or file, .mhd/.mha, .nii/.nii.gz), a `Volume`,
        or a list/tuple of them (-> a list of `Detections`, in order; ``prefetch``: whether each
        next scan is loaded in the background meanwhile, see `loading`). ``series_uid`` picks a
        DICOM series among several. Every stage
        is timed, loading included; ``load_s``: for a `Volume` loaded elsewhere (e.g. in the
        background), the seconds its loading took, reported as the load stage. The loaded
        volume travels with the result (for `Detections.plot`); the lung mask and the 1 mm lung
        box too when ``keep_preprocessed``."""
        from .io import load_volume

        if isinstance(source, (list, tuple)):
            def load(s):
                return s if isinstance(s, Volume) else load_volume(s, series_uid=series_uid)

            out = []
            for item in self.loading(source, load, prefetch):
                if item.error is not None:
                    raise item.error
                out.append(self.detect(item.value, keep_preprocessed=keep_preprocessed, load_s=item.seconds))
            return out
        from .jitclock import compile_clock

        timings, rss = {}, {}
        with compile_clock() as jit:
            t = time.perf_counter()
            vol = source if isinstance(source, Volume) else load_volume(source, series_uid=series_uid)
            timings["load"] = time.perf_counter() - t if load_s is None else float(load_s)
            rss["load"] = _peak_rss_mb()
            if self.preprocess_on_device and vol.hu.dtype == np.int16:
                from .preprocess_cuda import preprocess_device

                pre, _ = preprocess_device(vol, self.spec)  # its 1 mm volume stays there for stage 2
            else:
                pre = preprocess(vol, self.spec)
            timings.update(pre.timings_s)
            rss["preprocess"] = _peak_rss_mb()
            found, n_scored = self.find(pre, timings, rss)
        cands = tuple(Candidate(tuple(float(v) for v in pre.volume.voxel_to_world(c)), p, n, d)
                      for c, p, n, d in found)
        timings["total"] = sum(timings.values())
        return Detections(
            series_uid=vol.series_uid, candidates=cands, timings_s=timings, backend=self.backend_name,
            mode=self.config.mode, model_id=self.package.manifest.model_id, engine_version=self.version,
            n_scored=int(n_scored),
            meta={"stages": 2 if self.two_stage else 1,
                  "shape_zyx": list(vol.shape), "spacing_zyx_mm": list(vol.spacing_zyx_mm),
                  "lung_box_1mm_zyx": list(pre.volume.shape), "source": vol.meta.get("source", ""),
                  "warnings": list(vol.meta.get("warnings", [])), "peak_rss_mb_after": rss,
                  # numba compiling kernels inside the stage times (a first run after install)
                  "numba_compile_s": round(jit.seconds, 3), "numba_kernels_compiled": jit.kernels},
            volume=vol, preprocessed=pre if keep_preprocessed else None,
        )

    def cluster(self, pre, centres, probs, logits, config: DetectorConfig | None = None) -> list:
        """Scored grid points -> the top-K candidates [(centre zyx on ``pre``'s grid, prob, n)]:
        clustering, blob refinement of the centres, lung-mask check, ranking."""
        cfg = config or self.config
        # cluster more than K: the mask check may drop some
        k = cfg.top_k * 3 if cfg.in_mask else cfg.top_k
        stride = self.contract.dense_stride or self.contract.candidate_rules.stride
        if cfg.clustering == "components":
            found = components(centres, probs, k, stride, cfg.component_min_prob)
            if len(found) < k:  # fill the list from the points below the threshold, away from the components
                low = probs < cfg.component_min_prob
                rest = nms(centres[low], probs[low], k, cfg.nms_radius_mm, cfg.merge_radius_mm,
                           logits=logits[low], stride=self.contract.dense_stride or 0)
                taken = np.array([f[0] for f in found]).reshape(-1, 3)
                rest = [r for r in rest if not len(taken) or
                        np.linalg.norm(taken - r[0], axis=1).min() > cfg.nms_radius_mm]
                found = found + rest[:k - len(found)]
        else:
            found = nms(centres, probs, k, cfg.nms_radius_mm, cfg.merge_radius_mm, logits=logits,
                        stride=self.contract.dense_stride or 0)
        if cfg.refine:
            found = [(refine_centre(pre.volume.hu, c), p, n) for c, p, n in found]
        if cfg.in_mask:
            hi = np.asarray(pre.mask.shape) - 1
            found = [f for f in found if pre.mask[tuple(np.clip(np.round(f[0]).astype(int), 0, hi))]]
        return found[:cfg.top_k]

    def scores_at(self, source, centres_zyx_1mm=None):
        """Raw logits at the grid centres (for tests and benchmarks): (centres, logits)."""
        from .io import load_volume

        vol = source if isinstance(source, Volume) else load_volume(source)
        pre = preprocess(vol, self.spec)
        c = self.grid_centres(pre) if centres_zyx_1mm is None else np.asarray(centres_zyx_1mm)
        return c, self.score(pre, c)
