"""Dispatch (benchmark.launch.executors, benchmark.launch.sweep, benchmark.launch.locks, run_all.py run) with the
training faked (tests/dispatch_fakes.py; the first-task key, the record judge and writers are the
real ones): devices, validation, order, resume, failures, first tasks, locks shared between
processes, and the local-process executor. No training happens here;
tests/test_crash_safety.py kills real runs, tests/test_ray_cluster.py and tests/test_slurm.py
cover the Ray and SLURM executors.

The process-based executor runs one grid (a module fixture) that several tests inspect; the order
logic is tested in-process (inline).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

import run_all
from benchmark.launch import devices, locks, request, sweep
from benchmark.config.experiment import load_experiment
from benchmark.launch.devices import Slot, check_devices, physical_ids, ray_task_resources, worker_slots
from benchmark.launch.executors import InlineExecutor, Job, LocalExecutor
from benchmark.config.grid import expand
from benchmark.records.store import record_status
from benchmark.train.runner import first_task_key
from conftest import all_gone
from dispatch_fakes import (ExecuteRun, fake_runner, killed_while_writing, read_journal, read_record, run_cli,
                            unwritable_failure, worker_facts, write_experiment)

REPO = Path(__file__).resolve().parents[1]



def fake_cli(runner: sweep.Runner, experiment: Path, results: Path, data_root: Path, *options: str,
             patch: pytest.MonkeyPatch) -> SimpleNamespace:
    """`run_all.py run` with the fake runner; exit code and what it printed."""
    patch.setattr(sweep, "default_runner", lambda: runner)
    return run_cli(experiment, results, data_root, *options)


def executed(journal: Path, job: str = "run") -> list[str]:
    return [entry["run_id" if job == "run" else "key"] for entry in read_journal(journal) if entry["job"] == job]


# -- pure device and placement logic ----------------------------------------------------------
def test_worker_slots_give_each_gpu_runs_per_gpu_slots_that_see_only_it():
    slots = worker_slots(["0", "1"], runs_per_gpu=2, workers=1, cpu_count=16)
    assert [s.device_env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "1", "1"]
    assert {s.device for s in slots} == {"cuda:0"}
    assert {s.threads for s in slots} == {4}
    assert slots[0].env["OMP_NUM_THREADS"] == "4"


def test_worker_slots_on_the_cpu_split_the_cores():
    slots = worker_slots([], runs_per_gpu=1, workers=2, cpu_count=8)
    assert slots == [Slot({"CUDA_VISIBLE_DEVICES": ""}, "cpu", 4)] * 2
    assert worker_slots([], 1, workers=4, cpu_count=2)[0].threads == 1  # never zero


def test_gpu_numbers_follow_the_drivers_own_cuda_visible_devices():
    assert physical_ids([0, 1], None) == ["0", "1"]
    assert physical_ids([1], "2,5") == ["5"]


def test_device_options_are_checked(monkeypatch):
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 1)
    assert check_devices(None, 1, None, None) == ([0], [])
    assert check_devices("cpu", 1, 2, None) == ([], [])
    _, problems = check_devices("0,3", 0, 0, None)
    assert "--gpus 0,3: only 1 CUDA device visible (0)" in problems
    assert "--runs-per-gpu 0: must be at least 1" in problems and "--workers 0: must be at least 1" in problems
    assert "use comma-separated" in check_devices("0,a", 1, None, None)[1][0]
    assert "--workers 2" in check_devices(None, 1, 2, None)[1][0]  # a GPU machine: --workers is for the CPU


def test_ray_tasks_take_a_gpu_share_and_fit_every_gpu_node():
    nodes = [{"CPU": 16, "GPU": 4}, {"CPU": 8, "GPU": 4}, {"CPU": 64}]
    assert ray_task_resources(nodes, runs_per_gpu=2, workers=1) == (1, 0.5)
    assert ray_task_resources([{"CPU": 32, "GPU": 2}], 2, 1) == (8, 0.5)
    assert ray_task_resources([{"CPU": 8}, {"CPU": 4}], 1, workers=2) == (2, 0.0)


def test_run_folders_must_stay_inside_the_experiment_folder(tmp_path):
    problems = request.run_folder_problems(["0123456789ab", "../../elsewhere"], tmp_path / "results" / "tiny")
    assert len(problems) == 1 and "'../../elsewhere' would write outside" in problems[0]


def test_expected_cost_puts_joint_then_growing_models_then_the_most_images_first(tmp_path):
    runs = expand(load_experiment(write_experiment(tmp_path, methods=("finetune", "replay", "der", "joint"))))
    # (joint first, parameters of the final model, images trained on in the later task): the cpu profile
    # trains 50 images per class for 6 epochs, B0Inc50 has one later task of 50 classes (15,000 images)
    # plus the exemplars, each 6 times; resnet14_half has 43,304 parameters, DER two of them.
    expected = {("joint", 5000): (1, 0, 45_000),  # Joint's "exemplars": all 5,000 training images
                ("der", 1935): (0, 86_608, 26_610), ("der", 1252): (0, 86_608, 22_512),
                ("replay", 1991): (0, 0, 26_946), ("replay", 1308): (0, 0, 22_848),
                ("finetune", 0): (0, 0, 15_000)}
    ordered = sorted(runs, key=sweep.expected_cost, reverse=True)
    assert [(run.method, run.exemplars) for run in ordered] == list(expected)
    assert [sweep.expected_cost(run) for run in ordered] == list(expected.values())


# -- locks: a run is held by one process at a time ----------------------------------------------
def hold_lock(path: Path, until: Path) -> subprocess.Popen:
    """Another process holding `path`'s lock until the file `until` appears (or it is killed)."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[3]); from pathlib import Path; "
            "from benchmark.launch.locks import try_lock\n"
            "with try_lock(Path(sys.argv[1])) as taken:\n"
            "    print(taken, flush=True)\n"
            "    while not Path(sys.argv[2]).exists(): time.sleep(0.05)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path), str(until), str(REPO)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    return holder


