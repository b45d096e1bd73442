"""Executing an experiment's grid: validate, resume, train the shared first tasks, then the runs.

What to run comes from the grid (benchmark.grid) and how to train it from benchmark.runner; this
module only decides where and in what order (STYLE 5). Three executors share one shape,
`map_unordered(jobs) -> (job, Outcome)` in completion order:

- LocalExecutor ("local", alias "joblib"): one long-lived worker process per slot
  (benchmark.devices), started with the slot's CUDA_VISIBLE_DEVICES and thread caps, fed jobs over
  a pipe by one thread each. Not joblib's loky: it reuses a process for any job (so
  CUDA_VISIBLE_DEVICES cannot follow the slot once CUDA is up), and one dead worker aborts every
  job in flight without saying whose it was. Here a dead worker costs only its own job, recorded
  as failed, and the slot starts a new process. (Not joblib's threading backend either: on Ctrl-C
  it joins its threads, which wait for runs that may take hours.)
- RayExecutor: one Ray task per job, fractional GPUs; a local instance or a running cluster.
- InlineExecutor ("inline"): in this process, one job at a time, for debugging (pdb works).

A job never raises: an exception becomes a failed Outcome, and a failed run never stops the others.
"""
from __future__ import annotations

import json
import os
import pickle
import queue
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .devices import Slot, physical_ids, ray_task_resources, worker_slots

if TYPE_CHECKING:
    from .grid import Run

WORKER_COMMAND = "from benchmark.dispatch import worker_main; worker_main()"
CRASH = "WorkerCrashedError"   # error type of a job whose process died (killed, out of memory, segfault)


class DispatchError(RuntimeError):
    """The executor could not start (e.g. no Ray cluster at the address); nothing was run."""


# -- the runner's functions, injectable (tests pass fakes) --------------------------------------
@dataclass(frozen=True)
class Runner:
    first_task_key: Callable[..., str]
    train_first_task: Callable[..., Path]
    execute_run: Callable[..., dict]
    write_failed_record: Callable[..., dict]
    record_status: Callable[..., str | None]


def default_runner() -> Runner:
    from . import runner  # late: this module must import before (and without) the training stack

    return Runner(runner.first_task_key, runner.train_first_task, runner.execute_run,
                  runner.write_failed_record, runner.record_status)


# -- jobs and what comes back ----------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    name: str                 # for logs and messages: "run <id>" or "first task <key>"
    tag: str                  # the run id or first-task key the result belongs to
    fn: Callable[..., Any]    # module-level, so that worker processes can import it
    kwargs: dict[str, Any]    # every argument but device and threads, which the slot decides


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error_type: str | None = None   # None: the job returned `value`
    message: str = ""
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.error_type is None


def call_job(job: Job, device: str, threads: int) -> Outcome:
    """Run one job where it landed; an exception becomes a failed Outcome, not a dead worker."""
    import torch  # late: the driver never needs it here, a worker always does

    torch.set_num_threads(threads)
    try:
        return Outcome(value=job.fn(**job.kwargs, device=device, threads=threads))
    except Exception as error:  # noqa: BLE001 -- any failure of one job is that job's result
        return Outcome(error_type=type(error).__name__, message=str(error), traceback=traceback.format_exc())


# -- local worker processes ------------------------------------------------------------------
def _send(stream: BinaryIO, data: bytes) -> None:
    # Length-prefixed frames: a job that fails to unpickle cannot desynchronize the stream.
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> bytes:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the other end closed the pipe")
    data = stream.read(struct.unpack("<Q", header)[0])
    if len(data) < struct.unpack("<Q", header)[0]:
        raise EOFError("the other end closed the pipe mid-message")
    return data


