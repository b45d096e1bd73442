"""Resume: which runs of a grid already have a record, and the failures those records describe.

A run with a complete record is skipped; a failed one is skipped unless retried; a run killed
before its record was written (the record is renamed into place only when whole) has none, and
runs again.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmark.config.grid import Run


@dataclass(frozen=True)
class Resume:
    complete: list[Run]
    failed: list[Run]      # failed before and not retried
    to_run: list[Run]
    retrying: int          # failed before and run again (counted in to_run)

    def line(self) -> str:
        total = len(self.complete) + len(self.failed) + len(self.to_run)
        failed = f"{self.retrying} failed (retrying)" if self.retrying else f"{len(self.failed)} failed (skipped)"
        return f"{total} runs: {len(self.complete)} complete (skipped), {failed}, {len(self.to_run)} to run"


def sort_by_status(runs: list[Run], experiment_dir: Path, record_status: Callable[[Path, str], str | None],
                   retry_failed: bool) -> Resume:
    """Which runs already have a record. A half-written record (killed mid-write) has none: it reruns."""
    status = {run.run_id: record_status(experiment_dir, run.run_id) for run in runs}
    complete = [run for run in runs if status[run.run_id] == "complete"]
    failed = [run for run in runs if status[run.run_id] == "failed"]
    fresh = [run for run in runs if status[run.run_id] not in ("complete", "failed")]
    if retry_failed:
        return Resume(complete, [], failed + fresh, len(failed))
    return Resume(complete, failed, fresh, 0)


@dataclass(frozen=True)
class Failure:
    run: Run
    error_type: str
    message: str


def recorded_failure(run: Run, experiment_dir: Path) -> Failure:
    """The failure a run's existing record describes (for failed runs that are not retried)."""
    try:
        error = json.loads((experiment_dir / "runs" / run.run_id / "record.json").read_text()).get("error") or {}
    except (OSError, ValueError, AttributeError):
        error = {}
    return Failure(run, error.get("type", "unknown"), error.get("message", ""))
