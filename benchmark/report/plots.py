"""Figures of one experiment: accuracy vs memory, accuracy after each task, AUC bars.

Every figure is saved as PNG and SVG. Figures are built with `matplotlib.figure.Figure` rather
than pyplot: no global figure registry to leak or close, and no display needed (PNG goes through
the Agg renderer whatever backend the caller has). A method keeps one colour in every figure.

One curve per configuration (a method with its values on the budget axes, columns.configuration).
When some method has several (exemplar formats, stored precisions), accuracy against memory is
drawn as small multiples, one panel per such method: its configurations in its colour, each with
its own line style and marker (the same in every figure), and the other methods' plain
configuration thin and faded for reference; otherwise one panel as before.
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
from benchmark.report.columns import (AXIS_KEYS, EXPERIMENT_KEYS, KIND_NAMES, KINDS,
                                      configuration_rank, configurations, has_variants,
                                      method_color, method_sort_key, with_axes)

KIND_LABELS = {"cnn": f"{KIND_NAMES['cnn']} (classifier) accuracy",
               "nme": f"{KIND_NAMES['nme']} (nearest-mean) accuracy"}
BAND_ALPHA = 0.2
GROUP_LABEL = "group of the best (paired t, Holm, 95 %)"
# A method's configurations, in the order of columns.configuration_rank (the plain one first):
# the k-th gets the k-th line style and marker, so a variant looks the same in every figure.
LINE_STYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
REFERENCE_ALPHA = 0.45  # other methods' plain curves in a method's panel


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


def _by_configuration(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(configuration label, its rows), in the report's order (the method alone at the default
    axis values, so the method's name when the experiment has no other values)."""
    labels = configurations(table)
    return sorted(table.groupby(labels.to_numpy()), key=lambda item: configuration_rank(item[0]))


def _method_of(rows: pd.DataFrame) -> str:
    return str(rows["method"].iloc[0])


def _styles(table: pd.DataFrame) -> dict[str, tuple[object, str]]:
    """Configuration label -> (line style, marker): by its place among its method's
    configurations; (solid, "o") for a method's only or plain one."""
    styles, seen = {}, {}
    for label, rows in _by_configuration(table):
        k = seen.setdefault(_method_of(rows), 0)
        seen[_method_of(rows)] += 1
        styles[label] = (LINE_STYLES[k % len(LINE_STYLES)], MARKERS[k % len(MARKERS)])
    return styles


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


def _draw_curve(ax: Axes, curve: pd.DataFrame, label: str, metric: str,
                style: tuple[object, str] = ("-", "o")) -> None:
    curve = curve.sort_values("budget_mb")
    memory = curve["budget_mb"].to_numpy(dtype=float)
    mean = curve[f"{metric}_mean"].to_numpy(dtype=float)
    std = curve[f"{metric}_std"].to_numpy(dtype=float)
    color = method_color(_method_of(curve))
    ax.plot(memory, mean, marker=style[1], linestyle=style[0], color=color, label=label)
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


def _draw_unbudgeted(ax: Axes, rows: pd.DataFrame, label: str, metric: str) -> None:
    """Joint has no memory budget: a dashed horizontal line (band if several seeds)."""
    mean, std = rows[f"{metric}_mean"].mean(), rows[f"{metric}_std"].mean()
    color = method_color(_method_of(rows))
    ax.axhline(mean, linestyle="--", color=color, label=_unbudgeted_label(label))
    if not math.isnan(std):
        ax.axhspan(mean - std, mean + std, color=color, alpha=BAND_ALPHA / 2, linewidth=0)


def _draw_configurations(ax: Axes, summary: pd.DataFrame, metric: str,
                         styles: dict[str, tuple[object, str]]) -> None:
    """Each configuration of `summary` in full: curve, band, rings; no budget: a dashed line."""
    for label, rows in _by_configuration(summary):
        on_axis = rows[rows["budget_mb"].notna()]
        if len(on_axis):
            _draw_curve(ax, on_axis, label, metric, styles[label])
        if len(on_axis) < len(rows):
            _draw_unbudgeted(ax, rows[rows["budget_mb"].isna()], label, metric)


def _memory_axes(ax: Axes, summary: pd.DataFrame) -> None:
    budgets = np.unique(summary["budget_mb"].dropna().to_numpy(dtype=float))
    if len(budgets):
        ax.set_xticks(budgets, [f"{mb:.1f}" for mb in budgets])
    ax.grid(alpha=0.3)


