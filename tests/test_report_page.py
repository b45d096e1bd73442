"""report.html and the comparison page on the synthetic experiment of tests/test_report.py (3
methods x 3 budget points x 2 seeds, joint, one failed run): the sections in order with their
tables and inline figures, exact cells, no network reference and no machine path, the failed run's
error scrubbed, the page replaced with the set, the experiment file from grid.json, and the
`report` command with several folders. Nothing trains."""
from __future__ import annotations

import json
import re
import shutil
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import run_all
from benchmark.report import writer
from benchmark.report.compare import default_page_path, spread_lines, write_comparison
from benchmark.report.page import PAGE, render_page, scrub_paths
from benchmark.report.tables import GROUPS_LEGEND, NO_COMPARISON
from benchmark.report.writer import GRID_FILE, MANIFEST, STAGING_PREFIX, load_records, write_report
from test_report import _write, grid_records  # the synthetic experiment, built by hand there

REPO = Path(__file__).resolve().parents[1]
HOME = Path.home()
NAME = "cifar100_b0inc10_paper"
SECTIONS = ["experiment-file", "plan", "curves", "tables", "per-task", "memory", "failed", "cost",
            "provenance"]
# Tables each section holds: summary (average, last) and AUC; per-task CNN and NME.
# Memory: the audit per run, then the stored bytes per configuration and budget point.
TABLES = {"experiment-file": 0, "plan": 1, "curves": 0, "tables": 3, "per-task": 2, "memory": 2,
          "failed": 1, "cost": 1, "provenance": 1}
EXPERIMENT_FILE = {"name": f"{NAME}.yaml",
                   "keys": {"name": NAME, "dataset": "cifar100", "scenario": "B0Inc10",
                            "methods": ["replay", "der", "memo", "joint"], "seeds": [1993, 1994]}}
FAILED = "replay-p1-s1995"


class Page(HTMLParser):
    """The page as parsed: sections in order, per section its tables (rows of cell texts), inline
    SVGs, preformatted blocks and text; every element closed in order."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.order: list[str] = []
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.svgs: dict[str, int] = {}
        self.pre: dict[str, list[str]] = {}
        self.text: dict[str, list[str]] = {}
        self.open: list[str] = []
        self.section = "top"
        self.cell: list[str] | None = None
        self.feed(text)
        self.close()
        assert self.open == [], f"elements never closed: {self.open}"

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "section":
            self.section = dict(attrs)["id"]
            self.order.append(self.section)
        elif tag == "table":
            self.tables.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.tables[self.section][-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "svg" and "svg" not in self.open[:-1]:
            self.svgs[self.section] = self.svgs.get(self.section, 0) + 1
        elif tag == "pre":
            self.pre.setdefault(self.section, []).append("")

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()
        if tag in ("td", "th"):
            self.tables[self.section][-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        self.text.setdefault(self.section, []).append(data)
        if self.cell is not None:
            self.cell.append(data)
        if "pre" in self.open:
            self.pre[self.section][-1] += data

    def section_text(self, section: str) -> str:
        return "".join(self.text.get(section, []))

    def row(self, section: str, table: int, first_cells: list[str]) -> list[str]:
        """The row of table number `table` in `section` that begins with `first_cells`."""
        rows = [row for row in self.tables[section][table] if row[:len(first_cells)] == first_cells]
        assert len(rows) == 1, (first_cells, rows)
        return rows[0]


def _records_with_paths(experiment: Path) -> list[dict]:
    """grid_records(), the failed run's error naming the experiment folder, the repository, home and
    a folder outside them, as a real traceback does."""
    records = grid_records()
    failed = next(record for record in records if record["run_id"] == FAILED)
    failed["error"] = {
        "type": "RuntimeError",
        "message": f"CUDA out of memory; resume from {experiment}/runs/{FAILED}/checkpoint.pt.",
        "traceback": (f'File "{REPO}/benchmark/train/runner.py", line 164, in execute_run\n'
                      f'File "/opt/conda/lib/python3.11/site-packages/torch/serialization.py", '
                      f'line 3\nreading {HOME}/data/cifar100/train.npz')}
    return records


def _make_experiment(folder: Path, records: list[dict], experiment_file: dict | None) -> Path:
    for record in records:
        _write(folder, record)
    cells = [{"run_id": record["run_id"], **record["cell"]} for record in records]
    grid = {"experiment": NAME, **({"experiment_file": experiment_file} if experiment_file else {}),
            "cells": cells}
    (folder / GRID_FILE).write_text(json.dumps(grid))
    return folder


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Path:
    """The synthetic experiment under <tmp>/results/<name>, its report written once (read only)."""
    experiment = tmp_path_factory.mktemp("page") / "results" / NAME
    experiment.mkdir(parents=True)
    _make_experiment(experiment, _records_with_paths(experiment), EXPERIMENT_FILE)
    write_report(experiment)
    return experiment


@pytest.fixture(scope="module")
def page(reported) -> Page:
    return Page((reported / PAGE).read_text(encoding="utf-8"))


def _copy(reported: Path, tmp_path: Path, name: str = NAME) -> Path:
    """A writable copy of the reported experiment; its records' messages keep the original folder."""
    return Path(shutil.copytree(reported, tmp_path / "results" / name))


