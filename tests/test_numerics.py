"""What sets a run's numerics (benchmark/records/numerics.py): recorded in every origin and checkpoint,
and a run resumed under other numerics (here another thread count) says so in its log and record.

The run is tiny (replay, B0Inc25: four tasks, 5 train / 2 test images per class, one epoch per task)
on the real CIFAR-100 arrays, stopped in-process after a task as tests/test_checkpoint.py does.
"""
from __future__ import annotations

import json

import pytest
import torch

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.records.numerics import build_versions, changes, numerics, run_threads
from benchmark.records.store import origin, record_path, run_dir
from benchmark.train import checkpoints
from benchmark.train import runner as runner_module
from benchmark.train.runner import execute_run, first_task_key
from conftest import tiny_experiment

# torch 2.14.1's torch.__config__.show() on an x86 Linux wheel, shortened
CONFIG = ("PyTorch built with:\n  - GCC 13.3\n  - C++ Version: 202002\n"
          "  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64 "
          "architecture applications\n"
          "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)\n"
          "  - OpenMP 201511 (a.k.a. OpenMP 4.5)\n  - CPU capability usage: AVX2\n"
          "  - Build settings: BLAS_INFO=mkl, CUDA_VERSION=13.0, CUDNN_VERSION=9.24.0, USE_MKL=ON, USE_MKLDNN=ON\n")
SGD = {"lr": 0.1, "lr_decay": 0.1, "momentum": 0.9, "milestones": []}
RAW = tiny_experiment("numerics", ["replay"], [0.75], scenario="B0Inc25", training={
    "images_per_class": 5, "test_images_per_class": 2, "augment": True,
    "first_task": {"epochs": 1, "batch_size": 32, **SGD, "weight_decay": 5e-4},
    "later_tasks": {"all": {"epochs": 1, "batch_size": 32, **SGD, "weight_decay": 2e-4}}})
STOP_AFTER = 2


class Killed(BaseException):
    """Escapes execute_run's `except Exception`, as a kill would: no record is written."""


def test_build_versions_reads_onednn_and_mkl_from_the_config_text():
    assert build_versions(CONFIG) == {"onednn": "3.12.0", "mkl": "2024.2"}
    assert build_versions("PyTorch built with:\n  - oneDNN v2.7.3 (Git Hash abc)\n") == {"onednn": "2.7.3", "mkl": None}
    assert build_versions("PyTorch built with:\n  - GCC 9.3\n") == {"onednn": None, "mkl": None}
    # the installed torch names them in the same words (the parse is what the records rely on)
    live = build_versions(torch.__config__.show())
    assert (live["onednn"] is not None) == torch.backends.mkldnn.is_available()
    assert (live["mkl"] is not None) == torch.backends.mkl.is_available()


def test_changes_name_each_differing_setting():
    before = {"threads": 1, "cpu_capability": "AVX2", "mkl": "2024.2"}
    assert changes(before, dict(before)) == []
    assert changes(before, {**before, "threads": 2, "cpu_capability": "AVX512"}) == [
        "cpu_capability: AVX2 -> AVX512", "threads: 1 -> 2"]
    assert changes(before, {**before, "card": "NVIDIA H200"}) == ["card: None -> NVIDIA H200"]
    assert changes(None, before) == []  # a checkpoint from before numerics were kept: nothing to compare


