"""Finetune: no exemplars; later tasks train on the new classes' logits only. The lower bound."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method, Task, register


@register
class Finetune(Method):
    name = "finetune"
    uses_exemplars = False

    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.network(images)["logits"][:, task.known_classes:]
        return F.cross_entropy(logits, labels - task.known_classes)
