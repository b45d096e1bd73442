"""A disk that fills during a run is said where the user looks (the record's error and the
driver's output) with the path and the fix, not as torch's `[enforce fail at inline_container.cc]`.

The full disk is simulated at the write: the checkpoint's file refuses its bytes with OSError 28,
as a full file system does, and torch.save wraps that in its own RuntimeError. Everything else
(training, the runner's failure record, the sweep, the driver's failure list) is the real path.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from pathlib import Path

import torch

import run_all
from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.launch.executors import Job, call_job
from benchmark.records.space import describe, no_space_message
from benchmark.train import checkpoints
from conftest import tiny_experiment, tiny_training, write_experiment

FIX = "free space and rerun: the run resumes from its last checkpoint"


class FullDisk(io.RawIOBase):
    """A file on a file system that fills up: after its first 512 bytes, writes fail as the kernel's do."""

    def __init__(self) -> None:
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > 512:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data)


def test_torchs_wrapped_error_is_told_as_a_full_disk(tmp_path):
    try:
        torch.save({"x": torch.zeros(1000)}, FullDisk())
    except RuntimeError as error:
        wrapped = error
    assert "inline_container" in str(wrapped)  # what torch says: nothing about space
    assert describe(wrapped, tmp_path).startswith(f"no space left on the device at {tmp_path}; {FIX} (RuntimeError: ")
    named = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "record.json"))
    assert no_space_message(named, tmp_path) == f"no space left on the device at {tmp_path / 'record.json'}; {FIX}"
    assert no_space_message(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path).startswith(
        f"disk quota exceeded on the device at {tmp_path}; ")
    assert no_space_message(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    assert describe(ValueError("bad"), tmp_path) == "bad"


def test_a_run_whose_checkpoint_fills_the_disk_says_so_in_its_record_and_the_drivers_output(
        tmp_path, cifar_root, monkeypatch):
    real_write_atomic = checkpoints.write_atomic
    monkeypatch.setattr(checkpoints, "write_atomic",
                        lambda path, write, mode="wb": real_write_atomic(path, lambda file: write(FullDisk()), mode))
    raw = tiny_experiment(methods=["replay"], training=tiny_training())
    experiment = write_experiment(tmp_path, raw)
    [run] = expand(parse_experiment(raw))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_all.main(["run", str(experiment), "--results", str(tmp_path / "results"), "--data-root",
                             str(cifar_root), "--gpus", "cpu", "--backend", "inline"])
    folder = tmp_path / "results" / "tiny" / "runs" / run.run_id
    record = json.loads((folder / "record.json").read_text())
    told = f"no space left on the device at {folder}; {FIX}"
    assert code == 1 and record["status"] == "failed"
    assert record["error"]["message"].startswith(told + " (RuntimeError: [enforce fail at inline_container")
    assert f"RuntimeError: {told}" in err.getvalue()  # the driver's list of failed runs
    assert not list(folder.glob(".checkpoint*"))  # the partial checkpoint is not left to fill the disk


def test_a_job_that_dies_of_a_full_disk_says_where(tmp_path):
    def record_write(experiment_dir: Path, device: str, threads: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    outcome = call_job(Job("run r", "r", record_write, {"experiment_dir": tmp_path}), "cpu", 1)
    assert outcome.error_type == "OSError"
    assert outcome.message == f"no space left on the device at {tmp_path}; {FIX} (OSError: [Errno 28] No space left on device)"
