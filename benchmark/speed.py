"""How fast the engine trains, against what the backbone alone could do on this device.

    python -m benchmark.speed [--device cpu|cuda] [--methods ...] [--backbones ...] [--batches N]
                              [--threads N] [--json OUT]

A benchmark script, not a test. Per method and backbone it reports images/s of
- full: the engine's own step (`Engine.train_epoch`: batch fetch from the on-device uint8 tensor,
  on-device augmentation, the method's loss, SGD step) with the network grown to task 1 of CIFAR-100
  B0Inc10 (iCaRL/WA with a teacher, DER/MEMO with two blocks and the auxiliary head, replay methods on
  5,000 new images plus 2,000 exemplars), with channels_last batches (the engine's default) and without;
- bare: the same backbone and a linear classifier on a random, already normalized float batch, plain
  cross-entropy and SGD, with channels_last (batch and weights) and without;
then full/bare (channels_last both), the training FLOPs per image and the share of the measured
float32 matmul peak that each step reaches. Last, one real first-task epoch of iCaRL/resnet32 on
5,000 images plus its test pass, to compare with PyCIL's ~42 s per epoch on the 2-core CPU machine.

FLOPs are counted by FlopCounterMode: "fwd" is one forward of the trained network, "step" the
forward and backward of the method's loss as they run (about 3 x fwd for one network; a frozen DER
block runs forward only, an iCaRL/WA teacher adds a forward).

Timing: warm-up steps are excluded. On CPUs the cells of one backbone take their steps in turn, one
step each per round, so a busy spell on a shared machine hits them all alike, and a cell's step time is
the median of its steps. On CUDA each cell runs its steps back to back between two synchronizations
(per-step synchronization would hide the launch overlap) and the time is their mean.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from methods import METHODS, Method
from methods.backbones import build_backbone

from .batches import select
from .config import parse_experiment
from .engine import Engine, RunData
from .grid import Run, expand
from .runner import _settings, prepare_data

METHOD_NAMES = ("finetune", "replay", "icarl", "wa", "der", "memo", "joint")
BACKBONES = ("resnet32", "resnet14", "resnet8_half", "conv2")
PYCIL_EPOCH_SECONDS = 42.0  # PyCIL's iCaRL/resnet32 first-task epoch on the 2-core CPU machine
EXEMPLARS = 2000            # the MEMO paper's smallest CIFAR-100 budget
LAYOUTS = {"cl": True, "nchw": False}


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
    """The engine's `train_epoch` on `steps` random batches of the task-1 training set."""

    def __init__(self, engine: Engine, method: Method, batch_size: int) -> None:
        super().__init__(batch_size)
        self.engine, self.method, self.task = engine, method, engine.data.task(1)
        self.source = engine.training_set(self.task)
        schedule = engine.settings.schedules[self.task.index]
        self.optimizer = torch.optim.SGD(method.trainable_parameters(), lr=schedule.lr,  # as Engine.train
                                         momentum=schedule.momentum, weight_decay=schedule.weight_decay)

    def run(self, steps: int) -> list[float]:
        engine = self.engine
        rows = torch.randint(len(self.source), (steps * self.batch_size,), generator=engine.generator,
                             device=engine.device)
        subset = select(self.source, rows)  # materialized before the clock starts
        watch = Stopwatch(engine.device)
        hook = self.optimizer.register_step_post_hook(watch.step)
        watch.start()
        engine.train_epoch(self.task, subset, self.optimizer, self.batch_size)
        hook.remove()
        return watch.durations()