# ------------------------------------------------------------------------ scrubbing paths

@pytest.mark.parametrize("text, expected", [
    ("see /data/results/exp/runs/r1/log.txt.", "see runs/r1/log.txt."),
    ('File "/src/repo/benchmark/train/runner.py", line 164', 'File "./benchmark/train/runner.py", line 164'),
    ("reading /home/ada/data/cifar100/train.npz failed", "reading ~/data/cifar100/train.npz failed"),
    ("/usr/lib/python3.11/site-packages/torch/nn/functional.py:12: warning",
     "…/nn/functional.py:12: warning"),
    ("in /data/results/exp and /src/repo, or /home/ada", "in . and ., or ~"),
    ("under /src/repo/results/exp2/runs", "under ./results/exp2/runs"),
    ("./relative/x, a/b/c, 1/2, ~/y and https://example.org/a/b stay",
     "./relative/x, a/b/c, 1/2, ~/y and https://example.org/a/b stay"),
    ("a / b", "a / b"),
    ("/opt", "…/opt"),
])
def test_scrub_paths(text, expected):
    assert scrub_paths(text, Path("/data/results/exp"), repo=Path("/src/repo"),
                       home=Path("/home/ada")) == expected


def test_scrub_paths_prefers_the_experiment_folder_inside_the_repository():
    scrubbed = scrub_paths("/src/repo/results/exp/runs/a and /src/repo/run_all.py",
                           Path("/src/repo/results/exp"), repo=Path("/src/repo"), home=Path("/src"))
    assert scrubbed == "runs/a and ./run_all.py"


# ------------------------------------------------------------------------ the page

def test_the_page_is_part_of_the_set(reported):
    outputs = sorted(path.name for path in reported.iterdir())
    assert PAGE in outputs and not any(name.startswith(STAGING_PREFIX) for name in outputs)
    assert PAGE in writer.OUTPUTS


def test_sections_in_order_with_their_tables_and_figures(reported, page):
    ranked = (reported / "ranks.csv").is_file()  # benchmark.report.ranks decides whether it ranks
    expected = SECTIONS[:4] + ["ranks"] * ranked + SECTIONS[4:]
    assert page.order == expected
    for section, count in TABLES.items():
        assert len(page.tables.get(section, [])) == count, section
    svgs = sorted(path.name for path in (reported / "plots").rglob("*.svg"))
    assert len(svgs) == 7 and sum(page.svgs.values()) == len(svgs)
    assert page.svgs == {"curves": 4, "tables": 1, "per-task": 2}
    contents = page.tables.get("top", [])
    assert contents == [] and "Contents" in page.section_text("top")


