"""The report of an experiment with the budget axes: icarl in two exemplar formats (raw, jpeg:50),
der stored in fp32 and int8 (its fp32 runs probe int8), finetune ("-", not applicable, on both axes), at two budget
points x two seeds. Every expected number is worked out by hand below: the configuration labels,
the summary rows, the best configuration at each point, the storage cost, the panels of the
figures, the ranks; and records without the axis keys report as raw / fp32. Nothing trains."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from benchmark.report import columns
from benchmark.report.columns import configuration
from benchmark.report.plots import _memory_figure
from benchmark.report.ranks import ranks_table
from benchmark.report.storage_cost import format_storage_cost, storage_cost_table
from benchmark.report.tables import best_lines, format_summary, runs_table, summary_table
from benchmark.report.writer import write_report
from test_report import _write, grid_records, make_record
from test_report_page import Page

SEEDS = (1993, 1994)
POINTS = ((0, "conv2", 8.0), (1, "resnet14", 12.0))
# (method, exemplar_format, model_storage) -> CNN average accuracy per point, per seed
AVERAGE = {
    ("finetune", "-", "-"): ((30.0, 33.0), (30.0, 33.0)),
    ("icarl", "raw", "-"): ((50.0, 52.0), (60.0, 62.0)),
    ("icarl", "jpeg:50", "-"): ((57.0, 59.0), (61.0, 64.0)),
    ("der", "raw", "fp32"): ((56.0, 57.0), (66.0, 66.0)),
    ("der", "raw", "int8"): ((55.0, 59.0), (65.0, 68.0)),
}
DROP = 10.0                                  # last accuracy = average - 10
PROBE_LOSS = {1993: 0.5, 1994: 1.5}         # int8 conversion: CNN points lost after tasks 1, 2
INT8_BYTES = {"model_bytes": 500_000, "exemplar_bytes": 7_000_000, "total_bytes": 7_500_000}


def axis_records(probe: bool = True) -> list[dict]:
    records = []
    for (method, fmt, storage), per_point in AVERAGE.items():
        for (point, label, budget), averages in zip(POINTS, per_point):
            for seed, average in zip(SEEDS, averages):
                name = "-".join("na" if part == "-" else part.replace(":", "") for part in (method, fmt, storage))
                run_id = f"{name}-p{point}-s{seed}"
                record = make_record(run_id, method, seed, point, label, budget, average,
                                     average - DROP, 10.0)
                record["cell"] |= {"exemplar_format": fmt, "model_storage": storage}
                for task in record["tasks"]:
                    if storage == "int8":
                        task["memory"]["paper"] = dict(INT8_BYTES)
                    if probe and storage == "fp32" and task["task"] > 0:  # blocks frozen after task 0
                        task["storage_probe"] = {"int8": {
                            "cnn_accuracy": task["cnn_accuracy"] - PROBE_LOSS[seed],
                            "nme_accuracy": task["nme_accuracy"] - 1.0}}
                records.append(record)
    return records


@pytest.fixture
def runs() -> pd.DataFrame:
    return runs_table(axis_records())


def test_configuration_labels():
    assert configuration("icarl") == "icarl"
    assert configuration("icarl", "jpeg:50", "-") == "icarl jpeg:50"
    assert configuration("der", "raw", "int8") == "der int8"
    assert configuration("der", "jpeg:50", "fp16") == "der jpeg:50 fp16"
    assert configuration("finetune", "-", "-") == "finetune"
    labels = ["der int8", "icarl jpeg:50", "der", "finetune", "der fp16", "icarl"]
    assert sorted(labels, key=columns.configuration_rank) == [
        "finetune", "icarl", "icarl jpeg:50", "der", "der fp16", "der int8"]


def test_runs_and_tasks_carry_the_axes(runs):
    row = runs.set_index("run_id").loc["icarl-jpeg50-na-p0-s1993"]
    assert (row["method"], row["exemplar_format"], row["model_storage"]) == ("icarl", "jpeg:50", "-")
    assert list(runs.columns[3:6]) == ["method", "exemplar_format", "model_storage"]


def test_summary_has_one_row_per_configuration_and_point(runs):
    summary = summary_table(runs)
    keys = list(zip(summary["method"], summary["exemplar_format"], summary["model_storage"],
                    summary["point"]))
    assert keys == [("finetune", "-", "-", 0), ("finetune", "-", "-", 1),
                    ("icarl", "raw", "-", 0), ("icarl", "raw", "-", 1),
                    ("icarl", "jpeg:50", "-", 0), ("icarl", "jpeg:50", "-", 1),
                    ("der", "raw", "fp32", 0), ("der", "raw", "fp32", 1),
                    ("der", "raw", "int8", 0), ("der", "raw", "int8", 1)]
    assert summary["cnn_average_accuracy_mean"].tolist() == [31.5, 31.5, 51.0, 61.0, 58.0, 62.5,
                                                             56.5, 66.0, 57.0, 66.5]
    assert (summary["n_seeds"] == 2).all()
    # at 8 MB icarl jpeg:50 is the best (no p-value); icarl raw is 7 points below on both seeds
    jpeg, raw = summary.iloc[4], summary.iloc[2]
    assert pd.isna(jpeg["cnn_average_accuracy_p_holm"]) and jpeg["cnn_average_accuracy_tied_with_best"]
    assert raw["cnn_average_accuracy_p_holm"] == 0.0 and not raw["cnn_average_accuracy_tied_with_best"]


def test_best_configuration_at_each_point(runs):
    # 8 MB: icarl jpeg:50 58.0; paired t vs it (Holm over 4): icarl (-7, -7) p 0; finetune
    # (-27, -26) p 0.012 x 3 = 0.036; der (-1, -2) p 0.205 x 2 = 0.41; der int8 (-2, 0) p 0.5.
    # 12 MB: der int8 66.5; icarl jpeg:50 (-4, -4) p 0; finetune (-35, -35) p 0; icarl (-5, -6)
    # p 0.058 x 2 = 0.115; der (+1, -2) p 0.795.
    assert best_lines(summary_table(runs)) == [
        "best at 8.00 MB: icarl jpeg:50 (CNN avg 58.0); not told apart from it: der, der int8",
        "best at 12.00 MB: der int8 (CNN avg 66.5); not told apart from it: icarl, der"]


def test_printed_summary_rows_are_configurations(runs):
    printed = format_summary(summary_table(runs))
    rows = [re.split(r"\s{2,}", line.strip())[0] for line in printed.splitlines()[3:8]]
    assert rows == ["finetune", "icarl", "icarl jpeg:50", "der", "der int8"]
    assert printed.splitlines()[5].split("  ")[0] == "icarl jpeg:50"
    assert printed.endswith("best at 12.00 MB: der int8 (CNN avg 66.5); not told apart from it: "
                            "icarl, der")


def test_storage_cost_separates_the_precision_from_the_exemplars():
    costs = storage_cost_table(axis_records())
    assert len(costs) == 2 and list(costs.columns) == columns.STORAGE_COST_COLUMNS
    first = costs.iloc[0]
    assert (first["method"], first["exemplar_format"], first["point"], first["probe_storage"],
            first["tasks_probed"], first["n_seeds"], first["n_trained_seeds"]) == (
        "der", "raw", 0, "int8", 2, 2, 2)
    # tasks 1 and 2 of a run of average a and last a - 10: mean a - 5. der fp32 at 8 MB: a = 56,
    # 57 -> 51.5; converted: 0.5 and 1.5 lower -> 50.5, cost -1.0; der int8: a = 55, 59 -> 52.0,
    # gain mean(50 - 51, 54 - 52) = +0.5. NME: 1 lower, converted 1 lower still.
    assert [first[name] for name in ("cnn_fp32", "cnn_converted", "cnn_conversion_cost",
                                     "cnn_trained", "cnn_trained_gain")] == [51.5, 50.5, -1.0, 52.0, 0.5]
    assert [first[name] for name in ("nme_fp32", "nme_converted", "nme_conversion_cost",
                                     "nme_trained", "nme_trained_gain")] == [50.5, 49.5, -1.0, 51.0, 0.5]
    # 12 MB: der fp32 66, 66 -> 61.0; int8 65, 68 -> 61.5, gain mean(-1, +2) = +0.5
    assert costs.iloc[1][["cnn_fp32", "cnn_converted", "cnn_trained", "cnn_trained_gain"]].tolist() == [
        61.0, 60.0, 61.5, 0.5]
    lines = format_storage_cost(costs).splitlines()
    assert re.split(r"\s{2,}", lines[-2].strip()) == [
        "der at 8.00 MB -> int8", "2", "2", "51.50", "50.50", "-1.00", "52.00", "+0.50",
        "50.50", "49.50", "-1.00", "51.00", "+0.50"]


def test_no_probe_no_storage_cost():
    assert storage_cost_table(axis_records(probe=False)).empty


def test_small_multiples_one_panel_per_method_with_variants(runs):
    figure = _memory_figure(summary_table(runs), "cnn_average_accuracy", "%", "B0Inc10")
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["icarl", "der"]
    icarl, der = panels
    # own configurations first (full), then the others' plain one (faded): finetune, der / icarl
    assert [line.get_label() for line in icarl.get_lines()] == [
        "icarl", "icarl jpeg:50", "finetune", "_nolegend_"]
    assert [line.get_label() for line in der.get_lines()] == [
        "der", "der int8", "finetune", "_nolegend_"]
    styles = [(line.get_linestyle(), line.get_marker()) for line in icarl.get_lines()[:2]]
    assert styles == [("-", "o"), ("--", "s")]
    assert [line.get_alpha() for line in der.get_lines()] == [None, None, 0.45, 0.45]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    # one entry each, across the panels; der's plain curve is named once, in its own panel
    assert legend == ["icarl", "group of the best (paired t, Holm, 95 %)", "icarl jpeg:50",
                      "finetune", "der", "der int8"]


def test_without_variants_one_panel_as_before():
    summary = summary_table(runs_table(grid_records()))
    figure = _memory_figure(summary, "cnn_average_accuracy", "%", "B0Inc10")
    assert len(figure.axes) == 1
    assert [line.get_label() for line in figure.axes[0].get_lines()] == [
        "replay", "der", "memo", "joint (upper bound)"]


def test_old_records_report_as_raw_fp32():
    runs = runs_table(grid_records())  # written before the axes: no keys in their cells
    assert set(runs["exemplar_format"]) == {"raw"} and set(runs["model_storage"]) == {"fp32"}
    summary = summary_table(runs)
    assert "best at" not in format_summary(summary)
    assert best_lines(summary)[0] == ("best at 8.00 MB: replay (CNN avg 61.0); not told apart "
                                      "from it: memo")


def test_ranks_are_of_configurations():
    # a third point (a copy of the second at 20 MB) gives 3 points x 2 seeds = 6 blocks
    records = axis_records(probe=False)
    for record in [r for r in records if r["cell"]["point"] == 1]:
        copy = json.loads(json.dumps(record))
        copy["run_id"] += "-copy"
        copy["cell"] |= {"point": 2, "point_label": "resnet20", "budget_mb": 20.0}
        records.append(copy)
    ranks, reasons = ranks_table(runs_table(records))
    cnn = ranks[ranks["metric"] == "cnn_average_accuracy"]
    assert set(zip(cnn["method"], cnn["exemplar_format"], cnn["model_storage"])) == {
        ("finetune", "-", "-"), ("icarl", "raw", "-"), ("icarl", "jpeg:50", "-"),
        ("der", "raw", "fp32"), ("der", "raw", "int8")}
    assert cnn["blocks"].tolist() == [6] * 5
    # finetune is last in every block: rank 5
    assert cnn.iloc[-1][["method", "mean_rank"]].tolist() == ["finetune", 5.0]


def test_write_report_with_the_axes(tmp_path, capsys):
    for record in axis_records():
        _write(tmp_path, record)
    with pytest.warns(UserWarning, match="grid.json"):
        paths = write_report(tmp_path)
    assert "storage_cost.csv" in paths
    for name in ("runs.csv", "tasks.csv", "summary.csv", "auc.csv", "storage_cost.csv"):
        assert list(pd.read_csv(tmp_path / name).columns) == columns.CSV_COLUMNS[name], name
    auc = pd.read_csv(tmp_path / "auc.csv", keep_default_na=False)
    assert list(zip(auc["method"], auc["exemplar_format"], auc["model_storage"]))[::2] == [
        ("finetune", "-", "-"), ("icarl", "raw", "-"), ("icarl", "jpeg:50", "-"),
        ("der", "raw", "fp32"), ("der", "raw", "int8")]
    printed = capsys.readouterr().out
    assert "best at 8.00 MB: icarl jpeg:50 (CNN avg 58.0)" in printed
    assert "cost of storing frozen blocks at a lower precision (storage_cost.csv)" in printed
    svg = (tmp_path / "plots" / "accuracy_vs_memory_average.svg").read_text()
    assert svg.count('id="axes_') == 2  # two panels: icarl, der
    page = Page((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert "storage-cost" in page.order
    assert page.row("storage-cost", 0, ["der", "8.00 MB (conv2)", "int8"])[3:10] == [
        "2", "2", "51.50", "50.50", "-1.00", "52.00", "+0.50"]
    assert page.row("tables", 0, ["8.00 MB (conv2)"]) == [
        "8.00 MB (conv2)", "icarl jpeg:50", "58.0", "der, der int8"]
    # the real stored bytes per configuration: der int8's model 500,000 bytes, exemplars 7,000,000
    assert page.row("memory", 1, ["der int8", "8.00 MB (conv2)"]) == [
        "der int8", "8.00 MB (conv2)", "2", "7,000,000", "500,000", "7,500,000"]
    assert math.isclose(pd.read_csv(tmp_path / "storage_cost.csv")["cnn_conversion_cost"][0], -1.0)
