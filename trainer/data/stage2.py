"""Stage-2 training data: stage 1's candidates on phantom scans, labelled, as multi-scale patches.

Per scan (a `trainer.data.cohort.CohortScan`):
- stage 1 (`engine.stage1.stage1_candidates`) proposes its ranked candidates;
- a candidate within a nodule's radius is a positive; one farther than radius + 3 mm from every
  nodule and excluded finding is a negative (stage 1's false positives: vessel branch points,
  walls, the hard cases); the ones in between are dropped (neither clearly one nor the other);
- the first ``negatives_per_scan`` negatives in stage 1's order are kept (its most convincing
  false positives), and every nodule also gets ``jittered_per_nodule`` positives at its centre
  moved by up to min(radius / 2, 3 mm), so that a nodule stage 1 missed still teaches stage 2;
- patches from `engine.context.ContextVolume` (1 mm + 2 mm), stored as uint8 (1/255 steps).

``--source DIR`` takes the scans of an evaluation-source folder instead of phantoms (the layout
of `trainer.evaluate.sources`; its ``source.json`` must say ``"role": "training"``): with a
``region`` in ``source.json`` (lesions inserted into one lung of a real scan,
`noduleflow.synthetic.hybrid`), only candidates and nodules in that lung are used; the other lung
is left out (its candidates labelled -1), since it may be an evaluation lung. ``--generator wide``
makes the phantoms with the wide training generator (`noduleflow.synthetic`). ``--full`` uses the
whole stage 1 of the next package (blobs, then the subsolid, pleural and ground-glass passes) and
keeps, besides the first ``negatives_per_scan`` negatives, every negative of the supplementary
passes (they rank after the first pass's, which would otherwise crowd them out).

``--subsolid N`` builds a supplement instead: only the candidates of stage 1's subsolid pass
(`engine.stage1.subsolid_blobs`), labelled the same way, no jittered positives; ``--wall N`` the
same for its pleural pass (`engine.stage1.wall_blobs`, after 200 blobs and 50 subsolid ones).

One ``.npz`` per scan under ``out_dir`` (``patches`` uint8 (n, 2, 41, 41, 41), ``labels`` int8,
``rank`` int32 (stage-1 rank, -1 for a jittered positive), ``seed``), written atomically, skipped
when present: an interrupted build resumes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError
from noduleflow.engine.config import DetectorConfig
from noduleflow.engine.context import ContextVolume
from noduleflow.engine.contract import GGO_METHODS, Stage1Spec
from noduleflow.engine.detector import Detector
from noduleflow.engine.fileio import atomic_path
from noduleflow.engine.io import load_volume
from noduleflow.engine.preprocess import PreprocessSpec, preprocess
from noduleflow.engine.stage1 import stage1_candidates
from noduleflow.trainer.evaluate.sources import read_source

from .cohort import CohortCache, cohort_seeds, kernel_cache
from .labels import label_candidates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage2DataSpec:
    stage1: Stage1Spec = field(default_factory=lambda: Stage1Spec(max_candidates=150))
    negatives_per_scan: int = 100
    jittered_per_nodule: int = 6
    max_jitter_mm: float = 3.0
    margin_mm: float = 3.0
    source: int | None = None       # keep only stage-1 candidates of this source (2: subsolid pass, 3: pleural pass)
    supplement_negatives: bool = False  # also every negative of the passes after the first (source >= 2)


# the whole stage 1 of the package after v14: the blobs, then the subsolid, pleural and ground-glass passes
FULL_STAGE1 = Stage1Spec(generator="blobs", max_candidates=150, blob_min_response=10.0, subsolid_candidates=50,
                         wall_candidates=10, ggo_candidates=25)


def scan_examples(det, scan, spec: Stage2DataSpec, rng: np.random.Generator):
    """-> (patches uint8 (n, 2, 41, 41, 41), labels int8 (n,), rank int32 (n,))."""
    pre = scan.pre
    vol = pre.volume

    def zyxr(xyzd):
        if len(xyzd) == 0:
            return np.zeros((0, 4))
        return np.c_[vol.world_to_voxel(xyzd[:, :3]).reshape(-1, 3), xyzd[:, 3] / 2.0]

    nod, exc = zyxr(scan.xyzd()), zyxr(scan.xyzd(excluded=True))
    # the blob generator needs no network (``det`` may be None); the CNN's peaks are det's, clustered its way
    scorer, config = (det.scorer, det.config) if spec.stage1.uses_cnn else (None, DetectorConfig())
    cand = stage1_candidates(pre, spec.stage1, scorer, config)
    lab = label_candidates(cand.centres_zyx, nod, exc, spec.margin_mm)
    if spec.source is not None:
        lab[cand.source != spec.source] = -1
    inside = getattr(scan, "inside", None)  # a source scan's usable region (world mm -> bool)
    if inside is not None:
        lab[~inside(vol.voxel_to_world(cand.centres_zyx).reshape(-1, 3))] = -1
        nod = nod[inside(scan.xyzd()[:, :3])] if len(nod) else nod
    pos = np.flatnonzero(lab == 1)
    neg = np.flatnonzero(lab == 0)[:spec.negatives_per_scan]
    if spec.supplement_negatives:
        neg = np.union1d(neg, np.flatnonzero((lab == 0) & (cand.source >= 2)))
    centres = [cand.centres_zyx[pos], cand.centres_zyx[neg]]
    labels = [np.ones(len(pos), np.int8), np.zeros(len(neg), np.int8)]
    ranks = [pos.astype(np.int32), neg.astype(np.int32)]
    for z, y, x, r in nod:
        k = spec.jittered_per_nodule
        d = rng.normal(size=(k, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        mag = rng.uniform(0, min(r / 2.0, spec.max_jitter_mm), size=(k, 1))
        centres.append(np.array([z, y, x]) + d * mag)
        labels.append(np.ones(k, np.int8))
        ranks.append(np.full(k, -1, np.int32))
    c = np.concatenate(centres).reshape(-1, 3)
    p = ContextVolume(vol.hu).patches(c)
    return np.rint(p * 255).astype(np.uint8), np.concatenate(labels), np.concatenate(ranks)


@dataclass(frozen=True, eq=False)
class SourceTrainingScan:
    """A scan of an evaluation-source folder as the builder reads a cohort scan: ``pre`` (the
    preprocessed volume), ``xyzd`` (nodules, or excluded findings: (n, 4) world mm) and ``inside``
    (world (n, 3) mm -> bool (n,): the part of the scan that may be trained on)."""

    pre: object
    nodules: np.ndarray
    excluded: np.ndarray
    split_x_mm: float | None = None
    side: str | None = None

    def xyzd(self, excluded: bool = False) -> np.ndarray:
        return (self.excluded if excluded else self.nodules).reshape(-1, 4)

    def inside(self, xyz_mm: np.ndarray) -> np.ndarray:
        x = np.asarray(xyz_mm, np.float64).reshape(-1, 3)[:, 0]
        if self.side is None:
            return np.ones(len(x), bool)
        # LPS: patient left is +x
        return x > self.split_x_mm if self.side == "left" else x < self.split_x_mm


class SourceScans:
    """``get(i)``: scan ``i`` of an evaluation-source folder (role "training"), preprocessed with
    ``spec``; its ``source.json`` region restricts it to one lung (`SourceTrainingScan.inside`)."""

    def __init__(self, folder, spec):
        self.source = read_source(Path(folder).name, folder)
        role = self.source.info.get("role")
        if role != "training":
            raise ConfigError(f"{folder}: source.json role is {role!r}; only a training source may be trained on")
        region = self.source.info.get("generator", {}).get("region") or {}
        self.side = region.get("lung")
        self.split = region.get("split_x_mm")
        if self.side is not None and (self.side not in ("left", "right") or self.split is None):
            raise ConfigError(f"{folder}: source.json region needs lung left|right and split_x_mm, got {region}")
        self.spec = spec

    def __len__(self) -> int:
        return len(self.source.scans)

    def get(self, i: int) -> SourceTrainingScan:
        s = self.source.scans[int(i)]
        vol = load_volume(s.path, series_uid=None if s.path.is_file() else s.uid)
        return SourceTrainingScan(preprocess(vol, self.spec), np.asarray(s.nodules, np.float64),
                                  np.asarray(s.excluded, np.float64), self.split, self.side)


def build(det, cache, seeds, out_dir, spec: Stage2DataSpec = Stage2DataSpec(), progress: bool = True) -> Path:
    """Write one ``<seed>.npz`` per seed into ``out_dir`` (skipping those present)."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for s in tqdm(list(seeds), desc="stage-2 data", unit="scan", disable=not progress):
        path = out / f"{int(s)}.npz"
        if path.exists():
            continue
        p, y, r = scan_examples(det, cache.get(s), spec, np.random.default_rng(int(s) + 104729))
        with atomic_path(path) as tmp:
            np.savez(tmp, patches=p, labels=y, rank=r, seed=np.int64(s))
    return out


