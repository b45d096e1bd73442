"""One page comparing several experiments (`run_all.py report DIR DIR ...`), written after each
folder's own report: per experiment its name, scenarios, where it ran (devices, numerics), its AUC
table and its accuracy-vs-memory figure; first, one table of every method across the experiments
(CNN AUC-A and average accuracy at each budget point).

Like report.html it is one self-contained file with no path of the machine: each folder's files
are named `<experiment>/plots/...`. Every number is read from the folders' finished CSVs.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd

from benchmark.files import write_atomic
from benchmark.report.columns import EXPERIMENT_KEYS, configuration_rank, configurations
from benchmark.report.page import (Paragraph, Section, Table, auc_tables, environment, figures,
                                   provenance_rows, scrub_paths)
from benchmark.report.tables import mean_std
from benchmark.report.spread import numerical_spread, seed_spread, shared_runs
from benchmark.report.writer import load_records

COMPARED_FIGURE = "accuracy_vs_memory_average.svg"  # the CNN curve: one figure per experiment


def default_page_path(folders: list[Path]) -> Path:
    """`<parent of the first folder>/compare_<name1>_<name2>[...].html`."""
    return folders[0].parent / f"compare_{'_'.join(folder.name for folder in folders)}.html"


def _read(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / name
    return pd.read_csv(path) if path.is_file() else None


def _budget_column(budget_mb) -> str:
    return "no budget" if pd.isna(budget_mb) else f"{budget_mb:.2f} MB"


def _columns_of(name: str, auc: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, str, dict]]:
    """(group label, column label, {configuration: cell}) per column this experiment adds to the
    combined table: one group per dataset / scenario / policy it holds."""
    columns = []
    # a method with its exemplar format and stored precision is a row of its own
    auc = auc.assign(method=configurations(auc))
    summary = summary.assign(method=configurations(summary))
    groups = list(summary.groupby(EXPERIMENT_KEYS, dropna=False, sort=False))
    for keys, rows in groups:
        label = name if len(groups) == 1 else f"{name}: {' '.join(map(str, keys))}"
        cnn = auc[(auc[EXPERIMENT_KEYS] == list(keys)).all(axis=1) & (auc["kind"] == "cnn")]
        columns.append((label, "AUC-A", {row["method"]: mean_std(
            row["auc_average"], row["auc_average_ci95"], 3) for _, row in cnn.iterrows()}))
        for budget, at_budget in rows.sort_values("budget_mb", na_position="last").groupby(
                "budget_mb", dropna=False, sort=False):
            columns.append((label, _budget_column(budget), {row["method"]: mean_std(
                row["cnn_average_accuracy_mean"], row["cnn_average_accuracy_ci95"], 1)
                for _, row in at_budget.iterrows()}))
    return columns


def combined_section(experiments: list[tuple[str, pd.DataFrame | None, pd.DataFrame | None]]) -> Section:
    """Methods as rows; per experiment its CNN AUC-A and CNN average accuracy per budget point."""
    columns = [column for name, auc, summary in experiments if summary is not None
               for column in _columns_of(name, auc, summary)]
    methods = sorted({method for _, _, cells in columns for method in cells}, key=configuration_rank)
    groups: list[tuple[str, int]] = [("", 1)]
    for label, _, _ in columns:
        if groups[-1][0] == label:
            groups[-1] = (label, groups[-1][1] + 1)
        else:
            groups.append((label, 1))
    return Section("combined", "Methods across the experiments", [
        Paragraph("CNN accuracy: AUC-A (accuracy fraction x MB) and average incremental accuracy "
                  "(%) at each budget point, mean ± 95 % interval over seeds where there are "
                  "several, the mean alone with one seed."),
        Table(["method", *(label for _, label, _ in columns)],
              [[method, *(cells.get(method, "") for _, _, cells in columns)] for method in methods],
              groups=groups)])


def _spread_pairs(folders: list[Path]) -> list[tuple[Path, pd.DataFrame]]:
    """For every folder after the first: the runs it shares with the first (shared_runs)."""
    first = _read(folders[0], "runs.csv")
    pairs = []
    for folder in folders[1:]:
        other = _read(folder, "runs.csv")
        if first is not None and other is not None:
            pairs.append((folder, shared_runs(first, other)))
    return pairs


def _seed_spread_text(folder: Path) -> str:
    summary = _read(folder, "summary.csv")
    spread = math.nan if summary is None else seed_spread(summary)
    return (f"{folder.name}: one seed per cell, no spread over seeds" if math.isnan(spread) else
            f"{folder.name}: std over seeds of a cell {spread:.2f} points (root mean square over its cells)")


def spread_lines(folders: list[Path]) -> list[str]:
    """The printed comparison of the runs each folder shares with the first (CNN average
    accuracy), beside each folder's spread over seeds; [] when no folder shares a run."""
    lines = []
    for folder, pairs in _spread_pairs(folders):
        if len(pairs):
            lines.append(f"same runs in {folders[0].name} and {folder.name} (CNN average accuracy, "
                         f"{folder.name} - {folders[0].name}): {numerical_spread(pairs).line()}")
    if lines:
        lines += [_seed_spread_text(folder) for folder in folders]
    return lines