def test_summary_and_auc_cells_as_the_printed_summary_marks_them(page):
    header = page.tables["tables"][0][1]
    assert header == ["method", "budget", "seeds", *["mean ± std", "±ci95", "p (Holm)", "group"] * 2]
    # replay is the best at 8 MB (61.0 vs memo 59.5, der 56.0); NME = CNN - 1
    assert page.row("tables", 0, ["replay", "8.00 MB (conv2)"]) == [
        "replay", "8.00 MB (conv2)", "2", "61.0 ± 1.4", "±12.7", "-", "*",
        "60.0 ± 1.4", "±12.7", "-", "*"]
    assert page.row("tables", 0, ["joint"]) == ["joint", "no budget", "1", "80.0", "-", "-", "-",
                                                "79.0", "-", "-", "-"]
    assert page.row("tables", 2, ["replay", "CNN"])[:3] == ["replay", "CNN", "7.890 ± 0.184"]
    assert GROUPS_LEGEND in page.section_text("tables")


def test_plan_memory_audit_cost_and_provenance(page):
    assert page.row("plan", 0, ["der", "1: resnet14"]) == [
        "der", "1: resnet14", "12.000", "resnet14 x 3", "1,854,016", "2000", "6,144,000",
        "12,582,912", "1993, 1994"]
    memory = page.section_text("memory")
    assert "19 of 19 run-cells with a budget stayed within it" in memory
    assert page.row("memory", 0, ["memo", "20.00 MB (resnet20)", "1994"])[4:] == [
        "3", "20,971,520", "20,971,520", "20,971,520", "0", "yes"]
    # the paper bytes of the last task: 6,144,000 of exemplars, the rest of 12 MB the model
    assert page.row("memory", 1, ["der", "12.00 MB (resnet14)"]) == [
        "der", "12.00 MB (resnet14)", "2", "6,144,000", "6,438,912", "12,582,912"]
    # 9 runs of 103 s (seed 1993) and 9 of 104 s, joint 103 s: 1966 s; the failed run has no time
    assert page.row("cost", 0, ["total"]) == ["total", "20", "1", "0:32:46", "0.55", "cpu x 20"]
    assert ["git commit", "abc123 (clean)", "20"] in page.tables["provenance"][0]


def test_failed_run_error_is_shown_scrubbed(page):
    text = unescape(page.section_text("failed"))
    row = page.row("failed", 0, [FAILED])
    assert row[5:] == ["RuntimeError", f"CUDA out of memory; resume from runs/{FAILED}/checkpoint.pt."]
    assert 'File "./benchmark/train/runner.py", line 164' in text
    assert 'File "…/torch/serialization.py", line 3' in text
    assert "reading ~/data/cifar100/train.npz" in text


def test_no_network_reference_and_no_machine_path(reported):
    text = (reported / PAGE).read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img|iframe)\b|@import|\bsrc=", text)
    without_namespaces = re.sub(r'\bxmlns(:\w+)?="[^"]*"', "", text)
    assert "http://" not in without_namespaces and "https://" not in without_namespaces
    for machine_path in (reported.parent.parent.parent, REPO, HOME):
        assert str(machine_path) not in text, machine_path
    assert "plots/accuracy_vs_memory_average.svg" in text  # the set's files, relative


def test_experiment_file_as_yaml_and_its_absence(reported, page, tmp_path):
    (yaml_text,) = page.pre["experiment-file"]
    assert yaml_text.startswith(f"name: {NAME}\ndataset: cifar100\nscenario: B0Inc10\nmethods:\n- replay\n")
    assert f"{NAME}.yaml, with the files it includes merged in" in page.section_text("experiment-file")
    records = load_records(reported)
    old = Page(render_page(reported, reported, records, None))  # a grid.json from before
    assert "The experiment file was not recorded" in old.section_text("experiment-file")
    assert "experiment-file" not in old.pre