class BareCell(Cell):
    """Backbone + linear classifier, one ready float batch, cross-entropy, SGD."""

    def __init__(self, backbone: str, classes: int, batch_size: int, device: torch.device,
                 channels_last: bool, bf16: bool) -> None:
        super().__init__(batch_size)
        torch.manual_seed(0)
        net = build_backbone(backbone)
        self.model = nn.Sequential(net, nn.Linear(net.out_dim, classes)).to(device).train()
        self.images = torch.randn(batch_size, 3, 32, 32, device=device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, classes, (batch_size,), device=device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        self.bf16 = bf16 and device.type == "cuda"

    def run(self, steps: int) -> list[float]:
        watch = Stopwatch(self.images.device)
        watch.start()
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
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


# -- building the cells ---------------------------------------------------------------------------
def speed_experiment() -> list[Run]:
    """CIFAR-100 B0Inc10, paper profile, the first task cut to one epoch (the epoch measurement)."""
    return expand(parse_experiment({
        "name": "speed", "dataset": "cifar100", "scenario": "B0Inc10", "methods": list(METHOD_NAMES),
        "budgets": "paper", "seeds": [1993], "profile": "paper",
        "training": {"first_task": {"epochs": 1}}}, source="benchmark.speed"))


def method_run(runs: list[Run], method: str, backbone: str) -> Run:
    run = next(r for r in runs if r.method == method)
    exemplars = EXEMPLARS if METHODS.get(method).uses_exemplars else 0
    return replace(run, backbone=backbone, exemplars=exemplars)


def later_task_engine(run: Run, data: RunData, bf16: bool = False) -> tuple[Engine, Method]:
    """An engine whose method stands at the start of task 1: the network grown, a teacher where the
    method keeps one, task 0's exemplars stored (picked at random: selection is not timed here)."""
    torch.manual_seed(run.network_seed)
    method = METHODS.get(run.method)(run.backbone, run.training["method_options"])
    settings = replace(_settings(run, run.exemplars), selection="random", bf16=bf16)
    engine = Engine(method, data, settings, log=lambda _: None)
    first, second = data.task(0), data.task(1)
    method.before_task(first)
    method.network.to(engine.device)
    method.after_task(first)
    engine.update_memory(first)
    method.before_task(second)
    method.network.to(engine.device)
    if method.teacher is not None:
        method.teacher.to(engine.device)
    method.network.train()
    return engine, method


# -- FLOPs and the peak -----------------------------------------------------------------------------
def matmul_peak(device: torch.device, repeats: int = 5) -> float:
    """Float32 matmul GFLOP/s: the best of `repeats` square products (2048 on CPUs, 8192 on GPUs)."""
    size = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def counted_flops(loss: Callable[[torch.Tensor], torch.Tensor], device: torch.device, images: int = 2
                  ) -> float:
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


# -- one backbone: every method, both layouts, in turns ----------------------------------------------
def measure_backbone(backbone: str, runs: list[Run], data: RunData, device: torch.device,
                     args: argparse.Namespace, peak: float) -> list[dict]:
    classes = data.task(1).total_classes
    bare = {layout: BareCell(backbone, classes, args.batch_size, device, cl, args.bf16)
            for layout, cl in LAYOUTS.items()}
    full = {(name, layout): FullCell(*later_task_engine(method_run(runs, name, backbone), _with_layout(data, cl),
                                                        args.bf16), args.batch_size)
            for name in args.methods for layout, cl in LAYOUTS.items()}
    measure([*bare.values(), *full.values()], device, args.warmup, args.batches)
    bare_step = bare_flops(bare["cl"], device)
    rows = []
    for name in args.methods:
        fwd, step = full_flops(full[name, "cl"], device)
        row = {"method": name, "backbone": backbone, "fwd_flops": fwd, "step_flops": step}
        for layout in LAYOUTS:
            row[f"full_{layout}"] = full[name, layout].images_per_second(device)
            row[f"bare_{layout}"] = bare[layout].images_per_second(device)
            row[f"full_{layout}_steps"] = full[name, layout].times
        row["full_over_bare"] = row["full_cl"] / row["bare_cl"]
        row["peak_full"] = step * row["full_cl"] / (peak * 1e9)
        row["peak_bare"] = bare_step * row["bare_cl"] / (peak * 1e9)
        rows.append(row)
    return rows


def _with_layout(data: RunData, channels_last: bool) -> RunData:
    return replace(data, augmentation=replace(data.augmentation, channels_last=channels_last))


# -- the first-task epoch ---------------------------------------------------------------------------
def first_task_epoch(runs: list[Run], data: RunData) -> dict:
    """One real first-task epoch of iCaRL/resnet32 through `Engine.train`, then the CNN test pass."""
    run = method_run(runs, "icarl", "resnet32")
    torch.manual_seed(run.network_seed * 1000)  # as Engine.learn_task seeds task 0
    method = METHODS.get("icarl")("resnet32", run.training["method_options"])
    engine = Engine(method, data, _settings(run, run.exemplars), log=lambda _: None)
    task = data.task(0)
    engine.generator.manual_seed(run.network_seed * 1000)
    method.before_task(task)
    method.network.to(engine.device)
    source = engine.training_set(task)
    epoch = engine.train(task, source, engine.settings.schedules[0])[0]
    started = time.perf_counter()
    cnn, _ = engine.evaluate(task)  # no exemplars yet, so the CNN pass alone (as PyCIL's first eval)
    test_seconds = time.perf_counter() - started
    return {"train_images": len(source), "test_images": len(data.rows(data.test, 0, task.total_classes)),
            "epoch_seconds": epoch["seconds"], "test_seconds": test_seconds, "cnn_accuracy": cnn.overall,
            "total_seconds": epoch["seconds"] + test_seconds, "pycil_seconds": PYCIL_EPOCH_SECONDS}


# -- output -----------------------------------------------------------------------------------------
COLUMNS: list[tuple[str, str, str]] = [  # (header, key, format)
    ("method", "method", "{:<8}"), ("backbone", "backbone", "{:<12}"),
    ("full CL", "full_cl", "{:>7.0f}"), ("full NCHW", "full_nchw", "{:>9.0f}"),
    ("bare CL", "bare_cl", "{:>7.0f}"), ("bare NCHW", "bare_nchw", "{:>9.0f}"),
    ("full/bare", "full_over_bare", "{:>9.2f}"), ("fwd GF", "fwd_gflops", "{:>6.3f}"),
    ("step GF", "step_gflops", "{:>7.3f}"), ("peak full", "peak_full", "{:>9.1%}"),
    ("peak bare", "peak_bare", "{:>9.1%}"),
]


def table(rows: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        widths = [len(fmt.format(0 if fmt[-2] in "f%" else "")) for _, _, fmt in COLUMNS]
        title = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, ((h, _, _), w) in enumerate(zip(COLUMNS, widths)))
        lines += [title, "-" * len(title)]
    for row in rows:
        values = {**row, "fwd_gflops": row["fwd_flops"] / 1e9, "step_gflops": row["step_flops"] / 1e9}
        lines.append("  ".join(fmt.format(values[key]) for _, key, fmt in COLUMNS))
    return "\n".join(lines)


def machine(device: torch.device, peak: float) -> dict:
    info = {"device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "matmul_peak_gflops": round(peak, 1), "load_average": _load()}
    info["card" if device.type == "cuda" else "cpu"] = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name())
    return info


def _load() -> float | None:
    """The 1-minute load average: on a shared machine, how many others wanted the cores too."""
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmark.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index] (default cpu)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES, metavar="METHOD",
                        help=f"default: {' '.join(METHOD_NAMES)}")
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES), help="none: the epoch alone")
    parser.add_argument("--batches", type=int, default=3, help="timed steps per cell (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per cell first (default 1)")
    parser.add_argument("--batch-size", type=int, default=128, help="default: the paper profile's 128")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; default 1 on CPUs (on the shared 2-core machine two threads ran "
                             "3x slower under load), torch's choice on CUDA; 0: torch's choice")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only, as the engine gates it)")
    parser.add_argument("--data-root", default="/work/shared/data")
    parser.add_argument("--skip-epoch", action="store_true", help="skip the iCaRL first-task epoch")
    parser.add_argument("--json", help="also write every number to this file")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.warmup < 0:
        parser.error("--batches must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    runs = speed_experiment()
    data = prepare_data(method_run(runs, "icarl", "resnet32"), Path(args.data_root), device)
    info = machine(device, matmul_peak(device))
    log(" | ".join(f"{key} {value}" for key, value in info.items()))
    log(f"images/s, batch {args.batch_size}, {args.warmup} warm-up + {args.batches} timed steps per cell "
        f"({'median' if device.type == 'cpu' else 'mean'}); full = Engine.train_epoch at task 1 of B0Inc10; "
        f"GF = GFLOP per image; peak = step FLOPs x images/s / matmul peak")
    rows: list[dict] = []
    for backbone in args.backbones:
        new = measure_backbone(backbone, runs, data, device, args, info["matmul_peak_gflops"])
        log(table(new, header=not rows))
        rows += new
    epoch = None if args.skip_epoch else first_task_epoch(runs, data)
    if epoch:
        log(f"iCaRL resnet32 first task: one epoch on {epoch['train_images']} images {epoch['epoch_seconds']:.1f} s "
            f"+ test pass on {epoch['test_images']} images {epoch['test_seconds']:.1f} s = "
            f"{epoch['total_seconds']:.1f} s (PyCIL: ~{PYCIL_EPOCH_SECONDS:.0f} s); "
            f"{epoch['train_images'] / epoch['epoch_seconds']:.0f} images/s in the epoch")
    info["load_average_end"] = _load()
    log(f"load average at the end {info['load_average_end']}; {time.perf_counter() - started:.0f} s in all")
    result = {"machine": info, "settings": {k: v for k, v in vars(args).items() if k != "json"},
              "rows": rows, "first_task_epoch": epoch}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
