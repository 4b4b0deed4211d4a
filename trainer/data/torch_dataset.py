"""torch wrapper of `trainer.data.dataset.PatchStream` (the only data module that imports torch)."""
from __future__ import annotations

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .dataset import PatchStream


class TorchPatchDataset(IterableDataset):
    """Yields (patch float32 tensor (1, 41, 41, 41), label float32 scalar, location float32 (3,)).
    With DataLoader workers each worker takes every n-th item of the epoch's order, so the
    balanced order is kept; call `set_epoch` before each epoch to reshuffle."""

    def __init__(self, stream: PatchStream):
        self.stream = stream
        # preprocess / fill the cache once here, not concurrently in every worker
        _ = stream.index

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self):
        info = get_worker_info()
        shard, n = (0, 1) if info is None else (info.id, info.num_workers)
        for patch, label, loc in self.stream.iter_shard(shard, n):
            yield torch.from_numpy(patch), torch.tensor(float(label)), torch.from_numpy(loc)
