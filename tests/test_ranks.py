"""Critical-difference ranks across the curve (benchmark/report/ranks.py, ranks.csv) on hand-made
runs: a method best in every block, too few blocks, a method missing from a block, Finetune without
NME, normal values (still rank-based), and ranks.csv written by the report. Expected mean ranks, p-values and
critical differences are worked out by hand in the comments."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmark.report.columns import RANK_COLUMNS
from benchmark.report.ranks import group_letters, rank_methods, ranks_table
from benchmark.report.tables import format_ranks, runs_table
from benchmark.report import writer
from benchmark.report.writer import write_report
from test_report import _write, grid_records, make_record  # the engine's record schema

POINTS = ((0, "conv2", 8.0), (1, "resnet14", 12.0), (2, "resnet20", 20.0))
SEEDS = (1993, 1994)
CNN = "cnn_average_accuracy"
NME = "nme_average_accuracy"


def _records(accuracy: dict[str, list[float]], seeds=SEEDS) -> list[dict]:
    """Complete runs of each method at every (point, seed), blocks in the order point-major;
    NME is CNN - 1 (make_record), plus joint with one seed and no budget."""
    records = []
    for method, values in accuracy.items():
        blocks = [(point, seed) for point in POINTS for seed in seeds]
        for ((point, label, budget), seed), value in zip(blocks, values):
            records.append(make_record(f"{method}-p{point}-s{seed}", method, seed, point, label,
                                       budget, value, value - 10.0, 5.0))
    records.append(make_record("joint-s1993", "joint", 1993, None, None, None, 80.0, 75.0, 5.0))
    return records


# Six blocks; der first and icarl last in each. replay is nearly constant and icarl spreads over
# 28 points: Bartlett rejects equal variances, so autorank takes Friedman + Nemenyi.
CLEAR = {"der": [70.0, 71.0, 69.0, 72.0, 68.0, 73.0],
         "replay": [60.0, 60.1, 59.9, 60.0, 60.1, 59.9],
         "icarl": [40.0, 55.0, 30.0, 58.0, 35.0, 50.0]}


def test_a_method_best_in_every_block_ranks_first_and_apart_from_the_worst():
    ranking = rank_methods(runs_table(_records(CLEAR)), CNN)
    assert ranking.reason == "" and ranking.blocks == 6
    assert ranking.mean_rank == {"der": 1.0, "replay": 2.0, "icarl": 3.0}
    assert ranking.test == "friedman+nemenyi"
    # Friedman: chi2 = 12 N / (k (k + 1)) x sum (R_j - (k + 1) / 2)^2 = 12 x 6 / 12 x (1 + 0 + 1)
    # = 12 with k - 1 = 2 degrees of freedom: p = exp(-12 / 2) = 0.00247875
    assert ranking.p_value == pytest.approx(math.exp(-6), rel=1e-9)
    # Nemenyi: CD = q_{0.05,3,inf} / sqrt(2) x sqrt(k (k + 1) / (6 N)) = 2.3437 x sqrt(12 / 36)
    assert ranking.critical_difference == pytest.approx(1.353138, abs=1e-6)
    # der - replay = 1.0 <= CD: not told apart; der - icarl = 2.0 > CD: told apart
    assert ranking.tied_with_best == {"der": True, "replay": True, "icarl": False}
    assert ranking.groups == {"der": "a", "replay": "ab", "icarl": "b"}
    assert ranking.left_out == {"joint": "no memory budget"}
    assert ranking.note == ""


def test_ranks_csv_rows_and_the_printed_line():
    table, reasons = ranks_table(runs_table(_records(CLEAR)))
    assert reasons == {} and list(table.columns) == RANK_COLUMNS
    cnn = table[table["metric"] == CNN]
    assert cnn["method"].tolist() == ["der", "replay", "icarl"]
    assert cnn["mean_rank"].tolist() == [1.0, 2.0, 3.0]
    assert cnn["rank_group_of_best"].tolist() == [True, True, False]
    assert cnn["rank_groups"].tolist() == ["a", "ab", "b"]
    assert set(cnn["blocks"]) == {6}
    assert set(cnn["methods_left_out"]) == {"joint (no memory budget)"}
    # NME is CNN - 1 in every run: the same ranks
    assert table[table["metric"] == NME]["mean_rank"].tolist() == [1.0, 2.0, 3.0]
    printed = format_ranks(table, reasons).splitlines()
    assert printed[0] == ("Ranks across the curve (CNN average accuracy, Friedman + Nemenyi, "
                          "p = 0.00248, CD = 1.35, 6 blocks): der 1.00, replay 2.00, icarl 3.00; "
                          "cannot be told apart from the best: der, replay")
    assert printed[1] == "  left out: joint (no memory budget)"
    assert printed[2].startswith("Ranks across the curve (NME average accuracy, Friedman")


def test_too_few_blocks_give_no_ranks_and_say_why():
    one_seed = {method: values[::2] for method, values in CLEAR.items()}  # 3 points x seed 1993
    runs = runs_table(_records(one_seed, seeds=(1993,)))
    table, reasons = ranks_table(runs)
    reason = ("3 blocks (3 budget points x 1 seed); rank tests need at least 5: add seeds or "
              "budget points")
    assert len(table) == 0 and list(table.columns) == RANK_COLUMNS
    assert reasons == {CNN: reason, NME: reason}
    assert format_ranks(table, reasons) == f"Ranks across the curve: none: {reason}"


def test_a_method_missing_from_one_block_is_left_out_and_named():
    records = [record for record in _records({**CLEAR, "memo": [66.0] * 6})
               if record["run_id"] != "memo-p2-s1994"]
    ranking = rank_methods(runs_table(records), CNN)
    assert ranking.left_out == {"memo": "no complete run in 1 of 6 blocks",
                                "joint": "no memory budget"}
    assert ranking.mean_rank == {"der": 1.0, "replay": 2.0, "icarl": 3.0}  # memo is not ranked
    table, _ = ranks_table(runs_table(records))
    # the same for NME: memo has no run there
    assert set(table["methods_left_out"]) == {"memo (no complete run in 1 of 6 blocks); "
                                              "joint (no memory budget)"}


def test_a_second_seed_begun_by_one_method_leaves_too_few_methods_and_says_which():
    records = [record for record in _records(CLEAR)
               if record["cell"]["seed"] == 1993 or record["cell"]["method"] == "der"]
    # seed 1993 at 3 points (all methods) and seed 1994 at 3 points (der only): 6 blocks
    ranking = rank_methods(runs_table(records), CNN)
    assert ranking.reason == ("only der has a value in all 6 blocks; ranking needs at least 2 "
                              "methods (left out: replay (no complete run in 3 of 6 blocks); icarl "
                              "(no complete run in 3 of 6 blocks); joint (no memory budget))")
    assert ranking.mean_rank == {}


def test_finetune_without_nme_is_ranked_on_cnn_only():
    records = _records({**CLEAR, "finetune": [20.0] * 6})
    for record in records:
        if record["cell"]["method"] == "finetune":
            record["summary"]["nme_average_accuracy"] = None  # no exemplars, no class means
    table, reasons = ranks_table(runs_table(records))
    assert reasons == {}
    assert table[table["metric"] == CNN]["method"].tolist() == ["der", "replay", "icarl",
                                                                "finetune"]
    nme = table[table["metric"] == NME]
    assert nme["method"].tolist() == ["der", "replay", "icarl"]
    assert set(nme["methods_left_out"]) == {"finetune (no nme_average_accuracy in 6 of 6 blocks); "
                                            "joint (no memory budget)"}


def test_normal_values_take_friedman_and_nemenyi_too():
    # Shapiro-Wilk p 0.63, 0.90, 0.99 and Bartlett p 0.46: autorank alone would take the ANOVA;
    # the ranks across budget points are always rank-based (docs/results.md, ranks.csv).
    close = {"der": [71.2, 69.8, 70.5, 72.1, 68.9, 70.4],
             "replay": [70.1, 70.6, 69.2, 71.0, 70.3, 69.5],
             "icarl": [60.3, 61.5, 59.8, 60.9, 61.2, 60.0]}
    ranking = rank_methods(runs_table(_records(close)), CNN)
    assert ranking.test == "friedman+nemenyi"
    # der first in 4 of 6 blocks and second in 2: (4 + 4) / 6; replay (2 + 8) / 6; icarl last
    assert ranking.mean_rank == pytest.approx({"der": 4 / 3, "replay": 5 / 3, "icarl": 3.0})
    # rank sums 8, 10, 18: chi2 = 12 / (N k (k + 1)) x (64 + 100 + 324) - 3 N (k + 1) = 81.333 - 72
    assert ranking.p_value == pytest.approx(math.exp(-28 / 6), rel=1e-9)
    assert ranking.critical_difference == pytest.approx(1.353138, abs=1e-6)
    # der - replay 0.33 and replay - icarl 1.33 are within CD, der - icarl 1.67 is not
    assert ranking.tied_with_best == {"der": True, "replay": True, "icarl": False}
    assert ranking.groups == {"der": "a", "replay": "ab", "icarl": "b"}


def test_group_letters_form_a_compact_letter_display():
    score = {"a": 1.0, "b": 1.8, "c": 2.5, "d": 4.0}
    letters = group_letters(list(score), lambda x, y: abs(score[x] - score[y]) <= 1.0)
    # a-b (0.8) and b-c (0.7) tied, a-c (1.5) not, d alone
    assert letters == {"a": "a", "b": "ab", "c": "b", "d": "c"}
    assert group_letters(["x", "y"], lambda x, y: True) == {"x": "a", "y": "a"}
    assert group_letters(["x", "y"], lambda x, y: False) == {"x": "a", "y": "b"}


@pytest.fixture
def no_plots(monkeypatch):
    """The report without its figures (seconds each; test_report.py checks them)."""
    monkeypatch.setattr(writer, "_write_plots", lambda *args, **kwargs: [])


def test_write_report_writes_ranks_csv(tmp_path, capsys, no_plots):
    # test_report.py's experiment: replay, der, memo at 3 points x 2 seeds (6 blocks), joint
    for record in grid_records():
        _write(tmp_path, record)
    with pytest.warns(UserWarning, match="grid.json"):
        paths = write_report(tmp_path)
    assert paths["ranks.csv"] == tmp_path / "ranks.csv"
    ranks = pd.read_csv(tmp_path / "ranks.csv", keep_default_na=False)
    assert list(ranks.columns) == RANK_COLUMNS and len(ranks) == 6  # 3 methods x CNN, NME
    cnn = ranks[ranks["metric"] == CNN]
    # per block ranks (8 MB: replay, memo, der; 12 MB: memo/der/replay, der/memo/replay;
    # 20 MB: der, memo, replay and memo, der, replay): memo (2+2+1+2+2+1) / 6 = 10 / 6
    assert cnn["method"].tolist() == ["memo", "der", "replay"]
    assert cnn["mean_rank"].tolist() == pytest.approx([10 / 6, 12 / 6, 14 / 6])
    # rank sums 10, 12, 14: Friedman chi2 = 440 / 6 - 72 = 4 / 3, p = exp(-2 / 3) = 0.513: not
    # significant, so every method is in the group of the best
    assert cnn["rank_group_of_best"].tolist() == [True, True, True]
    assert set(cnn["test"]) == {"friedman+nemenyi"}
    assert cnn["p_value"].tolist() == pytest.approx([math.exp(-2 / 3)] * 3)
    assert cnn["critical_difference"].tolist() == pytest.approx([1.353138] * 3, abs=1e-6)
    assert set(cnn["note"]) == {"omnibus test not significant (p >= 0.05): no method is told "
                                "apart from another"}
    printed = capsys.readouterr().out
    assert ("Ranks across the curve (CNN average accuracy, Friedman + Nemenyi, "
            "p = 0.513, CD = 1.35, 6 blocks): memo 1.67, der 2.00, replay 2.33; cannot be told apart from the "
            "best: memo, der, replay") in printed


def test_one_seed_writes_no_ranks_csv_and_prints_why_once(tmp_path, capsys, no_plots):
    for record in grid_records():
        if record["cell"]["seed"] == 1993:
            _write(tmp_path, record)
    with pytest.warns(UserWarning, match="grid.json"):
        paths = write_report(tmp_path)
    assert "ranks.csv" not in paths and not (tmp_path / "ranks.csv").exists()
    printed = capsys.readouterr().out
    assert printed.count("Ranks across the curve") == 1
    assert ("Ranks across the curve: none: 3 blocks (3 budget points x 1 seed); rank tests need at "
            "least 5: add seeds or budget points") in printed
