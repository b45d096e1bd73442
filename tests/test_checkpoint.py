"""Checkpoints inside a run: a run stopped after a task and started again ends exactly where the
uninterrupted run ends (every task's CNN and NME accuracy, the accuracy matrix, the final network,
teacher and exemplars), for every method that keeps exemplars.

The runs are tiny (B0Inc25: four tasks, 5 train / 2 test images per class, one epoch per task) on
the real CIFAR-100 arrays. Every method is stopped in-process by an exception that, like a kill,
escapes execute_run without a record; one run is really SIGKILLed in a subprocess.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.train import checkpoints
from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.records.store import record_path, run_dir
from benchmark.train.runner import execute_run
from conftest import tiny_experiment
from methods import METHODS

REPO = Path(__file__).resolve().parents[1]
EXEMPLAR_METHODS = [name for name in METHODS.names() if METHODS.get(name).uses_exemplars]
THREADS = 1
SGD = {"lr": 0.1, "lr_decay": 0.1, "momentum": 0.9, "milestones": []}
RAW = tiny_experiment("checkpoints", EXEMPLAR_METHODS, [0.75], scenario="B0Inc25", training={
    "images_per_class": 5, "test_images_per_class": 2, "augment": True,
    "first_task": {"epochs": 1, "batch_size": 32, **SGD, "weight_decay": 5e-4},
    "later_tasks": {"all": {"epochs": 1, "batch_size": 32, **SGD, "weight_decay": 2e-4}}})
STOP_AFTER = 2          # tasks finished before the in-process stop
KILL_METHOD, KILL_AFTER = "der", 3


class Killed(BaseException):
    """Escapes execute_run's `except Exception`, as a kill would: no record is written."""


def timeless(record: dict) -> dict:
    """The record without what legitimately differs between attempts: timings, the checkpoint note."""
    tasks = [{k: v for k, v in t.items() if not k.endswith("_seconds") and k != "epochs"}
             | {"epochs": [{k: v for k, v in e.items() if k in ("epoch", "loss")} for e in t["epochs"]]}
             for t in record["tasks"]]
    summary = {k: v for k, v in record["summary"].items() if k != "wall_seconds"}
    return json.loads(json.dumps({**record, "tasks": tasks, "summary": summary, "origin": None, "checkpoint": None},
                                 default=str).replace("NaN", "null"))


def run_to_end(run, experiment_dir: Path, results_root: Path, data_root: Path) -> dict:
    return execute_run(run, experiment_dir, results_root, "cpu", data_root, THREADS, keep_checkpoints=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar_root):
    root = tmp_path_factory.mktemp("checkpoints")
    planned = {run.method: run for run in expand(parse_experiment(RAW))}
    assert sorted(planned) == sorted(EXEMPLAR_METHODS)
    whole = {m: run_to_end(run, root / "whole", root / "results", cifar_root) for m, run in planned.items()}
    return {"root": root, "runs": planned, "whole": whole}


def stop_after(tasks: int, monkeypatch) -> None:
    save = checkpoints.save

    def save_then_stop(path, run_id, engine, results, wall_seconds):
        save(path, run_id, engine, results, wall_seconds)
        if len(results) == tasks:
            raise Killed

    monkeypatch.setattr(checkpoints, "save", save_then_stop)


def final_checkpoint(experiment_dir: Path, run_id: str) -> dict:
    return torch.load(checkpoints.checkpoint_path(run_dir(experiment_dir, run_id)), weights_only=True)


def assert_same_state(resumed: dict, whole: dict) -> None:
    assert resumed["tasks_done"] == whole["tasks_done"] == 4
    for part in ("network", "teacher"):
        if whole[part] is None:
            assert resumed[part] is None
            continue
        assert resumed[part].keys() == whole[part].keys()
        differing = [k for k in whole[part] if not torch.equal(resumed[part][k], whole[part][k])]
        assert not differing, (part, differing[:4])
    for key in ("images", "labels"):
        assert torch.equal(resumed["memory"][key], whole["memory"][key])
    assert torch.equal(resumed["rng"]["torch"], whole["rng"]["torch"])
    assert torch.equal(resumed["rng"]["generator"], whole["rng"]["generator"])


