"""The seed's 3-D models: 3D-1, 3D-2 (more filters), 3D-LOC (with the patch location), 3D-ST.

Geometry of 3D-1/3D-2/3D-LOC on a 41^3 patch (valid convolutions, floor pooling):
41 -conv3-> 39 -pool2-> 19 -inception-> 15 -pool2-> 7 -inception-> 3 -head conv 3^3-> 1.
Total stride 4, receptive field 41: run on a tile of D voxels it returns
(D - 41) // 4 + 1 scores per axis, score i being the patch whose first voxel is 4 i
(its centre 4 i + 20). The head is convolutional (a 3^3 conv then 1^3 convs), i.e. the
fully connected layers of the paper written as convolutions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from noduleflow.engine.contract import PATCH_SIZE

from .blocks import ConvBN, Inception

WIDTHS = {
    # stem, inception 1 (c1, c3r, c3, c5r, c5, cp), inception 2, head width
    "3d-1": (16, (8, 12, 16, 6, 8, 8), (16, 16, 24, 8, 12, 12), 64),
    "3d-2": (24, (16, 16, 32, 8, 16, 16), (32, 24, 48, 12, 24, 24), 128),
}


def trim_to_grid(x: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """A dense tile (N, C, D, H, W) without its trailing voxels that no complete patch covers:
    (n - patch) // stride * stride + patch per axis."""
    d, h, w = x.shape[2:]
    return x[:, :, : (d - patch) // stride * stride + patch, : (h - patch) // stride * stride + patch,
             : (w - patch) // stride * stride + patch]


def check_patch(x: torch.Tensor, patch: int) -> None:
    """Refuse patches that are not ``patch``^3 (not while tracing for export)."""
    if not torch.jit.is_tracing() and tuple(x.shape[2:]) != (patch,) * 3:
        raise ValueError(f"patches must be {patch}^3, got {tuple(x.shape[2:])}")


class Net3D(nn.Module):
    """3D-1 / 3D-2 / 3D-LOC. ``loc=True`` concatenates the patch centre's relative position
    in the scan (3 values in [0, 1]) to the features before the fully connected layers.
    ``in_channels`` 2: the stage-2 multi-scale input (`trainer.models.stage2`)."""

    patch_size = PATCH_SIZE
    dense_stride = 4
    dense_offset = 20
    # The voxels of a patch the logit depends on, per axis: the first 38 of 41. Back from one
    # output: fc1 3 -> inc2 +4 = 7 -> pool x2 = 14 -> inc1 +4 = 18 -> pool x2 = 36 -> stem +2 = 38;
    # floor pooling drops the rest (the stem's last row, then inc1's). Inference reads only these.
    input_extent = 38

    def __init__(self, width: str = "3d-1", loc: bool = False, dropout: float = 0.2, in_channels: int = 1):
        super().__init__()
        stem, i1, i2, head = WIDTHS[width]
        self.loc = loc
        self.stem = ConvBN(in_channels, stem, 3)
        self.inc1 = Inception(stem, *i1)
        self.inc2 = Inception(self.inc1.out_channels, *i2)
        self.fc1 = nn.Conv3d(self.inc2.out_channels, head, 3)  # "FC" over the 3^3 map
        self.fc2 = nn.Conv3d(head + (3 if loc else 0), head // 2, 1)
        self.out = nn.Conv3d(head // 2, 1, 1)
        self.drop = nn.Dropout(dropout)

    def features(self, x):
        x = F.max_pool3d(self.stem(x), 2)
        x = F.max_pool3d(self.inc1(x), 2)
        return F.relu(self.fc1(self.inc2(x)))

    def dense_forward(self, x, loc_map=None):
        """(N, 1, D, H, W) -> (N, D', H', W') logits, D' = (D - 41) // 4 + 1; ``loc_map``
        (N, 3, D', H', W') for 3D-LOC. Trailing voxels that no complete patch covers are
        trimmed first (floor pooling would otherwise emit one more, partial, output). The last
        patch's 3 voxels per axis that no output reads (`input_extent`) are not: the graph's
        trim keeps the contract's (n - 41) // 4 + 1 points on every n, and on a full tile (165
        voxels) they are ~5 % of the stem's positions (discarded by the floor poolings)."""
        return self._logits(trim_to_grid(x, self.patch_size, self.dense_stride), loc_map)

    def _logits(self, x, loc_map=None):
        h = self.drop(self.features(x))
        if self.loc:
            if loc_map is None:
                raise ValueError("3D-LOC needs the location map")
            h = torch.cat([h, loc_map.to(h.dtype)], dim=1)
        h = self.drop(F.relu(self.fc2(h)))
        return self.out(h)[:, 0]

    def forward(self, x, loc=None):
        """(N, C, 41, 41, 41) -> (N,) logits (C = ``in_channels``); ``loc`` (N, 3) for 3D-LOC.
        In inference (and the exported graphs) only the first `input_extent` voxels per axis are
        read: the same logits for about 0.79x the arithmetic. Training runs the whole patch, so
        that BatchNorm's batch statistics stay those the shipped weights were trained with."""
        check_patch(x, self.patch_size)
        if not self.training:
            e = self.input_extent
            x = x[:, :, :e, :e, :e]
        lm = loc[:, :, None, None, None] if loc is not None else None
        return self._logits(x, lm).reshape(x.shape[0])


class Net3DE(nn.Module):
    """3D-E: a plain stack of valid convolutions laid out for the dense pass's speed, not the seed's.

    Geometry on a 41^3 patch: 41 -conv4 stride 2-> 19 -conv3 stride 2-> 9 -conv3 x4-> 1, then
    1^3 convolutions (the head). Total stride 4, receptive field 40 (voxels 0-39 of the patch,
    `input_extent`): exactly fully convolutional like 3D-1 (`dense_forward`), with the same dense
    contract (stride 4, offset 20). Against 3D-1's inception trunk: no branches, concatenations,
    crops or poolings; the heavy layers are 3^3 convolutions of ``width`` (a multiple of 16)
    channels on the stride-4 grid, which CPU convolution kernels run near the machine's peak;
    the one-channel input is read by a 4^3 stride-2 convolution (1/8 of the positions of 3D-1's
    stride-1 stem); the head is 1^3, so a point's score costs nothing beyond its trunk."""

    patch_size = PATCH_SIZE
    dense_stride = 4
    dense_offset = 20
    input_extent = 40

    def __init__(self, width: int = 48, stem: int = 16, depth: int = 4, head: int = 32, dropout: float = 0.2,
                 in_channels: int = 1):
        super().__init__()
        if depth != 4:
            raise ValueError("3D-E's receptive field (40) needs depth 4")

        def block(cin, cout, k, s=1):
            return nn.Sequential(nn.Conv3d(cin, cout, k, stride=s, bias=False), nn.BatchNorm3d(cout),
                                 nn.ReLU(inplace=True))

        self.loc = False
        layers = [block(in_channels, stem, 4, 2), block(stem, width, 3, 2)]
        layers += [block(width, width, 3) for _ in range(depth)]
        self.trunk = nn.Sequential(*layers)
        self.fc = nn.Conv3d(width, head, 1)
        self.out = nn.Conv3d(head, 1, 1)
        self.drop = nn.Dropout(dropout)

    def _logits(self, x, loc_map=None):
        h = self.drop(self.trunk(x))
        return self.out(self.drop(F.relu(self.fc(h))))[:, 0]

    def dense_forward(self, x, loc_map=None):
        """(N, 1, D, H, W) -> (N, D', H', W') logits, D' = (D - 41) // 4 + 1 (trailing voxels that no
        complete patch covers trimmed first, as in `Net3D.dense_forward`)."""
        return self._logits(trim_to_grid(x, self.patch_size, self.dense_stride))

    def forward(self, x, loc=None):
        """(N, C, 41, 41, 41) -> (N,) logits; the last voxel per axis is not read."""
        check_patch(x, self.patch_size)
        return self._logits(x).reshape(x.shape[0])


def rotation_from_6d(p: torch.Tensor) -> torch.Tensor:
    """(N, 6) -> (N, 3, 3) rotation matrices by Gram-Schmidt (Zhou et al. 2019): no scale, no shear."""
    a, b = p[:, :3], p[:, 3:]
    e1 = F.normalize(a, dim=1)
    e2 = F.normalize(b - (e1 * b).sum(1, keepdim=True) * e1, dim=1)
    e3 = torch.cross(e1, e2, dim=1)
    return torch.stack([e1, e2, e3], dim=2)


class Net3DST(nn.Module):
    """3D-ST: a rotation-only 3-D spatial transformer in front of 3D-1 (the seed found it
    worse than 3D-1; kept as an option). Not convertible to dense form: the rotation
    depends on the patch."""

    patch_size = PATCH_SIZE

    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.localizer = nn.Sequential(
            nn.AvgPool3d(2), ConvBN(1, 8, 3), nn.MaxPool3d(2), ConvBN(8, 16, 3), nn.AdaptiveAvgPool3d(1),
            nn.Flatten(), nn.Linear(16, 6))
        nn.init.zeros_(self.localizer[-1].weight)
        with torch.no_grad():
            self.localizer[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0]))  # start at identity
        self.net = Net3D("3d-1", dropout=dropout)

    def forward(self, x, loc=None):
        rot = rotation_from_6d(self.localizer(x))
        theta = torch.cat([rot, torch.zeros_like(rot[:, :, :1])], dim=2)  # rotation about the centre
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return self.net(F.grid_sample(x, grid, align_corners=False, padding_mode="border"))
