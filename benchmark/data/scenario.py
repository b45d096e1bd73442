"""Class-incremental scenarios: the class order and how it is cut into tasks (PyCIL's conventions)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_PATTERN = re.compile(r"\s*b(\d+)[\s_-]*inc(\d+)\s*", re.IGNORECASE)


def class_order(num_classes: int, seed: int | None = 1993) -> np.ndarray:
    """PyCIL's class order: np.random.seed(seed); np.random.permutation(num_classes).

    A private RandomState with the same seed yields the identical permutation without resetting
    NumPy's global generator behind the caller's back. seed None keeps the natural order.
    """
    if seed is None:
        return np.arange(num_classes)
    return np.random.RandomState(seed).permutation(num_classes)


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


@dataclass(frozen=True)
class Scenario:
    base: int  # classes in the first task; 0 means the first task is an ordinary increment
    increment: int  # classes in every later task

    def __post_init__(self) -> None:
        if self.base < 0 or self.increment < 1:
            raise ValueError(f"need base >= 0 and increment >= 1, got base={self.base}, increment={self.increment}")

    @classmethod
    def parse(cls, text: str) -> "Scenario":
        """'B0Inc10' -> Scenario(0, 10); case-insensitive."""
        match = _PATTERN.fullmatch(text)
        if not match:
            raise ValueError(
                f"cannot parse scenario {text!r}: expected 'B<base>Inc<increment>', "
                "e.g. 'B0Inc10' (10 tasks of 10 classes) or 'B50Inc5' (50 classes, then tasks of 5)"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def name(self) -> str:
        return f"B{self.base}Inc{self.increment}"

    def task_sizes(self, num_classes: int) -> list[int]:
        """Classes per task: B0IncK -> [K]*(C/K); BmIncK -> [m] + [K]*((C-m)/K). Must divide exactly."""
        if self.base > num_classes:
            raise ValueError(f"{self.name}: base {self.base} exceeds the {num_classes} classes of the data set")
        rest = num_classes - self.base
        if rest % self.increment:
            after = f"the {rest} classes after the base task of {self.base}" if self.base else f"{num_classes} classes"
            valid = ", ".join(map(str, _divisors(rest)))
            raise ValueError(
                f"{self.name} on {num_classes} classes: {after} do not divide into tasks of {self.increment} "
                f"({rest} % {self.increment} = {rest % self.increment}); valid increments: {valid}"
            )
        head = [self.base] if self.base else []
        return head + [self.increment] * (rest // self.increment)

    def num_tasks(self, num_classes: int) -> int:
        return len(self.task_sizes(num_classes))


def split_tasks(order: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Original class ids of each task: consecutive slices of `order`."""
    if sum(sizes) != len(order):
        raise ValueError(f"task sizes {sizes} sum to {sum(sizes)}, but the class order has {len(order)} classes")
    bounds = np.cumsum([0, *sizes])
    return [np.asarray(order[start:end]).copy() for start, end in zip(bounds[:-1], bounds[1:])]


def incremental_labels(order: np.ndarray) -> np.ndarray:
    """mapping[original label] = position in `order`, so task 1's classes become 0..k-1 (as PyCIL does)."""
    order = np.asarray(order)
    if not np.array_equal(np.sort(order), np.arange(len(order))):
        raise ValueError(f"class order must be a permutation of 0..{len(order) - 1}")
    mapping = np.empty(len(order), dtype=np.int64)
    mapping[order] = np.arange(len(order))
    return mapping
