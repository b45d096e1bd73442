"""The small plain ConvNets of the MEMO paper's smallest budget points.

conv2 (CIFAR) is two conv-BN-ReLU-maxpool blocks of 64 channels; MEMO shares block 1 and grows
block 2. conv4 (ImageNet) is a 7x7 stride-2 first block and three 3x3 blocks (128, 128, 512
channels); MEMO grows the last one.
"""
from __future__ import annotations

from torch import nn

from .base import Backbone


def _conv_block(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def conv2(width: int = 64) -> Backbone:
    return Backbone(_conv_block(3, width), _conv_block(width, width), out_dim=width)


def conv4(hidden: int = 128, out: int = 512) -> Backbone:
    generalized = nn.Sequential(_conv_block(3, hidden, kernel=7, stride=2),
                                _conv_block(hidden, hidden), _conv_block(hidden, hidden))
    return Backbone(generalized, _conv_block(hidden, out), out_dim=out)
