"""Stand-ins for the training in the dispatch tests: no training, only the files a runner leaves.

Everything else of the runner is the real one (`fake_runner` replaces only its two training
functions in `sweep.default_runner()`): the first-task key that groups runs, the judge of a record
that decides what is done, the atomic record writer and the failed-record writer.

Module-level, so worker processes (local and Ray) import them by name. Each fake appends one line
per call to a journal file, which is how the tests count what ran where; small appends to an
O_APPEND file are atomic, so concurrent workers do not interleave lines.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from typing import TYPE_CHECKING

from benchmark.launch.sweep import Runner, default_runner

if TYPE_CHECKING:  # not at run time: workers that get no Run need not load torch (the grid imports it)
    from benchmark.config.grid import Run

REPO = Path(__file__).resolve().parents[1]


def write_experiment(folder: Path, name: str = "tiny", methods: tuple[str, ...] = ("finetune", "replay", "der"),
                     budgets: tuple[float, ...] = (4, 6), seeds: tuple[int, ...] = (1,)) -> Path:
    """A small grid of the dispatch tests (tests/conftest.py's tiny experiment, its family grown to
    resnet14_half): a few methods, a budget or two; every run of one seed shares one first-task model."""
    from conftest import tiny_experiment, write_experiment as write  # late: workers need no experiment

    return write(folder, tiny_experiment(name, methods, budgets, seeds=list(seeds),
                                         family=["conv2_half", "resnet8_half", "resnet14_half"],
                                         benchmark_backbone="resnet14_half"))


def run_cli(experiment: Path, results: Path, data_root: Path, *options: str) -> SimpleNamespace:
    """`run_all.py run` in this process, its exit code and output captured."""
    import run_all  # late: workers that import this module need no CLI

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_all.main(["run", str(experiment), "--results", str(results), "--data-root", str(data_root),
                             *options])
    return SimpleNamespace(code=code, out=out.getvalue(), err=err.getvalue())


def _journal(path: Path, **entry) -> None:
    with open(path, "a") as journal:
        journal.write(json.dumps(entry) + "\n")


def read_journal(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _environment(device: str, threads: int) -> dict:
    return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": device,
            "threads": threads, "omp": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid()}


@dataclass(frozen=True)
class TrainFirstTask:
    journal: Path
    fail_keys: tuple[str, ...] = ()

    def __call__(self, run: Run, results_root: Path, device: str, data_root: Path, threads: int) -> Path:
        from benchmark.train.runner import first_task_key, first_task_path

        key, path = first_task_key(run), first_task_path(results_root, run)
        if path.exists():  # as the runner does: a model that exists is loaded, not trained again
            _journal(self.journal, job="first_task_loaded", key=key, **_environment(device, threads))
            return path
        _journal(self.journal, job="first_task", key=key, **_environment(device, threads))
        if key in self.fail_keys:
            raise RuntimeError(f"first task {key} diverged")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("model")
        return path


@dataclass(frozen=True)
class ExecuteRun:
    journal: Path
    raise_for: tuple[str, ...] = ()   # methods or run ids that fail, recorded as the runner records exceptions
    exit_for: tuple[str, ...] = ()    # methods or run ids that kill their worker process, as the OOM killer would
    slow_for: tuple[str, ...] = ()    # methods or run ids that take a second or two
    broken_for: tuple[str, ...] = ()  # methods or run ids whose record says the CUDA context broke

    def __call__(self, run: Run, experiment_dir: Path, results_root: Path, device: str, data_root: Path,
                 threads: int, keep_checkpoints: bool = False) -> dict:
        _journal(self.journal, job="run", run_id=run.run_id, method=run.method, keep_checkpoints=keep_checkpoints,
                 **_environment(device, threads))
        if {run.method, run.run_id} & set(self.slow_for):
            time.sleep(2)
        if {run.method, run.run_id} & set(self.broken_for):
            record = _record(run, "failed", {"type": "AcceleratorError", "message": "CUDA error: an illegal "
                                             "memory access was encountered", "cuda_context_broken": True})
            return _write_record(run, experiment_dir, record)
        if {run.method, run.run_id} & set(self.exit_for):
            os._exit(1)
        if {run.method, run.run_id} & set(self.raise_for):
            from benchmark.train.runner import write_failed_record

            return write_failed_record(run, experiment_dir, "ValueError", f"{run.method} exploded", "Traceback ...")
        return _write_record(run, experiment_dir, _record(run, "complete", None, _environment(device, threads)))


def _record(run: Run, status: str, error: dict | None, environment: dict | None = None) -> dict:
    cell = run.cells[0]
    return {"run_id": run.run_id, "status": status, "experiment": run.experiment,
            "cell": {**cell.as_row(), "seed": run.seed, "dataset": run.dataset, "scenario": run.scenario},
            "tasks": [], "summary": {}, "error": error, "environment": environment}


def _write_record(run: Run, experiment_dir: Path, record: dict) -> dict:
    from benchmark.files import write_json_atomic  # the runner's own writer
    from benchmark.records.store import record_path

    write_json_atomic(record_path(experiment_dir, run.run_id), record)
    return record


def read_record(experiment_dir: Path, run_id: str) -> dict:
    return json.loads((Path(experiment_dir) / "runs" / run_id / "record.json").read_text())


KILLED_WHILE_WRITING = """\
import json, os, sys
from pathlib import Path

