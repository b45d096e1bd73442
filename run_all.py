#!/usr/bin/env python
"""The suite's command line.

  python run_all.py plan EXPERIMENT.yaml [--csv]   the expanded grid: backbones, exemplars, bytes
  python run_all.py run EXPERIMENT.yaml [options]  train the grid (resumable; see run --help)
  python run_all.py report results/<experiment>    tables, plots and report.html of the records so far
  python run_all.py report DIR DIR [...] [--page PATH]
                                                   each folder's report, then one page comparing them
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Only light modules at the top: `--help` must answer without importing torch (the registry, the
# planner and the runner import it), so each command imports what it needs when it runs.
from benchmark.config import slurm_options
from benchmark.launch import devices, slurm
from benchmark.launch.backends import BACKENDS
from benchmark.launch.executors import DispatchError

if TYPE_CHECKING:
    from benchmark.config.grid import Run
    from benchmark.launch.request import Target
    from benchmark.launch.resume import Failure
    from benchmark.launch.sweep import Runner, Summary

PLAN_COLUMNS = ["method", "seed", "budget_mb", "backbone", "model_params", "exemplars", "model_bytes",
                "exemplar_bytes", "total_bytes", "policy", "scenario", "point", "point_label",
                "num_backbones", "budget_bytes", "total_mb", "exemplar_format", "model_storage", "run_id"]
INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}   # exit codes: 128 + the signal number
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)   # a full disk, or the user's quota on it is used up


class DiskFull(Exception):
    """A write of this process (grid, locks, records, report) that found no space: where, and how much is left."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"no space left to write {path} ({error.strerror}; {_free_space(path)} free on its disk)")


@contextlib.contextmanager
def naming_a_full_disk(path: Path) -> Iterator[None]:
    """A full disk's OSError as DiskFull naming the file (or else `path`: a failed write() names none)."""
    try:
        yield
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        raise DiskFull(Path(error.filename) if error.filename else path, error) from None


def _free_space(path: Path) -> str:
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    try:
        return f"{shutil.disk_usage(folder).free / 2 ** 20:,.1f} MB"
    except OSError:
        return "unknown"


def plan_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from benchmark.config.experiment import load_experiment
    from benchmark.config.grid import expand, measured_stored_size, plan_rows

    experiment = load_experiment(args.experiment)
    runs = expand(experiment, stored_size=measured_stored_size(experiment, args.data_root))
    table = pd.DataFrame(plan_rows(runs))[PLAN_COLUMNS].astype({"point": "Int64", "budget_bytes": "Int64"})
    if args.csv:
        table.to_csv(sys.stdout, index=False)
        return 0
    print(f"{experiment.name}: {experiment.dataset}, {', '.join(experiment.scenarios)}, "
          f"{len(table)} cells in {len(runs)} runs, memory policy {experiment.policy!r} (MB = 2^20 bytes)")
    for line in exemplar_size_lines(runs):
        print(line)
    shown = table.assign(budget_mb=table.budget_mb.map(_mb), total_mb=table.total_mb.map(_mb),
                         point=table.point.map(lambda p: "-" if pd.isna(p) else int(p)))
    axes = [axis for axis, default in (("exemplar_format", ["raw"]), ("model_storage", ["fp32"]))
            if sorted(set(table[axis]) - {"-"}) not in ([], default)]  # "-": not applicable
    columns = ["scenario", "seed", "point", "budget_mb", "method", *axes, "backbone", "num_backbones",
               "model_params", "exemplars", "total_mb", "run_id"]
    print(shown[columns].to_string(index=False))
    return 0


