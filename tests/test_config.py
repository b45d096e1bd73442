"""Experiment files and `run_all.py plan`: every bad value gets an error naming the key and the fix."""
import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark.config import ConfigError, load_experiment, parse_experiment
from benchmark.grid import expand

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "benchmark" / "configs" / "cifar100_b0inc10_paper.yaml"
GOOD = {"name": "t", "dataset": "cifar100", "scenario": "B0Inc10", "methods": ["replay"],
        "budgets": "paper", "seeds": [1993], "profile": "paper"}


def problems(**changes):
    raw = {**GOOD, **changes}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError) as error:
        parse_experiment(raw)
    return str(error.value)


def test_good_file_parses_with_defaults():
    experiment = parse_experiment(GOOD)
    assert experiment.policy == "paper" and experiment.network_seed == 1
    assert experiment.family[-1] == experiment.benchmark_backbone == "resnet32"
    assert experiment.profile.first_task.epochs == 200


@pytest.mark.parametrize("change, expected", [
    ({"methods": ["icarl", "derr"]}, "unknown method 'derr'; did you mean der"),
    ({"dataset": "cifar1000"}, "dataset: 'cifar1000' is not allowed; use one of cifar100, cifar10, imagenet100"),
    ({"scenario": "B0I10"}, "scenario"),
    ({"scenario": "B0Inc30"}, "30"),
    ({"budgets": "big"}, "budgets: 'big': use paper, fair, or a non-empty list"),
    ({"budgets": [8, -1]}, "budgets"),
    ({"seeds": 1993}, "seeds: 1993: use a non-empty list of integers"),
    ({"profile": "fast"}, "profile: 'fast' is not allowed; use one of paper, cpu"),
    ({"policy": "loose"}, "policy: 'loose' is not allowed; use one of paper, strict"),
    ({"name": "../escape"}, "not a safe folder name"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"family": ["resnet18"]}, "built for imagenet images"),
    ({"method_options": {"memo": {"train_bsae": False}}}, "unknown option(s) ['train_bsae']"),
    ({"training": {"first_task": {"epoch": 3}}}, "training.first_task: unknown key(s) ['epoch']"),
    ({"seeds": None}, "missing key 'seeds'"),
])
def test_bad_values_are_named(change, expected):
    assert expected in problems(**change)


def test_all_problems_reported_at_once():
    message = problems(dataset="mnist", methods=["nope"], profile="x")
    assert "3 problem(s)" in message


def test_include_and_training_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(GOOD))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"include": "base.yaml", "name": "child",
                                     "training": {"first_task": {"epochs": 3, "milestones": [2]},
                                                  "later_tasks": {"all": {"epochs": 2, "milestones": [1]}}}}))
    experiment = load_experiment(child)
    assert experiment.name == "child" and experiment.methods == ("replay",)
    assert experiment.profile.first_task.epochs == 3 and experiment.profile.first_task.milestones == (2,)
    assert experiment.profile.later_tasks["icarl"].epochs == 2


def test_finetune_runs_once_for_all_budget_points():
    runs = expand(load_experiment(PAPER))
    finetune = [r for r in runs if r.method == "finetune"]
    assert len(finetune) == 1 and len(finetune[0].cells) == 5
    assert len({r.run_id for r in runs}) == len(runs)


def test_plan_csv_gives_the_paper_table():
    out = subprocess.run([sys.executable, "run_all.py", "plan", str(PAPER), "--csv"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {"method", "seed", "budget_mb", "backbone", "model_params", "exemplars", "model_bytes",
            "exemplar_bytes", "total_bytes", "policy"} <= set(rows[0])
    memo = [(r["backbone"], int(r["exemplars"]), int(r["model_params"])) for r in rows if r["method"] == "memo"]
    assert memo == [("conv2", 2118, 372_480), ("resnet14", 2495, 1_337_680), ("resnet20", 2768, 2_100_752),
                    ("resnet26", 3040, 2_863_824), ("resnet32", 3312, 3_626_896)]
    wa = [int(r["exemplars"]) for r in rows if r["method"] == "wa"]
    assert wa == [2000, 3634, 4900, 6165, 7431]
    assert all(r["policy"] == "paper" for r in rows)


def test_plan_reports_bad_files_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "methods": ["replya"]}))
    result = subprocess.run([sys.executable, "run_all.py", "plan", str(bad)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "did you mean replay" in result.stderr and "Traceback" not in result.stderr
