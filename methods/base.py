"""The method interface: a method says what its network is, what its loss is, and what
happens before and after a task. The training engine owns every loop (tasks, phases, epochs,
batches, evaluation); a method writes none.

A task is learned in phases (`Method.phases`): by default one, "train", on the task's new data
plus the exemplars. A method that trains more than once per task (BiC's bias correction, FOSTER's
compression, PODNet's balanced fine-tuning) lists more, each with its data, trainable parameter
groups (per-group learning rates) and loss; its schedule comes from the profile.

The hooks, in the order the engine calls them for a task:

    before_task(task)                     structure: grow the network, take a teacher
    for phase in phases(task):
        begin_phase(task, phase)          structure: build or freeze what the phase trains
        prepare_phase(task, phase, data)  statistics: may read data (class means, a transport plan)
        for every step:  loss(...) -> backward -> before_step(task, phase) -> optimizer step
        end_phase(task, phase)            structure or values: swap the model, align weights
    after_task(task)                      structure or values

A resumed run, and the planner counting a method's final size, replay the structural hooks
(before_task, begin_phase, end_phase, after_task) without data; `prepare_phase` runs only when
the phase trains. So whatever a later task depends on lives in the network's or teacher's tensors,
which the checkpoint holds.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any, Callable, ClassVar, Literal, Protocol

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


PhaseData = Literal["task", "new", "memory", "held_out"]
PHASE_DATA: tuple[str, ...] = ("task", "new", "memory", "held_out")
MAIN_PHASE = "train"


@dataclass(frozen=True)
class Phase:
    """One training pass of a task.

    `data`: "task", the task's new images plus the exemplars, less any held-out split; "new", the
    new images only (the exemplars stay readable in `prepare_phase`: GEM); "memory", the
    exemplar memory after this task's selection (class-balanced: PODNet's fine-tuning); "held_out",
    the split the task set aside (`Method.held_out_per_class`; BiC's bias correction). `loss` and
    `parameter_groups` default to the method's `loss` and `parameter_groups`. The main phase ("train")
    trains with the task's schedule; any other phase with the profile's schedule for
    `<method>.<name>` (benchmark/config/profile.py)."""

    name: str = MAIN_PHASE
    data: PhaseData = "task"
    loss: Callable[["Task", torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    parameter_groups: Callable[[], list[dict[str, Any]]] | None = None

    def __post_init__(self) -> None:
        if self.data not in PHASE_DATA:
            raise ValueError(f"phase {self.name!r}: data {self.data!r} is not one of {', '.join(PHASE_DATA)}")


class TaskData(Protocol):
    """What `prepare_phase` and `before_step` may read of the run's data (the engine provides it).

    Images come as uint8 batches of the evaluation view; `normalize` makes them network inputs
    and `augment` training inputs (with the run's generator, so a resumed run replays them)."""

    training_set: Any            # the phase's BatchSource: .labels, .images(rows), len()
    schedule: Any                # the phase's Schedule: .epochs, .batch_size, .lr, ...
    memory_images: torch.Tensor  # the exemplar memory as held now (uint8), and its labels
    memory_labels: torch.Tensor

    def features(self, network: nn.Module, images: torch.Tensor) -> torch.Tensor: ...
    def class_images(self, label: int) -> torch.Tensor: ...
    def normalize(self, images: torch.Tensor) -> torch.Tensor: ...
    def augment(self, images: torch.Tensor) -> torch.Tensor: ...
    def random(self) -> torch.Generator: ...


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
    # Whether the first task is plain cross-entropy on the growth kind's network, the model every
    # such method shares (benchmark/train/runner.py). A method with its own first task (a cosine
    # classifier, its own loss) sets False and trains it in each run.
    shares_first_task: ClassVar[bool] = True
    # The phases the method may train after its main one, by name: each gets a schedule from the
    # profile (`phases.<method>.<name>`), which the run's identity records.
    extra_phases: ClassVar[tuple[str, ...]] = ()
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
        self.backbone_name = backbone
        self.network: IncrementalNet = self.build_network(backbone)
        self.teacher: IncrementalNet | None = None

    def build_network(self, backbone: str) -> IncrementalNet:
        """The method's network before the first task; the default is its growth kind's."""
        return build_network(self.growth, backbone, self.model_storage)

    @classmethod
    def kept_blocks(cls, num_tasks: int, options: dict[str, Any]) -> int:
        """Backbones (or specialized blocks) the method keeps after `num_tasks` tasks, for the plan's
        tables: one per task for a growing method, else one."""
        return num_tasks if cls.grows() else 1

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

    # -- phases -------------------------------------------------------------------------------
    def phases(self, task: Task) -> list[Phase]:
        """The task's training phases, in order; the default is the one main phase."""
        return [Phase()]

    def held_out_per_class(self, task: Task, exemplars: int) -> int:
        """Images per class the "task" data sets aside for a "held_out" phase (0: none); `exemplars`
        is the run's exemplar budget E in images (for a byte-budget format, the images it holds)."""
        return 0

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: dicts with "params" and optionally "lr_scale" (times the
        schedule's lr) or "weight_decay"; the default is one group of every trainable parameter."""
        return [{"params": self.trainable_parameters()}]

    def begin_phase(self, task: Task, phase: Phase) -> None:
        """Structure the phase needs (a student network, frozen parts). Replayed on resume."""

    def prepare_phase(self, task: Task, phase: Phase, data: TaskData) -> None:
        """Statistics the phase needs from the data; called only when the phase trains."""

    def before_step(self, task: Task, phase: Phase) -> None:
        """Between backward and the optimizer step: the gradients may be changed here (GEM)."""

    def end_phase(self, task: Task, phase: Phase) -> None:
        """After the phase's training: a model swap or a weight change. Replayed on resume."""

    def phase_loss(self, task: Task, phase: Phase, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (phase.loss or self.loss)(task, images, labels)

    def phase_parameter_groups(self, phase: Phase) -> list[dict[str, Any]]:
        return (phase.parameter_groups or self.parameter_groups)()

    def replay_task(self, task: Task, place: Callable[[], None] = lambda: None) -> None:
        """The task's structural hooks without training (a resumed run; the planner's count);
        `place` puts what a hook built where the run's tensors live."""
        self.before_task(task)
        place()
        for phase in self.phases(task):
            self.begin_phase(task, phase)
            place()
            self.end_phase(task, phase)
            place()
        self.after_task(task)
        place()


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: registers a Method subclass under its `name`, checking the base class."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
        raise TypeError(f"{cls!r} must subclass methods.base.Method and set a name")
    METHODS.add(cls.name, cls)
    return cls
