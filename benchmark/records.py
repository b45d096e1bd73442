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
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def run_dir(experiment_dir: Path, run_id: str) -> Path:
    return Path(experiment_dir) / "runs" / run_id


def record_path(experiment_dir: Path, run_id: str) -> Path:
    return run_dir(experiment_dir, run_id) / "record.json"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write to a temporary file in the same folder, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(payload, file, indent=1, default=_jsonable)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


def origin(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {**code_version(), "torch": torch.__version__, "python": sys.version.split()[0],
            "device": str(device), "device_name": name, "hostname": socket.gethostname(),
            "threads": torch.get_num_threads()}
