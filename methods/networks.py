"""Incremental networks: one backbone (single), one backbone per task (DER), or a shared
generalized block with one specialized block per task (MEMO), all with one growing classifier.

Each network says which of its modules are backbones (`backbone_modules`), because that is
what the paper's memory accounting counts; everything else (classifier, BatchNorm buffers,
auxiliary head) is counted only by the strict policy.

A network is built with a `storage` (methods/storage.py): every module it freezes is converted to
that dtype when it is frozen, so what the accounting counts is what the run stores.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .backbones import Backbone, build_backbone, pool_features
from .storage import check_storage, store_module


def reference_linear(in_features: int, out_features: int) -> nn.Linear:
    """A linear layer initialized as the reference code's SimpleLinear (PyCIL convs/linears.py),
    which every classifier and auxiliary head there is: weights kaiming_uniform_ with the linear
    gain, bound sqrt(3 / in_features), and a zero bias. PyTorch's default draws the weights from a
    sqrt(3)-times narrower range and the bias at random."""
    fc = nn.Linear(in_features, out_features)
    nn.init.kaiming_uniform_(fc.weight, nonlinearity="linear")
    nn.init.zeros_(fc.bias)
    return fc


def expanded_classifier(old: nn.Linear | None, in_features: int, num_classes: int) -> nn.Linear:
    """A classifier for `num_classes` whose old rows (and old input columns) keep their weights.

    Everything else is freshly initialized, the old classes' weights on a new backbone's features
    included, as PyCIL's update_fc does (utils/inc_net.py, DERNet and AdaptiveNet)."""
    fc = reference_linear(in_features, num_classes)
    if old is not None:
        with torch.no_grad():
            fc.weight[: old.out_features, : old.in_features] = old.weight
            fc.bias[: old.out_features] = old.bias
    return fc


class IncrementalNet(nn.Module):
    """Base: a feature extractor that may grow per task, plus one classifier over all seen classes."""

    def __init__(self, storage: str = "fp32") -> None:
        super().__init__()
        self.storage = check_storage(storage)  # the dtype frozen modules are stored in
        self.fc: nn.Linear | None = None
        self.aux_fc: nn.Linear | None = None
        self.num_classes = 0
        self._frozen: list[nn.Module] = []

    def freeze(self, module: nn.Module) -> None:
        """Stop `module` learning and keep its BatchNorm statistics, also across later `train()` calls;
        from now on it is stored in the network's storage (converted here, the one place modules freeze)."""
        module.requires_grad_(False)
        module.eval()
        store_module(module, self.storage)
        if not any(module is m for m in self._frozen):
            self._frozen.append(module)

    def stored_as(self, storage: str) -> "IncrementalNet":
        """A deep copy whose frozen modules are stored in `storage`: the network a run with that storage
        holds at this point (the same modules frozen, converted). Used to measure the conversion's cost."""
        stored = copy.deepcopy(self)  # one deepcopy: `_frozen` of the copy refers to the copy's modules
        stored.storage = check_storage(storage)
        for module in stored._frozen:
            store_module(module, storage)
        return stored

    def train(self, mode: bool = True) -> "IncrementalNet":
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    # -- growth -------------------------------------------------------------------------------
    def add_task(self, new_classes: int) -> None:
        """Grow the extractor (if the architecture grows) and the classifier for a new task."""
        self._grow_extractor()
        self.num_classes += new_classes
        self.fc = expanded_classifier(self.fc, self.feature_dim, self.num_classes)

    def _grow_extractor(self) -> None:
        pass

    def add_aux_head(self, new_classes: int) -> None:
        """DER/MEMO's auxiliary head on the newest block: the new classes plus one 'old' label."""
        self.aux_fc = reference_linear(self.newest_dim, new_classes + 1)

    def drop_aux_head(self) -> None:
        self.aux_fc = None

    # -- inference ----------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        # Under bf16 autocast only the backbones run in bf16: the heads compute in fp32, because
        # their logits feed softmax and distillation at temperature T, where bf16's 8-bit mantissa
        # would blur small differences (benchmark/config/precision.py). Outside autocast this changes nothing.
        with torch.autocast(images.device.type, enabled=False):
            heads_input = features.float()
            out = {"features": features, "logits": self.fc(heads_input)}
            if self.aux_fc is not None:
                out["aux_logits"] = self.aux_fc(heads_input[:, -self.newest_dim:])
        return out

    # -- the shared first-task model ----------------------------------------------------------
    def first_task_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """After the first task: the one backbone's state and the classifier's, in a form every
        network kind can load (a single backbone and a DER/MEMO network are the same model then)."""
        return {"backbone": self.first_backbone_state(), "fc": self.fc.state_dict()}

    def load_first_task_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.load_first_backbone(state["backbone"])
        self.fc.load_state_dict(state["fc"])

    def first_backbone_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_first_backbone(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # -- accounting ---------------------------------------------------------------------------
    def backbone_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    @property
    def newest_dim(self) -> int:
        return self.feature_dim


class SingleNet(IncrementalNet):
    """One backbone for all tasks (Finetune, Replay, iCaRL, WA, Joint)."""

    def __init__(self, backbone: str, storage: str = "fp32") -> None:
        super().__init__(storage)
        self.backbone = build_backbone(backbone)

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


class DERNet(IncrementalNet):
    """DER: a new backbone per task, initialized from the previous one; features concatenated."""

    def __init__(self, backbone: str, storage: str = "fp32") -> None:
        super().__init__(storage)
        self.backbone_name = backbone
        self.backbones = nn.ModuleList()

    def _grow_extractor(self) -> None:
        grown = copy.deepcopy(self.backbones[-1]) if len(self.backbones) else build_backbone(self.backbone_name)
        self.backbones.append(grown)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(images) for b in self.backbones], dim=1)

    def freeze_old(self) -> None:
        """Old backbones stop learning and keep their BatchNorm statistics (eval mode)."""
        for old in self.backbones[:-1]:
            self.freeze(old)

    def first_backbone_state(self) -> dict[str, torch.Tensor]:
        return self.backbones[0].state_dict()

    def load_first_backbone(self, state: dict[str, torch.Tensor]) -> None:
        self.backbones[0].load_state_dict(state)

    def backbone_modules(self) -> list[nn.Module]:
        return list(self.backbones)

    @property
    def feature_dim(self) -> int:
        return sum(b.out_dim for b in self.backbones)

    @property
    def newest_dim(self) -> int:
        return self.backbones[-1].out_dim


