"""Stage-2 classifier (false-positive reduction): 3D-1 on multi-scale context, early fusion.

Input (N, 2, 41, 41, 41) float32 in [0, 1] (`engine.context.ContextVolume.patches`): channel 0 the
candidate's 41^3 patch at 1 mm, channel 1 the 41^3 patch at 2 mm around the same centre (82 mm of
context: the vessel a candidate sits on, the wall it touches). Both enter one 3D-1 network
(`Net3D` with ``in_channels=2``): the same arithmetic as the stage-1 patch classifier, which
matters on a CPU (a second trunk for the context doubled the time per candidate).

`from_stage1` starts it from the stage-1 3D-1 weights with the context channel's stem weights at
zero, so before training it scores every candidate exactly as stage 1's patch classifier does;
fine-tuning on stage 1's false positives then teaches it what the context says.
"""
from __future__ import annotations

import torch

from .net3d import Net3D


def build_stage2(width: str = "3d-1", dropout: float = 0.2) -> Net3D:
    return Net3D(width, dropout=dropout, in_channels=2)


def from_stage1(state_dict: dict, width: str = "3d-1", dropout: float = 0.2) -> Net3D:
    """A stage-2 net whose channel-0 path is the given stage-1 ``Net3D`` state dict and whose
    context-channel stem weights are zero (so it equals the stage-1 classifier until trained)."""
    m = build_stage2(width, dropout)
    sd = dict(state_dict)
    w = sd["stem.0.weight"]
    if w.shape[1] != 1:
        raise ValueError(f"stage-1 stem must take 1 channel, got weight {tuple(w.shape)}")
    sd["stem.0.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    m.load_state_dict(sd)
    return m
