"""iCaRL (Rebuffi et al., 2017): cross-entropy over all seen classes plus distillation from the
frozen previous model on the old classes' logits; evaluated with NME as in the original."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Method, Task, register
from .losses import distillation_loss, frozen_copy


@dataclass(frozen=True)
class ICaRLOptions:
    temperature: float = 2.0  # of the distillation softmax (the reference code's T)


@register
class ICaRL(Method):
    name = "icarl"
    keeps_teacher = True
    options_type = ICaRLOptions

    def before_task(self, task: Task) -> None:
        if task.index > 0:
            self.teacher = frozen_copy(self.network, self.model_storage)
        super().before_task(task)

    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.network(images)["logits"]
        loss = F.cross_entropy(logits, labels)
        if self.teacher is not None:
            loss = loss + self.distillation(task, images, logits)
        return loss

    def distillation(self, task: Task, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            old_logits = self.teacher(images)["logits"]
        return distillation_loss(logits[:, :task.known_classes], old_logits, self.options["temperature"])
