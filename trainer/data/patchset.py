"""`PatchSet`: patches held in memory, the form the training loop takes (phantom cohorts,
synth folders, mined hard negatives, one pass of a `trainer.data.dataset.PatchStream`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PatchSet:
    patches: np.ndarray   # uint8 (N, 1, 41, 41, 41): [0, 1] window in 1/255 steps
    labels: np.ndarray    # int8 (N,)
    locations: np.ndarray  # float32 (N, 3)
    scan: np.ndarray      # int32 (N,): index of the source scan (splits are by scan)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(parts: list[PatchSet]) -> PatchSet:
        return PatchSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                          ("patches", "labels", "locations", "scan")))
