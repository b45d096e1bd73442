"""Timed training steps, shared by the speed benchmark (benchmark.tools.speed), the device check
(benchmark.tools.check) and its packing and projection parts: engines standing at a given task, cells
that time their steps, matmul peaks and FLOP counts.

Timing: warm-up steps are excluded. On CPUs the cells of one measurement take their steps in
turn, one step each per round, so a busy spell on a shared machine hits them all alike, and a
cell's step time is the median of its steps. On CUDA each cell runs its steps back to back between
two synchronizations (per-step synchronization would hide the launch overlap) and the time is
their mean.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from budgets.planner import ANCHOR_EXEMPLARS
from methods import METHODS, Method
from methods.backbones import build_backbone

from benchmark.train.augmentation import augmentation_for
from benchmark.train.batches import TensorSource, select
from benchmark.config.experiment import parse_experiment
from benchmark.config.profile import Schedule
from benchmark.data import DATASETS, Scenario
from benchmark.train.engine import Engine, RunData, schedule_optimizer, step_autocast
from benchmark.config.grid import Run, expand
from benchmark.train.runner import engine_settings, new_engine
from methods import Phase

MAIN = Phase()  # the main phase: the task's own schedule

METHOD_NAMES = tuple(METHODS.names())
PEAK_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Per-step durations: stamped after every optimizer step on CPUs; on CUDA the synchronized
    total split evenly (stamps there would only time the kernel launches)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def start(self) -> None:
        synchronize(self.device)
        self.stamps = [time.perf_counter()]

    def step(self, *_: object) -> None:
        self.stamps.append(time.perf_counter())

    def durations(self) -> list[float]:
        steps = len(self.stamps) - 1
        if self.device.type == "cuda":
            synchronize(self.device)
            return [(time.perf_counter() - self.stamps[0]) / steps] * steps
        return [b - a for a, b in zip(self.stamps[:-1], self.stamps[1:])]


# -- cells: one thing to time ---------------------------------------------------------------------
class Cell:
    """Something that takes training steps; `run` returns each step's seconds."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.times: list[float] = []

    def run(self, steps: int) -> list[float]:
        raise NotImplementedError

    def images_per_second(self, device: torch.device) -> float:
        seconds = statistics.median(self.times) if device.type == "cpu" else statistics.mean(self.times)
        return self.batch_size / seconds


class FullCell(Cell):
    """The engine's `train_epoch` on `steps` random batches of the current task's training set."""

    def __init__(self, engine: Engine, method: Method, batch_size: int, task_index: int = 1) -> None:
        super().__init__(batch_size)
        self.engine, self.method, self.task = engine, method, engine.data.task(task_index)
        self.source = engine.training_set(self.task)
        self.optimizer = engine.optimizer(MAIN, engine.settings.schedules[task_index])

    def run(self, steps: int) -> list[float]:
        engine = self.engine
        rows = torch.randint(len(self.source), (steps * self.batch_size,), generator=engine.generator,
                             device=engine.device)
        subset = select(self.source, rows)  # materialized before the clock starts
        watch = Stopwatch(engine.device)
        hook = self.optimizer.register_step_post_hook(watch.step)
        watch.start()
        engine.train_epoch(self.task, MAIN, subset, self.optimizer, self.batch_size)
        hook.remove()
        return watch.durations()


# The bare step's SGD: the paper profile's later-task settings (its lr and epochs play no part in a step's cost).
BARE_SCHEDULE = Schedule(epochs=1, milestones=(), weight_decay=2e-4, lr=0.1, momentum=0.9)


