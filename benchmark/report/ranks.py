"""Critical-difference ranks across the whole accuracy-vs-memory curve (ranks.csv; Demšar 2006).

summary.csv compares methods at one budget point at a time. This module ranks the methods across
every budget point, seed and scenario of an experiment at once: each block is one (dataset,
scenario, policy, budget point, seed), the methods are ranked inside each block (1 = highest
accuracy) and their ranks are averaged over the blocks. autorank (Herbold 2020) runs the tests,
always the non-parametric ones: Friedman with the Nemenyi post-hoc test and its critical difference
(two methods: Wilcoxon's signed-rank test). Its parametric choice (repeated-measures ANOVA with
Tukey HSD) is not used: the blocks are budget points of different accuracy, which only ranks
inside a block make comparable, and its Tukey HSD treats the blocks as unpaired. docs/results.md
explains the columns and what the ranks assume.

What is ranked is a configuration: a method with its values on the budget axes (exemplar format,
stored-model precision), named as columns.configuration names it ("icarl jpeg:50"; "icarl" alone at
the default values), so that each variant of a method is ranked against every other.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass, field
from string import ascii_lowercase

import pandas as pd

from benchmark.report.columns import (AXIS_KEYS, EXPERIMENT_KEYS, RANK_COLUMNS, configuration_rank,
                                      configurations, with_axes)

ALPHA = 0.05       # family-wise, as autorank applies it to the omnibus and post-hoc tests
MIN_BLOCKS = 5     # autorank raises ValueError below five rows ("performance estimations")
RANKED_METRICS = ("cnn_average_accuracy", "nme_average_accuracy")
BLOCK_KEYS = [*EXPERIMENT_KEYS, "point", "seed"]
# autorank's names of its tests, as ranks.csv's `test` column stores them, and how to print them.
TEST_NAMES = {"friedman+nemenyi": "Friedman + Nemenyi", "wilcoxon": "Wilcoxon signed-rank"}


@dataclass
class Ranking:
    """The ranks of one metric, or `reason` (non-empty) why there are none."""
    metric: str
    blocks: int = 0
    left_out: dict[str, str] = field(default_factory=dict)  # method -> why it is not ranked
    reason: str = ""
    test: str = ""
    p_value: float = math.nan
    critical_difference: float = math.nan
    mean_rank: dict[str, float] = field(default_factory=dict)  # best first
    groups: dict[str, str] = field(default_factory=dict)       # method -> its group letters
    tied_with_best: dict[str, bool] = field(default_factory=dict)
    note: str = ""

    def rows(self, axes: dict[str, dict] | None = None) -> list[dict]:
        """ranks.csv's rows for this metric (none when there are no ranks). `axes`: configuration
        label -> its method and axis values (the label's method and the defaults without it)."""
        axes = axes or {}
        left_out = "; ".join(f"{method} ({why})" for method, why in self.left_out.items())
        return [{"metric": self.metric,
                 **axes.get(method, {"method": method, **dict.fromkeys(AXIS_KEYS)}),
                 "mean_rank": rank,
                 "rank_group_of_best": self.tied_with_best[method],
                 "rank_groups": self.groups[method], "test": self.test, "p_value": self.p_value,
                 "critical_difference": self.critical_difference, "blocks": self.blocks,
                 "methods_left_out": left_out, "note": self.note}
                for method, rank in self.mean_rank.items()]


# ------------------------------------------------------------------------------ blocks

def blocks_table(runs: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Blocks as rows (one per dataset, scenario, policy, budget point and seed with a complete
    budgeted run), configurations as columns (under `method`: the method alone at the default
    axis values): `metric` of each complete run. Only configurations with a value in every block
    are kept; the others are returned as {configuration: why it is left out}."""
    complete = runs[runs["status"] == "complete"]
    complete = complete.assign(method=configurations(complete))
    budgeted = complete["budget_mb"].notna() & complete["point"].notna()
    left_out = {method: "no memory budget"
                for method in _ordered(set(complete["method"]) - set(complete.loc[budgeted,
                                                                                   "method"]))}
    values = complete[budgeted].assign(value=pd.to_numeric(complete.loc[budgeted, metric],
                                                           errors="coerce"))
    by_block = values.groupby([*BLOCK_KEYS, "method"], dropna=False)["value"]
    wide = by_block.mean().unstack("method")
    wide = wide.reindex(columns=_ordered(wide.columns))
    has_run = by_block.size().unstack("method").reindex_like(wide).notna()
    for method in wide.columns[wide.isna().any(axis=0)]:
        without_run = int((~has_run[method]).sum())
        without_value = int((wide[method].isna() & has_run[method]).sum())
        left_out[method] = "; ".join(
            f"{what} in {count} of {len(wide)} blocks"
            for what, count in (("no complete run", without_run), (f"no {metric}", without_value))
            if count)
    kept = wide.loc[:, wide.notna().all(axis=0)]
    return kept, dict(sorted(left_out.items(), key=lambda item: configuration_rank(item[0])))


def _ordered(methods) -> list[str]:
    return sorted(methods, key=configuration_rank)


def _too_small(wide: pd.DataFrame, left_out: dict[str, str]) -> str:
    """Why `wide` is too small for a rank test, or "" when it is large enough."""
    if len(wide) == 0:
        return "no complete run with a memory budget"
    if len(wide) < MIN_BLOCKS:
        index = wide.index.to_frame(index=False)
        points = len(index[[*EXPERIMENT_KEYS, "point"]].drop_duplicates())
        seeds = index["seed"].nunique()
        return (f"{_count(len(wide), 'block')} ({_count(points, 'budget point')} x "
                f"{_count(seeds, 'seed')}); rank tests need at least {MIN_BLOCKS}: add seeds or "
                f"budget points")
    if wide.shape[1] < 2:
        # e.g. a second seed that only some methods have finished yet
        only = f"only {wide.columns[0]} has" if wide.shape[1] else "no method has"
        why = "; ".join(f"{method} ({reason})" for method, reason in left_out.items())
        return (f"{only} a value in all {_count(len(wide), 'block')}; ranking needs at least 2 "
                f"methods (left out: {why})")
    return ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# ------------------------------------------------------------------------------- ranks

def rank_methods(runs: pd.DataFrame, metric: str, alpha: float = ALPHA) -> Ranking:
    """Mean ranks of the methods over the blocks of `runs` (complete runs are used) for `metric`
    (higher is better), the test autorank chose, its p-value, the Nemenyi critical difference and
    the groups of methods it cannot tell apart; or a Ranking with only `reason` set."""
    wide, left_out = blocks_table(runs, metric)
    ranking = Ranking(metric, blocks=len(wide), left_out=left_out)
    ranking.reason = _too_small(wide, left_out)
    if ranking.reason:
        return ranking
    from autorank import autorank  # imported here: it pulls in statsmodels and pyplot (~1-2 s)

    printed = io.StringIO()  # autorank prints its result table unconditionally
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        try:
            result = autorank(wide.reset_index(drop=True), alpha=alpha, order="descending",
                              approach="frequentist", force_mode="nonparametric")
        except (ValueError, ArithmeticError, TypeError) as error:
            ranking.reason = f"autorank could not rank these values: {error}"
            return ranking
    _fill(ranking, result, alpha)
    notes = [ranking.note] if ranking.note else []
    notes += [f"autorank warned: {message}"
              for message in dict.fromkeys(str(warning.message) for warning in caught)]
    ranking.note = "; ".join(notes)
    return ranking


def _fill(ranking: Ranking, result, alpha: float) -> None:
    """Test, p-value, CD, mean ranks (best first) and group letters from autorank's result."""
    ranking.test = (f"{result.omnibus}+{result.posthoc}" if result.posthoc else result.omnibus)
    ranking.p_value = float(result.pvalue)
    ranking.critical_difference = math.nan if result.cd is None else float(result.cd)
    rankdf = result.rankdf
    # autorank orders rankdf worst first under order="descending"; the order is set here.
    if result.posthoc == "nemenyi":
        order = sorted(rankdf.index, key=lambda m: (rankdf.at[m, "meanrank"], configuration_rank(m)))
    else:  # Wilcoxon (two methods) compares medians: the best has the higher one
        order = sorted(rankdf.index, key=lambda m: (-float(rankdf.at[m, "median"]),
                                                     configuration_rank(m)))
    ranking.mean_rank = {method: float(rankdf.at[method, "meanrank"]) for method in order}
    if not math.isfinite(ranking.p_value):
        tied = lambda first, second: True  # noqa: E731 (no test result: nothing is told apart)
        ranking.note = "the omnibus test gave no p-value: no method is told apart"
    elif ranking.p_value >= alpha:
        tied = lambda first, second: True  # noqa: E731
        ranking.note = (f"omnibus test not significant (p >= {alpha:g}): no method is told apart "
                        f"from another")
    else:
        tied = _tie_rule(result, alpha)
    ranking.groups = group_letters(order, tied)
    ranking.tied_with_best = {method: bool(tied(order[0], method)) for method in order}


def _tie_rule(result, alpha: float):
    """(first, second) -> True when the post-hoc test cannot tell them apart."""
    rankdf = result.rankdf
    if result.posthoc == "nemenyi":  # Demšar: mean ranks closer than the critical difference
        return lambda a, b: abs(rankdf.at[a, "meanrank"] - rankdf.at[b, "meanrank"]) <= result.cd
    return lambda a, b: False  # two methods and a significant test: told apart


def group_letters(order: list[str], tied) -> dict[str, str]:
    """Compact letter display: methods in `order` (best first) that `tied` cannot tell apart share
    a letter; group "a" is the group of the best. A group is a run of consecutive methods in
    `order`, as far as the first of them is tied with the last (autorank's grouping); runs inside
    an earlier one are dropped, and a method tied with nobody gets a letter of its own."""
    runs, reach = [], -1
    for i in range(len(order)):
        last = max([j for j in range(i, len(order)) if tied(order[i], order[j])], default=i)
        if last > reach:
            runs.append((i, last))
            reach = last
    letters = {method: "" for method in order}
    for letter, (first, last) in zip(ascii_lowercase, runs):
        for method in order[first:last + 1]:
            letters[method] += letter
    return letters


def ranks_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """ranks.csv (columns: columns.RANK_COLUMNS) for every metric of RANKED_METRICS that can be
    ranked, and {metric: why it has no ranks} for the others."""
    rankings = [rank_methods(runs, metric) for metric in RANKED_METRICS]
    axes = _axes_of(runs)
    rows = [row for ranking in rankings for row in ranking.rows(axes)]
    table = pd.DataFrame(rows, columns=RANK_COLUMNS).astype(
        {"mean_rank": "float64", "p_value": "float64", "critical_difference": "float64",
         "blocks": "Int64", "rank_group_of_best": "boolean"})
    return table, {ranking.metric: ranking.reason for ranking in rankings if ranking.reason}


def _axes_of(runs: pd.DataFrame) -> dict[str, dict]:
    """Configuration label -> {"method": ..., "exemplar_format": ..., "model_storage": ...}, as
    runs.csv has them (a run record from before the axes: raw, fp32)."""
    table = with_axes(runs[[column for column in ["method", *AXIS_KEYS] if column in runs]])
    table = table.assign(configuration=configurations(table)).drop_duplicates("configuration")
    return {row["configuration"]: {key: row[key] for key in ["method", *AXIS_KEYS]}
            for _, row in table.iterrows()}
