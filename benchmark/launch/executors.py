"""Where jobs run: worker processes on this machine, Ray tasks, SLURM jobs, or this process.

The executor protocol, all that benchmark.launch.sweep uses (a new executor implements just this):

    capacity: int                          jobs it runs at once; the sweep never has more in flight
    running: int                           jobs in flight now (for the progress bar)
    submit(job: Job) -> Future[Outcome]    a concurrent.futures.Future; its result() is an Outcome
    close(cancel: bool) -> None            False: all done, stop the workers; True: interrupted,
                                           kill the jobs in flight
  optional:
    flush() -> None                        submit() may hold jobs back to send them together (SLURM:
                                           one job array); the sweep calls flush() after each round
    shares_filesystem: bool                whether jobs see the driver's results root (default True);
                                           False: jobs return what they wrote, and the sweep keeps it
    put(value) -> handle                   with shares_filesystem False: a value (a first-task model's
                                           bytes) made available to later jobs (Ray: the object store)

- A job runs as `call_job(job, device, threads)` where it lands; an exception becomes a failed
  Outcome. A job whose process dies (killed, out of memory, segfault) the executor reports as
  Outcome(error_type=CRASH): it costs that job only, and the next job gets a fresh process, as
  does the next job after an Outcome with `replace_worker` (a broken CUDA context).
- A job's environment (CUDA_VISIBLE_DEVICES, thread caps) is set before its process imports
  anything; its device and thread count come as arguments.

- LocalExecutor ("local", alias "joblib"): per device slot, a loky pool (joblib's) of one worker,
  started with the slot's environment, kept across jobs (a CPU worker loads the data set once),
  replaced after its worker dies. Workers get the driver's sys.path from loky (no PYTHONPATH),
  exit when the driver dies, even kill -9'd, and log to results/<experiment>/workers/, as does
  loky's resource tracker (a helper process; killed, e.g. by the out-of-memory killer, it is
  restarted with one line of note, and its complaints go to workers/resource-tracker.log).
- RayExecutor (benchmark.launch.ray_executor): one Ray task per job, fractional GPUs; a local instance or
  a running cluster, checked node by node first, with or without a shared filesystem.
- SlurmExecutor (benchmark.launch.slurm): one SLURM array task per job, through submitit.
- InlineExecutor ("inline"): in this process, one job at a time, for debugging (pdb works); it
  cannot replace its process, so a broken CUDA context breaks the runs after it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.launch.devices import Slot
from benchmark.records.space import describe

CRASH = "WorkerCrashedError"   # error type of a job whose process died (killed, out of memory, segfault)
WATCH_SECONDS = 0.5            # how often a worker checks that its driver is alive


class DispatchError(RuntimeError):
    """The executor could not start (e.g. no Ray cluster at the address); nothing was run."""


@dataclass(frozen=True)
class Job:
    name: str                 # for logs and messages: "run <id>" or "first task <key>"
    tag: str                  # the run id or first-task key the result belongs to
    fn: Callable[..., Any]    # picklable (module-level, or an instance of a module-level class)
    kwargs: dict[str, Any]    # every argument but device and threads, which the slot decides


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error_type: str | None = None   # None: the job returned `value`
    message: str = ""
    traceback: str = ""
    replace_worker: bool = False    # the job left its process unusable (a broken CUDA context)

    @property
    def ok(self) -> bool:
        return self.error_type is None


def call_job(job: Job, device: str, threads: int) -> Outcome:
    """Run one job where it landed; an exception becomes a failed Outcome, not a dead worker."""
    try:
        value = job.fn(**job.kwargs, device=device, threads=threads)
    except Exception as error:  # noqa: BLE001 -- any failure of one job is that job's result
        where = job.kwargs.get("experiment_dir") or job.kwargs.get("results_root")  # a full disk: which one
        return Outcome(error_type=type(error).__name__, message=describe(error, where),
                       traceback=traceback.format_exc(), replace_worker=type(error).__name__ == "AcceleratorError")
    return Outcome(value=value, replace_worker=context_broken(value))


def context_broken(value: Any) -> bool:
    """Whether a run's record says that its process's CUDA context is broken (the runner sets it)."""
    error = value.get("error") if isinstance(value, dict) else None
    return isinstance(error, dict) and error.get("cuda_context_broken") is True


# -- local worker processes ----------------------------------------------------------------------
def worker_setup(driver_pid: int, log_path: str) -> None:
    """A worker's first act (loky initializer): output to its log, and die with the driver."""
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)
    threading.Thread(target=_watch_driver, args=(driver_pid,), name="driver-watch", daemon=True).start()


def _watch_driver(driver_pid: int) -> None:
    # A kill -9'd driver runs no cleanup, and the pool's pipes are only read between jobs: without
    # this, a worker trains its run to the end for nobody. The driver is the worker's parent (loky
    # forks and execs from it), so a new parent means it died. (Not PR_SET_PDEATHSIG: it fires
    # when the *thread* that started the worker exits, and loky may start workers from any thread.)
    while os.getppid() == driver_pid:
        time.sleep(WATCH_SECONDS)
    os._exit(3)


