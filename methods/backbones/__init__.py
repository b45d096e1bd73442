"""The backbone registry: every architecture by name, with the input size it expects.

Families list the members of one memory curve from the smallest to the largest; the budget
planner takes its intermediate points from them (docs/protocol.md section 3a).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torchvision.models.resnet import BasicBlock, Bottleneck

from ..registry import Registry
from .base import Backbone, parameter_count, pool_features
from .cifar_resnet import cifar_resnet
from .convnet import conv2, conv4
from .imagenet_resnet import imagenet_resnet
from .ucir_resnet import ucir_cifar_resnet


@dataclass(frozen=True)
class BackboneEntry:
    factory: Callable[[], Backbone]
    input_kind: str  # "cifar" (32x32 images) or "imagenet" (224x224 images)


BACKBONES: Registry[BackboneEntry] = Registry("backbone")

for _depth in (8, 14, 20, 26, 32, 44, 56):
    BACKBONES.add(f"resnet{_depth}", BackboneEntry(partial(cifar_resnet, _depth), "cifar"))
    # Half-width variants (8/16/32 channels) keep the reduced CPU profile's curve cheap to train.
    BACKBONES.add(f"resnet{_depth}_half", BackboneEntry(partial(cifar_resnet, _depth, width=8), "cifar"))
# UCIR's CIFAR ResNets (1x1-conv shortcuts, no final ReLU): PODNet's backbone (methods/podnet.py).
for _depth in (8, 14, 20, 26, 32, 44, 56):
    BACKBONES.add(f"resnet{_depth}_ucir", BackboneEntry(partial(ucir_cifar_resnet, _depth), "cifar"))
    BACKBONES.add(f"resnet{_depth}_half_ucir", BackboneEntry(partial(ucir_cifar_resnet, _depth, width=8), "cifar"))
BACKBONES.add("conv2", BackboneEntry(conv2, "cifar"))
BACKBONES.add("conv2_half", BackboneEntry(partial(conv2, width=32), "cifar"))
BACKBONES.add("conv4", BackboneEntry(conv4, "imagenet"))
BACKBONES.add("resnet10", BackboneEntry(partial(imagenet_resnet, BasicBlock, [1, 1, 1, 1]), "imagenet"))
BACKBONES.add("resnet18", BackboneEntry(partial(imagenet_resnet, BasicBlock, [2, 2, 2, 2]), "imagenet"))
BACKBONES.add("resnet26_imagenet", BackboneEntry(partial(imagenet_resnet, Bottleneck, [2, 2, 2, 2]), "imagenet"))
BACKBONES.add("resnet34", BackboneEntry(partial(imagenet_resnet, BasicBlock, [3, 4, 6, 3]), "imagenet"))
BACKBONES.add("resnet50", BackboneEntry(partial(imagenet_resnet, Bottleneck, [3, 4, 6, 3]), "imagenet"))

# Curve families, smallest first, and the benchmark backbone of each input kind.
FAMILIES: dict[str, list[str]] = {
    "cifar": ["conv2", "resnet14", "resnet20", "resnet26", "resnet32"],
    "imagenet": ["conv4", "resnet10", "resnet18", "resnet26_imagenet", "resnet34", "resnet50"],
}
BENCHMARK_BACKBONE: dict[str, str] = {"cifar": "resnet32", "imagenet": "resnet18"}


def build_backbone(name: str) -> Backbone:
    """A freshly initialized backbone (build it under `torch.device('meta')` to count without allocating)."""
    return BACKBONES.get(name).factory()


def input_kind(name: str) -> str:
    return BACKBONES.get(name).input_kind


__all__ = ["Backbone", "BACKBONES", "FAMILIES", "BENCHMARK_BACKBONE", "build_backbone", "input_kind",
           "parameter_count", "pool_features"]
