"""Crash safety of `run_all.py run`, with tiny real runs in real processes (no fakes): two drivers
on one experiment, a killed worker, Ctrl-C, SIGTERM and a kill -9 of the driver, each followed by
the same command. Afterwards nothing is lost (every run complete, runs.csv equal to that of an
uninterrupted run but for wall times and code version) and nothing is done twice (a run complete
before a restart is not started again; each worker logs one "== run <id>" line per run it starts).

The grid: CIFAR-100 B0Inc50, conv2_half, 5 training images per class, one epoch per task, five
methods x two seeds = 10 runs and 2 shared first-task models, 2 worker processes.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import all_gone, children, tiny_experiment, tiny_training, write_experiment

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = tiny_experiment("crash", methods=("finetune", "replay", "icarl", "wa", "der"), seeds=[1993, 1994],
                             training=tiny_training())
# The moment of the driver's kill -9 (step 4) is drawn from a seed, printed with every failure and shown
# by `pytest -s`; set this variable to that seed to replay the same moment.
SEED_VARIABLE = "CIL_CRASH_SEED"
RUNS = 10
STARTED = re.compile(r"^== run (\w+) on .* pid (\d+)\)$", re.MULTILINE)
TRAINED_FIRST_TASK = re.compile(r"^first-task model (\w+)\.pt", re.MULTILINE)
# Columns that differ between two honest executions of the same runs.
VARYING = ["wall_seconds", "git_sha", "git_dirty", "hostname"]


class Driver:
    """One `run_all.py run` process (its own session, so that Ctrl-C can go to its whole group)."""

    def __init__(self, folder: Path, results: Path, data_root: Path, *options: str):
        self.out = open(folder / f"driver-{time.monotonic_ns()}.txt", "w+")
        command = [sys.executable, "run_all.py", "run", str(folder / "crash.yaml"), "--results", str(results),
                   "--data-root", str(data_root), "--gpus", "cpu", "--workers", "2", *options]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self.out, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait(self, timeout: float = 240) -> int:
        return self.process.wait(timeout)

    def output(self) -> str:
        self.out.flush()
        return Path(self.out.name).read_text()

    def children(self) -> list[int]:
        return children(self.process.pid)


def worker_logs(results: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in sorted((results / "crash" / "workers").glob("*.log")))


def started(results: Path) -> Counter:
    """How often each run was started, over every worker of every driver so far."""
    return Counter(match[0] for match in STARTED.findall(worker_logs(results)))


def complete(results: Path) -> set[str]:
    import json

    done = set()
    for path in (results / "crash" / "runs").glob("*/record.json"):
        if json.loads(path.read_text()).get("status") == "complete":
            done.add(path.parent.name)
    return done


def wait_for_start(results: Path, after: Counter, driver: Driver, timeout: float = 120) -> tuple[str, int]:
    """The (run id, worker pid) of the first run started since `after` was read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_id, pid in STARTED.findall(worker_logs(results)):
            if started(results)[run_id] > after[run_id]:
                return run_id, int(pid)
        assert driver.process.poll() is None, f"the driver ended before any run started:\n{driver.output()}"
        time.sleep(0.05)
    raise AssertionError(f"no run started within {timeout} s:\n{driver.output()}")


def crashed_runs(results: Path) -> list[str]:
    return [path.parent.name for path in (results / "crash" / "runs").glob("*/record.json")
            if "WorkerCrashedError" in path.read_text()]


