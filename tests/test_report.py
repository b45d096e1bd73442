"""The report on a synthetic experiment: 3 methods x 3 budget points x 2 seeds, plus joint, one
failed run and one malformed record. Expected numbers are worked out by hand below. Then: the
current grid (grid.json), damaged records, the report set replaced as a whole, the printed CNN/NME
summary, docs/results.md against the schema, and imports without cycles."""
from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from benchmark.report import columns
from benchmark.report.writer import GRID_FILE, load_records, write_report
from benchmark.report.tables import (auc_table, format_auc, format_summary, runs_table, summary_table,
                              tasks_table)
from budgets.accounting import MB

REPO = Path(__file__).resolve().parents[1]
SEEDS = (1993, 1994)
POINTS = ((0, "conv2", 8.0), (1, "resnet14", 12.0), (2, "resnet20", 20.0))  # uneven spacing
# CNN average accuracy (%) per method, per point, per seed (seed 1993, seed 1994).
AVERAGE = {
    "replay": ((60.0, 62.0), (64.0, 65.0), (68.0, 72.0)),
    "der": ((55.0, 57.0), (66.0, 70.0), (74.0, 75.0)),
    "memo": ((58.0, 61.0), (67.0, 68.0), (73.0, 77.0)),
}
LAST_DROP = {1993: 12.0, 1994: 10.0}  # last accuracy = average - drop
NME_OFFSET = -1.0                      # NME accuracy = CNN accuracy - 1
N_TASKS = 3


def _task(index: int, average: float, last: float, paper_bytes: int) -> dict:
    # Task accuracies chosen so that their mean is `average` and the final one is `last`.
    accuracy = [2 * average - last, average, last][index]
    return {
        "task": index, "classes_seen": 10 * (index + 1),
        "cnn_accuracy": accuracy, "nme_accuracy": accuracy + NME_OFFSET,
        "cnn_accuracy_per_task": [accuracy] * (index + 1),
        "nme_accuracy_per_task": [accuracy + NME_OFFSET] * (index + 1),
        "exemplars_stored": 2000,
        "memory": {"paper": {"model_bytes": paper_bytes - 6144000, "exemplar_bytes": 6144000,
                             "total_bytes": paper_bytes},
                   "strict": {"model_bytes": paper_bytes - 6144000 + 4096,
                              "exemplar_bytes": 6144000, "total_bytes": paper_bytes + 4096}},
        "train_seconds": 10.0 + index, "eval_seconds": 1.0,
    }


def make_record(run_id: str, method: str, seed: int, point: int | None, label: str | None,
                budget_mb: float | None, average: float, last: float, forgetting: float,
                status: str = "complete", n_tasks: int = N_TASKS) -> dict:
    """A run record in the engine's schema."""
    budget_bytes = None if budget_mb is None else int(budget_mb * MB)
    paper_bytes = budget_bytes or 30 * MB
    failed = status == "failed"
    summary = None if failed else {
        "cnn_average_accuracy": average, "cnn_last_accuracy": last, "cnn_forgetting": forgetting,
        "nme_average_accuracy": average + NME_OFFSET, "nme_last_accuracy": last + NME_OFFSET,
        "nme_forgetting": forgetting + 1.0, "wall_seconds": 100.0 + seed % 10}
    return {
        "run_id": run_id, "status": status, "experiment": "cifar100_b0inc10_paper",
        "cell": {"method": method, "seed": seed, "dataset": "cifar100", "scenario": "B0Inc10",
                 "point": point, "point_label": label, "budget_mb": budget_mb,
                 "budget_bytes": budget_bytes, "backbone": label or "resnet32",
                 "num_backbones": 3 if method in ("der", "memo") else 1, "exemplars": 2000,
                 "model_params": 463504, "model_bytes": 1854016, "exemplar_bytes": 6144000,
                 "total_bytes": budget_bytes, "policy": "paper"},
        "config": {"method": method, "seed": seed},
        "origin": {"git_sha": "abc123", "git_dirty": False, "torch": "2.14.1", "device": "cpu",
                   "python": "3.11.7", "hostname": "test"},
        "tasks": [_task(i, average, last, paper_bytes) for i in range(n_tasks)],
        "summary": summary,
        "error": {"type": "RuntimeError", "message": "CUDA out of memory",
                  "traceback": "..."} if failed else None,
    }


