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


def pool_features(feature_map: torch.Tensor) -> torch.Tensor:
    """Global average pooling to a [batch, channels] feature vector."""
    return feature_map.mean(dim=(2, 3))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
