"""One run, start to finish: load the scenario's data, get the shared first-task model, train the
method through every task, check the memory audit against the budget, and write the record.

The launcher (benchmark/launch/) decides where runs execute; this module is what they
execute, in-process or in a worker.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from budgets.accounting import MB
from methods import METHODS

from benchmark.records import metrics, space
from benchmark.train import checkpoints
from benchmark.train.augmentation import augmentation_for
from benchmark.train.batches import source_of
from benchmark.data import DATASETS, Scenario, class_order, incremental_labels, load_dataset, per_class_subset
from benchmark.train.engine import Engine, EngineSettings, RunData, TaskResult
from benchmark.config.grid import Run, identity_hash
from benchmark.config.profile import CPU_THREADS, Schedule
from benchmark.files import write_atomic, write_json_atomic
from benchmark.records.numerics import changes, numerics, run_threads
from benchmark.records.store import origin, record_path, record_status, run_dir

__all__ = ["execute_run", "train_first_task", "first_task_key", "write_failed_record", "record_status",
           "breaks_cuda_context", "engine_settings", "new_engine", "new_method", "prepare_data"]


class BudgetExceeded(RuntimeError):
    """The audited memory of a finished run is above its planned budget."""


# -- data --------------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _dataset(name: str, root: str):
    return load_dataset(name, root)


def prepare_data(run: Run, data_root: Path, device: torch.device) -> RunData:
    """The run's scenario on `device`: subsets applied, labels renumbered in class order."""
    spec = DATASETS[run.dataset]
    dataset = _dataset(run.dataset, str(data_root))
    train, test = dataset.train, dataset.test
    if run.training["images_per_class"]:
        train = train.subset(per_class_subset(train.labels, run.training["images_per_class"]))
    if run.training["test_images_per_class"]:
        test = test.subset(per_class_subset(test.labels, run.training["test_images_per_class"]))
    mapping = incremental_labels(class_order(spec.num_classes, run.seed))
    train, test = train.relabel(mapping), test.relabel(mapping)
    bounds = [0, *np.cumsum(Scenario.parse(run.scenario).task_sizes(spec.num_classes)).tolist()]
    augmentation = augmentation_for(spec, channels_last=True)
    return RunData(source_of(train, device), source_of(test, device), bounds, spec.image_shape, augmentation)


# -- the shared first-task model -----------------------------------------------------------------
def first_task_identity(run: Run) -> dict[str, Any]:
    """Everything that shapes the first task's training. Every method that shares it trains it the
    same way (cross-entropy on the first classes), so runs that agree on this share one model; a
    method with its own first task (a cosine classifier, its own loss: `shares_first_task` false)
    adds its name and options, so that only its own runs share it."""
    t = run.training
    own = {} if METHODS.get(run.method).shares_first_task else {
        "method": run.method, "method_options": t["method_options"]}
    return {**own, "dataset": run.dataset, "first_task_classes": Scenario.parse(run.scenario).task_sizes(
                DATASETS[run.dataset].num_classes)[0],
            "class_order_seed": run.seed, "network_seed": run.network_seed, "backbone": run.backbone,
            "schedule": t["first_task"], "images_per_class": t["images_per_class"], "augment": t["augment"],
            **({"augmentation": t["augmentation"]} if "augmentation" in t else {}),  # not CIFAR's recipe
            "precision": t["precision"], "device_type": run.device_type, "revision": t["revision"],
            **({"cpu_threads": t["cpu_threads"]} if "cpu_threads" in t else {})}


def first_task_key(run: Run) -> str:
    return identity_hash(first_task_identity(run))


def first_task_path(results_root: Path, run: Run) -> Path:
    return Path(results_root) / "first_task" / f"{first_task_key(run)}.pt"


