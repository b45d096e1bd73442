#!/usr/bin/env python
"""The suite's command line.

  python run_all.py plan EXPERIMENT.yaml [--csv]   the expanded grid: backbones, exemplars, bytes
  python run_all.py run EXPERIMENT.yaml [options]  train the grid (resumable; see run --help)
  python run_all.py report results/<experiment>    tables and plots of the records written so far
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark import devices, dispatch
from benchmark.config import ConfigError, Experiment, load_experiment
from benchmark.grid import Run, expand, plan_rows
from budgets.planner import BudgetError

PLAN_COLUMNS = ["method", "seed", "budget_mb", "backbone", "model_params", "exemplars", "model_bytes",
                "exemplar_bytes", "total_bytes", "policy", "scenario", "point", "point_label",
                "num_backbones", "budget_bytes", "total_mb", "run_id"]


def plan_command(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.experiment)
    runs = expand(experiment)
    table = pd.DataFrame(plan_rows(runs))[PLAN_COLUMNS].astype({"point": "Int64", "budget_bytes": "Int64"})
    if args.csv:
        table.to_csv(sys.stdout, index=False)
        return 0
    print(f"{experiment.name}: {experiment.dataset}, {', '.join(experiment.scenarios)}, "
          f"{len(table)} cells in {len(runs)} runs, memory policy {experiment.policy!r} (MB = 2^20 bytes)")
    shown = table.assign(budget_mb=table.budget_mb.map(_mb), total_mb=table.total_mb.map(_mb),
                         point=table.point.map(lambda p: "-" if pd.isna(p) else int(p)))
    columns = ["scenario", "seed", "point", "budget_mb", "method", "backbone", "num_backbones",
               "model_params", "exemplars", "total_mb", "run_id"]
    print(shown[columns].to_string(index=False))
    return 0


def _mb(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


# -- run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A checked `run` request: what to run and where."""

    experiment: Experiment
    runs: list[Run]
    experiment_dir: Path
    gpus: list[int]        # torch's numbers of the GPUs to use; [] = the CPU


def check_run_request(args: argparse.Namespace) -> tuple[Target | None, list[str]]:
    """Every problem of the request at once, before anything runs: config, budgets, data, devices."""
    problems: list[str] = []
    experiment, runs = None, []
    try:
        experiment = load_experiment(args.experiment)
        runs = expand(experiment)
    except ConfigError as error:
        problems.append(str(error))
    except BudgetError as error:
        problems.append(f"budgets: {error}")
    if experiment is not None:
        problems += _data_problems(experiment.dataset, args.data_root)
    gpus, device_problems = devices.check_devices(args.gpus, args.runs_per_gpu, args.workers, args.address)
    problems += device_problems + _backend_problems(args)
    experiment_dir = Path(args.results) / (experiment.name if experiment else "")
    problems += dispatch.run_folder_problems([run.run_id for run in runs], experiment_dir)
    if problems:
        return None, problems
    return Target(experiment, runs, experiment_dir, gpus), []


def _data_problems(dataset: str, data_root: str) -> list[str]:
    """The data set must be there before anything trains; a missing one is downloaded here, once,
    where torchvision can (CIFAR on a machine with a network), so workers never race to fetch it."""
    from benchmark.data import DataError, find_dataset_dir, load_dataset

    try:
        find_dataset_dir(dataset, data_root)
    except DataError:
        try:
            load_dataset(dataset, data_root, download=True)
        except DataError as error:
            return [str(error)]
    return []


def _backend_problems(args: argparse.Namespace) -> list[str]:
    if args.backend != "ray":
        return [f"--address {args.address}: needs --backend ray"] if args.address else []
    if importlib.util.find_spec("ray") is None:
        return ["--backend ray: ray is not installed in this environment (pip install 'ray[default]')"]
    return []


def run_command(args: argparse.Namespace) -> int:
    target, problems = check_run_request(args)
    if target is None:
        listed = "".join("\n  - " + problem.replace("\n", "\n    ") for problem in problems)
        print(f"error: nothing was run; fix these first:{listed}", file=sys.stderr)
        return 2
    runner = dispatch.default_runner()
    resume = dispatch.sort_by_status(target.runs, target.experiment_dir, runner, args.retry_failed)
    workers = args.workers or devices.default_cpu_workers()
    where = devices.describe_placement(args.backend, target.gpus, args.runs_per_gpu, workers, args.address)
    print(f"{target.experiment.name}: {resume.line()}")
    if args.dry_run:
        return _print_dry_run(resume.to_run, runner, where)
    try:
        failures = _execute(args, target, resume.to_run, runner, where) if resume.to_run else []
    except dispatch.DispatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the same command resumes (runs without a record run again)", file=sys.stderr)
        return 130
    failures += [dispatch.recorded_failure(run, target.experiment_dir) for run in resume.failed]
    _print_failures(failures, len(target.runs), target.experiment_dir, args.retry_failed)
    _report(target.experiment_dir)
    return 1 if failures else 0