def test_a_lock_excludes_other_holders_and_dies_with_its_process(tmp_path):
    path = tmp_path / "runs" / "abc" / ".lock"
    with locks.try_lock(path) as taken:
        assert taken and locks.is_held(path)
        with locks.try_lock(path) as again:  # a second open file, even in this process
            assert not again
    assert not locks.is_held(path)
    holder = hold_lock(path, tmp_path / "never")
    assert locks.is_held(path)
    holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
    holder.wait()
    assert not locks.is_held(path)


def test_a_claimed_run_is_skipped_when_held_or_run_elsewhere(tmp_path):
    run = expand(load_experiment(write_experiment(tmp_path, methods=("finetune",))))[0]
    experiment_dir, journal = tmp_path / "results" / "tiny", tmp_path / "journal.txt"
    claim = dict(execute=ExecuteRun(journal), record_status=record_status, run=run,
                 experiment_dir=experiment_dir, results_root=tmp_path, data_root=tmp_path, device="cpu", threads=1)
    done = tmp_path / "done"
    holder = hold_lock(locks.run_lock_path(experiment_dir, run.run_id), done)
    held = locks.claim_run(seen=None, **claim)
    assert held == locks.NotRun(f"run {run.run_id} is being run by another process", held=True)
    done.touch()
    holder.wait()
    assert locks.claim_run(seen=None, **claim)["status"] == "complete"  # free now: it runs
    assert len(executed(journal)) == 1
    # The sweep saw no record; one was written since (by another driver): not run again.
    elsewhere = locks.claim_run(seen=None, **claim)
    assert elsewhere.held is False and elsewhere.status == "complete" and len(executed(journal)) == 1
    # Retrying a failed run: it runs when its record is the one the sweep saw.
    stamp = locks.record_stamp(experiment_dir, run.run_id)
    assert locks.claim_run(seen=stamp, **claim)["status"] == "complete" and len(executed(journal)) == 2


