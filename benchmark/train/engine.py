"""The one incremental loop: for every task, grow, train its phases, adjust, select exemplars,
evaluate, audit.

A method supplies its network, its phases and losses and its hooks (methods/base.py); everything
that loops lives here.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch

from budgets.accounting import POLICIES, count_memory
from methods import Method, Phase, Task
from methods.base import MAIN_PHASE
from methods.exemplar_formats import ExemplarFormat
from methods.exemplars import EncodedExemplarMemory, ExemplarMemory, herding_order, new_memory, random_order
from methods.networks import IncrementalNet
from methods.storage import check_storage

from benchmark.train.augmentation import Augmentation
from benchmark.train.batches import BatchSource, Images, TensorSource, concat, select
from benchmark.train.evaluation import Accuracy, accuracy, class_means, extract, nme_predict
from benchmark.config.precision import precision_problem
from benchmark.config import experiment, profile
from benchmark.config.profile import Schedule

Log = Callable[[str], None]


@dataclass
class RunData:
    """A scenario's data on the run's device; labels are incremental (task t holds bounds[t]..bounds[t+1]-1)."""

    train: BatchSource
    test: BatchSource
    task_bounds: list[int]
    image_shape: tuple[int, int, int]
    augmentation: Augmentation

    @property
    def num_tasks(self) -> int:
        return len(self.task_bounds) - 1

    def task(self, index: int) -> Task:
        return Task(index, self.task_bounds[index], self.task_bounds[index + 1], self.num_tasks)

    def rows(self, source: BatchSource, low: int, high: int) -> torch.Tensor:
        return ((source.labels >= low) & (source.labels < high)).nonzero().flatten()


StreamKind = Literal["task", "class"]
# Each kind of stream has its own seeds. Task seeds keep the formula every recorded run trained with;
# class seeds sit 2^31 above them, so within a run no class seed meets a task seed, not even in the
# low 32 bits of a seed that torch's CPU generator keeps (|label - task| < 2^31). Changing a kind's
# seeds changes results: config/grid.py's revisions keep older records apart.
STREAM_OFFSETS: dict[str, int] = {"task": 0, "class": 2**31}


def stream_seed(kind: StreamKind, network_seed: int, index: int) -> int:
    """The seed of one random stream of a run: task `index`'s (kind "task": initialization of what
    the task grows, training order, augmentation) or class `index`'s (kind "class": random exemplar
    selection). One formula per kind, so that every stream is reproducible on its own."""
    return STREAM_OFFSETS[kind] + network_seed * 1000 + index


def uses_autocast(precision: str, device: torch.device) -> bool:
    """Whether a training step runs under bf16 autocast: precision "bf16" on CUDA (where the
    configuration allows it at all, benchmark.config.precision)."""
    return precision == "bf16" and device.type == "cuda"


def step_autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast around a training step's forward and loss (off unless `uses_autocast`)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_autocast(precision, device))


def fuses_sgd(device: torch.device) -> bool:
    return device.type == "cuda"  # the fused kernel exists for CUDA tensors only


def schedule_optimizer(parameters: Iterable[torch.nn.Parameter] | list[dict], schedule: Schedule,
                       device: torch.device) -> torch.optim.SGD:
    """The optimizer of one phase's schedule: SGD with its lr, momentum and weight decay (fused on
    CUDA). `parameters` may be parameter groups (methods/base.py `parameter_groups`): a group's
    "lr_scale" multiplies the schedule's lr, its "weight_decay" replaces the schedule's."""
    groups = list(parameters)
    if groups and isinstance(groups[0], dict):
        groups = [_optimizer_group(group, schedule) for group in groups]
    return torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum,
                           weight_decay=schedule.weight_decay, fused=fuses_sgd(device))


def _optimizer_group(group: dict, schedule: Schedule) -> dict:
    unknown = set(group) - {"params", "lr_scale", "weight_decay"}
    if unknown:
        raise ValueError(f"parameter group keys {sorted(unknown)} are not known; a group has params, "
                         "lr_scale (times the schedule's lr) and weight_decay")
    optimizer_group = {"params": list(group["params"]), "lr": schedule.lr * group.get("lr_scale", 1.0)}
    if "weight_decay" in group:
        optimizer_group["weight_decay"] = group["weight_decay"]
    return optimizer_group


class DivergedError(RuntimeError):
    """The training loss stopped being a finite number."""


@dataclass
class EngineSettings:
    schedules: list[Schedule]          # one per task: its main phase's
    exemplars: int                     # exemplar budget E
    # Defaults: the experiment file's and the profile's, declared there.
    selection: str = experiment.EXEMPLAR_SELECTION
    augment: bool = profile.AUGMENT
    eval_batch_size: int = profile.EVAL_BATCH_SIZE        # test and class-mean feature extraction
    network_seed: int = experiment.NETWORK_SEED
    precision: str = profile.PRECISION                    # "bf16": autocast around the backbones (CUDA only)
    herding_batch_size: int = profile.HERDING_BATCH_SIZE  # feature extraction for exemplar selection
    # Budget axes. Raw exemplars fill `exemplars` (a count); any other format fills the byte budget
    # `exemplar_byte_budget` with the encoded sizes (methods/exemplar_formats.py).
    exemplar_format: str = "raw"
    exemplar_byte_budget: int | None = None
    model_storage: str = "fp32"              # frozen blocks' dtype (methods/storage.py)
    storage_probe: tuple[str, ...] = ()      # dtypes whose conversion cost alone each task also measures
    # The schedule of each phase other than the main one, by name (the profile's `phases.<method>`).
    phase_schedules: dict[str, Schedule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_storage(self.model_storage)
        for storage in self.storage_probe:
            check_storage(storage)
        if self.storage_probe and self.model_storage != "fp32":
            raise ValueError(f"storage_probe {list(self.storage_probe)} measures converting an fp32 run's frozen "
                             f"modules, but this run stores them as {self.model_storage}; probe an fp32 run "
                             "(model_storage: fp32) or drop storage_probe")


@dataclass
class TaskResult:
    task: int
    classes_seen: int
    cnn: Accuracy
    nme: Accuracy | None
    exemplars_stored: int
    memory: dict[str, dict]
    train_seconds: float
    eval_seconds: float
    select_seconds: float
    epochs: list[dict] = field(default_factory=list)
    # {dtype: {"cnn_accuracy", "nme_accuracy"}}: this task's evaluation of the network with its frozen
    # modules stored in dtype (EngineSettings.storage_probe); empty when nothing was probed.
    storage_probe: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_record(self) -> dict:
        nan = float("nan")
        return {"task": self.task, "classes_seen": self.classes_seen,
                "cnn_accuracy": self.cnn.overall, "nme_accuracy": self.nme.overall if self.nme else nan,
                "cnn_accuracy_per_task": self.cnn.per_task,
                "nme_accuracy_per_task": self.nme.per_task if self.nme else [nan] * len(self.cnn.per_task),
                "exemplars_stored": self.exemplars_stored, "memory": self.memory,
                "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                "select_seconds": self.select_seconds, "epochs": self.epochs,
                **({"storage_probe": self.storage_probe} if self.storage_probe else {})}


class PhaseData:
    """What a method may read of the data when a phase starts (methods/base.py TaskData): the
    phase's training set, the exemplar memory, and the run's own normalization and augmentation."""

    def __init__(self, engine: "Engine", training_set: BatchSource, schedule: Schedule) -> None:
        self.engine, self.training_set, self.schedule = engine, training_set, schedule

    @property
    def memory_images(self) -> torch.Tensor:
        return self.engine.memory.images

    @property
    def memory_labels(self) -> torch.Tensor:
        return self.engine.memory.labels

    def class_images(self, label: int) -> torch.Tensor:
        """Every stored image of class `label` in the phase's training set (uint8, evaluation view)."""
        rows = (self.training_set.labels == label).nonzero().flatten()
        return self.training_set.images(rows)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.engine.data.augmentation.normalize(images)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        return self.engine.augment(images)

    def random(self) -> torch.Generator:
        return self.engine.generator

    @torch.no_grad()
    def features(self, network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """`network`'s features of uint8 `images` in eval mode (its mode restored after), in batches."""
        was_training = network.training
        network.eval()
        try:
            size = self.engine.settings.eval_batch_size
            return torch.cat([network(self.normalize(images[i:i + size]))["features"].float()
                              for i in range(0, len(images), size)]) if len(images) else images.new_zeros((0,))
        finally:
            network.train(was_training)


class Engine:
    def __init__(self, method: Method, data: RunData, settings: EngineSettings, log: Log = print) -> None:
        self.method, self.data, self.settings, self.log = method, data, settings, log
        self.device = data.train.labels.device
        problem = precision_problem(settings.precision, self.device.type)
        if problem:
            raise ValueError(problem)
        self.memory = self.new_memory()
        self.generator = torch.Generator(device=self.device)
        if self.device.type == "cuda":
            # Input shapes repeat (fixed batch size, one image size): the autotuned kernels pay back.
            torch.backends.cudnn.benchmark = True

    def new_memory(self) -> ExemplarMemory | EncodedExemplarMemory:
        """Raw exemplars under the count budget (as always); any other format under the byte budget.
        No exemplars (the method keeps none, or the shared first-task model) is an empty budget."""
        keeps = self.method.uses_exemplars and self.settings.exemplars != 0
        byte_budget = self.settings.exemplar_byte_budget if keeps else 0
        return new_memory(ExemplarFormat.parse(self.settings.exemplar_format),
                          self.settings.exemplars if self.method.uses_exemplars else 0, byte_budget, self.device)

    @property
    def autocast(self) -> bool:
        return uses_autocast(self.settings.precision, self.device)

    @property
    def fused_sgd(self) -> bool:
        return fuses_sgd(self.device)

    def speed_settings(self) -> dict[str, object]:
        """What this engine does for speed, for the run's origin. On CUDA "fp32" convolutions run
        in TF32 unless cuDNN's allow_tf32 is off (PyTorch's default is on): recorded too."""
        cuda = self.device.type == "cuda"
        return {"precision": self.settings.precision, "channels_last": self.data.augmentation.channels_last,
                "fused_sgd": self.fused_sgd, "cudnn_benchmark": cuda and torch.backends.cudnn.benchmark,
                "cudnn_tf32": cuda and torch.backends.cudnn.allow_tf32}

    # -- the loop -----------------------------------------------------------------------------
    def run(self, first_task_state: dict | None = None, on_task: Callable[[TaskResult], None] | None = None,
            start: int = 0) -> list[TaskResult]:
        """Learn tasks `start` .. last (a resumed run starts after its last checkpointed task)."""
        results = []
        for index in range(start, self.data.num_tasks):
            result = self.learn_task(self.data.task(index), first_task_state if index == 0 else None)
            results.append(result)
            if on_task:
                on_task(result)
        return results

    def learn_task(self, task: Task, first_task_state: dict | None = None) -> TaskResult:
        self.begin_task(task)
        start = time.perf_counter()
        epochs: list[dict] = []
        self.memory_updated = False
        if first_task_state is not None:
            self.load_first_task(task, first_task_state)
        else:
            epochs = self.train_phases(task)
        self.method.after_task(task)
        self.place()
        trained = time.perf_counter()
        if not self.memory_updated:
            self.update_memory(task)
        selected = time.perf_counter()
        cnn, nme = self.evaluate(task)
        evaluated = time.perf_counter()
        result = TaskResult(task.index, task.total_classes, cnn, nme, self.stored_images(task), self.audit(task),
                            trained - start, evaluated - selected, selected - trained, epochs,
                            self.probe_storage(task))
        nme_text = f", NME {nme.overall:.2f}%" if nme else ""
        self.log(f"task {task.index}: {task.total_classes} classes, CNN {cnn.overall:.2f}%{nme_text}, "
                 f"{result.exemplars_stored} images stored, train {result.train_seconds:.1f}s")
        return result

    def seed_task(self, task: Task) -> None:
        """Seed the task's stream: torch's global generator (what the task grows) and the engine's
        (training order, augmentation). Seeding per task makes a run's later tasks identical whether
        task 0 was trained or loaded, and whether the earlier tasks ran in this process or were
        restored from a checkpoint."""
        seed = stream_seed("task", self.settings.network_seed, task.index)
        torch.manual_seed(seed)
        self.generator.manual_seed(seed)

    def begin_task(self, task: Task) -> None:
        """What comes before a task's training: its seeding, then the method's growth."""
        self.seed_task(task)
        self.grow(task)

    def load_first_task(self, task: Task, state: dict) -> None:
        """The shared first-task model in place of task 0's training; the phases' structural hooks
        still run, so the method stands where training would have left it."""
        for phase in self.method.phases(task):
            self.method.begin_phase(task, phase)
            self.place()
            if phase.name == MAIN_PHASE:
                self.method.network.load_first_task_state(state)
            self.method.end_phase(task, phase)
            self.place()
        self.log(f"task {task.index}: loaded the shared first-task model")

    def replay(self, tasks: int, select_exemplars: bool = False) -> None:
        """The method's structure after learning tasks 0 .. `tasks` - 1, without training them: each
        task seeded and its structural hooks replayed (`Method.replay_task`: new blocks, heads,
        teacher, phases' models, frozen parts, dropped auxiliary head), with `select_exemplars` its
        exemplars picked too. A resumed run then loads the trained tensors into this structure."""
        for index in range(tasks):
            task = self.data.task(index)
            self.seed_task(task)
            self.method.replay_task(task, self.place)
            if select_exemplars:
                self.update_memory(task)

    def advance_to(self, index: int) -> Task:
        """Bring the method to the point where `learn_task` takes the first step of task `index`: the
        earlier tasks replayed (exemplars selected), task `index` begun, its first phase begun and
        prepared (what it reads of the data: GEM's memory, FOSTER's class weights). Nothing is
        trained, so the weights are the initial ones; a step costs the same on them (the measuring
        tools stand engines here)."""
        self.replay(index, select_exemplars=True)
        task = self.data.task(index)
        self.begin_task(task)
        self.memory_updated = False
        phase = self.method.phases(task)[0]
        self.method.begin_phase(task, phase)
        self.place()
        task_data, held_out = self.split_task_data(task)
        source = self.phase_source(task, phase, task_data, held_out)
        if len(source):
            self.method.prepare_phase(task, phase, PhaseData(self, source, self.schedule(task, phase)))
        return task

    def grow(self, task: Task) -> None:
        """The method's before-task step (new blocks, heads, teacher), then the new modules placed."""
        self.method.before_task(task)
        self.place()

    def place(self) -> None:
        """The method's modules placed like the old ones (after every structural hook, which may
        build or swap them): on the device, channels_last where the inputs are."""
        for network in (self.method.network, self.method.teacher):
            if network is None:
                continue
            network.to(self.device)
            if self.data.augmentation.channels_last:  # weights in the inputs' layout: no conversions
                network.to(memory_format=torch.channels_last)

    # -- training -----------------------------------------------------------------------------
    def train_phases(self, task: Task) -> list[dict]:
        """Every phase of the task, in order: its structure, its statistics, its epochs, its end.
        A "memory" phase trains on the exemplars selected for this task, so they are selected
        before it (and not again after the task)."""
        history: list[dict] = []
        task_data, held_out = self.split_task_data(task)
        for phase in self.method.phases(task):
            self.method.begin_phase(task, phase)
            self.place()
            if phase.data == "memory" and not self.memory_updated:
                self.update_memory(task)
                self.memory_updated = True
            source = self.phase_source(task, phase, task_data, held_out)
            if len(source):
                self.method.prepare_phase(task, phase, PhaseData(self, source, self.schedule(task, phase)))
                history += self.train(task, phase, source, self.schedule(task, phase))
            else:
                self.log(f"task {task.index} phase {phase.name}: no {phase.data} images, nothing to train")
            self.method.end_phase(task, phase)
            self.place()
        return history

    def phase_source(self, task: Task, phase: Phase, task_data: BatchSource, held_out: BatchSource) -> BatchSource:
        if phase.data == "task":
            return task_data
        if phase.data == "new":
            return select(self.data.train, self.data.rows(self.data.train, task.known_classes, task.total_classes))
        return held_out if phase.data == "held_out" else self.memory_source()

    def schedule(self, task: Task, phase: Phase) -> Schedule:
        if phase.name == MAIN_PHASE:
            return self.settings.schedules[task.index]
        if phase.name not in self.settings.phase_schedules:
            raise KeyError(f"{self.method.name}: phase {phase.name!r} has no schedule; give one in the profile "
                           f"or the experiment (training.phases.{self.method.name}.{phase.name})")
        return self.settings.phase_schedules[phase.name]

    def training_set(self, task: Task) -> BatchSource:
        train = self.data.train
        if self.method.trains_on_all_data:
            return select(train, self.data.rows(train, 0, task.total_classes))
        new = select(train, self.data.rows(train, task.known_classes, task.total_classes))
        if not self.method.uses_exemplars or not len(self.memory):
            return new
        return concat([new, self.memory_source()])

    def exemplar_count(self) -> int:
        """The exemplar budget in images: the planned count, or what a byte-budget memory holds."""
        return len(self.memory) if isinstance(self.memory, EncodedExemplarMemory) else self.memory.budget

    def memory_source(self) -> BatchSource:
        return TensorSource(self.memory.images, self.memory.labels)

    def split_task_data(self, task: Task) -> tuple[BatchSource, BatchSource]:
        """The task's training set, less the held-out split the method asks for (class-balanced: up
        to `held_out_per_class` images of every seen class, drawn with the run's generator, each
        class keeping at least one image to train on), and that split."""
        source = self.training_set(task)
        per_class = self.method.held_out_per_class(task, self.exemplar_count())
        if per_class <= 0:
            return source, select(source, source.labels[:0])
        held = []
        for label in range(task.total_classes):
            rows = (source.labels == label).nonzero().flatten()
            take = min(per_class, len(rows) - 1)
            if take > 0:
                shuffled = rows[torch.randperm(len(rows), generator=self.generator, device=self.device)]
                held.append(shuffled[:take])
        held_rows = torch.cat(held) if held else source.labels[:0]
        keep = torch.ones(len(source), dtype=torch.bool, device=self.device)
        keep[held_rows] = False
        return select(source, keep.nonzero().flatten()), select(source, held_rows.sort().values)

    def train(self, task: Task, phase: Phase, source: BatchSource, schedule: Schedule) -> list[dict]:
        optimizer = self.optimizer(phase, schedule)
        lr_steps = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(schedule.milestones), schedule.lr_decay)
        self.method.network.train()
        history = []
        named = "" if phase.name == MAIN_PHASE else f" phase {phase.name}"
        for epoch in range(schedule.epochs):
            started = time.perf_counter()
            loss_sum = self.train_epoch(task, phase, source, optimizer, schedule.batch_size)
            if not math.isfinite(loss_sum):
                where = ("first_task" if task.index == 0 else f"later_tasks.{self.method.name}") \
                    if phase.name == MAIN_PHASE else f"phases.{self.method.name}.{phase.name}"
                raise DivergedError(f"loss is {loss_sum} at task {task.index}{named} epoch {epoch + 1}; "
                                    f"lower the lr (training.{where}.lr, now {schedule.lr})")
            lr_steps.step()
            seconds = time.perf_counter() - started
            entry = {"epoch": epoch, "loss": loss_sum / len(source), "seconds": seconds,
                     "images_per_second": len(source) / seconds}
            history.append(entry if phase.name == MAIN_PHASE else {"phase": phase.name, **entry})
            self.log(f"task {task.index}{named} epoch {epoch + 1}/{schedule.epochs}: loss {entry['loss']:.4f}, "
                     f"{entry['images_per_second']:.0f} images/s")
        return history

    def optimizer(self, phase: Phase, schedule: Schedule) -> torch.optim.SGD:
        """A fresh optimizer per phase (as the reference runs): nothing of it outlives the phase."""
        return schedule_optimizer(self.method.phase_parameter_groups(phase), schedule, self.device)

    def train_epoch(self, task: Task, phase: Phase, source: BatchSource, optimizer: torch.optim.Optimizer,
                    batch_size: int) -> float:
        """The summed loss of one epoch; one host sync at its end (the float), none per step."""
        order = torch.randperm(len(source), generator=self.generator, device=self.device)
        total = torch.zeros((), device=self.device)
        # Without augmentation a step trains on the evaluation view (a fixed-size batch to normalize).
        for rows, images in source.batches(order, batch_size, training=self.settings.augment):
            x, labels = self.augment(images), source.labels[rows]
            # bf16 covers the backbones; the heads (IncrementalNet.forward) and so the losses stay fp32.
            with step_autocast(self.settings.precision, self.device):
                loss = self.method.phase_loss(task, phase, x, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.method.before_step(task, phase)
            optimizer.step()
            total += loss.detach().float() * len(rows)
        return float(total)

    def augment(self, images: Images) -> torch.Tensor:
        augmentation = self.data.augmentation
        return augmentation.train(images, self.generator) if self.settings.augment else augmentation.normalize(images)

    # -- exemplars ------------------------------------------------------------------------------
    def update_memory(self, task: Task) -> None:
        if not self.method.uses_exemplars or self.memory.budget == 0:
            return
        if isinstance(self.memory, EncodedExemplarMemory):
            self.fill_memory_by_bytes(task)
            return
        per_class = self.memory.per_class(task.total_classes)
        self.memory.shrink(per_class)
        train = self.data.train
        for label in range(task.known_classes, task.total_classes):
            rows = self.data.rows(train, label, label + 1)
            self.memory.add_class(label, train.images(rows[self.selection_order(train, rows, per_class, label)]))
        self.memory.check_budget()

    def fill_memory_by_bytes(self, task: Task) -> None:
        """Fill the byte budget with the same count m for every class (EncodedExemplarMemory.fill).

        Herding (or the random draw) orders the ORIGINAL images, before they are downsampled or
        encoded: the order is the method's choice of what to keep, the format only how it is kept.
        A prefix of a longer order is the shorter order, so the new classes' first `count` images are
        ordered and encoded, and `count` doubles until m falls short of it (or covers the classes)."""
        memory, train = self.memory, self.data.train
        rows = {label: self.data.rows(train, label, label + 1) for label in range(task.known_classes, task.total_classes)}
        largest = max(len(class_rows) for class_rows in rows.values())
        features: dict[int, torch.Tensor] = {}
        count = min(largest, self.first_candidate_count(task))
        while True:
            candidates = {label: memory.format.encode(train.images(class_rows[
                self.selection_order(train, class_rows, count, label, features)])) for label, class_rows in rows.items()}
            per_class = memory.per_class_fill(candidates)
            if per_class < count or count >= largest:
                break
            count = min(largest, 2 * count)
        memory.fill(candidates)

    def first_candidate_count(self, task: Task) -> int:
        """How many of each new class to order and encode first: one more than the budget's count at
        the stored images' mean size so far (for the first task: the stored shape's raw bytes, which
        JPEG undercuts), so that one round usually settles m."""
        memory = self.memory
        stored = len(memory)
        mean = memory.stored_bytes() / stored if stored else float(
            memory.format.fixed_image_bytes(self.data.image_shape) or
            ExemplarFormat(downsample=memory.format.downsample).fixed_image_bytes(self.data.image_shape))
        return int(memory.budget // (task.total_classes * mean)) + 1

    def selection_order(self, source: BatchSource, rows: torch.Tensor, count: int, label: int,
                        features: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The first `count` of class `label`'s rows in selection order; `features` (when given) keeps
        each class's herding features for a later, longer order of the same class."""
        if self.settings.selection == "random":
            # One stream per class: a shared seed would pick the same positions in every class.
            seed = stream_seed("class", self.settings.network_seed, label)
            return random_order(count, len(rows), torch.Generator().manual_seed(seed)).to(rows.device)
        if features is not None and label in features:
            return herding_order(features[label], count).to(rows.device)
        class_features, _ = extract(self.method.network, source, self.data.augmentation,
                                    self.settings.herding_batch_size, rows)
        if features is not None:
            features[label] = class_features
        return herding_order(class_features, count).to(rows.device)

    def stored_images(self, task: Task) -> int:
        """Images the method holds after this task: its exemplars, or for joint every image seen."""
        if self.method.trains_on_all_data:
            return len(self.data.rows(self.data.train, 0, task.total_classes))
        return len(self.memory)

    # -- evaluation and audit -----------------------------------------------------------------
    def evaluate(self, task: Task) -> tuple[Accuracy, Accuracy | None]:
        test = self.data.test
        rows = self.data.rows(test, 0, task.total_classes)
        bounds = self.data.task_bounds[: task.index + 2]
        features, logits = extract(self.method.network, test, self.data.augmentation,
                                   self.settings.eval_batch_size, rows)
        labels = test.labels[rows]
        cnn = accuracy(logits.argmax(dim=1), labels, bounds)
        means = self.nme_means(task)
        nme = None if means is None else accuracy(nme_predict(features, means), labels, bounds)
        return cnn, nme

    def probe_storage(self, task: Task) -> dict[str, dict[str, float]]:
        """The conversion-cost probe: for each dtype of `settings.storage_probe`, this task's CNN and NME
        accuracy of a copy of the network whose frozen modules are stored in that dtype (what a run
        with that storage holds now, with this run's exemplars): the precision's cost alone, apart
        from the exemplars a cheaper storage buys. The evaluation is `evaluate` itself (NME means from
        the copy's features of the same stored images); nothing here draws random numbers."""
        probed = {}
        for storage in self.settings.storage_probe:
            cnn, nme = self.evaluate_network(task, self.method.network.stored_as(storage))
            probed[storage] = {"cnn_accuracy": cnn.overall, "nme_accuracy": nme.overall if nme else float("nan")}
        return probed

    def evaluate_network(self, task: Task, network: IncrementalNet) -> tuple[Accuracy, Accuracy | None]:
        """`evaluate` with the method's network replaced by `network` for its duration."""
        kept = self.method.network
        self.method.network = network
        try:
            return self.evaluate(task)
        finally:
            self.method.network = kept

    def nme_means(self, task: Task) -> torch.Tensor | None:
        """Class means from the images the method holds; None when it holds none (Finetune)."""
        if self.method.trains_on_all_data:
            source = select(self.data.train, self.data.rows(self.data.train, 0, task.total_classes))
        elif len(self.memory):
            source = TensorSource(self.memory.images, self.memory.labels)
        else:
            return None
        features, _ = extract(self.method.network, source, self.data.augmentation, self.settings.eval_batch_size)
        return class_means(features, source.labels, task.total_classes)

    def audit(self, task: Task) -> dict[str, dict]:
        """Bytes actually held after this task, under both counting policies: the exemplar memory at
        what it really stores (raw pixels, or a format's encoded bytes, never its decoded working copy);
        Joint at every image it has seen."""
        stored = self.stored_images(task)
        network, teacher = self.method.network, self.method.teacher
        stored_bytes = None if self.method.trains_on_all_data else self.memory.stored_bytes()
        return {policy: count_memory(network, policy, stored, self.data.image_shape, teacher,
                                     stored_exemplar_bytes=stored_bytes).as_dict()
                for policy in POLICIES}
