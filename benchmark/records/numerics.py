"""What sets a run's numerics, as one comparable thing: the same code, data and seeds give the same
floats only under the same instruction set, math libraries, thread count and (on CUDA) card and
TF32/cuDNN settings. Recorded in every run's origin (`origin["numerics"]`) and in every checkpoint,
so that a run resumed under other numerics says so (`changes`).

The oneDNN and MKL versions come from `torch.__config__.show()`, the only place torch names them;
`build_versions` parses that text and gives None for what it does not find.

`run_threads` keeps the thread count of a CPU run fixed (docs/choices.md, "Threads per run").
"""
from __future__ import annotations

import re
from typing import Any

import torch

_ONEDNN = re.compile(r"(?:MKL-DNN|oneDNN)\s+v?(\d+(?:\.\d+)+)")
_MKL = re.compile(r"Math Kernel Library Version\s+(\d+(?:\.\d+)*)")


def run_threads(device: str, slot_threads: int, cpu_threads: int) -> int:
    """The torch threads a run (or first-task model) trains with: on the CPU always the run's own
    `cpu_threads` (the profile's setting, 1 by default), so that a run's floats do not depend on
    --workers, the backend or the machine's core count (summation order changes with the thread
    count, and with it the accuracies: 33.9 % vs 35.1 % on a first task at 1 and 2 threads); on
    CUDA the slot's share of the cores, which only feeds the GPU (a slot of 0 or less: torch's own
    default)."""
    if str(device).startswith("cpu"):
        return cpu_threads
    return slot_threads


def build_versions(config: str) -> dict[str, str | None]:
    """{"onednn": ..., "mkl": ...} from the text of `torch.__config__.show()` (None where absent)."""
    onednn, mkl = _ONEDNN.search(config), _MKL.search(config)
    return {"onednn": onednn.group(1) if onednn else None, "mkl": mkl.group(1) if mkl else None}


def numerics(device: torch.device | str | None) -> dict[str, Any]:
    """What sets the floats of a run in this process on `device` (None or unknown: the CPU part only)."""
    try:
        device = torch.device(device) if device is not None else None
    except (RuntimeError, TypeError):
        device = None
    try:
        config = torch.__config__.show()
    except Exception:  # never let a provenance detail stop a record being written
        config = ""
    found = {"torch": str(torch.__version__), "cpu_capability": _cpu_capability(), **build_versions(config),
             "threads": torch.get_num_threads()}
    if device is not None and device.type == "cuda":
        found |= _cuda(device)
    return found


def changes(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """What differs between two `numerics` results, one "key: before -> now" line each; [] when
    `before` is None (a checkpoint written before numerics were recorded: nothing to compare)."""
    if before is None:
        return []
    return [f"{key}: {before.get(key)} -> {now.get(key)}" for key in sorted(set(before) | set(now))
            if before.get(key) != now.get(key)]


def _cpu_capability() -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return None


def _cuda(device: torch.device) -> dict[str, Any]:
    try:
        card = torch.cuda.get_device_name(device)
    except Exception:  # a broken CUDA context must not stop its failure being recorded
        card = None
    return {"card": card, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}