def _write(experiment: Path, record: dict) -> None:
    folder = experiment / "runs" / record["run_id"]
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))
    (folder / "train.log").write_text("a log file the report must ignore\n")


def grid_records() -> list[dict]:
    records = []
    for method, per_point in AVERAGE.items():
        for (point, label, budget), averages in zip(POINTS, per_point):
            for seed, average in zip(SEEDS, averages):
                records.append(make_record(f"{method}-p{point}-s{seed}", method, seed, point,
                                           label, budget, average, average - LAST_DROP[seed],
                                           20.0 + point))
    records.append(make_record("joint-s1993", "joint", 1993, None, None, None, 80.0, 75.0, 5.0))
    records.append(make_record("replay-p1-s1995", "replay", 1995, 1, "resnet14", 12.0, 10.0, 5.0,
                               50.0, status="failed", n_tasks=1))
    return records


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    for record in grid_records():
        _write(tmp_path, record)
    (tmp_path / "runs" / "deadbeef").mkdir()
    (tmp_path / "runs" / "deadbeef" / "record.json").write_text('{"run_id": "deadbeef", ')
    return tmp_path


@pytest.fixture
def runs() -> pd.DataFrame:
    return runs_table(grid_records())


def test_load_records_skips_malformed_with_warning(experiment):
    with pytest.warns(UserWarning, match="deadbeef"):
        records = load_records(experiment)
    assert len(records) == 3 * 3 * 2 + 2


def test_runs_table_rows_and_columns(runs):
    assert len(runs) == 20 and runs["run_id"].is_unique
    expected = {"run_id", "status", "method", "dataset", "scenario", "point", "point_label",
                "budget_mb", "seed", "backbone", "num_backbones", "exemplars", "model_params",
                "policy", "planned_total_bytes", "paper_total_bytes", "strict_total_bytes",
                "paper_total_mb", "strict_total_mb", "cnn_average_accuracy", "cnn_last_accuracy",
                "cnn_forgetting", "nme_average_accuracy", "nme_last_accuracy", "nme_forgetting",
                "wall_seconds", "git_sha", "git_dirty", "torch", "device", "error_type"}
    assert expected <= set(runs.columns)
    replay = runs.set_index("run_id").loc["replay-p1-s1994"]
    assert replay["paper_total_bytes"] == int(12.0 * MB)
    assert replay["paper_total_mb"] == pytest.approx(12.0)
    assert replay["strict_total_bytes"] == int(12.0 * MB) + 4096
    assert replay["cnn_last_accuracy"] == 55.0 and replay["nme_average_accuracy"] == 64.0
    assert replay["error_type"] == ""
    # methods in the paper's order, not alphabetical
    assert list(dict.fromkeys(runs["method"])) == ["replay", "der", "memo", "joint"]


def test_failed_run_has_error_and_no_summary(runs):
    failed = runs[runs["status"] == "failed"]
    assert list(failed["run_id"]) == ["replay-p1-s1995"]
    assert failed["error_type"].iloc[0] == "RuntimeError"
    assert failed["tasks_completed"].iloc[0] == 1
    assert failed["cnn_average_accuracy"].isna().all()


def test_tasks_table(runs):
    tasks = tasks_table(grid_records())
    assert len(tasks) == 19 * N_TASKS + 1  # the failed run recorded one task
    row = tasks[(tasks["run_id"] == "der-p2-s1994") & (tasks["task"] == 2)].iloc[0]
    assert row["classes_seen"] == 30 and row["cnn_accuracy"] == 65.0  # last = 75 - 10
    assert row["paper_total_bytes"] == int(20.0 * MB)


