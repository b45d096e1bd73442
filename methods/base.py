"""The method interface: a method says what its network is, what its loss is, and what
happens before and after a task. The training engine owns every loop (tasks, epochs,
batches, evaluation); a method writes none.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .networks import IncrementalNet, build_network
from .registry import Registry
from .storage import check_storage


@dataclass(frozen=True)
class Task:
    """What a method needs to know about the task being learned."""

    index: int           # 0-based
    known_classes: int   # classes learned before this task (their labels are 0 .. known - 1)
    total_classes: int   # classes after this task (this task's labels are known .. total - 1)
    num_tasks: int

    @property
    def new_classes(self) -> int:
        return self.total_classes - self.known_classes


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


class Method:
    """Base class. Subclasses set the traits below and override the hooks they need."""

    name: ClassVar[str] = ""
    growth: ClassVar[str] = "single"        # network kind: "single", "der" or "memo"
    uses_exemplars: ClassVar[bool] = True   # keeps an exemplar buffer and trains on it
    keeps_teacher: ClassVar[bool] = False   # holds a frozen copy of the previous model
    trains_on_all_data: ClassVar[bool] = False  # joint: sees every image of every seen class
    # The options: a frozen dataclass whose fields are their names, types and defaults (see
    # methods/icarl.py), which the experiment schema checks. default_options follows from it; a
    # method that sets only default_options gets options of any type.
    options_type: ClassVar[type] = NoOptions
    default_options: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "options_type" in cls.__dict__:
            cls.default_options = {f.name: f.default for f in fields(cls.options_type) if f.default is not MISSING}
        elif "default_options" in cls.__dict__:
            cls.options_type = make_dataclass(f"{cls.__name__}Options", [
                (name, Any, field(default_factory=lambda value=value: value)) for name, value in cls.default_options.items()],
                frozen=True)

    @classmethod
    def grows(cls) -> bool:
        """Whether the network adds a block per task (DER, MEMO): its size and step cost rise with the task."""
        return cls.growth != "single"

    def __init__(self, backbone: str, options: dict[str, Any] | None = None, model_storage: str = "fp32") -> None:
        unknown = set(options or {}) - set(self.default_options)
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for method {self.name!r}; "
                             f"known: {sorted(self.default_options) or 'none'}")
        self.options = {**self.default_options, **(options or {})}
        # The dtype of what the method freezes and never trains again (methods/storage.py): the
        # network converts the modules it freezes, a teacher keeper its teacher copy.
        self.model_storage = check_storage(model_storage)
        self.network: IncrementalNet = build_network(self.growth, backbone, model_storage)
        self.teacher: IncrementalNet | None = None

    @classmethod
    def resolve_options(cls, options: dict[str, Any], base_classes: int) -> dict[str, Any]:
        """The options with every scenario-dependent value ("auto") made concrete.

        Called when the grid is expanded, where the scenario is known (`base_classes` is its B,
        0 for B0 scenarios), so that what a run trains with is what its identity records. The
        default has nothing to resolve; a method whose defaults depend on the scenario overrides it.
        """
        return dict(options)

    # -- hooks --------------------------------------------------------------------------------
    def before_task(self, task: Task) -> None:
        """Grow the network for the new classes. Called before the task's training."""
        self.network.add_task(task.new_classes)

    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss of one batch; the default is cross-entropy over all seen classes."""
        return F.cross_entropy(self.network(images)["logits"], labels)

    def after_task(self, task: Task) -> None:
        """Called after the task's training, before exemplar selection and evaluation."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.network.parameters() if p.requires_grad]


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: registers a Method subclass under its `name`, checking the base class."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
        raise TypeError(f"{cls!r} must subclass methods.base.Method and set a name")
    METHODS.add(cls.name, cls)
    return cls
