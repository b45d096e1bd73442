"""UCIR-style CIFAR ResNets (Hou et al., CVPR 2019), the backbone of UCIR and PODNet on CIFAR.

Two things set them apart from the plain CIFAR ResNets (cifar_resnet.py):

- a shortcut that changes shape is a 1x1 strided convolution plus BatchNorm ("option B"), so it has
  parameters: resnet32_ucir weighs 466,256 parameters, 2,752 more than resnet32's 463,504;
- the last block of the last stage ends without its ReLU, so the pooled features (what a cosine
  classifier and PODNet's POD-flat read) can be negative.

Reference: PyCIL 87cc411 convs/ucir_cifar_resnet.py (`CifarResNet` with `DownsampleB` and
`last=True` on the last block; PyCIL's "cosine_resnet32"), after
hshustc/CVPR19_Incremental_Learning modified_resnet_cifar.py. The initialization is the reference's
(`reference_init`: He fan-out convs, BatchNorm 1/0).

Built as `Backbone(Sequential(stem, stage1, stage2), stage3, 64)`, so `feature_maps` returns the
three stages' outputs, PyCIL's `fmaps` [x_1, x_2, x_3], and MEMO-style accounting of the two parts
stays possible.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, reference_init


class ProjectionShortcut(nn.Module):
    """Option B: a 1x1 convolution with the block's stride, then BatchNorm (PyCIL `DownsampleB`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class UCIRBlock(nn.Module):
    """A basic block whose final ReLU is dropped when it is the network's last (`last=True`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, last: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = ProjectionShortcut(in_channels, out_channels, stride) if changes_shape else nn.Identity()
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return out if self.last else F.relu(out)


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int, last: bool = False) -> nn.Sequential:
    layers = [UCIRBlock(in_channels, out_channels, stride, last=last and blocks == 1)]
    layers += [UCIRBlock(out_channels, out_channels, 1, last=last and index == blocks - 1)
               for index in range(1, blocks)]
    return nn.Sequential(*layers)


def ucir_cifar_resnet(depth: int, width: int = 16) -> Backbone:
    """A UCIR CIFAR ResNet of `depth` = 6n + 2 layers; stages of width, 2x and 4x channels."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 26, 32, ...), got {depth}")
    blocks = (depth - 2) // 6
    stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    generalized = nn.Sequential(stem, _stage(width, width, blocks, 1), _stage(width, 2 * width, blocks, 2))
    specialized = _stage(2 * width, 4 * width, blocks, 2, last=True)
    return reference_init(Backbone(generalized, specialized, out_dim=4 * width))