class _Lane:
    """One slot: a loky pool of one worker process, replaced after that process dies or is unusable."""

    def __init__(self, slot: Slot, log_path: Path):
        self.slot, self.log_path = slot, log_path
        self.pool: Any = None
        self.busy = self.stale = False

    def submit(self, job: Job) -> Future:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        if self.pool is None or self.stale:
            self._renew()
        self.busy = True  # before submitting: a quick job may settle (and free the lane) at once
        try:
            inner = self.pool.submit(call_job, job, self.slot.device, self.slot.threads)
        except BrokenProcessPool:  # its worker died while idle (killed between jobs): a new one
            self._renew()
            inner = self.pool.submit(call_job, job, self.slot.device, self.slot.threads)
        outer: Future = Future()
        inner.add_done_callback(lambda done: self._settle(job, done, outer))
        return outer

    def _renew(self) -> None:
        from joblib.externals.loky import ProcessPoolExecutor  # late: `--help` stays light

        if self.pool is not None:
            self.pool.shutdown(wait=False, kill_workers=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # max_workers=1: a dead worker breaks only this pool, so it costs only its own job.
        # timeout=None: an idle worker stays (it keeps the data set loaded for the next run).
        self.pool = ProcessPoolExecutor(max_workers=1, timeout=None, env=self.slot.env, initializer=worker_setup,
                                        initargs=(os.getpid(), str(self.log_path)))
        self.stale = False

    def _settle(self, job: Job, done: Future, outer: Future) -> None:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        try:
            outcome = done.result()
        except BrokenProcessPool as error:  # the worker died (or could not load the job)
            self.stale = True
            outcome = self._crashed(job, error)
        except BaseException as error:  # noqa: BLE001 -- e.g. a result that could not travel back
            outcome = Outcome(error_type=type(error).__name__, message=f"{job.name}: {error}")
        self.stale = self.stale or outcome.replace_worker
        self.busy = False  # before the result: whoever the result wakes finds this lane free
        outer.set_result(outcome)

    def _crashed(self, job: Job, error: BaseException) -> Outcome:
        text = str(error)
        codes = text[text.find("{"):text.find("}") + 1] if "exit codes" in text else ""
        how = f"died (exit code {codes})" if codes else f"died ({text.splitlines()[0] if text else error!r})"
        hint = " (SIGKILL: often the out-of-memory killer)" if "SIGKILL" in codes else ""
        return Outcome(error_type=CRASH, traceback=_tail(self.log_path),
                       message=f"the worker process running {job.name} {how}{hint}; its output is in {self.log_path}")

    def close(self, cancel: bool) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, kill_workers=cancel)
            self.pool = None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalExecutor:
    """Jobs on this machine: one long-lived worker process per slot (benchmark.launch.devices)."""

    def __init__(self, slots: list[Slot], log_dir: Path):
        quiet_resource_tracker(log_dir / TRACKER_LOG)
        self.lanes = [_Lane(slot, log_dir / f"worker-{i}.log") for i, slot in enumerate(slots)]
        self.capacity = len(self.lanes)

    @property
    def running(self) -> int:
        return sum(lane.busy for lane in self.lanes)

    def submit(self, job: Job) -> Future:
        lane = next((lane for lane in self.lanes if not lane.busy), None)
        if lane is None:
            raise RuntimeError(f"{job.name}: all {self.capacity} slots are busy (submit at most `capacity` jobs)")
        return lane.submit(job)

    def close(self, cancel: bool = False) -> None:
        for lane in self.lanes:
            lane.close(cancel)


# -- loky's resource tracker -----------------------------------------------------------------------
# loky's pools register their semaphores with a resource tracker process that inherits the driver's
# stderr. Killed (the out-of-memory killer may pick it), it is restarted on the next message, and
# the new one prints a KeyError traceback for each semaphore it never saw as the pools release
# them, after loky's own warning: noise on the user's terminal, though no run is lost. So the
# tracker is started with its stderr in a log file, and its restart said in one line of ours.
TRACKER_LOG = "resource-tracker.log"
_tracker_log: dict[str, Any] = {"path": None, "launched": False}


def quiet_resource_tracker(log_path: Path) -> None:
    """From now on, loky's resource tracker (in this process) starts with its output in `log_path`."""
    from joblib.externals.loky.backend import resource_tracker  # late: `--help` stays light

    _tracker_log["path"] = Path(log_path)
    tracker = resource_tracker._resource_tracker
    if getattr(tracker, "_quiet_launch", False):
        return
    _tracker_log["launched"] = tracker._fd is not None  # started before: the next start is a restart
    launch = tracker._launch

    def quiet_launch() -> None:
        _launch_logged(launch, _tracker_log["path"])
        if _tracker_log["launched"]:
            from tqdm import tqdm  # its write keeps the progress bar whole

            tqdm.write(f"note: loky's resource tracker (a helper process of the worker pools) died, perhaps killed "
                       f"for memory, and was restarted; no run is affected (its messages: {_tracker_log['path']})",
                       file=sys.stderr)
        _tracker_log["launched"] = True

    tracker._launch, tracker._quiet_launch = quiet_launch, True
    warnings.filterwarnings("ignore", message="resource_tracker: process died unexpectedly", category=UserWarning)


def _launch_logged(launch: Callable[[], None], log_path: Path) -> None:
    """`launch` a child process whose stderr (inherited: fd 2) is `log_path`, for the moment it starts."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    saved = os.dup(2)
    try:
        sys.stderr.flush()
        os.dup2(log, 2)
        launch()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)


class InlineExecutor:
    """Jobs in this process, one at a time: no isolation, but a debugger and tracebacks work directly."""

    capacity = 1

    def __init__(self, slot: Slot):
        self.slot, self.running = slot, 0

    def submit(self, job: Job) -> Future:
        future: Future = Future()
        self.running = 1
        try:
            future.set_result(call_job(job, self.slot.device, self.slot.threads))
        finally:
            self.running = 0
        return future

    def close(self, cancel: bool = False) -> None:
        pass
