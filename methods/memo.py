"""MEMO (Zhou et al., ICLR 2023): a shared generalized block plus one specialized block (the
last stage) per task; otherwise DER's recipe (auxiliary loss, weight aligning).

`train_base` keeps the generalized block trainable after the first task. The paper trains it
when the first task is small (B0 scenarios) and freezes it when it is large (B50): the authors'
README runs B0Inc10 with `--train_base`, and the flag is off unless given (main_memo.py,
`action='store_true'`); PyCIL's exps/memo.json (B0Inc10) sets it true. The default "auto" is
resolved per scenario by `resolve_options`: true for B0, false when the first task is a base
task (B > 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .base import Task, register
from .der import DER, DEROptions


@dataclass(frozen=True)
class MEMOOptions(DEROptions):
    train_base: bool | Literal["auto"] = "auto"  # "auto": true for B0 scenarios, false with a base task


@register
class MEMO(DER):
    name = "memo"
    growth = "memo"
    options_type = MEMOOptions

    def __init__(self, backbone: str, options: dict[str, Any] | None = None, model_storage: str = "fp32") -> None:
        super().__init__(backbone, options, model_storage)
        _check_train_base(self.options["train_base"])

    @classmethod
    def resolve_options(cls, options: dict[str, Any], base_classes: int) -> dict[str, Any]:
        """train_base "auto" (or absent) becomes `base_classes == 0`; true/false stay as given."""
        train_base = options.get("train_base", cls.default_options["train_base"])
        _check_train_base(train_base)
        if train_base == "auto":
            train_base = base_classes == 0
        return {**options, "train_base": train_base}

    def before_task(self, task: Task) -> None:
        if self.options["train_base"] == "auto":  # checked before any training, not at task 1
            raise ValueError("memo: option train_base is 'auto', which depends on the scenario; resolve it "
                             "with MEMO.resolve_options(options, base_classes) (the grid does) or pass true/false")
        super().before_task(task)

    def freeze_old(self) -> None:
        self.network.freeze_old(train_base=self.options["train_base"])


def _check_train_base(value: Any) -> None:
    # `is` comparisons: 1 and 0 would pass an `in` test against True/False.
    if not any(value is allowed for allowed in (True, False)) and value != "auto":
        raise ValueError(f"memo: train_base must be true, false or 'auto', got {value!r}")