def train_first_task(run: Run, results_root: Path, device: str, data_root: Path, threads: int,
                     log: Callable[[str], None] = print) -> Path:
    """Train and cache the first-task model unless it is cached already; returns its path."""
    path = first_task_path(results_root, run)
    if path.exists():
        return path
    _set_threads(run_threads(device, threads, cpu_threads(run)))
    device_ = torch.device(device)
    data = prepare_data(run, data_root, device_)
    # Plain cross-entropy, what every sharing method does on task 0; or the run's own method's task 0.
    method = new_method(run, "replay") if METHODS.get(run.method).shares_first_task else \
        new_method(run, run.method, run.training["method_options"])
    engine = Engine(method, data, engine_settings(run, exemplars=0), log)
    result = engine.learn_task(data.task(0))
    payload = {"state": _to_cpu(method.network.first_task_state()), "identity": first_task_identity(run),
               "numerics": numerics(device_),
               "cnn_accuracy": result.cnn.overall, "train_seconds": result.train_seconds}
    write_atomic(path, lambda file: torch.save(payload, file))
    log(f"first-task model {path.name}: CNN {result.cnn.overall:.2f}% after {result.train_seconds:.1f}s")
    return path


def new_method(run: Run, name: str, options: dict | None = None):
    """The method with its network initialized from the run's network seed (reproducible)."""
    torch.manual_seed(run.network_seed)
    return METHODS.get(name)(run.backbone, options, model_storage=run.training.get("model_storage", "fp32"))


def new_engine(run: Run, data: RunData, settings: EngineSettings | None = None,
               log: Callable[[str], None] = print) -> Engine:
    """The engine of `run`'s method before its first task, with `settings` (default: the run's own,
    `engine_settings`). `Engine.advance_to(i)` then brings it to task i without training."""
    method = new_method(run, run.method, run.training["method_options"])
    return Engine(method, data, settings or engine_settings(run, run.exemplars), log)


def _to_cpu(state: dict) -> dict:
    return {part: {k: v.detach().cpu() for k, v in tensors.items()} for part, tensors in state.items()}


# -- one run -----------------------------------------------------------------------------------
def engine_settings(run: Run, exemplars: int) -> EngineSettings:
    """What the engine needs of `run` (schedules per task, selection, precision, batch sizes), with
    an exemplar budget of `exemplars` (0 for the shared first-task model)."""
    t = run.training
    first, later = Schedule(**_tuple_milestones(t["first_task"])), Schedule(**_tuple_milestones(t["later_tasks"]))
    num_tasks = Scenario.parse(run.scenario).num_tasks(DATASETS[run.dataset].num_classes)
    return EngineSettings(schedules=[first] + [later] * (num_tasks - 1), exemplars=exemplars,
                          selection=t["exemplar_selection"], augment=t["augment"], network_seed=run.network_seed,
                          precision=t["precision"], eval_batch_size=t["eval_batch_size"],
                          herding_batch_size=t["herding_batch_size"],
                          # present only for non-raw formats (the grid's budget axis)
                          exemplar_format=t.get("exemplar_format", "raw"),
                          exemplar_byte_budget=t.get("exemplar_byte_budget"),
                          model_storage=t.get("model_storage", "fp32"), storage_probe=tuple(t.get("storage_probe", ())),
                          phase_schedules={name: Schedule(**_tuple_milestones(schedule))
                                           for name, schedule in t.get("phases", {}).items()})


def _tuple_milestones(schedule: dict) -> dict:
    return {**schedule, "milestones": tuple(schedule["milestones"])}


def cpu_threads(run: Run) -> int:
    """The run's torch threads on the CPU (absent from runs planned with the default)."""
    return run.training.get("cpu_threads", CPU_THREADS)


def _set_threads(threads: int) -> None:
    if threads and threads > 0:
        torch.set_num_threads(threads)