def _memory_figure(summary: pd.DataFrame, metric: str, ylabel: str, title: str) -> Figure:
    if has_variants(summary):
        return _memory_panels(summary, metric, ylabel, title)
    # constrained layout makes room for the "outside" legend instead of overlapping the axes
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = figure.subplots()
    _draw_configurations(ax, summary, metric, _styles(summary))
    _memory_axes(ax, summary)
    ax.set_xlabel("memory budget (MB)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _legend_outside(figure, [ax])
    return figure


def _plain(rows_by_label: list[tuple[str, pd.DataFrame]]) -> tuple[str, pd.DataFrame]:
    """A method's reference configuration: the one named by the method alone, else its first."""
    for label, rows in rows_by_label:
        if label == _method_of(rows):
            return label, rows
    return rows_by_label[0]


def _memory_panels(summary: pd.DataFrame, metric: str, ylabel: str, title: str) -> Figure:
    """Small multiples: one panel per method with several configurations, those drawn in full;
    the other methods' plain configuration thin and faded (labelled once, where it is drawn
    nowhere in full) and methods without a budget dashed, in every panel."""
    styles = _styles(summary)
    by_method: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for label, rows in _by_configuration(summary):
        by_method.setdefault(_method_of(rows), []).append((label, rows))
    panels = [method for method, configs in by_method.items() if len(configs) > 1]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    figure = Figure(figsize=(4.6 * ncols + 2.0, 3.6 * nrows + 0.6), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    for ax, method in zip(axes, panels):
        own = summary[summary["method"] == method]
        _draw_configurations(ax, own, metric, styles)
        for other, configs in by_method.items():
            if other != method:
                label, rows = _plain(configs)
                _draw_reference(ax, rows, label if other not in panels else "_nolegend_", metric)
        _memory_axes(ax, summary)
        ax.set_title(method, fontsize=10)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.supxlabel("memory budget (MB)")
    figure.supylabel(ylabel)
    figure.suptitle(f"{title}\none panel per method with several configurations; faded: the "
                    f"other methods' plain one", fontsize=10)
    _legend_outside(figure, list(axes[: len(panels)]))
    return figure


def _draw_reference(ax: Axes, rows: pd.DataFrame, label: str, metric: str) -> None:
    """Another method's curve in a method's panel: thin and faded, without band or rings."""
    color = method_color(_method_of(rows))
    on_axis = rows[rows["budget_mb"].notna()].sort_values("budget_mb")
    if len(on_axis):
        ax.plot(on_axis["budget_mb"].to_numpy(dtype=float),
                on_axis[f"{metric}_mean"].to_numpy(dtype=float), color=color, linewidth=1,
                alpha=REFERENCE_ALPHA, marker="o", markersize=3, label=label)
    if len(on_axis) < len(rows):
        ax.axhline(rows.loc[rows["budget_mb"].isna(), f"{metric}_mean"].mean(), linestyle="--",
                   linewidth=1, color=color, alpha=REFERENCE_ALPHA,
                   label=_unbudgeted_label(label) if not label.startswith("_") else label)


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


def _draw_task_lines(ax: Axes, curves: pd.DataFrame, metric: str, dashed: bool,
                     styles: dict[str, tuple[object, str]] | None = None) -> None:
    """One line per configuration; with `styles` (an experiment with variants) each its style."""
    for label, rows in _by_configuration(curves):
        mean = rows.groupby("classes_seen")[metric].mean()  # mean over seeds
        linestyle, marker = (styles or {}).get(label, ("-", "."))
        ax.plot(mean.index.to_numpy(dtype=float), mean.to_numpy(dtype=float), marker=marker,
                linestyle="--" if dashed else linestyle, color=method_color(_method_of(rows)),
                label=_unbudgeted_label(label) if dashed else label)


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
    styles = _styles(tasks) if has_variants(tasks) else None
    for ax, rows in zip(axes, panels):
        if rows is not None:
            _draw_task_lines(ax, rows, metric, dashed=False, styles=styles)
        _draw_task_lines(ax, unbudgeted, metric, dashed=True, styles=styles)
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
    rows = with_axes(rows).sort_values(["method", *AXIS_KEYS], key=method_sort_key)
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
    labels = list(configurations(rows))
    many = any(" " in label for label in labels)  # variants: long labels, turned to fit
    ax.set_xticks(x, labels, rotation=40 if many else 0, ha="right" if many else "center")


def plot_auc_bars(auc_table: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    """AUC-A and AUC-L per method as grouped bars (error bars: std over seeds), a panel per kind.

    Methods without an AUC (joint, a single point) are left out. Returns auc PNG and SVG paths.
    """
    finite = auc_table[auc_table["auc_average"].notna() | auc_table["auc_last"].notna()]
    kinds = [kind for kind in KINDS if (finite["kind"] == kind).any()]
    if not kinds:
        raise ValueError("no finite AUC to plot")
    _check_one_experiment(finite)
    bars = configurations(finite).nunique()
    figure = Figure(figsize=(max(5.0, 1.2 * bars) * len(kinds), 4.2),
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
