"""Parameters and GFLOPs per 41^3 patch of every model: ``python -m noduleflow.trainer.models.summary``.

FLOPs = 2 x multiply-accumulates of the convolutions and linear layers (counted with
forward hooks on one patch); pooling, BatchNorm and activations are not counted.
"""
from __future__ import annotations

import torch
from torch import nn

from noduleflow.engine.contract import PATCH_SIZE

from . import MODEL_NAMES, build_model


def count(model: nn.Module, dense: bool = False) -> tuple[int, float]:
    """(parameters, GFLOPs) of one 41^3 patch in inference: what the patch graphs compute (a 3-D
    model reads only its `input_extent`^3 voxels). ``dense``: instead, its dense form
    (``dense_forward``) on one 41^3 tile, the positions its floor poolings discard included: what
    the dense graph computes per output point of a one-point tile."""
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, (nn.Conv3d, nn.Conv2d)):
            k = mod.weight[0].numel()  # cin/groups * kernel volume
            macs += out.numel() * k
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv3d, nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        x = torch.rand(1, 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
        if dense:
            model.dense_forward(x, torch.rand(1, 3, 1, 1, 1) if getattr(model, "loc", False) else None)
        else:
            model(x, torch.rand(1, 3))
    for h in hs:
        h.remove()
    return sum(p.numel() for p in model.parameters()), 2 * macs / 1e9


def table() -> str:
    rows = ["| model | parameters | GFLOPs / patch | dense |", "|---|---:|---:|---|"]
    from . import DENSE_MODELS

    for name in MODEL_NAMES:
        params, gflops = count(build_model(name))
        rows.append(f"| {name} | {params:,} | {gflops:.3f} | {'yes' if name in DENSE_MODELS else 'no'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