def wait_for_crash_records(results: Path, driver: Driver, timeout: float = 60) -> list[str]:
    """The runs recorded as crashed, once the driver has recorded the killed worker's run (the other
    worker may start its next run before that happens, so a start is no sign of it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if crashed := crashed_runs(results):
            return crashed
        assert driver.process.poll() is None, f"the driver ended before recording the crash:\n{driver.output()}"
        time.sleep(0.05)
    raise AssertionError(f"no crash recorded within {timeout} s:\n{driver.output()}")


def runs_table(results: Path) -> pd.DataFrame:
    table = pd.read_csv(results / "crash" / "runs.csv")
    return table.drop(columns=VARYING).sort_values("run_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cifar_root):
    folder = tmp_path_factory.mktemp("crash")
    write_experiment(folder, EXPERIMENT)
    return folder, cifar_root


@pytest.fixture(scope="module")
def uninterrupted(setup) -> pd.DataFrame:
    folder, data_root = setup
    driver = Driver(folder, folder / "uninterrupted", data_root)
    assert driver.wait() == 0, driver.output()
    table = runs_table(folder / "uninterrupted")
    assert len(table) == RUNS and set(table.status) == {"complete"}
    return table


def test_two_drivers_on_one_experiment_share_the_runs(setup, uninterrupted):
    folder, data_root = setup
    results = folder / "shared"
    drivers = [Driver(folder, results, data_root), Driver(folder, results, data_root)]
    codes = [driver.wait() for driver in drivers]
    assert codes == [0, 0], "\n".join(driver.output() for driver in drivers)
    counts = started(results)
    assert len(counts) == RUNS and set(counts.values()) == {1}  # every run trained once, by one of them
    trained = TRAINED_FIRST_TASK.findall(worker_logs(results))
    assert len(trained) == len(set(trained)) == 2  # each first-task model trained once; the other driver loads it
    pd.testing.assert_frame_equal(runs_table(results), uninterrupted)


def test_killed_worker_ctrl_c_sigterm_and_killed_driver_lose_nothing_and_redo_nothing(setup, uninterrupted):
    folder, data_root = setup
    results = folder / "interrupted"

    def restart(*options: str) -> tuple[Driver, Counter, set[str]]:
        before, done = started(results), complete(results)
        return Driver(folder, results, data_root, *options), before, done

    def redone(before: Counter, done: set[str]) -> set[str]:
        """Runs complete before a restart and started again since: must be none."""
        return {run_id for run_id, count in started(results).items() if run_id in done and count > before[run_id]}

    # 1. kill -9 one worker mid-run: that run fails, the driver goes on with a new worker.
    driver, before, done = restart()
    _, worker = wait_for_start(results, before, driver)
    os.kill(worker, signal.SIGKILL)
    crashed = wait_for_crash_records(results, driver)
    # 2. then Ctrl-C (SIGINT to the whole process group, as a terminal sends it) at the next start.
    wait_for_start(results, started(results), driver)
    workers = driver.children()
    os.killpg(driver.process.pid, signal.SIGINT)
    assert driver.wait(60) == 130, driver.output()
    assert "interrupted (SIGINT): workers stopped; the same command resumes" in driver.output()
    assert all_gone(workers), "workers outlived an interrupted driver"
    assert crashed_runs(results) == crashed and len(crashed) == 1, crashed  # the killed worker's run only
    killed_run = crashed[0]
    assert (killed_run, str(worker)) in STARTED.findall(worker_logs(results))
    # 3. the same command resumes; SIGTERM (a scheduler's stop) is handled the same way.
    driver, before, done = restart()
    wait_for_start(results, before, driver)
    workers = driver.children()
    os.kill(driver.process.pid, signal.SIGTERM)
    assert driver.wait(60) == 143, driver.output()
    assert "interrupted (SIGTERM)" in driver.output() and all_gone(workers)
    assert not redone(before, done)
    # 4. kill -9 of the driver at a random moment while runs go on: its workers notice and stop.
    seed = int(os.environ.get(SEED_VARIABLE) or random.randrange(10**6))
    print(f"the driver's kill moment: seed {seed} (replay it with {SEED_VARIABLE}={seed})")
    driver, before, done = restart()
    wait_for_start(results, before, driver)
    time.sleep(random.Random(seed).uniform(0, 1.5))
    workers = driver.children()
    assert workers, f"seed {seed}: {driver.output()}"
    driver.process.kill()
    driver.wait(10)
    assert all_gone(workers), f"workers outlived a killed driver (seed {seed})"
    assert not redone(before, done), f"seed {seed}"
    # 5. the same command again, with --retry-failed for the run whose worker was killed.
    driver, before, done = restart("--retry-failed")
    assert driver.wait() == 0, driver.output()
    assert not redone(before, done) and killed_run not in done
    assert complete(results) == set(uninterrupted.run_id)
    pd.testing.assert_frame_equal(runs_table(results), uninterrupted)
