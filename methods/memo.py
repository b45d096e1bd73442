"""MEMO (Zhou et al., ICLR 2023): a shared generalized block plus one specialized block (the
last stage) per task; otherwise DER's recipe (auxiliary loss, weight aligning).

`train_base` keeps the generalized block trainable after the first task; the paper does so
when the first task has few classes (B0) and freezes it when it has many (B50).
"""
from __future__ import annotations

from .base import register
from .der import DER


@register
class MEMO(DER):
    name = "memo"
    growth = "memo"
    default_options = {"aux_weight": 1.0, "train_base": True}

    def freeze_old(self) -> None:
        self.network.freeze_old(train_base=self.options["train_base"])
