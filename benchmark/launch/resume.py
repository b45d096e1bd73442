"""Resume: which runs of a grid already have a record, and the failures those records describe.

A run with a complete record is skipped; a failed one is skipped unless retried; a run killed
before its record was written (the record is renamed into place only when whole) has none, and
runs again; so does a run whose record is damaged (benchmark.records.schema judges it, as the
report does: a record the report would drop is never skipped as done).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.records.schema import Verdict, judge, record_file

if TYPE_CHECKING:
    from benchmark.config.grid import Run


@dataclass(frozen=True)
class Damaged:
    run: Run
    path: Path
    problem: str


@dataclass(frozen=True)
class Resume:
    complete: list[Run]
    failed: list[Run]      # failed before and not retried
    to_run: list[Run]
    retrying: int          # failed before and run again (counted in to_run)
    damaged: list[Damaged] = field(default_factory=list)  # records judged damaged: run again (in to_run)

    def line(self) -> str:
        total = len(self.complete) + len(self.failed) + len(self.to_run)
        failed = f"{self.retrying} failed (retrying)" if self.retrying else f"{len(self.failed)} failed (skipped)"
        notes = "".join(f"\n  damaged record {entry.path} ({entry.problem}): run {entry.run.run_id} runs again"
                        for entry in self.damaged)
        return f"{total} runs: {len(self.complete)} complete (skipped), {failed}, {len(self.to_run)} to run{notes}"


def verdicts(runs: list[Run], experiment_dir: Path) -> dict[str, Verdict]:
    return {run.run_id: judge(record_file(experiment_dir, run.run_id)) for run in runs}


def sort_by_status(runs: list[Run], experiment_dir: Path, retry_failed: bool) -> Resume:
    """Which runs already have a whole record. A half-written record (killed mid-write) has none,
    and a damaged one counts as none: both run again."""
    verdict = verdicts(runs, experiment_dir)
    complete = [run for run in runs if verdict[run.run_id].status == "complete"]
    failed = [run for run in runs if verdict[run.run_id].status == "failed"]
    fresh = [run for run in runs if verdict[run.run_id].status in ("absent", "damaged")]
    damaged = [Damaged(run, record_file(experiment_dir, run.run_id), verdict[run.run_id].problem)
               for run in runs if verdict[run.run_id].status == "damaged"]
    if retry_failed:
        return Resume(complete, [], failed + fresh, len(failed), damaged)
    return Resume(complete, failed, fresh, 0, damaged)


@dataclass(frozen=True)
class Failure:
    run: Run
    error_type: str
    message: str


def recorded_failure(run: Run, experiment_dir: Path) -> Failure:
    """The failure a run's existing record describes (for failed runs that are not retried)."""
    verdict = judge(record_file(experiment_dir, run.run_id))
    error = (verdict.record or {}).get("error") or {}
    return Failure(run, error.get("type", "unknown"), error.get("message", ""))