def execute_run(run: Run, experiment_dir: Path, results_root: Path, device: str, data_root: Path,
                threads: int, keep_checkpoints: bool = False) -> dict:
    """Train `run` (from its checkpoint, when an earlier attempt left one) and write its record;
    an exception becomes a "failed" record, never a crash. A complete run's checkpoint is deleted
    unless `keep_checkpoints`; a failed run's is kept, so that running it again goes on from it."""
    folder = run_dir(experiment_dir, run.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    progress = _Progress(time.time())
    with open(folder / "log.txt", "a", buffering=1) as log_file:
        def log(line: str) -> None:
            log_file.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        try:
            _set_threads(run_threads(device, threads, cpu_threads(run)))
            log(f"run {run.run_id}: {run.method} on {run.dataset} {run.scenario}, seed {run.seed}, "
                f"{run.backbone}, {run.exemplars} exemplars, device {device}, {torch.get_num_threads()} threads")
            _train(run, folder, results_root, device, data_root, threads, log, progress)
            check_budget(run, progress.results[-1])
            record = build_record(run, "complete", progress.results, device, progress.wall_seconds(), speed=progress.speed)
        except Exception as error:  # recorded, so the grid goes on; KeyboardInterrupt is not caught
            log(traceback.format_exc())
            record = build_record(run, "failed", progress.results, device, progress.wall_seconds(), error, progress.speed,
                                  where=folder)
    # Only now has the traceback (and the tensors its frames held) gone: the cache can really shrink.
    if record["error"] and record["error"]["type"] == "OutOfMemoryError" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    path = checkpoints.checkpoint_path(folder)
    size = path.stat().st_size if path.exists() else 0  # the last checkpoint: the run's largest
    kept = size > 0 and (keep_checkpoints or record["status"] != "complete")
    record["checkpoint"] = {"bytes": size, "kept": kept, "resumed_from_task": progress.resumed_from}
    changed = progress.numerics_changes  # resumes under other numerics than the checkpoint's (beside them)
    record["origin"] |= {"numerics_changed_at_task": changed[0]["task"] if changed else None,
                         "numerics_changes": changed}
    write_json_atomic(record_path(experiment_dir, run.run_id), record)
    if not kept:
        path.unlink(missing_ok=True)
    return record


@dataclass
class _Progress:
    """What a run has done so far, kept outside the training frames so a failure can record it."""

    started: float
    results: list[TaskResult] = field(default_factory=list)
    earlier_seconds: float = 0.0        # spent by earlier attempts, up to their last checkpoint
    resumed_from: int | None = None     # the first task this attempt learned, when it resumed
    numerics_changes: list[dict] = field(default_factory=list)  # resumes under other numerics (checkpoints)
    speed: dict[str, Any] | None = None

    def wall_seconds(self) -> float:
        return self.earlier_seconds + time.time() - self.started


def _train(run: Run, folder: Path, results_root: Path, device: str, data_root: Path, threads: int,
           log: Callable[[str], None], progress: _Progress) -> None:
    engine = new_engine(run, prepare_data(run, data_root, torch.device(device)), log=log)
    progress.speed = engine.speed_settings()
    path = checkpoints.checkpoint_path(folder)
    resumed = checkpoints.resume(path, run.run_id, engine)
    state = None
    if resumed is not None:
        progress.results.extend(resumed.results)
        progress.earlier_seconds = resumed.wall_seconds
        progress.resumed_from = len(resumed.results)
        log(f"resuming from task {progress.resumed_from} ({path.name}: {len(resumed.results)} tasks done)")
        progress.numerics_changes = resumed.numerics_changes
        change = checkpoints.numerics_change(resumed, numerics(device))
        if change is not None:
            progress.numerics_changes = [*progress.numerics_changes, change]
            log(f"warning: resumed under other numerics than the checkpoint was written with "
                f"({'; '.join(change['changes'])}): from task {change['task']} on this run equals no "
                f"uninterrupted run")
    else:
        model = torch.load(train_first_task(run, results_root, device, data_root, threads, log), weights_only=True)
        state = model["state"]
        found = changes(model.get("numerics"), numerics(device))  # a model from before they were kept: []
        if found:  # trained elsewhere or by an earlier release: the later tasks learn under other numerics
            progress.numerics_changes = [{"task": 1, "changes": found}]
            log(f"warning: the shared first-task model was trained under other numerics ({'; '.join(found)}): "
                f"from task 1 on this run equals no run that trained its first task here")

    def finished(result: TaskResult) -> None:
        progress.results.append(result)
        changed = progress.numerics_changes  # passed only when there are any (the usual call stays 5 arguments)
        checkpoints.save(path, run.run_id, engine, progress.results, progress.wall_seconds(),
                         **({"numerics_changes": changed} if changed else {}))

    engine.run(state, on_task=finished, start=len(progress.results))


def check_budget(run: Run, final: TaskResult) -> None:
    """At the final task the audited bytes (under the plan's policy) must fit every budget the run serves."""
    for cell in run.cells:
        if cell.budget_bytes is None:
            continue
        audited = final.memory[cell.policy]["total_bytes"]
        if audited > cell.budget_bytes:
            raise BudgetExceeded(
                f"{run.method} at {cell.point_label}: audited memory {audited:,} bytes ({audited / MB:.3f} MB, "
                f"policy {cell.policy}) exceeds the budget of {cell.budget_bytes:,} bytes ({cell.budget_bytes / MB:.3f} MB)")


# -- the record --------------------------------------------------------------------------------
def _cell_dict(run: Run, cell) -> dict:
    return {**cell.as_row(), "dataset": run.dataset, "scenario": run.scenario, "seed": run.seed}


def summarize(results: list[TaskResult]) -> dict[str, float]:
    records = [r.as_record() for r in results]
    summary = {}
    for kind in ("cnn", "nme"):
        curve = [r[f"{kind}_accuracy"] for r in records]
        if any(np.isnan(curve)):
            summary |= {f"{kind}_average_accuracy": None, f"{kind}_last_accuracy": None, f"{kind}_forgetting": None}
            continue
        matrix = metrics.accuracy_matrix([r[f"{kind}_accuracy_per_task"] for r in records])
        summary |= {f"{kind}_average_accuracy": metrics.average_incremental_accuracy(curve),
                    f"{kind}_last_accuracy": metrics.last_accuracy(curve),
                    f"{kind}_forgetting": None if len(curve) < 2 else metrics.forgetting(matrix)}
    return summary


def build_record(run: Run, status: str, results: list[TaskResult], device: str, wall_seconds: float,
                 error: BaseException | None = None, speed: dict[str, Any] | None = None,
                 where: Path | None = None) -> dict:
    summary = {**summarize(results), "wall_seconds": wall_seconds} if status == "complete" else None
    return {
        "run_id": run.run_id, "status": status, "experiment": run.experiment,
        "cell": _cell_dict(run, run.cells[0]), "cells": [_cell_dict(run, c) for c in run.cells],
        "config": {**run.identity(), "experiment": run.experiment},
        "origin": origin(device, speed),
        "tasks": [r.as_record() for r in results],
        "summary": summary,
        "error": None if error is None else error_entry(error, device, where),
    }


def error_entry(error: BaseException, device: str, where: Path | None = None) -> dict:
    """The record's account of `error`; out-of-memory errors carry the device's memory figures."""
    message = space.describe(error, where)  # a full disk: said with the path (`where`, the run's folder) and the fix
    if isinstance(error, torch.cuda.OutOfMemoryError):
        message = f"{message} [{cuda_memory_text(device)}]"
    return {"type": type(error).__name__, "message": message,
            "traceback": "".join(traceback.format_exception(error)),
            "cuda_context_broken": breaks_cuda_context(error)}


def cuda_memory_text(device: str) -> str:
    """The memory figures of CUDA `device` (see memory_text), or why there are none."""
    try:
        return memory_text(torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device),
                           torch.cuda.max_memory_allocated(device), torch.cuda.get_device_properties(device).total_memory)
    except Exception as error:  # no CUDA here, or a context too broken to ask
        return f"CUDA memory figures unavailable: {error}"


