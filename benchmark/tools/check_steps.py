"""The device check's section 1: every registered method's training step on the device.

Each method stands at task 1 of CIFAR-100 B0Inc10 (timing.task_engine: network grown, teacher,
exemplars), and takes real `Engine.train_epoch` steps, in fp32 and (on CUDA) in bf16, fed by both
data paths of a real run: the data set on the device (CIFAR) and the prefetching source of a folder
data set (`prefetching`: the image cache's reader, one batch ahead on a thread). Checked:
- placement: every parameter and buffer of the network and the teacher, the exemplars and the
  task's training set live on the engine's device (and a teacher / exemplars exist where the
  method keeps them, so the check is not vacuous);
- no host synchronization inside a step: on CUDA the steps run under
  torch.cuda.set_sync_debug_mode("error") (a process-wide mode, so the prefetching thread's reads
  are under it too) from the first step until the loop asks for a batch after the last one. Two
  syncs per epoch are outside, by design: at its start a prefetching source moves the epoch's order
  to the host (`batches.prefetched`: the reads need host indices), at its end the float of the
  loss sum;
- the loss is finite;
- under bf16 the backbone computes in bf16 and the heads (classifier, auxiliary, teacher's) in fp32,
  as seen by forward hooks during a real step; in fp32 everything is fp32.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from benchmark.train.batches import Batches, BatchSource, CachedSource, Images, select
from benchmark.train.engine import Engine, RunData
from benchmark.config.grid import Run
from benchmark.tools.timing import task_engine
from methods import Method, Phase

MAIN = Phase()  # the main phase: the task's own schedule

if TYPE_CHECKING:
    from methods import Method

REPO = Path(__file__).resolve().parents[2]


class SyncGuardedSource(BatchSource):
    """`source`, whose batch loop runs under CUDA's sync debug mode "error" from the first batch's
    arrival: any host synchronization in a step or in fetching a later batch (on the prefetching
    thread too) raises. The epoch's start (for a prefetching source, the order moved to the host)
    is outside; its reads of later batches are the same code, and those are inside."""

    def __init__(self, source: BatchSource) -> None:
        self.source, self.labels = source, source.labels

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return self.source.images(indices)

    def training_images(self, indices: torch.Tensor) -> Images:
        return self.source.training_images(indices)

    def batches(self, order: torch.Tensor, batch_size: int, training: bool = False) -> Batches:
        batches = self.source.batches(order, batch_size, training)
        first = next(batches, None)
        if first is None:
            return
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield first
            yield from batches
        finally:  # the loop asked for a batch after the last (or failed): syncs are allowed again
            torch.cuda.set_sync_debug_mode("default")
            batches.close()  # a prefetching source joins its reader thread


def prefetching(data: RunData) -> RunData:
    """`data` with the training images of tasks 0 and 1 read as a folder data set's are in a real
    run: a uint8 host array in the image cache's layout [N, H, W, 3] (as its memory map), read by
    `CachedSource` one batch ahead on a thread, into pinned memory on CUDA and onto the device
    without blocking. The task's training set is then that source's new images plus the exemplars
    on the device, as for ImageNet-100."""
    train = data.train
    rows = data.rows(train, 0, data.task_bounds[2])
    images = train.images(rows).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return replace(data, train=CachedSource(images, train.labels[rows].cpu().numpy(), train.labels.device))


def placement_problems(engine: Engine, method: Method, source: BatchSource) -> list[str]:
    device, problems = engine.device, []
    modules = {"network": method.network, "teacher": method.teacher}
    for owner, module in modules.items():
        if module is None:
            continue
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.device != device:
                problems.append(f"{owner}.{name} is on {tensor.device}")
    tensors = {"exemplar images": engine.memory.images, "exemplar labels": engine.memory.labels,
               "training labels": source.labels, "training images": source.images(source.labels[:1].new_zeros(1))}
    problems += [f"{name} are on {tensor.device}" for name, tensor in tensors.items() if tensor.device != device]
    # A method with its own network may hold the previous model inside it while its main phase trains
    # (FOSTER's frozen old backbone and classifier); a plain network's teacher must be there.
    if method.keeps_teacher and method.teacher is None and type(method).build_network is Method.build_network:
        problems.append("the method keeps a teacher but has none at task 1")
    if method.uses_exemplars and not len(engine.memory):
        problems.append("the method keeps exemplars but holds none at task 1")
    return problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])


class DtypeProbe:
    """Records the output dtype of the first convolution and of the heads during forward passes."""

    def __init__(self, method: Method) -> None:
        self.seen: dict[str, torch.dtype] = {}
        targets = {"first conv": next(m for m in method.network.modules() if isinstance(m, nn.Conv2d)),
                   "classifier": method.network.fc, "auxiliary head": method.network.aux_fc,
                   "teacher classifier": method.teacher.fc if method.teacher is not None else None}
        self.hooks = [module.register_forward_hook(self._record(name))
                      for name, module in targets.items() if module is not None]

    def _record(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.seen.setdefault(name, output.dtype)
        return hook

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()

    def problems(self, autocast: bool) -> list[str]:
        expected = {name: torch.float32 for name in self.seen}
        expected["first conv"] = torch.bfloat16 if autocast else torch.float32
        return [f"{name} computes in {self.seen[name]}, expected {dtype}" for name, dtype in expected.items()
                if self.seen.get(name) != dtype]


def random_batches(engine: Engine, source: BatchSource, steps: int, batch_size: int) -> BatchSource:
    rows = torch.randint(len(source), (steps * batch_size,), generator=engine.generator, device=engine.device)
    return select(source, rows)


def step_problems(run: Run, data: RunData, precision: str, batch_size: int, steps: int) -> tuple[list[str], float]:
    """(problems, mean loss of the checked steps on `data`'s own source) of `run`'s method at task 1
    in `precision`, its steps fed from `data`'s source and from a prefetching one (`prefetching`)."""
    problems, loss = source_problems(run, data, precision, batch_size, steps)
    prefetched, _ = source_problems(run, prefetching(data), precision, batch_size, steps)
    return problems + [f"prefetching source: {problem}" for problem in prefetched], loss


def source_problems(run: Run, data: RunData, precision: str, batch_size: int,
                    steps: int) -> tuple[list[str], float]:
    """(problems, mean loss of the checked steps) of `run`'s method at task 1 in `precision`."""
    engine, method = task_engine(run, data, 1, precision)
    task = data.task(1)
    source = engine.training_set(task)
    problems = placement_problems(engine, method, source)
    optimizer = engine.optimizer(MAIN, engine.settings.schedules[1])
    probe = DtypeProbe(method)
    try:  # one warm-up step (cuDNN autotuning may synchronize), watched by the dtype probe
        engine.train_epoch(task, MAIN, random_batches(engine, source, 1, batch_size), optimizer, batch_size)
    finally:
        probe.remove()
    problems += probe.problems(engine.autocast)
    checked = random_batches(engine, source, steps, batch_size)
    if engine.device.type == "cuda":
        checked = SyncGuardedSource(checked)
    try:
        loss = engine.train_epoch(task, MAIN, checked, optimizer, batch_size) / len(checked)
    except RuntimeError as error:
        if "synchroniz" not in str(error):
            raise
        return problems + [f"host synchronization inside a training step, at {suite_frame(error)}"], math.nan
    finally:
        if engine.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    if not math.isfinite(loss):
        problems.append(f"the loss is {loss}")
    return problems, loss


def suite_frame(error: BaseException) -> str:
    """The innermost frame of the suite's own code in `error`'s traceback, as path:line (function)."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).resolve().is_relative_to(REPO) and ".venv" not in frame.filename]
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    return f"{Path(frame.filename).resolve().relative_to(REPO)}:{frame.lineno} ({frame.name}: {frame.line})"
