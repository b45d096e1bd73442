"""The report's schema, defined once: the columns of every CSV it writes, the accuracy kinds, and
the order and colour of each method. docs/results.md explains every column listed here (a test
checks that it lists exactly these, and that the written files carry exactly these).

Tables (benchmark.report.tables), figures (benchmark.report.plots) and the report driver (benchmark.report.writer) all
import from here and never from each other's internals, so none of them imports another in a cycle.
"""
from __future__ import annotations

import zlib

import pandas as pd

from budgets.accounting import POLICIES
from budgets.planner import NOT_APPLICABLE  # the axis changes nothing for the method (Finetune's exemplars)
from methods import METHODS

KINDS = ("cnn", "nme")
KIND_NAMES = {"cnn": "CNN", "nme": "NME"}  # how printed tables and figures label each kind

# CNN and NME of the same metric sit side by side in every table.
ACCURACY_METRICS = [f"{kind}_{name}" for name in ("average_accuracy", "last_accuracy",
                                                  "forgetting") for kind in KINDS]
# The memory a run ended with, under each counting policy of budgets.accounting ("paper", "strict").
AUDITED_BYTES = [f"{policy}_total_bytes" for policy in POLICIES]
AUDITED_MB = [f"{policy}_total_mb" for policy in POLICIES]
AUDITED = [column for pair in zip(AUDITED_BYTES, AUDITED_MB) for column in pair]  # bytes, MB per policy
SUMMARY_METRICS = ACCURACY_METRICS + [*AUDITED_MB, "wall_seconds"]
EXPERIMENT_KEYS = ["dataset", "scenario", "policy"]  # one figure set / printed block per value
# The budget axes beside the method: how exemplars are stored and the dtype of frozen blocks. A
# method with its values on these axes is one configuration: one curve, one row, one rank.
AXIS_KEYS = ["exemplar_format", "model_storage"]
CURVE_KEYS = EXPERIMENT_KEYS + ["method", *AXIS_KEYS]
# budget_mb and point_label are keys too: seeds that disagree on them would be a planning bug, and
# a split row shows it instead of averaging it away.
GROUP_KEYS = CURVE_KEYS + ["point", "point_label", "budget_mb"]

RUN_COLUMNS = [
    "run_id", "status", "experiment", "method", *AXIS_KEYS, "dataset", "scenario", "point", "point_label",
    "budget_mb", "budget_bytes", "seed", "backbone", "num_backbones", "exemplars", "model_params",
    "policy", "planned_total_bytes", "planned_total_mb", *AUDITED, "tasks_completed", *ACCURACY_METRICS,
    "wall_seconds",
    "git_sha", "git_dirty", "torch", "device", "python", "hostname", "error_type", "error_message",
]
TASK_COLUMNS = [
    "run_id", "status", "method", *AXIS_KEYS, "dataset", "scenario", "policy", "point",
    "point_label", "budget_mb", "seed", "task", "classes_seen", "cnn_accuracy", "nme_accuracy",
    "exemplars_stored", *AUDITED_BYTES, "train_seconds", "eval_seconds",
]
POINT_KEYS = EXPERIMENT_KEYS + ["point"]  # methods are compared with each other at one point
# Metrics that get a 95 % interval and a paired comparison with the best method at each point
# (benchmark.report.statistics): average and last accuracy, CNN and NME.
COMPARED_METRICS = [f"{kind}_{name}" for name in ("average_accuracy", "last_accuracy")
                    for kind in KINDS]
COMPARISON_STATS = ("ci95", "p_holm", "tied_with_best")


def _summary_stats(metric: str) -> tuple[str, ...]:
    return ("mean", "std", *COMPARISON_STATS) if metric in COMPARED_METRICS else ("mean", "std")


SUMMARY_COLUMNS = [*GROUP_KEYS, "n_seeds",
                   *(f"{metric}_{stat}" for metric in SUMMARY_METRICS
                     for stat in _summary_stats(metric))]
