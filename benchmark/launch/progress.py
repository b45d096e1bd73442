"""The grid's progress bar on stderr."""
from __future__ import annotations

import sys
from typing import Any


class Progress:
    """One bar over all jobs (first tasks, then runs) on stderr; the postfix counts runs."""

    def __init__(self, jobs: int, runs: int, executor: Any):
        from tqdm import tqdm

        self.bar = tqdm(total=jobs, unit="job", file=sys.stderr, dynamic_ncols=True, desc="grid")
        self.runs, self.done, self.failed, self.executor = runs, 0, 0, executor
        self.refresh()

    def step(self, done: bool = False, failed: bool = False) -> None:
        self.done, self.failed = self.done + done, self.failed + failed
        self.bar.update(1)
        self.refresh()

    def drop(self, runs: int) -> None:
        """Runs failed without a job of their own (their first task failed): fewer jobs to wait for."""
        self.failed += runs
        self.bar.total -= runs
        self.refresh()

    def refresh(self) -> None:
        self.bar.set_postfix(done=self.done, failed=self.failed, running=self.executor.running,
                             left=self.runs - self.done - self.failed)

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
