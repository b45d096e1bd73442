"""Collect the run records of one experiment into tidy tables, plots and a printed summary.

Input: every `<experiment_dir>/runs/<run_id>/record.json` written by the training engine (only
"complete" and "failed" runs leave one). Output, written into `<experiment_dir>/`:

Conventions: accuracies are in percent (0-100) and are top-1 on the test images of all classes seen
so far; "cnn_" is the classifier's argmax, "nme_" the nearest class mean (PROTOCOL 4: the paper does
not say which it reports, so both are kept). MB means 2^20 bytes. Floats are written unrounded.
Empty cells are missing values (e.g. the budget of joint, the summary of a failed run).

runs.csv -- one row per run (complete and failed):
    run_id                  hash of the resolved config (the run folder's name)
    status                  "complete" or "failed"
    experiment              experiment name
    method                  finetune, replay, icarl, wa, der, memo, joint, ...
    dataset, scenario       e.g. cifar100, B0Inc10
    point                   budget point index along the memory curve (0 = start); empty for joint
    point_label             backbone X that defines the point (or e.g. "12.0MB" for MB budgets)
    budget_mb, budget_bytes memory budget of the point; empty for joint (not on the memory axis)
    seed                    seed of the run (class order and network)
    backbone                backbone the method used at this point
    num_backbones           backbones kept for inference after the last task (T for DER/MEMO)
    exemplars               planned exemplar budget (images)
    model_params            planned parameters counted as model memory
    policy                  memory accounting policy of the plan ("paper" or "strict")
    planned_total_bytes, planned_total_mb   planned model + exemplar memory
    paper_total_bytes, paper_total_mb       audited memory after the last recorded task (paper
                                            policy)
    strict_total_bytes, strict_total_mb     the same under the strict policy (everything kept)
    tasks_completed         number of tasks with results (partial for failed runs)
    cnn_average_accuracy, nme_average_accuracy   mean of A_1..A_B (%), higher is better
    cnn_last_accuracy, nme_last_accuracy         A_B (%), higher is better
    cnn_forgetting, nme_forgetting               mean drop from best to final accuracy on old tasks
                                                 (percentage points), lower is better
    wall_seconds            wall time of the whole run
    git_sha, git_dirty      code version and whether the tree had uncommitted changes
    torch, device, python, hostname   where and with what it ran
    error_type, error_message         exception of a failed run; empty when none

tasks.csv -- one row per run and task:
    run_id, status, method, dataset, scenario, policy, point, point_label, budget_mb, seed
                            as in runs.csv
    task                    task index (0 = first task)
    classes_seen            classes seen after this task
    cnn_accuracy, nme_accuracy   accuracy (%) on all classes seen after this task (A_b)
    exemplars_stored        exemplars held after this task
    paper_total_bytes, strict_total_bytes   audited memory after this task under each policy
    train_seconds, eval_seconds             time spent training and evaluating this task

summary.csv -- complete runs only; one row per dataset, scenario, policy, method and budget point:
    dataset, scenario, policy, method, point, point_label, budget_mb   the group (as in runs.csv)
    n_seeds                 distinct seeds in the group
    <metric>_mean, <metric>_std   mean and sample std (ddof=1, empty for one seed) over seeds of
                            every metric: cnn/nme_average_accuracy, cnn/nme_last_accuracy,
                            cnn/nme_forgetting, paper_total_mb, strict_total_mb, wall_seconds

auc.csv -- one row per dataset, scenario, policy, method and accuracy kind:
    dataset, scenario, policy, method
    kind                    "cnn" or "nme"
    auc_average, auc_last   AUC-A / AUC-L: area under the mean-over-seeds curve of average / last
                            accuracy (fraction 0-1) against budget_mb, trapezoid over the actual
                            points, not normalized (PROTOCOL 4); higher is better
    auc_average_std, auc_last_std   sample std of the per-seed AUCs; only when every point has
                            at least 2 seeds, computed over the seeds present at every point
    n_points                budget points on the curve
    n_seeds                 fewest seeds at any point
    memory_start_mb, memory_end_mb  budget of the first and last point
    apm_start, apm_end      accuracy per memory: mean average accuracy (%) / budget MB at the
                            first and last point; higher is better
    note                    why a value is missing or not comparable; empty otherwise

Run `python -m benchmark.report <experiment_dir>` to write all of it.
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.metrics import MB, accuracy_per_memory, area_under_curve

KINDS = ("cnn", "nme")
METHOD_ORDER = ("finetune", "replay", "icarl", "wa", "der", "memo", "joint")
ACCURACY_METRICS = [f"{kind}_{name}" for kind in KINDS
                    for name in ("average_accuracy", "last_accuracy", "forgetting")]
SUMMARY_METRICS = ACCURACY_METRICS + ["paper_total_mb", "strict_total_mb", "wall_seconds"]
# budget_mb and point_label are keys too: seeds that disagree on them would be a planning bug, and
# a split row shows it instead of averaging it away.
GROUP_KEYS = ["dataset", "scenario", "policy", "method", "point", "point_label", "budget_mb"]
CURVE_KEYS = ["dataset", "scenario", "policy", "method"]

RUN_COLUMNS = [
    "run_id", "status", "experiment", "method", "dataset", "scenario", "point", "point_label",
    "budget_mb", "budget_bytes", "seed", "backbone", "num_backbones", "exemplars", "model_params",
    "policy", "planned_total_bytes", "planned_total_mb", "paper_total_bytes", "paper_total_mb",
    "strict_total_bytes", "strict_total_mb", "tasks_completed", *ACCURACY_METRICS, "wall_seconds",
    "git_sha", "git_dirty", "torch", "device", "python", "hostname", "error_type", "error_message",
]
TASK_COLUMNS = [
    "run_id", "status", "method", "dataset", "scenario", "policy", "point", "point_label",
    "budget_mb", "seed", "task", "classes_seen", "cnn_accuracy", "nme_accuracy",
    "exemplars_stored", "paper_total_bytes", "strict_total_bytes", "train_seconds", "eval_seconds",
]
AUC_COLUMNS = [
    *CURVE_KEYS, "kind", "auc_average", "auc_last", "auc_average_std", "auc_last_std", "n_points",
    "n_seeds", "memory_start_mb", "memory_end_mb", "apm_start", "apm_end", "note",
]
# Counts and byte sizes stay integers in the CSV ("1", not "1.0"), with empty cells for missing.
INT_COLUMNS = ["point", "budget_bytes", "seed", "num_backbones", "exemplars", "model_params",
               "planned_total_bytes", "paper_total_bytes", "strict_total_bytes", "tasks_completed",
               "task", "classes_seen", "exemplars_stored", "n_seeds", "n_points"]
FLOAT_COLUMNS = ["budget_mb", "planned_total_mb", "paper_total_mb", "strict_total_mb",
                 *ACCURACY_METRICS, "wall_seconds", "cnn_accuracy", "nme_accuracy",
                 "train_seconds", "eval_seconds"]


# ---------------------------------------------------------------------------------------- loading

def load_records(experiment_dir: Path) -> list[dict]:
    """Every `runs/*/record.json` under `experiment_dir`, sorted by path.

    A file that is not valid JSON or lacks the keys every record has is skipped with a warning
    that names it: one broken run must not hide the others.
    """
    records = []
    for path in sorted(Path(experiment_dir).glob("runs/*/record.json")):
        record = _read_record(path)
        if record is not None:
            records.extend(_per_cell(record))
    return records


def _per_cell(record: dict) -> list[dict]:
    """One record per grid cell: a run that serves several cells (Finetune trains the same way at
    every budget point) lists them under "cells" and is reported at each of them."""
    cells = record.get("cells") or [record["cell"]]
    return [{**record, "cell": cell} for cell in cells]


def _read_record(path: Path) -> dict | None:
    """The parsed record, or None (with a warning) when it is malformed."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        warnings.warn(f"skipping malformed run record {path}: {error}", stacklevel=3)
        return None
    missing = [key for key in ("run_id", "status", "cell") if not isinstance(record, dict)
               or key not in record]
    if missing:
        warnings.warn(f"skipping malformed run record {path}: missing {missing}", stacklevel=3)
        return None
    return record