def exemplar_size_lines(runs: list[Run]) -> list[str]:
    """What one exemplar costs in each encoded format of the plan: the measured estimate behind its
    exemplar counts (the runs fill their byte budgets with the real sizes)."""
    lines = {}
    for cell in (cell for run in runs for cell in run.cells):
        planned = cell.exemplar_format not in ("raw", "-") and cell.exemplars  # "-": not applicable
        if planned and cell.exemplar_format not in lines:
            per_image = cell.exemplar_bytes / cell.exemplars
            lines[cell.exemplar_format] = (f"exemplar_format {cell.exemplar_format}: about {per_image:,.0f} bytes "
                                           f"per exemplar (estimated from the data set's measured mean stored "
                                           f"size); each run fills its byte budget with the real sizes")
    return list(lines.values())


def _mb(value: float | None) -> str:
    import pandas as pd

    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


# -- run ------------------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), handled as Ctrl-C is."""

    signum = signal.SIGTERM


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted()


def run_command(args: argparse.Namespace) -> int:
    """Check, then run the grid; Ctrl-C or SIGTERM at any point stops the workers and exits 130 / 143."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    except KeyboardInterrupt as interruption:
        number = getattr(interruption, "signum", signal.SIGINT)
        print(f"\ninterrupted ({signal.Signals(number).name}): workers stopped; the same command resumes "
              "(runs without a record run again)", file=sys.stderr)
        return INTERRUPTED[number]
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from benchmark.launch import sweep
    from benchmark.launch.resume import recorded_failure, sort_by_status
    from benchmark.launch.request import check_run_request

    target, problems = check_run_request(args)
    if target is None:
        listed = "".join("\n  - " + problem.replace("\n", "\n    ") for problem in problems)
        print(f"error: nothing was run; fix these first:{listed}", file=sys.stderr)
        return 2
    runner = sweep.default_runner()
    resume = sort_by_status(target.runs, target.experiment_dir, args.retry_failed)
    workers = args.workers or devices.default_cpu_workers()
    where = (slurm.describe(slurm_options.resolve(target.experiment.slurm, args)) if args.backend == "slurm" else
             devices.describe_placement(args.backend, target.gpus, args.runs_per_gpu, workers, args.address,
                                           target.experiment.profile.cpu_threads))
    print(f"{target.experiment.name}: {resume.line()}")
    if args.dry_run:
        return _print_dry_run(resume.to_run, runner, where)
    _write_grid(target, Path(args.experiment))
    try:
        with naming_a_full_disk(target.experiment_dir):  # locks, and records that travel back through Ray
            summary = _execute(args, target, resume.to_run, runner, where) if resume.to_run else sweep.Summary()
    except DispatchError as error:  # the executor could not start: nothing ran
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary.elsewhere:
        print(f"{summary.elsewhere} run(s) were run meanwhile by another process on this experiment")
    failures = summary.failures + [recorded_failure(run, target.experiment_dir) for run in resume.failed]
    _print_failures(failures, len(target.runs), target.experiment_dir, args.retry_failed)
    _report(target.experiment_dir)
    return 1 if failures else 0


def _write_grid(target: Target, experiment_file: Path) -> None:
    """The current grid's cells, which the report builds its tables from (records of other grids
    in the same folder are left out), and the experiment file's keys as read (includes merged),
    which report.html shows."""
    from benchmark.config.experiment import read_yaml
    from benchmark.config.grid import plan_rows
    from benchmark.files import write_json_atomic
    from benchmark.report.writer import GRID_FILE

    read = {"name": experiment_file.name, "keys": read_yaml(experiment_file)}
    with naming_a_full_disk(target.experiment_dir / GRID_FILE):
        write_json_atomic(target.experiment_dir / GRID_FILE,
                          {"experiment": target.experiment.name, "experiment_file": read,
                           "cells": plan_rows(target.runs)})


def _execute(args: argparse.Namespace, target: Target, runs: list[Run], runner: Runner, where: str) -> Summary:
    from benchmark.launch.backends import open_executor
    from benchmark.launch.ray_executor import NodeCheck
    from benchmark.launch.sweep import Sweep

    print(f"running on {where}; results in {target.experiment_dir}")
    workers = args.workers or devices.default_cpu_workers()
    node_check = NodeCheck(target.experiment.dataset, Path(args.data_root).resolve(), Path(args.results).resolve())
    executor = open_executor(args.backend, target.gpus, args.runs_per_gpu, workers, args.address,
                             target.experiment_dir, node_check, args.ray_shared_fs,
                             slurm_options.resolve(target.experiment.slurm, args))
    finished = False
    try:
        summary = Sweep(runs, target.experiment_dir, Path(args.results), Path(args.data_root), executor, runner,
                        options={"keep_checkpoints": args.keep_checkpoints}).run()
        finished = True
        return summary
    finally:  # interrupted: kill the jobs in flight (their runs have no record yet and run again)
        executor.close(cancel=not finished)


def _print_failures(failures: list[Failure], total: int, experiment_dir: Path, retried: bool) -> None:
    if failures:
        hint = "" if retried else " (--retry-failed runs them again)"
        print(f"{len(failures)} of {total} runs failed{hint}:", file=sys.stderr)
        print("\n".join(failure_lines(failures, experiment_dir)), file=sys.stderr)


def failure_lines(failures: list[Failure], experiment_dir: Path) -> list[str]:
    """One line per failed run: id, method, budget, error, and where to read more."""
    lines = []
    for failure in failures:
        run, folder = failure.run, experiment_dir / "runs" / failure.run.run_id
        budget = ", ".join(dict.fromkeys(str(cell.point_label) for cell in run.cells))
        message = (failure.message.splitlines() or [""])[0][:400]  # room for a path and its fix
        lines.append(f"  {run.run_id}  {run.method}  budget {budget}  {failure.error_type}: {message}\n"
                     f"      log {folder / 'log.txt'}  record {folder / 'record.json'}")
    return lines


def _print_dry_run(runs: list[Run], runner: Runner, where: str) -> int:
    from benchmark.launch.sweep import expected_cost, group_by_first_task

    keys = group_by_first_task(runs, runner)
    print(f"would train {len(keys)} first-task model(s), then {len(runs)} run(s), longest first, on {where}")
    for run in sorted(runs, key=expected_cost, reverse=True):
        labels = ", ".join(dict.fromkeys(str(cell.point_label) for cell in run.cells))
        print(f"  {run.run_id}  {run.scenario}  seed {run.seed}  {run.method:<9} {run.backbone:<14} "
              f"{run.exemplars:>6} exemplars  budget {labels}")
    return 0


# -- report ---------------------------------------------------------------------------------------
def report_command(args: argparse.Namespace) -> int:
    """Each folder's report; with several, then the page comparing them."""
    folders = [Path(folder) for folder in args.experiment_dirs]
    problems = [f"experiment folder {folder} does not exist (expected results/<experiment name>)"
                for folder in folders if not folder.is_dir()]
    if args.page and len(folders) < 2:
        problems.append("--page names the page comparing several experiments: give two folders or more")
    if len({folder.resolve() for folder in folders}) < len(folders):
        problems.append("a folder is given twice: compare different experiments")
    if problems:
        print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        return 2
    for folder in folders:
        _report(folder)
    if len(folders) > 1:
        from benchmark.report.compare import default_page_path, spread_lines, write_comparison

        for line in spread_lines(folders):
            print(line)
        page = Path(args.page) if args.page else default_page_path(folders)
        with naming_a_full_disk(page):
            print(f"\ncomparison page: {write_comparison(folders, page)}")
    return 0


