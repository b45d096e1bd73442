"""A section of the device check: its number, title, PASS or FAIL, notes and measured data.

Its own module so that the check's sections (check_grid.py, check_parity.py) and the check that
runs them (check.py) share it without importing each other.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Section:
    number: int
    title: str
    status: str = "PASS"
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    seconds: float = 0.0

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fail(self, text: str) -> None:
        self.status = "FAIL"
        self.notes.append("FAIL: " + text)

    def text(self) -> str:
        body = "".join("\n    " + note.replace("\n", "\n      ") for note in self.notes)
        return f"[{self.status}] {self.number}. {self.title} ({self.seconds:.0f} s){body}"


def run_section(section: Section, body: Callable[[Section], None]) -> Section:
    """`body(section)`; an exception is the section's FAIL (with its traceback), never the check's end."""
    started = time.perf_counter()
    try:
        body(section)
    except Exception as error:  # noqa: BLE001 -- reported as this section's failure
        section.fail(f"{type(error).__name__}: {error}\n{traceback.format_exc()[-1500:]}")
    section.seconds = time.perf_counter() - started
    return section
