"""What a run record must hold: the one judge of a record.json, for `run` and `report` alike.

`run` skips a run whose record is whole (complete, or failed and not retried) and runs one with
a damaged record again; `report` reports whole records and skips a damaged one with a warning
naming it. Both ask `judge`, so a record is never skipped by the one as done and dropped by the
other as damaged (the cell would never appear again).

Whole means: a JSON object with a `run_id`, a `status` of "complete" or "failed", the `cell` it
ran; `tasks` a list of objects, `summary`, `origin` and `error` objects where given; a complete
run has its `tasks` and `summary`, a failed one its `error`. Other keys (config, checkpoint, ...)
are free. Light on purpose (pydantic only): the driver judges every record before it loads torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

STATUSES = ("complete", "failed")


class RunRecord(BaseModel):
    """The keys a reader relies on; strict: JSON has no tuples, and "3" is not 3."""

    model_config = ConfigDict(extra="allow", strict=True)

    run_id: str
    status: Literal["complete", "failed"]
    cell: dict[str, Any]
    cells: list[dict[str, Any]] | None = None  # a run serving several grid cells (Finetune)
    tasks: list[dict[str, Any]] | None = None
    summary: dict[str, Any] | None = None
    origin: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _what_the_status_needs(self) -> "RunRecord":
        needed = ("tasks", "summary") if self.status == "complete" else ("error",)
        missing = [key for key in needed if getattr(self, key) is None]
        if missing:
            raise ValueError(f"a {self.status} record needs {' and '.join(missing)} (missing or null)")
        return self


@dataclass(frozen=True)
class Verdict:
    """`status`: "complete" or "failed" for a whole record, "damaged" (with its `problem`), or
    "absent" (no record.json: the run has not finished)."""

    status: Literal["complete", "failed", "damaged", "absent"]
    record: dict | None = None
    problem: str | None = None


def record_problem(record: object) -> str | None:
    """What makes `record` (parsed JSON) unusable, in words, or None when it is whole."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    try:
        RunRecord.model_validate(record)
    except ValidationError as error:
        return "; ".join(_words(entry) for entry in error.errors())
    return None


def _words(entry: dict) -> str:
    where = ".".join(str(part) for part in entry["loc"])
    if entry["type"] == "missing":
        return f"{where}: missing"
    message = entry["msg"].removeprefix("Value error, ")
    if entry["type"] == "literal_error":
        message = f"{entry['input']!r} is not one of {', '.join(STATUSES)}"
    return f"{where}: {message}" if where else message


def judge(path: Path) -> Verdict:
    """The verdict on the record at `path` (runs/<run_id>/record.json)."""
    path = Path(path)
    if not path.exists():
        return Verdict("absent")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # a folder, unreadable, not UTF-8, not JSON
        return Verdict("damaged", problem=f"{type(error).__name__}: {error}")
    problem = record_problem(record)
    if problem is not None:
        return Verdict("damaged", problem=problem)
    return Verdict(record["status"], record)


def record_file(experiment_dir: Path, run_id: str) -> Path:
    return Path(experiment_dir) / "runs" / run_id / "record.json"


def record_status(experiment_dir: Path, run_id: str) -> str | None:
    """"complete" or "failed" for a whole record; None for none or a damaged one (it runs again)."""
    verdict = judge(record_file(experiment_dir, run_id))
    return verdict.status if verdict.status in STATUSES else None
