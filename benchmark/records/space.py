"""A disk that fills up, said where the user looks: in the run's record and the driver's output.

torch.save reports a full disk as `RuntimeError: [enforce fail at inline_container.cc:672] .
unexpected pos ...`, with the OSError (errno 28) only in the exception's context, and the
record write fails with a bare `[Errno 28] No space left on device` that names no file. Both are
found here by walking the exception chain, and said with the path and the fix.
"""
from __future__ import annotations

import errno
from pathlib import Path

# Out of room: the whole device, or the user's share of it (a quota, common on clusters).
NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded on the device"}
FIX = "free space and rerun: the run resumes from its last checkpoint"


def space_error(error: BaseException) -> OSError | None:
    """The OSError of a full disk (or quota) in `error`'s chain (causes and contexts), or None."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_ROOM:
            return current
        pending += [current.__cause__, current.__context__]
    return None


def no_space_message(error: BaseException, where: str | Path | None) -> str | None:
    """"no space left on the device at <path>; free space and rerun: ..." when `error` is a full
    disk, else None. The path is the file the OSError names, or `where` (the folder being written)."""
    found = space_error(error)
    if found is None:
        return None
    path = found.filename or where or "an unreported path"
    return f"{NO_ROOM[found.errno]} at {path}; {FIX}"


def describe(error: BaseException, where: str | Path | None = None) -> str:
    """`str(error)`, led by the no-space message when the disk is full (the original kept after it)."""
    told = no_space_message(error, where)
    return str(error) if told is None else f"{told} ({type(error).__name__}: {error})"
