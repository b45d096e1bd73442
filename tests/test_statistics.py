"""The report's statistics (benchmark/report/statistics.py) on hand-made numbers: t intervals,
Holm, paired comparisons with the best (a clear winner, a tie, one seed), seeds needed; then the
same through the report on the synthetic experiment of tests/test_report.py. Expected values are
worked out by hand or taken from tables (t quantiles, Cohen's paired-t sample sizes)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmark.report.statistics import (compare_with_best, holm, paired_p_value,
                                         pooled_difference_spread, seeds_needed, t_interval)
from benchmark.report.tables import (auc_table, format_auc, format_seeds_needed, format_summary,
                                     runs_table, summary_table)
from benchmark.report.writer import write_report
from test_report import _write, grid_records  # the synthetic experiment, built by hand there


# ------------------------------------------------------------------------------ intervals

def test_t_interval_of_three_seeds():
    interval = t_interval([10.0, 12.0, 14.0])
    # mean 12, sd sqrt((4 + 0 + 4) / 2) = 2, half-width t_{0.975,2} x 2 / sqrt(3)
    # = 4.302653 x 1.154701 = 4.968275
    assert (interval.n, interval.mean, interval.std) == (3, 12.0, 2.0)
    assert interval.half_width == pytest.approx(4.968275, abs=1e-6)


def test_t_interval_of_two_seeds_uses_t_with_one_degree_of_freedom():
    # [0, 2]: sd sqrt(2), half-width t_{0.975,1} x sqrt(2) / sqrt(2) = 12.706205 (t table)
    assert t_interval([0.0, 2.0]).half_width == pytest.approx(12.706205, abs=1e-6)
    assert t_interval([0.0, 2.0, np.nan]).n == 2  # a missing value is not a seed


def test_t_interval_of_one_seed_has_no_spread():
    interval = t_interval([61.0])
    assert interval.mean == 61.0 and math.isnan(interval.std) and math.isnan(interval.half_width)
    assert t_interval([]).n == 0


# ---------------------------------------------------------------------------------- Holm

def test_holm_on_a_literal_list():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # 0.5 x 2 = 1.0 caps the larger one too; one p-value is left as it is
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    assert holm([0.2]) == pytest.approx([0.2])


# ---------------------------------------------------------------------------- paired tests

def test_paired_p_value_by_hand():
    # differences (2, 1): mean 1.5, sd 1/sqrt(2), t = 1.5 / 0.5 = 3 with 1 degree of freedom
    # (Cauchy): p = 1 - 2 atan(3) / pi = 0.2048328
    assert paired_p_value([2.0, 1.0], [0.0, 0.0]) == pytest.approx(0.2048328, abs=1e-7)
    assert paired_p_value([5.0, 5.0], [0.0, 0.0]) == 0.0   # constant nonzero difference
    assert paired_p_value([5.0, 6.0], [5.0, 6.0]) == 1.0   # no difference at all
    assert math.isnan(paired_p_value([5.0, np.nan], [1.0, 2.0]))  # one shared seed


def _table(**methods) -> pd.DataFrame:
    return pd.DataFrame(methods, index=[1993, 1994, 1995, 1996][:len(next(iter(methods.values())))])


def test_a_clear_winner_stands_alone():
    accuracy = _table(der=[70.0, 71.0, 72.0, 73.0], replay=[65.0, 67.0, 66.0, 68.0],
                      icarl=[64.0, 66.0, 65.0, 66.0])
    result = compare_with_best(accuracy)
    # der - replay = (5, 4, 6, 5), der - icarl = (6, 5, 7, 7): t = 12.2 and 14.0 with 3 dof
    assert result["tied_with_best"].tolist() == [True, False, False]
    assert math.isnan(result.loc["der", "p_holm"])
    assert (result.loc[["replay", "icarl"], "p_holm"] < 0.01).all()


def test_a_tie_with_the_best():
    accuracy = _table(der=[70.0, 71.0, 72.0, 73.0], memo=[69.5, 71.5, 71.0, 73.5],
                      replay=[65.0, 67.0, 66.0, 68.0])
    result = compare_with_best(accuracy)
    # der - memo = (0.5, -0.5, 1, -0.5): mean 0.125, far inside the noise
    assert result["tied_with_best"].tolist() == [True, True, False]
    assert result.loc["memo", "p_holm"] > 0.5


def test_holm_makes_a_borderline_pair_a_tie():
    # replay - der = (5, 5): p = 0; replay - memo = (2, 1): raw p 0.2048; two tests: Holm
    # gives 0 x 2 = 0 and max(0, 0.2048 x 1) = 0.2048
    accuracy = pd.DataFrame({"replay": [60.0, 62.0], "der": [55.0, 57.0], "memo": [58.0, 61.0]},
                            index=[1993, 1994])
    result = compare_with_best(accuracy)
    assert result["tied_with_best"].tolist() == [True, False, True]
    assert result.loc["memo", "p_holm"] == pytest.approx(0.2048328, abs=1e-7)


def test_one_seed_allows_no_comparison():
    result = compare_with_best(pd.DataFrame({"der": [70.0], "replay": [60.0]}, index=[1993]))
    assert result["tied_with_best"].isna().all() and result["p_holm"].isna().all()
    assert result["n_seeds"].tolist() == [1, 1]


def test_a_method_sharing_one_seed_with_the_best_is_not_ranked():
    accuracy = pd.DataFrame({"der": [70.0, 72.0, np.nan], "replay": [60.0, 61.0, 62.0],
                             "memo": [np.nan, np.nan, 75.0]}, index=[1993, 1994, 1995])
    result = compare_with_best(accuracy)
    # memo has one seed: not ranked, even with the highest value; der (mean 71) is the best
    assert result.loc["der", "tied_with_best"]
    assert not result.loc["replay", "tied_with_best"]   # der - replay = (10, 11)
    assert pd.isna(result.loc["memo", "tied_with_best"])


# --------------------------------------------------------------------------- seeds needed

@pytest.mark.parametrize("spread, expected", [(2.0, 34), (1.25, 15), (1.0, 10)])
def test_seeds_needed_matches_the_paired_t_tables(spread, expected):
    # Cohen's paired-t sample sizes (alpha 0.05 two-sided, power 0.8) for effect sizes d = 1 /
    # spread = 0.5, 0.8, 1.0: 34, 15, 10 (the normal approximation gives 32, 13, 8)
    assert seeds_needed(spread, difference=1.0) == expected


def test_seeds_needed_edges():
    assert seeds_needed(0.0) == 2
    assert math.isnan(seeds_needed(float("nan")))
    assert seeds_needed(4.0, difference=2.0) == 34  # only the ratio matters


def test_pooled_spread_of_paired_differences():
    accuracy = pd.DataFrame({"replay": [60.0, 62.0], "der": [55.0, 57.0], "memo": [58.0, 61.0]},
                            index=[1993, 1994])
    # replay - der (5, 5): var 0; replay - memo (2, 1): 0.5; der - memo (-3, -4): 0.5; 1 dof each
    spread, pairs = pooled_difference_spread([accuracy])
    assert pairs == 3 and spread == pytest.approx(math.sqrt(1 / 3))
    assert pooled_difference_spread([accuracy.iloc[:1]]) == (pytest.approx(math.nan, nan_ok=True), 0)


# -------------------------------------------------------------- through the report's tables
# test_report.py's experiment: replay, der, memo at 3 points x 2 seeds, joint with one seed.

@pytest.fixture
def runs() -> pd.DataFrame:
    return runs_table(grid_records())


def _row(table: pd.DataFrame, method: str, **keys) -> pd.Series:
    rows = table[(table["method"] == method)
                 & np.logical_and.reduce([table[k] == v for k, v in keys.items()])]
    assert len(rows) == 1
    return rows.iloc[0]


def test_summary_intervals_and_groups(runs):
    summary = summary_table(runs)
    replay0 = _row(summary, "replay", point=0)
    # replay at 8 MB: 60, 62 -> half-width t_{0.975,1} x sqrt(2) / sqrt(2) = 12.706205
    assert replay0["cnn_average_accuracy_ci95"] == pytest.approx(12.706205, abs=1e-6)
    # point 0: replay best (61), der 5 points worse on both seeds, memo (2, 1) worse: a tie
    assert replay0["cnn_average_accuracy_tied_with_best"]
    assert not _row(summary, "der", point=0)["cnn_average_accuracy_tied_with_best"]
    memo0 = _row(summary, "memo", point=0)
    assert memo0["cnn_average_accuracy_tied_with_best"]
    assert memo0["cnn_average_accuracy_p_holm"] == pytest.approx(0.2048328, abs=1e-7)
    # last accuracy: both seeds drop by their own amount for every method: same pairs, same group
    assert not _row(summary, "der", point=0)["cnn_last_accuracy_tied_with_best"]
    joint = summary[summary["method"] == "joint"].iloc[0]  # one seed, alone: no comparison
    assert pd.isna(joint["cnn_average_accuracy_tied_with_best"])
    assert math.isnan(joint["cnn_average_accuracy_ci95"])


def test_auc_intervals_and_groups(runs):
    auc = auc_table(runs)
    replay = _row(auc, "replay", kind="cnn")
    # per seed AUC-A of replay 7.76 and 8.02 (test_report.py): half-width 12.706205 x 0.13
    assert replay["auc_average_ci95"] == pytest.approx(12.706205 * 0.13, abs=1e-6)
    # memo: 1993 (58, 67, 73) -> 4 x 0.625 + 8 x 0.70 = 8.10; 1994 (61, 68, 77) -> 4 x 0.645
    # + 8 x 0.725 = 8.38: best mean. replay - memo = (-0.34, -0.36): clearly worse.
    # der: 1993 (55, 66, 74) -> 2.42 + 5.60 = 8.02; 1994 (57, 70, 75) -> 2.54 + 5.80 = 8.34;
    # der - memo = (-0.08, -0.04): t = 3 with 1 dof, raw p 0.2048: a tie.
    assert _row(auc, "memo", kind="cnn")["auc_average_tied_with_best"]
    assert math.isnan(_row(auc, "memo", kind="cnn")["auc_average_p_holm"])
    assert not replay["auc_average_tied_with_best"]
    assert _row(auc, "der", kind="cnn")["auc_average_tied_with_best"]
    assert pd.isna(_row(auc, "joint", kind="cnn")["auc_average_tied_with_best"])


def test_auc_of_one_budget_point_over_two_seeds_has_no_area_and_no_comparison(runs):
    one_point = runs[(runs["point"] == 0) | runs["budget_mb"].isna()]
    auc = auc_table(one_point)
    replay = _row(auc, "replay", kind="cnn")
    assert replay["note"] == "only one budget point: no area" and replay["n_seeds"] == 2
    assert math.isnan(replay["auc_average"]) and math.isnan(replay["auc_average_ci95"])
    assert pd.isna(replay["auc_average_tied_with_best"])


def test_printed_tables_mark_the_group_of_the_best(runs):
    printed = format_summary(summary_table(runs)).splitlines()
    legend = next(i for i, line in enumerate(printed) if "not distinguishable" in line)
    assert "Holm" in printed[legend] and "95 %" in printed[legend]
    cells = {line.split()[0]: line.split()[1:] for line in printed[legend + 3:]}
    # 8 MB CNN, NME; 12 MB CNN, NME; 20 MB CNN, NME (marks of average accuracy)
    assert cells["replay"] == ["±12.7", "*", "±12.7", "*", "±6.4", "=", "±6.4", "=", "±25.4",
                               "±25.4"]
    assert cells["der"][:2] == ["±12.7", "±12.7"]  # significantly worse: no mark
    assert cells["joint"] == ["-", "-"]
    auc_printed = format_auc(auc_table(runs))
    assert "not distinguishable" in auc_printed


def test_one_class_order_says_no_comparison(runs):
    one_seed = runs[runs["seed"] == 1993]
    printed = format_summary(summary_table(one_seed))
    assert "one class order: no comparison possible" in printed
    assert "*" not in printed and " = " not in printed
    assert "no comparison possible" in format_auc(auc_table(one_seed))
    assert format_seeds_needed(one_seed) == ""


def test_seeds_needed_from_the_measured_spread(runs):
    text = format_seeds_needed(runs)
    # paired differences over 9 pairs (3 per point), each with 1 dof; variances
    # 8 MB: 0, 0.5, 0.5; 12 MB: 4.5, 0, 4.5; 20 MB: 4.5, 0, 4.5 -> pooled sqrt(19 / 9) = 1.45;
    # d = 1 / 1.453 = 0.688: (t_{0.975,18} + t_{0.8,18}) / d = (2.101 + 0.862) x 1.453 -> n^2 ~ 18.5
    assert "1-point difference" in text
    assert "CNN 19 (spread of paired differences 1.45 points, pooled over 9 pairs)" in text


def test_write_report_prints_groups_and_seeds_needed(tmp_path, capsys):
    for record in grid_records():
        _write(tmp_path, record)
    with pytest.warns(UserWarning, match="grid.json"):
        write_report(tmp_path)
    printed = capsys.readouterr().out
    assert "= not distinguishable from the best" in printed
    assert printed.rstrip().splitlines()[-2].startswith("Seeds (class orders) needed")
    summary = pd.read_csv(tmp_path / "summary.csv")
    memo0 = summary[(summary["method"] == "memo") & (summary["point"] == 0)].iloc[0]
    assert memo0["cnn_average_accuracy_tied_with_best"] == True  # noqa: E712 (read back as bool)
    assert memo0["cnn_average_accuracy_ci95"] == pytest.approx(12.706205 * 1.5, abs=1e-5)
    joint = summary[summary["method"] == "joint"].iloc[0]
    assert pd.isna(joint["cnn_average_accuracy_tied_with_best"])  # an empty cell
    auc = pd.read_csv(tmp_path / "auc.csv")
    assert auc["auc_average_tied_with_best"].isna().sum() == 2  # joint's two kinds


def test_accuracy_plot_rings_the_group_of_the_best(runs):
    from benchmark.report.plots import GROUP_LABEL, _memory_figure

    figure = _memory_figure(summary_table(runs), "cnn_average_accuracy", "%", "B0Inc10")
    rings = [c for c in figure.axes[0].collections if c.get_label() == GROUP_LABEL]
    points = sorted(tuple(xy) for ring in rings for xy in ring.get_offsets().tolist())
    # 8 MB: replay (best) and memo; 12 MB: all three; 20 MB: der and memo (best); not der at 8
    # MB (5 points worse on both seeds) nor replay at 20 MB (5 points below memo on both)
    assert points == [(8.0, 59.5), (8.0, 61.0), (12.0, 64.5), (12.0, 67.5), (12.0, 68.0),
                      (20.0, 74.5), (20.0, 75.0)]
    one_seed = summary_table(runs[runs["seed"] == 1993])
    figure = _memory_figure(one_seed, "cnn_average_accuracy", "%", "B0Inc10")
    assert not [c for c in figure.axes[0].collections if c.get_label() == GROUP_LABEL]
