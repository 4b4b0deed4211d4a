"""The seed-style baseline, the way the papers' code ran: scipy.ndimage.zoom (cubic) to 1 mm,
the lung mask with scipy/skimage (bench.reference), and the classifier applied one patch at a
time in PyTorch eager. Measured by `bench.speed` in the same run as the engine."""
from __future__ import annotations

import time

import numpy as np


def seed_style(vol, checkpoint, centres_world) -> dict:
    """Seed-style pipeline on ``vol``; the classifier runs at ``centres_world`` (n, 3) xyz mm.

    ``checkpoint``: the PyTorch weights (default: the checkpoint of the shipped package's stage-1 CNN).
    -> {mask_s, resample_s, points_per_s, mask_voxels}."""
    import torch

    from noduleflow.bench import reference
    from noduleflow.engine.lungmask import LungMaskParams
    from noduleflow.engine.patches import gather
    from noduleflow.trainer.checkpoint import load_checkpoint, shipped_checkpoint

    # the PyTorch checkpoint the package was exported from (shipped for the default model)
    ckpt = checkpoint or shipped_checkpoint(1)
    t0 = time.perf_counter()
    mask = reference.lung_mask(vol, LungMaskParams(dilate_mm=3.0))
    t_mask = time.perf_counter() - t0
    t0 = time.perf_counter()
    zoomed = reference.resample_zoom(vol)
    t_resample = time.perf_counter() - t0
    model, _ = load_checkpoint(ckpt)
    idx = np.round(vol.world_to_voxel(centres_world) * np.asarray(vol.spacing_zyx_mm)).astype(int)
    patches = gather(zoomed, idx)
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in patches:
            model(torch.from_numpy(p[None]))
    t_inf = time.perf_counter() - t0
    return {"mask_s": t_mask, "resample_s": t_resample, "points_per_s": len(idx) / t_inf,
            "mask_voxels": int(mask.sum())}