# -- validation: every problem at once, nothing run ---------------------------------------------
def test_one_error_lists_a_bad_gpu_missing_data_and_a_bad_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 1)
    experiment = write_experiment(tmp_path, budgets=(0.01,))
    journal = tmp_path / "journal.txt"
    result = fake_cli(fake_runner(journal), experiment, tmp_path / "results", tmp_path / "no-data",
                     "--gpus", "0,3", patch=monkeypatch)
    assert result.code == 2
    assert result.err.startswith("error: ")
    for expected in ("--gpus 0,3: only 1 CUDA device visible (0)", "CIFAR-100 ('cifar100') not found",
                     "budgets: B0Inc50: budget 0.01 MB"):
        assert expected in result.err
    assert not journal.exists() and not (tmp_path / "results").exists()


def test_backend_options_are_checked(tmp_path, cifar_root, monkeypatch):
    result = fake_cli(fake_runner(tmp_path / "journal.txt"), write_experiment(tmp_path), tmp_path / "results",
                     cifar_root, "--address", "head:6379", "--runs-per-gpu", "0", patch=monkeypatch)
    assert result.code == 2
    assert "--address head:6379: needs --backend ray" in result.err and "--runs-per-gpu 0" in result.err


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"]])
def test_help_answers_without_importing_torch(command):
    check = ("import runpy, sys, time; sys.argv = ['run_all.py', *sys.argv[1:]]; started = time.monotonic()\n"
             "try: runpy.run_path('run_all.py', run_name='__main__')\n"
             "except SystemExit as exit: code = exit.code\n"
             "print('torch' in sys.modules, 'pandas' in sys.modules, code, time.monotonic() - started)")
    result = subprocess.run([sys.executable, "-c", check, *command], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    torch_loaded, pandas_loaded, code, seconds = result.stdout.splitlines()[-1].split()
    assert (torch_loaded, pandas_loaded, code) == ("False", "False", "0"), result.stderr
    assert float(seconds) < 3  # measured 0.1 s; torch alone takes 3 s here
    assert "usage: run_all.py" in result.stdout


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, cifar_root, monkeypatch):
    journal = tmp_path / "journal.txt"
    result = fake_cli(fake_runner(journal), write_experiment(tmp_path), tmp_path / "results", cifar_root,
                     "--gpus", "cpu", "--workers", "2", "--backend", "joblib", "--only-plan-check",
                     patch=monkeypatch)
    assert result.code == 0
    assert "5 runs: 0 complete (skipped), 0 failed (skipped), 5 to run" in result.out
    assert ("would train 1 first-task model(s), then 5 run(s), longest first, on 2 worker process(es) on the CPU"
            in result.out)  # one seed, one backbone: every run starts from the same first-task model
    assert not journal.exists() and not (tmp_path / "results").exists()


