"""Files written whole or not at all, and stable names for what a JSON value describes.

The bottom of the house: every room may import this module, and it imports no room. Records,
checkpoints, reports, the CIFAR cache and the decoded-image cache all write through `atomic_path`,
so there is one temporary-file name (`.<name>.<random>.tmp`, next to the file), one way to sync (the
file before its rename, the folder after it) and one permission rule (0666 less the umask).
Run ids, first-task keys and image-cache keys are all `stable_hash` of a JSON value.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Callable, Iterator

TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file next to `path` for the caller to write; when the block ends normally it is
    synced to disk and renamed to `path`, and the folder is synced, so that readers (and a machine
    that loses power) see the old file or the whole new one, never a part. On an error it is removed.

    mkstemp creates the file private (0600); it is made readable like any new file (0666 less the
    umask), so other users of a shared results or data folder can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    temporary = Path(name)
    try:
        try:
            os.fchmod(handle, 0o666 & ~_umask())
        finally:
            os.close(handle)
        yield temporary
        _fsync(temporary, os.O_RDONLY)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_atomic(path: str | Path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call `write` on an open temporary file next to `path`, then put it in place (atomic_path)."""
    with atomic_path(path) as temporary, open(temporary, mode) as file:
        write(file)


def write_json_atomic(path: str | Path, payload: Any, indent: int | None = 1) -> None:
    """`payload` as JSON, atomically; numbers that know `.item()` (numpy, torch) are written as numbers."""
    write_atomic(path, lambda file: json.dump(payload, file, indent=indent, default=_jsonable), mode="w")


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files of `path` that a killed writer left behind (remove them only under a lock
    that keeps out a live writer)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TEMPORARY_SUFFIX}"))


def stable_hash(value: Any, digits: int = 12) -> str:
    """The name of what a JSON value describes: the first `digits` hex digits of the SHA-256 of its
    canonical JSON (keys sorted, anything JSON lacks written as str)."""
    canonical = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:digits]


def _fsync(path: Path, flags: int) -> None:
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; filesystems that cannot sync a folder just skip it."""
    try:
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
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
