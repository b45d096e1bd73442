"""Training precision: fp32, or bf16 autocast around the backbones on CUDA with the heads in fp32.

The backbone convolutions are where bf16 pays (tensor cores, half the activation memory); the
classifier and auxiliary heads are tiny, and their logits feed softmax and distillation at
temperature T, where bf16's 8-bit mantissa would blur small differences. So the heads stay fp32:
IncrementalNet.forward (methods/networks.py) computes them with autocast off.
"""
from __future__ import annotations

PRECISIONS = ("fp32", "bf16")


def precision_problem(precision: str, device_type: str) -> str | None:
    """Why `precision` cannot train on `device_type`, or None when it can."""
    if precision not in PRECISIONS:
        return f"precision {precision!r} is not allowed; use one of {', '.join(PRECISIONS)}"
    if precision == "bf16" and device_type != "cuda":
        # On CPUs bf16 autocast measured ten times slower, and a record saying bf16 must mean bf16.
        return "precision bf16 needs CUDA; set training: {precision: fp32} or run with --gpus"
    return None