def _summary_row(summary: pd.DataFrame, method: str, point: int) -> pd.Series:
    rows = summary[(summary["method"] == method) & (summary["point"] == point)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_summary_mean_std_exact(runs):
    summary = summary_table(runs)
    assert len(summary) == 3 * 3 + 1  # joint has its own row, without a point
    replay0 = _summary_row(summary, "replay", 0)
    # mean(60, 62) = 61; sample std = sqrt(((60-61)^2 + (62-61)^2) / 1) = sqrt(2)
    assert replay0["cnn_average_accuracy_mean"] == pytest.approx(61.0)
    assert replay0["cnn_average_accuracy_std"] == pytest.approx(math.sqrt(2))
    # last: 48 and 52 -> mean 50, std sqrt(8)
    assert replay0["cnn_last_accuracy_mean"] == pytest.approx(50.0)
    assert replay0["cnn_last_accuracy_std"] == pytest.approx(math.sqrt(8))
    assert replay0["nme_average_accuracy_mean"] == pytest.approx(60.0)
    assert replay0["paper_total_mb_mean"] == pytest.approx(8.0)
    assert replay0["paper_total_mb_std"] == pytest.approx(0.0)
    der1 = _summary_row(summary, "der", 1)
    assert der1["cnn_average_accuracy_mean"] == pytest.approx(68.0)  # mean(66, 70)
    assert der1["cnn_average_accuracy_std"] == pytest.approx(math.sqrt(8))
    # the failed seed 1995 of replay at point 1 is left out
    replay1 = _summary_row(summary, "replay", 1)
    assert replay1["n_seeds"] == 2
    assert replay1["cnn_average_accuracy_mean"] == pytest.approx(64.5)
    joint = summary[summary["method"] == "joint"].iloc[0]
    assert pd.isna(joint["point"]) and pd.isna(joint["budget_mb"])
    assert joint["n_seeds"] == 1 and math.isnan(joint["cnn_average_accuracy_std"])


def _auc_row(auc: pd.DataFrame, method: str, kind: str = "cnn") -> pd.Series:
    rows = auc[(auc["method"] == method) & (auc["kind"] == kind)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_auc_table_matches_hand_computation(runs):
    auc = auc_table(runs)
    assert len(auc) == 4 * 2  # (replay, der, memo, joint) x (cnn, nme)
    replay = _auc_row(auc, "replay")
    # mean curve of average accuracy at 8, 12, 20 MB: 61, 64.5, 70 (%)
    # AUC-A = 4 x (0.61 + 0.645) / 2 + 8 x (0.645 + 0.70) / 2 = 2.51 + 5.38 = 7.89
    assert replay["auc_average"] == pytest.approx(7.89)
    # last: seed 1993 48, 52, 56; seed 1994 52, 55, 62 -> mean 50, 53.5, 59
    # AUC-L = 4 x (0.50 + 0.535) / 2 + 8 x (0.535 + 0.59) / 2 = 2.07 + 4.5 = 6.57
    assert replay["auc_last"] == pytest.approx(6.57)
    # per seed AUC-A: 1993 (60, 64, 68) -> 2.48 + 5.28 = 7.76; 1994 (62, 65, 72) -> 2.54 + 5.48
    # = 8.02; sample std = 0.26 / sqrt(2)
    assert replay["auc_average_std"] == pytest.approx(0.26 / math.sqrt(2))
    # per seed AUC-L: 1993 -> 4 x 0.50 + 8 x 0.54 = 6.32; 1994 -> 4 x 0.535 + 8 x 0.585 = 6.82
    assert replay["auc_last_std"] == pytest.approx(0.5 / math.sqrt(2))
    # APM = mean average accuracy / budget: 61 / 8 and 70 / 20
    assert replay["apm_start"] == pytest.approx(7.625)
    assert replay["apm_end"] == pytest.approx(3.5)
    assert (replay["n_points"], replay["n_seeds"], replay["note"]) == (3, 2, "")
    assert (replay["memory_start_mb"], replay["memory_end_mb"]) == (8.0, 20.0)
    # NME is 1 point lower everywhere: 7.89 - 0.01 x 12 MB = 7.77
    assert _auc_row(auc, "replay", "nme")["auc_average"] == pytest.approx(7.77)
    # der: mean 56, 68, 74.5 -> 4 x 0.62 + 8 x 0.7125 = 2.48 + 5.70 = 8.18
    assert _auc_row(auc, "der")["auc_average"] == pytest.approx(8.18)


def test_auc_joint_has_no_area_and_says_why(runs):
    joint = _auc_row(auc_table(runs), "joint")
    assert math.isnan(joint["auc_average"]) and math.isnan(joint["auc_last"])
    assert joint["n_points"] == 0 and "budget" in joint["note"]


def test_auc_notes_partial_curves(runs):
    partial = runs[~((runs["method"] == "memo") & (runs["point"] == 2))]
    memo = _auc_row(auc_table(partial), "memo")
    assert memo["n_points"] == 2 and "2 of 3" in memo["note"]


def test_auc_std_needs_two_seeds_per_point(runs):
    one_seed = runs[~((runs["method"] == "der") & (runs["point"] == 0) & (runs["seed"] == 1994))]
    der = _auc_row(auc_table(one_seed), "der")
    assert math.isfinite(der["auc_average"]) and math.isnan(der["auc_average_std"])
    assert der["n_seeds"] == 1


PLOTS = ["accuracy_vs_memory_average", "accuracy_vs_memory_last", "accuracy_per_task", "auc"]


def test_write_report_end_to_end(experiment, capsys):
    with pytest.warns(UserWarning, match="deadbeef"):
        paths = write_report(experiment)
    for name in ("runs.csv", "tasks.csv", "summary.csv", "auc.csv"):
        assert paths[name] == experiment / name and paths[name].stat().st_size > 0
    runs = pd.read_csv(experiment / "runs.csv")
    assert len(runs) == 20
    assert runs.loc[runs["status"] == "failed", "error_type"].tolist() == ["RuntimeError"]
    assert runs.loc[runs["status"] == "complete", "error_type"].isna().all()  # empty cells
    summary = pd.read_csv(experiment / "summary.csv")
    assert summary["cnn_average_accuracy_mean"].round(9).tolist()[:3] == [61.0, 64.5, 70.0]
    auc = pd.read_csv(experiment / "auc.csv")
    assert auc.loc[(auc["method"] == "replay") & (auc["kind"] == "cnn"),
                   "auc_average"].item() == pytest.approx(7.89)
    for stem in PLOTS + [f"{stem}_nme" for stem in PLOTS[:3]]:
        for suffix in (".png", ".svg"):
            path = experiment / "plots" / f"{stem}{suffix}"
            assert path.stat().st_size > 0, path
            assert paths[f"plots/{stem}{suffix}"] == path
        image = matplotlib.image.imread(experiment / "plots" / f"{stem}.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert (experiment / "plots" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    assert "storage_cost.csv" not in paths  # written only when runs probed their precision
    for name, expected in columns.CSV_COLUMNS.items():  # exactly the schema's columns, in order
        if name != "storage_cost.csv":
            assert list(pd.read_csv(experiment / name).columns) == expected, name
    printed = capsys.readouterr().out
    assert "61.0 ± 1.4" in printed and "joint" in printed and "7.890 ± 0.184" in printed
    assert not list(experiment.glob(".report-staging-*"))  # the staging folder is gone


def test_write_report_without_complete_runs(tmp_path, capsys):
    assert write_report(tmp_path) == {}
    assert "No complete runs" in capsys.readouterr().out
    _write(tmp_path, make_record("f", "der", 1993, 0, "conv2", 8.0, 1.0, 1.0, 1.0,
                                 status="failed", n_tasks=1))
    paths = write_report(tmp_path)
    assert set(paths) == {"runs.csv", "tasks.csv"}
    assert "No complete runs" in capsys.readouterr().out
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "plots").exists()


def test_plots_take_the_summary_table_not_runs(runs, tmp_path):
    from benchmark.report.plots import plot_accuracy_vs_memory

    summary = summary_table(runs)
    paths = plot_accuracy_vs_memory(summary[summary["dataset"] == "cifar100"], tmp_path, "B0Inc10")
    assert [path.name for path in paths] == [
        "accuracy_vs_memory_average.png", "accuracy_vs_memory_average.svg",
        "accuracy_vs_memory_last.png", "accuracy_vs_memory_last.svg"]
    with pytest.raises(ValueError, match="summary_table"):
        plot_accuracy_vs_memory(runs, tmp_path, "B0Inc10")


# ------------------------------------------------------------------- the current grid

def _grid_cell(record: dict, **changes) -> dict:
    """The grid.json row of a record's cell, shaped as benchmark.config.grid.plan_rows gives it (no
    dataset: the record brings it)."""
    cell = {key: value for key, value in record["cell"].items() if key != "dataset"}
    return {"run_id": record["run_id"], **cell, **changes}


def _write_grid(experiment: Path, cells: list[dict]) -> None:
    (experiment / GRID_FILE).write_text(json.dumps({"experiment": "cifar100_b0inc10_paper",
                                                    "cells": cells}))


def _at_budget(point: int, label: str, budget_mb: float) -> dict:
    return {"point": point, "point_label": label, "budget_mb": budget_mb,
            "budget_bytes": int(budget_mb * MB), "total_bytes": int(budget_mb * MB)}


def test_new_budgets_report_only_the_new_grid(tmp_path):
    """Budgets changed from 8/12/20 to 10/16 MB: replay has new runs, finetune's one run (the same
    training at every point) is reported at the new points, the old records are left out."""
    for record in grid_records():
        _write(tmp_path, record)
    finetune = make_record("finetune-s1993", "finetune", 1993, 0, "conv2", 8.0, 30.0, 20.0, 40.0)
    finetune["cells"] = [{**finetune["cell"], **_at_budget(*point)} for point in POINTS]
    _write(tmp_path, finetune)
    new_points = ((0, "conv4", 10.0), (1, "resnet8", 16.0))
    cells = [_grid_cell(finetune, **_at_budget(*point)) for point in new_points]
    cells.append(_grid_cell(grid_records()[-2]))  # joint trains as before: same run id
    for (point, label, budget), averages in zip(new_points, ((40.0, 42.0), (50.0, 54.0))):
        for seed, average in zip(SEEDS, averages):
            record = make_record(f"replay2-p{point}-s{seed}", "replay", seed, point, label, budget,
                                 average, average - 10.0, 5.0)
            _write(tmp_path, record)
            cells.append(_grid_cell(record))
    _write_grid(tmp_path, cells)
    with pytest.warns(UserWarning, match=r"19 record\(s\) .* no cell of the current") as caught:
        write_report(tmp_path)
    stale = str(caught[0].message)
    assert "der-p2-s1994" in stale and "replay-p1-s1995" in stale and "replay2" not in stale
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary["method"]) == ["finetune", "finetune", "replay", "replay", "joint"]
    assert summary["budget_mb"].tolist()[:4] == [10.0, 16.0, 10.0, 16.0]
    assert summary["point_label"].tolist()[:4] == ["conv4", "resnet8", "conv4", "resnet8"]
    # replay: mean(40, 42) = 41 at 10 MB, mean(50, 54) = 52 at 16 MB; the old 61/64.5/70 are gone
    assert summary["cnn_average_accuracy_mean"].tolist()[:5] == [30.0, 30.0, 41.0, 52.0, 80.0]
    assert (summary["dataset"] == "cifar100").all()  # the record fills what grid rows lack
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert set(runs["run_id"]) == {"finetune-s1993", "joint-s1993", "replay2-p0-s1993",
                                   "replay2-p0-s1994", "replay2-p1-s1993", "replay2-p1-s1994"}


def test_changed_schedule_reports_only_the_new_runs(tmp_path):
    """Only later_tasks.epochs of der changed: same budgets, new run ids, new numbers."""
    old = grid_records()
    for record in old:
        _write(tmp_path, record)
    cells = [_grid_cell(record) for record in old
             if record["cell"]["method"] != "der" and record["cell"]["seed"] in SEEDS]
    for point, label, budget in POINTS:
        for seed in SEEDS:
            average = 30.0 + 10 * point + (seed - 1993) * 2  # 30/32, 40/42, 50/52
            record = make_record(f"der-e2-p{point}-s{seed}", "der", seed, point, label, budget,
                                 average, average - 5.0, 3.0)
            _write(tmp_path, record)
            cells.append(_grid_cell(record))
    _write_grid(tmp_path, cells)
    with pytest.warns(UserWarning, match=r"7 record\(s\)"):
        records = load_records(tmp_path)
    summary = summary_table(runs_table(records))
    der = summary[summary["method"] == "der"]
    assert der["cnn_average_accuracy_mean"].tolist() == [31.0, 41.0, 51.0]  # not 56/68/74.5
    assert der["n_seeds"].tolist() == [2, 2, 2]
    assert _summary_row(summary, "replay", 0)["cnn_average_accuracy_mean"] == pytest.approx(61.0)


def test_no_grid_file_reports_every_record_with_a_warning(experiment):
    with pytest.warns(UserWarning, match="no grid.json"):
        assert len(load_records(experiment)) == 20


@pytest.mark.parametrize("content, problem", [("{\"cells\": [", "unreadable"),
                                              ('{"cells": [{"point": 1}]}', "must hold"),
                                              ("[1, 2]", "unreadable")])
def test_damaged_grid_file_falls_back_with_a_warning(experiment, content, problem):
    (experiment / GRID_FILE).write_text(content)
    with pytest.warns(UserWarning, match=f"{problem}.*{GRID_FILE}|{GRID_FILE}.*{problem}"):
        assert len(load_records(experiment)) == 20


def test_a_smaller_set_removes_outputs_of_the_older_one(tmp_path):
    for record in grid_records():
        _write(tmp_path, record)
    for name in columns.CSV_COLUMNS:  # a previous report's set
        (tmp_path / name).write_text("old")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "auc.png").write_text("old")
    _write_grid(tmp_path, [_grid_cell(grid_records()[-1])])  # the grid now has the failed run only
    with pytest.warns(UserWarning, match="19 record"):
        assert set(write_report(tmp_path)) == {"runs.csv", "tasks.csv"}
    assert sorted(path.name for path in tmp_path.iterdir()) == [GRID_FILE, "runs", "runs.csv",
                                                                "tasks.csv"]
    assert pd.read_csv(tmp_path / "runs.csv")["run_id"].tolist() == ["replay-p1-s1995"]


