"""Tidy tables from run records: runs, tasks, summary over seeds, AUC per method, and their
printed form.

Each function takes records (one per grid cell, see benchmark.report.writer.load_records) or a table
built here, and returns a DataFrame with exactly the columns benchmark.report.columns defines for it;
docs/results.md explains them.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from benchmark.report.columns import (ACCURACY_METRICS, AUC_COLUMNS, AUC_NAMES, AXIS_KEYS,
                                      BOOL_COLUMNS, COMPARED_METRICS, CURVE_KEYS, EXPERIMENT_KEYS,
                                      FLOAT_COLUMNS, GROUP_KEYS, INT_COLUMNS, KIND_NAMES, KINDS,
                                      POINT_KEYS, RUN_COLUMNS, SUMMARY_COLUMNS, SUMMARY_METRICS,
                                      TASK_COLUMNS, axis_value, configurations, has_variants,
                                      method_sort_key)
from benchmark.records.metrics import accuracy_per_memory, area_under_curve
from benchmark.report.ranks import TEST_NAMES
from benchmark.report.statistics import (ALPHA, POWER, RESOLVE, compare_with_best,
                                         pooled_difference_spread, seeds_needed, t_interval)
from budgets.accounting import MB, POLICIES

# ------------------------------------------------------------------------------ rows

def _mb(num_bytes: float | None) -> float:
    return float("nan") if num_bytes is None else num_bytes / MB


def _task_total_bytes(task: dict, policy: str) -> int | None:
    return ((task.get("memory") or {}).get(policy) or {}).get("total_bytes")


def _cell_columns(record: dict) -> dict:
    """The columns that identify a run's cell of the grid, shared by runs.csv and tasks.csv."""
    cell = record.get("cell") or {}
    return {
        "run_id": record.get("run_id"), "status": record.get("status"),
        "method": cell.get("method"),
        **{axis: axis_value(cell, axis) for axis in AXIS_KEYS},  # old records: raw, fp32
        "dataset": cell.get("dataset"),
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
    audited = {policy: _task_total_bytes(final, policy) for policy in POLICIES}
    row = _cell_columns(record) | {
        "experiment": record.get("experiment"), "budget_bytes": cell.get("budget_bytes"),
        "backbone": cell.get("backbone"), "num_backbones": cell.get("num_backbones"),
        "exemplars": cell.get("exemplars"), "model_params": cell.get("model_params"),
        "planned_total_bytes": cell.get("total_bytes"),
        "planned_total_mb": _mb(cell.get("total_bytes")),
        **{f"{policy}_total_bytes": total for policy, total in audited.items()},
        **{f"{policy}_total_mb": _mb(total) for policy, total in audited.items()},
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
        row |= {f"{policy}_total_bytes": _task_total_bytes(task, policy) for policy in POLICIES}
        rows.append(row)
    return rows


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Nullable integers for counts and bytes, float64 for measurements, whatever JSON gave."""
    table = table.copy()
    for column in table.columns.intersection(INT_COLUMNS):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    for column in table.columns.intersection(FLOAT_COLUMNS):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("float64")
    for column in table.columns.intersection(BOOL_COLUMNS):
        table[column] = table[column].astype("boolean")
    return table


def sorted_table(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sort with methods in columns.method_order() (not A-Z), each method's configurations after
    it (default axis values first) and missing points last."""
    if "method" in by:  # a method's configurations sort under it, whatever the caller listed
        at = by.index("method") + 1
        by = [*by[:at], *(axis for axis in AXIS_KEYS if axis not in by), *by[at:]]
    by = [column for column in by if column in table.columns]
    ordered = table.sort_values(by, key=method_sort_key, na_position="last", kind="stable")
    return ordered.reset_index(drop=True)


# ---------------------------------------------------------------------------- tables

def runs_table(records: Iterable[dict]) -> pd.DataFrame:
    """runs.csv: one row per run and grid cell (columns: columns.RUN_COLUMNS)."""
    table = _typed(pd.DataFrame([_run_row(record) for record in records], columns=RUN_COLUMNS))
    return sorted_table(table, [*EXPERIMENT_KEYS, "method", "point", "seed", "run_id"])


def tasks_table(records: Iterable[dict]) -> pd.DataFrame:
    """tasks.csv: one row per run, grid cell and task (columns: columns.TASK_COLUMNS)."""
    rows = [row for record in records for row in _task_rows(record)]
    table = _typed(pd.DataFrame(rows, columns=TASK_COLUMNS))
    return sorted_table(table, [*EXPERIMENT_KEYS, "method", "point", "seed", "run_id", "task"])


def _complete(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "complete"]


def _summary_row(keys: tuple, group: pd.DataFrame) -> dict:
    row = dict(zip(GROUP_KEYS, keys)) | {"n_seeds": group["seed"].nunique()}
    if len(group) > row["n_seeds"]:
        warnings.warn(f"{len(group)} complete runs but {row['n_seeds']} distinct seeds for "
                      f"{group['configuration'].iloc[0]} at point {row['point']}: duplicates are "
                      f"averaged in",
                      stacklevel=3)
    for metric in SUMMARY_METRICS:
        values = pd.to_numeric(group[metric], errors="coerce")
        row[f"{metric}_mean"] = values.mean()
        row[f"{metric}_std"] = values.std(ddof=1)  # sample std; NaN for a single seed
    for metric in COMPARED_METRICS:
        row[f"{metric}_ci95"] = t_interval(group[metric]).half_width
    return row


def with_configuration(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a `configuration` column (columns.configuration of each row)."""
    return table.assign(configuration=configurations(table))


def per_seed(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Seeds as rows, configurations (a method with its axis values; the method alone at the
    default ones) as columns: `metric` of each run (the pairs the tests compare)."""
    values = with_configuration(runs)[["seed", "configuration"]].assign(
        value=pd.to_numeric(runs[metric], errors="coerce"))
    return values.pivot_table(index="seed", columns="configuration", values="value",
                              aggfunc="mean")


def _comparison_cells(result: pd.DataFrame, method: str, name: str) -> dict:
    """`<name>_p_holm` and `<name>_tied_with_best` of `method` from compare_with_best."""
    if method not in result.index:
        return {f"{name}_p_holm": float("nan"), f"{name}_tied_with_best": pd.NA}
    return {f"{name}_p_holm": result.loc[method, "p_holm"],
            f"{name}_tied_with_best": result.loc[method, "tied_with_best"]}


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: mean, std and 95 % interval over seeds per method and budget point, and
    whether each method is distinguishable from the best one at its point; complete runs only."""
    rows = []
    # dropna=False keeps joint, whose point and budget are missing by design.
    complete = with_configuration(_complete(runs))
    for _, at_point in complete.groupby(POINT_KEYS, dropna=False, sort=False):
        compared = {metric: compare_with_best(per_seed(at_point, metric))
                    for metric in COMPARED_METRICS}
        for keys, group in at_point.groupby(GROUP_KEYS, dropna=False, sort=False):
            row = _summary_row(keys, group)
            for metric, result in compared.items():
                row |= _comparison_cells(result, group["configuration"].iloc[0], metric)
            rows.append(row)
    table = _typed(pd.DataFrame(rows, columns=SUMMARY_COLUMNS))
    return sorted_table(table, [*CURVE_KEYS, "point"])


# ------------------------------------------------------------------------------- AUC

def _per_seed_aucs(runs: pd.DataFrame, metric: str) -> pd.Series:
    """Each seed's own AUC (seed -> area), over the seeds present at every budget point (a seed
    missing a point has no curve over the whole range); empty with fewer than 2 such seeds, or
    fewer than 2 budget points (a single point has no area)."""
    on_axis = runs[runs["budget_mb"].notna()]
    by_seed = on_axis.groupby(["seed", "budget_mb"])[metric].mean().unstack("budget_mb")
    full = by_seed.dropna()
    if len(full) < 2 or len(full.columns) < 2:  # with 2 full seeds every point has at least 2 seeds
        return pd.Series(dtype=float)
    memory = full.columns.to_numpy(dtype=float)
    return pd.Series([area_under_curve(memory, accuracy) for accuracy in full.to_numpy(dtype=float)],
                     index=full.index, dtype=float)


def _auc_row(curve: pd.DataFrame, runs: pd.DataFrame, kind: str) -> dict:
    """One auc.csv row from a method's summary rows (`curve`) and its complete runs."""
    average, last = f"{kind}_average_accuracy", f"{kind}_last_accuracy"
    curve = curve[curve["budget_mb"].notna()].sort_values("budget_mb")
    row = {"kind": kind, "n_points": len(curve), "note": "",
           "n_seeds": int(curve["n_seeds"].min()) if len(curve) else 0}
    row |= dict.fromkeys(["auc_average", "auc_last", "auc_average_std", "auc_last_std",
                          "auc_average_ci95", "auc_last_ci95", "auc_average_p_holm",
                          "auc_last_p_holm", "memory_start_mb", "memory_end_mb", "apm_start",
                          "apm_end"], float("nan"))
    row |= dict.fromkeys(["auc_average_tied_with_best", "auc_last_tied_with_best"], pd.NA)
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
    row |= {"auc_average": area_under_curve(memory, mean_average),
            "auc_last": area_under_curve(memory, mean_last)}
    for name, metric in (("auc_average", average), ("auc_last", last)):
        interval = t_interval(_per_seed_aucs(runs, metric))
        row |= {f"{name}_std": interval.std, f"{name}_ci95": interval.half_width}
    return row


def _compare_aucs(table: pd.DataFrame, aucs: list[dict[str, pd.Series]]) -> pd.DataFrame:
    """Per experiment and kind, each configuration's per-seed AUCs against the best one's: only
    curves over the whole memory range (no note) are compared. `aucs[i]` belongs to row i."""
    labels = configurations(table)
    for _, rows in table.groupby([*EXPERIMENT_KEYS, "kind"], dropna=False, sort=False):
        comparable = [i for i in rows.index if table.loc[i, "note"] == ""]
        for name in AUC_NAMES:
            wide = pd.DataFrame({labels[i]: aucs[i][name] for i in comparable})
            result = compare_with_best(wide)
            for i in comparable:
                for column, value in _comparison_cells(result, labels[i], name).items():
                    table.at[i, column] = value
    return table


def _flag_partial_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Note curves that span fewer points than the best-covered method of the same experiment."""
    most = table.groupby(EXPERIMENT_KEYS, dropna=False)["n_points"].transform("max")
    partial = (table["n_points"] >= 2) & (table["n_points"] < most) & (table["note"] == "")
    table.loc[partial, "note"] = ("covers " + table["n_points"].astype(str) + " of "
                                  + most.astype(str) + " budget points: not comparable")
    return table


def auc_table(runs: pd.DataFrame) -> pd.DataFrame:
    """auc.csv: AUC-A, AUC-L and APM per method and accuracy kind, complete runs only."""
    rows, aucs = [], []
    for keys, method_runs in _complete(runs).groupby(CURVE_KEYS, dropna=False, sort=False):
        curve = summary_table(method_runs)
        for kind in KINDS:
            rows.append(dict(zip(CURVE_KEYS, keys)) | _auc_row(curve, method_runs, kind))
            aucs.append({name: _per_seed_aucs(method_runs, f"{kind}_{name[4:]}_accuracy")
                         for name in AUC_NAMES})
    table = _flag_partial_curves(_typed(pd.DataFrame(rows, columns=AUC_COLUMNS)))
    table = _typed(_compare_aucs(table, aucs))
    return sorted_table(table, [*CURVE_KEYS, "kind"])


# ------------------------------------------------------------------------ printed tables

def mean_std(mean: float, std: float, digits: int = 1) -> str:
    """"61.0 ± 1.4", the mean alone without a std, "-" without a mean."""
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _budget_label(row: pd.Series) -> str:
    if pd.isna(row["budget_mb"]):
        return "no budget"
    label = "" if pd.isna(row["point_label"]) else f" ({row['point_label']})"
    return f"{row['budget_mb']:.1f} MB{label}"


def _accuracy_grid(group: pd.DataFrame) -> pd.DataFrame:
    """Methods as rows; per budget (ascending, "no budget" last) a CNN and an NME column of
    "mean ± std" average incremental accuracy."""
    by_budget = group.sort_values("budget_mb", na_position="last")
    budgets = list(dict.fromkeys(_budget_label(row) for _, row in by_budget.iterrows()))
    columns = pd.MultiIndex.from_product([budgets, [KIND_NAMES[kind] for kind in KINDS]])
    rows = with_configuration(sorted_table(group, ["method", "point"]))
    grid = pd.DataFrame("", index=list(dict.fromkeys(rows["configuration"])), columns=columns)
    for _, row in rows.iterrows():
        for kind in KINDS:
            grid.loc[row["configuration"], (_budget_label(row), KIND_NAMES[kind])] = mean_std(
                row[f"{kind}_average_accuracy_mean"], row[f"{kind}_average_accuracy_std"])
    return grid


BEST, TIED = "*", "="
NO_COMPARISON = "one class order: no comparison possible (a ranking needs at least 2 seeds)"
GROUPS_LEGEND = (f"±: 95 % Student-t interval half-width over seeds; {BEST} best mean; {TIED} not "
                 f"distinguishable from the best (paired t over shared class orders, Holm, 95 %); "
                 f"no mark: significantly different from the best; - fewer than 2 seeds")


def _interval_mark(half_width: float, tied, p_holm: float, digits: int) -> str:
    """"±4.97 =": the interval's half-width and the method's place in the group of the best."""
    text = "-" if pd.isna(half_width) else f"±{half_width:.{digits}f}"
    mark = group_mark(tied, p_holm)
    return f"{text} {mark}" if mark else text


def group_mark(tied, p_holm: float) -> str:
    """BEST for the best (in the group, with no p-value of its own), TIED for the others in the
    group of the best; "" outside it or where no comparison was possible (`tied` empty)."""
    if pd.isna(tied) or not tied:
        return ""
    return BEST if pd.isna(p_holm) else TIED


def _groups_grid(group: pd.DataFrame) -> pd.DataFrame:
    """_accuracy_grid's shape; each cell the interval and the mark of average accuracy."""
    grid = _accuracy_grid(group)
    for _, row in with_configuration(group).iterrows():
        for kind in KINDS:
            metric = f"{kind}_average_accuracy"
            grid.loc[row["configuration"], (_budget_label(row), KIND_NAMES[kind])] = _interval_mark(
                row[f"{metric}_ci95"], row[f"{metric}_tied_with_best"],
                row[f"{metric}_p_holm"], 1)
    return grid


def _groups_block(grid: pd.DataFrame, tied: pd.DataFrame) -> str:
    """The groups grid and its legend, or the line saying that one seed allows no comparison."""
    if tied.isna().all(axis=None):
        return NO_COMPARISON
    return f"{GROUPS_LEGEND}\n{grid.to_string()}"


def format_summary(summary: pd.DataFrame) -> str:
    """Per experiment, method x budget: CNN and NME average incremental accuracy, mean ± std;
    then the 95 % intervals and the methods tied with the best at each point."""
    blocks = []
    tied = [f"{kind}_average_accuracy_tied_with_best" for kind in KINDS]
    for (dataset, scenario, policy), group in summary.groupby(EXPERIMENT_KEYS, dropna=False):
        best = "\n".join(best_lines(group)) if has_variants(group) else ""
        blocks.append(f"{dataset} {scenario} ({policy} policy): average incremental accuracy "
                      f"(%), CNN and NME, mean ± std over seeds\n"
                      f"{_accuracy_grid(group).to_string()}\n"
                      f"{_groups_block(_groups_grid(group), group[tied])}"
                      + (f"\n{best}" if best else ""))
    return "\n\n".join(blocks)


def best_configurations(summary: pd.DataFrame, kind: str = "cnn") -> pd.DataFrame:
    """Per experiment and budget point (budgeted ones, ascending): the configuration with the
    highest mean average accuracy of `kind` (the first in the report's order on a tie), its mean,
    and the other configurations in the group of the best there (`tied`, comma-separated; empty
    where none or no comparison was possible)."""
    metric = f"{kind}_average_accuracy"
    rows = []
    budgeted = with_configuration(sorted_table(summary[summary["budget_mb"].notna()],
                                               [*EXPERIMENT_KEYS, "point", "method"]))
    for _, at_point in budgeted.groupby([*EXPERIMENT_KEYS, "point"], sort=False):
        means = at_point[f"{metric}_mean"].astype(float)
        if not means.notna().any():
            continue
        best = at_point.loc[means.idxmax()]
        tied = at_point[at_point[f"{metric}_tied_with_best"].astype("boolean").fillna(False)
                        .astype(bool) & (at_point.index != best.name)]
        rows.append({**{key: best[key] for key in EXPERIMENT_KEYS}, "point": best["point"],
                     "point_label": best["point_label"], "budget_mb": best["budget_mb"],
                     "configuration": best["configuration"], "mean": float(means[best.name]),
                     "tied": ", ".join(tied["configuration"])})
    return pd.DataFrame(rows, columns=[*EXPERIMENT_KEYS, "point", "point_label", "budget_mb",
                                       "configuration", "mean", "tied"])


def best_lines(summary: pd.DataFrame) -> list[str]:
    """"best at 1.41 MB: icarl jpeg:50 (CNN avg 21.3)", one line per budget point of one
    experiment, then the configurations that cannot be told apart from it, if any."""
    lines = []
    for _, row in best_configurations(summary).iterrows():
        tied = f"; not told apart from it: {row['tied']}" if row["tied"] else ""
        lines.append(f"best at {row['budget_mb']:.2f} MB: {row['configuration']} "
                     f"(CNN avg {row['mean']:.1f}){tied}")
    return lines


def _auc_grid(group: pd.DataFrame) -> pd.DataFrame:
    """Methods as rows; AUC-A and AUC-L of CNN and of NME side by side, then the notes."""
    pairs = [(KIND_NAMES[kind], name) for kind in KINDS for name in ("AUC-A", "AUC-L")]
    columns = pd.MultiIndex.from_tuples([*pairs, ("", "note")])
    group = with_configuration(group)
    grid = pd.DataFrame("", index=list(dict.fromkeys(group["configuration"])), columns=columns)
    notes: dict[str, dict[str, str]] = {}
    for _, row in group.iterrows():
        kind, method = KIND_NAMES[row["kind"]], row["configuration"]
        grid.loc[method, (kind, "AUC-A")] = mean_std(row["auc_average"], row["auc_average_std"], 3)
        grid.loc[method, (kind, "AUC-L")] = mean_std(row["auc_last"], row["auc_last_std"], 3)
        if row["note"]:
            notes.setdefault(method, {})[kind] = row["note"]
    for method, by_kind in notes.items():
        # the same note for both kinds (e.g. joint has no budget) is said once
        same = len(by_kind) == len(KINDS) and len(set(by_kind.values())) == 1
        grid.loc[method, ("", "note")] = next(iter(by_kind.values())) if same else "; ".join(
            f"{kind}: {note}" for kind, note in by_kind.items())
    return grid


def _auc_groups_grid(group: pd.DataFrame) -> pd.DataFrame:
    """_auc_grid's shape without notes; each cell the interval and the mark of the AUC."""
    grid = _auc_grid(group).drop(columns=[("", "note")])
    for _, row in with_configuration(group).iterrows():
        for name, label in zip(AUC_NAMES, ("AUC-A", "AUC-L")):
            grid.loc[row["configuration"], (KIND_NAMES[row["kind"]], label)] = _interval_mark(
                row[f"{name}_ci95"], row[f"{name}_tied_with_best"], row[f"{name}_p_holm"], 3)
    return grid


def format_auc(auc: pd.DataFrame) -> str:
    """Per experiment, one row per method: CNN and NME AUC-A and AUC-L (mean curve ± std); then
    their 95 % intervals and the methods tied with the best (curves over the whole range only)."""
    blocks = []
    tied = [f"{name}_tied_with_best" for name in AUC_NAMES]
    for (dataset, scenario, policy), group in auc.groupby(EXPERIMENT_KEYS, dropna=False):
        blocks.append(f"{dataset} {scenario} ({policy} policy): AUC (accuracy fraction x MB) of "
                      f"the mean curve ± std over seeds\n{_auc_grid(group).to_string()}\n"
                      f"{_groups_block(_auc_groups_grid(group), group[tied])}")
    return "\n\n".join(blocks)


def _metric_name(metric: str) -> str:
    """"cnn_average_accuracy" -> "CNN average accuracy"."""
    kind, name = metric.split("_", 1)
    return f"{KIND_NAMES.get(kind, kind)} {name.replace('_', ' ')}"


def _ranking_lines(rows: pd.DataFrame) -> list[str]:
    """One metric's rows of ranks.csv (best first) as the printed ranks block."""
    first = rows.iloc[0]
    test = TEST_NAMES.get(first["test"], first["test"])
    cd = first["critical_difference"]
    cd = "" if pd.isna(cd) else f", CD = {cd:.2f}"  # Nemenyi only
    rows = with_configuration(rows)  # ranked are configurations; the method alone at the defaults
    ranks = ", ".join(f"{row['configuration']} {row['mean_rank']:.2f}"
                      for _, row in rows.iterrows())
    best = rows.loc[rows["rank_group_of_best"].astype(bool), "configuration"]
    lines = [f"Ranks across the curve ({_metric_name(first['metric'])}, {test}, p = "
             f"{first['p_value']:.3g}{cd}, {first['blocks']} blocks): {ranks}; cannot be told "
             f"apart from the best: {', '.join(best)}"]
    lines += [f"  {label}: {first[column]}" for label, column in (
        ("left out", "methods_left_out"), ("note", "note")) if first[column]]
    return lines


def format_ranks(ranks: pd.DataFrame, reasons: dict[str, str]) -> str:
    """The mean ranks of ranks.csv per metric (1 = best in every block), the test and the group
    of the best; for a metric without ranks, why (`reasons`, said once when it is the same)."""
    ranks = ranks.fillna({"methods_left_out": "", "note": ""})
    lines = [line for _, rows in ranks.groupby("metric", sort=False)
             for line in _ranking_lines(rows)]
    if len(set(reasons.values())) == 1 and len(ranks) == 0:
        lines.append(f"Ranks across the curve: none: {next(iter(reasons.values()))}")
    else:
        lines += [f"Ranks across the curve ({_metric_name(metric)}): none: {reason}"
                  for metric, reason in reasons.items()]
    return "\n".join(lines)


def format_seeds_needed(runs: pd.DataFrame, difference: float = RESOLVE) -> str:
    """Per experiment and kind: how many seeds (class orders) a paired t-test needs to resolve
    `difference` points of average accuracy, from the measured spread of the paired differences
    between methods (pooled over all pairs and budget points). Empty without any pair of methods
    sharing 2 seeds."""
    lines = []
    for (dataset, scenario, policy), experiment in _complete(runs).groupby(EXPERIMENT_KEYS,
                                                                           dropna=False):
        on_axis = experiment[experiment["point"].notna()]
        parts = []
        for kind in KINDS:
            tables = [per_seed(at_point, f"{kind}_average_accuracy")
                      for _, at_point in on_axis.groupby("point")]
            spread, pairs = pooled_difference_spread(tables)
            if pairs:
                parts.append(f"{KIND_NAMES[kind]} {seeds_needed(spread, difference)} (spread of "
                             f"paired differences {spread:.2f} points, pooled over {pairs} pairs)")
        if parts:
            lines.append(f"  {dataset} {scenario} ({policy} policy): {'; '.join(parts)}")
    if not lines:
        return ""
    head = (f"Seeds (class orders) needed to resolve a {difference:g}-point difference in average "
            f"accuracy (paired t, two-sided alpha {ALPHA:g}, power {POWER:g}):")
    return "\n".join([head, *lines])