@pytest.mark.parametrize("method", EXEMPLAR_METHODS)
def test_a_stopped_run_resumes_to_the_uninterrupted_result(method, runs, cifar_root, monkeypatch):
    run, whole = runs["runs"][method], runs["whole"][method]
    experiment_dir = runs["root"] / f"stopped_{method}"
    with monkeypatch.context() as patch:
        stop_after(STOP_AFTER, patch)
        with pytest.raises(Killed):
            run_to_end(run, experiment_dir, runs["root"] / "results", cifar_root)
    folder = run_dir(experiment_dir, run.run_id)
    assert not record_path(experiment_dir, run.run_id).exists()  # stopped like a kill: no record
    assert checkpoints.checkpoint_path(folder).exists()
    resumed = run_to_end(run, experiment_dir, runs["root"] / "results", cifar_root)
    assert whole["status"] == resumed["status"] == "complete", resumed["error"]
    assert [t["task"] for t in resumed["tasks"]] == [0, 1, 2, 3]
    assert timeless(resumed) == timeless(whole)
    # the accuracies are not trivially equal: something was learned and differs between tasks
    assert len({t["cnn_accuracy"] for t in whole["tasks"]}) > 1
    assert resumed["checkpoint"]["resumed_from_task"] == STOP_AFTER
    assert whole["checkpoint"]["resumed_from_task"] is None
    assert f"resuming from task {STOP_AFTER}" in (folder / "log.txt").read_text()
    # the resumed attempt learned only the tasks after the checkpoint
    assert (folder / "log.txt").read_text().count("task 0: loaded the shared first-task model") == 1
    assert_same_state(final_checkpoint(experiment_dir, run.run_id),
                      final_checkpoint(runs["root"] / "whole", run.run_id))


KILL_SCRIPT = """
import os, pickle, signal, sys
from pathlib import Path
from benchmark.train import checkpoints
from benchmark.train.runner import execute_run

run, experiment_dir, results_root, data_root, kill_after = pickle.loads(bytes.fromhex(sys.argv[1]))
save = checkpoints.save

def save_then_die(path, run_id, engine, results, wall_seconds):
    save(path, run_id, engine, results, wall_seconds)
    if len(results) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no record: a preempted machine

checkpoints.save = save_then_die
execute_run(run, experiment_dir, results_root, "cpu", data_root, 1, keep_checkpoints=True)
"""


def test_a_sigkilled_run_resumes_to_the_uninterrupted_result(runs, cifar_root):
    import pickle

    run, whole = runs["runs"][KILL_METHOD], runs["whole"][KILL_METHOD]
    experiment_dir = runs["root"] / "killed"
    arguments = pickle.dumps((run, experiment_dir, runs["root"] / "results", cifar_root, KILL_AFTER)).hex()
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, arguments], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not record_path(experiment_dir, run.run_id).exists()
    assert final_checkpoint(experiment_dir, run.run_id)["tasks_done"] == KILL_AFTER
    resumed = run_to_end(run, experiment_dir, runs["root"] / "results", cifar_root)
    assert resumed["status"] == "complete", resumed["error"]
    assert resumed["checkpoint"]["resumed_from_task"] == KILL_AFTER
    assert timeless(resumed) == timeless(whole)
    assert_same_state(final_checkpoint(experiment_dir, run.run_id),
                      final_checkpoint(runs["root"] / "whole", run.run_id))


def test_checkpoints_are_removed_after_a_complete_run_unless_kept(runs, cifar_root, tmp_path):
    run = runs["runs"]["icarl"]
    kept = runs["whole"]["icarl"]
    path = checkpoints.checkpoint_path(run_dir(runs["root"] / "whole", run.run_id))
    assert kept["checkpoint"]["kept"] is True and kept["checkpoint"]["bytes"] == path.stat().st_size > 0
    record = execute_run(run, tmp_path / "exp", runs["root"] / "results", "cpu", cifar_root, THREADS)
    folder = run_dir(tmp_path / "exp", run.run_id)
    assert sorted(p.name for p in folder.iterdir()) == ["log.txt", "record.json"]
    # the size is reported though the file is gone: the same state, the same bytes
    assert record["checkpoint"] == {"bytes": kept["checkpoint"]["bytes"], "kept": False, "resumed_from_task": None}
    assert json.loads(record_path(tmp_path / "exp", run.run_id).read_text())["checkpoint"] == record["checkpoint"]


