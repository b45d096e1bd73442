"""Runs as SLURM jobs, through submitit: one run (or first-task model) per array task.

The resources are declared once, in SlurmOptions (benchmark/config/slurm_options.py): the experiment
file's optional `slurm:` section sets them, and the command line's `--slurm-*` options win.

- Arrays: the sweep submits jobs and then calls flush(); every flush sends the jobs submitted
  since as one job array (`executor.batch()`). The first flush holds the first-task models only
  (runs wait for theirs), so they form the first array; the runs follow, each batch of ready runs
  one array, longest first.
- Concurrency: at most `array_parallelism` jobs of the grid are queued or running at once (the
  executor's capacity; one limit over all arrays, which SLURM's per-array %N could not give).
- Records: each job writes its record (and checkpoints) on the shared results root itself, so
  `shares_filesystem` is True; submitit's logs go to results/<experiment>/slurm/<job id>/.
- A job that SLURM ends without a result (time limit, preemption, node failure, scancel) is a
  failed Outcome of type WorkerCrashedError carrying submitit's message; the sweep records it,
  and `--retry-failed` runs it again from its last checkpoint (the runner saves one per task).
- Ctrl-C or SIGTERM of the driver cancels the grid's queued and running jobs (scancel), as the
  other backends stop their workers. A driver that dies without cleanup (kill -9, a lost login
  session) leaves its jobs running: they still write their records, and a rerun waits for the
  runs they hold (the per-run locks) instead of doubling them.

CIL_SLURM_CLUSTER=local (a process per job on this machine) or =debug (in this process) runs the
same path without SLURM, for tests and for trying a grid.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.config.slurm_options import SlurmOptions, given_options, option_name, resolve
from benchmark.launch.devices import python_path
from benchmark.launch.executors import CRASH, Job, Outcome, call_job

if TYPE_CHECKING:
    from benchmark.config.experiment import Experiment

CLUSTER_VARIABLE = "CIL_SLURM_CLUSTER"
CLUSTERS = ("slurm", "local", "debug")
POLL_SECONDS = {"slurm": 10.0}   # how often finished jobs are looked for (SLURM runs last minutes to hours)
DEFAULT_POLL_SECONDS = 0.5


def request_problems(args: argparse.Namespace, experiment: Experiment | None) -> list[str]:
    """What stops a `run` with these options: --slurm-* without the slurm backend, local device
    options with it, no submitit or sbatch, bad values."""
    if args.backend != "slurm":
        return [f"{option_name(name)}: needs --backend slurm" for name in given_options(args)]
    problems = [f"{flag} {value}: {why}" for flag, value, why in (
        ("--gpus", args.gpus, "picks this machine's GPUs; each SLURM job gets --slurm-gpus-per-task GPUs"),
        ("--workers", args.workers, "sets local worker processes; with SLURM use --slurm-array-parallelism"),
        ("--runs-per-gpu", args.runs_per_gpu if args.runs_per_gpu != 1 else None, "SLURM runs one run per job"),
    ) if value is not None]
    if importlib.util.find_spec("submitit") is None:
        problems.append("--backend slurm: submitit is not installed here (pip install 'cil-bench[slurm]')")
    if cluster() not in CLUSTERS:
        problems.append(f"{CLUSTER_VARIABLE}={cluster()}: use slurm (the default), local or debug")
    elif cluster() == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        problems.append("--backend slurm: sbatch/srun are not on PATH; run on a SLURM login node (or set "
                        f"{CLUSTER_VARIABLE}=local to try the grid on this machine)")
    try:
        resolve(experiment.slurm if experiment else SlurmOptions(), args)
    except ValueError as error:
        problems += str(error).splitlines()
    return problems


def device_type(args: argparse.Namespace, experiment: Experiment) -> str:
    """"cuda" when each job gets a GPU (part of every run's identity), else "cpu"."""
    try:
        return "cuda" if resolve(experiment.slurm, args).gpus_per_task > 0 else "cpu"
    except ValueError:  # reported by request_problems
        return "cpu"


def cluster() -> str:
    """Which submitit cluster: slurm, or local / debug for trying a grid without SLURM."""
    return os.environ.get(CLUSTER_VARIABLE, "slurm")


def describe(options: SlurmOptions) -> str:
    """Where the jobs would go, in words."""
    where = {"slurm": "SLURM job arrays", "local": "submitit's local executor (CIL_SLURM_CLUSTER=local)",
             "debug": "submitit's debug executor, in this process (CIL_SLURM_CLUSTER=debug)"}[cluster()]
    partition = f"partition {options.partition}, " if options.partition else ""
    return (f"{where} ({partition}{options.gpus_per_task} GPU(s) and {options.cpus_per_task} CPU(s) per run, "
            f"{options.time_min} min limit, at most {options.array_parallelism} jobs at once)")


def submitit_parameters(options: SlurmOptions, name: str, import_path: str) -> dict[str, Any]:
    """AutoExecutor.update_parameters arguments: generic ones, and slurm_/local_ ones that only
    that cluster reads. SLURM jobs get the driver's import path (the suite need not be installed);
    local jobs inherit it from the submitting environment (SlurmExecutor.flush): a setup shell
    between submitit and a local job would take the job's cancel signal (SIGINT) and orphan it."""
    setup = [f"export PYTHONPATH={shlex.quote(import_path)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    chosen = {"name": name, "timeout_min": options.time_min, "cpus_per_task": options.cpus_per_task,
              "mem_gb": options.mem_gb, "slurm_gpus_per_task": options.gpus_per_task or None,
              "slurm_array_parallelism": options.array_parallelism, "slurm_partition": options.partition,
              "slurm_account": options.account, "slurm_qos": options.qos, "slurm_constraint": options.constraint,
              "slurm_setup": setup, "local_gpus_per_node": options.gpus_per_task}
    return {key: value for key, value in chosen.items() if value is not None}


# -- the executor --------------------------------------------------------------------------------
class SlurmExecutor:
    """The executor protocol (benchmark.launch.executors) over submitit; flush() sends one job array."""

    shares_filesystem = True   # jobs write records and first-task models on the shared results root

    def __init__(self, options: SlurmOptions, log_dir: Path, name: str, cluster_name: str = "slurm"):
        import submitit  # late: only this backend needs it

        self.cluster = cluster_name
        self.executor = submitit.AutoExecutor(folder=Path(log_dir) / "%j", cluster=cluster_name)
        self.executor.update_parameters(**submitit_parameters(options, name, python_path()))
        self.capacity = options.array_parallelism
        self.device, self.threads = ("cuda:0" if options.gpus_per_task else "cpu"), options.cpus_per_task
        self.pending: list[tuple[Job, Future]] = []
        self.flight: list[tuple[Any, Job, Future]] = []   # (submitit job, our job, its future)
        self.guard, self.stopped = threading.Lock(), threading.Event()
        self.watcher = threading.Thread(target=self._watch, name="slurm-watch", daemon=True,
                                        args=(POLL_SECONDS.get(cluster_name, DEFAULT_POLL_SECONDS),))
        self.watcher.start()

    @property
    def running(self) -> int:
        return len(self.pending) + len(self.flight)

    def submit(self, job: Job) -> Future:
        future: Future = Future()
        self.pending.append((job, future))
        return future

    def flush(self) -> None:
        """Send the jobs submitted since the last flush as one array (SLURM runs tasks in index order)."""
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            with _import_path(self.cluster == "local"), self.executor.batch():
                handles = [self.executor.submit(call_job, job, self.device, self.threads) for job, _ in batch]
        except Exception as error:  # noqa: BLE001 -- e.g. sbatch refused the array: these jobs fail
            for job, future in batch:
                future.set_result(Outcome(error_type=type(error).__name__, message=f"not submitted: {error}"))
            return
        for handle in handles if self.cluster != "slurm" else ():
            # A local job's result is on this disk once its process ends; submitit waits up to 15 s
            # for it (meant for network disks), which would delay every killed local job.
            handle._results_timeout_s = 1
        with self.guard:
            self.flight += [(handle, job, future) for handle, (job, future) in zip(handles, batch)]

    def _watch(self, seconds: float) -> None:
        while not self.stopped.wait(seconds):
            with self.guard:
                flight = list(self.flight)
            for entry in flight:
                if self.stopped.is_set():
                    return
                outcome = _finished(*entry[:2])  # the debug cluster runs the job here, in this thread
                if outcome is not None:
                    with self.guard:
                        self.flight.remove(entry)
                    entry[2].set_result(outcome)

    def close(self, cancel: bool = False) -> None:
        """Stop watching; with `cancel` (an interrupted driver), cancel the jobs still queued or running."""
        self.stopped.set()
        with self.guard:
            handles = [handle for handle, _, _ in self.flight]
        if not cancel or not handles:
            return
        if self.cluster == "slurm":  # one scancel for them all (job ids like 4242_3)
            subprocess.run(["scancel", *(handle.job_id for handle in handles)], check=False, capture_output=True)
        else:
            for handle in handles:
                handle.cancel(check=False)


@contextlib.contextmanager
def _import_path(needed: bool) -> Iterator[None]:
    """PYTHONPATH with the driver's import path while local jobs start (they copy os.environ)."""
    saved = os.environ.get("PYTHONPATH")
    if needed:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [python_path(), saved]))
    try:
        yield
    finally:
        if needed and saved is None:
            os.environ.pop("PYTHONPATH", None)
        elif needed:
            os.environ["PYTHONPATH"] = saved