def load(out_dir, seeds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (patches uint8 (N, 2, 41, 41, 41), labels int8 (N,), scan seed int64 (N,)) for ``seeds``.
    The patches are read into one array allocated up front (no second copy while concatenating:
    400 training scans are ~9 GB)."""
    return load_many([(out_dir, seeds)])


def load_many(parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`load` over several ``(out_dir, seeds)`` pairs, concatenated in their order."""
    files = [Path(d) / f"{int(s)}.npz" for d, seeds in parts for s in seeds]
    if not files:
        return np.zeros((0, 2, 41, 41, 41), np.uint8), np.zeros(0, np.int8), np.zeros(0, np.int64)
    ys, ss = [], []
    for f in files:
        with np.load(f) as z:
            ys.append(z["labels"])
            ss.append(np.full(len(ys[-1]), int(z["seed"]), np.int64))
    n = sum(len(y) for y in ys)
    patches = np.empty((n, 2, 41, 41, 41), np.uint8)
    i = 0
    for f, y in zip(files, ys):
        with np.load(f) as z:
            patches[i:i + len(y)] = z["patches"]
        i += len(y)
    return patches, np.concatenate(ys), np.concatenate(ss)


def main(argv=None) -> int:
    """``python -m noduleflow.trainer.data.stage2 --seeds train --out DIR [--reverse]``"""
    import argparse

    from noduleflow.synthetic.phantom import RECON_KERNELS



    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.data.stage2", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", default=["train", "validation"])
    ap.add_argument("--model", help="stage-1 model package (default: the shipped one)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reverse", action="store_true", help="last seed first (to meet a cache builder going forward)")
    ap.add_argument("--kernel", default="standard", choices=RECON_KERNELS,
                    help="the phantoms' reconstruction kernel (default standard)")
    ap.add_argument("--subsolid", type=int, default=0, metavar="N",
                    help="instead: only the candidates of stage 1's subsolid pass (at most N per scan after 200 "
                         "blobs), labelled, no jittered positives: data for a stage 2 that sees that pass")
    ap.add_argument("--wall", type=int, default=0, metavar="N",
                    help="instead: only the candidates of stage 1's pleural pass (at most N per scan after 200 blobs "
                         "and 50 subsolid ones), labelled, no jittered positives: data for a stage 2 that sees "
                         "that pass")
    ap.add_argument("--generator", choices=("cnn", "blobs", "union"), default="union",
                    help="stage-1 generator whose candidates become the examples (default union, as v7/v8 were built)")
    ap.add_argument("--max-candidates", type=int, default=150, help="stage-1 cap (default 150)")
    ap.add_argument("--min-response", type=float, default=None,
                    help="blob response threshold (default: engine.contract.Stage1Spec's)")
    ap.add_argument("--source", metavar="DIR",
                    help="instead of phantoms: the scans of this training-source folder (seeds 0..n-1 name them)")
    ap.add_argument("--phantom-generator", default="default", choices=("default", "wide"),
                    help="the phantoms' generator (default: the cohorts'; wide: the training generator)")
    ap.add_argument("--full", action="store_true",
                    help="the next package's whole stage 1 (blobs 150, subsolid 50, pleural 10, ground-glass 25) "
                         "with every supplementary pass's negatives")
    ap.add_argument("--ggo-method", choices=GGO_METHODS, default=FULL_STAGE1.ggo_method,
                    help="with --full: the ground-glass pass's method (default %(default)s, as the shipped package)")
    ap.add_argument("--ggo-candidates", type=int, default=FULL_STAGE1.ggo_candidates, metavar="N",
                    help="with --full: at most N ground-glass candidates per scan (default %(default)s)")
    a = ap.parse_args(argv)
    if a.source:
        a.seeds = a.seeds if a.seeds != ["train", "validation"] else ["0-999999"]
    seeds = [s for name in a.seeds for s in cohort_seeds(name)]
    if a.reverse:
        seeds = seeds[::-1]
    if a.subsolid and a.wall:
        ap.error("--subsolid and --wall build different supplements: one at a time")
    supplement = Stage1Spec(generator="blobs", max_candidates=200, blob_min_response=10.0)
    if a.subsolid:
        spec = Stage2DataSpec(stage1=replace(supplement, subsolid_candidates=a.subsolid), jittered_per_nodule=0,
                              source=2)
    elif a.wall:
        spec = Stage2DataSpec(stage1=replace(supplement, subsolid_candidates=50, wall_candidates=a.wall),
                              jittered_per_nodule=0, source=3)
    elif a.full:
        spec = Stage2DataSpec(stage1=replace(FULL_STAGE1, ggo_method=a.ggo_method, ggo_candidates=a.ggo_candidates),
                              supplement_negatives=True)
    else:
        blob = {} if a.min_response is None else {"blob_min_response": a.min_response}
        spec = Stage2DataSpec(stage1=Stage1Spec(generator=a.generator, max_candidates=a.max_candidates, **blob))
    det = Detector(a.model)
    if a.source:
        scans = SourceScans(a.source, PreprocessSpec())
        seeds = [s for s in seeds if s < len(scans)]
        build(det, scans, seeds, a.out, spec)
    elif a.phantom_generator != "default":
        build(det, CohortCache(phantom_kwargs={"generator": a.phantom_generator}), seeds, a.out, spec)
    else:
        build(det, kernel_cache(a.kernel), seeds, a.out, spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