# -- resume and failures, in-process ----------------------------------------------------------
def test_resume_after_a_kill_runs_only_the_missing_runs(tmp_path, cifar_root, monkeypatch):
    experiment = write_experiment(tmp_path, seeds=(1, 2))
    runs = expand(load_experiment(experiment))
    seed_1, seed_2 = [run for run in runs if run.seed == 1], [run for run in runs if run.seed == 2]
    experiment_dir = tmp_path / "results" / "tiny"
    for run in [*seed_1, seed_2[0]]:  # finished before the kill
        ExecuteRun(tmp_path / "before.txt")(run, experiment_dir, tmp_path / "results", "cpu", cifar_root, 1)
    killed = seed_2[1]  # killed while the real writer wrote its record: its temporary file stays
    left = killed_while_writing(experiment_dir / "runs" / killed.run_id / "record.json",
                                {"run_id": killed.run_id, "status": "complete"})
    assert len(left) == 1 and left[0].name != "record.json" and left[0].read_text().startswith('{"run_id": ')
    journal = tmp_path / "journal.txt"
    first = fake_cli(fake_runner(journal), experiment, tmp_path / "results", cifar_root,
                    "--gpus", "cpu", "--backend", "inline", "--keep-checkpoints", patch=monkeypatch)
    assert first.code == 0, first.err
    assert "10 runs: 6 complete (skipped), 0 failed (skipped), 4 to run" in first.out
    assert sorted(executed(journal)) == sorted(run.run_id for run in seed_2[1:])
    assert read_record(experiment_dir, killed.run_id)["status"] == "complete"
    assert {entry["keep_checkpoints"] for entry in read_journal(journal) if entry["job"] == "run"} == {True}
    grid = json.loads((experiment_dir / "grid.json").read_text())  # what the report builds its tables from
    assert grid["experiment"] == "tiny" and len(grid["cells"]) == 12  # finetune's run serves both budgets
    assert {cell["run_id"] for cell in grid["cells"]} == {run.run_id for run in runs}
    assert (experiment_dir / "runs.csv").exists() and "runs.csv" in first.out  # the report follows the run
    second = fake_cli(fake_runner(journal), experiment, tmp_path / "results", cifar_root,
                     "--gpus", "cpu", "--backend", "inline", patch=monkeypatch)
    assert second.code == 0
    assert "10 runs: 10 complete (skipped), 0 failed (skipped), 0 to run" in second.out
    # Only the first task the missing runs needed (seed 2's), and nothing again the second time.
    assert first_task_key(seed_1[0]) != first_task_key(seed_2[0])
    assert executed(journal, "first_task") == [first_task_key(seed_2[0])]
    assert len(executed(journal)) == 4


def test_a_failed_first_task_fails_its_runs_and_the_others_go_on(tmp_path, cifar_root, monkeypatch):
    experiment = write_experiment(tmp_path, seeds=(1, 2))
    runs = expand(load_experiment(experiment))
    failing = first_task_key(next(run for run in runs if run.seed == 2))
    journal = tmp_path / "journal.txt"
    result = fake_cli(fake_runner(journal, fail_keys=(failing,)), experiment, tmp_path / "results",
                     cifar_root, "--gpus", "cpu", "--backend", "inline", patch=monkeypatch)
    assert result.code == 1
    experiment_dir = tmp_path / "results" / "tiny"
    for run in runs:
        record = read_record(experiment_dir, run.run_id)
        if run.seed == 2:
            assert record["status"] == "failed" and record["error"]["type"] == "FirstTaskError"
            assert failing in record["error"]["message"] and "diverged" in record["error"]["message"]
            assert run.run_id in result.err
        else:
            assert record["status"] == "complete"
    assert {read_record(experiment_dir, rid)["cell"]["seed"] for rid in executed(journal)} == {1}
    assert len(executed(journal)) == 5


def test_experiments_write_only_into_their_own_folder(tmp_path, cifar_root, monkeypatch):
    results = tmp_path / "results"
    for name, methods in (("one", ("finetune",)), ("two", ("replay",))):
        experiment = write_experiment(tmp_path, name=name, methods=methods)
        result = fake_cli(fake_runner(tmp_path / f"{name}.txt"), experiment, results, cifar_root,
                         "--gpus", "cpu", "--backend", "inline", patch=monkeypatch)
        assert result.code == 0, result.err
        ids = {run.run_id for run in expand(load_experiment(experiment))}
        assert {path.parent.name for path in (results / name).glob("runs/*/record.json")} == ids
    assert {path.relative_to(results).parts[0] for path in results.rglob("record.json")} == {"one", "two"}


def test_runs_go_longest_first_after_their_first_task(tmp_path, cifar_root, monkeypatch):
    experiment = write_experiment(tmp_path, methods=("finetune", "replay", "der", "joint"), seeds=(1, 2))
    runs = {run.run_id: run for run in expand(load_experiment(experiment))}
    journal = tmp_path / "journal.txt"
    result = fake_cli(fake_runner(journal), experiment, tmp_path / "results", cifar_root,
                     "--gpus", "cpu", "--backend", "inline", patch=monkeypatch)
    assert result.code == 0, result.err
    kinds = [entry["job"] for entry in read_journal(journal)]
    assert kinds == ["first_task"] * 2 + ["run"] * 12  # one executor slot: every first task, then the runs
    # each seed's runs by method and exemplars, longest first (the costs are
    # test_expected_cost_puts_joint_then_growing_models_then_the_most_images_first's)
    order = [(runs[run_id].method, runs[run_id].exemplars) for run_id in executed(journal)]
    assert order[::2] == order[1::2] == [("joint", 5000), ("der", 1935), ("der", 1252), ("replay", 1991),
                                         ("replay", 1308), ("finetune", 0)]


