"""Run records on disk: one folder per run, its record written atomically, its origin attached.

A run killed half-way leaves no record.json (the temporary file is never renamed), so a
resumed benchmark sees it as not done.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Callable

import torch

REPO = Path(__file__).resolve().parents[2]


def run_dir(experiment_dir: Path, run_id: str) -> Path:
    return Path(experiment_dir) / "runs" / run_id


def record_path(experiment_dir: Path, run_id: str) -> Path:
    return run_dir(experiment_dir, run_id) / "record.json"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write to a temporary file in the same folder, then rename: readers see all or nothing."""
    write_atomic(path, lambda file: json.dump(payload, file, indent=1, default=_jsonable), mode="w")


def write_atomic(path: Path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call `write` on a temporary file next to `path`, sync it, then rename it to `path`.

    mkstemp creates the file private (0600); the result is made readable like any new file
    (0666 less the umask), so other users of a shared results folder can read every record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which races with other threads)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def record_status(experiment_dir: Path, run_id: str) -> str | None:
    """"complete", "failed", or None when the run has no readable record."""
    try:
        return json.loads(record_path(experiment_dir, run_id).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


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
    (`speed`: precision, channels_last, fused SGD, cudnn.benchmark). `device` may be "unknown"
    (a worker that died before it could say)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        device = None
    return {**code_version(), "torch": torch.__version__, "python": sys.version.split()[0],
            "device": str(device) if device is not None else "unknown", "device_name": _device_name(device),
            **_cuda_versions(device), "hostname": socket.gethostname(), "threads": torch.get_num_threads(),
            **(speed or {})}


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
