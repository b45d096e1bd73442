"""One experiment's report as one self-contained HTML page, report.html: the experiment file, the
plan, the curves, the tables with their groups, accuracy after each task, the memory audit, the
failed runs, the grid's cost and the provenance.

The page is rendered from a finished report set (the CSVs and plots/*.svg in the set's folder)
and from what only the records hold (the cells' byte split, origins, tracebacks). Nothing here
computes a statistic: every mean, interval, p-value and group is read from summary.csv / auc.csv.

Self-contained: no network (no external CSS, script or font; the figures are the set's own SVGs,
inline) and no path of the machine that wrote it: files of the set are named relative to the
experiment folder, and any path in an error message goes through `scrub_paths`.

Rows are configurations (a method with its exemplar format and stored precision,
columns.configuration; the method alone at the defaults), so an experiment without those axes
shows its methods as before.

The templates (Jinja2, autoescaped) are in benchmark/report/templates/. The comparison page of
several experiments (benchmark.report.compare) reuses the tables and blocks defined here.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import pandas as pd
import yaml

from benchmark.report.columns import (AXIS_KEYS, EXPERIMENT_KEYS, KIND_NAMES, KINDS, axis_value,
                                      configuration, has_variants, with_axes)
from benchmark.report.spread import format_mixed_numerics, mixed_numerics, numerics_text
from benchmark.report.storage_cost import STORAGE_COST, STORAGE_COST_LEGEND
from benchmark.report.tables import (GROUPS_LEGEND, NO_COMPARISON, best_configurations, group_mark,
                                     mean_std, sorted_table, with_configuration)

PAGE = "report.html"
RANKS = "ranks.csv"  # critical-difference mean ranks across budget points, when the set has them
PLOT_DIR = "plots"  # the set's figures (benchmark.report.writer writes them there)
TEMPLATES = Path(__file__).with_name("templates")
REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------ paths

# An absolute POSIX path in free text: a "/" that does not continue a word or a path ("./x", "~/x",
# "a/b", "http://") up to whitespace, a quote, a bracket or a separator (":12" of a line number).
_ABSOLUTE = re.compile(r"(?<![\w.~/\\-])/(?!/)[^\s'\"`<>()\[\]{},:;|]*")


def scrub_paths(text: str, experiment_dir: Path, repo: Path = REPO, home: Path | None = None) -> str:
    """`text` without the machine's absolute paths: one under the experiment folder relative to it,
    under the repository `./...`, under home `~/...`, any other `…/` and its last two components."""
    roots = _roots([(experiment_dir, ""), (repo, "."), (Path.home() if home is None else home, "~")])

    def replace(match: re.Match) -> str:
        path = match.group(0)
        stop = "." if path.endswith(".") and not path.endswith(("/.", "..")) else ""  # a full stop
        path = path[: len(path) - len(stop)]
        for root, name in roots:
            if path == root:
                return (name or ".") + stop
            if path.startswith(root + "/"):
                rest = path[len(root) + 1:]
                return (f"{name}/{rest}" if name else rest) + stop
        parts = [part for part in path.split("/") if part]
        return ("…/" + "/".join(parts[-2:]) if parts else path) + stop

    return _ABSOLUTE.sub(replace, text)


def _roots(named: list[tuple[Path, str]]) -> list[tuple[str, str]]:
    """(absolute folder, its replacement), each folder as given and with links resolved, longest
    first so that the most specific folder wins (the experiment folder inside the repository)."""
    roots = {}
    for folder, name in named:
        for form in (os.path.abspath(folder), os.path.realpath(folder)):
            if form.rstrip("/"):  # "/" itself (a home of "/") would swallow every path
                roots.setdefault(form.rstrip("/"), name)
    return sorted(roots.items(), key=lambda item: len(item[0]), reverse=True)


# ------------------------------------------------------------------------------ blocks

@dataclass
class Table:
    """A table as the templates show it: text cells (formatted here, escaped there). `groups`: an
    upper header row of (label, columns spanned); `row_classes`: a CSS class per row, or ""."""

    kind: ClassVar[str] = "table"
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    groups: list[tuple[str, int]] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)

    @property
    def numeric(self) -> list[bool]:
        """Per column: whether every filled cell is a number (right-aligned)."""
        filled = [[row[i] for row in self.rows if row[i] not in ("", "-")]
                  for i in range(len(self.columns))]
        return [bool(cells) and all(_NUMERIC.match(cell) for cell in cells) for cells in filled]

    def classes(self, index: int) -> str:
        return self.row_classes[index] if index < len(self.row_classes) else ""


_NUMERIC = re.compile(r"^[<±+-]?[\d,]*\.?\d+( ± [\d.]+)?( [*=])?$")


@dataclass
class Paragraph:
    kind: ClassVar[str] = "paragraph"
    text: str


@dataclass
class Code:
    """Preformatted text, e.g. the experiment file as YAML."""

    kind: ClassVar[str] = "code"
    text: str


@dataclass
class Details:
    """Text folded under a one-line summary, e.g. a traceback."""

    kind: ClassVar[str] = "details"
    summary: str
    text: str


@dataclass
class Figure:
    """An inline SVG (prepared by `inline_svg`) and its file, relative to the experiment folder."""

    kind: ClassVar[str] = "figure"
    svg: str
    caption: str


@dataclass
class Section:
    """One section of a page: its anchor (listed in the contents), title and blocks in order."""

    id: str
    title: str
    blocks: list = field(default_factory=list)


# ------------------------------------------------------------------------------ figures

def inline_svg(text: str, prefix: str) -> str:
    """A matplotlib SVG file as an element of an HTML page: no XML prolog or DOCTYPE (whose DTD
    address is a network reference), no metadata, and every id prefixed so that two figures on one
    page never resolve each other's clip paths or markers."""
    start, end = text.find("<svg"), text.rfind("</svg>")
    if start < 0 or end < 0:
        raise ValueError(f"not an SVG file (no <svg> element): {text[:60]!r}")
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", text[start:end + len("</svg>")], flags=re.S)
    return re.sub(r'(\bid="|url\(#|href="#)', lambda match: f"{match.group(1)}{prefix}-", svg)


