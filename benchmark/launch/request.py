"""A `run` request, checked before anything runs: every problem at once (config, budgets, data,
devices, backend), each with its fix, so that a grid never fails run after run on one mistake.

The grid is expanded for the device type the runs will train on, which is part of each run's
identity (a CPU record never stands in for a CUDA run): "cuda" with local GPUs; on a Ray cluster
(--address) the cluster is asked, and "cuda" when it has any GPU, since each run then takes a GPU
share (benchmark.launch.ray_executor.RayExecutor); on SLURM, "cuda" when each job gets a GPU (benchmark.launch.slurm).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.launch import devices, slurm

if TYPE_CHECKING:
    from benchmark.config.experiment import Experiment
    from benchmark.config.grid import Run


@dataclass(frozen=True)
class Target:
    """A checked `run` request: what to run and where."""

    experiment: Experiment
    runs: list[Run]
    experiment_dir: Path
    gpus: list[int]        # torch's numbers of the GPUs to use; [] = the CPU


def check_run_request(args: argparse.Namespace) -> tuple[Target | None, list[str]]:
    """The checked request, or None and every problem found (`args`: the `run` command's options)."""
    from benchmark.config.experiment import ConfigError, load_experiment

    problems: list[str] = []
    experiment = None
    try:
        experiment = load_experiment(args.experiment)
    except ConfigError as error:
        problems.append(str(error))
    if experiment is not None:
        problems += data_problems(experiment.dataset, args.data_root, download=not args.dry_run)
    gpus, device_problems = devices.check_devices(args.gpus, args.runs_per_gpu, args.workers, args.address)
    backend_problems = _backend_problems(args) + slurm.request_problems(args, experiment)
    problems += device_problems + backend_problems
    runs: list[Run] = []
    if experiment is not None:
        device_type, type_problems = _device_type(args, gpus, not backend_problems, experiment)
        runs, grid_problems = _grid(experiment, device_type, args.data_root)
        problems += type_problems + grid_problems
    experiment_dir = Path(args.results) / (experiment.name if experiment else "")
    problems += run_folder_problems([run.run_id for run in runs], experiment_dir, Path(args.results))
    if problems:
        return None, problems
    return Target(experiment, runs, experiment_dir, gpus), []


def _device_type(args: argparse.Namespace, gpus: list[int], ask_cluster: bool,
                 experiment: Experiment) -> tuple[str, list[str]]:
    """"cuda" or "cpu" (see the module docstring). The cluster connection stays open for the run.
    With a bad address the grid is still checked, as for the CPU."""
    if args.backend == "slurm":
        return slurm.device_type(args, experiment), []
    if not (args.backend == "ray" and args.address and ask_cluster):
        return ("cuda" if gpus else "cpu"), []
    try:
        devices.start_ray(args.address, [])
        import ray

        return ("cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"), []
    except Exception as error:  # noqa: BLE001 -- whatever Ray says, nothing has run yet
        return "cpu", [f"--address {args.address}: could not connect to the Ray cluster: {error}"]


def _grid(experiment: Experiment, device_type: str, data_root: str) -> tuple[list[Run], list[str]]:
    from budgets.planner import BudgetError

    from benchmark.config.grid import expand, measured_stored_size, precision_problems
    from benchmark.data import DataError

    try:
        runs = expand(experiment, device_type=device_type, stored_size=measured_stored_size(experiment, data_root))
    except (BudgetError, DataError) as error:
        return [], [f"budgets: {error}"]
    return runs, precision_problems(runs, device_type)


def run_folder_problems(run_ids: list[str], experiment_dir: Path, results: Path | None = None) -> list[str]:
    """Why the records cannot be written under `experiment_dir` (in `results`, the --results root): a
    file where a folder must be, a folder that cannot be written (tried with a folder made and removed
    in the nearest existing one, so a dry run leaves nothing), or run folders that would land outside
    it (ids are hex hashes; checked anyway)."""
    root = experiment_dir.resolve()
    problems = [f"run {run_id!r} would write outside {root}" for run_id in run_ids
                if not (root / "runs" / run_id).resolve().is_relative_to(root)]
    option = f"--results {results}: " if results is not None else ""
    fix = "give a folder you can write, or a path where one can be made (e.g. --results results)"
    existing = next(folder for folder in (root, *root.parents) if folder.exists())
    if not existing.is_dir():
        return problems + [f"{option}{existing} is a file, not a folder; {fix}"]
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as error:
        problems.append(f"{option}cannot write in {existing}: {error.strerror}; {fix}")
    return problems


def data_problems(dataset: str, data_root: str, download: bool) -> list[str]:
    """The data set, checked as a worker would load it; a missing CIFAR set is downloaded here, once
    (unless a dry run), so that workers never race to fetch it."""
    from benchmark.data import DataError
    from benchmark.data.checks import check_dataset

    try:
        check_dataset(dataset, data_root, download=download)
    except DataError as error:
        return [str(error)]
    return []


def _backend_problems(args: argparse.Namespace) -> list[str]:
    if args.backend != "ray":
        problems = [f"--address {args.address}: needs --backend ray"] if args.address else []
        if args.ray_shared_fs is not None:
            problems.append(f"--{'' if args.ray_shared_fs else 'no-'}ray-shared-fs: needs --backend ray")
        return problems
    if importlib.util.find_spec("ray") is None:
        return ["--backend ray: ray is not installed in this environment (pip install 'ray[default]')"]
    return devices.address_problems(args.address) if args.address else []