def test_one_seed_says_no_comparison_is_possible(tmp_path):
    one_seed = [record for record in grid_records() if record["cell"]["seed"] == 1993]
    experiment = _make_experiment(tmp_path / NAME, one_seed, None)
    write_report(experiment)
    page = Page((experiment / PAGE).read_text(encoding="utf-8"))
    assert page.tables["tables"][0][1] == ["method", "budget", "seeds", "mean ± std", "mean ± std"]
    assert page.section_text("tables").count(NO_COMPARISON) == 3  # average, last, AUC
    assert "No failed runs." in page.section_text("failed") and "failed" not in page.tables


def test_ranks_section_only_with_ranks_csv(reported, tmp_path):
    experiment = _copy(reported, tmp_path)
    records = load_records(experiment)
    pd.DataFrame({"metric": ["cnn_average_accuracy"] * 2, "method": ["memo", "replay"],
                  "mean_rank": [1.25, 1.75], "p_value": [0.0004, 0.0004]}).to_csv(
        experiment / "ranks.csv", index=False)
    page = Page(render_page(experiment, experiment, records, None))
    assert page.order.index("ranks") == page.order.index("tables") + 1
    assert page.tables["ranks"][0] == [["metric", "method", "mean_rank", "p_value"],
                                       ["cnn_average_accuracy", "memo", "1.25", "<0.001"],
                                       ["cnn_average_accuracy", "replay", "1.75", "<0.001"]]
    (experiment / "ranks.csv").unlink()
    assert "ranks" not in Page(render_page(experiment, experiment, records, None)).order


# ------------------------------------------------------------------- replaced with the set

def test_the_page_is_replaced_with_the_set(reported, tmp_path):
    experiment = _copy(reported, tmp_path)
    (experiment / PAGE).write_text("old page")
    records = grid_records()
    failed = [record for record in records if record["run_id"] == FAILED]
    (experiment / GRID_FILE).write_text(json.dumps(  # the grid now has the failed run only
        {"experiment": NAME, "cells": [{"run_id": FAILED, **failed[0]["cell"]}]}))
    with pytest.warns(UserWarning, match="19 record"):
        assert set(write_report(experiment)) == {"runs.csv", "tasks.csv"}
    assert not (experiment / PAGE).exists()  # no complete run: no page, and not the old one


def test_a_failing_page_leaves_the_previous_set_whole(reported, tmp_path, monkeypatch):
    experiment = _copy(reported, tmp_path)
    before = (experiment / PAGE).read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("page failed")

    monkeypatch.setattr(writer, "write_page", broken)  # the last step of the report
    monkeypatch.setattr(writer, "_write_plots", lambda *args: [])  # not needed to get there
    with pytest.raises(RuntimeError, match="page failed"):
        write_report(experiment)
    assert (experiment / PAGE).read_bytes() == before
    assert (experiment / "plots" / "auc.svg").is_file()
    assert not list(experiment.glob(f"{STAGING_PREFIX}*"))


def test_a_page_staged_before_a_kill_is_moved_by_the_next_report(tmp_path):
    (tmp_path / PAGE).write_text("old")
    staged = tmp_path / f"{STAGING_PREFIX}a"
    staged.mkdir()
    (staged / PAGE).write_text("new")
    (staged / MANIFEST).write_text(json.dumps({"outputs": [PAGE]}))
    writer._recover(tmp_path)
    assert (tmp_path / PAGE).read_text() == "new" and not staged.exists()


# ---------------------------------------------------------------------- the grid file