def _report(experiment_dir: Path) -> None:
    from benchmark.report.writer import write_report  # late: plotting libraries load only when reporting

    with naming_a_full_disk(experiment_dir):
        paths = write_report(experiment_dir)
    if paths:
        print("\nwritten:\n" + "\n".join(f"  {path}" for path in paths.values()))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description="Memory-aligned class-incremental learning benchmark.")
    commands = top.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="print the expanded grid with budgets (needs no data, no GPU)")
    plan.add_argument("experiment", help="experiment YAML file")
    plan.add_argument("--csv", action="store_true", help="CSV, one row per grid cell")
    plan.add_argument("--data-root", default=os.environ.get("CIL_DATA_ROOT", "data"),
                      help="folder holding the data sets, read only to measure the size of encoded exemplar "
                           "formats (jpeg) (default: $CIL_DATA_ROOT or data)")
    plan.set_defaults(handler=plan_command)
    _add_run_parser(commands)
    report = commands.add_parser(
        "report", help="write the tables, plots and report.html of an experiment's records; with "
                       "several experiments, also one page comparing them",
        description="Write each folder's report set (runs.csv, tasks.csv, summary.csv, auc.csv, "
                    "plots/ and report.html, one self-contained page of all of it). With several "
                    "folders, then write one page comparing them: per experiment its scenarios, "
                    "devices, numerics, AUC table and accuracy-vs-memory figure, and one table of "
                    "every method across them.")
    report.add_argument("experiment_dirs", nargs="+", metavar="DIR",
                        help="an experiment's results folder, e.g. results/cifar100_b0inc10_paper")
    report.add_argument("--page", metavar="PATH",
                        help="where to write the comparison page (with several folders; default: "
                             "<parent of the first folder>/compare_<name1>_<name2>[...].html)")
    report.set_defaults(handler=report_command)
    return top


