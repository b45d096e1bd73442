"""Collect the run records of one experiment into tidy tables, plots and a printed summary.

Input: `<experiment_dir>/runs/<run_id>/record.json` (written by the training engine) and
`<experiment_dir>/grid.json`, the cells of the current grid (written by `run_all.py run` before it
trains). Only records of the current grid are reported, each at the grid's cells: after a change
of budgets, Finetune's one run is reported at the new budget points, and records of runs the grid
no longer has are left out with a warning that names them.

Output in `<experiment_dir>/`: runs.csv, tasks.csv, summary.csv, auc.csv, ranks.csv,
storage_cost.csv (when runs probed their stored precision) and plots/ (every column is explained
in docs/results.md), and report.html, one self-contained page of all of it
(benchmark.report.page). The set is replaced as a whole: everything is built in a staging folder
first, so a failure or a kill while building leaves the previous set untouched.

Run `python -m benchmark.report <experiment_dir>` to write all of it.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from benchmark.report import plots
from benchmark.report.columns import CSV_COLUMNS, EXPERIMENT_KEYS, KINDS
from benchmark.records.schema import judge
from benchmark.files import write_json_atomic
from benchmark.report.page import PAGE, write_page
from benchmark.report.ranks import ranks_table
from benchmark.report.spread import format_mixed_numerics, mixed_numerics
from benchmark.report.storage_cost import (STORAGE_COST, format_storage_cost, has_probes,
                                           storage_cost_table)
from benchmark.report.tables import (auc_table, format_auc, format_ranks, format_seeds_needed,
                                     format_summary, runs_table, summary_table, tasks_table)

GRID_FILE = "grid.json"
PLOT_DIR = "plots"
OUTPUTS = [*CSV_COLUMNS, PLOT_DIR, PAGE]  # everything the report owns in the experiment folder
STAGING_PREFIX = ".report-staging-"
MANIFEST = "manifest.json"  # in a staging folder: the set is complete and may be moved into place

# ------------------------------------------------------------------------------ loading


def load_records(experiment_dir: Path) -> list[dict]:
    """One record per grid cell it is reported at, from every readable `runs/*/record.json`.

    With grid.json: records of its run ids only, at its cells. Without (folders from before
    grid.json existed): every record at the cells it lists itself, with a warning.
    """
    experiment_dir = Path(experiment_dir)
    records = [(path, record) for path in sorted(experiment_dir.glob("runs/*/record.json"))
               if (record := _read_record(path)) is not None]
    grid = load_grid(experiment_dir)
    if grid is None:
        return [at_cell for _, record in records for at_cell in _own_cells(record)]
    stale = [path.parent.name for path, record in records if record["run_id"] not in grid]
    if stale:
        warnings.warn(f"{len(stale)} record(s) under {experiment_dir / 'runs'} belong to no "
                      f"cell of the current grid ({GRID_FILE}; they are from an earlier grid of "
                      f"this experiment) and are left out: {', '.join(stale)}", stacklevel=2)
    # The grid's cell wins; the record's fills what the grid row lacks (e.g. the dataset).
    return [{**record, "cell": {**record["cell"], **cell}} for _, record in records
            for cell in grid.get(record["run_id"], [])]


def _own_cells(record: dict) -> list[dict]:
    """A run that serves several cells (Finetune trains the same way at every budget point) lists
    them under "cells" and is reported at each of them."""
    return [{**record, "cell": cell} for cell in record.get("cells") or [record["cell"]]]


def load_grid(experiment_dir: Path) -> dict[str, list[dict]] | None:
    """run_id -> the cells of the current grid it serves, or None (warned) without a usable file."""
    path = Path(experiment_dir) / GRID_FILE
    fallback = "every record found is reported, including any of an earlier grid"
    if not path.exists():
        warnings.warn(f"no {GRID_FILE} in {experiment_dir} (`run_all.py run` writes it): "
                      f"{fallback}", stacklevel=3)
        return None
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells")
    except (OSError, ValueError, AttributeError) as error:
        warnings.warn(f"unreadable {path} ({error}); {fallback}", stacklevel=3)
        return None
    if not (isinstance(cells, list) and all(isinstance(cell, dict)
                                            and isinstance(cell.get("run_id"), str)
                                            for cell in cells)):
        warnings.warn(f"{path} must hold {{\"cells\": [{{\"run_id\": ..., ...}}, ...]}}; rerun "
                      f"`run_all.py run` to rewrite it; {fallback}", stacklevel=3)
        return None
    grid: dict[str, list[dict]] = {}
    for cell in cells:
        grid.setdefault(cell["run_id"], []).append({k: v for k, v in cell.items() if k != "run_id"})
    return grid


def load_experiment_file(experiment_dir: Path) -> dict | None:
    """grid.json's "experiment_file" ({"name": ..., "keys": {...}}, the file as `run` read it), or
    None for a grid.json from before it was recorded (or none, or an unreadable one: warned by
    load_grid)."""
    try:
        grid = json.loads((Path(experiment_dir) / GRID_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = grid.get("experiment_file") if isinstance(grid, dict) else None
    return entry if isinstance(entry, dict) else None


def _read_record(path: Path) -> dict | None:
    """The parsed record, or None with a warning that names it: one broken run must not hide the
    others. benchmark.records.schema judges it, as `run` does, which runs a damaged record again."""
    verdict = judge(path)
    if verdict.record is not None:
        return verdict.record
    warnings.warn(f"skipping damaged run record {path}: {verdict.problem}; `run_all.py run` on its "
                  f"experiment file runs it again", stacklevel=3)
    return None


# ------------------------------------------------------------------------------ writing


def _write_plots(plot_dir: Path, summary: pd.DataFrame, tasks: pd.DataFrame,
                 auc: pd.DataFrame) -> list[Path]:
    """All figures, one folder per dataset/scenario/policy when the experiment mixes several."""
    groups = list(summary.groupby(EXPERIMENT_KEYS, dropna=False))
    files: list[Path] = []
    for keys, group in groups:
        dataset, scenario, policy = keys
        out_dir = plot_dir if len(groups) == 1 else plot_dir / f"{dataset}_{scenario}_{policy}"
        title = f"{dataset} {scenario} ({policy} memory policy)"
        same = {name: (table[EXPERIMENT_KEYS] == list(keys)).all(axis=1)
                for name, table in (("tasks", tasks), ("auc", auc))}
        for kind in KINDS:
            if group[f"{kind}_average_accuracy_mean"].notna().any():
                files += plots.plot_accuracy_vs_memory(group, out_dir, title, kind=kind)
                files += plots.plot_accuracy_per_task(tasks[same["tasks"]], out_dir, title,
                                                      kind=kind)
        if auc.loc[same["auc"], "auc_average"].notna().any():
            files += plots.plot_auc_bars(auc[same["auc"]], out_dir, title)
    return files


def _build(records: list[dict], staging: Path, experiment_dir: Path) -> tuple[list[Path], str]:
    """Write the whole set into `staging`; returns its files and the text to print."""
    runs, tasks = runs_table(records), tasks_table(records)
    n_complete = int((runs["status"] == "complete").sum())
    files = []
    if records:
        for name, table in (("runs.csv", runs), ("tasks.csv", tasks)):
            table.to_csv(staging / name, index=False)
            files.append(staging / name)
    if n_complete == 0:
        return files, (f"No complete runs under {experiment_dir / 'runs'} ({len(records)} "
                       f"record(s), none complete): no summary, AUC or plots written.")
    summary, auc = summary_table(runs), auc_table(runs)
    for name, table in (("summary.csv", summary), ("auc.csv", auc)):
        table.to_csv(staging / name, index=False)
        files.append(staging / name)
    ranks, no_ranks = ranks_table(runs)  # CD ranks across the curve; none below 5 blocks
    if len(ranks):
        ranks.to_csv(staging / "ranks.csv", index=False)
        files.append(staging / "ranks.csv")
    storage_cost = ""
    if has_probes(records):  # fp32 runs that measured their frozen blocks at other precisions
        costs = storage_cost_table(records)
        costs.to_csv(staging / STORAGE_COST, index=False)
        files.append(staging / STORAGE_COST)
        storage_cost = f"\n\n{format_storage_cost(costs)}" if len(costs) else ""
    files += _write_plots(staging / PLOT_DIR, summary, tasks, auc)
    # The page shows every file above: keep it last, after any CSV or plot added to the set.
    files.append(write_page(staging, experiment_dir, records, load_experiment_file(experiment_dir)))
    n_failed = int((runs["status"] == "failed").sum())
    head = f"{experiment_dir.name}: {n_complete} complete, {n_failed} failed run(s)\n"
    mixed = format_mixed_numerics(mixed_numerics(records))  # differences that hold the numerics too
    head += f"{mixed}\n" if mixed else ""
    seeds = format_seeds_needed(runs)  # planning the next grid's seeds; empty with one seed
    tail = f"\n\n{seeds}" if seeds else ""
    ranked = f"\n\n{format_ranks(ranks, no_ranks)}"
    return files, (f"{head}\n{format_summary(summary)}\n\n{format_auc(auc)}{ranked}"
                   f"{storage_cost}{tail}")


def _finish_move(staging: Path, experiment_dir: Path) -> None:
    """Move a complete staged set into place and drop outputs it does not have. Safe to repeat:
    a report killed half-way through the moves is finished by the next one."""
    written = json.loads((staging / MANIFEST).read_text(encoding="utf-8"))["outputs"]
    for name in OUTPUTS:
        target, staged = experiment_dir / name, staging / name
        if target.is_dir() and (staged.exists() or name not in written):
            os.replace(target, staging / f"replaced-{name}")  # a folder cannot be renamed over
        if staged.exists():
            os.replace(staged, target)
        elif name not in written and target.exists():
            target.unlink()  # from an older report: not part of the current set
    shutil.rmtree(staging)


def _recover(experiment_dir: Path) -> None:
    """Finish a set that was complete when its report died; discard one that was not."""
    for staging in sorted(experiment_dir.glob(f"{STAGING_PREFIX}*")):
        if (staging / MANIFEST).is_file():
            _finish_move(staging, experiment_dir)
        else:
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _one_report_at_a_time(experiment_dir: Path) -> Iterator[None]:
    """A lock on the folder itself (no lock file to leave behind; the kernel drops it when the
    process dies): the report at the end of `run` and a manual `report` must not move each
    other's staged files."""
    handle = os.open(experiment_dir, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def write_report(experiment_dir: Path) -> dict[str, Path]:
    """Write the tables and plots of one experiment as one set; print a summary.

    Returns {name relative to the folder: path}. With no complete run, only runs.csv and
    tasks.csv are written (when records exist, to see why runs failed), and a message says so.
    """
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        raise FileNotFoundError(f"experiment folder {experiment_dir} does not exist")
    with _one_report_at_a_time(experiment_dir):
        _recover(experiment_dir)
        records = load_records(experiment_dir)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=experiment_dir))
        try:
            files, message = _build(records, staging, experiment_dir)
            names = [str(path.relative_to(staging)) for path in files]
            write_json_atomic(staging / MANIFEST,
                              {"outputs": sorted({name.split(os.sep)[0] for name in names})})
            _finish_move(staging, experiment_dir)
        except BaseException:
            if not (staging / MANIFEST).is_file():  # complete sets are finished by the next report
                shutil.rmtree(staging, ignore_errors=True)
            raise
    print(message)
    return {Path(name).as_posix(): experiment_dir / name for name in names}


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmark.report <experiment_dir>`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmark.report <experiment_dir>")
    for name, path in write_report(Path(argv[0])).items():
        print(f"wrote {name}: {path}")