# ----------------------------------------------------------------------------------------- tables

def _mb(num_bytes: float | None) -> float:
    return float("nan") if num_bytes is None else num_bytes / MB


def _task_total_bytes(task: dict, policy: str) -> int | None:
    return ((task.get("memory") or {}).get(policy) or {}).get("total_bytes")


def _cell_columns(record: dict) -> dict:
    """The columns that identify a run's cell of the grid, shared by runs.csv and tasks.csv."""
    cell = record.get("cell") or {}
    return {
        "run_id": record.get("run_id"), "status": record.get("status"),
        "method": cell.get("method"), "dataset": cell.get("dataset"),
        "scenario": cell.get("scenario"), "policy": cell.get("policy"),
        "point": cell.get("point"), "point_label": cell.get("point_label"),
        "budget_mb": cell.get("budget_mb"), "seed": cell.get("seed"),
    }


def _run_row(record: dict) -> dict:
    cell, origin = record.get("cell") or {}, record.get("origin") or {}
    summary, error = record.get("summary") or {}, record.get("error") or {}
    tasks = record.get("tasks") or []
    # The audit after the last recorded task is the memory the run actually ended with.
    final = tasks[-1] if tasks else {}
    paper, strict = _task_total_bytes(final, "paper"), _task_total_bytes(final, "strict")
    row = _cell_columns(record) | {
        "experiment": record.get("experiment"), "budget_bytes": cell.get("budget_bytes"),
        "backbone": cell.get("backbone"), "num_backbones": cell.get("num_backbones"),
        "exemplars": cell.get("exemplars"), "model_params": cell.get("model_params"),
        "planned_total_bytes": cell.get("total_bytes"),
        "planned_total_mb": _mb(cell.get("total_bytes")),
        "paper_total_bytes": paper, "paper_total_mb": _mb(paper),
        "strict_total_bytes": strict, "strict_total_mb": _mb(strict),
        "tasks_completed": len(tasks), "wall_seconds": summary.get("wall_seconds"),
        "error_type": error.get("type") or "", "error_message": error.get("message") or "",
    }
    row |= {metric: summary.get(metric) for metric in ACCURACY_METRICS}
    row |= {key: origin.get(key) for key in ("git_sha", "git_dirty", "torch", "device", "python",
                                             "hostname")}
    return row


