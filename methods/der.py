"""DER (Yan et al., 2021): a new backbone per task initialized from the previous one, old ones
frozen, features concatenated into one classifier; an auxiliary head separates the new classes
from "old"; weight aligning after each task. No masking or pruning, as in the re-implementation
the MEMO paper compares against."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Method, Task, register
from .losses import align_weights, auxiliary_targets


@dataclass(frozen=True)
class DEROptions:
    aux_weight: float = 1.0  # of the auxiliary head's loss (new classes against "old")


@register
class DER(Method):
    name = "der"
    growth = "der"
    options_type = DEROptions

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        if task.index > 0:
            self.freeze_old()
            self.network.add_aux_head(task.new_classes)

    def freeze_old(self) -> None:
        self.network.freeze_old()

    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.network(images)
        loss = F.cross_entropy(out["logits"], labels)
        if "aux_logits" in out:
            aux = F.cross_entropy(out["aux_logits"], auxiliary_targets(labels, task.known_classes))
            loss = loss + self.options["aux_weight"] * aux
        return loss

    def after_task(self, task: Task) -> None:
        if task.index > 0:
            align_weights(self.network.fc, task.known_classes)
        # The auxiliary head only shapes training; it is dropped and never counted.
        self.network.drop_aux_head()
