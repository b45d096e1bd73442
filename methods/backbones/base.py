"""What every backbone is: a generalized part, a specialized part, and a pooled feature vector.

MEMO (Zhou et al., ICLR 2023) shares the early layers across tasks and grows only the last
stage. Building every backbone as `generalized -> specialized -> pool` lets MEMO, DER and the
single-network methods use one set of architectures, and lets the memory accounting count the
two parts separately.
"""
from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor split before its last stage.

    `generalized` is the stem plus every stage but the last; `specialized` is the last stage.
    Pooling and flattening hold no parameters, so they belong to neither part.
    """

    def __init__(self, generalized: nn.Module, specialized: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.generalized = generalized
        self.specialized = specialized
        self.out_dim = out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return pool_features(self.specialized(self.generalized(images)))

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The output map of every stage, first to last (the last is the one `forward` pools).

        A stage is a child of the generalized part after its stem, when that part is a sequence of
        blocks (the ResNets' `Sequential(stem, stage, ...)`), or else the whole generalized part;
        then the specialized part. What distillation on intermediate features reads (PODNet's
        POD-spatial)."""
        maps = []
        blocks = isinstance(self.generalized, nn.Sequential) and len(self.generalized) > 1 and all(
            isinstance(child, nn.Sequential) for child in self.generalized)
        parts = list(self.generalized) if blocks else [self.generalized]
        x = images
        for index, part in enumerate(parts):
            x = part(x)
            if index > 0 or len(parts) == 1:  # the stem's output is not a stage's
                maps.append(x)
        maps.append(self.specialized(x))
        return maps


def pool_features(feature_map: torch.Tensor) -> torch.Tensor:
    """Global average pooling to a [batch, channels] feature vector."""
    return feature_map.mean(dim=(2, 3))


def reference_init(module: nn.Module) -> nn.Module:
    """The reference CIFAR ResNets' initialization, in place; returns `module`.

    PyCIL's and the MEMO authors' CIFAR ResNets (convs/cifar_resnet.py, convs/memo_cifar_resnet.py)
    draw conv weights from N(0, 2 / fan_out) with fan_out = k*k*out_channels (He et al., 2015, in
    its fan-out form) and set BatchNorm to weight 1, bias 0. PyTorch's default conv init has variance
    1 / (3 fan_in), six times smaller where fan_in = fan_out; matching the reference keeps the
    first-task model, which every method shares, comparable to theirs (docs/fidelity.md).
    torchvision's ImageNet ResNets already do this; the small ConvNets keep PyTorch's defaults
    because the reference ones do (convs/conv_cifar.py, convs/conv_imagenet.py).
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    return module


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
