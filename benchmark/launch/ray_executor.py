"""Ray tasks, on a local instance or a running cluster, with or without a disk shared with the driver.

- One Ray task per job: 1/runs_per_gpu of a GPU each (Ray sets CUDA_VISIBLE_DEVICES), or CPUs.
- Preflight (a cluster, --address): before any run, one task pinned to each node that can take a
  run (NodeAffinitySchedulingStrategy) checks that node: the data set loads from the data root
  (check_dataset, whose error names the fix), the suite's source is the driver's (a hash of
  benchmark/, methods/ and budgets/), its results root is writable, and whether it sees the
  driver's results root (a token file the driver wrote there). A node failing a check stops the
  request before anything runs: DispatchError naming the node (run_all exits 2).
- `shares_filesystem`: --ray-shared-fs / --no-ray-shared-fs, else what the preflight found (every
  node saw the token); a local instance shares this machine's disk.
- Without a shared disk (benchmark.launch.sweep builds such jobs): a node keeps results under its results
  root (the driver's path, or $CIL_NODE_RESULTS set on that node before `ray start`). A first-task
  job returns its model file's bytes (`first_task_on_node`); the driver puts them in the object
  store (`put`), and each run job gets that ObjectRef and writes the file on its node before
  training (`run_on_node`). A run returns its record, which the driver writes: records exist where
  the report reads them. Logs and checkpoints stay on the node that ran the run.
"""
from __future__ import annotations

import hashlib
import os
import socket
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from benchmark.launch.devices import ray_task_resources, start_ray
from benchmark.launch.executors import CRASH, DispatchError, Job, Outcome, call_job

NODE_RESULTS = "CIL_NODE_RESULTS"           # a node's own results root, when it has no shared disk
SOURCE_PACKAGES = ("benchmark", "methods", "budgets")
PREFLIGHT_SECONDS = 300.0                   # a node that has not answered by then fails the preflight


class RayExecutor:
    """One Ray task per job: 1/runs_per_gpu of a GPU each (Ray sets CUDA_VISIBLE_DEVICES), or CPUs."""

    def __init__(self, address: str | None, gpus: list[str], runs_per_gpu: int, workers: int,
                 node_check: NodeCheck | None = None, shared_fs: bool | None = None):
        import ray

        self.ray = ray
        try:
            start_ray(address, gpus)
        except Exception as error:  # noqa: BLE001 -- whatever Ray says, nothing has run yet
            raise DispatchError(f"Ray did not start ({address or 'local instance'}): {error}") from error
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        resources = [node["Resources"] for node in nodes]
        self.num_cpus, self.num_gpus = ray_task_resources(resources, runs_per_gpu, workers)
        gpu_slots = sum(int(n.get("GPU", 0)) for n in resources) * runs_per_gpu
        self.capacity = gpu_slots if self.num_gpus else sum(int(n.get("CPU", 1)) // self.num_cpus for n in resources)
        # A fresh process per GPU task: it frees the GPU's memory, a broken CUDA context dies with
        # it, and a process that had initialized CUDA could not follow a new CUDA_VISIBLE_DEVICES.
        self.task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0,
                               max_calls=1 if self.num_gpus else 0)(call_job)
        self.running = 0
        self.shares_filesystem = True if shared_fs is None else shared_fs
        if address and node_check is not None:
            self.shares_filesystem = self._preflight(node_check, [n for n in nodes if self._fits(n)], shared_fs)

    def _fits(self, node: dict[str, Any]) -> bool:
        """Whether a run task can land on `node` (only those are checked: a CPU-less head is not)."""
        have = node["Resources"]
        return have.get("CPU", 0) >= self.num_cpus and have.get("GPU", 0) >= self.num_gpus

    def submit(self, job: Job) -> Future:
        outer: Future = Future()
        self.running += 1
        inner = self.task.remote(job, "cuda:0" if self.num_gpus else "cpu", self.num_cpus).future()
        inner.add_done_callback(lambda done: self._settle(job, done, outer))
        return outer

    def _settle(self, job: Job, done: Future, outer: Future) -> None:
        try:
            outcome = done.result()
        except self.ray.exceptions.WorkerCrashedError as error:  # the task's process died
            outcome = Outcome(error_type=CRASH, message=f"the Ray worker running {job.name} died: {error}")
        except Exception as error:  # noqa: BLE001 -- Ray lost the task some other way
            outcome = Outcome(error_type=type(error).__name__, message=f"{job.name}: {error}")
        self.running -= 1
        outer.set_result(outcome)

    def put(self, value: Any) -> Any:
        """`value` in the object store, for jobs on any node (a first-task model without a shared disk)."""
        return self.ray.put(value)

    def close(self, cancel: bool = False) -> None:
        self.ray.shutdown()  # stops a local instance and its tasks; only disconnects from a cluster

    # -- preflight ----------------------------------------------------------------------------------
    def _preflight(self, check: NodeCheck, nodes: list[dict[str, Any]], shared_fs: bool | None) -> bool:
        """Every node checked (DispatchError listing each failure); whether they all share the
        driver's results root."""
        if not nodes:
            raise DispatchError(f"no alive Ray node has {self.num_cpus} CPU(s) and {self.num_gpus} GPU(s) free "
                                "for a run; nothing was run")
        token = check.results_root / f".preflight-{uuid.uuid4().hex}"
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text(token.name)
        try:
            reports = self._check_nodes(replace(check, token=token.name, source=source_version()), nodes)
        finally:
            token.unlink(missing_ok=True)
        problems = [f"{where}: {problem}" for where, report in reports.items() for problem in report["problems"]]
        if shared_fs:
            problems += [f"{where}: does not see the driver's results root {check.results_root} (drop "
                         "--ray-shared-fs: records then come back through the driver)"
                         for where, report in reports.items() if not report["problems"] and not report["shared"]]
        if problems:
            raise DispatchError(f"the node check failed on {len({p.split(': ')[0] for p in problems})} of "
                                f"{len(nodes)} Ray node(s); nothing was run:\n  - " + "\n  - ".join(problems))
        return all(report["shared"] for report in reports.values()) if shared_fs is None else shared_fs

    def _check_nodes(self, check: NodeCheck, nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = self.ray.remote(num_cpus=0, max_retries=0)(check_node)
        refs = {f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]})": probe.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(check)
                for node in nodes}
        ready, _ = self.ray.wait(list(refs.values()), num_returns=len(refs), timeout=PREFLIGHT_SECONDS)
        reports = {}
        for where, ref in refs.items():
            try:
                reports[where] = self.ray.get(ref) if ref in ready else {
                    "problems": [f"no answer within {PREFLIGHT_SECONDS:.0f} s"], "shared": False}
            except Exception as error:  # noqa: BLE001 -- e.g. the node cannot import the suite
                reports[where] = {"problems": [f"the check itself failed: {type(error).__name__}: "
                                               f"{str(error).strip().splitlines()[-1]}"], "shared": False}
        return reports