from {module} import write_json_atomic


def half_then_killed(payload, file, **options):  # the writer's json.dump, killed half-way (no clean-up runs)
    text = json.dumps(payload)
    file.write(text[: len(text) // 2])
    file.flush()
    os._exit(9)


json.dump = half_then_killed
write_json_atomic(Path(sys.argv[1]), json.loads(sys.argv[2]))
"""


def killed_while_writing(path: Path, payload: dict) -> list[Path]:
    """The real record writer, killed half-way through writing `payload` to `path` in a process of its
    own; returns the files it left in the folder (its temporary file, under the writer's own name)."""
    from benchmark.files import write_json_atomic

    code = KILLED_WHILE_WRITING.format(module=write_json_atomic.__module__)
    done = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(payload)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    return sorted(Path(path).parent.iterdir())


def fake_runner(journal: Path, fail_keys: tuple[str, ...] = (), raise_for: tuple[str, ...] = (),
                exit_for: tuple[str, ...] = (), slow_for: tuple[str, ...] = (), broken_for: tuple[str, ...] = (),
                write_failed=None) -> Runner:
    """The sweep's default runner with the training faked (and, if given, the failed-record writer)."""
    real = default_runner()
    return replace(real, train_first_task=TrainFirstTask(journal, fail_keys),
                   execute_run=ExecuteRun(journal, raise_for, exit_for, slow_for, broken_for),
                   write_failed_record=write_failed or real.write_failed_record)


def unwritable_failure(run: Run, experiment_dir: Path, error_type: str, message: str, traceback_text: str) -> dict:
    """A write_failed_record that itself fails (as the runner's did when origin("unknown") raised)."""
    raise ValueError("Expected one of cpu, cuda device type at start of device string: unknown")


def worker_facts(device: str, threads: int, exit_code: int | None = None, broken: bool = False,
                 sleep: float = 0.0, torch_threads: bool = False) -> dict:
    """A job that reports its process (and torch's thread count, if asked: loading torch takes
    seconds); it may kill that process first (`exit_code`), sleep, or report a broken CUDA context
    as the runner does."""
    if exit_code is not None:
        os._exit(exit_code)
    time.sleep(sleep)
    facts = {"pid": os.getpid(), **_environment(device, threads),
             "error": {"type": "AcceleratorError", "cuda_context_broken": True} if broken else None}
    if torch_threads:
        import torch  # its thread pool is sized from OMP_NUM_THREADS when it loads

        facts["torch_threads"] = torch.get_num_threads()
    return facts