def test_a_failed_run_keeps_its_checkpoint_and_goes_on_from_it(runs, cifar_root, tmp_path, monkeypatch):
    run, whole = runs["runs"]["replay"], runs["whole"]["replay"]
    with monkeypatch.context() as patch:
        save = checkpoints.save

        def save_then_fail(path, run_id, engine, results, wall_seconds):
            save(path, run_id, engine, results, wall_seconds)
            if len(results) == 1:
                raise OSError("disk full")

        patch.setattr(checkpoints, "save", save_then_fail)
        failed = execute_run(run, tmp_path / "exp", runs["root"] / "results", "cpu", cifar_root, THREADS)
    assert failed["status"] == "failed" and failed["error"]["message"] == "disk full"
    assert failed["checkpoint"]["kept"] is True and len(failed["tasks"]) == 1
    again = execute_run(run, tmp_path / "exp", runs["root"] / "results", "cpu", cifar_root, THREADS)
    assert again["status"] == "complete" and again["checkpoint"]["resumed_from_task"] == 1
    assert timeless(again) == timeless(whole)
    assert not checkpoints.checkpoint_path(run_dir(tmp_path / "exp", run.run_id)).exists()


def test_a_checkpoint_of_another_run_is_refused(runs, cifar_root, tmp_path):
    replay, icarl = runs["runs"]["replay"], runs["runs"]["icarl"]
    source = checkpoints.checkpoint_path(run_dir(runs["root"] / "whole", icarl.run_id))
    target = checkpoints.checkpoint_path(run_dir(tmp_path / "exp", replay.run_id))
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes())
    record = execute_run(replay, tmp_path / "exp", runs["root"] / "results", "cpu", cifar_root, THREADS)
    assert record["status"] == "failed" and record["error"]["type"] == "CheckpointError"
    assert f"belongs to run {icarl.run_id}, not {replay.run_id}" in record["error"]["message"]
    assert f"delete {target}" in record["error"]["message"]


def test_checkpoint_files_are_readable_by_others(runs):
    mask = os.umask(0o022)
    os.umask(mask)
    run = runs["runs"]["memo"]
    folder = run_dir(runs["root"] / "whole", run.run_id)
    for path in (checkpoints.checkpoint_path(folder), folder / "record.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


@pytest.mark.parametrize("method", ["icarl", "memo"])
def test_resume_restores_everything_it_saved(method, runs, cifar_root, tmp_path):
    """Restore a finished run's checkpoint into a fresh engine and save it again: the same tensors
    (network, teacher, exemplars, RNG states), the same results, the same frozen parts."""
    from benchmark.train.runner import new_engine, prepare_data

    run = runs["runs"][method]
    source = checkpoints.checkpoint_path(run_dir(runs["root"] / "whole", run.run_id))
    engine = new_engine(run, prepare_data(run, cifar_root, torch.device("cpu")), log=lambda line: None)
    resumed = checkpoints.resume(source, run.run_id, engine)
    again = tmp_path / "again.pt"
    checkpoints.save(again, run.run_id, engine, resumed.results, resumed.wall_seconds)
    saved, restored = torch.load(source, weights_only=True), torch.load(again, weights_only=True)
    assert_same_state(restored, saved)
    assert restored["results"] == saved["results"] and restored["wall_seconds"] == saved["wall_seconds"]
    assert (saved["teacher"] is not None) == (method == "icarl")
    trainable = {name for name, p in engine.method.network.named_parameters() if p.requires_grad}
    if method == "memo":  # old specialized blocks frozen, the newest and the shared block (B0: train_base) not
        assert not any(name.startswith(("specialized.0.", "specialized.1.", "specialized.2.")) for name in trainable)
        assert any(name.startswith("specialized.3.") for name in trainable)
        assert engine.method.network.aux_fc is None  # dropped after every task, as in the run


def test_a_damaged_checkpoint_is_refused_with_the_fix(runs, cifar_root, tmp_path):
    run = runs["runs"]["wa"]
    target = checkpoints.checkpoint_path(run_dir(tmp_path / "exp", run.run_id))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a checkpoint")
    record = execute_run(run, tmp_path / "exp", runs["root"] / "results", "cpu", cifar_root, THREADS)
    assert record["status"] == "failed" and record["error"]["type"] == "CheckpointError"
    assert record["error"]["message"].startswith(f"{target} could not be read (")
    assert record["error"]["message"].endswith(f"delete {target} to start the run over")
    assert record["checkpoint"]["kept"] is True and target.read_bytes() == b"not a checkpoint"
