"""Where runs execute: which devices a request names, and how they are split into worker slots.

A slot is one worker process's share of the machine: the environment it starts with (its
CUDA_VISIBLE_DEVICES, so that it sees exactly one GPU and calls it "cuda:0"), the device string
the runner uses, and how many CPU threads it may take. The split is pure, so it is tested without
GPUs; only `visible_gpu_count` asks torch (and `check_devices`, through it), and `start_ray`
starts or joins Ray.
"""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Slot:
    device_env: dict[str, str]   # set in the worker's environment before torch initializes CUDA
    device: str                  # what the runner passes to torch: "cuda:0" or "cpu"
    threads: int                 # torch / OpenMP threads of the worker

    @property
    def env(self) -> dict[str, str]:
        """The worker's extra environment: its device plus thread caps read when OpenMP/MKL load."""
        threads = str(self.threads)
        return {**self.device_env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def visible_gpu_count() -> int:
    """CUDA devices this process can see (0 without CUDA). Tests patch this to fake GPUs."""
    import torch  # late: keeps `--help` and the pure functions below free of the torch import

    return torch.cuda.device_count()


def parse_gpus(text: str | None) -> list[int] | None:
    """`--gpus`: None (not given: every visible GPU), "cpu" -> [], "0,1" -> [0, 1]. ValueError if malformed."""
    if text is None:
        return None
    if text.strip().lower() == "cpu":
        return []
    items = [item.strip() for item in text.split(",")]
    if not items or not all(item.isdigit() for item in items):
        raise ValueError(f"--gpus {text}: use comma-separated CUDA device numbers (e.g. 0,1) or cpu")
    ids = [int(item) for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {text}: names a device twice")
    return ids


def gpu_problems(requested: list[int] | None, visible: int, text: str | None) -> list[str]:
    """Requested device numbers that do not exist, as one message naming the ones that do."""
    missing = [gpu for gpu in requested or [] if gpu >= visible]
    if not missing:
        return []
    have = f"({', '.join(map(str, range(visible)))})" if visible else "(none: CUDA is unavailable)"
    return [f"--gpus {text}: only {visible} CUDA device{'s' if visible != 1 else ''} visible {have}"]


def resolve_gpus(requested: list[int] | None, visible: int) -> list[int]:
    """The GPUs to use: the requested ones, or by default every visible one (none -> the CPU)."""
    return list(range(visible)) if requested is None else requested


def physical_ids(gpus: Sequence[int], cuda_visible_devices: str | None) -> list[str]:
    """CUDA_VISIBLE_DEVICES values for torch's device numbers.

    torch numbers the devices the driver sees; when the driver itself runs under
    CUDA_VISIBLE_DEVICES=2,5, its device 1 is "5" and a worker must be given "5", not "1".
    """
    if cuda_visible_devices is None:
        return [str(gpu) for gpu in gpus]
    entries = [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()]
    return [entries[gpu] for gpu in gpus]


def default_cpu_workers() -> int:
    """CPU-only default: one single-threaded run per core (small CIL networks use one core better
    than several), at most 8 so that the data sets held per worker stay a few GB in all."""
    return max(1, min(os.cpu_count() or 1, 8))


def worker_slots(gpus: Sequence[int | str], runs_per_gpu: int, workers: int, cpu_count: int) -> list[Slot]:
    """One slot per concurrent run: `runs_per_gpu` per GPU id, or `workers` CPU slots without GPUs.

    `gpus` are CUDA_VISIBLE_DEVICES values (see physical_ids). The cores are split evenly so that
    the workers do not fight over them (STYLE: cap each process's threads). A slot's threads are a
    cap: a run on the CPU trains with a fixed count whatever its slot's share
    (benchmark.records.numerics.run_threads), so that --workers does not change its numerics.
    """
    if gpus:
        threads = max(1, cpu_count // (len(gpus) * runs_per_gpu))
        return [Slot({"CUDA_VISIBLE_DEVICES": str(gpu)}, "cuda:0", threads)
                for gpu in gpus for _ in range(runs_per_gpu)]
    threads = max(1, cpu_count // workers)
    # An empty CUDA_VISIBLE_DEVICES hides the GPUs, so a CPU run never opens a CUDA context by accident.
    return [Slot({"CUDA_VISIBLE_DEVICES": ""}, "cpu", threads) for _ in range(workers)]


def ray_task_resources(nodes: Sequence[Mapping[str, float]], runs_per_gpu: int,
                       workers: int) -> tuple[int, float]:
    """(num_cpus, num_gpus) of each Ray task, from the CPU/GPU totals of the cluster's alive nodes.

    With GPUs: 1/runs_per_gpu of a GPU (Ray packs that many runs per GPU) and the CPUs of the
    most CPU-starved GPU node divided among its runs, so that a task fits on every GPU node.
    Without: `workers` runs per node, sharing the CPUs of the smallest node.
    """
    gpu_nodes = [node for node in nodes if node.get("GPU", 0) >= 1]
    if gpu_nodes:
        cpus = min(int(node.get("CPU", 1) // (int(node["GPU"]) * runs_per_gpu)) for node in gpu_nodes)
        return max(1, cpus), 1.0 / runs_per_gpu
    smallest = min((int(node.get("CPU", 1)) for node in nodes), default=os.cpu_count() or 1)
    return max(1, smallest // workers), 0.0


def python_path() -> str:
    """The driver's import path for Ray workers (Ray does not pass sys.path on, unlike loky)."""
    own = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()]
    entries = [str(Path(p).resolve()) for p in sys.path if p and os.path.isdir(p)]
    entries = [p for p in entries if not any(Path(p).is_relative_to(prefix) for prefix in own)]
    return os.pathsep.join(dict.fromkeys([os.getcwd(), *entries]))


def start_ray(address: str | None, gpus: list[str]) -> None:
    """Connect to the cluster at `address`, or start a local instance on `gpus` (no-op if connected)."""
    import ray

    if ray.is_initialized():  # validation asked the cluster for its GPUs already (benchmark.launch.request)
        return
    options = dict(runtime_env={"env_vars": {"PYTHONPATH": python_path()}}, log_to_driver=False)
    if address:
        ray.init(address=address, **options)
        return
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:  # the local raylet hands out exactly the GPUs it sees
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    try:
        ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(), num_gpus=len(gpus), **options)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def check_devices(gpus_text: str | None, runs_per_gpu: int, workers: int | None,
                  address: str | None) -> tuple[list[int], list[str]]:
    """(torch device numbers to use, problems) of the device options; [] means the CPU.

    With a Ray cluster address the cluster's GPUs are used, so no local device is checked.
    """
    problems = [f"--{name} {value}: must be at least 1"
                for name, value in (("runs-per-gpu", runs_per_gpu), ("workers", workers))
                if value is not None and value < 1]
    if address:
        if gpus_text is not None:
            problems.append(f"--gpus {gpus_text}: picks this machine's GPUs; with --address the cluster's "
                            "are used")
        return [], problems
    try:
        requested = parse_gpus(gpus_text)
    except ValueError as error:
        return [], problems + [str(error)]
    visible = visible_gpu_count()
    problems += gpu_problems(requested, visible, gpus_text)
    gpus = resolve_gpus(requested, visible)
    if gpus and workers is not None:
        problems.append(f"--workers {workers}: sets the number of CPU runs; with GPUs use --runs-per-gpu "
                        "(or --gpus cpu to run on the CPU)")
    elif workers is not None:
        problems += worker_problems(workers, os.cpu_count() or 1)
    return gpus, problems


def worker_problems(workers: int, cores: int) -> list[str]:
    """More CPU workers than cores is refused, not capped: each worker takes at least one thread
    (worker_slots), so the extra ones only take turns on the cores while each holds its own copy of
    the data set; and a cap would run something other than what the command says."""
    if workers <= cores:
        return []
    return [f"--workers {workers}: this machine has {cores} core{'s' if cores != 1 else ''}, and each worker "
            f"needs one (more only take turns, each holding its own data set); use at most {cores}"]


def address_problems(address: str, timeout: float = 3.0) -> list[str]:
    """A Ray cluster address that nothing answers at, found in seconds (`ray.init` would wait for
    minutes): HOST:PORT or ray://HOST:PORT gets a TCP connection try; "auto" is left to Ray."""
    if address == "auto":
        return []
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return [f"--address {address}: use HOST:PORT of the cluster's head (e.g. head-node:6379)"]
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        return [f"--address {address}: nothing answers there ({error or type(error).__name__}); start the "
                f"cluster (ray start --head --port={port}) or fix the address"]
    return []


def describe_placement(backend: str, gpus: list[int], runs_per_gpu: int, workers: int,
                       address: str | None, cpu_threads: int) -> str:
    """Where the jobs would go, in words, without starting anything; `cpu_threads` is the
    experiment's threads per CPU run."""
    if backend == "ray" and address:
        return (f"the Ray cluster at {address} (1/{runs_per_gpu} GPU per run; on a cluster without GPUs, "
                f"{workers} run(s) per machine)")
    if backend == "ray":
        return "a local Ray instance on " + (f"GPU {_numbers(gpus)} (1/{runs_per_gpu} GPU per run)" if gpus
                                              else f"the CPU ({workers} run(s) at once)")
    slots = worker_slots(gpus, runs_per_gpu, workers, os.cpu_count() or 1)
    if backend == "inline":
        return f"this process, one job at a time, on {f'GPU {gpus[0]}' if gpus else 'the CPU'}"
    from benchmark.records.numerics import run_threads  # late: keeps `--help` free of the torch import

    on = f"GPU {_numbers(gpus)} ({runs_per_gpu} per GPU)" if gpus else "the CPU"
    return f"{len(slots)} worker process(es) on {on}, {run_threads(slots[0].device, slots[0].threads, cpu_threads)} thread(s) each"


def _numbers(gpus: list[int]) -> str:
    return ", ".join(map(str, gpus))
