"""A run, or a shared first-task model, is held by one process at a time, across drivers.

Two `run_all.py run` commands on the same experiment share the work instead of doubling it: a
worker takes the lock of a run (results/<experiment>/runs/<id>/.lock) or of a first-task model
(results/first_task/<key>.lock) before it trains, and a job whose lock another process holds is
handed back unrun (`NotRun`) for the sweep to try again later. After taking a run's lock the
worker looks at the record again: if it changed since the sweep read it, another process ran it
meanwhile and it is not run twice.

The locks are fcntl.flock locks on an open file: the kernel drops them when the holder dies
(kill -9, out of memory), so a crash never leaves a stale lock. They are advisory and per open
file, so two opens in one process exclude each other too. On NFS, Linux emulates flock with
POSIX byte-range locks (since 2.6.12), which lockd shares between machines.
"""
from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmark.config.grid import Run

LOCK_NAME = ".lock"


def run_lock_path(experiment_dir: Path, run_id: str) -> Path:
    return Path(experiment_dir) / "runs" / run_id / LOCK_NAME


def first_task_lock_path(results_root: Path, key: str) -> Path:
    return Path(results_root) / "first_task" / f"{key}.lock"


@contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Hold `path`'s lock for the `with` block if no other process (or open file) holds it:
    yields True when taken, False when held elsewhere. Never waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # closing the file releases the lock


def is_held(path: Path) -> bool:
    """Whether another process holds `path`'s lock now (a probe: taken and released at once)."""
    if not path.exists():
        return False
    with try_lock(path) as taken:
        return not taken


def record_stamp(experiment_dir: Path, run_id: str) -> int | None:
    """When the run's record was last written (ns), or None without one: a change means another
    process ran the run after the sweep looked."""
    from benchmark.records.store import record_path  # late: records imports torch; the driver reads stamps first

    try:
        return record_path(experiment_dir, run_id).stat().st_mtime_ns
    except OSError:
        return None


@dataclass(frozen=True)
class NotRun:
    """A job its worker handed back unrun: held by another process (`held`: try again later), or
    run by another process since the sweep looked (`status`: what its record says now)."""

    reason: str
    held: bool
    status: str | None = None


def claim_run(execute: Callable[..., dict], record_status: Callable[..., str | None], seen: int | None,
              run: Run, experiment_dir: Path, **arguments: Any) -> dict | NotRun:
    """In the worker: train `run` with `execute` (the runner's execute_run) while holding its lock.
    `seen` is the record stamp the sweep read when it queued the run."""
    with try_lock(run_lock_path(experiment_dir, run.run_id)) as taken:
        if not taken:
            return NotRun(f"run {run.run_id} is being run by another process", held=True)
        if record_stamp(experiment_dir, run.run_id) != seen:
            status = record_status(experiment_dir, run.run_id)
            return NotRun(f"run {run.run_id} was run by another process ({status})", held=False, status=status)
        _announce(f"run {run.run_id}", arguments)
        return execute(run=run, experiment_dir=experiment_dir, **arguments)


def claim_first_task(train: Callable[..., Path], key: str, run: Run, results_root: Path,
                     **arguments: Any) -> Path | NotRun:
    """In the worker: get the first-task model `key` with `train` (the runner's train_first_task,
    which loads a model that exists) while holding its lock, so that one process trains it."""
    with try_lock(first_task_lock_path(results_root, key)) as taken:
        if not taken:
            return NotRun(f"first task {key} is being trained by another process", held=True)
        _announce(f"first task {key}", arguments)
        return train(run=run, results_root=results_root, **arguments)


def _announce(name: str, arguments: dict[str, Any]) -> None:
    # One line per job a worker takes on, in the worker's log: what ran where (and how often).
    print(f"== {name} on {arguments.get('device')} ({arguments.get('threads')} threads, pid {os.getpid()})",
          file=sys.stderr, flush=True)