def test_a_failure_that_cannot_be_recorded_is_reported_and_the_sweep_goes_on(tmp_path, cifar_root, monkeypatch):
    experiment = write_experiment(tmp_path, seeds=(1, 2))
    runs = expand(load_experiment(experiment))
    journal = tmp_path / "journal.txt"
    failing = first_task_key(next(run for run in runs if run.seed == 2))
    runner = fake_runner(journal, fail_keys=(failing,), write_failed=unwritable_failure)
    result = fake_cli(runner, experiment, tmp_path / "results", cifar_root, "--gpus", "cpu", "--backend", "inline",
                     patch=monkeypatch)
    assert result.code == 1
    for run_id in [run.run_id for run in runs if run.seed == 2]:  # reported, listed, left without a record
        assert f"warning: the failure of run {run_id} (FirstTaskError) could not be recorded: ValueError" in result.err
        assert not (tmp_path / "results" / "tiny" / "runs" / run_id / "record.json").exists()
    assert "5 of 10 runs failed" in result.err and len(executed(journal)) == 5  # the others ran


def test_runs_and_first_tasks_held_by_another_process_are_waited_for_not_redone(tmp_path, cifar_root,
                                                                                 monkeypatch):
    """Another `run` of the same experiment holds seed 2's first task and its run; it finishes both a
    moment later. This one trains seed 1's meanwhile, then loads that model and skips that run."""
    experiment = write_experiment(tmp_path, methods=("replay",), budgets=(4,), seeds=(1, 2))
    runs = {run.seed: run for run in expand(load_experiment(experiment))}
    results, key = tmp_path / "results", first_task_key(runs[2])
    assert first_task_key(runs[1]) != key
    done = tmp_path / "done"
    holders = [hold_lock(locks.first_task_lock_path(results, key), done),
               hold_lock(locks.run_lock_path(results / "tiny", runs[2].run_id), done)]
    other, journal = ExecuteRun(tmp_path / "other.txt"), tmp_path / "journal.txt"

    def finish_elsewhere():  # the other process's work, once this sweep has begun; then its locks go
        deadline = time.monotonic() + 60
        while not executed(journal, "first_task") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        (results / "first_task").mkdir(parents=True, exist_ok=True)
        (results / "first_task" / f"{key}.pt").write_text("model")
        other(runs[2], results / "tiny", results, "cpu", cifar_root, 1)
        done.touch()

    monkeypatch.setattr(sweep, "RETRY_SECONDS", 0.2)
    with ThreadPoolExecutor(1) as background:
        finishing = background.submit(finish_elsewhere)
        result = fake_cli(fake_runner(journal), experiment, results, cifar_root, "--gpus", "cpu",
                         "--backend", "inline", patch=monkeypatch)
        finishing.result()
    for holder in holders:
        holder.wait(timeout=10)
    assert result.code == 0, result.err
    assert executed(journal) == [runs[1].run_id]  # seed 2's run was not run again here
    assert executed(journal, "first_task") == [first_task_key(runs[1])]
    assert [e["key"] for e in read_journal(journal) if e["job"] == "first_task_loaded"] == [key]
    assert "1 run(s) were run meanwhile by another process" in result.out
    assert read_record(results / "tiny", runs[2].run_id)["status"] == "complete"