# ----------------------------------------------------------------------- damaged records

DAMAGE = {
    "a folder": lambda path: path.mkdir(),
    "truncated JSON": lambda path: path.write_text('{"run_id": "broken", "status": "comp'),
    "not UTF-8": lambda path: path.write_bytes(b"\xff\xfe{}"),
    "not an object": lambda path: path.write_text('["broken", "complete"]'),
    "missing keys": lambda path: path.write_text('{"run_id": "broken", "status": "complete"}'),
    "cell not an object": lambda path: path.write_text(
        '{"run_id": "broken", "status": "complete", "cell": "replay"}'),
    "tasks not objects": lambda path: path.write_text(
        '{"run_id": "broken", "status": "complete", "cell": {"method": "der"}, "tasks": [1]}'),
}


def test_damaged_records_are_named_and_skipped(tmp_path, capsys):
    for record in grid_records():
        _write(tmp_path, record)
    for damage, spoil in DAMAGE.items():
        (tmp_path / "runs" / damage).mkdir()
        spoil(tmp_path / "runs" / damage / "record.json")
    with pytest.warns(UserWarning) as caught:
        paths = write_report(tmp_path)  # no traceback: the report goes on
    messages = [str(warning.message) for warning in caught]
    named = [message for message in messages if "damaged run record" in message]
    for damage in DAMAGE:
        assert sum(f"/{damage}/record.json" in message.replace("\\", "/") for message in named) == 1
    assert len(named) == len(DAMAGE)
    assert "summary.csv" in paths and len(pd.read_csv(tmp_path / "runs.csv")) == 20
    assert "19 complete, 1 failed" in capsys.readouterr().out