def spread_section(folders: list[Path]) -> Section | None:
    """The runs each folder shares with the first, run for run: how far the same run moves when
    only where (and how) it ran changes, beside the spread over seeds. None when none is shared."""
    blocks = []
    for folder, pairs in _spread_pairs(folders):
        if pairs.empty:
            continue
        blocks.append(Paragraph(f"{folder.name} - {folders[0].name}: {numerical_spread(pairs).line()}."))
        pairs = pairs.assign(method=configurations(pairs))
        rows = [[row.method, "-" if pd.isna(row.point) else str(int(row.point)), str(int(row.seed)),
                 f"{row.a:.2f}", f"{row.b:.2f}", f"{row.difference:+.2f}"]
                for row in pairs.sort_values(["point", "method", "seed"], key=_order).itertuples()]
        blocks.append(Table(["method", "point", "seed", folders[0].name, folder.name, "difference"], rows,
                            caption=f"CNN average accuracy (%), the same runs in {folders[0].name} and {folder.name}"))
    if not blocks:
        return None
    return Section("same-runs", "The same runs in several experiments", [
        Paragraph("A run (dataset, scenario, policy, method, budget point, seed, with the same "
                  "backbones and exemplars) found in the first experiment and another: its CNN "
                  "average accuracy in both. When the experiments differ only in what sets the "
                  "floats (threads, CPU, libraries, card), the differences are the numerical "
                  "spread; a difference between methods smaller than both it and the spread over "
                  "seeds is not a ranking. " + " ".join(_seed_spread_text(folder) + "." for folder in folders)),
        *blocks])


def _order(column: pd.Series) -> pd.Series:
    return column.map(configuration_rank) if column.name == "method" else column


def experiment_section(number: int, folder: Path, page_dir: Path) -> Section:
    section = Section(f"experiment-{number}", folder.name)
    summary, auc = _read(folder, "summary.csv"), _read(folder, "auc.csv")
    runs = _read(folder, "runs.csv")
    scenarios = ("" if summary is None else ", ".join(
        f"{dataset} {scenario} ({policy} memory policy)" for dataset, scenario, policy
        in summary[EXPERIMENT_KEYS].drop_duplicates().itertuples(index=False)))
    once = runs.drop_duplicates("run_id") if runs is not None else pd.DataFrame(columns=["status"])
    section.blocks.append(Paragraph(
        f"{scenarios or 'no complete run'}; {int((once['status'] == 'complete').sum())} complete, "
        f"{int((once['status'] == 'failed').sum())} failed run(s); its own page: "
        f"{folder.name}/report.html."))
    with warnings.catch_warnings():  # its own report has just said what these warnings say
        warnings.simplefilter("ignore")
        records = load_records(folder)
    section.blocks.append(Table(["what", "value", "runs"], [
        [name, scrub_paths(value, page_dir), count]
        for name, value, count in provenance_rows(records, ["device", "numerics"])],
        caption="Where it ran"))
    if auc is not None:
        section.blocks += auc_tables(auc)
    curves = figures(folder, id_prefix=f"e{number}-fig", folder=folder.name).get("curves", [])
    section.blocks += [figure for figure in curves if figure.caption.endswith(f"/{COMPARED_FIGURE}")]
    return section


def render_comparison(folders: list[Path], page_dir: Path) -> str:
    """The comparison page's text; `folders` hold finished reports."""
    experiments = [(folder.name, _read(folder, "auc.csv"), _read(folder, "summary.csv"))
                   for folder in folders]
    same = spread_section(folders)
    sections = [combined_section(experiments), *([same] if same else []),
                *(experiment_section(number, folder, page_dir) for number, folder in enumerate(folders))]
    return environment().get_template("page.html.j2").render(
        title=f"Comparison: {', '.join(folder.name for folder in folders)}",
        subtitle=f"{len(folders)} experiments, each also on its own page (<experiment>/report.html)",
        sections=sections)


def write_comparison(folders: list[Path], page: Path) -> Path:
    """Write the comparison page of `folders` (each with its report written) to `page`, whole or
    not at all."""
    folders, page = [Path(folder) for folder in folders], Path(page)
    text = render_comparison(folders, page.resolve().parent)
    write_atomic(page, lambda file: file.write(text.encode("utf-8")))
    return page