AUC_NAMES = ("auc_average", "auc_last")  # AUC-A and AUC-L, compared like the accuracies
AUC_COLUMNS = [
    *CURVE_KEYS, "kind", *AUC_NAMES, *(f"{name}_std" for name in AUC_NAMES),
    *(f"{name}_{stat}" for stat in COMPARISON_STATS for name in AUC_NAMES), "n_points",
    "n_seeds", "memory_start_mb", "memory_end_mb", "apm_start", "apm_end", "note",
]
# ranks.csv (benchmark.report.ranks): one row per ranked metric and method, best first; the
# mean rank over the blocks (dataset, scenario, policy, budget point, seed), whether the method is
# in the group of the best, its group letters, the test autorank chose, its p-value, the Nemenyi
# critical difference, the number of blocks, the methods not ranked and why, and notes.
RANK_COLUMNS = ["metric", "method", *AXIS_KEYS, "mean_rank", "rank_group_of_best", "rank_groups", "test",
                "p_value", "critical_difference", "blocks", "methods_left_out", "note"]
# storage_cost.csv (benchmark.report.storage_cost): per fp32 run configuration, budget point and probed
# dtype, the accuracy of the fp32 run, of the same run with its frozen blocks converted
# (evaluation only) and of the run trained with that storage, over the tasks probed.
STORAGE_COST_KINDS = ("fp32", "converted", "conversion_cost", "trained", "trained_gain")
STORAGE_COST_COLUMNS = [*EXPERIMENT_KEYS, "method", "exemplar_format", "point", "point_label",
                        "budget_mb", "probe_storage", "tasks_probed", "n_seeds", "n_trained_seeds",
                        *(f"{kind}_{name}" for kind in KINDS for name in STORAGE_COST_KINDS)]
CSV_COLUMNS = {"runs.csv": RUN_COLUMNS, "tasks.csv": TASK_COLUMNS,
               "summary.csv": SUMMARY_COLUMNS, "auc.csv": AUC_COLUMNS, "ranks.csv": RANK_COLUMNS,
               "storage_cost.csv": STORAGE_COST_COLUMNS}

# Counts and byte sizes stay integers in the CSV ("1", not "1.0"), with empty cells for missing.
INT_COLUMNS = ["point", "budget_bytes", "seed", "num_backbones", "exemplars", "model_params",
               "planned_total_bytes", *AUDITED_BYTES, "tasks_completed",
               "task", "classes_seen", "exemplars_stored", "n_seeds", "n_points",
               "tasks_probed", "n_trained_seeds"]
FLOAT_COLUMNS = ["budget_mb", "planned_total_mb", *AUDITED_MB,
                 *ACCURACY_METRICS, "wall_seconds", "cnn_accuracy", "nme_accuracy",
                 "train_seconds", "eval_seconds",
                 *(f"{kind}_{name}" for kind in KINDS for name in STORAGE_COST_KINDS),
                 *(f"{name}_{stat}" for name in [*COMPARED_METRICS, *AUC_NAMES]
                   for stat in ("ci95", "p_holm"))]
# True / False, with an empty cell where no comparison is possible (one seed).
BOOL_COLUMNS = [f"{name}_tied_with_best" for name in [*COMPARED_METRICS, *AUC_NAMES]]

# ------------------------------------------------------------------------------ methods

# The MEMO paper's table order and a colour each. The registry decides which methods exist (it
# registers them alphabetically, by import); this only decides how the paper's ones are shown.
PAPER_METHODS = {
    "finetune": "tab:brown", "replay": "tab:blue", "icarl": "tab:orange", "wa": "tab:green",
    "der": "tab:red", "memo": "tab:purple", "joint": "black",
}
# A method registered later gets a colour from its name, so it keeps it in every figure
# whichever other methods a figure shows.
FALLBACK_COLORS = ["tab:pink", "tab:olive", "tab:cyan", "tab:gray", "gold", "navy", "teal"]


