"""The cost of storing frozen blocks at a lower precision, apart from what the smaller bill buys:
storage_cost.csv and its printed table.

A run of a method that freezes blocks, trained with fp32 storage in an experiment that lists other
precisions, records after each task a `storage_probe`: its accuracy with the frozen blocks
converted to each other dtype, evaluation only. Set beside the fp32 run's own accuracy, that is the
cost of the precision alone; set beside the run actually trained with that storage (at the same
budget point, so with the extra exemplars the smaller model leaves room for), it separates that
cost from the gain. All three are taken over the same tasks: those the probe covers (tasks with
frozen blocks). docs/results.md explains the columns.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from benchmark.report.columns import (EXPERIMENT_KEYS, KIND_NAMES, KINDS, STORAGE_COST_COLUMNS,
                                      axis_rank, axis_value, configuration, method_sort_key)

STORAGE_COST = "storage_cost.csv"
# The run a probe row is compared with: the same cell but for its stored precision.
_CELL_KEYS = [*EXPERIMENT_KEYS, "method", "exemplar_format", "point", "seed"]


def has_probes(records: Iterable[dict]) -> bool:
    """Whether any record holds a storage probe (storage_cost.csv is written only then)."""
    return any(task.get("storage_probe") for record in records
               for task in record.get("tasks") or [])


def _cell(record: dict) -> dict:
    cell = record.get("cell") or {}
    return {key: cell.get(key) for key in [*EXPERIMENT_KEYS, "method", "point", "point_label",
                                           "budget_mb", "seed"]} | {
        "exemplar_format": axis_value(cell, "exemplar_format"),
        "model_storage": axis_value(cell, "model_storage")}


def _accuracy(tasks: list[dict], indices: list[int], kind: str, probe: str | None = None) -> float:
    """Mean `kind` accuracy over the tasks numbered `indices` (NaN where one is missing), of the
    run itself or, with `probe`, of its frozen blocks converted to that dtype."""
    by_index = {task.get("task"): task for task in tasks}
    values = []
    for index in indices:
        task = by_index.get(index) or {}
        source = ((task.get("storage_probe") or {}).get(probe) or {}) if probe else task
        value = source.get(f"{kind}_accuracy")
        values.append(np.nan if value is None else float(value))
    return float(np.mean(values)) if values else np.nan


def _probe_rows(records: list[dict]) -> list[dict]:
    """One row per probed record (a cell and seed) and dtype: its accuracies over the probed tasks,
    and those of the run trained with that storage over the same tasks (NaN without one)."""
    complete = [record for record in records if record.get("status") == "complete"]
    trained = {tuple(_cell(record)[key] for key in [*_CELL_KEYS, "model_storage"]): record
               for record in complete}
    rows = []
    for record in complete:
        cell, tasks = _cell(record), record.get("tasks") or []
        dtypes = list(dict.fromkeys(dtype for task in tasks
                                    for dtype in (task.get("storage_probe") or {})))
        for dtype in dtypes:
            probed = [task["task"] for task in tasks if dtype in (task.get("storage_probe") or {})]
            other = trained.get(tuple(cell[key] for key in _CELL_KEYS) + (dtype,))
            row = cell | {"probe_storage": dtype, "tasks_probed": len(probed),
                          "has_trained": other is not None}
            for kind in KINDS:
                row[f"{kind}_fp32"] = _accuracy(tasks, probed, kind)
                row[f"{kind}_converted"] = _accuracy(tasks, probed, kind, probe=dtype)
                row[f"{kind}_trained"] = (_accuracy(other.get("tasks") or [], probed, kind)
                                          if other is not None else np.nan)
            rows.append(row)
    return rows


def storage_cost_table(records: Iterable[dict]) -> pd.DataFrame:
    """storage_cost.csv (columns: columns.STORAGE_COST_COLUMNS): per experiment, method, exemplar
    format, budget point and probed dtype, means over seeds of the fp32 run's accuracy, of the
    same run with its frozen blocks converted, their difference (`conversion_cost`, points,
    negative: accuracy lost), of the run trained with that storage and its difference from the fp32
    run (`trained_gain`, over the seeds that have both)."""
    probes = pd.DataFrame(_probe_rows(list(records)))
    if probes.empty:
        return pd.DataFrame(columns=STORAGE_COST_COLUMNS)
    keys = [*EXPERIMENT_KEYS, "method", "exemplar_format", "point", "point_label", "budget_mb",
            "probe_storage"]
    rows = []
    for values, group in probes.groupby(keys, dropna=False, sort=False):
        with_trained = group[group["has_trained"]]
        row = dict(zip(keys, values)) | {
            "tasks_probed": int(group["tasks_probed"].max()), "n_seeds": group["seed"].nunique(),
            "n_trained_seeds": with_trained["seed"].nunique()}
        for kind in KINDS:
            fp32, converted = group[f"{kind}_fp32"], group[f"{kind}_converted"]
            row |= {f"{kind}_fp32": fp32.mean(), f"{kind}_converted": converted.mean(),
                    f"{kind}_conversion_cost": (converted - fp32).mean(),
                    f"{kind}_trained": with_trained[f"{kind}_trained"].mean(),
                    f"{kind}_trained_gain": (with_trained[f"{kind}_trained"]
                                             - with_trained[f"{kind}_fp32"]).mean()}
        rows.append(row)
    table = pd.DataFrame(rows, columns=STORAGE_COST_COLUMNS)
    table = table.astype({"tasks_probed": "Int64", "n_seeds": "Int64", "n_trained_seeds": "Int64"})
    order = table.assign(_dtype=table["probe_storage"].map(
        lambda dtype: "%d %03d %s" % axis_rank("model_storage", dtype)))
    order = order.sort_values([*EXPERIMENT_KEYS, "method", "exemplar_format", "point", "_dtype"],
                              key=method_sort_key, na_position="last", kind="stable")
    return order.drop(columns="_dtype").reset_index(drop=True)


# ------------------------------------------------------------------------------ printed

def _value(value: float, sign: bool = False) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


STORAGE_COST_LEGEND = (
    "fp32: the fp32 run's accuracy (%) on the classes seen; converted: the same run with its "
    "frozen blocks converted to that dtype, evaluation only; cost: converted - fp32 (the "
    "precision alone); trained: the run trained with that storage at the same budget (with the "
    "exemplars its smaller model leaves room for); gain: trained - fp32. Means over the probed tasks "
    "(`tasks`; the first has nothing frozen, so it adds no cost: the means are average incremental "
    "accuracy's) and over seeds.")


def storage_cost_grid(group: pd.DataFrame) -> pd.DataFrame:
    """One experiment's rows of storage_cost.csv as printed: a row per configuration, budget and
    dtype; per kind fp32, converted, cost, trained, gain."""
    names = [("fp32", "fp32", False), ("converted", "converted", False),
             ("conversion_cost", "cost", True), ("trained", "trained", False),
             ("trained_gain", "gain", True)]
    columns = pd.MultiIndex.from_tuples(
        [("", "tasks"), ("", "seeds")]
        + [(KIND_NAMES[kind], label) for kind in KINDS for _, label, _ in names])
    index, cells = [], []
    for _, row in group.iterrows():
        budget = ("no budget" if pd.isna(row["budget_mb"]) else f"{row['budget_mb']:.2f} MB")
        index.append(f"{configuration(row['method'], row['exemplar_format'])} at {budget} "
                     f"-> {row['probe_storage']}")
        cells.append([str(row["tasks_probed"]), str(row["n_seeds"])]
                     + [_value(row[f"{kind}_{name}"], sign) for kind in KINDS
                        for name, _, sign in names])
    return pd.DataFrame(cells, index=index, columns=columns)


def format_storage_cost(table: pd.DataFrame) -> str:
    """Per experiment: the conversion cost of each probed dtype beside the trained run's gain."""
    blocks = []
    for (dataset, scenario, policy), group in table.groupby(EXPERIMENT_KEYS, dropna=False,
                                                            sort=False):
        blocks.append(f"{dataset} {scenario} ({policy} policy): cost of storing frozen blocks at "
                      f"a lower precision ({STORAGE_COST})\n{STORAGE_COST_LEGEND}\n"
                      f"{storage_cost_grid(group).to_string()}")
    return "\n\n".join(blocks)