class MEMONet(IncrementalNet):
    """MEMO: a shared generalized block and one specialized block (the last stage) per task."""

    def __init__(self, backbone: str, storage: str = "fp32") -> None:
        super().__init__(storage)
        template: Backbone = build_backbone(backbone)
        self.generalized = template.generalized
        self.specialized = nn.ModuleList()
        self._first_specialized: nn.Module | None = template.specialized
        self.block_dim = template.out_dim

    def _grow_extractor(self) -> None:
        if self._first_specialized is not None:
            grown, self._first_specialized = self._first_specialized, None
        else:
            grown = copy.deepcopy(self.specialized[-1])
        self.specialized.append(grown)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        shared = self.generalized(images)
        return torch.cat([pool_features(block(shared)) for block in self.specialized], dim=1)

    def freeze_old(self, train_base: bool) -> None:
        for old in self.specialized[:-1]:
            self.freeze(old)
        if not train_base:
            self.freeze(self.generalized)

    def first_backbone_state(self) -> dict[str, torch.Tensor]:
        state = {f"generalized.{k}": v for k, v in self.generalized.state_dict().items()}
        state.update({f"specialized.{k}": v for k, v in self.specialized[0].state_dict().items()})
        return state

    def load_first_backbone(self, state: dict[str, torch.Tensor]) -> None:
        """Both parts, the last stage included: the reference code silently skipped the latter."""
        self.generalized.load_state_dict(_part(state, "generalized."))
        self.specialized[0].load_state_dict(_part(state, "specialized."))

    def backbone_modules(self) -> list[nn.Module]:
        return [self.generalized, *self.specialized]

    @property
    def feature_dim(self) -> int:
        return self.block_dim * len(self.specialized)

    @property
    def newest_dim(self) -> int:
        return self.block_dim


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


NETWORKS: dict[str, type[IncrementalNet]] = {"single": SingleNet, "der": DERNet, "memo": MEMONet}


def build_network(growth: str, backbone: str, storage: str = "fp32") -> IncrementalNet:
    """The network of a growth kind; `storage` is the dtype its frozen modules are stored in."""
    if growth not in NETWORKS:
        raise KeyError(f"unknown network growth {growth!r}; known: {', '.join(NETWORKS)}")
    return NETWORKS[growth](backbone, storage)
