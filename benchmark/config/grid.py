"""The grid: an experiment expanded into runs (scenarios x seeds x methods x budget points),
each planned by the budget planner and named by a hash of everything that shapes its training.

Two cells that would train identically (Finetune keeps no exemplars, so every budget point
trains the same network) share one run id: the run happens once and its record serves every
cell it stands for.
"""
from __future__ import annotations

import functools
import itertools
import tempfile
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any, Callable

from budgets.planner import NOT_APPLICABLE, BudgetError, CellPlan, PlanContext, plan
from methods import METHODS
from methods.exemplar_formats import ExemplarFormat

from benchmark.files import stable_hash
from benchmark.config.experiment import EXEMPLAR_FORMAT, MODEL_STORAGE, Experiment
from benchmark.data import DATASETS, Scenario
from benchmark.data.specs import CIFAR_AUGMENTATION
from benchmark.data.encoded_size import EncodedSize, encoded_size, user_cache_dir
from benchmark.config.precision import precision_problem
from benchmark.config.profile import CPU_THREADS

DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Run:
    """One training run and the grid cells it stands for."""

    experiment: str
    dataset: str
    scenario: str
    seed: int              # class-order seed
    network_seed: int
    method: str
    backbone: str
    exemplars: int
    training: dict[str, Any]   # everything else that shapes training (schedules, options, subset)
    cells: tuple[CellPlan, ...]
    # A CPU-made model or record must never stand in for a CUDA run: kernels (and bf16) differ.
    device_type: str = "cpu"

    @property
    def run_id(self) -> str:
        return identity_hash(self.identity())

    def identity(self) -> dict[str, Any]:
        """The resolved config that determines this run's outcome (and so its id)."""
        return {"dataset": self.dataset, "scenario": self.scenario, "seed": self.seed,
                "network_seed": self.network_seed, "method": self.method, "backbone": self.backbone,
                "exemplars": self.exemplars, "device_type": self.device_type, **self.training}


def identity_hash(identity: dict[str, Any]) -> str:
    """The name of what an identity describes (a run's id, a first-task model's key): 12 hex digits
    of the SHA-256 of its canonical JSON (benchmark.files.stable_hash, which names image caches too)."""
    return stable_hash(identity, digits=12)


# The stored size of one exemplar in an encoded format, measured on the data set's images
# (benchmark.data.encoded_size); the planner needs it for formats whose size only encoding tells.
StoredSize = Callable[[ExemplarFormat], EncodedSize]


def measured_stored_size(experiment: Experiment, data_root: str | Path) -> StoredSize:
    """The stored-size measure of `experiment`'s data set (its training subset), cached in the user's
    cache folder (benchmark.data.encoded_size.user_cache_dir), or measured afresh where that cannot
    be written."""
    folder = user_cache_dir()

    def stored_size(fmt: ExemplarFormat) -> EncodedSize:
        measure = functools.partial(encoded_size, experiment.dataset, Path(data_root), fmt,
                                    images_per_class=experiment.profile.images_per_class)
        try:
            return measure(cache_dir=folder)
        except OSError:  # a cache folder that cannot be written: measure again (a fraction of a second)
            return measure(cache_dir=Path(tempfile.mkdtemp(prefix="cil-encoded-sizes-")))
    return stored_size


def plan_context(experiment: Experiment, scenario: str, exemplar_format: str = EXEMPLAR_FORMAT,
                 model_storage: str = MODEL_STORAGE, stored_size: StoredSize | None = None) -> PlanContext:
    spec = DATASETS[experiment.dataset]
    fmt = ExemplarFormat.parse(exemplar_format)
    measured = None
    if fmt.fixed_image_bytes(spec.image_shape) is None and stored_size is not None:
        measured = stored_size(fmt)
    mean, header = (None, 0) if measured is None else (measured.mean_image_bytes, measured.shared_header_bytes)
    return PlanContext(
        task_sizes=tuple(Scenario.parse(scenario).task_sizes(spec.num_classes)),
        image_shape=spec.image_shape, family=experiment.family, benchmark=experiment.benchmark_backbone,
        policy=experiment.policy, anchor_exemplars=experiment.anchor_exemplars,
        min_exemplars=experiment.min_exemplars,
        train_images=spec.num_classes * spec.per_class("train", experiment.profile.images_per_class),
        exemplar_format=fmt.name, stored_image_bytes=mean, shared_header_bytes=header, model_storage=model_storage,
        # hashable: the planner caches the final models it counts
        method_options=tuple((method, tuple(sorted(resolved_options(experiment, method, scenario).items())))
                             for method in experiment.methods))


def resolved_options(experiment: Experiment, method: str, scenario: str) -> dict[str, Any]:
    """`method`'s options as its runs get them in `scenario` ("auto" values made concrete)."""
    return METHODS.get(method).resolve_options(experiment.method_options.get(method, {}),
                                               Scenario.parse(scenario).base)


# Raised whenever a code change alters what a run trains (initialization, a loss, augmentation):
# it is part of every run id and first-task key, so records and first-task models made by older
# code are never taken for the new code's. 2: the reference initialization (docs/fidelity.md).
TRAINING_REVISION = 2
# Raised whenever the seeds of random exemplar selection change. It is part of the id of runs that
# select exemplars at random only (herding runs and methods without exemplars draw no class stream,
# so their records stand). 2: class streams apart from task streams (train/engine.py stream_seed).
RANDOM_SELECTION_REVISION = 2


