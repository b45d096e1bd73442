"""Class-incremental metrics (docs/protocol.md section 4); pure numpy so the training engine can use them.

Units: accuracies are in percent (0-100) everywhere, except the area under the accuracy-memory
curve, which uses accuracy as a fraction (0-1) against memory in MB (2^20 bytes, the one
definition is budgets.accounting.MB), as the MEMO paper does. `HIGHER_IS_BETTER` says, for every
summary metric, which direction is an improvement.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Keyed by the metric names used in the report's column names (after the cnn_/nme_ prefix).
HIGHER_IS_BETTER: dict[str, bool] = {
    "average_accuracy": True,
    "last_accuracy": True,
    "forgetting": False,  # accuracy lost on old tasks
    "auc_average": True,
    "auc_last": True,
    "apm_start": True,  # accuracy per MB: more accuracy for the same memory
    "apm_end": True,
}


def _as_curve(values: Sequence[float], name: str) -> np.ndarray:
    """A non-empty, finite 1-D float array, or a ValueError naming `name`."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def average_incremental_accuracy(curve: Sequence[float]) -> float:
    """Mean of A_1..A_B, the accuracy (%) after each task on all classes seen (first task included).

    Higher is better.
    """
    return float(_as_curve(curve, "curve").mean())


def last_accuracy(curve: Sequence[float]) -> float:
    """A_B: the accuracy (%) after the last task on all classes. Higher is better."""
    return float(_as_curve(curve, "curve")[-1])


def accuracy_matrix(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Stack per-task rows (row b has b+1 entries) into a square matrix, NaN above the diagonal.

    This is how the run record stores it (`*_accuracy_per_task` of each task).
    """
    size = len(rows)
    matrix = np.full((size, size), np.nan)
    for b, row in enumerate(rows):
        if len(row) != b + 1:
            raise ValueError(f"row {b} must have {b + 1} entries (tasks 0..{b}), got {len(row)}")
        matrix[b, : b + 1] = row
    return matrix


def forgetting(acc_matrix: np.ndarray) -> float:
    """Mean over old tasks of (best earlier accuracy on the task - final accuracy on it), in points.

    `acc_matrix[b, j]` is the accuracy (%) after task b on the classes of task j, NaN where j > b.
    For each old task j < B-1 the best is taken over b in [j, B-2], i.e. before the last task; the
    value is negative when a task ends better than it ever was (backward transfer). With one task
    there is nothing old to forget: NaN. Lower is better.
    """
    matrix = np.asarray(acc_matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"acc_matrix must be a non-empty square matrix, got shape {matrix.shape}")
    num_tasks = matrix.shape[0]
    if num_tasks == 1:
        return float("nan")
    lower = matrix[np.tril_indices(num_tasks)]
    if not np.all(np.isfinite(lower)):
        raise ValueError("acc_matrix must be finite on and below the diagonal (j <= b)")
    best_before_last = [matrix[j : num_tasks - 1, j].max() for j in range(num_tasks - 1)]
    final = matrix[num_tasks - 1, : num_tasks - 1]
    return float(np.mean(np.asarray(best_before_last) - final))


def area_under_curve(memory_mb: Sequence[float], accuracy_percent: Sequence[float]) -> float:
    """AUC-A / AUC-L: trapezoid area of accuracy (as a fraction) against memory (MB).

    Integrates over the actual budget points from the smallest to the largest memory, not
    normalized by the memory range, as the paper does (a flat 27.1 % from 7.6 to 23.5 MB gives
    0.271 x 15.9 = 4.3089). Points are sorted by memory first; fewer than two points or two points
    at the same memory are errors, because the area would be zero or ill-defined. Higher is better.
    """
    memory = _as_curve(memory_mb, "memory_mb")
    accuracy = _as_curve(accuracy_percent, "accuracy_percent") / 100.0
    if memory.size != accuracy.size:
        raise ValueError(f"{memory.size} memory values but {accuracy.size} accuracies")
    if memory.size < 2:
        raise ValueError("area_under_curve needs at least 2 budget points")
    order = np.argsort(memory, kind="stable")
    memory, accuracy = memory[order], accuracy[order]
    if np.any(np.diff(memory) == 0):
        raise ValueError(f"duplicate memory values: {memory.tolist()}")
    widths = np.diff(memory)
    heights = (accuracy[1:] + accuracy[:-1]) / 2.0
    return float(np.sum(widths * heights))


def accuracy_per_memory(accuracy_percent: float, total_mb: float) -> float:
    """APM: accuracy (%) per MB of total memory (model + exemplars). Higher is better."""
    if not np.isfinite(total_mb) or total_mb <= 0:
        raise ValueError(f"total_mb must be a positive number, got {total_mb}")
    return float(accuracy_percent) / float(total_mb)