def _figure_section(path: Path) -> str:
    """Which section shows a plot, from its name (benchmark.report.plots names them)."""
    if path.stem.startswith("accuracy_per_task"):
        return "per-task"
    if path.stem == "auc":
        return "tables"
    return "curves"


def figures(set_dir: Path, id_prefix: str = "fig", folder: str = "") -> dict[str, list[Figure]]:
    """Every plots/**/*.svg of the set as inline figures, by section, CNN before NME; each named
    relative to the experiment folder, or to its parent as `folder`/plots/... when `folder` is
    given (the comparison page)."""
    found: dict[str, list[Figure]] = {}
    paths = sorted((set_dir / PLOT_DIR).rglob("*.svg"),
                   key=lambda path: (path.parent.as_posix(), path.stem.endswith("_nme"), path.stem))
    for number, path in enumerate(paths):
        relative = path.relative_to(set_dir).as_posix()
        figure = Figure(inline_svg(path.read_text(encoding="utf-8"), f"{id_prefix}{number}"),
                        f"{folder}/{relative}" if folder else relative)
        found.setdefault(_figure_section(path), []).append(figure)
    return found


# ------------------------------------------------------------------------------ formatting

def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, (str, list, dict)) and bool(pd.isna(value)))


def _number(value: Any, digits: int) -> str:
    return "-" if _missing(value) else f"{float(value):.{digits}f}"


def _interval(half_width: Any, digits: int) -> str:
    return "-" if _missing(half_width) else f"±{half_width:.{digits}f}"


