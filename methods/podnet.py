"""PODNet (Douillard et al., ECCV 2020, "PODNet: Pooled Outputs Distillation for Small-Tasks
Incremental Learning"), as PyCIL 87cc411 models/podnet.py runs it on CIFAR, with its NCA margin fixed.

The network: a UCIR CIFAR ResNet (methods/backbones/ucir_resnet.py; PyCIL "cosine_resnet32") and a
local similarity classifier (LSC): `proxies` (10) cosine proxies per class merged by a softmax over
the class's proxies, times one learned scale sigma (PyCIL convs/linears.py CosineLinear,
SplitCosineLinear, reduce_proxies). Each task adds its classes' proxies as a new block; the blocks
of earlier tasks never train again (learning rate and weight decay 0, PyCIL's `fc.fc1` group).

The loss of every step, in both phases:

    NCA(logits, y) + sqrt(seen / new) * (lambda_flat * POD-flat + lambda_spatial * POD-spatial)

- NCA (PyCIL `nca`, from arthurdouillard/incremental_learning.pytorch inclearn/lib/losses/base.py):
  scaled logits with the margin subtracted from the positive class, shifted by their row maximum;
  the loss is -(s_y - log sum_j exp(s'_j)) where s' is s with the positive entry set to 0 (that
  entry then adds exp(0) = 1 to the sum, as the reference code computes it).
  Fixed here: the reference builds `margins` (the margin at the positive only) and then subtracts
  the scalar `margin` from every logit, which the max shift cancels, so there the margin has no
  effect at all. Its docstring says "margin applied on the right (numerator) similarities".
- POD-flat: 1 - cos(pooled features, the teacher's) (PyCIL: F.cosine_embedding_loss).
- POD-spatial (PyCIL `pod_spatial_loss`): for every stage's map, squared, summed over the width
  and over the height, concatenated, L2-normalized per image; the L2 distance to the teacher's,
  averaged over the batch and over the stages.

Per task after the first (the first has no teacher): the main phase on the new data plus the
exemplars, then "finetune" on the exemplar memory selected after the main phase (class-balanced),
with the same loss and parameter groups at the fine-tuning schedule (profile `phases.podnet.finetune`;
PyCIL ft_lrate 0.005, ft_epochs 20). Evaluation: CNN (the LSC) and NME.

Deliberate differences from PyCIL 87cc411 (docs/fidelity.md, PODNet):
- the NCA margin, above;
- fine-tuning data: the memory after this task's selection, memory // seen images per class (the
  original's `_after_task_intensive` builds the exemplars, then fine-tunes on them). PyCIL with
  fixed_memory false fine-tunes on memory // known per class, more images than the budget holds;
- exemplars are selected once, with the model after the main phase (PyCIL selects the new classes'
  again after fine-tuning);
- learning rates: the engine's step schedule (profile milestones) where PyCIL anneals by a cosine;
- the first task trains with the profile's first-task schedule (PyCIL: PODNet's own 160 epochs).
What the original (incremental_learning.pytorch options/podnet/podnet_cnn_cifar100.yaml) does
otherwise and PyCIL does not, kept as PyCIL: POD-spatial factor 3 (PyCIL 5), new proxies imprinted
from k-means of the new classes' features (PyCIL: random), fine-tuning the classifier only at lr 0.05
(PyCIL: everything but the old proxies at 0.005).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BACKBONES, pool_features
from .base import Method, Phase, Task, register
from .cosine import CosineNet, merge_proxies
from .losses import frozen_copy

FINETUNE = "finetune"


@dataclass(frozen=True)
class PODNetOptions:
    proxies: int = 10             # per class: PyCIL models/podnet.py nb_proxy; original proxy_per_class 10
    margin: float = 0.6           # NCA margin on the positive: PyCIL nca(margin=0.6); original nca.margin
    nca_scale: float = 1.0        # NCA's factor on the logits: PyCIL nca(scale=1.0); original nca.scale
    lambda_flat: float = 1.0      # POD-flat weight: PyCIL lambda_f_base; original pod_flat.scheduled_factor
    lambda_spatial: float = 5.0   # POD-spatial weight: PyCIL lambda_c_base (the original's is 3.0)
    ucir_backbone: bool = True    # the backbone's UCIR variant where one exists (PyCIL cosine_resnet32)


# -- the network ------------------------------------------------------------------------------
class LocalSimilarityClassifier(nn.Module):
    """Cosine proxies in one block per task, merged per class, times a learned scale (PyCIL's
    CosineLinear for the first task, SplitCosineLinear after: fc1 = every earlier block, fc2 = the
    newest). Separate blocks let the optimizer give the old proxies their own (zero) learning rate.
    Initialization as PyCIL's CosineLinear: uniform in +-1/sqrt(in_features), sigma 1."""

    def __init__(self, in_features: int, proxies: int) -> None:
        super().__init__()
        self.in_features, self.proxies, self.num_classes = in_features, proxies, 0
        self.blocks = nn.ParameterList()
        self.sigma = nn.Parameter(torch.ones(()))

    @property
    def out_features(self) -> int:
        return self.num_classes

    def add_classes(self, count: int) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        self.blocks.append(nn.Parameter(torch.empty(count * self.proxies, self.in_features).uniform_(-bound, bound)))
        self.num_classes += count

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat(list(self.blocks))

    def old_blocks(self) -> list[nn.Parameter]:
        return list(self.blocks)[:-1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosines = F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))
        return self.sigma * merge_proxies(cosines, self.proxies)