def _finished(handle: Any, job: Job) -> Outcome | None:
    """The job's Outcome once it has ended, else None; a failure to ask (sacct) is the job's failure."""
    try:
        return job_outcome(handle, job) if handle.done() else None
    except Exception as error:  # noqa: BLE001 -- the watcher must outlive any one job
        return Outcome(error_type=type(error).__name__, message=f"{job.name}: its state is unknown: {error}")


def job_outcome(handle: Any, job: Job) -> Outcome:
    """The Outcome call_job returned in the job, or why the job ended without one."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        return handle.result()
    except FailedJobError as error:  # e.g. it could not import the suite on its node
        return Outcome(error_type=type(error).__name__, traceback=str(error),
                       message=f"SLURM job {handle.job_id} running {job.name} failed: {_last_line(str(error))}")
    except UncompletedJobError as error:  # SLURM ended it: time limit, preemption, node failure, scancel
        said = " ".join(line.strip() for line in str(error).splitlines()[:2])
        return Outcome(error_type=CRASH, traceback=str(error),
                       message=f"SLURM job {handle.job_id} running {job.name} ended without a result: {said}")
    except Exception as error:  # noqa: BLE001 -- e.g. its result could not be unpickled here
        return Outcome(error_type=type(error).__name__, traceback=str(error),
                       message=f"SLURM job {handle.job_id} running {job.name}: {error}")


def _last_line(text: str) -> str:
    """The exception line of a submitit FailedJobError (its trace sits between two dashed rules)."""
    parts = text.split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else text
    return ([line.strip() for line in trace.splitlines() if line.strip()] or [""])[-1]


def open_slurm(options: SlurmOptions, experiment_dir: Path) -> SlurmExecutor:
    """Jobs named cil-<experiment>, logs in results/<experiment>/slurm/<job id>/."""
    return SlurmExecutor(options, experiment_dir / "slurm", f"cil-{experiment_dir.name}", cluster())