def _p_value(p: Any) -> str:
    if _missing(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _mark(tied: Any, p_holm: Any) -> str:
    """The printed summary's mark: BEST for the best, TIED in its group, none outside it, "-"
    where no comparison was possible."""
    return "-" if _missing(tied) else group_mark(tied, p_holm)


def _bytes(value: Any) -> str:
    return "-" if _missing(value) else f"{int(value):,}"


def _integer(value: Any) -> str:
    return "-" if _missing(value) else str(int(value))


def _budget(row: pd.Series) -> str:
    if _missing(row["budget_mb"]):
        return "no budget"
    label = "" if _missing(row.get("point_label")) else f" ({row['point_label']})"
    return f"{row['budget_mb']:.2f} MB{label}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _per_experiment(table: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """(caption, rows) per dataset / scenario / policy; no caption when the set has only one."""
    groups = list(table.groupby(EXPERIMENT_KEYS, dropna=False, sort=False))
    for (dataset, scenario, policy), rows in groups:
        yield ("" if len(groups) == 1 else f"{dataset} {scenario} ({policy} memory policy)"), rows


def _caption(where: str, what: str) -> str:
    return f"{where}: {what}" if where else what


# ------------------------------------------------------------------------------ sections

def experiment_file_section(experiment_file: dict | None, scrub) -> Section:
    section = Section("experiment-file", "Experiment file")
    if not experiment_file:
        section.blocks.append(Paragraph(
            "The experiment file was not recorded: this folder's grid.json is from before "
            "`run_all.py run` recorded it. Running `run_all.py run` on the file again records it "
            "(finished runs are not trained again)."))
        return section
    text = yaml.safe_dump(experiment_file.get("keys") or {}, sort_keys=False, allow_unicode=True)
    section.blocks += [Paragraph(f"{experiment_file.get('name', '?')}, with the files it includes "
                                 f"merged in, as `run_all.py run` read it:"), Code(scrub(text))]
    return section


PLAN_KEYS = ["method", "point", "point_label", "budget_mb", "backbone", "num_backbones",
             "model_bytes", "exemplars", "exemplar_bytes", "total_bytes"]


def plan_section(records: list[dict]) -> Section:
    """Each cell of the grid once, whatever its number of seeds: how its budget is spent."""
    cells = pd.DataFrame([(record.get("cell") or {})
                          | {axis: axis_value(record.get("cell") or {}, axis) for axis in AXIS_KEYS}
                          for record in records])
    cells = cells.reindex(columns=[*EXPERIMENT_KEYS, *PLAN_KEYS, *AXIS_KEYS, "seed"])
    cells["point"] = pd.to_numeric(cells["point"], errors="coerce")
    keys = [*EXPERIMENT_KEYS, *PLAN_KEYS, *AXIS_KEYS]
    seeds = cells.groupby(keys, dropna=False, sort=False)["seed"].agg(
        lambda values: ", ".join(str(int(seed)) for seed in sorted(set(values.dropna()))))
    plan = with_configuration(sorted_table(seeds.reset_index(), [*EXPERIMENT_KEYS, "method", "point"]))
    section = Section("plan", "Plan")
    section.blocks.append(Paragraph(
        "Each cell of the grid: how its memory budget is spent on the model (backbone x number "
        "of backbones) and on exemplars (MB = 2^20 bytes)."))
    for where, rows in _per_experiment(plan):
        section.blocks.append(Table(
            ["method", "point", "budget MB", "backbone x num", "model bytes", "exemplars",
             "exemplar bytes", "total bytes", "seeds"],
            [[row["configuration"], _point(row), _number(row["budget_mb"], 3),
              f"{row['backbone']} x {_integer(row['num_backbones'])}", _bytes(row["model_bytes"]),
              _integer(row["exemplars"]), _bytes(row["exemplar_bytes"]),
              _bytes(row["total_bytes"]), row["seed"]] for _, row in rows.iterrows()],
            caption=where))
    return section


def _point(row: pd.Series) -> str:
    if _missing(row["point"]):
        return "no budget"
    return f"{int(row['point'])}: {row['point_label']}"


def curves_section(figures_found: list[Figure]) -> Section:
    return Section("curves", "Accuracy against memory", [
        Paragraph("Mean over seeds; bands: ± std over seeds where there are several; ringed "
                  "points: the group of the best at that budget (paired t over shared class "
                  "orders, Holm, 95 %). Dashed: methods without a memory budget."),
        *figures_found])


SUMMARY_METRICS = {"average_accuracy": "Average incremental accuracy (%)",
                   "last_accuracy": "Last accuracy (%)"}


def _compared(table: pd.DataFrame, columns: list[str]) -> bool:
    """Whether any method was compared with the best (at least two seeds somewhere)."""
    return any(table[column].notna().any() for column in columns if column in table)


def summary_tables(summary: pd.DataFrame) -> list:
    """Per metric and experiment: mean ± std, and where seeds allow, the 95 % interval, the Holm
    p-value against the best and the mark of the group of the best, CNN and NME side by side."""
    blocks: list = []
    for metric, title in SUMMARY_METRICS.items():
        for where, rows in _per_experiment(summary):
            names = [f"{kind}_{metric}" for kind in KINDS]
            compared = _compared(rows, [f"{name}_tied_with_best" for name in names])
            per_kind = ["mean ± std", "±ci95", "p (Holm)", "group"] if compared else ["mean ± std"]
            table_rows = []
            for _, row in with_configuration(rows).iterrows():
                cells = [row["configuration"], _budget(row), _integer(row["n_seeds"])]
                for name in names:
                    cells.append(mean_std(row[f"{name}_mean"], row[f"{name}_std"], 1))
                    if compared:
                        cells += [_interval(row[f"{name}_ci95"], 1), _p_value(row[f"{name}_p_holm"]),
                                  _mark(row[f"{name}_tied_with_best"], row[f"{name}_p_holm"])]
                table_rows.append(cells)
            blocks.append(Table(["method", "budget", "seeds", *per_kind * len(KINDS)], table_rows,
                                caption=_caption(where, title),
                                groups=[("", 3), *((KIND_NAMES[kind], len(per_kind)) for kind in KINDS)]))
            blocks.append(Paragraph(GROUPS_LEGEND if compared else NO_COMPARISON))
    return blocks


def auc_tables(auc: pd.DataFrame) -> list:
    """Per experiment: AUC-A and AUC-L of the mean curve ± std, per method and accuracy kind, with
    their intervals and groups where seeds allow, the curve's extent and APM, and the notes."""
    blocks: list = []
    for where, rows in _per_experiment(auc):
        compared = _compared(rows, ["auc_average_tied_with_best", "auc_last_tied_with_best"])
        per_area = ["mean ± std", "±ci95", "p (Holm)", "group"] if compared else ["mean ± std"]
        table_rows = []
        for _, row in with_configuration(rows).iterrows():
            cells = [row["configuration"], KIND_NAMES.get(row["kind"], row["kind"])]
            for name in ("auc_average", "auc_last"):
                cells.append(mean_std(row[name], row[f"{name}_std"], 3))
                if compared:
                    cells += [_interval(row[f"{name}_ci95"], 3), _p_value(row[f"{name}_p_holm"]),
                              _mark(row[f"{name}_tied_with_best"], row[f"{name}_p_holm"])]
            cells += [_integer(row["n_points"]), _integer(row["n_seeds"]),
                      _number(row["apm_start"], 2), _number(row["apm_end"], 2),
                      "" if _missing(row["note"]) else str(row["note"])]
            table_rows.append(cells)
        blocks.append(Table(
            ["method", "kind", *per_area * 2, "points", "seeds", "APM first", "APM last", "note"],
            table_rows, caption=_caption(where, "Area under the accuracy-memory curve"),
            groups=[("", 2), ("AUC-A", len(per_area)), ("AUC-L", len(per_area)), ("", 5)]))
        blocks.append(Paragraph(GROUPS_LEGEND if compared else NO_COMPARISON))
    return blocks


def best_tables(summary: pd.DataFrame) -> list:
    """Per experiment with several configurations of a method: the best configuration at each
    budget point (the printed summary's "best at" lines); none without the budget axes."""
    if not has_variants(summary):
        return []
    blocks: list = []
    best = best_configurations(summary)
    for where, rows in _per_experiment(best):
        blocks.append(Table(
            ["budget", "best configuration", "CNN average accuracy (%)", "not told apart from it"],
            [[_budget(row), row["configuration"], _number(row["mean"], 1), row["tied"] or "-"]
             for _, row in rows.iterrows()],
            caption=_caption(where, "The best configuration at each budget point (highest mean "
                                    "CNN average incremental accuracy)")))
    return blocks


def tables_section(summary: pd.DataFrame, auc: pd.DataFrame, auc_figures: list[Figure]) -> Section:
    return Section("tables", "Tables and the group of the best", [
        *best_tables(summary), *summary_tables(summary),
        Paragraph("AUC: area under the mean accuracy-memory curve (accuracy fraction x MB); "
                  "APM: average accuracy per MB at the first and the last budget point."),
        *auc_tables(auc), *auc_figures])


def per_task_section(tasks: pd.DataFrame, task_figures: list[Figure]) -> Section:
    """The plots, then per accuracy kind one row per complete run and cell: accuracy on the classes
    seen after each task."""
    section = Section("per-task", "Accuracy after each task", [*task_figures])
    complete = tasks[tasks["status"] == "complete"]
    for kind in KINDS:
        for where, rows in _per_experiment(complete):
            seen = sorted(int(classes) for classes in rows["classes_seen"].dropna().unique())
            table_rows = []
            # tasks.csv is sorted by method, point, seed, run and task: one group per run and cell
            for _, run in rows.groupby(["run_id", "point"], dropna=False, sort=False):
                first = run.iloc[0]
                accuracy = dict(zip(run["classes_seen"], run[f"{kind}_accuracy"]))
                table_rows.append([_configuration(first), _budget(first), _integer(first["seed"]),
                                   *(_number(accuracy.get(classes), 1) for classes in seen)])
            section.blocks.append(Table(
                ["method", "budget", "seed", *map(str, seen)], table_rows,
                caption=_caption(where, f"{KIND_NAMES[kind]} accuracy (%) on the classes seen "
                                        f"after each task"),
                groups=[("", 3), ("classes seen", len(seen))]))
    return section


def _configuration(row: pd.Series) -> str:
    """A row's configuration label (the method alone for a table from before the axes)."""
    return configuration(row["method"], *(row.get(axis, default) for axis, default
                                          in zip(AXIS_KEYS, ("raw", "fp32"))))


def memory_section(runs: pd.DataFrame, tasks: pd.DataFrame,
                   records: list[dict] | None = None) -> Section:
    """Per run and cell: the largest memory audited after any of its tasks under the experiment's
    policy against the cell's budget; then, from the records, the real stored bytes (exemplars as
    encoded, model as stored) per configuration and budget point."""
    section = Section("memory", "Memory audit")
    rows, classes, within = [], [], 0
    for _, run in runs.iterrows():
        policy = run["policy"]
        own = tasks[(tasks["run_id"] == run["run_id"])
                    & ((tasks["point"] == run["point"]) | (tasks["point"].isna() & _missing(run["point"])))]
        audited = own[f"{policy}_total_bytes"].max() if f"{policy}_total_bytes" in own else None
        verdict, headroom = _verdict(run["budget_bytes"], audited)
        within += verdict == "yes"
        classes.append("over" if verdict.startswith("NO") else "")
        rows.append([_configuration(run), _budget(run), _integer(run["seed"]), str(run["run_id"]),
                     _integer(run["tasks_completed"]), _bytes(run["budget_bytes"]),
                     _bytes(run["planned_total_bytes"]), _bytes(audited), headroom, verdict])
    budgeted = int(runs["budget_bytes"].notna().sum())
    policies = ", ".join(sorted(set(runs["policy"].dropna().astype(str))))
    section.blocks += [
        Paragraph(f"{within} of {budgeted} run-cells with a budget stayed within it after every "
                  f"task ({policies} memory policy: model and exemplar bytes as audited after each "
                  f"task; the largest is shown)."),
        Table(["method", "budget", "seed", "run", "tasks", "budget bytes", "planned total bytes",
               "largest audited bytes", "headroom bytes", "within budget"], rows, row_classes=classes)]
    if records:
        section.blocks += stored_bytes_tables(records)
    return section


def stored_bytes(records: list[dict]) -> pd.DataFrame:
    """One row per complete record (run and cell): its configuration, budget point and the bytes
    audited after its last task under its policy: exemplars (as stored: encoded for JPEG), model
    (as stored: int8 weights and their scales, ...) and their total."""
    rows = []
    for record in records:
        tasks = record.get("tasks") or []
        if record.get("status") != "complete" or not tasks:
            continue
        cell = record.get("cell") or {}
        audit = (tasks[-1].get("memory") or {}).get(cell.get("policy")) or {}
        rows.append({**{key: cell.get(key) for key in [*EXPERIMENT_KEYS, "method", "point",
                                                       "point_label", "budget_mb", "seed"]},
                     **{axis: axis_value(cell, axis) for axis in AXIS_KEYS},
                     **{key: audit.get(key) for key in ("exemplar_bytes", "model_bytes",
                                                        "total_bytes")}})
    columns = [*EXPERIMENT_KEYS, "method", *AXIS_KEYS, "point", "point_label", "budget_mb",
               "seed", "exemplar_bytes", "model_bytes", "total_bytes"]
    table = pd.DataFrame(rows, columns=columns)
    for key in ("point", "budget_mb", "exemplar_bytes", "model_bytes", "total_bytes"):
        table[key] = pd.to_numeric(table[key], errors="coerce")
    return table


def stored_bytes_tables(records: list[dict]) -> list:
    """Per experiment: per configuration and budget point, the mean over seeds of stored_bytes."""
    table = stored_bytes(records)
    if table.empty:
        return []
    keys = [*EXPERIMENT_KEYS, "method", *AXIS_KEYS, "point", "point_label", "budget_mb"]
    means = table.groupby(keys, dropna=False, sort=False).agg(
        seeds=("seed", "nunique"), exemplar_bytes=("exemplar_bytes", "mean"),
        model_bytes=("model_bytes", "mean"), total_bytes=("total_bytes", "mean")).reset_index()
    means = with_configuration(sorted_table(means, [*EXPERIMENT_KEYS, "method", "point"]))
    blocks: list = []
    for where, rows in _per_experiment(means):
        blocks.append(Table(
            ["configuration", "budget", "seeds", "exemplar bytes", "model bytes", "total bytes"],
            [[row["configuration"], _budget(row), _integer(row["seeds"]),
              _bytes(_rounded(row["exemplar_bytes"])), _bytes(_rounded(row["model_bytes"])),
              _bytes(_rounded(row["total_bytes"]))] for _, row in rows.iterrows()],
            caption=_caption(where, "Stored bytes after the last task, as audited under the "
                                    "policy: exemplars as encoded, the model as stored (mean "
                                    "over seeds)")))
    return blocks


def _rounded(value: Any) -> Any:
    return value if _missing(value) else round(float(value))


def _verdict(budget: Any, audited: Any) -> tuple[str, str]:
    if _missing(audited):
        return "no task audited", "-"
    if _missing(budget):
        return "no budget", "-"
    headroom = int(budget) - int(audited)
    return ("yes" if headroom >= 0 else f"NO: over by {-headroom:,} bytes"), f"{headroom:,}"


def _by_run(records: Iterable[dict]) -> dict[str, dict]:
    """One record per run (a run that serves several cells is loaded once per cell)."""
    return {record["run_id"]: record for record in records}


def failed_section(runs: pd.DataFrame, records: list[dict], scrub) -> Section:
    section = Section("failed", "Failed runs")
    failed = runs[runs["status"] == "failed"]
    if failed.empty:
        section.blocks.append(Paragraph("No failed runs."))
        return section
    by_run = _by_run(records)
    rows, tracebacks = [], []
    for run_id, cells in failed.groupby("run_id", sort=False):
        first = cells.iloc[0]
        message = "" if _missing(first["error_message"]) else scrub(str(first["error_message"]))
        rows.append([str(run_id), _configuration(first), ", ".join(_budget(cell) for _, cell in cells.iterrows()),
                     _integer(first["seed"]), _integer(first["tasks_completed"]),
                     "" if _missing(first["error_type"]) else str(first["error_type"]), message])
        trace = ((by_run.get(run_id) or {}).get("error") or {}).get("traceback")
        if trace:
            tracebacks.append(Details(f"traceback of {run_id} ({_configuration(first)})", scrub(trace)))
    section.blocks += [
        Paragraph(f"{len(rows)} run(s) failed; `run_all.py run --retry-failed` runs them again. "
                  f"Their logs: runs/<run>/log.txt."),
        Table(["run", "method", "budget", "seed", "tasks done", "error", "message"], rows),
        *tracebacks]
    return section


def _device(origin: dict) -> str:
    device = str(origin.get("device") or "unknown").split(":")[0]
    name = origin.get("device_name")
    return f"{device} ({name})" if name else device


def cost_section(runs: pd.DataFrame, records: list[dict]) -> Section:
    """Train time and device-hours per method and in total, each run counted once."""
    by_run = _by_run(records)
    once = with_configuration(with_axes(runs.drop_duplicates("run_id")))
    rows = []
    groups = [*once.groupby("configuration", sort=False), ("total", once)]
    for method, group in groups:
        seconds = float(group["wall_seconds"].sum())  # NaN (no recorded time) counts as 0
        devices = Counter(_device((by_run.get(run_id) or {}).get("origin") or {})
                          for run_id in group["run_id"])
        rows.append([method, str(len(group)), str(int(group["wall_seconds"].isna().sum())),
                     _duration(seconds), f"{seconds / 3600:.2f}",
                     ", ".join(f"{device} x {count}" for device, count in devices.items())])
    return Section("cost", "Cost of the grid", [
        Paragraph("Each run's recorded wall time (its summary's wall_seconds), each run counted "
                  "once even where it serves several budget points. Device-hours count each run "
                  "as holding one device (a GPU, or one CPU worker) for its wall time. The shared "
                  "first-task models are trained apart, before the runs, and are not included."),
        Table(["method", "runs", "without time", "train time (h:mm:ss)", "device-hours",
               "devices (runs)"], rows, row_classes=[""] * (len(rows) - 1) + ["total"])])


def _recorded(key: str):
    """The origin's `key` as text: "none" where the record says None (no CUDA on a CPU run), None
    where the record does not have the key (written before it was kept)."""
    return lambda origin: (None if key not in origin else
                           "none" if origin[key] is None else str(origin[key]))


# What the provenance section lists, each from a record's origin (None: not recorded).
PROVENANCE = [("git commit", lambda o: _commit(o)), ("device", _device),
              ("torch", _recorded("torch")), ("CUDA", _recorded("cuda_version")),
              ("cuDNN", _recorded("cudnn_version")), ("python", _recorded("python")),
              ("numerics", lambda o: _numerics(o.get("numerics"))),
              ("numerics changed mid-run", lambda o: _numerics_changes(o))]


def _commit(origin: dict) -> str | None:
    sha = origin.get("git_sha")
    if not sha:
        return None
    dirty = origin.get("git_dirty")
    return f"{sha} ({'dirty: uncommitted changes' if dirty else 'clean' if dirty is False else 'dirty flag not recorded'})"


def _numerics(numerics: dict | None) -> str | None:
    return numerics_text(numerics) if numerics else None


def _numerics_changes(origin: dict) -> str | None:
    if "numerics_changes" not in origin:
        return None
    changes = origin.get("numerics_changes") or []
    return "; ".join(f"from task {change.get('task')}: {', '.join(change.get('changes') or [])}"
                     for change in changes) or "no"


def provenance_rows(records: list[dict], fields: Iterable[str] | None = None) -> list[list[str]]:
    """(field, value, runs): each distinct value with the number of runs it holds for."""
    origins = [record.get("origin") or {} for record in _by_run(records).values()]
    wanted = set(fields) if fields is not None else None
    rows = []
    for name, value_of in PROVENANCE:
        if wanted is not None and name not in wanted:
            continue
        counts = Counter(str(value) if (value := value_of(origin)) is not None else "not recorded"
                         for origin in origins)
        rows += [[name, value, str(count)] for value, count in counts.most_common()]
    return rows


def provenance_section(records: list[dict], scrub) -> Section:
    rows = [[name, scrub(value), count] for name, value, count in provenance_rows(records)]
    mixed = format_mixed_numerics(mixed_numerics(records))
    return Section("provenance", "Provenance", [
        Paragraph("Where the runs ran, from each record's origin: each distinct value with the "
                  "number of runs it holds for. Numerics: what sets the floats (CPU instruction "
                  "set, oneDNN and MKL versions, threads; on CUDA the card and TF32 settings)."),
        *([Paragraph(mixed.replace("\n  ", "; "))] if mixed else []),
        Table(["what", "value", "runs"], rows)])


def _rank_cell(column: str, value: Any) -> str:
    if _missing(value):
        return "-"
    if "p_value" in column or column.endswith("p_holm"):
        return _p_value(value)
    return _number(value, 2) if isinstance(value, float) else str(value)


def ranks_section(ranks: pd.DataFrame) -> Section:
    """ranks.csv as it is, numbers to 2 decimals."""
    rows = [[_rank_cell(column, value) for column, value in zip(ranks.columns, row)]
            for row in ranks.itertuples(index=False)]
    return Section("ranks", "Ranks across the curve", [
        Paragraph("Critical-difference mean ranks of the methods across the budget points "
                  f"({RANKS}; rank 1 is the best)."),
        Table([str(column) for column in ranks.columns], rows)])


def storage_cost_section(costs: pd.DataFrame) -> Section:
    """storage_cost.csv: per configuration, budget and probed dtype, the fp32 run's accuracy, the
    same run with its frozen blocks converted, and the run trained with that storage."""
    names = [("fp32", False), ("converted", False), ("conversion_cost", True), ("trained", False),
             ("trained_gain", True)]
    rows = []
    for _, row in costs.iterrows():
        cells = [configuration(row["method"], row["exemplar_format"]), _budget(row),
                 str(row["probe_storage"]), _integer(row["tasks_probed"]), _integer(row["n_seeds"])]
        for kind in KINDS:
            cells += [_signed(row[f"{kind}_{name}"]) if sign else _number(row[f"{kind}_{name}"], 2)
                      for name, sign in names]
        rows.append(cells)
    per_kind = ["fp32", "converted", "cost", "trained", "gain"]
    return Section("storage-cost", "Cost of the stored precision", [
        Paragraph(f"{STORAGE_COST}: {STORAGE_COST_LEGEND}"),
        Table(["configuration", "budget", "converted to", "tasks", "seeds", *per_kind * len(KINDS)],
              rows, groups=[("", 5), *((KIND_NAMES[kind], len(per_kind)) for kind in KINDS)])])


def _signed(value: Any) -> str:
    return "-" if _missing(value) else f"{float(value):+.2f}"


# ------------------------------------------------------------------------------ the page

def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _read(set_dir: Path, name: str) -> pd.DataFrame | None:
    path = set_dir / name
    return pd.read_csv(path) if path.is_file() else None


def experiment_sections(set_dir: Path, experiment_dir: Path, records: list[dict],
                        experiment_file: dict | None) -> list[Section]:
    """The sections of one experiment's page, in their order, from the set in `set_dir`."""
    scrub = partial(scrub_paths, experiment_dir=experiment_dir)
    runs, tasks = _read(set_dir, "runs.csv"), _read(set_dir, "tasks.csv")
    summary, auc, ranks = _read(set_dir, "summary.csv"), _read(set_dir, "auc.csv"), _read(set_dir, RANKS)
    costs = _read(set_dir, STORAGE_COST)
    found = figures(set_dir)
    sections = [experiment_file_section(experiment_file, scrub), plan_section(records),
                curves_section(found.get("curves", [])),
                tables_section(summary, auc, found.get("tables", []))]
    if ranks is not None:
        sections.append(ranks_section(ranks))
    if costs is not None:
        sections.append(storage_cost_section(costs))
    sections += [per_task_section(tasks, found.get("per-task", [])),
                 memory_section(runs, tasks, records),
                 failed_section(runs, records, scrub), cost_section(runs, records),
                 provenance_section(records, scrub)]
    return sections


def render_page(set_dir: Path, experiment_dir: Path, records: list[dict],
                experiment_file: dict | None) -> str:
    """report.html's text for the finished set in `set_dir` (the CSVs and plots/ of the
    experiment in `experiment_dir`; a staging folder while the report builds it)."""
    runs = _read(set_dir, "runs.csv")
    once = runs.drop_duplicates("run_id") if runs is not None else pd.DataFrame(columns=["status"])
    counts = Counter(once["status"])
    return environment().get_template("page.html.j2").render(
        title=experiment_dir.name,
        subtitle=(f"{counts['complete']} complete, {counts['failed']} failed run(s); "
                  f"{', '.join(_scenarios(runs))}"),
        sections=experiment_sections(set_dir, experiment_dir, records, experiment_file))


def _scenarios(table: pd.DataFrame | None) -> list[str]:
    if table is None or table.empty:
        return []
    return [f"{dataset} {scenario} ({policy} memory policy)" for dataset, scenario, policy
            in table[EXPERIMENT_KEYS].drop_duplicates().itertuples(index=False)]


def write_page(set_dir: Path, experiment_dir: Path, records: list[dict],
               experiment_file: dict | None) -> Path:
    """Write `set_dir`/report.html (see render_page); returns its path."""
    path = Path(set_dir) / PAGE
    path.write_text(render_page(Path(set_dir), Path(experiment_dir), records, experiment_file),
                    encoding="utf-8")
    return path

