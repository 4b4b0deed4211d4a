"""Fixtures shared by the trainer's tests."""
from __future__ import annotations

import numpy as np
import pytest


def toy_patches(n, rng):
    """Bright sphere at the centre (label 1) vs. noise with an off-centre sphere (label 0)."""
    from noduleflow.trainer.data.phantoms import PatchSet

    g = np.stack(np.meshgrid(*[np.arange(41)] * 3, indexing="ij"), -1)
    x = rng.uniform(0, 0.3, (n, 1, 41, 41, 41)).astype(np.float32)
    y = np.arange(n) % 2
    for i in range(n):
        c = np.array([20, 20, 20]) if y[i] else rng.integers(5, 36, 3)
        r = rng.uniform(3, 6)
        x[i, 0][((g - c) ** 2).sum(-1) < r * r] = 0.8
    return PatchSet((x * 255).astype(np.uint8), y.astype(np.int8), rng.uniform(size=(n, 3)).astype(np.float32),
                    np.arange(n, dtype=np.int32))


@pytest.fixture
def toy():
    """``toy(n, rng)``: a PatchSet of n toy patches, half positive (`toy_patches`)."""
    return toy_patches
