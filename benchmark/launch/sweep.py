"""The sweep over a grid: which jobs, in what order, resume, what a failure means, and progress.

What to run comes from the grid (benchmark.config.grid) and how to train it from benchmark.train.runner; where
a job runs is the executor's business (benchmark.launch.executors, whose docstring has the protocol).

- Resume: runs with a complete record are skipped, failed ones unless retried; a run killed
  before its record was written has none, and runs again, as does one whose record is damaged
  (benchmark.records.schema judges a record, for the report too).
- Order: the shared first-task models first, then the runs, longest first (`expected_cost`), each
  as soon as its first-task model exists. Never more jobs in flight than the executor's capacity,
  so the order holds and a job can still be put back.
- Sharing: a job whose lock another process holds (another `run` of the same experiment) is put
  back and tried again later; a run that process has finished meanwhile is not run again
  (benchmark.launch.locks).
- No shared disk (an executor whose `shares_filesystem` is False, benchmark.launch.ray_executor): the
  first-task models travel through the executor's store (`put`) and the records come back in
  the Outcomes; the sweep writes them where the report reads them.
- Failures: a failed job never stops the sweep. A run that failed without writing its record (its
  worker died) gets one written here; the runs of a first task that failed fail with it; a record
  that cannot be written is reported, and the sweep goes on.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.launch import locks
from benchmark.launch.progress import Progress
from benchmark.launch.resume import Failure
from benchmark.launch.executors import Job, Outcome
from benchmark.records.space import describe

if TYPE_CHECKING:
    from benchmark.config.grid import Run

RETRY_SECONDS = 2.0   # how long a job held by another process waits before it is tried again


@dataclass(frozen=True)
class Runner:
    """The runner's functions, injectable (tests pass fakes)."""

    first_task_key: Callable[..., str]
    train_first_task: Callable[..., Path]
    execute_run: Callable[..., dict]
    write_failed_record: Callable[..., dict]
    record_status: Callable[..., str | None]


def default_runner() -> Runner:
    from benchmark.records.schema import record_status  # the one judge of a record, as resume and report use
    from benchmark.train import runner  # late: the sweep must import before (and without) the training stack

    return Runner(runner.first_task_key, runner.train_first_task, runner.execute_run,
                  runner.write_failed_record, record_status)


def expected_cost(run: Run) -> tuple[int, int, int]:
    """How long `run` will take, as a sort key (larger first): Joint first (it trains on all the
    data seen so far), then growing models by the backbone parameters of their final model (DER's
    T backbones), then by the images trained on after the first task (exemplars + new data of
    each later task, times epochs). The first task is shared and trained apart, so it is left out."""
    from methods import METHODS  # late: the registry imports torch

    from benchmark.data import DATASETS, Scenario

    traits, spec = METHODS.get(run.method), DATASETS[run.dataset]
    per_class = spec.per_class("train", run.training["images_per_class"])
    later = Scenario.parse(run.scenario).task_sizes(spec.num_classes)[1:]
    images = sum(run.exemplars + size * per_class for size in later) * run.training["later_tasks"]["epochs"]
    growing = max(cell.model_params for cell in run.cells) if traits.grows() else 0
    return int(traits.trains_on_all_data), growing, images


# -- first tasks -------------------------------------------------------------------------------
def group_by_first_task(runs: list[Run], runner: Runner) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(runner.first_task_key(run), []).append(run)
    return groups


# -- the sweep ---------------------------------------------------------------------------------------
@dataclass
class _Entry:
    job: Job
    lock: Path               # held by whoever runs the job (benchmark.launch.locks)
    needs: str | None        # the first-task key a run waits for; None for a first-task job
    rank: int                # place in the order: first tasks, then runs longest first
    not_before: float = 0.0  # held elsewhere: not tried again before this (time.monotonic)


@dataclass
class Summary:
    failures: list[Failure] = field(default_factory=list)
    elsewhere: int = 0       # runs another process ran while this sweep waited for them


