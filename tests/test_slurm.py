"""SLURM through submitit (benchmark.launch.slurm): the options (experiment file, command line, what
reaches submitit and sbatch), job arrays and their order, what a job that SLURM ends becomes, and
tiny real runs through `run_all.py run --backend slurm` on submitit's debug cluster (in this
process) and local cluster (a process per job), chosen by CIL_SLURM_CLUSTER.

sbatch, srun, scancel and sacct are shell stand-ins that log their arguments (no SLURM here).
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

import run_all
from benchmark.launch import slurm, sweep
from benchmark.config.experiment import ConfigError, load_experiment, parse_experiment, read_yaml
from benchmark.launch.devices import python_path
from benchmark.launch.executors import CRASH, Job
from benchmark.config.grid import expand
from benchmark.config import slurm_options
from benchmark.config.slurm_options import SlurmOptions
from benchmark.launch.slurm import SlurmExecutor
from conftest import all_gone, children, tiny_experiment, tiny_training
from conftest import write_experiment as write_raw
from dispatch_fakes import fake_runner, read_journal, run_cli, worker_facts

pytest.importorskip("submitit")

SLURM_SECTION = {"partition": "gpu", "gpus_per_task": 0, "cpus_per_task": 1, "time_min": 240}


def write_experiment(folder: Path, methods: tuple[str, ...] = ("finetune", "replay"), epochs: int = 1) -> Path:
    return write_raw(folder, tiny_experiment(methods=methods, training=tiny_training(later_epochs=epochs),
                                             slurm=SLURM_SECTION))


def run_args(*options: str):
    return run_all.parser().parse_args(["run", "tiny.yaml", *options])


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch/srun/scancel/sacct that log their calls to calls.txt; sbatch numbers jobs from 4242."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    for tool in ("srun", "scancel", "sacct"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "sbatch $*" >> {log}\ncat "$1" > {tmp_path}/sbatch-script.sh\n'
                                    'echo "Submitted batch job 4242"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


# -- options ----------------------------------------------------------------------------------------
def driver_paths(patch: pytest.MonkeyPatch, folder: Path) -> None:
    """A driver in folder/work importing from folder/lib (and its own environment, and nothing there)."""
    for name in ("work", "lib"):
        (folder / name).mkdir(exist_ok=True)
    patch.chdir(folder / "work")
    patch.setattr(sys, "path", ["", str(folder / "lib"), str(folder / "missing"), str(Path(sys.prefix) / "lib")])


def test_jobs_import_from_the_drivers_folder_then_its_own_entries(tmp_path, monkeypatch):
    driver_paths(monkeypatch, tmp_path)
    assert python_path() == f"{tmp_path}/work:{tmp_path}/lib"  # no "", nothing missing, not the environment


def test_the_options_reach_submitit_and_the_sbatch_array_exactly(tmp_path, fake_slurm):
    options = SlurmOptions(partition="gpu", time_min=240, gpus_per_task=1, cpus_per_task=8, mem_gb=32,
                           account="proj", qos="high", constraint="a100", array_parallelism=16)
    with pytest.MonkeyPatch.context() as patch:
        driver_paths(patch, tmp_path)
        executor = SlurmExecutor(options, tmp_path / "slurm", "cil-tiny", "slurm")
    setup = [f"export PYTHONPATH={tmp_path}/work:{tmp_path}/lib${{PYTHONPATH:+:$PYTHONPATH}}"]
    assert executor.executor.parameters == {
        "job_name": "cil-tiny", "time": 240, "cpus_per_task": 8, "mem": "32GB", "gpus_per_task": 1,
        "array_parallelism": 16, "partition": "gpu", "account": "proj", "qos": "high", "constraint": "a100",
        "setup": setup}
    assert (executor.capacity, executor.device, executor.threads) == (16, "cuda:0", 8)
    futures = [executor.submit(Job(f"run {i}", str(i), worker_facts, {})) for i in range(3)]
    assert not fake_slurm.exists()  # held back until the flush: one array for the three
    executor.flush()
    assert fake_slurm.read_text().count("sbatch ") == 1 and executor.running == 3
    script = (tmp_path / "sbatch-script.sh").read_text()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-task=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --constraint=a100", "#SBATCH --job-name=cil-tiny", setup[0]):
        assert line in script.splitlines(), line
    assert f"#SBATCH --output={tmp_path}/slurm/%A_%a/%A_%a_0_log.out" in script
    executor.close(cancel=True)  # interrupted: the array's tasks are cancelled, in one scancel
    assert "scancel 4242_0 4242_1 4242_2" in fake_slurm.read_text()
    assert not any(future.done() for future in futures)


def test_the_command_line_wins_over_the_experiment_file(tmp_path):
    section = load_experiment(write_experiment(tmp_path)).slurm
    resolved = slurm_options.resolve(section, run_args("--backend", "slurm", "--slurm-time", "30", "--slurm-qos", "low"))
    assert resolved.model_dump() == {"partition": "gpu", "time_min": 30, "gpus_per_task": 0, "cpus_per_task": 1,
                                     "mem_gb": None, "account": None, "qos": "low", "constraint": None,
                                     "array_parallelism": 32}
    assert slurm_options.resolve(SlurmOptions(), run_args()) == SlurmOptions(time_min=240, gpus_per_task=1, cpus_per_task=4)
    with pytest.raises(ValueError, match=r"^--slurm-cpus-per-task 0: Input should be greater than 0$"):
        slurm_options.resolve(section, run_args("--slurm-cpus-per-task", "0"))


def test_a_bad_slurm_section_is_located(tmp_path):
    raw = {**read_yaml(write_experiment(tmp_path)), "slurm": {"time_min": "4h", "gpus": 1}}
    with pytest.raises(ConfigError) as error:
        parse_experiment(raw, source="tiny.yaml")
    assert "slurm.time_min: Input should be a valid integer, got '4h' (str)" in str(error.value)
    assert ("slurm: unknown key 'gpus'; allowed keys: partition, time_min, gpus_per_task, cpus_per_task, mem_gb, "
            "account, qos, constraint, array_parallelism") in str(error.value)


def test_slurm_requests_are_checked(tmp_path, monkeypatch):
    experiment = load_experiment(write_experiment(tmp_path))
    assert slurm.request_problems(run_args("--slurm-qos", "low"), experiment) == ["--slurm-qos: needs --backend slurm"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    monkeypatch.delenv(slurm.CLUSTER_VARIABLE, raising=False)
    problems = slurm.request_problems(run_args("--backend", "slurm", "--gpus", "0", "--workers", "2",
                                               "--slurm-time", "0"), experiment)
    assert problems == [
        "--gpus 0: picks this machine's GPUs; each SLURM job gets --slurm-gpus-per-task GPUs",
        "--workers 2: sets local worker processes; with SLURM use --slurm-array-parallelism",
        "--backend slurm: sbatch/srun are not on PATH; run on a SLURM login node (or set CIL_SLURM_CLUSTER=local "
        "to try the grid on this machine)",
        "--slurm-time-min 0: Input should be greater than 0"]
    monkeypatch.setenv(slurm.CLUSTER_VARIABLE, "nowhere")
    assert slurm.request_problems(run_args("--backend", "slurm"), experiment) == [
        "CIL_SLURM_CLUSTER=nowhere: use slurm (the default), local or debug"]
    # Each run's identity names the device type it trains on: a GPU per job makes them CUDA runs.
    assert slurm.device_type(run_args("--backend", "slurm"), experiment) == "cpu"
    assert slurm.device_type(run_args("--backend", "slurm", "--slurm-gpus-per-task", "1"), experiment) == "cuda"


# -- outcomes ---------------------------------------------------------------------------------------
class EndedJob:
    """A submitit job whose result() raises `error`, as a job SLURM ended does."""

    job_id = "4242_3"

    def __init__(self, error: Exception):
        self.error = error

    def result(self):
        raise self.error


def test_a_job_slurm_ends_is_a_crash_with_submitits_message():
    from submitit.core.utils import FailedJobError, UncompletedJobError

    said = ("Job 4242_3 (task: 0) with path /r/slurm/4242_3/4242_3_0_result.pkl\n"
            "has not produced any output (state: TIMEOUT)\nError stream produced:\n---\n"
            "slurmstepd: error: *** JOB 4242 CANCELLED DUE TO TIME LIMIT ***")
    outcome = slurm.job_outcome(EndedJob(UncompletedJobError(said)), Job("run abc", "abc", print, {}))
    assert (outcome.error_type, outcome.traceback) == (CRASH, said)
    assert outcome.message == ("SLURM job 4242_3 running run abc ended without a result: Job 4242_3 (task: 0) with "
                               "path /r/slurm/4242_3/4242_3_0_result.pkl has not produced any output (state: TIMEOUT)")
    trace = ("Job (task=0) failed during processing with trace:\n" + "-" * 22 + "\nTraceback (most recent call last):\n"
             "  File ...\nModuleNotFoundError: No module named 'benchmark'\n" + "-" * 22 + "\nYou can check full logs")
    failed = slurm.job_outcome(EndedJob(FailedJobError(trace)), Job("run abc", "abc", print, {}))
    assert failed.error_type == "FailedJobError"
    assert failed.message == "SLURM job 4242_3 running run abc failed: ModuleNotFoundError: No module named 'benchmark'"


# -- arrays, in order -------------------------------------------------------------------------------
def test_first_tasks_go_first_and_never_more_jobs_than_the_limit(tmp_path, cifar_root, monkeypatch):
    """A fake grid on the debug cluster: 2 first tasks (one per seed) and 10 runs, at most 2 jobs at once."""
    monkeypatch.setattr(slurm, "DEFAULT_POLL_SECONDS", 0.05)
    experiment = write_raw(tmp_path, tiny_experiment(
        "grid", ("finetune", "replay", "der"), (4, 6), seeds=[1, 2], family=["conv2_half", "resnet8_half", "resnet14_half"],
        benchmark_backbone="resnet14_half", slurm=SLURM_SECTION))
    runs = expand(load_experiment(experiment))
    executor = SlurmExecutor(SlurmOptions(gpus_per_task=0, cpus_per_task=1, array_parallelism=2), tmp_path / "slurm",
                             "cil-grid", "debug")
    arrays, flush = [], executor.flush

    def recorded_flush():
        if executor.pending:
            assert len(executor.pending) + len(executor.flight) <= 2  # one limit over all arrays
            arrays.append([job.name.split()[0] for job, _ in executor.pending])
        flush()

    executor.flush = recorded_flush
    journal = tmp_path / "journal.txt"
    summary = sweep.Sweep(runs, tmp_path / "results" / "grid", tmp_path / "results", cifar_root, executor,
                          fake_runner(journal), retry_seconds=0.1).run()
    executor.close()
    assert summary.failures == [] and len(runs) == 10
    assert arrays[0] == ["first", "first"]  # the first array: first-task models only
    submitted = [name for array in arrays for name in array]
    assert submitted == ["first"] * 2 + ["run"] * 10  # every first task before any run
    assert sorted(entry["run_id"] for entry in read_journal(journal) if entry["job"] == "run") == sorted(
        run.run_id for run in runs)


# -- tiny real runs ---------------------------------------------------------------------------------
def slurm_cli(experiment: Path, results: Path, data_root: Path, *options: str) -> SimpleNamespace:
    return run_cli(experiment, results, data_root, "--backend", "slurm", *options)


def test_real_runs_on_the_debug_cluster_then_nothing_left(tmp_path, cifar_root, monkeypatch):
    monkeypatch.setenv(slurm.CLUSTER_VARIABLE, "debug")
    experiment, results = write_experiment(tmp_path), tmp_path / "results"
    first = slurm_cli(experiment, results, cifar_root, "--slurm-time", "30")
    assert first.code == 0, first.err
    assert ("submitit's debug executor, in this process (CIL_SLURM_CLUSTER=debug) (partition gpu, 0 GPU(s) and "
            "1 CPU(s) per run, 30 min limit, at most 32 jobs at once)") in first.out
    records = [json.loads(path.read_text()) for path in (results / "tiny" / "runs").glob("*/record.json")]
    assert sorted(record["cell"]["method"] for record in records) == ["finetune", "replay"]
    assert {(record["status"], record["origin"]["device"], record["config"]["device_type"]) for record in records} == {
        ("complete", "cpu", "cpu")}
    assert len(list((results / "tiny" / "slurm").glob("DEBUG_*/*_log.out"))) == 3  # first task + 2 runs
    second = slurm_cli(experiment, results, cifar_root)
    assert second.code == 0 and "2 runs: 2 complete (skipped), 0 failed (skipped), 0 to run" in second.out


def job_pid(slurm_dir: Path, run_id: str) -> int | None:
    """The pid of the job process running `run_id` (it announces itself in its log)."""
    for log in slurm_dir.glob("*/*_log.err"):
        found = re.search(rf"^== run {run_id} on .* pid (\d+)\)$", log.read_text(), re.MULTILINE)
        if found:
            return int(found.group(1))
    return None


def test_a_killed_job_is_recorded_as_crashed_and_resumes_from_its_checkpoint(tmp_path, cifar_root, monkeypatch):
    """Local cluster: the run's job process is killed (as SLURM's time limit or a node failure
    would) once its first checkpoint is written; rerun with --retry-failed, it goes on from it."""
    monkeypatch.setenv(slurm.CLUSTER_VARIABLE, "local")
    experiment, results = write_experiment(tmp_path, methods=("finetune",), epochs=8), tmp_path / "results"
    run_id = expand(load_experiment(experiment))[0].run_id
    folder = results / "tiny" / "runs" / run_id

    def kill_after_the_checkpoint() -> None:
        deadline = time.monotonic() + 120
        while not ((folder / "checkpoint.pt").exists() and job_pid(results / "tiny" / "slurm", run_id)):
            assert time.monotonic() < deadline, "the run never wrote its checkpoint"
            time.sleep(0.05)
        os.kill(job_pid(results / "tiny" / "slurm", run_id), signal.SIGKILL)

    with ThreadPoolExecutor(1) as background:  # the driver stays in the main thread (it handles SIGTERM)
        killing = background.submit(kill_after_the_checkpoint)
        killed = slurm_cli(experiment, results, cifar_root)
        killing.result()
    assert killed.code == 1, killed.err
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "failed" and record["error"]["type"] == CRASH
    assert record["error"]["message"].startswith("SLURM job ") and "has not produced any output" in record["error"][
        "message"]
    rerun = slurm_cli(experiment, results, cifar_root, "--retry-failed")
    assert rerun.code == 0, rerun.err
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "complete" and record["checkpoint"]["resumed_from_task"] == 1
    assert "resuming from task 1" in (folder / "log.txt").read_text()


def test_closing_an_interrupted_local_executor_cancels_its_jobs(tmp_path):
    executor = SlurmExecutor(SlurmOptions(gpus_per_task=0, cpus_per_task=1), tmp_path / "slurm", "cil-x", "local")
    executor.submit(Job("long", "long", worker_facts, {"sleep": 60}))
    executor.flush()
    controller = executor.flight[0][0]._process  # submitit's local controller; the job runs as its child
    deadline = time.monotonic() + 60
    while not (jobs := children(controller.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    executor.close(cancel=True)
    assert controller.wait(timeout=10) is not None
    assert jobs and all_gone(jobs, within=5)