def test_the_origin_holds_the_numerics_of_this_process():
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        found = origin("cpu")["numerics"]
    finally:
        torch.set_num_threads(saved)
    assert found["threads"] == 1
    assert found["torch"] == torch.__version__
    assert found["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(found) == {"torch", "cpu_capability", "onednn", "mkl", "threads"}  # no CUDA settings on the CPU
    # a worker that died before naming its device still gets the CPU part
    assert set(origin("unknown")["numerics"]) == {"torch", "cpu_capability", "onednn", "mkl", "threads"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_numerics_name_the_card_and_tf32():
    found = numerics("cuda:0")
    assert found["card"] == torch.cuda.get_device_name(0)
    assert {"tf32_matmul", "tf32_cudnn", "cudnn_deterministic", "cudnn_benchmark"} <= set(found)
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = not saved
        assert changes(found, numerics("cuda:0")) == [f"tf32_matmul: {saved} -> {not saved}"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def stop_after(tasks: int, monkeypatch) -> None:
    save = checkpoints.save

    def save_then_stop(path, run_id, engine, results, wall_seconds, **kwargs):
        save(path, run_id, engine, results, wall_seconds, **kwargs)
        if len(results) == tasks:
            raise Killed

    monkeypatch.setattr(checkpoints, "save", save_then_stop)


@pytest.fixture(scope="module")
def planned():
    (run,) = expand(parse_experiment(RAW))
    return run


def stopped_then_resumed(run, tmp_path, cifar_root, monkeypatch, first: int) -> tuple[dict, str, dict]:
    """Stopped after task STOP_AFTER while CPU runs took `first` threads (as a release or setting
    other than today's would), then resumed under today's fixed count (1)."""
    saved = torch.get_num_threads()
    experiment_dir, results = tmp_path / "experiment", tmp_path / "results"
    try:
        with monkeypatch.context() as patch:
            stop_after(STOP_AFTER, patch)
            patch.setattr(runner_module, "cpu_threads", lambda run: first)
            with pytest.raises(Killed):
                execute_run(run, experiment_dir, results, "cpu", cifar_root, 2, keep_checkpoints=True)
        folder = run_dir(experiment_dir, run.run_id)
        written = torch.load(checkpoints.checkpoint_path(folder), weights_only=True)
        record = execute_run(run, experiment_dir, results, "cpu", cifar_root, 2, keep_checkpoints=True)
    finally:
        torch.set_num_threads(saved)
    assert record["status"] == "complete", record["error"]
    assert json.loads(record_path(experiment_dir, run.run_id).read_text())["origin"] == record["origin"]
    return record, (folder / "log.txt").read_text(), written


def test_a_resume_with_another_thread_count_says_so(planned, tmp_path, cifar_root, monkeypatch):
    record, log, written = stopped_then_resumed(planned, tmp_path, cifar_root, monkeypatch, first=2)
    assert written["numerics"]["threads"] == 2 and written["numerics_changes"] == []
    assert record["checkpoint"]["resumed_from_task"] == STOP_AFTER
    assert record["origin"]["numerics_changed_at_task"] == STOP_AFTER
    assert record["origin"]["numerics_changes"] == [{"task": STOP_AFTER, "changes": ["threads: 2 -> 1"]}]
    assert record["origin"]["numerics"]["threads"] == 1
    warnings = [line for line in log.splitlines() if "warning: resumed under other numerics" in line]
    assert len(warnings) == 1 and "threads: 2 -> 1" in warnings[0] and "from task 2" in warnings[0]
    # the last checkpoint carries the change on, so that a later resume still knows it
    final = torch.load(checkpoints.checkpoint_path(run_dir(tmp_path / "experiment", planned.run_id)), weights_only=True)
    assert final["numerics"]["threads"] == 1
    assert final["numerics_changes"] == [{"task": STOP_AFTER, "changes": ["threads: 2 -> 1"]}]


def test_a_resume_under_the_same_numerics_records_no_change(planned, tmp_path, cifar_root, monkeypatch):
    record, log, written = stopped_then_resumed(planned, tmp_path, cifar_root, monkeypatch, first=1)
    assert written["numerics"]["threads"] == 1  # a slot of 2 threads: the run took the fixed 1
    assert record["checkpoint"]["resumed_from_task"] == STOP_AFTER
    assert record["origin"]["numerics_changed_at_task"] is None
    assert record["origin"]["numerics_changes"] == []
    assert "other numerics" not in log


def test_a_cpu_run_takes_its_own_thread_count_whatever_its_slot_gives():
    assert [run_threads("cpu", slot, 1) for slot in (1, 2, 8)] == [1, 1, 1]
    assert [run_threads("cpu", slot, 3) for slot in (1, 2, 8)] == [3, 3, 3]
    assert run_threads("cuda:0", 4, 1) == 4  # on CUDA the slot's share of the cores feeds the GPU


def test_describe_placement_names_the_threads_a_cpu_run_takes():
    from benchmark.launch.devices import describe_placement

    assert describe_placement("local", [], 1, 1, None, 1).endswith("1 thread(s) each")
    assert describe_placement("local", [], 1, 2, None, 2) == "2 worker process(es) on the CPU, 2 thread(s) each"


def test_the_thread_count_is_a_setting_of_the_run_only_when_not_the_default(planned):
    assert "cpu_threads" not in planned.training  # so the runs of earlier experiments keep their ids
    (two,) = expand(parse_experiment({**RAW, "training": {**RAW["training"], "cpu_threads": 2}}))
    assert two.training["cpu_threads"] == 2
    assert two.run_id != planned.run_id
    assert first_task_key(two) != first_task_key(planned)  # nor do they share a first-task model


def test_a_run_trains_with_the_thread_count_it_sets(tmp_path, cifar_root):
    (two,) = expand(parse_experiment({**RAW, "training": {**RAW["training"], "cpu_threads": 2}}))
    saved = torch.get_num_threads()
    try:
        record = execute_run(two, tmp_path / "experiment", tmp_path / "results", "cpu", cifar_root, 1)
    finally:
        torch.set_num_threads(saved)
    assert record["status"] == "complete", record["error"]
    assert record["origin"]["numerics"]["threads"] == 2  # a slot of 1 thread: the run took its own 2
    assert record["origin"]["numerics_changes"] == []


def test_a_first_task_model_trained_under_other_numerics_is_named(planned, tmp_path, cifar_root, monkeypatch):
    """A first-task model is shared by every run that starts from it (on a cluster, trained on
    another node; or by an earlier release at another thread count): a run that loads one made
    under other numerics says so, from task 1."""
    saved = torch.get_num_threads()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(runner_module, "cpu_threads", lambda run: 2)
            first = execute_run(planned, tmp_path / "a", tmp_path / "results", "cpu", cifar_root, 2)
        second = execute_run(planned, tmp_path / "b", tmp_path / "results", "cpu", cifar_root, 2)
    finally:
        torch.set_num_threads(saved)
    assert first["status"] == second["status"] == "complete", (first["error"], second["error"])
    assert first["origin"]["numerics_changes"] == [] and first["origin"]["numerics"]["threads"] == 2
    assert second["origin"]["numerics_changed_at_task"] == 1
    assert second["origin"]["numerics_changes"] == [{"task": 1, "changes": ["threads: 2 -> 1"]}]
    log = (run_dir(tmp_path / "b", planned.run_id) / "log.txt").read_text()
    assert "warning: the shared first-task model was trained under other numerics (threads: 2 -> 1)" in log