class Sweep:
    """Train each distinct first task once, then every run whose first task exists."""

    def __init__(self, runs: list[Run], experiment_dir: Path, results_root: Path, data_root: Path,
                 executor: Any, runner: Runner, options: dict[str, Any] | None = None,
                 retry_seconds: float | None = None):
        self.experiment_dir, self.executor, self.runner = Path(experiment_dir), executor, runner
        self.retry_seconds = RETRY_SECONDS if retry_seconds is None else retry_seconds
        self.shared = getattr(executor, "shares_filesystem", True)
        self.models: dict[str, Any] = {}  # no shared disk: first-task models in the executor's store, by key
        paths = {"results_root": Path(results_root).resolve(), "data_root": Path(data_root).resolve()}
        firsts = [_Entry(Job(f"first task {key}", key, self._claim("first_task_on_node", locks.claim_first_task),
                             {"train": runner.train_first_task, "key": key, "run": group[0], **paths}),
                         locks.first_task_lock_path(paths["results_root"], key), None, 0)
                  for key, group in group_by_first_task(runs, runner).items()]
        ordered = sorted(runs, key=expected_cost, reverse=True)
        self.queue = firsts + [self._run_entry(run, paths, options or {}) for run in ordered]
        for rank, entry in enumerate(self.queue):
            entry.rank = rank
        self.by_id = {run.run_id: run for run in runs}
        self.ready: set[str] = set()
        self.flight: dict[Future, _Entry] = {}
        self.summary = Summary()
        self.progress = Progress(len(self.queue), len(runs), executor)

    def _run_entry(self, run: Run, paths: dict[str, Path], options: dict[str, Any]) -> _Entry:
        folder = self.experiment_dir.resolve()
        kwargs = {"execute": self.runner.execute_run, "record_status": self.runner.record_status,
                  "seen": locks.record_stamp(folder, run.run_id), "run": run, "experiment_dir": folder,
                  **paths, **options, **({} if self.shared else {"model": None})}
        return _Entry(Job(f"run {run.run_id}", run.run_id, self._claim("run_on_node", locks.claim_run), kwargs),
                      locks.run_lock_path(folder, run.run_id), self.runner.first_task_key(run), 0)

    def _claim(self, on_node: str, claim: Callable[..., Any]) -> Callable[..., Any]:
        """`claim` as a job's function; without a shared disk, wrapped to run on the node's own disk."""
        if self.shared:
            return claim
        from benchmark.launch import ray_executor  # late: only executors without a shared disk need it

        return partial(getattr(ray_executor, on_node), claim=claim)

    def _sent(self, entry: _Entry) -> Job:
        """The job as submitted: without a shared disk a run carries its first-task model's handle."""
        if self.shared or entry.needs is None:
            return entry.job
        return replace(entry.job, kwargs={**entry.job.kwargs, "model": self.models.get(entry.needs)})

    def run(self) -> Summary:
        """Every job to its end (an interruption propagates: the caller cancels the executor)."""
        try:
            while self.queue or self.flight:
                self._fill()
                getattr(self.executor, "flush", lambda: None)()  # e.g. SLURM: this round's jobs as one array
                if not self.flight:  # all that is left (if anything) is held by another process
                    wake = min((entry.not_before for entry in self.queue), default=0.0)
                    time.sleep(min(self.retry_seconds, max(0.05, wake - time.monotonic())))
                    continue
                # A bounded wait, so that Ctrl-C and SIGTERM are handled promptly on every platform.
                done, _ = wait(self.flight, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    self._settle(self.flight.pop(future), _outcome(future))
        finally:
            self.progress.close()
        return self.summary

    def _fill(self) -> None:
        now = time.monotonic()
        for entry in list(self.queue):
            if len(self.flight) >= self.executor.capacity:
                return
            if entry.not_before > now or (entry.needs is not None and entry.needs not in self.ready):
                continue
            if locks.is_held(entry.lock):  # another process has it: do not spend a worker on asking
                entry.not_before = now + self.retry_seconds
                continue
            self.queue.remove(entry)
            try:
                self.flight[self.executor.submit(self._sent(entry))] = entry
            except Exception as error:  # noqa: BLE001 -- e.g. no process could be started: this job fails
                self._settle(entry, Outcome(error_type=type(error).__name__, message=f"not started: {error}"))
            self.progress.refresh()

    def _settle(self, entry: _Entry, outcome: Outcome) -> None:
        if isinstance(outcome.value, locks.NotRun) and outcome.value.held:  # taken by another process meanwhile
            entry.not_before = time.monotonic() + self.retry_seconds
            self.queue.insert(sum(e.rank < entry.rank for e in self.queue), entry)
            return
        if entry.needs is None:
            self._first_task_done(entry.job.tag, outcome)
        else:
            self._run_done(self.by_id[entry.job.tag], outcome)

    def _first_task_done(self, key: str, outcome: Outcome) -> None:
        self.progress.step()
        if outcome.ok:
            if not self.shared:  # the model's bytes came back (ray_executor.NodeFile): shared with its runs
                self.models[key] = self.executor.put(outcome.value)
            self.ready.add(key)
            return
        dependants = [entry for entry in self.queue if entry.needs == key]
        self.queue = [entry for entry in self.queue if entry.needs != key]
        message = f"its first-task model ({key}) could not be trained: {outcome.error_type}: {outcome.message}"
        for entry in dependants:
            run = self.by_id[entry.job.tag]
            self._write_failure(run, "FirstTaskError", message, outcome.traceback)
            self.summary.failures.append(Failure(run, "FirstTaskError", message))
        self.progress.drop(len(dependants))

    def _run_done(self, run: Run, outcome: Outcome) -> None:
        if not self.shared and outcome.ok and isinstance(outcome.value, dict):
            self._keep_record(run, outcome.value)  # written on the node's disk only
        failure = None
        if isinstance(outcome.value, locks.NotRun):  # another process ran it while it waited here
            self.summary.elsewhere += 1
            if outcome.value.status != "complete":
                failure = recorded_failure(run, self.experiment_dir)
        elif not outcome.ok:  # the run could not record itself: its process died, or it never started
            self._write_failure(run, outcome.error_type, outcome.message, outcome.traceback)
            failure = Failure(run, outcome.error_type, outcome.message)
        elif (record := outcome.value or {}).get("status") != "complete":
            error = record.get("error") or {}
            failure = Failure(run, error.get("type", "unknown"), error.get("message", f"status {record.get('status')!r}"))
        self.summary.failures += [failure] if failure else []
        self.progress.step(done=failure is None, failed=failure is not None)

    def _keep_record(self, run: Run, record: dict) -> None:
        from benchmark.files import write_json_atomic
        from benchmark.records.store import record_path  # late: records imports torch

        try:
            write_json_atomic(record_path(self.experiment_dir, run.run_id), record)
        except Exception as error:  # noqa: BLE001 -- reported; the run stays without a record and reruns
            self.progress.write(f"warning: the record of run {run.run_id} could not be written here: "
                                f"{type(error).__name__}: {describe(error, self.experiment_dir)}")

    def _write_failure(self, run: Run, error_type: str, message: str, traceback_text: str) -> None:
        with locks.try_lock(locks.run_lock_path(self.experiment_dir, run.run_id)) as taken:
            if not taken:  # another process has taken the run up since: its record will tell
                return
            try:
                self.runner.write_failed_record(run, self.experiment_dir, error_type, message, traceback_text)
            except Exception as error:  # noqa: BLE001 -- reported; the run stays without a record and reruns
                self.progress.write(f"warning: the failure of run {run.run_id} ({error_type}) could not be "
                                    f"recorded: {type(error).__name__}: {describe(error, self.experiment_dir)}")


def _outcome(future: Future) -> Outcome:
    """An executor's Outcome; should one break the protocol and raise, that is the job's failure."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 -- the sweep outlives any one job
        return Outcome(error_type=type(error).__name__, message=str(error))