def test_a_job_the_executor_cannot_start_fails_alone(tmp_path, cifar_root):
    runs = expand(load_experiment(write_experiment(tmp_path, methods=("finetune", "replay"), budgets=(4,))))
    victim = runs[0].run_id

    class Refusing(InlineExecutor):  # e.g. no process could be started for this one job
        def submit(self, job: Job):
            if job.tag == victim:
                raise OSError("[Errno 24] Too many open files")
            return super().submit(job)

    journal, experiment_dir = tmp_path / "journal.txt", tmp_path / "results" / "tiny"
    summary = sweep.Sweep(runs, experiment_dir, tmp_path / "results", cifar_root, Refusing(Slot({}, "cpu", 1)),
                          fake_runner(journal)).run()
    assert [(f.run.run_id, f.error_type) for f in summary.failures] == [(victim, "OSError")]
    record = read_record(experiment_dir, victim)
    assert record["status"] == "failed" and record["error"]["message"] == "not started: [Errno 24] Too many open files"
    assert executed(journal) == [runs[1].run_id] and read_record(experiment_dir, runs[1].run_id)["status"] == "complete"


# -- local worker processes --------------------------------------------------------------------
def test_a_local_worker_lives_on_and_is_replaced_after_a_crash_or_a_broken_cuda_context(tmp_path):
    # One thread: torch's default is one per core (capped there), so with several cores only an
    # OMP_NUM_THREADS set before torch loaded gives 1.
    executor = LocalExecutor([Slot({"CUDA_VISIBLE_DEVICES": ""}, "cpu", 1)], tmp_path / "workers")
    try:
        def call(**kwargs):
            return executor.submit(Job("job", "tag", worker_facts, kwargs)).result(timeout=60)

        first, second = call(torch_threads=True).value, call().value
        assert first["pid"] == second["pid"]  # long-lived: the data set a worker loaded stays loaded
        # The slot's environment was there before torch loaded: its thread pool follows it.
        assert (first["omp"], first["cuda_visible_devices"], first["torch_threads"]) == ("1", "", 1)
        crashed = call(exit_code=1)
        assert crashed.error_type == "WorkerCrashedError" and "died (exit code {EXIT(1)})" in crashed.message
        after_crash = call().value["pid"]
        assert after_crash != first["pid"]
        broken = call(broken=True)
        assert broken.ok and broken.replace_worker and broken.value["pid"] == after_crash
        assert call().value["pid"] not in (first["pid"], after_crash)  # the next job got a new process
    finally:
        executor.close()


def test_closing_an_interrupted_executor_kills_its_jobs_at_once(tmp_path):
    executor = LocalExecutor([Slot({"CUDA_VISIBLE_DEVICES": ""}, "cpu", 1)], tmp_path / "workers")
    pid = executor.submit(Job("job", "tag", worker_facts, {})).result(timeout=60).value["pid"]
    executor.submit(Job("long", "tag", worker_facts, {"sleep": 60}))
    time.sleep(0.5)
    started = time.monotonic()
    executor.close(cancel=True)
    assert time.monotonic() - started < 5
    assert all_gone([pid], within=5)


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory, cifar_root):
    """6 runs of two seeds (two first-task models) on 2 fake GPUs of a machine of 8 cores, one worker
    process each: replay raises, the first der run kills its worker (the other der run is slow, so
    the killed slot's next job needs a new process)."""
    tmp = tmp_path_factory.mktemp("local")
    experiment = write_experiment(tmp, methods=("der", "replay", "finetune"), budgets=(4,), seeds=(1, 2))
    runs = expand(load_experiment(experiment), device_type="cuda")  # GPUs: the ids of CUDA runs
    der = [run.run_id for run in runs if run.method == "der"]
    journal = tmp / "journal.txt"
    runner = fake_runner(journal, raise_for=("replay",), exit_for=(der[0],), slow_for=(der[1],))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(devices, "visible_gpu_count", lambda: 2)
        patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        patch.setattr(os, "cpu_count", lambda: 8)
        result = fake_cli(runner, experiment, tmp / "results", cifar_root, "--gpus", "0,1", patch=patch)
    return SimpleNamespace(result=result, runs=runs, killed=der[0], journal=read_journal(journal),
                           experiment=experiment, results=tmp / "results", experiment_dir=tmp / "results" / "tiny")


