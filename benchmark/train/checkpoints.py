"""Checkpoints inside a run: after every task, what the later tasks depend on, so a run killed
half-way (a preempted machine, a dead worker) goes on from its last finished task.

A checkpoint holds the network's state and shape (tasks grown, classes), the teacher, the exemplar
memory as stored (raw images, or a format's encoded bytes: what the audit bills), the RNG states and the task results so far; no optimizer state, since every task starts a
fresh optimizer. It is written atomically next to the run's record (runs/<id>/checkpoint.pt).

Resuming rebuilds the network's structure by replaying the method's growth (`Engine.replay`:
`before_task`, then `after_task`, for every finished task: new blocks, heads, frozen parts, teacher,
dropped auxiliary head), then loads the saved tensors into it. That needs `after_task` to change only
the network's structure or values, never to read data, which holds for every method here.

A checkpoint also holds the numerics of the process that wrote it (benchmark.records.numerics:
instruction set, math libraries, threads, card, TF32) and every change of them so far: a run resumed
under other numerics equals no uninterrupted run, and its record says where that happened.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmark.train.engine import Engine, TaskResult
from benchmark.train.evaluation import Accuracy
from benchmark.files import write_atomic
from benchmark.records.numerics import changes, numerics

CHECKPOINT = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the run it was found for."""


@dataclass(frozen=True)
class Resumed:
    results: list[TaskResult]   # the finished tasks' results, in order
    wall_seconds: float         # spent on them by the earlier process(es), up to the checkpoint
    numerics: dict | None       # of the process that wrote the checkpoint (None: written before they were kept)
    numerics_changes: list[dict]  # earlier changes: {"task": first task under new numerics, "changes": [...]}


def checkpoint_path(folder: Path) -> Path:
    return Path(folder) / CHECKPOINT


def save(path: Path, run_id: str, engine: Engine, results: list[TaskResult], wall_seconds: float,
         numerics_changes: list[dict] | None = None) -> None:
    """Write the checkpoint after `results[-1]`'s task, with this process's numerics and the run's
    `numerics_changes` so far (see `numerics_change`)."""
    method, device = engine.method, engine.device
    payload = {
        "run_id": run_id, "tasks_done": len(results), "num_classes": method.network.num_classes,
        "network": _cpu(method.network.state_dict()),
        "teacher": None if method.teacher is None else _cpu(method.teacher.state_dict()),
        "memory": engine.memory.state(),  # what is billed: raw images, or a format's stored bytes
        "rng": {"torch": torch.get_rng_state(), "generator": engine.generator.get_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        "results": [asdict(result) for result in results], "wall_seconds": wall_seconds,
        "numerics": numerics(device), "numerics_changes": list(numerics_changes or []),
    }
    write_atomic(path, lambda file: torch.save(payload, file))


def resume(path: Path, run_id: str, engine: Engine) -> Resumed | None:
    """Restore `engine` to the state the checkpoint at `path` saved; None when there is none."""
    if not path.exists():
        return None
    fix = f"delete {path} to start the run over"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # written by another torch version, or damaged on disk
        raise CheckpointError(f"{path} could not be read ({type(error).__name__}: {error}); {fix}") from error
    if payload["run_id"] != run_id:
        raise CheckpointError(f"{path} belongs to run {payload['run_id']}, not {run_id}; {fix}")
    engine.replay(payload["tasks_done"])
    method = engine.method
    if method.network.num_classes != payload["num_classes"] or (method.teacher is None) != (payload["teacher"] is None):
        raise CheckpointError(f"{path} holds a network of {payload['num_classes']} classes (teacher: "
                              f"{payload['teacher'] is not None}); replaying {payload['tasks_done']} tasks gave "
                              f"{method.network.num_classes} (teacher: {method.teacher is not None}); {fix}")
    method.network.load_state_dict(payload["network"])
    if method.teacher is not None:
        method.teacher.load_state_dict(payload["teacher"])
    try:
        engine.memory.load_state(payload["memory"])  # a non-raw memory decodes its working copy again
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path} holds an exemplar memory this run cannot take ({error}); {fix}") from error
    _restore_rng(payload["rng"], engine)
    return Resumed([_task_result(entry) for entry in payload["results"]], payload["wall_seconds"],
                   payload.get("numerics"), list(payload.get("numerics_changes", [])))


def numerics_change(resumed: Resumed, now: dict) -> dict | None:
    """{"task": the first task this process learns, "changes": ["threads: 2 -> 1", ...]} when `now`
    (this process's numerics) differs from those that wrote the checkpoint; None when they match."""
    found = changes(resumed.numerics, now)
    return {"task": len(resumed.results), "changes": found} if found else None


def _restore_rng(states: dict, engine: Engine) -> None:
    """Every task reseeds from the network seed, so these matter only to code between tasks;
    restored all the same, so that a resumed run is the uninterrupted one whatever that code does."""
    torch.set_rng_state(states["torch"])
    engine.generator.set_state(states["generator"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state(states["cuda"], engine.device)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu() for key, value in state.items()}


def _task_result(entry: dict) -> TaskResult:
    nme = entry["nme"]
    return TaskResult(**{**entry, "cnn": Accuracy(**entry["cnn"]), "nme": None if nme is None else Accuracy(**nme)})