class PODNetNet(CosineNet):
    """One backbone and a local similarity classifier; `outputs` (forward with `with_maps`) also
    returns every stage's map."""

    def __init__(self, backbone: str, storage: str = "fp32", proxies: int = 10) -> None:
        super().__init__(backbone, storage, proxies, learn_scale=True)

    def add_task(self, new_classes: int) -> None:
        if self.fc is None:
            self.fc = LocalSimilarityClassifier(self.feature_dim, self.proxies)
        self.fc.add_classes(new_classes)
        self.num_classes += new_classes

    def forward(self, images: torch.Tensor, with_maps: bool = False) -> dict[str, Any]:
        """Features and logits, and with `with_maps` the stages' maps, from one pass of the backbone
        (through `forward`, so module hooks see the training pass too)."""
        if not with_maps:
            return super().forward(images)
        maps = self.backbone.feature_maps(images)
        features = pool_features(maps[-1])
        with torch.autocast(images.device.type, enabled=False):  # heads in fp32, as IncrementalNet.forward
            logits = self.fc(features.float())
        return {"features": features, "logits": logits, "maps": maps}

    def outputs(self, images: torch.Tensor) -> dict[str, Any]:
        return self(images, with_maps=True)


def podnet_backbone(backbone: str, ucir: bool) -> str:
    """The backbone PODNet trains: `<backbone>_ucir` where the registry has it (the CIFAR ResNets),
    else `backbone` itself (the small ConvNets, the ImageNet ResNets: their feature maps serve too)."""
    variant = f"{backbone}_ucir"
    return variant if ucir and variant in BACKBONES else backbone


# -- the losses -------------------------------------------------------------------------------
def nca_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """PyCIL's `nca` with exclude_pos_denominator, the margin on the positive class only (see above)."""
    margins = torch.zeros_like(logits).scatter_(1, labels[:, None], margin)
    scaled = scale * (logits - margins)
    scaled = scaled - scaled.max(dim=1, keepdim=True).values  # stability, as the reference
    positive = scaled.gather(1, labels[:, None]).squeeze(1)
    others = scaled.scatter(1, labels[:, None], 0.0)  # the positive entry zeroed (exp(0) = 1 stays in)
    return (torch.logsumexp(others, dim=1) - positive).mean()


def pod_spatial_loss(maps: list[torch.Tensor], old_maps: list[torch.Tensor]) -> torch.Tensor:
    """PyCIL `pod_spatial_loss`: width- and height-pooled squared maps, normalized, L2 distance,
    mean over the batch, mean over the stages."""
    total = maps[0].new_zeros((), dtype=torch.float32)
    for new, old in zip(maps, old_maps):
        total = total + torch.linalg.vector_norm(_pooled_strips(new) - _pooled_strips(old), dim=-1).mean()
    return total / len(maps)