def test_run_records_the_experiment_file_in_grid_json(tmp_path):
    (tmp_path / "base.yaml").write_text("dataset: cifar100\nseeds: [1993]\nprofile: cpu\n")
    (tmp_path / "tiny.yaml").write_text("include: base.yaml\nname: tiny\nseeds: [1993, 1994]\n")
    target = SimpleNamespace(experiment=SimpleNamespace(name="tiny"), runs=[],
                             experiment_dir=tmp_path)
    run_all._write_grid(target, tmp_path / "tiny.yaml")
    expected = {"name": "tiny.yaml",
                "keys": {"dataset": "cifar100", "seeds": [1993, 1994], "profile": "cpu", "name": "tiny"}}
    assert json.loads((tmp_path / GRID_FILE).read_text())["experiment_file"] == expected
    assert writer.load_experiment_file(tmp_path) == expected
    (tmp_path / GRID_FILE).write_text(json.dumps({"experiment": "tiny", "cells": []}))
    assert writer.load_experiment_file(tmp_path) is None


# ------------------------------------------------------------------- comparing experiments

def test_comparison_page_of_two_experiments(reported, tmp_path):
    first = _copy(reported, tmp_path)
    second = _copy(reported, tmp_path, "cifar100_b0inc10_again")
    page_path = default_page_path([first, second])
    assert page_path == tmp_path / "results" / f"compare_{NAME}_cifar100_b0inc10_again.html"
    runs = pd.read_csv(second / "runs.csv")  # one run of the second moved, as other numerics move it
    runs.loc[runs["run_id"] == "der-p1-s1993", "cnn_average_accuracy"] += 0.5
    runs.to_csv(second / "runs.csv", index=False)
    write_comparison([first, second], page_path)
    text = page_path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.order == ["combined", "same-runs", "experiment-0", "experiment-1"]
    # the 19 complete runs of both, run for run: one moved by 0.5 points
    assert (f"cifar100_b0inc10_again - {NAME}: 19 run(s) in common: mean |difference| 0.03, largest "
            f"0.50 points") in page.section_text("same-runs")
    assert page.row("same-runs", 0, ["der", "1", "1993"])[3:] == ["66.00", "66.50", "+0.50"]
    assert spread_lines([first, second]) == [  # what `run_all.py report A B` prints
        f"same runs in {NAME} and cifar100_b0inc10_again (CNN average accuracy, cifar100_b0inc10_again - "
        f"{NAME}): 19 run(s) in common: mean |difference| 0.03, largest 0.50 points, std of the differences 0.11",
        # two seeds per cell, variance d^2 / 2 of each seed difference d: (2 + .5 + 8 + 2 + 8 + .5 + 4.5
        # + .5 + 8) / 9 = 3.78, root 1.94
        f"{NAME}: std over seeds of a cell 1.94 points (root mean square over its cells)",
        "cifar100_b0inc10_again: std over seeds of a cell 1.94 points (root mean square over its cells)"]
    combined = page.tables["combined"][0]
    assert combined[0] == ["", NAME, "cifar100_b0inc10_again"]
    assert combined[1] == ["method", *["AUC-A", "8.00 MB", "12.00 MB", "20.00 MB", "no budget"] * 2]
    assert combined[2][:2] == ["replay", "7.890 ± 1.652"]  # AUC-A ± its 95 % interval
    assert combined[2][2] == "61.0 ± 12.7"
    for number, name in enumerate((NAME, "cifar100_b0inc10_again")):
        section = f"experiment-{number}"
        assert name in page.section_text(section)
        assert len(page.tables[section]) == 2 and page.svgs[section] == 1  # where it ran, AUC
        assert f"{name}/plots/accuracy_vs_memory_average.svg" in page.section_text(section)
    for machine_path in (tmp_path, REPO, HOME):
        assert str(machine_path) not in text


def test_report_command_checks_every_folder_first(reported, tmp_path, capsys):
    assert run_all.main(["report", str(reported), str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"experiment folder {tmp_path / 'nowhere'} does not exist" in err
    assert run_all.main(["report", str(reported), "--page", str(tmp_path / "x.html")]) == 2
    assert "give two folders or more" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
