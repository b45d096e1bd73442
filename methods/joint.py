"""Joint: trains on every image of every class seen so far. An upper bound, not on the memory
axis; its memory is reported honestly as the whole training data it holds."""
from __future__ import annotations

from .base import Method, register


@register
class Joint(Method):
    name = "joint"
    uses_exemplars = False
    trains_on_all_data = True
