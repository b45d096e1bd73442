"""Ray (benchmark.launch.ray_executor) through `run_all.py run --backend ray` with the training faked
(tests/dispatch_fakes.py; the first-task key, the record judge and writers are the real ones): a local instance, an address nobody answers at, the node check, and a
local two-node cluster (ray.cluster_utils, 1 CPU per node) whose nodes have no disk in common
with the driver: each node keeps its results under its own $CIL_NODE_RESULTS, which the driver
never reads, so the records the report finds came back through the driver.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmark.launch import devices, sweep
from benchmark.config.experiment import load_experiment
from benchmark.config.grid import expand
from benchmark.launch.locks import claim_run
from benchmark.launch.ray_executor import NODE_RESULTS, NodeCheck, NodeFile, check_node, run_on_node, source_version
from benchmark.records.store import record_status
from benchmark.train.runner import first_task_key
from dispatch_fakes import ExecuteRun, fake_runner, read_journal, read_record, run_cli, write_experiment

ray = pytest.importorskip("ray")



def ray_cli(runner: sweep.Runner, experiment: Path, results: Path, data_root: Path, *options: str,
            patch: pytest.MonkeyPatch) -> SimpleNamespace:
    patch.setattr(sweep, "default_runner", lambda: runner)
    return run_cli(experiment, results, data_root, "--backend", "ray", *options)


# -- a local instance --------------------------------------------------------------------------------
def test_ray_backend_runs_a_grid_on_a_local_instance(tmp_path, cifar_root, monkeypatch):
    experiment = write_experiment(tmp_path, methods=("finetune", "replay"), budgets=(4,))
    runs = {run.method: run for run in expand(load_experiment(experiment))}
    journal = tmp_path / "journal.txt"
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # the local instance gets 16 CPUs
    result = ray_cli(fake_runner(journal, exit_for=("replay",)), experiment, tmp_path / "results", cifar_root,
                     "--gpus", "cpu", patch=monkeypatch)
    assert result.code == 1, result.err
    assert "local Ray instance" in result.out
    experiment_dir = tmp_path / "results" / "tiny"
    assert read_record(experiment_dir, runs["finetune"].run_id)["status"] == "complete"
    crashed = read_record(experiment_dir, runs["replay"].run_id)  # the task's worker died: the driver wrote this
    assert crashed["status"] == "failed" and crashed["error"]["type"] == "WorkerCrashedError"
    # one first-task model for both runs (one seed, one backbone), trained on Ray
    assert [entry["key"] for entry in read_journal(journal) if entry["job"] == "first_task"] == [
        first_task_key(runs["finetune"])] == [first_task_key(runs["replay"])]
    # the default CPU placement: one run per core, at most 8 runs, so 2 threads each of 16 cores
    assert {entry["threads"] for entry in read_journal(journal)} == {2}


def test_a_ray_address_where_nothing_listens_fails_in_seconds(tmp_path, cifar_root, monkeypatch):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = ray_cli(fake_runner(tmp_path / "journal.txt"), write_experiment(tmp_path, methods=("finetune",), budgets=(4,)),
                     tmp_path / "results", cifar_root, "--address", f"127.0.0.1:{port}", patch=monkeypatch)
    assert result.code == 2 and time.monotonic() - started < 10
    assert f"--address 127.0.0.1:{port}: nothing answers there" in result.err
    assert f"ray start --head --port={port}" in result.err
    assert not (tmp_path / "journal.txt").exists() and not (tmp_path / "results").exists()
    assert "use HOST:PORT" in devices.address_problems("head-node")[0]


# -- what a node is checked for (the function the preflight runs on each node) -----------------------
def test_the_node_check_names_missing_data_other_code_and_an_unwritable_results_root(tmp_path, cifar_root,
                                                                                      monkeypatch):
    results = tmp_path / "results"
    (results / ".token").parent.mkdir()
    (results / ".token").write_text(".token")
    good = NodeCheck("cifar100", cifar_root, results, token=".token", source=source_version())
    assert check_node(good) == {"problems": [], "shared": True}
    monkeypatch.setenv(NODE_RESULTS, str(tmp_path / "elsewhere"))  # a node with its own disk
    assert check_node(good) == {"problems": [], "shared": False}
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(NODE_RESULTS, str(tmp_path / "a-file" / "results"))
    bad = NodeCheck("cifar100", tmp_path / "no-data", results, token=".token", source="0" * 64)
    data, code, disk = check_node(bad)["problems"]
    assert data.startswith("data: CIFAR-100 ('cifar100') not found")
    assert code == (f"code: its source of benchmark, methods, budgets (hash {source_version()[:12]}) differs from "
                    "the driver's (000000000000); install the driver's checkout on every node")
    assert disk.startswith(f"results root {tmp_path / 'a-file' / 'results'} is not writable there (")
    assert disk.endswith(f"set {NODE_RESULTS} on that node before `ray start` to a writable folder")


def test_a_run_on_a_node_writes_its_model_there_and_sends_back_a_record_it_has(tmp_path, monkeypatch):
    run = expand(load_experiment(write_experiment(tmp_path, methods=("finetune",), budgets=(4,))))[0]
    driver, node, journal = tmp_path / "driver", tmp_path / "node", tmp_path / "journal.txt"
    monkeypatch.setenv(NODE_RESULTS, str(node))
    arguments = dict(claim=claim_run, model=NodeFile("first_task/key.pt", b"weights"), results_root=driver,
                     experiment_dir=driver / "tiny", seen=123, execute=ExecuteRun(journal), record_status=record_status,
                     run=run, data_root=tmp_path, device="cpu", threads=1)
    record = run_on_node(**arguments)  # the driver's stamp (123) is of its own disk: ignored here
    assert record["status"] == "complete" and (node / "first_task" / "key.pt").read_bytes() == b"weights"
    assert read_record(node / "tiny", run.run_id) == record and not driver.exists()
    again = run_on_node(**arguments)  # complete on this node already: sent back, not run again
    assert again == record and len(read_journal(journal)) == 1


# -- a two-node cluster without a shared disk --------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes of 1 CPU, each with its own results root (the env of the process that starts a
    node reaches its workers)."""
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("cluster")
    roots = [tmp / "node-0", tmp / "node-1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(NODE_RESULTS, str(roots[0]))
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        patch.setenv(NODE_RESULTS, str(roots[1]))
        nodes.add_node(num_cpus=1)
    try:
        nodes.wait_for_nodes()
        assert nodes.address.startswith("127.0.0.1:"), nodes.address  # loopback only (tests/conftest.py)
        yield SimpleNamespace(address=nodes.address, roots=roots)
    finally:
        ray.shutdown()
        nodes.shutdown()


def test_without_a_shared_disk_models_and_records_travel_through_the_driver(cluster, tmp_path, cifar_root,
                                                                            monkeypatch):
    """One first-task model, two slow runs of it at once: with 1 CPU per node they run on both
    nodes, so one of them needs the model trained on the other node."""
    experiment = write_experiment(tmp_path, methods=("replay",), budgets=(4, 6))
    runs = expand(load_experiment(experiment))
    journal, results = tmp_path / "journal.txt", tmp_path / "driver-results"
    result = ray_cli(fake_runner(journal, slow_for=("replay",)), experiment, results, cifar_root,
                     "--address", cluster.address, patch=monkeypatch)
    assert result.code == 0, result.err
    assert [entry["job"] for entry in read_journal(journal)].count("first_task") == 1  # trained once, on one node
    for root in cluster.roots:  # the model reached both nodes; each ran one run and kept its record
        assert (root / "first_task" / f"{first_task_key(runs[0])}.pt").read_text() == "model"
        assert len(list((root / "tiny" / "runs").glob("*/record.json"))) == 1
    for run in runs:  # the driver wrote what came back; nothing else of the runs is on its disk
        node_copies = [read_record(root / "tiny", run.run_id) for root in cluster.roots
                       if (root / "tiny" / "runs" / run.run_id / "record.json").exists()]
        assert node_copies == [read_record(results / "tiny", run.run_id)]
        assert node_copies[0]["status"] == "complete"
    assert not (results / "first_task").exists()
    assert {path.name for path in (results / "tiny" / "runs").glob("*/*")} == {"record.json"}
    assert list(results.glob(".preflight-*")) == []  # the node check's token is gone
    assert json.loads((results / "tiny" / "grid.json").read_text())["experiment"] == "tiny"


def test_a_cluster_that_does_not_share_the_disk_refuses_ray_shared_fs(cluster, tmp_path, cifar_root, monkeypatch):
    journal = tmp_path / "journal.txt"
    result = ray_cli(fake_runner(journal), write_experiment(tmp_path, methods=("finetune",), budgets=(4,)), tmp_path / "results",
                     cifar_root, "--address", cluster.address, "--ray-shared-fs", patch=monkeypatch)
    assert result.code == 2 and not journal.exists()
    assert "error: the node check failed on 2 of 2 Ray node(s); nothing was run:" in result.err
    assert result.err.count("does not see the driver's results root") == 2
    named = re.findall(rf"node {re.escape(cluster.address.split(':')[0])} \((\w{{8}})\): does not see", result.err)
    assert len(set(named)) == 2  # each line names its node
