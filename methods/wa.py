"""WA (Zhao et al., 2020): iCaRL-style distillation, then weight aligning after each task.

The loss weighs classification and distillation by the share of old classes,
(1 - lambda) CE + lambda KD with lambda = known / total, as in the WA paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Task, register
from .icarl import ICaRL
from .losses import align_weights


@register
class WA(ICaRL):
    name = "wa"

    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.network(images)["logits"]
        loss = F.cross_entropy(logits, labels)
        if self.teacher is None:
            return loss
        share_old = task.known_classes / task.total_classes
        return (1 - share_old) * loss + share_old * self.distillation(task, images, logits)

    def after_task(self, task: Task) -> None:
        if task.index > 0:
            align_weights(self.network.fc, task.known_classes)
