"""CIFAR ResNets (He et al., 2016, section 4.2) with the parameter-free "option A" shortcut.

Three stages of 16/32/64 channels with n basic blocks each (depth 6n + 2). Option A
subsamples by two and zero-pads the new channels, so a shortcut adds no parameters; this is
what makes resnet32 weigh exactly 463,504 parameters, the number the MEMO paper counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, reference_init


class ZeroPadShortcut(nn.Module):
    """Option A: stride-2 subsample, then pad the channels with zeros (no parameters).

    The padding keeps the input's memory format (channels_last in, channels_last out): a zero
    block made with `new_zeros` is NCHW, and concatenating it to a channels_last map makes the
    residual sum, and every layer after it, convert layouts. PyCIL's DownsampleA gets the same
    effect from `x.mul(0)`; constant padding skips that multiply.
    """

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = ZeroPadShortcut(out_channels - in_channels) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def cifar_resnet(depth: int, width: int = 16) -> Backbone:
    """A CIFAR ResNet of `depth` = 6n + 2 layers; stages have width, 2x and 4x channels."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 26, 32, ...), got {depth}")
    blocks = (depth - 2) // 6
    stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    generalized = nn.Sequential(stem, _stage(width, width, blocks, 1), _stage(width, 2 * width, blocks, 2))
    specialized = _stage(2 * width, 4 * width, blocks, 2)
    return reference_init(Backbone(generalized, specialized, out_dim=4 * width))