def _pooled_strips(feature_map: torch.Tensor) -> torch.Tensor:
    squared = feature_map.float().pow(2)
    by_height = squared.sum(dim=3).reshape(len(squared), -1)  # [batch, channels * height]
    by_width = squared.sum(dim=2).reshape(len(squared), -1)   # [batch, channels * width]
    return F.normalize(torch.cat([by_height, by_width], dim=-1), dim=1)


def pod_flat_loss(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """1 - cosine of the pooled features, batch mean (PyCIL: F.cosine_embedding_loss with target 1)."""
    return F.cosine_embedding_loss(features.float(), old_features.float(),
                                   torch.ones(len(features), device=features.device))


def adaptive_factor(task: Task) -> float:
    """sqrt(seen / new): the distillation grows as the new classes' share shrinks (PyCIL `self.factor`)."""
    return math.sqrt(task.total_classes / task.new_classes)


# -- the method -------------------------------------------------------------------------------
@register
class PODNet(Method):
    name = "podnet"
    keeps_teacher = True
    shares_first_task = False  # its first task is its own: the LSC head trained with NCA
    extra_phases = (FINETUNE,)
    options_type = PODNetOptions

    def __init__(self, backbone: str, options: dict[str, Any] | None = None, model_storage: str = "fp32") -> None:
        _check_options({**self.default_options, **(options or {})})
        super().__init__(backbone, options, model_storage)

    @classmethod
    def resolve_options(cls, options: dict[str, Any], base_classes: int) -> dict[str, Any]:
        """Nothing depends on the scenario; checked here so a bad value fails when the grid is planned."""
        _check_options({**cls.default_options, **options})
        return dict(options)

    def build_network(self, backbone: str) -> PODNetNet:
        return PODNetNet(podnet_backbone(backbone, self.options["ucir_backbone"]), self.model_storage,
                         self.options["proxies"])

    def before_task(self, task: Task) -> None:
        if task.index > 0:
            self.teacher = frozen_copy(self.network, self.model_storage)
        super().before_task(task)

    def phases(self, task: Task) -> list[Phase]:
        if task.index == 0:
            return [Phase()]
        return [Phase(), Phase(FINETUNE, data="memory")]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Everything at the schedule's lr and weight decay but the earlier tasks' proxies, which
        stay where they are (PyCIL: `fc.fc1` at lr 0, weight decay 0, in both phases)."""
        old = self.network.fc.old_blocks()
        frozen = {id(p) for p in old}
        groups = [{"params": [p for p in self.trainable_parameters() if id(p) not in frozen]}]
        return groups + ([{"params": old, "lr_scale": 0.0, "weight_decay": 0.0}] if old else [])

    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.network.outputs(images)
        loss = nca_loss(out["logits"], labels, self.options["margin"], self.options["nca_scale"])
        if self.teacher is None:
            return loss
        with torch.no_grad():
            old = self.teacher.outputs(images)
        distillation = (self.options["lambda_flat"] * pod_flat_loss(out["features"], old["features"])
                        + self.options["lambda_spatial"] * pod_spatial_loss(out["maps"], old["maps"]))
        return loss + adaptive_factor(task) * distillation


def _check_options(options: dict[str, Any]) -> None:
    proxies = options["proxies"]
    if not isinstance(proxies, int) or isinstance(proxies, bool) or proxies < 1:
        raise ValueError(f"podnet: proxies must be an integer >= 1 (proxies per class; the reference uses 10), "
                         f"got {proxies!r}")
    for key in ("margin", "lambda_flat", "lambda_spatial"):
        if not (isinstance(options[key], (int, float)) and math.isfinite(options[key]) and options[key] >= 0):
            raise ValueError(f"podnet: {key} must be a finite number >= 0, got {options[key]!r}")
    if not (isinstance(options["nca_scale"], (int, float)) and options["nca_scale"] > 0):
        raise ValueError(f"podnet: nca_scale must be > 0 (1.0 in the reference), got {options['nca_scale']!r}")
