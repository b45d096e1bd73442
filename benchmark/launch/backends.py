"""The executor of a backend: local worker processes, a Ray cluster, SLURM job arrays, or inline.

The backends' modules import the executors' common types; this module alone knows them all, and
imports Ray and submitit only for the backend asked for.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.launch.devices import Slot, physical_ids, worker_slots
from benchmark.launch.executors import InlineExecutor, LocalExecutor

if TYPE_CHECKING:
    from benchmark.config.slurm_options import SlurmOptions
    from benchmark.launch.ray_executor import NodeCheck, RayExecutor
    from benchmark.launch.slurm import SlurmExecutor

BACKENDS = ("local", "joblib", "ray", "slurm", "inline")   # "joblib" is accepted for "local" (its first name)


def open_executor(backend: str, gpus: list[int], runs_per_gpu: int, workers: int, address: str | None,
                  experiment_dir: Path, node_check: NodeCheck | None = None, shared_fs: bool | None = None,
                  slurm: SlurmOptions | None = None) -> LocalExecutor | RayExecutor | SlurmExecutor | InlineExecutor:
    """The executor of `backend` on torch's devices `gpus` ([] = the CPU); its logs go below
    `experiment_dir` (workers/, slurm/). Ray: `node_check` is what each node of a cluster is
    checked for, `shared_fs` None means found out. SLURM: `slurm` holds the jobs' resources."""
    physical = physical_ids(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if backend == "slurm":
        from benchmark.config.slurm_options import SlurmOptions
        from benchmark.launch.slurm import open_slurm  # late: submitit loads only for this backend

        return open_slurm(slurm or SlurmOptions(), Path(experiment_dir))
    if backend == "ray":
        from benchmark.launch.ray_executor import RayExecutor  # late: imports ray only for this backend

        return RayExecutor(address, physical, runs_per_gpu, workers, node_check, shared_fs)
    if backend == "inline":  # this process sees every GPU, so it names the device itself
        return InlineExecutor(Slot({}, f"cuda:{gpus[0]}" if gpus else "cpu", os.cpu_count() or 1))
    return LocalExecutor(worker_slots(physical, runs_per_gpu, workers, os.cpu_count() or 1),
                         Path(experiment_dir) / "workers")