def test_each_worker_process_sees_only_its_gpu(local_grid):
    seen = [entry["cuda_visible_devices"] for entry in local_grid.journal]
    assert set(seen) == {"0", "1"}
    for entry in local_grid.journal:  # 8 cores, 2 GPUs, one run per GPU: 4 threads each
        assert entry["device"] == "cuda:0" and entry["threads"] == 4 and entry["omp"] == "4"


def test_first_task_models_are_trained_once_each_before_their_runs(local_grid):
    keys = [e["key"] for e in local_grid.journal if e["job"] == "first_task"]
    runs = {run.run_id: run for run in local_grid.runs}
    by_seed = {run.seed: first_task_key(run) for run in local_grid.runs}
    assert len(set(by_seed.values())) == 2 and Counter(keys) == Counter({by_seed[1]: 1, by_seed[2]: 1})
    # Each run starts once its own first-task model exists (not after all of them).
    started = {e["key"]: i for i, e in enumerate(local_grid.journal) if e["job"] == "first_task"}
    for i, entry in enumerate(local_grid.journal):
        if entry["job"] == "run":
            assert started[by_seed[runs[entry["run_id"]].seed]] < i


def test_failed_and_killed_runs_are_recorded_and_the_others_complete(local_grid):
    grid = local_grid
    assert grid.result.code == 1
    assert "3 of 6 runs failed" in grid.result.err
    for run in grid.runs:
        record = read_record(grid.experiment_dir, run.run_id)
        if run.run_id == grid.killed:
            assert record["status"] == "failed" and record["error"]["type"] == "WorkerCrashedError"
            assert "died (exit code {EXIT(1)})" in record["error"]["message"]
        elif run.method == "replay":
            assert record["status"] == "failed" and record["error"]["type"] == "ValueError"
        else:
            assert record["status"] == "complete"
        if record["status"] == "failed":
            line = next(line for line in grid.result.err.splitlines() if line.strip().startswith(run.run_id))
            assert run.method in line and record["error"]["type"] in line
            assert str(grid.experiment_dir / "runs" / run.run_id / "log.txt") in grid.result.err
    # The killed worker's slot goes on with a new process.
    killed = next(i for i, entry in enumerate(grid.journal) if entry.get("run_id") == grid.killed)
    lane = grid.journal[killed]["cuda_visible_devices"]
    later = [entry["pid"] for entry in grid.journal[killed + 1:] if entry["cuda_visible_devices"] == lane]
    assert grid.journal[killed]["pid"] not in later


def test_failed_runs_are_skipped_until_retried(local_grid, tmp_path, cifar_root, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(local_grid.results, results)
    journal = tmp_path / "journal.txt"
    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 2)  # the same (CUDA) runs as the grid's
    skipped = fake_cli(fake_runner(journal), local_grid.experiment, results, cifar_root,
                      "--gpus", "0", "--backend", "inline", patch=monkeypatch)
    assert skipped.code == 1 and not journal.exists()
    assert "6 runs: 3 complete (skipped), 3 failed (skipped), 0 to run" in skipped.out
    assert local_grid.killed in skipped.err and "--retry-failed" in skipped.err
    retried = fake_cli(fake_runner(journal), local_grid.experiment, results, cifar_root,
                      "--gpus", "0", "--backend", "inline", "--retry-failed", patch=monkeypatch)
    assert retried.code == 0, retried.err
    assert "6 runs: 3 complete (skipped), 3 failed (retrying), 3 to run" in retried.out
    failed_before = {run.run_id for run in local_grid.runs if run.method == "replay"} | {local_grid.killed}
    assert set(executed(journal)) == failed_before and len(executed(journal)) == 3


def test_report_command(local_grid, tmp_path, capsys):
    assert run_all.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert run_all.main(["report", str(local_grid.experiment_dir)]) == 0
    assert str(local_grid.experiment_dir / "runs.csv") in capsys.readouterr().out