def _add_run_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="train every run of the grid; finished runs are skipped",
                              description="Validate everything, then train the first-task models once "
                                          "each and every run, longest first. Two commands on the same experiment "
                                          "share its runs. Exit code: 0 all complete, 1 some failed, "
                                          "2 nothing run (a problem with the request), 130 interrupted "
                                          "(Ctrl-C), 143 terminated (SIGTERM); the same command resumes.")
    run.add_argument("experiment", help="experiment YAML file")
    run.add_argument("--results", default="results", help="results root; records go to RESULTS/<name>/runs/ "
                     "(default: results)")
    run.add_argument("--data-root", default=os.environ.get("CIL_DATA_ROOT", "data"),
                     help="folder holding the data sets (default: $CIL_DATA_ROOT or data)")
    run.add_argument("--gpus", help="CUDA devices to use, e.g. 0,1, or cpu (default: every visible GPU, "
                     "else the CPU)")
    run.add_argument("--runs-per-gpu", type=int, default=1, help="runs sharing one GPU at a time (default 1)")
    run.add_argument("--workers", type=int, help="runs at once on the CPU, each of 1 thread whatever their number, so that it does not change a run's numbers (default: one per core, at most 8)")
    run.add_argument("--backend", choices=BACKENDS, default="local",
                     help="local (or joblib): worker processes on this machine (default); ray: Ray tasks, "
                          "local or on a cluster (--address); slurm: SLURM job arrays through submitit "
                          "(--slurm-* options); inline: in this process, one at a time, for debugging")
    run.add_argument("--address", help="HOST:PORT of a running Ray cluster (with --backend ray)")
    run.add_argument("--ray-shared-fs", action=argparse.BooleanOptionalAction,
                     help="whether every Ray node sees this machine's results root (default: found out by "
                          "checking each node); without, models and records travel through Ray")
    run.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    run.add_argument("--keep-checkpoints", action="store_true",
                     help="keep each complete run's last checkpoint (by default only failed or interrupted "
                          "runs keep theirs, to go on from it)")
    run.add_argument("--dry-run", "--only-plan-check", dest="dry_run", action="store_true",
                     help="validate and print what would run, then stop")
    slurm_options.add_arguments(run)
    run.set_defaults(handler=run_command)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from benchmark.config.experiment import ConfigError  # after parsing: `--help` has exited already
    from budgets.planner import BudgetError

    try:
        return args.handler(args)
    except (ConfigError, BudgetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DiskFull as full:
        print(f"\nerror: {full}. Nothing finished is lost (records and models are written whole or not at "
              "all): free some space, or give --results on another disk, then run the same command again; it "
              "goes on from what is written.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
