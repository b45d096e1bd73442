"""The numerical spread (benchmark/report/spread.py): the same runs in two experiments, run for
run, beside the spread over seeds; and records of one experiment made under several numerics,
named in the printed report and on its page. Hand-made records (tests/test_report.py's schema)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmark.report import writer
from benchmark.report.page import PAGE
from benchmark.report.spread import (format_mixed_numerics, mixed_numerics, numerical_spread, seed_spread,
                                     shared_runs)
from benchmark.report.tables import runs_table
from benchmark.report.writer import write_report
from test_report import _write, grid_records, make_record

ONE_THREAD = {"torch": "2.14.1", "cpu_capability": "AVX2", "onednn": "3.12.0", "mkl": "2024.2", "threads": 1}


def _runs(shift: dict[str, float] | None = None, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """grid_records() as runs.csv, each run's CNN average accuracy moved by shift[run_id]."""
    records = [record for record in grid_records() if record["run_id"] not in drop]
    for record in records:
        if record["summary"] and record["run_id"] in (shift or {}):
            record["summary"]["cnn_average_accuracy"] += shift[record["run_id"]]
    return runs_table(records)


def test_the_same_runs_are_paired_run_for_run():
    # 9 replay/der/memo cells x 2 seeds + joint = 19 complete runs; the failed one has no accuracy
    pairs = shared_runs(_runs(), _runs({"der-p1-s1993": 0.5, "memo-p2-s1994": -1.0}))
    assert len(pairs) == 19
    moved = pairs[pairs["difference"] != 0].set_index("method")["difference"].to_dict()
    assert moved == {"der": 0.5, "memo": -1.0}
    spread = numerical_spread(pairs)
    assert (spread.runs, spread.max_abs) == (19, 1.0)
    assert spread.mean_abs == pytest.approx(1.5 / 19)
    # differences 0.5, -1 and 17 zeros: mean -0.5/19, sample variance (0.25 + 1 - 19 m^2) / 18
    assert spread.sd == pytest.approx(math.sqrt((1.25 - 0.25 / 19) / 18))
    assert spread.line() == "19 run(s) in common: mean |difference| 0.08, largest 1.00 points, std of the differences 0.26"


def test_a_cell_planned_otherwise_or_missing_is_not_the_same_run():
    other = _runs(drop=("replay-p0-s1993",))
    other.loc[other["run_id"] == "der-p2-s1994", "exemplars"] = 1999  # another plan: another run
    pairs = shared_runs(_runs(), other)
    assert len(pairs) == 17
    assert not {"replay-p0-s1993", "der-p2-s1994"} & set(pairs["method"] + "-p" + pairs["point"].astype("Int64").astype(str)
                                                         + "-s" + pairs["seed"].astype(str))
    assert numerical_spread(shared_runs(_runs(drop=tuple(_runs()["run_id"])), _runs())).line() == "no run in common"


def test_seed_spread_is_the_root_mean_square_of_the_cells_stds():
    summary = pd.DataFrame({"n_seeds": [2, 2, 1], "cnn_average_accuracy_std": [0.3, 0.4, math.nan]})
    assert seed_spread(summary) == pytest.approx(math.sqrt((0.09 + 0.16) / 2))
    assert math.isnan(seed_spread(summary[summary["n_seeds"] == 1]))


def _with_numerics(records: list[dict], threads_of) -> list[dict]:
    for record in records:
        record["origin"]["numerics"] = {**ONE_THREAD, "threads": threads_of(record)}
    return records


def test_records_made_under_several_numerics_are_named():
    records = _with_numerics(grid_records(), lambda record: 2 if record["cell"]["seed"] == 1994 else 1)
    lines = mixed_numerics(records)
    # complete runs only: 10 of seed 1993 (9 + joint) and 9 of seed 1994
    assert lines == ["cpu_capability=AVX2, mkl=2024.2, onednn=3.12.0, threads=1, torch=2.14.1 (10 run(s))",
                     "cpu_capability=AVX2, mkl=2024.2, onednn=3.12.0, threads=2, torch=2.14.1 (9 run(s))"]
    assert format_mixed_numerics(lines).startswith("warning: the complete runs were made under 2 different numerics")
    assert mixed_numerics(_with_numerics(grid_records(), lambda record: 1)) == []
    assert mixed_numerics(grid_records()) == []  # records from before numerics were kept say nothing
    assert format_mixed_numerics([]) == ""


def test_the_report_and_its_page_warn_of_mixed_numerics(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(writer, "_write_plots", lambda *args, **kwargs: [])  # test_report.py checks them
    for record in _with_numerics(grid_records(), lambda record: 2 if record["run_id"] == "der-p0-s1993" else 1):
        _write(tmp_path, record)
    with pytest.warns(UserWarning, match="grid.json"):
        write_report(tmp_path)
    printed = capsys.readouterr().out
    assert "warning: the complete runs were made under 2 different numerics" in printed
    assert "threads=2, torch=2.14.1 (1 run(s))" in printed and "threads=1, torch=2.14.1 (18 run(s))" in printed
    page = (tmp_path / PAGE).read_text(encoding="utf-8")
    assert "made under 2 different numerics" in page and "threads=2, torch=2.14.1 (1 run(s))" in page
