"""loky's resource tracker killed during a grid (as the out-of-memory killer may): every run still
completes, and the terminal shows the suite's one line of note, not loky's warning and the
restarted tracker's KeyError tracebacks (those go to workers/resource-tracker.log).

The terminal is file descriptor 2 (capfd): the tracker is a separate process that writes there,
past Python's sys.stderr. The grid runs with the fake runner (tests/dispatch_fakes.py)."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from joblib.externals.loky.backend import resource_tracker

from benchmark.launch import sweep
from dispatch_fakes import fake_runner, read_journal, run_cli, write_experiment


def _kill_tracker_when_the_workers_run(workers: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(workers.glob("worker-*.log")):
        time.sleep(0.05)
    time.sleep(0.5)  # a job or two under way
    pid = resource_tracker._resource_tracker._pid
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


def test_a_killed_resource_tracker_costs_no_run_and_no_traceback(tmp_path, cifar_root, monkeypatch, capfd):
    journal, results = tmp_path / "journal.txt", tmp_path / "results"
    monkeypatch.setattr(sweep, "default_runner", lambda: fake_runner(journal, slow_for=("replay",)))
    killed: list[int] = []
    killer = threading.Thread(target=_kill_tracker_when_the_workers_run, args=(results / "tiny" / "workers", killed))
    killer.start()
    result = run_cli(write_experiment(tmp_path, methods=("replay",)), results, cifar_root, "--gpus", "cpu", "--workers", "2",
                     "--backend", "local")
    killer.join()
    assert killed, "the resource tracker was not running: nothing was tried"
    assert result.code == 0, result.err
    assert len([entry for entry in read_journal(journal) if entry["job"] == "run"]) == 2
    log = results / "tiny" / "workers" / "resource-tracker.log"
    deadline = time.monotonic() + 10  # the restarted tracker reads its messages in its own time
    while time.monotonic() < deadline and "KeyError" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
    assert "KeyError" in log.read_text()  # what it would have printed on the terminal
    terminal = capfd.readouterr()
    for noise in ("Traceback", "KeyError", "process died unexpectedly"):  # loky's warning, too
        assert noise not in terminal.err + result.err
    assert f"note: loky's resource tracker (a helper process of the worker pools) died, perhaps killed for " \
           f"memory, and was restarted; no run is affected (its messages: {log})" in result.err
