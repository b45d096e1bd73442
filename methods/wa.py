"""WA (Zhao et al., 2020): iCaRL-style distillation, then weight aligning after each task.

Two weightings of classification (CE) and distillation (KD) exist in the reference code:

- "old_share" (default): (1 - l) CE + l KD with l = known / total, the share of old classes, as
  in the WA paper and PyCIL since commit 716625e (2023-02-16, "add kd_lambda").
- "fixed": CE + kd_weight KD with kd_weight 2, PyCIL's models/wa.py before that commit, and so the
  code behind the MEMO paper's WA numbers (arXiv 2205.13218, May 2022). The `paper` profile
  selects it (method_options: {wa: {weighting: fixed}}).

Both use KD at temperature 2 (the inherited `temperature` option).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .base import Task, register
from .icarl import ICaRL, ICaRLOptions
from .losses import align_weights

Weighting = Literal["old_share", "fixed"]
WEIGHTINGS = typing.get_args(Weighting)


@dataclass(frozen=True)
class WAOptions(ICaRLOptions):
    weighting: Weighting = "old_share"  # of CE and KD, see above
    kd_weight: float = 2.0               # of KD under the "fixed" weighting


@register
class WA(ICaRL):
    name = "wa"
    options_type = WAOptions

    def __init__(self, backbone: str, options: dict[str, Any] | None = None, model_storage: str = "fp32") -> None:
        super().__init__(backbone, options, model_storage)
        _check_weighting(self.options["weighting"])

    @classmethod
    def resolve_options(cls, options: dict[str, Any], base_classes: int) -> dict[str, Any]:
        """Nothing depends on the scenario; checked here so a bad value fails when the grid is planned."""
        _check_weighting(options.get("weighting", cls.default_options["weighting"]))
        return dict(options)

    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.network(images)["logits"]
        loss = F.cross_entropy(logits, labels)
        if self.teacher is None:
            return loss
        kd = self.distillation(task, images, logits)
        if self.options["weighting"] == "fixed":
            return loss + self.options["kd_weight"] * kd
        share_old = task.known_classes / task.total_classes
        return (1 - share_old) * loss + share_old * kd

    def after_task(self, task: Task) -> None:
        if task.index > 0:
            align_weights(self.network.fc, task.known_classes)


def _check_weighting(value: Any) -> None:
    if value not in WEIGHTINGS:
        raise ValueError(f"wa: unknown weighting {value!r}; use one of {', '.join(WEIGHTINGS)} "
                         "('old_share': (1 - l) CE + l KD with l = known/total; 'fixed': CE + kd_weight KD)")