# -- what each node is checked for ----------------------------------------------------------------
@dataclass(frozen=True)
class NodeCheck:
    dataset: str
    data_root: Path
    results_root: Path       # the driver's
    token: str = ""          # a file the driver wrote in its results root (set by the preflight)
    source: str = ""         # the driver's source_version() (set by the preflight)


def check_node(check: NodeCheck) -> dict[str, Any]:
    """On a node: its problems, each with the fix, and whether it sees the driver's results root."""
    from benchmark.data import DataError
    from benchmark.data.checks import check_dataset

    problems = []
    try:
        check_dataset(check.dataset, check.data_root)
    except DataError as error:
        problems.append(f"data: {error}")
    if (mine := source_version()) != check.source:
        problems.append(f"code: its source of {', '.join(SOURCE_PACKAGES)} (hash {mine[:12]}) differs from the "
                        f"driver's ({check.source[:12]}); install the driver's checkout on every node")
    root = node_results_root(check.results_root)
    probe = root / f".writable-{socket.gethostname()}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        problems.append(f"results root {root} is not writable there ({error}); set {NODE_RESULTS} on that node "
                        "before `ray start` to a writable folder")
    token = root / check.token
    return {"problems": problems, "shared": token.is_file() and token.read_text() == check.token}


def source_version() -> str:
    """A hash of the suite's Python source (the code a node would run), independent of git."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def node_results_root(results_root: Path) -> Path:
    """Where this node keeps results without a shared disk: $CIL_NODE_RESULTS, else the driver's path."""
    return Path(os.environ.get(NODE_RESULTS) or results_root)


# -- jobs on a node without the driver's disk (benchmark.launch.sweep) -------------------------------------
@dataclass(frozen=True)
class NodeFile:
    """A file a job wrote on its node, sent back: its path below the results root, and its bytes."""

    path: str
    data: bytes


def first_task_on_node(claim: Callable[..., Any], results_root: Path, **arguments: Any) -> Any:
    """`claim` (locks.claim_first_task) on this node's results root; the model comes back as a NodeFile."""
    root = node_results_root(results_root)
    value = claim(results_root=root, **arguments)
    if isinstance(value, Path):
        return NodeFile(str(value.relative_to(root)), value.read_bytes())
    return value  # NotRun: held by another process on this node


def run_on_node(claim: Callable[..., Any], model: Any, results_root: Path, experiment_dir: Path,
                seen: int | None, **arguments: Any) -> Any:
    """`claim` (locks.claim_run) on this node's results root, its first-task model written there
    first (`model`: a NodeFile, or its ObjectRef). A run complete on this node's disk already (the
    driver did not hear back) is sent back, not trained again. `seen`, the driver's stamp of its
    own disk, says nothing here: this node's record is what another process would have changed."""
    import json

    from benchmark.launch.locks import record_stamp
    from benchmark.files import write_atomic
    from benchmark.records.store import record_path

    root = node_results_root(results_root)
    folder = root / _below(Path(experiment_dir), Path(results_root))
    if model is not None:
        model = model if isinstance(model, NodeFile) else _get(model)
        if not (root / model.path).exists():
            write_atomic(root / model.path, lambda file: file.write(model.data))
    run = arguments["run"]
    if arguments["record_status"](folder, run.run_id) == "complete":
        return json.loads(record_path(folder, run.run_id).read_text())
    return claim(results_root=root, experiment_dir=folder, seen=record_stamp(folder, run.run_id), **arguments)


def _below(path: Path, root: Path) -> Path:
    return path.relative_to(root) if path.is_relative_to(root) else Path(path.name)


def _get(reference: Any) -> Any:
    import ray

    return ray.get(reference)
