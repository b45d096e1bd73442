"""The report on a synthetic experiment: 3 methods x 3 budget points x 2 seeds, plus joint, one
failed run and one malformed record. Expected numbers are worked out by hand below."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from benchmark.report import (auc_table, load_records, runs_table, summary_table, tasks_table,
                              write_report)

MB = 2**20
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
    printed = capsys.readouterr().out
    assert "61.0 ± 1.4" in printed and "joint" in printed and "AUC-A 7.890" in printed


def test_write_report_without_complete_runs(tmp_path, capsys):
    assert write_report(tmp_path) == {}
    assert "No complete runs" in capsys.readouterr().out
    _write(tmp_path, make_record("f", "der", 1993, 0, "conv2", 8.0, 1.0, 1.0, 1.0,
                                 status="failed", n_tasks=1))
    paths = write_report(tmp_path)
    assert set(paths) == {"runs.csv", "tasks.csv"}
    assert "No complete runs" in capsys.readouterr().out
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "plots").exists()


def test_plot_from_runs_table(runs, tmp_path):
    from benchmark.plots import plot_accuracy_vs_memory

    paths = plot_accuracy_vs_memory(runs, tmp_path, "cifar100 B0Inc10")
    assert [path.name for path in paths] == [
        "accuracy_vs_memory_average.png", "accuracy_vs_memory_average.svg",
        "accuracy_vs_memory_last.png", "accuracy_vs_memory_last.svg"]