def _task_rows(record: dict) -> list[dict]:
    rows = []
    for task in record.get("tasks") or []:
        row = _cell_columns(record) | {
            key: task.get(key) for key in ("task", "classes_seen", "cnn_accuracy", "nme_accuracy",
                                           "exemplars_stored", "train_seconds", "eval_seconds")}
        row["paper_total_bytes"] = _task_total_bytes(task, "paper")
        row["strict_total_bytes"] = _task_total_bytes(task, "strict")
        rows.append(row)
    return rows


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Nullable integers for counts and bytes, float64 for measurements, whatever JSON gave."""
    table = table.copy()
    for column in table.columns.intersection(INT_COLUMNS):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    for column in table.columns.intersection(FLOAT_COLUMNS):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("float64")
    return table


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: the paper's method order first, unknown methods after it alphabetically."""
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return order, str(method)


def method_sort_key(column: pd.Series) -> pd.Series:
    """`sort_values(key=...)` for a method column: METHOD_ORDER, then unknown names A-Z."""
    if column.name != "method":
        return column
    return column.map(lambda name: "%02d %s" % method_rank(name))


def _sorted(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sort with methods in METHOD_ORDER (not alphabetical) and missing points last."""
    by = [column for column in by if column in table.columns]
    ordered = table.sort_values(by, key=method_sort_key, na_position="last", kind="stable")
    return ordered.reset_index(drop=True)


def runs_table(records: Iterable[dict]) -> pd.DataFrame:
    """runs.csv: one row per run (see the module docstring for the columns)."""
    table = _typed(pd.DataFrame([_run_row(record) for record in records], columns=RUN_COLUMNS))
    return _sorted(table, ["dataset", "scenario", "policy", "method", "point", "seed", "run_id"])


def tasks_table(records: Iterable[dict]) -> pd.DataFrame:
    """tasks.csv: one row per run and task (see the module docstring for the columns)."""
    rows = [row for record in records for row in _task_rows(record)]
    table = _typed(pd.DataFrame(rows, columns=TASK_COLUMNS))
    return _sorted(table, ["dataset", "scenario", "policy", "method", "point", "seed", "run_id",
                           "task"])


def _complete(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "complete"]


def _summary_row(keys: tuple, group: pd.DataFrame) -> dict:
    row = dict(zip(GROUP_KEYS, keys)) | {"n_seeds": group["seed"].nunique()}
    if len(group) > row["n_seeds"]:
        warnings.warn(f"{len(group)} complete runs but {row['n_seeds']} distinct seeds for "
                      f"{row['method']} at point {row['point']}: duplicates are averaged in",
                      stacklevel=3)
    for metric in SUMMARY_METRICS:
        values = pd.to_numeric(group[metric], errors="coerce")
        row[f"{metric}_mean"] = values.mean()
        row[f"{metric}_std"] = values.std(ddof=1)  # sample std; NaN for a single seed
    return row


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: mean and std over seeds per method and budget point, complete runs only."""
    columns = GROUP_KEYS + ["n_seeds"] + [f"{metric}_{stat}" for metric in SUMMARY_METRICS
                                          for stat in ("mean", "std")]
    # dropna=False keeps joint, whose point and budget are missing by design.
    groups = _complete(runs).groupby(GROUP_KEYS, dropna=False, sort=False)
    rows = [_summary_row(keys, group) for keys, group in groups]
    table = _typed(pd.DataFrame(rows, columns=columns))
    return _sorted(table, ["dataset", "scenario", "policy", "method", "point"])


# -------------------------------------------------------------------------------------------- AUC

def _per_seed_auc_std(runs: pd.DataFrame, metric: str) -> float:
    """Std over seeds of each seed's own AUC; NaN unless every point has at least two seeds."""
    on_axis = runs[runs["budget_mb"].notna()]
    by_seed = on_axis.groupby(["seed", "budget_mb"])[metric].mean().unstack("budget_mb")
    if by_seed.empty or by_seed.notna().sum(axis=0).min() < 2:
        return float("nan")
    full = by_seed.dropna()  # a seed missing a point has no curve over the whole range
    if len(full) < 2:
        return float("nan")
    memory = full.columns.to_numpy(dtype=float)
    aucs = [area_under_curve(memory, accuracy) for accuracy in full.to_numpy(dtype=float)]
    return float(np.std(aucs, ddof=1))


def _auc_row(curve: pd.DataFrame, runs: pd.DataFrame, kind: str) -> dict:
    """One auc.csv row from a method's summary rows (`curve`) and its complete runs."""
    average, last = f"{kind}_average_accuracy", f"{kind}_last_accuracy"
    curve = curve[curve["budget_mb"].notna()].sort_values("budget_mb")
    row = {"kind": kind, "n_points": len(curve), "note": "",
           "n_seeds": int(curve["n_seeds"].min()) if len(curve) else 0}
    row |= dict.fromkeys(["auc_average", "auc_last", "auc_average_std", "auc_last_std",
                          "memory_start_mb", "memory_end_mb", "apm_start", "apm_end"], float("nan"))
    if len(curve) == 0:
        return row | {"note": "no memory budget (not on the memory axis)"}
    memory = curve["budget_mb"].to_numpy(dtype=float)
    mean_average = curve[f"{average}_mean"].to_numpy(dtype=float)
    mean_last = curve[f"{last}_mean"].to_numpy(dtype=float)
    row |= {"memory_start_mb": memory[0], "memory_end_mb": memory[-1],
            "apm_start": accuracy_per_memory(mean_average[0], memory[0]),
            "apm_end": accuracy_per_memory(mean_average[-1], memory[-1])}
    if len(curve) < 2:
        return row | {"note": "only one budget point: no area"}
    if not (np.isfinite(mean_average).all() and np.isfinite(mean_last).all()):
        return row | {"note": f"{kind} accuracy missing at some budget point"}
    return row | {
        "auc_average": area_under_curve(memory, mean_average),
        "auc_last": area_under_curve(memory, mean_last),
        "auc_average_std": _per_seed_auc_std(runs, average),
        "auc_last_std": _per_seed_auc_std(runs, last),
    }


def _flag_partial_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Note curves that span fewer points than the best-covered method of the same experiment."""
    most = table.groupby(CURVE_KEYS[:3], dropna=False)["n_points"].transform("max")
    partial = (table["n_points"] >= 2) & (table["n_points"] < most) & (table["note"] == "")
    table.loc[partial, "note"] = ("covers " + table["n_points"].astype(str) + " of "
                                  + most.astype(str) + " budget points: not comparable")
    return table


def auc_table(runs: pd.DataFrame) -> pd.DataFrame:
    """auc.csv: AUC-A, AUC-L and APM per method and accuracy kind, complete runs only."""
    rows = []
    for keys, method_runs in _complete(runs).groupby(CURVE_KEYS, dropna=False, sort=False):
        curve = summary_table(method_runs)
        for kind in KINDS:
            rows.append(dict(zip(CURVE_KEYS, keys)) | _auc_row(curve, method_runs, kind))
    table = _typed(pd.DataFrame(rows, columns=AUC_COLUMNS))
    return _sorted(_flag_partial_curves(table), CURVE_KEYS + ["kind"])


# ---------------------------------------------------------------------------------------- writing

def _mean_std(mean: float, std: float, digits: int = 1) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _budget_label(row: pd.Series) -> str:
    if pd.isna(row["budget_mb"]):
        return "no budget"
    label = "" if pd.isna(row["point_label"]) else f" ({row['point_label']})"
    return f"{row['budget_mb']:.1f} MB{label}"


def _accuracy_grid(group: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Methods as rows, budgets (ascending, "no budget" last) as columns, "mean ± std" cells."""
    by_budget = group.sort_values("budget_mb", na_position="last")
    columns = list(dict.fromkeys(_budget_label(row) for _, row in by_budget.iterrows()))
    cells: dict[str, dict[str, str]] = {}
    for _, row in _sorted(group, ["method", "point"]).iterrows():
        cells.setdefault(row["method"], {})[_budget_label(row)] = _mean_std(
            row[f"{kind}_average_accuracy_mean"], row[f"{kind}_average_accuracy_std"])
    return pd.DataFrame.from_dict(cells, orient="index", columns=columns).fillna("")


def format_summary(summary: pd.DataFrame, kind: str = "cnn") -> str:
    """Method x budget table of mean ± std (over seeds) of the average incremental accuracy."""
    blocks = []
    for (dataset, scenario, policy), group in summary.groupby(CURVE_KEYS[:3], dropna=False):
        blocks.append(f"{dataset} {scenario} ({policy} policy): {kind.upper()} average "
                      f"incremental accuracy (%), mean ± std over seeds\n"
                      f"{_accuracy_grid(group, kind).to_string()}")
    return "\n\n".join(blocks)


def format_auc(auc: pd.DataFrame, kind: str = "cnn") -> str:
    """One line per method: AUC-A and AUC-L (of the mean curve ± std over seeds)."""
    lines = [f"{kind.upper()} AUC (accuracy fraction x MB)"]
    for _, row in auc[auc["kind"] == kind].iterrows():
        average = _mean_std(row["auc_average"], row["auc_average_std"], 3)
        last = _mean_std(row["auc_last"], row["auc_last_std"], 3)
        lines.append(f"  {row['method']:<10} AUC-A {average:<16} AUC-L {last:<16} {row['note']}")
    return "\n".join(lines)


def _write_csv(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


def _has_values(table: pd.DataFrame, column: str) -> bool:
    return column in table.columns and bool(table[column].notna().any())


def _write_plots(plot_dir: Path, summary: pd.DataFrame, tasks: pd.DataFrame,
                 auc: pd.DataFrame) -> dict[str, Path]:
    """All figures, one folder per dataset/scenario/policy when the experiment mixes several."""
    from benchmark import plots  # imported here: plots builds on this module's tables

    groups = list(summary.groupby(CURVE_KEYS[:3], dropna=False))
    paths: dict[str, Path] = {}
    for (dataset, scenario, policy), group in groups:
        out_dir = plot_dir if len(groups) == 1 else plot_dir / f"{dataset}_{scenario}_{policy}"
        title = f"{dataset} {scenario} ({policy} memory policy)"
        mask = ((tasks["dataset"] == dataset) & (tasks["scenario"] == scenario)
                & (tasks["policy"] == policy))
        auc_mask = ((auc["dataset"] == dataset) & (auc["scenario"] == scenario)
                    & (auc["policy"] == policy))
        files = []
        for kind in KINDS:
            if _has_values(group, f"{kind}_average_accuracy_mean"):
                files += plots.plot_accuracy_vs_memory(group, out_dir, title, kind=kind)
                files += plots.plot_accuracy_per_task(tasks[mask], out_dir, title, kind=kind)
        if _has_values(auc[auc_mask], "auc_average"):
            files += plots.plot_auc_bars(auc[auc_mask], out_dir, title)
        paths |= {str(path.relative_to(plot_dir.parent)): path for path in files}
    return paths


def write_report(experiment_dir: Path) -> dict[str, Path]:
    """Write runs/tasks/summary/auc CSVs and the plots of one experiment; print a summary.

    With no complete run there is nothing to summarise: runs.csv and tasks.csv are still written
    when failed records exist (to see why), a message says so, and only those paths are returned.
    """
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        raise FileNotFoundError(f"experiment folder {experiment_dir} does not exist")
    records = load_records(experiment_dir)
    runs, tasks = runs_table(records), tasks_table(records)
    paths: dict[str, Path] = {}
    if records:
        paths["runs.csv"] = _write_csv(runs, experiment_dir / "runs.csv")
        paths["tasks.csv"] = _write_csv(tasks, experiment_dir / "tasks.csv")
    n_complete = int((runs["status"] == "complete").sum())
    if n_complete == 0:
        print(f"No complete runs under {experiment_dir / 'runs'} ({len(records)} record(s), "
              f"{len(records) - n_complete} failed or other): no summary, AUC or plots written.")
        return paths
    summary, auc = summary_table(runs), auc_table(runs)
    paths["summary.csv"] = _write_csv(summary, experiment_dir / "summary.csv")
    paths["auc.csv"] = _write_csv(auc, experiment_dir / "auc.csv")
    paths |= _write_plots(experiment_dir / "plots", summary, tasks, auc)
    n_failed = int((runs["status"] == "failed").sum())
    print(f"{experiment_dir.name}: {n_complete} complete, {n_failed} failed run(s)\n")
    print(format_summary(summary) + "\n\n" + format_auc(auc))
    return paths


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmark.report <experiment_dir>`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmark.report <experiment_dir>")
    for name, path in write_report(Path(argv[0])).items():
        print(f"wrote {name}: {path}")


if __name__ == "__main__":
    main()
