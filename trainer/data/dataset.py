"""Torch-free patch stream: (patch float32 (1, 41, 41, 41) in [0, 1], label int, location float32 (3,)).

Built on the scan cache (engine preprocessing, 1 mm, candidates), the centre selection of
`trainer.data.sampling` and the augmentation of `trainer.data.augment`. Training streams are
balanced (half positives, half negatives per ``batch_size`` items) with augmented positives;
evaluation streams give every item once, unaugmented, cut by the engine's own `gather`.
``location`` is the patch centre's relative position in the preprocessed (lung-box) volume,
each in [0, 1] (the 3D-LOC input). The torch wrapper lives in `trainer.data.torch_dataset`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from noduleflow.engine import ConfigError
from noduleflow.engine.contract import PATCH_SIZE
from noduleflow.engine.patches import Normalisation, gather

from .annotations import as_xyzd
from .augment import AugmentSpec, augmented_patch
from .cache import CachedScan, ScanCache
from .patchset import PatchSet
from .sampling import balanced_batches, findings_to_voxels, negative_centres, positive_centres
from .sources import ScanSource, sources_from_folder, sources_from_records, with_hard_negatives

# The sources moved to `trainer.data.sources`; they stay importable from here.
__all__ = ["PatchIndex", "PatchStream", "ScanSource", "StreamSpec", "sources_from_folder", "sources_from_records",
           "to_patchset", "with_hard_negatives"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    negatives_per_scan: int | None = 200
    margin_mm: float = 3.0
    batch_size: int = 32
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    norm: Normalisation = field(default_factory=Normalisation)

    def __post_init__(self) -> None:
        if self.batch_size < 2 or self.batch_size % 2:
            raise ConfigError(f"batch_size must be even and >= 2, got {self.batch_size}")


@dataclass(frozen=True, eq=False)
class PatchIndex:
    """Every sample of a stream: scan index (n,) int32, centre (n, 3) int64 voxel on the
    preprocessed grid, label (n,) int8 (1 nodule, 0 candidate negative, 0 hard negative)."""

    scan: np.ndarray
    centre_zyx: np.ndarray
    label: np.ndarray
    hard: np.ndarray


def _hard_to_voxels(scan: CachedScan, xyz) -> np.ndarray:
    if not len(xyz):
        return np.zeros((0, 3))
    return np.asarray(scan.volume.world_to_voxel(np.asarray(xyz, dtype=np.float64))).reshape(-1, 3)


class PatchStream:
    """Iterable of (patch, label, location). ``training``: balanced and augmented, reshuffled
    per epoch (`set_epoch`); otherwise every sample once, in index order."""

    def __init__(self, sources: list[ScanSource], cache: ScanCache, spec: StreamSpec = StreamSpec(),
                 training: bool = True, seed: int = 0):
        ids = [s.scan_id for s in sources]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"duplicate scan ids in sources: {sorted({i for i in ids if ids.count(i) > 1})}")
        self.sources, self.cache, self.spec = list(sources), cache, spec
        self.training, self.seed, self.epoch = training, seed, 0
        self._scans: dict[int, CachedScan] = {}
        self._index: PatchIndex | None = None

    def scan(self, i: int) -> CachedScan:
        if i not in self._scans:
            src = self.sources[i]
            self._scans[i] = self.cache.get(src.scan_id, src.load)
        return self._scans[i]

    @property
    def index(self) -> PatchIndex:
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def _build_index(self) -> PatchIndex:
        parts = []
        for i, src in enumerate(tqdm(self.sources, desc="scans", unit="scan", disable=len(self.sources) < 4)):
            sc = self.scan(i)
            rng = np.random.default_rng([self.seed, i])
            nod = findings_to_voxels(sc.volume, as_xyzd(src.nodules))
            exc = findings_to_voxels(sc.volume, as_xyzd(src.excluded))
            shape = sc.volume.shape
            pos = positive_centres(sc.candidates, nod, shape)
            neg, hard = negative_centres(sc.candidates, nod, exc, self.spec.negatives_per_scan, rng,
                                         self.spec.margin_mm, _hard_to_voxels(sc, src.hard_negatives_xyz_mm))
            hard = hard[((hard >= 0) & (hard < np.asarray(shape))).all(1)]
            c = np.concatenate([pos, neg, hard]).astype(np.int64)
            lab = np.r_[np.ones(len(pos), np.int8), np.zeros(len(neg) + len(hard), np.int8)]
            is_hard = np.r_[np.zeros(len(pos) + len(neg), bool), np.ones(len(hard), bool)]
            parts.append((np.full(len(c), i, np.int32), c, lab, is_hard))
            if len(nod) and not len(pos):
                log.warning("scan %s: %d nodules but no positive centre inside the volume", src.scan_id, len(nod))
        if not parts:
            return PatchIndex(np.zeros(0, np.int32), np.zeros((0, 3), np.int64), np.zeros(0, np.int8),
                              np.zeros(0, bool))
        return PatchIndex(*(np.concatenate([p[k] for p in parts]) for k in range(4)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> np.ndarray:
        """Sample indices of this epoch, in yield order."""
        idx = self.index
        if not self.training:
            return np.arange(len(idx.label))
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        return np.concatenate(list(balanced_batches(idx.label, self.spec.batch_size, rng)))

    def __len__(self) -> int:
        return len(self.order())

    def patch(self, k: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int, np.ndarray]:
        idx = self.index
        sc = self.scan(int(idx.scan[k]))
        c = idx.centre_zyx[k]
        label = int(idx.label[k])
        if self.training and label == 1 and rng is not None:
            p = augmented_patch(sc.volume.hu, c, self.spec.augment, rng, self.spec.norm)
        else:
            p = gather(sc.volume.hu, c[None], norm=self.spec.norm)[0]
        loc = (c / np.maximum(np.asarray(sc.volume.shape) - 1, 1)).astype(np.float32)
        return p, label, loc

    def iter_shard(self, shard: int = 0, n_shards: int = 1) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
        """Items ``shard``, ``shard + n_shards``, ... of this epoch's order (data-loader workers)."""
        rng = np.random.default_rng([self.seed, self.epoch, 2, shard])
        for k in self.order()[shard::n_shards]:
            yield self.patch(int(k), rng)

    def __iter__(self):
        return self.iter_shard(0, 1)


def to_patchset(stream: PatchStream, progress: bool = False) -> PatchSet:
    """One pass of ``stream`` (its current epoch order) as an in-memory
    `trainer.data.patchset.PatchSet` (patches uint8 in 1/255 steps, ``scan`` = source index),
    the form the training loop takes."""
    order = stream.order()
    patches = np.empty((len(order), 1, *(PATCH_SIZE,) * 3), np.uint8)
    labels = np.empty(len(order), np.int8)
    locs = np.empty((len(order), 3), np.float32)
    rng = np.random.default_rng([stream.seed, stream.epoch, 2, 0])
    for n, k in enumerate(tqdm(order, desc="patches", unit="patch", disable=not progress)):
        p, y, loc = stream.patch(int(k), rng)
        patches[n] = np.rint(p * 255)
        labels[n], locs[n] = y, loc
    return PatchSet(patches, labels, locs, stream.index.scan[order].astype(np.int32))
