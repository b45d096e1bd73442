"""Figures of one experiment: accuracy vs memory, accuracy after each task, AUC bars.

Every figure is saved as PNG and SVG. Figures are built with `matplotlib.figure.Figure` rather
than pyplot: no global figure registry to leak or close, and no display needed (PNG goes through
the Agg renderer whatever backend the caller has). A method keeps one colour in every figure.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

# The schema only: figures take finished tables and never import the code that builds them.
from benchmark.report.columns import (EXPERIMENT_KEYS, KIND_NAMES, KINDS, method_color, method_rank,
                               method_sort_key)

KIND_LABELS = {"cnn": f"{KIND_NAMES['cnn']} (classifier) accuracy",
               "nme": f"{KIND_NAMES['nme']} (nearest-mean) accuracy"}
BAND_ALPHA = 0.2
GROUP_LABEL = "group of the best (paired t, Holm, 95 %)"


def _unbudgeted_label(method: str) -> str:
    return "joint (upper bound)" if method == "joint" else f"{method} (no budget)"


def _save(figure: Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    figure.savefig(png, dpi=150, bbox_inches="tight")
    # No date in the SVG, so regenerating an unchanged report gives identical files.
    figure.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    return [png, svg]


def _stem(name: str, kind: str) -> str:
    """CNN figures keep the plain names; NME ones get a suffix."""
    return name if kind == "cnn" else f"{name}_{kind}"


def _by_method(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return sorted(table.groupby("method"), key=lambda item: method_rank(item[0]))


def _legend_outside(figure: Figure, axes: list[Axes]) -> None:
    """One legend right of the plot area, de-duplicated across panels, never over the data."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(list(handles.values()), list(handles), loc="outside right center",
                  frameon=False)


# ------------------------------------------------------------------------ accuracy vs memory

def _check_one_experiment(table: pd.DataFrame) -> None:
    groups = table[EXPERIMENT_KEYS].drop_duplicates()
    if len(groups) > 1:
        raise ValueError("plot one dataset/scenario/policy at a time, got "
                         f"{groups.to_dict('records')}")


def _draw_curve(ax: Axes, curve: pd.DataFrame, method: str, metric: str) -> None:
    curve = curve.sort_values("budget_mb")
    memory = curve["budget_mb"].to_numpy(dtype=float)
    mean = curve[f"{metric}_mean"].to_numpy(dtype=float)
    std = curve[f"{metric}_std"].to_numpy(dtype=float)
    color = method_color(method)
    ax.plot(memory, mean, marker="o", color=color, label=method)
    # A band needs a spread: points with one seed (std NaN) get none.
    if np.isfinite(std).any():
        ax.fill_between(memory, mean - std, mean + std, color=color, alpha=BAND_ALPHA,
                        linewidth=0, where=np.isfinite(std))
    _ring_group_of_the_best(ax, curve, memory, mean, metric)


def _ring_group_of_the_best(ax: Axes, curve: pd.DataFrame, memory: np.ndarray,
                            mean: np.ndarray, metric: str) -> None:
    """A black ring around each point whose method cannot be told apart from the best there
    (summary.csv's `<metric>_tied_with_best`); none where no comparison was possible."""
    column = f"{metric}_tied_with_best"
    if column not in curve:
        return
    tied = pd.array(curve[column], dtype="boolean").fillna(False).to_numpy(dtype=bool)
    if tied.any():
        ax.scatter(memory[tied], mean[tied], s=160, facecolors="none", edgecolors="black",
                   linewidths=1.2, zorder=3, label=GROUP_LABEL)


def _draw_unbudgeted(ax: Axes, rows: pd.DataFrame, method: str, metric: str) -> None:
    """Joint has no memory budget: a dashed horizontal line (band if several seeds)."""
    mean, std = rows[f"{metric}_mean"].mean(), rows[f"{metric}_std"].mean()
    color = method_color(method)
    ax.axhline(mean, linestyle="--", color=color, label=_unbudgeted_label(method))
    if not math.isnan(std):
        ax.axhspan(mean - std, mean + std, color=color, alpha=BAND_ALPHA / 2, linewidth=0)


