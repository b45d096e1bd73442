"""Cosine classifiers: the logit of a class is the cosine between the L2-normalized features and a
normalized class weight (proxy), times a learned scale sigma (Hou et al., CVPR 2019, "UCIR").

PODNet keeps several proxies per class (its "local similarity classifier", 10 on CIFAR) and merges
them by a softmax over the class's proxies; Coil and others keep one. A cosine head is about
`proxies` times a linear head of the same width: the strict counting policy bills it, and the
paper policy, which counts backbones only, does not.

Initialization follows PyCIL 87cc411 convs/linears.py `CosineLinear.reset_parameters`: weights
uniform in +-1/sqrt(in_features), sigma 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .networks import IncrementalNet


class CosineClassifier(nn.Module):
    def __init__(self, in_features: int, num_classes: int, proxies: int = 1, learn_scale: bool = True) -> None:
        super().__init__()
        self.in_features, self.num_classes, self.proxies = in_features, num_classes, proxies
        self.weight = nn.Parameter(torch.empty(num_classes * proxies, in_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        self.sigma = nn.Parameter(torch.ones(())) if learn_scale else None

    @property
    def out_features(self) -> int:
        return self.num_classes

    def similarities(self, features: torch.Tensor) -> torch.Tensor:
        """Cosines [batch, classes * proxies], class-major (class c's proxies are columns c*P .. c*P + P - 1)."""
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosines = merge_proxies(self.similarities(features), self.proxies)
        return cosines if self.sigma is None else self.sigma * cosines

    def expanded(self, num_classes: int) -> "CosineClassifier":
        """A head for `num_classes` whose old proxies and scale keep their values; new proxies fresh."""
        grown = CosineClassifier(self.in_features, num_classes, self.proxies, self.sigma is not None)
        with torch.no_grad():
            grown.weight[: self.weight.shape[0]] = self.weight
            if self.sigma is not None:
                grown.sigma.copy_(self.sigma)
        return grown.to(self.weight.device)

    def class_rows(self, low: int, high: int) -> slice:
        """The weight rows of classes low .. high - 1 (every proxy of each)."""
        return slice(low * self.proxies, high * self.proxies)


def merge_proxies(cosines: torch.Tensor, proxies: int) -> torch.Tensor:
    """One similarity per class from its proxies: their softmax-weighted sum (PODNet's LSC; PyCIL
    `reduce_proxies`); with one proxy the cosines themselves."""
    if proxies == 1:
        return cosines
    grouped = cosines.view(cosines.shape[0], -1, proxies)
    return (F.softmax(grouped, dim=-1) * grouped).sum(dim=-1)


class CosineNet(IncrementalNet):
    """One backbone and a cosine classifier over all seen classes (its `fc`), grown per task."""

    def __init__(self, backbone: str, storage: str = "fp32", proxies: int = 1, learn_scale: bool = True) -> None:
        super().__init__(storage)
        self.backbone = build_backbone(backbone)
        self.proxies, self.learn_scale = proxies, learn_scale

    def add_task(self, new_classes: int) -> None:
        self.num_classes += new_classes
        self.fc = (CosineClassifier(self.feature_dim, self.num_classes, self.proxies, self.learn_scale)
                   if self.fc is None else self.fc.expanded(self.num_classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def first_backbone_state(self) -> dict[str, torch.Tensor]:
        return self.backbone.state_dict()

    def load_first_backbone(self, state: dict[str, torch.Tensor]) -> None:
        self.backbone.load_state_dict(state)

    def backbone_modules(self) -> list[nn.Module]:
        return [self.backbone]

    @property
    def feature_dim(self) -> int:
        return self.backbone.out_dim