# ------------------------------------------------------------ the report set, as a whole

def _report_files(experiment: Path) -> dict[str, bytes]:
    csvs = [name for name in columns.CSV_COLUMNS if (experiment / name).exists()]
    names = [*csvs, *(str(path.relative_to(experiment))
                                     for path in (experiment / "plots").rglob("*"))]
    return {name: (experiment / name).read_bytes() for name in names}


def test_a_failing_report_leaves_the_previous_set_whole(experiment, monkeypatch):
    from benchmark.report import plots

    with pytest.warns(UserWarning):
        write_report(experiment)
    before = _report_files(experiment)
    assert len(before) == 5 + 14  # the CSVs (ranks.csv: 6 blocks) and 7 figures as PNG and SVG
    _write(experiment, make_record("replay-p0-s1995", "replay", 1995, 0, "conv2", 8.0, 10.0, 5.0,
                                   1.0))  # a new run: every table would change

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "plot_auc_bars", broken)  # the last step of the report
    with pytest.raises(RuntimeError, match="plotting failed"), pytest.warns(UserWarning):
        write_report(experiment)
    assert _report_files(experiment) == before
    assert not list(experiment.glob(".report-staging-*"))


def test_a_report_killed_while_moving_is_finished_by_the_next(tmp_path):
    from benchmark.report.writer import MANIFEST, STAGING_PREFIX, _recover

    for name in ("runs.csv", "summary.csv"):
        (tmp_path / name).write_text("old")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "auc.png").write_text("old")
    moving = tmp_path / f"{STAGING_PREFIX}a"  # complete set; tasks.csv had been moved already
    moving.mkdir()
    (moving / "runs.csv").write_text("new")
    (tmp_path / "tasks.csv").write_text("new")
    (moving / MANIFEST).write_text(json.dumps({"outputs": ["runs.csv", "tasks.csv"]}))
    building = tmp_path / f"{STAGING_PREFIX}b"  # killed while building: no manifest
    building.mkdir()
    (building / "auc.csv").write_text("half")
    _recover(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs.csv", "tasks.csv"]
    assert {(tmp_path / name).read_text() for name in ("runs.csv", "tasks.csv")} == {"new"}


def test_a_second_report_waits_for_the_first(tmp_path):
    import fcntl
    import os
    import threading

    _write(tmp_path, make_record("f", "der", 1993, 0, "conv2", 8.0, 1.0, 1.0, 1.0,
                                 status="failed", n_tasks=1))
    held = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the report at the end of a run would hold it
    second = threading.Thread(target=write_report, args=(tmp_path,))
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive() and not (tmp_path / "runs.csv").exists()
    os.close(held)
    second.join(timeout=120)
    assert not second.is_alive() and (tmp_path / "runs.csv").exists()


# ----------------------------------------------------------------- printed CNN and NME

def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_printed_summary_shows_cnn_and_nme_side_by_side(runs):
    lines = format_summary(summary_table(runs)).splitlines()
    assert "CNN and NME" in lines[0]
    assert _cells(lines[1]) == ["8.0 MB (conv2)", "12.0 MB (resnet14)", "20.0 MB (resnet20)",
                                "no budget"]
    assert _cells(lines[2]) == ["CNN", "NME"] * 4
    # replay at 8 MB: CNN mean(60, 62) = 61 ± sqrt(2); NME is 1 point lower
    assert _cells(lines[3]) == ["replay", "61.0 ± 1.4", "60.0 ± 1.4", "64.5 ± 0.7",
                                "63.5 ± 0.7", "70.0 ± 2.8", "69.0 ± 2.8"]
    assert _cells(lines[6]) == ["joint", "80.0", "79.0"]


def test_printed_auc_shows_cnn_and_nme_side_by_side(runs):
    lines = format_auc(auc_table(runs)).splitlines()
    assert _cells(lines[1]) == ["CNN", "NME"]
    assert _cells(lines[2]) == ["AUC-A", "AUC-L", "AUC-A", "AUC-L", "note"]
    # values of test_auc_table_matches_hand_computation, NME 0.12 lower
    assert _cells(lines[3]) == ["replay", "7.890 ± 0.184", "6.570 ± 0.354", "7.770 ± 0.184",
                                "6.450 ± 0.354"]
    assert _cells(lines[6]) == ["joint", "-", "-", "-", "-",
                                "no memory budget (not on the memory axis)"]


# --------------------------------------------------------------------- schema and docs

def _documented_columns() -> dict[str, list[str]]:
    """docs/results.md: per "## <file>" section, the `column` of each table row."""
    sections: dict[str, list[str]] = {}
    section = ""
    for line in (REPO / "docs" / "results.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif match := re.match(r"\| `([^`]+)` \|", line):
            sections.setdefault(section, []).append(match.group(1))
    return sections


def test_docs_list_exactly_the_schema_columns():
    assert _documented_columns() == columns.CSV_COLUMNS


def test_method_order_and_colours_follow_the_registry(monkeypatch):
    from methods import METHODS
    from methods.registry import Registry

    assert set(columns.PAPER_METHODS) <= set(METHODS.names())
    assert columns.method_order()[:7] == ["finetune", "replay", "icarl", "wa", "der", "memo",
                                          "joint"]
    later = Registry("method")
    for name in [*METHODS.names(), "zeta"]:
        later.add(name, object)
    monkeypatch.setattr(columns, "METHODS", later)
    assert columns.method_order()[-1] == "zeta"
    names = ["unregistered", "zeta", "joint", "der", "finetune"]
    assert sorted(names, key=columns.method_rank) == ["finetune", "der", "joint", "zeta",
                                                      "unregistered"]
    assert columns.method_color("der") == "tab:red"
    assert columns.method_color("zeta") in columns.FALLBACK_COLORS
    assert columns.method_color("zeta") == columns.method_color("zeta")
    assert len(set(columns.PAPER_METHODS.values())) == len(columns.PAPER_METHODS)


# ------------------------------------------------------------------------------ imports

REPORT_MODULES = ["benchmark.report.columns", "benchmark.records.metrics", "benchmark.report.tables", "benchmark.report.plots",
                  "benchmark.report.writer"]


@pytest.mark.parametrize("module", REPORT_MODULES)
def test_each_report_module_imports_alone(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _imports(module: str) -> set[str]:
    """The report modules that `module` imports anywhere in its source (top level or late)."""
    tree = ast.parse((REPO / f"{module.replace('.', '/')}.py").read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "benchmark." * bool(node.level) + (node.module or "")
            base = base.rstrip(".")
            names |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return names & set(REPORT_MODULES)


def test_report_modules_import_without_cycles():
    graph = {module: _imports(module) for module in REPORT_MODULES}
    assert graph["benchmark.report.plots"] == {"benchmark.report.columns"}  # figures never build tables
    assert graph["benchmark.report.columns"] == graph["benchmark.records.metrics"] == set()
    assert graph["benchmark.report.writer"] == {"benchmark.report.columns", "benchmark.report.plots", "benchmark.report.tables"}
    done: set[str] = set()
    while len(done) < len(graph):  # peel modules whose imports are all peeled; a cycle never peels
        ready = {module for module, imports in graph.items()
                 if module not in done and imports <= done}
        assert ready, f"import cycle among {sorted(set(graph) - done)}"
        done |= ready