def worker_main() -> None:
    """A worker process: jobs arrive on stdin, answers leave on the original stdout."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a job prints goes to the worker log, never into the answer stream
    while True:
        try:
            frame = _receive(sys.stdin.buffer)
        except EOFError:
            return
        try:
            job, device, threads = pickle.loads(frame)
            print(f"== {job.name} on {device} ({threads} threads)", file=sys.stderr, flush=True)
            outcome = call_job(job, device, threads)
            data = pickle.dumps(outcome)
        except Exception as error:  # noqa: BLE001 -- an unloadable job or unpicklable result
            data = pickle.dumps(Outcome(error_type=type(error).__name__, message=str(error),
                                        traceback=traceback.format_exc()))
        _send(answers, data)


def python_path() -> str:
    """The driver's import path for workers, so they import the same code (and the tests' fakes)."""
    # The interpreter's own folders (stdlib, site-packages) come with sys.executable anyway.
    own = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()]
    entries = [str(Path(p).resolve()) for p in sys.path if p and os.path.isdir(p)]
    entries = [p for p in entries if not any(Path(p).is_relative_to(prefix) for prefix in own)]
    return os.pathsep.join(dict.fromkeys([os.getcwd(), *entries]))


class Worker:
    """One slot's process: started on first use with the slot's environment, restarted after a crash."""

    def __init__(self, slot: Slot, log_path: Path):
        self.slot, self.log_path = slot, log_path
        self.process: subprocess.Popen | None = None
        self.busy = self.closed = False

    def call(self, job: Job) -> Outcome:
        try:
            data = pickle.dumps((job, self.slot.device, self.slot.threads))
        except Exception as error:  # noqa: BLE001 -- a job that cannot travel fails alone
            return Outcome(error_type=type(error).__name__, message=f"cannot send {job.name}: {error}")
        if self.closed:  # interrupted: start nothing new
            return Outcome(error_type="Cancelled", message=f"{job.name} was not started")
        if self.process is None or self.process.poll() is not None:  # first job, or it died while idle
            self.process = self._start()
        process = self.process
        try:
            _send(process.stdin, data)
            return pickle.loads(_receive(process.stdout))
        except (EOFError, OSError, pickle.UnpicklingError):
            return self._crashed(process, job)

    def _start(self) -> subprocess.Popen:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.slot.env, "PYTHONPATH": python_path()}
        with open(self.log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-c", WORKER_COMMAND], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, env=env)

    def _crashed(self, process: subprocess.Popen, job: Job) -> Outcome:
        code = _reap(process)
        if self.process is process:  # the next job starts a fresh process
            self.process = None
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        hint = " (SIGKILL: often the out-of-memory killer)" if code == -9 else ""
        message = f"the worker process running {job.name} died: {how}{hint}; its output is in {self.log_path}"
        return Outcome(error_type=CRASH, message=message, traceback=_tail(self.log_path))

    def close(self, kill: bool = False) -> None:
        """Stop the worker: after its current job, or at once (`kill`, when interrupted mid-job)."""
        self.closed = True
        if self.process is not None:
            if kill:
                self.process.kill()
            _reap(self.process)
            self.process = None


def _reap(process: subprocess.Popen, timeout: float = 30) -> int:
    """End a worker (closing its input ends its loop; kill it if it is stuck) and its pipes; its exit code."""
    for pipe in (process.stdin, process.stdout):
        try:
            pipe.close()
        except OSError:  # the worker is gone and the pipe broken: nothing left to flush
            pass
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalExecutor:
    """Jobs on this machine: one thread per worker process, which only waits on its pipe."""

    def __init__(self, slots: list[Slot], log_dir: Path):
        self.workers = [Worker(slot, log_dir / f"worker-{i}.log") for i, slot in enumerate(slots)]

    @property
    def running(self) -> int:
        return sum(worker.busy for worker in self.workers)

    def map_unordered(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Outcome]]:
        idle: queue.Queue[Worker] = queue.Queue()
        for worker in self.workers:
            idle.put(worker)
        pool = ThreadPoolExecutor(max_workers=len(self.workers), thread_name_prefix="dispatch")
        futures = [pool.submit(_on_idle_worker, idle, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:  # also when the consumer stops early (Ctrl-C): drop queued jobs, do not wait
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        busy = self.running > 0  # only an interruption leaves jobs in flight here
        for worker in self.workers:
            worker.close(kill=busy)


def _on_idle_worker(idle: queue.Queue[Worker], job: Job) -> tuple[Job, Outcome]:
    worker = idle.get()  # as many threads as workers: one is always free here
    worker.busy = True
    try:
        return job, worker.call(job)
    finally:
        worker.busy = False
        idle.put(worker)


class InlineExecutor:
    """Jobs in this process, in order: no isolation, but a debugger and tracebacks work directly."""

    def __init__(self, slot: Slot):
        self.slot, self.running = slot, 0

    def map_unordered(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Outcome]]:
        for job in jobs:
            self.running = 1
            yield job, call_job(job, self.slot.device, self.slot.threads)
            self.running = 0

    def close(self) -> None:
        pass


class RayExecutor:
    """One Ray task per job: 1/runs_per_gpu of a GPU each (Ray sets CUDA_VISIBLE_DEVICES), or CPUs."""

    def __init__(self, address: str | None, gpus: list[str], runs_per_gpu: int, workers: int):
        import ray

        self.ray, self.address = ray, address
        try:
            _start_ray(ray, address, gpus)
        except Exception as error:  # noqa: BLE001 -- whatever Ray says, nothing has run yet
            raise DispatchError(f"Ray did not start ({address or 'local instance'}): {error}") from error
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        self.num_cpus, self.num_gpus = ray_task_resources(nodes, runs_per_gpu, workers)
        gpu_slots = sum(int(n.get("GPU", 0)) for n in nodes) * runs_per_gpu
        self.capacity = gpu_slots if self.num_gpus else sum(int(n.get("CPU", 1)) // self.num_cpus for n in nodes)
        # A fresh process per GPU task: it frees the GPU's memory, and a reused process that had
        # initialized CUDA on another GPU could not follow the new CUDA_VISIBLE_DEVICES.
        self.task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0,
                               max_calls=1 if self.num_gpus else 0)(call_job)
        self.running = 0

    def map_unordered(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Outcome]]:
        device = "cuda:0" if self.num_gpus else "cpu"
        pending = {self.task.remote(job, device, self.num_cpus): job for job in jobs}
        while pending:
            self.running = min(len(pending), self.capacity)
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                outcome = self.ray.get(ready[0])
            except self.ray.exceptions.RayError as error:  # the task's process died (or Ray lost it)
                outcome = Outcome(error_type=type(error).__name__, message=f"{job.name}: {error}")
            yield job, outcome
        self.running = 0

    def close(self) -> None:
        self.ray.shutdown()  # stops a local instance; only disconnects from a cluster


def _start_ray(ray: Any, address: str | None, gpus: list[str]) -> None:
    # Workers import this code and the runner from the driver's paths (same paths on every node).
    options = dict(runtime_env={"env_vars": {"PYTHONPATH": python_path()}}, log_to_driver=False)
    if address:
        ray.init(address=address, **options)
        return
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:  # the local raylet hands out exactly the GPUs it sees
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    try:
        ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(), num_gpus=len(gpus), **options)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


BACKENDS = ("local", "joblib", "ray", "inline")   # "joblib" is accepted for "local" (its first name)


def open_executor(backend: str, gpus: list[int], runs_per_gpu: int, workers: int, address: str | None,
                  log_dir: Path) -> LocalExecutor | RayExecutor | InlineExecutor:
    """The executor of `backend` on torch's devices `gpus` ([] = the CPU)."""
    physical = physical_ids(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if backend == "ray":
        return RayExecutor(address, physical, runs_per_gpu, workers)
    if backend == "inline":  # this process sees every GPU, so it names the device itself
        return InlineExecutor(Slot({}, f"cuda:{gpus[0]}" if gpus else "cpu", os.cpu_count() or 1))
    return LocalExecutor(worker_slots(physical, runs_per_gpu, workers, os.cpu_count() or 1), log_dir)


def run_folder_problems(run_ids: Iterable[str], experiment_dir: Path) -> list[str]:
    """Run folders that would land outside the experiment folder (ids are hex hashes; check anyway)."""
    root = experiment_dir.resolve()
    return [f"run {run_id!r} would write outside {root}" for run_id in run_ids
            if not (root / "runs" / run_id).resolve().is_relative_to(root)]


# -- the grid: resume, phase 1 (first tasks), phase 2 (runs) ---------------------------------
@dataclass(frozen=True)
class Failure:
    run: Run
    error_type: str
    message: str


@dataclass(frozen=True)
class Resume:
    complete: list[Run]
    failed: list[Run]      # failed before and not retried
    to_run: list[Run]
    retrying: int          # failed before and run again (counted in to_run)

    def line(self) -> str:
        total = len(self.complete) + len(self.failed) + len(self.to_run)
        failed = f"{self.retrying} failed (retrying)" if self.retrying else f"{len(self.failed)} failed (skipped)"
        return f"{total} runs: {len(self.complete)} complete (skipped), {failed}, {len(self.to_run)} to run"


def sort_by_status(runs: list[Run], experiment_dir: Path, runner: Runner, retry_failed: bool) -> Resume:
    """Which runs already have a record. A half-written record (killed mid-write) has none: it reruns."""
    status = {run.run_id: runner.record_status(experiment_dir, run.run_id) for run in runs}
    complete = [run for run in runs if status[run.run_id] == "complete"]
    failed = [run for run in runs if status[run.run_id] == "failed"]
    fresh = [run for run in runs if status[run.run_id] not in ("complete", "failed")]
    if retry_failed:
        return Resume(complete, [], failed + fresh, len(failed))
    return Resume(complete, failed, fresh, 0)


def group_by_first_task(runs: list[Run], runner: Runner) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(runner.first_task_key(run), []).append(run)
    return groups


def execute_grid(runs: list[Run], experiment_dir: Path, results_root: Path, data_root: Path,
                 executor: Any, runner: Runner) -> list[Failure]:
    """Train each distinct first task once, then every run whose first task exists; the failures."""
    groups = group_by_first_task(runs, runner)
    progress = Progress(len(groups) + len(runs), len(runs), executor)
    paths = {"results_root": results_root.resolve(), "data_root": data_root.resolve()}
    jobs = [Job(f"first task {key}", key, runner.train_first_task, {"run": group[0], **paths})
            for key, group in groups.items()]
    failures = []
    for job, outcome in progress.track(executor.map_unordered(jobs), "first tasks"):
        if not outcome.ok:
            lost = _fail_dependants(groups.pop(job.tag), job.tag, outcome, experiment_dir, runner)
            failures += lost
            progress.drop(len(lost))
    ready = [run for group in groups.values() for run in group]
    jobs = [Job(f"run {run.run_id}", run.run_id, runner.execute_run,
                {"run": run, "experiment_dir": experiment_dir.resolve(), **paths}) for run in ready]
    by_id = {run.run_id: run for run in ready}
    for job, outcome in progress.track(executor.map_unordered(jobs), "runs"):
        failure = _run_failure(by_id[job.tag], outcome, experiment_dir, runner)
        failures += [failure] if failure else []
        progress.add(done=failure is None, failed=failure is not None)
    progress.close()
    return failures


def _fail_dependants(runs: list[Run], key: str, outcome: Outcome, experiment_dir: Path,
                     runner: Runner) -> list[Failure]:
    message = f"its first-task model ({key}) could not be trained: {outcome.error_type}: {outcome.message}"
    for run in runs:
        runner.write_failed_record(run, experiment_dir, "FirstTaskError", message, outcome.traceback)
    return [Failure(run, "FirstTaskError", message) for run in runs]


def _run_failure(run: Run, outcome: Outcome, experiment_dir: Path, runner: Runner) -> Failure | None:
    if not outcome.ok:  # the run could not record itself: its process died, or it never started
        runner.write_failed_record(run, experiment_dir, outcome.error_type, outcome.message, outcome.traceback)
        return Failure(run, outcome.error_type, outcome.message)
    record = outcome.value or {}
    if record.get("status") == "complete":
        return None
    error = record.get("error") or {}
    return Failure(run, error.get("type", "unknown"), error.get("message", f"status {record.get('status')!r}"))


class Progress:
    """One bar over all jobs (first tasks, then runs) on stderr; the postfix counts runs."""

    def __init__(self, jobs: int, runs: int, executor: Any):
        from tqdm import tqdm

        self.bar = tqdm(total=jobs, unit="job", file=sys.stderr, dynamic_ncols=True)
        self.runs, self.done, self.failed, self.executor = runs, 0, 0, executor

    def track(self, results: Iterator[tuple[Job, Outcome]], stage: str) -> Iterator[tuple[Job, Outcome]]:
        self.bar.set_description(stage)
        self._refresh()
        for item in results:
            yield item
            self.bar.update(1)
            self._refresh()

    def add(self, done: int = 0, failed: int = 0) -> None:
        self.done, self.failed = self.done + done, self.failed + failed

    def drop(self, runs: int) -> None:
        """Runs failed without a job of their own (their first task failed): fewer jobs to wait for."""
        self.failed += runs
        self.bar.total -= runs
        self._refresh()

    def _refresh(self) -> None:
        self.bar.set_postfix(done=self.done, failed=self.failed, running=self.executor.running,
                             left=self.runs - self.done - self.failed)

    def close(self) -> None:
        self.bar.close()


def recorded_failure(run: Run, experiment_dir: Path) -> Failure:
    """The failure a run's existing record describes (for failed runs that are not retried)."""
    try:
        error = json.loads((experiment_dir / "runs" / run.run_id / "record.json").read_text()).get("error") or {}
    except (OSError, ValueError, AttributeError):
        error = {}
    return Failure(run, error.get("type", "unknown"), error.get("message", ""))


def failure_lines(failures: list[Failure], experiment_dir: Path) -> list[str]:
    """One line per failed run: id, method, budget, error, and where to read more."""
    lines = []
    for failure in failures:
        run, folder = failure.run, experiment_dir / "runs" / failure.run.run_id
        budget = ", ".join(dict.fromkeys(str(cell.point_label) for cell in run.cells))
        message = (failure.message.splitlines() or [""])[0][:160]
        lines.append(f"  {run.run_id}  {run.method}  budget {budget}  {failure.error_type}: {message}\n"
                     f"      log {folder / 'log.txt'}  record {folder / 'record.json'}")
    return lines
