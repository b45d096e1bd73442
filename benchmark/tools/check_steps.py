"""The device check's section 1: every registered method's training step on the device.

Each method stands at task 1 of CIFAR-100 B0Inc10 (timing.task_engine: network grown, teacher,
exemplars), and takes real `Engine.train_epoch` steps, in fp32 and (on CUDA) in bf16. Checked:
- placement: every parameter and buffer of the network and the teacher, the exemplars and the
  task's training set live on the engine's device (and a teacher / exemplars exist where the
  method keeps them, so the check is not vacuous);
- no host synchronization inside a step: on CUDA the steps run under
  torch.cuda.set_sync_debug_mode("error") from the first batch fetch until the loop asks for a
  batch after the last one (so the epoch's one sync, the float of its loss sum, is outside);
- the loss is finite;
- under bf16 the backbone computes in bf16 and the heads (classifier, auxiliary, teacher's) in fp32,
  as seen by forward hooks during a real step; in fp32 everything is fp32.
"""
from __future__ import annotations

import math
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from benchmark.train.batches import BatchSource, select
from benchmark.train.engine import Engine, RunData
from benchmark.config.grid import Run
from benchmark.tools.timing import task_engine

if TYPE_CHECKING:
    from methods import Method

REPO = Path(__file__).resolve().parents[2]


class SyncGuardedSource(BatchSource):
    """`source`, whose batch loop runs under CUDA's sync debug mode "error": any host
    synchronization from the first batch fetch to the end of the last step raises."""

    def __init__(self, source: BatchSource) -> None:
        self.source, self.labels = source, source.labels

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return self.source.images(indices)

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from self.source.batches(order, batch_size)
        finally:  # the loop asked for a batch after the last (or failed): syncs are allowed again
            torch.cuda.set_sync_debug_mode("default")


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
    if method.keeps_teacher and method.teacher is None:
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
    """(problems, mean loss of the checked steps) of `run`'s method at task 1 in `precision`."""
    engine, method = task_engine(run, data, 1, precision)
    task = data.task(1)
    source = engine.training_set(task)
    problems = placement_problems(engine, method, source)
    optimizer = engine.optimizer(engine.settings.schedules[1])
    probe = DtypeProbe(method)
    try:  # one warm-up step (cuDNN autotuning may synchronize), watched by the dtype probe
        engine.train_epoch(task, random_batches(engine, source, 1, batch_size), optimizer, batch_size)
    finally:
        probe.remove()
    problems += probe.problems(engine.autocast)
    checked = random_batches(engine, source, steps, batch_size)
    if engine.device.type == "cuda":
        checked = SyncGuardedSource(checked)
    try:
        loss = engine.train_epoch(task, checked, optimizer, batch_size) / len(checked)
    except RuntimeError as error:
        if "synchroniz" not in str(error):
            raise
        return problems + [f"host synchronization inside a training step, at {_where(error)}"], math.nan
    finally:
        if engine.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    if not math.isfinite(loss):
        problems.append(f"the loss is {loss}")
    return problems, loss


def _where(error: BaseException) -> str:
    """The innermost frame of the suite's own code in `error`'s traceback, as path:line (function)."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).resolve().is_relative_to(REPO) and ".venv" not in frame.filename]
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    return f"{Path(frame.filename).resolve().relative_to(REPO)}:{frame.lineno} ({frame.name}: {frame.line})"