def memory_text(allocated: int, reserved: int, max_allocated: int, total: int) -> str:
    gib = [value / 2**30 for value in (allocated, reserved, max_allocated, total)]
    return ("CUDA memory: {:.2f} GiB allocated, {:.2f} GiB reserved, {:.2f} GiB max allocated, "
            "{:.2f} GiB total").format(*gib)


# Messages of errors after which the process's CUDA context is unusable (every later CUDA call fails).
_BROKEN_CONTEXT = ("CUDA error", "device-side assert", "illegal memory access")


def breaks_cuda_context(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) leaves CUDA unusable in this process, so
    the worker must be replaced. Out-of-memory errors do not: the next run can use the device."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8
        if accelerator_error is not None and isinstance(error, accelerator_error):
            return True
        if (isinstance(error, RuntimeError) and not isinstance(error, torch.cuda.OutOfMemoryError)
                and any(marker in str(error) for marker in _BROKEN_CONTEXT)):
            return True
        error = error.__cause__ or error.__context__
    return False


def write_failed_record(run: Run, experiment_dir: Path, error_type: str, message: str, traceback_text: str) -> dict:
    """For failures the run could not record itself (a killed worker, out of memory)."""
    record = build_record(run, "failed", [], "unknown", 0.0)
    record["error"] = {"type": error_type, "message": message, "traceback": traceback_text,
                      "cuda_context_broken": False}
    write_json_atomic(record_path(experiment_dir, run.run_id), record)
    return record
