"""The seed's 2.5-D models: nine slices of each view (axial, coronal, sagittal) around the centre.

2.5D-1 stacks the 27 slices as channels of one 2-D CNN; 2.5D-2 runs one 2-D CNN per view
(separate weights) and concatenates their embeddings. The slicing happens inside
``forward``, so both take the same (N, 1, 41, 41, 41) patch as the 3-D models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from noduleflow.engine.contract import PATCH_SIZE

from .blocks import ConvBN, Inception


def views(x: torch.Tensor, n: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 1, 41, 41, 41) -> three (N, n, 41, 41) stacks: axial (z), coronal (y), sagittal (x)."""
    c = x.shape[-1] // 2
    s = slice(c - n // 2, c + n // 2 + 1)
    v = x[:, 0]
    return v[:, s], v[:, :, s].transpose(1, 2), v[:, :, :, s].permute(0, 3, 1, 2)


class CNN2D(nn.Module):
    """41^2 -> 39 -pool-> 19 -inception-> 15 -pool-> 7 -inception-> 3 -> embedding."""

    def __init__(self, cin: int, emb: int):
        super().__init__()
        self.stem = ConvBN(cin, 32, 3, dim=2)
        self.inc1 = Inception(32, 16, 16, 24, 8, 12, 12, dim=2)
        self.inc2 = Inception(self.inc1.out_channels, 24, 24, 32, 12, 16, 16, dim=2)
        self.fc = nn.Linear(self.inc2.out_channels * 9, emb)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)
        x = F.max_pool2d(self.inc1(x), 2)
        return F.relu(self.fc(self.inc2(x).flatten(1)))


class Net25D1(nn.Module):
    patch_size = PATCH_SIZE

    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.cnn = CNN2D(27, 128)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(128, 1))

    def forward(self, x, loc=None):
        return self.head(self.cnn(torch.cat(views(x), dim=1)))[:, 0]


class Net25D2(nn.Module):
    patch_size = PATCH_SIZE

    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.cnns = nn.ModuleList([CNN2D(9, 64) for _ in range(3)])
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x, loc=None):
        return self.head(torch.cat([cnn(v) for cnn, v in zip(self.cnns, views(x))], dim=1))[:, 0]