def _execute(args: argparse.Namespace, target: Target, runs: list[Run], runner: dispatch.Runner,
             where: str) -> list[dispatch.Failure]:
    print(f"running on {where}; results in {target.experiment_dir}")
    workers = args.workers or devices.default_cpu_workers()
    executor = dispatch.open_executor(args.backend, target.gpus, args.runs_per_gpu, workers,
                                      args.address, target.experiment_dir / "workers")
    try:
        return dispatch.execute_grid(runs, target.experiment_dir, Path(args.results), Path(args.data_root),
                                     executor, runner)
    finally:
        executor.close()


def _print_failures(failures: list[dispatch.Failure], total: int, experiment_dir: Path, retried: bool) -> None:
    if failures:
        hint = "" if retried else " (--retry-failed runs them again)"
        print(f"{len(failures)} of {total} runs failed{hint}:", file=sys.stderr)
        print("\n".join(dispatch.failure_lines(failures, experiment_dir)), file=sys.stderr)


def _print_dry_run(runs: list[Run], runner: dispatch.Runner, where: str) -> int:
    keys = dispatch.group_by_first_task(runs, runner)
    print(f"would train {len(keys)} first-task model(s), then {len(runs)} run(s), on {where}")
    for run in runs:
        labels = ", ".join(dict.fromkeys(str(cell.point_label) for cell in run.cells))
        print(f"  {run.run_id}  {run.scenario}  seed {run.seed}  {run.method:<9} {run.backbone:<14} "
              f"{run.exemplars:>6} exemplars  budget {labels}")
    return 0


# -- report ---------------------------------------------------------------------------------------
def report_command(args: argparse.Namespace) -> int:
    folder = Path(args.experiment_dir)
    if not folder.is_dir():
        print(f"error: experiment folder {folder} does not exist (expected results/<experiment name>)",
              file=sys.stderr)
        return 2
    _report(folder)
    return 0


def _report(experiment_dir: Path) -> None:
    from benchmark.report import write_report  # late: plotting libraries load only when reporting

    paths = write_report(experiment_dir)
    if paths:
        print("\nwritten:\n" + "\n".join(f"  {path}" for path in paths.values()))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description="Memory-aligned class-incremental learning benchmark.")
    commands = top.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="print the expanded grid with budgets (needs no data, no GPU)")
    plan.add_argument("experiment", help="experiment YAML file")
    plan.add_argument("--csv", action="store_true", help="CSV, one row per grid cell")
    plan.set_defaults(handler=plan_command)
    _add_run_parser(commands)
    report = commands.add_parser("report", help="write the tables and plots of an experiment's records")
    report.add_argument("experiment_dir",
                        help="the experiment's results folder, e.g. results/cifar100_b0inc10_paper")
    report.set_defaults(handler=report_command)
    return top


def _add_run_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="train every run of the grid; finished runs are skipped",
                              description="Validate everything, then train the first-task models once "
                                          "each and every run. Exit code: 0 all complete, 1 some failed, "
                                          "2 nothing run (a problem with the request).")
    run.add_argument("experiment", help="experiment YAML file")
    run.add_argument("--results", default="results", help="results root; records go to RESULTS/<name>/runs/ "
                     "(default: results)")
    run.add_argument("--data-root", default=os.environ.get("CIL_DATA_ROOT", "data"),
                     help="folder holding the data sets (default: $CIL_DATA_ROOT or data)")
    run.add_argument("--gpus", help="CUDA devices to use, e.g. 0,1, or cpu (default: every visible GPU, "
                     "else the CPU)")
    run.add_argument("--runs-per-gpu", type=int, default=1, help="runs sharing one GPU at a time (default 1)")
    run.add_argument("--workers", type=int, help="runs at once on the CPU, cores split between them (default: one per core, at most 8)")
    run.add_argument("--backend", choices=dispatch.BACKENDS, default="local",
                     help="local (or joblib): worker processes on this machine (default); ray: Ray tasks, "
                          "local or on a cluster (--address); inline: in this process, one at a time, "
                          "for debugging")
    run.add_argument("--address", help="HOST:PORT of a running Ray cluster (with --backend ray)")
    run.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    run.add_argument("--dry-run", "--only-plan-check", dest="dry_run", action="store_true",
                     help="validate and print what would run, then stop")
    run.set_defaults(handler=run_command)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, BudgetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
