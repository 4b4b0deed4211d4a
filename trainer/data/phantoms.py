"""Phantom cohorts as training data: generated in memory by seed, or read from a `synth` folder,
as `PatchSet`s (defined in `trainer.data.patchset`, importable from here too)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from noduleflow.engine.detector import Detector
from noduleflow.engine.io import load_volume
from noduleflow.engine.patches import gather
from noduleflow.engine.postprocess import sigmoid
from noduleflow.engine.preprocess import PreprocessSpec, preprocess
from noduleflow.synthetic.phantom import generate_phantom

from .annotations import as_xyzd, read_annotations
from .patchset import PatchSet
from .sampling import SamplingSpec, sample_scan

log = logging.getLogger(__name__)


def phantom_patches(seeds, spec: PreprocessSpec = PreprocessSpec(), sampling: SamplingSpec = SamplingSpec(),
                    phantom_params=None, progress: bool = True) -> PatchSet:
    """Generate phantoms for ``seeds``, preprocess them with the engine, sample patches."""
    parts = []
    for i, seed in enumerate(tqdm(list(seeds), desc="phantoms", unit="scan", disable=not progress)):
        ph = generate_phantom(int(seed), params=phantom_params)
        pre = preprocess(ph.volume, spec)
        rng = np.random.default_rng(int(seed) + 7919)
        p, y, loc, _ = sample_scan(pre, as_xyzd(ph.nodules), as_xyzd(ph.excluded), sampling, rng)
        parts.append(PatchSet(p, y, loc, np.full(len(y), i, np.int32)))
    return PatchSet.concat(parts)


def folder_patches(folder, spec: PreprocessSpec = PreprocessSpec(), sampling: SamplingSpec = SamplingSpec(),
                   progress: bool = True, seed: int = 0) -> PatchSet:
    """A cohort folder as `noduleflow synth` writes it (or any folder of scans with a LUNA16-style
    annotations.csv): every DICOM series folder / .mhd under it."""
    folder = Path(folder)
    ann = read_annotations(folder / "annotations.csv")
    exc = read_annotations(folder / "annotations_excluded.csv")
    scans = sorted([p for p in folder.rglob("*.mhd")] +
                   [p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.dcm"))])
    parts = []
    for i, path in enumerate(tqdm(scans, desc="scans", unit="scan", disable=not progress)):
        vol = load_volume(path)
        pre = preprocess(vol, spec)
        rng = np.random.default_rng(seed + i)
        p, y, loc, _ = sample_scan(pre, ann.get(vol.series_uid, np.zeros((0, 4))),
                                   exc.get(vol.series_uid, np.zeros((0, 4))), sampling, rng)
        parts.append(PatchSet(p, y, loc, np.full(len(y), i, np.int32)))
    return PatchSet.concat(parts)


def phantom_hard_negatives(seeds, package, per_scan: int = 150, min_prob: float = 0.2,
                           spec: PreprocessSpec = PreprocessSpec(), progress: bool = True,
                           shape_zyx=None, spacing_zyx_mm=None) -> PatchSet:
    """Hard negatives mined with a previous model (seed 000's option): every output-grid point
    of each phantom is scored by ``package`` in dense mode; the ``per_scan`` most probable points
    farther than radius + 3 mm from every nodule and excluded finding (and above ``min_prob``)
    become negative patches. ``shape_zyx``/``spacing_zyx_mm``: phantom grid (default: drawn
    from the seed, as in training)."""
    det = Detector(package, mode="dense")
    parts = []
    for i, seed in enumerate(tqdm(list(seeds), desc="mining", unit="scan", disable=not progress)):
        ph = generate_phantom(int(seed), shape_zyx=shape_zyx, spacing_zyx_mm=spacing_zyx_mm)
        pre = preprocess(ph.volume, spec)
        centres = det.scorer.centres(pre)
        logits = det.scorer(pre.volume.hu, centres)
        vol = pre.volume
        find = np.concatenate([as_xyzd(ph.nodules), as_xyzd(ph.excluded)])
        if len(find):
            zyx = vol.world_to_voxel(find[:, :3])
            d = np.linalg.norm(centres[:, None, :] - zyx[None], axis=-1)
            far = (d > find[None, :, 3] / 2 + 3.0).all(1)
        else:
            far = np.ones(len(centres), bool)
        prob = sigmoid(logits)
        cand = np.flatnonzero(far & (prob >= min_prob))
        pick = cand[np.argsort(-prob[cand])[:per_scan]]
        c = centres[pick]
        p = np.rint(gather(vol.hu, c) * 255).astype(np.uint8)
        loc = (c / np.maximum(np.asarray(vol.shape) - 1, 1)).astype(np.float32)
        parts.append(PatchSet(p, np.zeros(len(c), np.int8), loc, np.full(len(c), 10_000 + i, np.int32)))
    return PatchSet.concat(parts)
