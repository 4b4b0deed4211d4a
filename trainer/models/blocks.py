"""Building blocks with valid (unpadded) convolutions only.

Every module here shrinks its input by a fixed amount on each side, so a network made
of them is translation-equivariant on a regular grid and is exactly a fully
convolutional network: run on a larger tile, it gives at each output point the score
of the patch at the matching input position (the engine's dense mode).
"""
from __future__ import annotations

import torch
from torch import nn


def _conv(dim):
    return nn.Conv3d if dim == 3 else nn.Conv2d


def _bn(dim):
    return nn.BatchNorm3d if dim == 3 else nn.BatchNorm2d


def _pool(dim):
    return nn.MaxPool3d if dim == 3 else nn.MaxPool2d


class ConvBN(nn.Sequential):
    """Conv (valid) + BatchNorm + ReLU."""

    def __init__(self, cin, cout, k, dim=3):
        super().__init__(_conv(dim)(cin, cout, k, bias=False), _bn(dim)(cout), nn.ReLU(inplace=True))


def center_crop(x: torch.Tensor, c: int) -> torch.Tensor:
    """Trim ``c`` voxels from each side of every spatial axis."""
    if c == 0:
        return x
    if x.dim() == 5:
        return x[:, :, c:-c, c:-c, c:-c]
    return x[:, :, c:-c, c:-c]


class Inception(nn.Module):
    """Inception module (Szegedy et al. 2015/2016) with valid convolutions.

    Four branches, each shrinking the input by 2 voxels per side, concatenated:
    1x1 then a 2-voxel trim; 1x1 reduce -> 3^k then a 1-voxel trim; 1x1 reduce ->
    3^k -> 3^k (the factorised 5^k); 3^k max-pool (stride 1) -> 1x1 then a 1-voxel trim.
    """

    shrink = 2
    # inference trims each branch's input rather than its output (`forward`); False: the
    # training form in inference too (the reference the tests compare the two forms against)
    trim_inputs = True

    def __init__(self, cin, c1, c3r, c3, c5r, c5, cp, dim=3):
        super().__init__()
        self.b1 = ConvBN(cin, c1, 1, dim)
        self.b3 = nn.Sequential(ConvBN(cin, c3r, 1, dim), ConvBN(c3r, c3, 3, dim))
        self.b5 = nn.Sequential(ConvBN(cin, c5r, 1, dim), ConvBN(c5r, c5, 3, dim), ConvBN(c5, c5, 3, dim))
        self.pool = _pool(dim)(3, stride=1)
        self.bp = ConvBN(cin, cp, 1, dim)
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x):
        if self.training or not self.trim_inputs:
            return torch.cat([center_crop(self.b1(x), 2), center_crop(self.b3(x), 1), self.b5(x),
                              center_crop(self.bp(self.pool(x)), 1)], dim=1)
        # Inference (and every exported graph): the trims moved before the branches. A 1^k conv,
        # BatchNorm and ReLU act voxel by voxel, so trimming a branch's input instead of its
        # output gives the same values (the same sums; a runtime may order a sum differently for
        # another size: ~1e-6 in ONNX Runtime); the 1^k convs then run on fewer voxels, and the
        # concatenation's inputs all come straight from convolutions. Not in training, where
        # BatchNorm's batch statistics would be taken over the trimmed voxels.
        x1 = center_crop(x, 1)
        return torch.cat([self.b1(center_crop(x, 2)), self.b3(x1), self.b5(x), self.bp(self.pool(x1))], dim=1)
