"""torchvision-style ImageNet ResNets, split before layer4 for MEMO.

The blocks are torchvision's own (BasicBlock, Bottleneck), so parameter counts match the
reference implementations exactly; only the classifier is dropped.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .base import Backbone


def imagenet_resnet(block: type[BasicBlock] | type[Bottleneck], layers: list[int]) -> Backbone:
    net = ResNet(block, layers)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    generalized = nn.Sequential(stem, net.layer1, net.layer2, net.layer3)
    return Backbone(generalized, net.layer4, out_dim=512 * block.expansion)
