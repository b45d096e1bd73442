"""Loss pieces shared by several methods."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .storage import store_module


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge distillation as iCaRL/WA use it: soft cross-entropy at temperature T, batch mean."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.softmax(teacher_logits / temperature, dim=1)
    return -(teacher * log_student).sum(dim=1).mean()


def auxiliary_targets(labels: torch.Tensor, known_classes: int) -> torch.Tensor:
    """DER/MEMO auxiliary labels: every old class becomes 0, new class k becomes k - known + 1."""
    return torch.where(labels >= known_classes, labels - known_classes + 1, torch.zeros_like(labels))


@torch.no_grad()
def align_weights(fc: nn.Linear, known_classes: int) -> float:
    """Weight aligning (Zhao et al., 2020): rescale new classes' rows to the old rows' mean norm.

    Returns the factor applied, gamma = mean ||w_old|| / mean ||w_new||.
    """
    norms = fc.weight.norm(dim=1)
    gamma = norms[:known_classes].mean() / norms[known_classes:].mean()
    fc.weight[known_classes:] *= gamma
    # On the meta device (the planner replays methods there to count them) there is no value to return.
    return float("nan") if gamma.is_meta else float(gamma)


def frozen_copy(module: nn.Module, storage: str = "fp32") -> nn.Module:
    """A teacher: an eval-mode copy that never trains, stored in `storage` (methods/storage.py)."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    store_module(teacher, storage)
    return teacher.eval()