def _memory_figure(summary: pd.DataFrame, metric: str, ylabel: str, title: str) -> Figure:
    # constrained layout makes room for the "outside" legend instead of overlapping the axes
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = figure.subplots()
    for method, rows in _by_method(summary):
        on_axis = rows[rows["budget_mb"].notna()]
        if len(on_axis):
            _draw_curve(ax, on_axis, method, metric)
        if len(on_axis) < len(rows):
            _draw_unbudgeted(ax, rows[rows["budget_mb"].isna()], method, metric)
    budgets = np.unique(summary["budget_mb"].dropna().to_numpy(dtype=float))
    if len(budgets):
        ax.set_xticks(budgets, [f"{mb:.1f}" for mb in budgets])
    ax.set_xlabel("memory budget (MB)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_outside(figure, [ax])
    return figure


def plot_accuracy_vs_memory(summary: pd.DataFrame, out_dir: Path, title: str,
                            kind: str = "cnn") -> list[Path]:
    """Average and last accuracy against memory budget, mean ± std over seeds, one line per method.

    Takes summary.csv's table (benchmark.report.tables.summary_table). Returns the PNG and SVG paths of
    accuracy_vs_memory_average and accuracy_vs_memory_last ("_nme" appended for NME accuracy).
    """
    if "run_id" in summary.columns:
        raise ValueError("plot_accuracy_vs_memory takes the summary table (one row per method "
                         "and budget point), got a runs table: pass "
                         "benchmark.report.tables.summary_table(runs)")
    if summary.empty:
        raise ValueError("no complete runs to plot")
    _check_one_experiment(summary)
    title = f"{title}\n{KIND_LABELS[kind]}"
    paths = []
    for name, ylabel in (("average", "average incremental accuracy (%)"),
                         ("last", "last accuracy (%)")):
        figure = _memory_figure(summary, f"{kind}_{name}_accuracy", ylabel, title)
        paths += _save(figure, out_dir, _stem(f"accuracy_vs_memory_{name}", kind))
    return paths


# ------------------------------------------------------------------------ accuracy per task

def _panel_title(points: pd.DataFrame) -> str:
    first = points.iloc[0]
    return f"point {int(first['point'])}: {first['point_label']}, {first['budget_mb']:.1f} MB"


def _draw_task_lines(ax: Axes, curves: pd.DataFrame, metric: str, dashed: bool) -> None:
    for method, rows in _by_method(curves):
        mean = rows.groupby("classes_seen")[metric].mean()  # mean over seeds
        label = _unbudgeted_label(method) if dashed else method
        ax.plot(mean.index.to_numpy(dtype=float), mean.to_numpy(dtype=float), marker=".",
                linestyle="--" if dashed else "-", color=method_color(method), label=label)


def plot_accuracy_per_task(tasks_table: pd.DataFrame, out_dir: Path, title: str,
                           kind: str = "cnn") -> list[Path]:
    """Accuracy after each task against classes seen: one panel per budget point.

    One line per method, mean over the complete runs' seeds; methods without a budget (joint) are
    drawn dashed in every panel as the reference. Returns accuracy_per_task PNG and SVG paths.
    """
    tasks = tasks_table
    if "status" in tasks.columns:
        tasks = tasks[tasks["status"] == "complete"]
    if tasks.empty:
        raise ValueError("no complete runs to plot")
    _check_one_experiment(tasks)
    metric = f"{kind}_accuracy"
    unbudgeted = tasks[tasks["point"].isna()]
    panels = [rows for _, rows in tasks[tasks["point"].notna()].groupby("point")] or [None]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    figure = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    for ax, rows in zip(axes, panels):
        if rows is not None:
            _draw_task_lines(ax, rows, metric, dashed=False)
        _draw_task_lines(ax, unbudgeted, metric, dashed=True)
        ax.set_title(_panel_title(rows) if rows is not None else "no memory budget", fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # whole classes
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.supxlabel("classes seen")
    figure.supylabel("accuracy on classes seen (%)")
    figure.suptitle(f"{title}\n{KIND_LABELS[kind]} after each task")
    _legend_outside(figure, list(axes[: len(panels)]))
    return _save(figure, out_dir, _stem("accuracy_per_task", kind))


# ------------------------------------------------------------------------------------ AUC bars

def _draw_auc_bars(ax: Axes, rows: pd.DataFrame) -> None:
    rows = rows.sort_values("method", key=method_sort_key)
    x = np.arange(len(rows))
    colors = [method_color(method) for method in rows["method"]]
    width = 0.38
    for offset, column, hatch in ((-width / 2, "auc_average", None), (width / 2, "auc_last", "//")):
        values = rows[column].to_numpy(dtype=float)
        std = rows[f"{column}_std"].to_numpy(dtype=float)
        bars = ax.bar(x + offset, values, width, color=colors, hatch=hatch,
                      edgecolor="white" if hatch else None)
        # values inside the bars, on a light box: above them they would collide with error bars
        ax.bar_label(bars, fmt="%.2f", label_type="center", fontsize=7,
                     bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.8,
                           "linewidth": 0})
        has_std = np.isfinite(std)
        if has_std.any():
            ax.errorbar((x + offset)[has_std], values[has_std], yerr=std[has_std], fmt="none",
                        ecolor="black", capsize=3, linewidth=1)
    ax.set_xticks(x, list(rows["method"]))


def plot_auc_bars(auc_table: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    """AUC-A and AUC-L per method as grouped bars (error bars: std over seeds), a panel per kind.

    Methods without an AUC (joint, a single point) are left out. Returns auc PNG and SVG paths.
    """
    finite = auc_table[auc_table["auc_average"].notna() | auc_table["auc_last"].notna()]
    kinds = [kind for kind in KINDS if (finite["kind"] == kind).any()]
    if not kinds:
        raise ValueError("no finite AUC to plot")
    _check_one_experiment(finite)
    figure = Figure(figsize=(max(5.0, 1.2 * finite["method"].nunique()) * len(kinds), 4.2),
                    layout="constrained")
    axes = figure.subplots(1, len(kinds), squeeze=False, sharey=True).ravel()
    for ax, kind in zip(axes, kinds):
        _draw_auc_bars(ax, finite[finite["kind"] == kind])
        ax.set_title(KIND_LABELS[kind], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("area under accuracy-memory curve\n(accuracy fraction x MB)")
    figure.suptitle(f"{title}: AUC-A (plain) and AUC-L (hatched)")
    legend = [Patch(facecolor="lightgray", label="AUC-A (average accuracy)"),
              Patch(facecolor="lightgray", hatch="//", edgecolor="white",
                    label="AUC-L (last accuracy)")]
    figure.legend(handles=legend, loc="outside right center", frameon=False)
    return _save(figure, out_dir, "auc")
