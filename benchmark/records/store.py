"""Run records on disk: one folder per run, its record written atomically, its origin attached.

Records are written with benchmark.files.write_json_atomic: a run killed half-way leaves no
record.json (the temporary file is never renamed), so a resumed benchmark sees it as not done.
"""
from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from benchmark.records.numerics import numerics

REPO = Path(__file__).resolve().parents[2]


def run_dir(experiment_dir: Path, run_id: str) -> Path:
    return Path(experiment_dir) / "runs" / run_id


def record_path(experiment_dir: Path, run_id: str) -> Path:
    return run_dir(experiment_dir, run_id) / "record.json"


def record_status(experiment_dir: Path, run_id: str) -> str | None:
    """"complete", "failed", or None when the run has no whole record (benchmark.records.schema judges)."""
    from benchmark.records.schema import record_status as judged  # the one judge of a record

    return judged(experiment_dir, run_id)


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    sha = git("rev-parse", "HEAD")
    return {"git_sha": sha or None, "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if sha else None}


def origin(device: torch.device | str, speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and how a run ran: code, libraries, machine, device, and the engine's speed settings
    (`speed`: precision, channels_last, fused SGD, cudnn.benchmark), and under "numerics" what sets
    the floats (benchmark.records.numerics). `device` may be "unknown" (a worker that died before it
    could say)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        device = None
    return {**code_version(), "torch": torch.__version__, "python": sys.version.split()[0],
            "device": str(device) if device is not None else "unknown", "device_name": _device_name(device),
            **_cuda_versions(device), "hostname": socket.gethostname(), "threads": torch.get_num_threads(),
            **(speed or {}), "numerics": numerics(device)}


def _device_name(device: torch.device | None) -> str | None:
    if device is None:
        return None
    if device.type != "cuda":
        return platform.processor() or platform.machine()
    try:
        return torch.cuda.get_device_name(device)
    except Exception:  # a broken CUDA context must not stop its failure being recorded
        return None


def _cuda_versions(device: torch.device | None) -> dict[str, Any]:
    on_cuda = device is not None and device.type == "cuda"
    return {"cuda_version": torch.version.cuda if on_cuda else None,
            "cudnn_version": torch.backends.cudnn.version() if on_cuda else None}
