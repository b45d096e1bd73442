"""Training precision: fp32, or bf16 autocast around the backbones on CUDA with the heads in fp32.

The backbone convolutions are where bf16 pays (tensor cores, half the activation memory); the
classifier and auxiliary heads are tiny, and their logits feed softmax and distillation at
temperature T, where bf16's 8-bit mantissa would blur small differences. So the heads stay fp32.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # config validation imports PRECISIONS; it needs no network code
    from methods.networks import IncrementalNet

PRECISIONS = ("fp32", "bf16")


def precision_problem(precision: str, device_type: str) -> str | None:
    """Why `precision` cannot train on `device_type`, or None when it can."""
    if precision not in PRECISIONS:
        return f"precision {precision!r} is not allowed; use one of {', '.join(PRECISIONS)}"
    if precision == "bf16" and device_type != "cuda":
        # On CPUs bf16 autocast measured ten times slower, and a record saying bf16 must mean bf16.
        return "precision bf16 needs CUDA; set training: {precision: fp32} or run with --gpus"
    return None


class Float32Linear(nn.Linear):
    """A linear head that computes in fp32 inside an autocast region (its input cast up)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return super().forward(features.float())


def keep_heads_fp32(network: IncrementalNet) -> None:
    """Make the classifier and auxiliary head of `network` Float32Linear, in place.

    The heads are re-created at every growth, so this runs after each. Swapping the class keeps the
    parameters, their state-dict keys and deep copies (the teacher) as they are, and needs no edit
    of the network's forward; torch.nn.utils.parametrize swaps a module's class the same way."""
    for head in (network.fc, network.aux_fc):
        if head is not None and type(head) is nn.Linear:
            head.__class__ = Float32Linear