class BareCell(Cell):
    """Backbone + linear classifier, one ready float batch, cross-entropy, SGD: the engine's
    optimizer and autocast (`schedule_optimizer`, `step_autocast`) around the plainest step."""

    def __init__(self, backbone: str, classes: int, batch_size: int, device: torch.device,
                 channels_last: bool, precision: str = "fp32") -> None:
        super().__init__(batch_size)
        torch.manual_seed(0)
        net = build_backbone(backbone)
        self.model = nn.Sequential(net, nn.Linear(net.out_dim, classes)).to(device).train()
        self.images = torch.randn(batch_size, 3, 32, 32, device=device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, classes, (batch_size,), device=device)
        self.optimizer = schedule_optimizer(self.model.parameters(), BARE_SCHEDULE, device)
        self.precision = precision

    def run(self, steps: int) -> list[float]:
        watch = Stopwatch(self.images.device)
        watch.start()
        for _ in range(steps):
            with step_autocast(self.precision, self.images.device):
                loss = F.cross_entropy(self.model(self.images), self.labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            watch.step()
        return watch.durations()


def measure(cells: list[Cell], device: torch.device, warmup: int, batches: int) -> None:
    """Warm every cell up, then time `batches` steps of each, taken in turns on CPUs."""
    for cell in cells:
        if warmup:
            cell.run(warmup)
    per_turn = 1 if device.type == "cpu" else batches
    for _ in range(batches // per_turn):
        for cell in cells:
            cell.times += cell.run(per_turn)


# -- engines at a task ------------------------------------------------------------------------------
def speed_experiment() -> list[Run]:
    """CIFAR-100 B0Inc10, paper profile (every registered method), the first task cut to one epoch."""
    return expand(parse_experiment({
        "name": "speed", "dataset": "cifar100", "scenario": "B0Inc10", "methods": list(METHOD_NAMES),
        "budgets": "paper", "seeds": [1993], "profile": "paper",
        "training": {"first_task": {"epochs": 1, "milestones": []}}}, source="benchmark.tools.timing"))


def method_run(runs: list[Run], method: str, backbone: str) -> Run:
    run = next(r for r in runs if r.method == method)
    exemplars = ANCHOR_EXEMPLARS if METHODS.get(method).uses_exemplars else 0  # the paper's smallest budget
    return replace(run, backbone=backbone, exemplars=exemplars)


def task_engine(run: Run, data: RunData, index: int = 1, precision: str = "fp32") -> tuple[Engine, Method]:
    """The run's engine brought to task `index` (`Engine.advance_to`): the network grown as a run
    grows it (device, layout, fp32 heads under bf16), a teacher where the method keeps one, the
    earlier tasks' exemplars stored (picked at random: selection is not timed here), in train mode.
    Nothing is trained: the step costs the same on untrained weights."""
    settings = replace(engine_settings(run, run.exemplars), selection="random", precision=precision)
    engine = new_engine(run, data, settings, log=lambda _: None)
    engine.advance_to(index)
    engine.method.network.train()
    return engine, engine.method


def synthetic_data(device: torch.device, scenario: str = "B0Inc10", per_class: int = 50,
                   dataset: str = "cifar100") -> RunData:
    """Random uint8 images shaped as `dataset`, `per_class` per class for training and test, on
    `device`: for timing steps without reading the data set (a step costs the same on any pixels)."""
    spec = DATASETS[dataset]
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(spec.num_classes).repeat_interleave(per_class)
    images = torch.randint(0, 256, (len(labels), *spec.image_shape[::-1]), generator=generator,
                           dtype=torch.uint8)
    source = TensorSource(images.to(device), labels.to(device))
    sizes = Scenario.parse(scenario).task_sizes(spec.num_classes)
    bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    return RunData(source, source, bounds, spec.image_shape, augmentation_for(spec, channels_last=True))


# -- peaks and FLOPs --------------------------------------------------------------------------------
def matmul_peaks(device: torch.device, repeats: int = 5) -> dict[str, float]:
    """Matmul GFLOP/s: the best of `repeats` square products (2048 on CPUs, 8192 on GPUs). On CUDA
    three peaks: plain fp32 (TF32 off), TF32 and bf16 (the tensor-core ones); on CPUs fp32 only."""
    if device.type != "cuda":
        return {"fp32": _matmul_gflops(device, torch.float32, 2048, repeats)}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        peaks = {}
        for name, dtype in PEAK_DTYPES.items():
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
            peaks[name] = _matmul_gflops(device, dtype, 8192, repeats)
        return peaks
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _matmul_gflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def step_peak_name(precision: str, device: torch.device) -> str:
    """The peak a training step is held against: bf16 under bf16 autocast; for fp32 on CUDA, TF32
    when cuDNN may use it (torch's default: the convolutions, nearly all of the FLOPs, then run on
    tensor cores), else plain fp32; fp32 on CPUs."""
    if device.type != "cuda":
        return "fp32"
    if precision == "bf16":
        return "bf16"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def counted_flops(loss: Callable[[torch.Tensor], torch.Tensor], device: torch.device, images: int = 2) -> float:
    """FLOPs per image of `loss(images)` and its backward, as FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        loss(torch.randn(images, 3, 32, 32, device=device)).backward()
    return counter.get_total_flops() / images


def forward_flops(network: nn.Module, device: torch.device, images: int = 2) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.randn(images, 3, 32, 32, device=device))
    return counter.get_total_flops() / images


def full_flops(cell: FullCell, device: torch.device) -> tuple[float, float]:
    """(one forward, one training step) per image, on a copy (the step moves BatchNorm statistics)."""
    method, task = copy.deepcopy(cell.method), cell.task
    labels = task.known_classes + torch.arange(2, device=device) % task.new_classes
    return forward_flops(method.network, device), counted_flops(lambda x: method.loss(task, x, labels), device)


def bare_flops(cell: BareCell, device: torch.device) -> float:
    model = copy.deepcopy(cell.model)
    return counted_flops(lambda x: F.cross_entropy(model(x), cell.labels[:2]), device)
