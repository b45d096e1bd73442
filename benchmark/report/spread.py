"""The numerical spread: how far the same runs move when only what sets the floats changes (the
thread count, the CPU's instruction set, the math libraries, the card), set beside the spread over
seeds, so that a reader sees which differences between methods neither can explain.

Two experiments hold the same runs when a cell (dataset, scenario, policy, method, exemplar
format, stored precision, budget point, seed) has the same plan in both (backbone, number of backbones, exemplars): e.g. the default bench
at 1 and at 2 threads per run (`training: {cpu_threads: 2}`), or one grid on a CPU and a GPU.
`run_all.py report A B` prints the comparison and the comparison page shows it.

Within one experiment, records made under several numerics are named (`mixed_numerics`): their
differences hold the numerical spread as well as the methods'.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from benchmark.report.columns import AXIS_KEYS, EXPERIMENT_KEYS, with_axes

CELL_KEYS = [*EXPERIMENT_KEYS, "method", *AXIS_KEYS, "point", "seed"]
PLAN_KEYS = ["backbone", "num_backbones", "exemplars"]  # the same cell must be the same run
METRIC = "cnn_average_accuracy"


@dataclass(frozen=True)
class Spread:
    """Differences b - a of one metric over the runs two experiments share (points of accuracy)."""
    runs: int
    mean_abs: float
    max_abs: float
    sd: float          # sample std of the differences (NaN below 2 runs)

    def line(self) -> str:
        if self.runs == 0:
            return "no run in common"
        sd = "" if math.isnan(self.sd) else f", std of the differences {self.sd:.2f}"
        return (f"{self.runs} run(s) in common: mean |difference| {self.mean_abs:.2f}, "
                f"largest {self.max_abs:.2f} points{sd}")


def shared_runs(runs_a: pd.DataFrame, runs_b: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """The complete runs of both tables (runs.csv) with the same cell and plan, one row per run:
    the cell, `a`, `b` and `difference` (b - a) of `metric`."""
    def complete(runs: pd.DataFrame, name: str) -> pd.DataFrame:
        done = with_axes(runs)  # a runs.csv from before the axes: raw, fp32
        done = done[(done["status"] == "complete") & done[metric].notna()]
        done = done.drop_duplicates("run_id")  # a run reported at several cells counts once
        return done[CELL_KEYS + PLAN_KEYS + [metric]].rename(columns={metric: name})
    both = complete(runs_a, "a").merge(complete(runs_b, "b"), on=CELL_KEYS + PLAN_KEYS)
    return both.assign(difference=both["b"] - both["a"])


def numerical_spread(pairs: pd.DataFrame) -> Spread:
    """Summary of shared_runs' differences."""
    if pairs.empty:
        return Spread(0, math.nan, math.nan, math.nan)
    difference = pairs["difference"].astype(float)
    sd = float(difference.std(ddof=1)) if len(difference) >= 2 else math.nan
    return Spread(len(difference), float(difference.abs().mean()), float(difference.abs().max()), sd)


def seed_spread(summary: pd.DataFrame, metric: str = METRIC) -> float:
    """The typical std over seeds of one cell (root mean square over cells with 2+ seeds), from
    summary.csv; NaN with one seed."""
    column = f"{metric}_std"
    stds = summary.loc[summary["n_seeds"] >= 2, column].dropna() if column in summary else pd.Series([], dtype=float)
    return math.sqrt(float((stds ** 2).mean())) if len(stds) else math.nan


def mixed_numerics(records: list[dict]) -> list[str]:
    """The distinct numerics (origin["numerics"]) of the complete records, one "key=value, ..."
    line with its run count each, when there are several; [] when all share one (or none say)."""
    by_run = {record["run_id"]: record for record in records if record.get("status") == "complete"}
    counts = Counter(numerics_text(numerics) for record in by_run.values()
                     if (numerics := (record.get("origin") or {}).get("numerics")))
    if len(counts) < 2:
        return []
    return [f"{text} ({count} run(s))" for text, count in counts.items()]


def numerics_text(numerics: dict) -> str:
    """origin["numerics"] as one line, "key=value, ..." in key order (equal settings, equal text)."""
    return ", ".join(f"{key}={numerics[key]}" for key in sorted(numerics))


def format_mixed_numerics(lines: list[str]) -> str:
    """The printed warning for mixed_numerics' lines; empty when there are none."""
    if not lines:
        return ""
    listed = "".join(f"\n  {line}" for line in lines)
    return (f"warning: the complete runs were made under {len(lines)} different numerics; their "
            f"differences hold the numerical spread as well as the methods' (README, \"What these "
            f"numbers depend on\"): compare runs made under one{listed}")