def method_order() -> list[str]:
    """Registered methods: the paper's first in its order, then later ones as registered."""
    registered = METHODS.names()
    return ([name for name in PAPER_METHODS if name in registered]
            + [name for name in registered if name not in PAPER_METHODS])


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: method_order() first, names the registry does not know after it A-Z."""
    order = method_order()
    return (order.index(method) if method in order else len(order)), str(method)


def method_sort_key(column: pd.Series) -> pd.Series:
    """`sort_values(key=...)`: methods by method_rank, the axes by axis_rank (default first),
    configuration labels by configuration_rank, every other column unchanged."""
    if column.name == "method":
        return column.map(lambda name: "%03d %s" % method_rank(name))
    if column.name in AXIS_KEYS:
        return column.map(lambda value: "%d %03d %s" % axis_rank(column.name, value))
    if column.name == "configuration":
        return column.map(lambda label: "%03d %s %d %03d %s %d %03d %s" % configuration_rank(label))
    return column


def method_color(method: str) -> str:
    """The colour of `method` in every figure."""
    if method in PAPER_METHODS:
        return PAPER_METHODS[method]
    return FALLBACK_COLORS[zlib.crc32(str(method).encode()) % len(FALLBACK_COLORS)]


# ------------------------------------------------------------------------------ configurations

# What a record without the axis keys (written before the axes existed) was run with.
AXIS_DEFAULTS = {"exemplar_format": "raw", "model_storage": "fp32"}
# Stored-model precisions, most bytes first: the order of a method's variants.
STORAGE_ORDER = ("fp32", "fp16", "bf16", "int8")


def axis_value(record_cell: dict, axis: str) -> str:
    """A cell's value on `axis`: the default for a record from before the axes existed."""
    value = record_cell.get(axis)
    return AXIS_DEFAULTS[axis] if value is None or value == "" else str(value)


def with_axes(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with both axis columns, defaults where a table (an older CSV) lacks them."""
    table = table.copy()
    for axis, default in AXIS_DEFAULTS.items():
        table[axis] = table[axis].fillna(default) if axis in table else default
    return table


def configuration(method: str, exemplar_format: str = "raw", model_storage: str = "fp32") -> str:
    """"icarl", "icarl jpeg:50", "der int8", "der jpeg:50 fp16": the method and its values on
    the axes that are neither the default nor "-" (NOT_APPLICABLE) (the format first, then the precision)."""
    variants = [str(value) for axis, value in (("exemplar_format", exemplar_format),
                                               ("model_storage", model_storage))
                if not pd.isna(value) and str(value) not in (AXIS_DEFAULTS[axis], NOT_APPLICABLE)]
    return " ".join([str(method), *variants])


def configurations(table: pd.DataFrame) -> pd.Series:
    """The configuration label of each row of a table with `method` (and, if it has them, the
    axis columns), aligned with its index."""
    table = with_axes(table[[column for column in ["method", *AXIS_KEYS] if column in table]])
    labels = [configuration(method, fmt, storage) for method, fmt, storage
              in zip(table["method"], table["exemplar_format"], table["model_storage"])]
    return pd.Series(labels, index=table.index, dtype=object, name="configuration")


def has_variants(table: pd.DataFrame) -> bool:
    """Whether some method of `table` has more than one configuration (the axes are in use)."""
    labels = configurations(table)
    return bool((labels.groupby(table["method"].to_numpy()).nunique() > 1).any())


def axis_rank(axis: str, value) -> tuple[int, int, str]:
    """Sort key of a value on an axis: the default first, "-" (NOT_APPLICABLE) with it, known precisions by
    bytes, other values A-Z."""
    value = AXIS_DEFAULTS[axis] if pd.isna(value) else str(value)
    if value in (AXIS_DEFAULTS[axis], NOT_APPLICABLE):
        return 0, 0, ""
    if axis == "model_storage" and value in STORAGE_ORDER:
        return 1, STORAGE_ORDER.index(value), ""
    return 2, 0, value


def configuration_rank(label: str) -> tuple:
    """Sort key of a configuration label: its method's rank, then its format, then its precision
    (a label's words after the method are its non-default axis values)."""
    method, *variants = str(label).split(" ")
    storage = [value for value in variants if value in STORAGE_ORDER]
    formats = [value for value in variants if value not in STORAGE_ORDER]
    return (*method_rank(method),
            *axis_rank("exemplar_format", formats[0] if formats else AXIS_DEFAULTS["exemplar_format"]),
            *axis_rank("model_storage", storage[0] if storage else AXIS_DEFAULTS["model_storage"]))