def training_settings(experiment: Experiment, cell: CellPlan, scenario: str) -> dict[str, Any]:
    profile, method, spec = experiment.profile, cell.method, DATASETS[experiment.dataset]
    return {
        "revision": TRAINING_REVISION,
        "first_task": asdict(profile.first_task),
        "later_tasks": asdict(profile.later_tasks[method]),
        # Only for a method with phases after its main one: every other run keeps its id.
        **({"phases": {name: asdict(schedule) for name, schedule in profile.phase_schedules(method).items()}}
           if profile.phase_schedules(method) else {}),
        "images_per_class": profile.images_per_class,
        "test_images_per_class": profile.test_images_per_class,
        "augment": profile.augment,
        # Only where it is not the CIFAR recipe every earlier run trained with: CIFAR run ids stand,
        # while ImageNet runs from the time it trained with the CIFAR recipe are never taken for these.
        **({"augmentation": spec.augmentation} if spec.augmentation != CIFAR_AUGMENTATION else {}),
        "precision": profile.precision,
        "eval_batch_size": profile.eval_batch_size,
        "herding_batch_size": profile.herding_batch_size,
        # Only when not the default: the runs of every experiment written before it keep their ids.
        **({"cpu_threads": profile.cpu_threads} if profile.cpu_threads != CPU_THREADS else {}),
        "exemplar_selection": experiment.exemplar_selection,
        **({"random_selection_revision": RANDOM_SELECTION_REVISION}
           if experiment.exemplar_selection == "random" and METHODS.get(method).uses_exemplars else {}),
        "method_options": resolved_options(experiment, method, scenario),
        **axis_settings(experiment, cell),
    }


def axis_settings(experiment: Experiment, cell: CellPlan) -> dict[str, Any]:
    """What the budget axes add to a run's identity: nothing at their defaults (raw exemplars, fp32
    blocks) or where they do not apply, so that those runs keep their ids and are shared.

    - exemplar_format (not raw): the format, and the byte budget the engine fills with real sizes.
    - model_storage (not fp32): the dtype frozen blocks are stored in.
    - storage_probe: an fp32 run of a method that freezes blocks, in an experiment that lists other
      precisions, also measures each one's accuracy cost alone (its frozen blocks converted, evaluated).
    """
    settings: dict[str, Any] = {}
    if cell.exemplar_format not in (EXEMPLAR_FORMAT, NOT_APPLICABLE):
        settings |= {"exemplar_format": cell.exemplar_format,
                     "exemplar_byte_budget": cell.budget_bytes - cell.model_bytes}
    if cell.model_storage not in (MODEL_STORAGE, NOT_APPLICABLE):
        settings["model_storage"] = cell.model_storage
    probes = [storage for storage in experiment.model_storage if storage != MODEL_STORAGE]
    if cell.model_storage == MODEL_STORAGE and probes:
        settings["storage_probe"] = probes
    return settings


def expand(experiment: Experiment, device_type: str = "cpu", stored_size: StoredSize | None = None) -> list[Run]:
    """Every run of the experiment on `device_type` ("cpu" or "cuda"), in a stable order: scenarios x
    exemplar formats x model storages x seeds x planned cells. `stored_size` measures an encoded
    format's mean exemplar size (needed only for such formats). Raises one BudgetError listing every misfit."""
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"device_type {device_type!r} is not allowed; use one of {', '.join(DEVICE_TYPES)}")
    runs: dict[str, Run] = {}
    problems: list[str] = []
    for scenario, fmt, storage in itertools.product(experiment.scenarios, experiment.exemplar_format,
                                                    experiment.model_storage):
        try:
            cells = plan(experiment.methods, experiment.budgets,
                         plan_context(experiment, scenario, fmt, storage, stored_size))
        except BudgetError as error:
            axes = "".join(f", {value}" for value, default in ((fmt, EXEMPLAR_FORMAT), (storage, MODEL_STORAGE))
                           if value != default)
            problems.append(f"{scenario}{axes}: {error}")
            continue
        for seed in experiment.seeds:
            for cell in cells:
                run = Run(experiment.name, experiment.dataset, scenario, seed, experiment.network_seed,
                          cell.method, cell.backbone, cell.exemplars,
                          training_settings(experiment, cell, scenario), (cell,), device_type)
                known = runs.get(run.run_id)
                runs[run.run_id] = run if known is None else _with_cell(known, cell)
    if problems:
        raise BudgetError("\n".join(dict.fromkeys(problems)))
    return list(runs.values())


def precision_problems(runs: list[Run], device_type: str) -> list[str]:
    """Why these runs cannot train on `device_type` (empty when they can), one line per experiment
    and precision, so validation can refuse the grid before any worker starts."""
    problems = {(run.experiment, precision_problem(run.training["precision"], device_type)): None for run in runs}
    return [f"{experiment}: {problem}" for experiment, problem in problems if problem]


def _with_cell(run: Run, cell: CellPlan) -> Run:
    """`run` serving `cell` too; a cell it already serves (Finetune under every exemplar format) once."""
    if cell in run.cells:
        return run
    return Run(**{**run.__dict__, "cells": run.cells + (cell,)})


def plan_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per grid cell: what `run_all.py plan --csv` prints."""
    rows = []
    for run in runs:
        for cell in run.cells:
            row = {"run_id": run.run_id, "scenario": run.scenario, "seed": run.seed, **cell.as_row()}
            rows.append(row)
    return rows
