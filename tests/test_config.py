"""Experiment files, profiles and `run_all.py plan`: every bad value gets an error naming its
location and the fix; profiles are data, and a newly registered method needs no edit of them."""
import csv
import io
import math
import pickle
import subprocess
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from benchmark.config import profile as profiles
from benchmark.config.experiment import (ConfigError, ConfigWarning, experiment_schema, load_experiment,
                                         parse_experiment)
from benchmark.config.grid import expand
from benchmark.config.profile import Schedule, get_profile, load_profile_file
from benchmark.train.engine import EngineSettings
from budgets.accounting import POLICIES
from budgets.planner import BUDGET_MODES, PlanContext
from methods import METHODS
from methods.base import Method

from conftest import SHIPPED_EXPERIMENTS  # the known files (tests/test_schema.py pins them)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "benchmark" / "config" / "experiments"
PAPER = CONFIGS / "cifar100_b0inc10_paper.yaml"
GOOD = {"name": "t", "dataset": "cifar100", "scenario": "B0Inc10", "methods": ["replay"],
        "budgets": "paper", "seeds": [1993], "profile": "paper"}


def problems(**changes):
    raw = {**GOOD, **changes}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError) as error:
        parse_experiment(raw)
    return str(error.value)


def first_task(**values):
    return {"training": {"first_task": values}}


def test_good_file_parses_with_defaults():
    experiment = parse_experiment(GOOD)
    assert experiment.policy == "paper" and experiment.network_seed == 1
    assert experiment.anchor_exemplars == 2000 and experiment.exemplar_selection == "herding"
    assert experiment.family[-1] == experiment.benchmark_backbone == "resnet32"
    assert experiment.profile.first_task.epochs == 200
    assert experiment.scenarios == ("B0Inc10",) and experiment.seeds == (1993,) and experiment.budgets == "paper"


def test_the_planner_and_the_engine_take_the_files_defaults():
    """Each default is declared once (budgets, the experiment file, the profile) and read by the others:
    what the planner and the engine take when not told is what an experiment file means when silent."""
    ctx = PlanContext(task_sizes=(10,), image_shape=(32, 32, 3), family=("resnet32",), benchmark="resnet32")
    assert (ctx.policy, ctx.anchor_exemplars) == ("paper", 2000)
    settings = EngineSettings([], 0)
    assert (settings.selection, settings.network_seed, settings.augment, settings.eval_batch_size,
            settings.herding_batch_size, settings.precision) == ("herding", 1, True, 1000, 1000, "fp32")
    silent = get_profile("cpu")  # sets none of these
    assert (silent.augment, silent.eval_batch_size, silent.herding_batch_size, silent.precision) == (
        True, 1000, 1000, "fp32")


def test_budget_modes_and_policies_are_the_planners_and_the_accountings():
    schema = experiment_schema()["properties"]
    assert [mode for option in schema["budgets"]["anyOf"] for mode in option.get("enum", [])] == ["paper", "fair"]
    assert list(BUDGET_MODES) == ["paper", "fair"]
    assert schema["policy"]["enum"] == list(POLICIES) == ["paper", "strict"]


@pytest.mark.parametrize("path", [CONFIGS / name for name in SHIPPED_EXPERIMENTS], ids=lambda p: p.name)
def test_shipped_experiments_load_without_warnings(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        experiment = load_experiment(path)
    assert experiment.name == path.stem


@pytest.mark.parametrize("change, expected", [
    ({"methods": ["icarl", "derr"]}, "methods[1]: unknown method 'derr'; did you mean der"),
    ({"dataset": "cifar1000"}, "dataset: 'cifar1000' is not allowed; use one of cifar100, cifar10, imagenet100, imagenet1000"),
    ({"scenario": "B0I10"}, "scenario[0]: "),
    ({"scenario": "B0Inc30"}, "scenario: B0Inc30 on 100 classes: 100 classes do not divide into tasks of 30"),
    ({"scenario": 10}, "scenario: Input should be a list, got 10 (int)"),
    ({"budgets": "big"}, "budgets: 'big': use paper, fair, or a non-empty list"),
    ({"budgets": [8, -1]}, "budgets: [8, -1]: use paper, fair"),
    ({"budgets": [8, 8]}, "budgets: lists a budget twice: [8.0, 8.0]"),
    ({"seeds": 1993}, "seeds: Input should be a list, got 1993 (int)"),
    ({"seeds": [1, 1]}, "seeds: lists 1 more than once"),
    ({"profile": "fast"}, "profile: 'fast' is not allowed; use one of cpu, paper"),
    ({"policy": "loose"}, "policy: 'loose' is not allowed; use one of paper, strict"),
    ({"exemplar_selection": "best"}, "exemplar_selection: 'best' is not allowed; use one of herding, random"),
    ({"name": "../escape"}, "name: '../escape' is not a safe folder name"),
    ({"name": 5}, "name: Input should be a valid string, got 5 (int)"),
    ({"colour": "red"}, "unknown key 'colour'; allowed keys: name, include, dataset"),
    ({"family": ["resnet18"]}, "backbone 'resnet18' is built for imagenet images, but cifar100 has cifar images"),
    ({"family": ["resnet14", "resnet14"]}, "family: lists resnet14 more than once"),
    ({"benchmark_backbone": "resnet99"}, "benchmark_backbone: unknown backbone 'resnet99'"),
    ({"method_options": {"memo": {"train_bsae": False}}},
     "method_options: memo: unknown option(s) ['train_bsae']; known: ['aux_weight', 'train_base']"),
    ({"method_options": {"nope": {}}}, "method_options.nope: unknown method 'nope'"),
    ({"method_options": {"der": {"aux_weight": math.nan}}},
     "method_options: der.aux_weight: nan is not a finite number"),
    (first_task(epoch=3), "training.first_task: unknown key 'epoch'; allowed keys: epochs, milestones, weight_decay"),
    ({"training": {"lr": 0.1}}, "training: unknown key 'lr'; allowed keys: images_per_class"),
    ({"training": {"later_tasks": {"derr": {"epochs": 3}}}}, "training.later_tasks.derr: unknown method 'derr'"),
    ({"seeds": None}, "missing key 'seeds': class-order seeds"),
    # The gaps a user found with 148 bad inputs: each one an error at its location.
    (first_task(milestones=5), "training.first_task.milestones: Input should be a list, got 5 (int)"),
    ({"budgets": [math.inf]}, "budgets: [inf]: use paper, fair, or a non-empty list of positive, finite budgets"),
    ({"budgets": [math.nan]}, "budgets: [nan]: use paper"),
    ({"budgets": [True]}, "budgets: [True]: use paper"),
    ({"seeds": [-1]}, "seeds[0]: Input should be greater than or equal to 0, got -1 (int)"),
    ({"seeds": [2 ** 32]}, "seeds[0]: Input should be less than 4294967296"),
    ({"network_seed": -1}, "network_seed: Input should be greater than or equal to 0, got -1"),
    (first_task(epochs=-1), "training.first_task.epochs: Input should be greater than 0, got -1 (int)"),
    ({"training": {"later_tasks": {"all": {"epochs": 0}}}},
     "training.later_tasks.all.epochs: Input should be greater than 0, got 0 (int)"),
    (first_task(lr=math.nan), "training.first_task.lr: Input should be a finite number, got nan (float)"),
    (first_task(lr=-0.1), "training.first_task.lr: Input should be greater than 0, got -0.1 (float)"),
    (first_task(lr=0), "training.first_task.lr: Input should be greater than 0, got 0 (int)"),
    (first_task(lr_decay=1.5), "training.first_task.lr_decay: Input should be less than or equal to 1"),
    (first_task(momentum=1.0), "training.first_task.momentum: Input should be less than 1"),
    (first_task(batch_size=0), "training.first_task.batch_size: Input should be greater than 0, got 0 (int)"),
    (first_task(weight_decay=-1e-4), "training.first_task.weight_decay: Input should be greater than or equal to 0"),
    (first_task(milestones=[50, 20]), "training.first_task.milestones: [50, 20] must be strictly increasing"),
    (first_task(milestones=[20, 20]), "training.first_task.milestones: [20, 20] must be strictly increasing"),
    (first_task(milestones=[0, 20]), "training.first_task.milestones[0]: Input should be greater than 0"),
    ({"methods": []}, "methods: List should have at least 1 item, not 0, got []"),
    ({"seeds": []}, "seeds: List should have at least 1 item, not 0, got []"),
    ({"scenario": []}, "scenario: List should have at least 1 item, not 0, got []"),
    ({"budgets": []}, "budgets: []: use paper"),
    # Strict types: no conversion of strings to numbers or of bools to ints.
    (first_task(epochs="3"), "training.first_task.epochs: Input should be a valid integer, got '3' (str)"),
    (first_task(epochs=3.0), "training.first_task.epochs: Input should be a valid integer, got 3.0 (float)"),
    (first_task(lr="0.1"), "training.first_task.lr: Input should be a valid number, got '0.1' (str)"),
    ({"seeds": [True]}, "seeds[0]: Input should be a valid integer, got True (bool)"),
    ({"anchor_exemplars": "2000"}, "anchor_exemplars: Input should be a valid integer, got '2000' (str)"),
    ({"min_exemplars": False}, "min_exemplars: Input should be a valid integer, got False (bool)"),
    ({"training": {"augment": 1}}, "training.augment: Input should be a valid boolean, got 1 (int)"),
    ({"training": {"eval_batch_size": 0}}, "training.eval_batch_size: Input should be greater than 0"),
    ({"training": {"herding_batch_size": True}}, "training.herding_batch_size: Input should be a valid integer"),
    ({"training": {"images_per_class": 0}}, "training.images_per_class: Input should be greater than 0"),
    ({"training": {"precision": "fp16"}}, "training.precision: 'fp16' is not allowed; use one of fp32, bf16"),
    ({"training": 3}, "training: Input should be a valid dictionary"),
])
def test_bad_values_are_named(change, expected):
    assert expected in problems(**change)


def test_all_problems_reported_at_once_with_locations():
    message = problems(dataset="mnist", methods=["nope"], profile="x")
    assert "3 problem(s)" in message
    message = problems(seeds=[-1, 2], network_seed=True,
                       training={"first_task": {"milestones": 5, "lr": math.nan}, "later_tasks": {"wa": {"epochs": 0}}})
    assert message.startswith("<experiment> has 5 problem(s):\n  - ")
    for where in ("seeds[0]:", "network_seed:", "training.first_task.milestones:", "training.first_task.lr:",
                  "training.later_tasks.wa.epochs:"):
        assert f"\n  - {where}" in message


def test_include_and_training_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(GOOD))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"include": "base.yaml", "name": "child",
                                     "training": {"first_task": {"epochs": 3, "milestones": [2]},
                                                  "later_tasks": {"all": {"epochs": 2, "milestones": [1]},
                                                                  "wa": {"lr": 0.05}}}}))
    experiment = load_experiment(child)
    assert experiment.name == "child" and experiment.methods == ("replay",)
    assert experiment.profile.first_task == Schedule(3, (2,), 5e-4)
    assert experiment.profile.later_tasks["icarl"] == Schedule(2, (1,), 2e-4)
    assert experiment.profile.later_tasks["wa"] == Schedule(2, (1,), 2e-4, lr=0.05)  # all, then wa's own


def test_include_cycle_and_bad_include(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_experiment(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("include: 5\n")
    with pytest.raises(ConfigError, match="include: 5 is not a file name"):
        load_experiment(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="include: only a file can include another"):
        parse_experiment({**GOOD, "include": "base.yaml"})


def test_milestones_past_the_epochs_warn_once_per_schedule():
    with pytest.warns(ConfigWarning) as caught:
        parse_experiment({**GOOD, "methods": ["der", "memo", "icarl"],
                          "training": {"first_task": {"epochs": 3}, "later_tasks": {"all": {"epochs": 100}}}})
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "<experiment>: training.first_task: milestone(s) [60, 120, 170] are not below epochs=3 and never take "
        "effect; lower them, or set milestones: [] for a constant lr",
        "<experiment>: training.later_tasks (der, memo): milestone(s) [120, 150] are not below epochs=100 and "
        "never take effect; lower them, or set milestones: [] for a constant lr",
        "<experiment>: training.later_tasks (icarl): milestone(s) [120] are not below epochs=100 and never take "
        "effect; lower them, or set milestones: [] for a constant lr"]


def test_paper_profile_holds_protocol_section_5():
    paper = get_profile("paper")
    assert paper.first_task == Schedule(200, (60, 120, 170), 5e-4, lr=0.1, lr_decay=0.1, momentum=0.9, batch_size=128)
    later = {m: (s.epochs, s.milestones, s.weight_decay, s.lr, s.batch_size) for m, s in paper.later_tasks.items()}
    assert later == {"finetune": (80, (40, 70), 2e-4, 0.1, 128), "replay": (70, (30, 50), 2e-4, 0.1, 128),
                     "icarl": (170, (80, 120), 2e-4, 0.1, 128), "wa": (170, (60, 100, 140), 2e-4, 0.1, 128),
                     "der": (170, (80, 120, 150), 2e-4, 0.1, 128), "memo": (170, (80, 120, 150), 2e-4, 0.1, 128),
                     "joint": (200, (60, 120, 170), 5e-4, 0.1, 128),
                     # PyCIL 87cc411 models/<name>.py (FOSTER: exps/foster.json); docs/protocol.md section 5
                     "bic": (170, (60, 100, 140), 2e-4, 0.1, 128), "foster": (170, (80, 120, 150), 5e-4, 0.1, 128),
                     "podnet": (160, (80, 120), 5e-4, 0.1, 128), "coil": (160, (80, 120), 5e-4, 0.1, 128),
                     "gem": (100, (30, 60, 80), 2e-4, 0.1, 128)}
    assert paper.later_default == paper.later_tasks["der"]
    phases = {(m, name): (s.epochs, s.milestones, s.weight_decay, s.lr, s.batch_size)
              for m, by_phase in paper.phases.items() for name, s in by_phase.items()}
    assert phases == {("bic", "bias_correction"): (170, (60, 100, 140), 2e-4, 0.1, 128),
                      ("foster", "compression"): (130, (60, 90, 115), 0.0, 0.1, 128),
                      ("podnet", "finetune"): (20, (), 5e-4, 0.005, 128)}
    subset = (paper.images_per_class, paper.test_images_per_class, paper.augment, paper.precision)
    assert subset == (None, None, True, "fp32")
    assert paper.method_options == {"wa": {"weighting": "fixed"}, "gem": {"memory_strength": 0.0, "qp_eps": 0.0}}


def test_cpu_profile_is_the_reduced_protocol():
    cpu = get_profile("cpu")
    assert cpu.first_task == Schedule(20, (14, 18), 5e-4, batch_size=64)
    assert cpu.later_default == Schedule(6, (5,), 2e-4, batch_size=32)
    # the reference weight decay of FOSTER, PODNet and Coil (5e-4), every other method's 2e-4
    assert {m for m, s in cpu.later_tasks.items() if s != cpu.later_default} == {"foster", "podnet", "coil"}
    assert {cpu.later_tasks[m] for m in ("foster", "podnet", "coil")} == {Schedule(6, (5,), 5e-4, batch_size=32)}
    assert (cpu.images_per_class, cpu.test_images_per_class, cpu.method_options) == (50, 40, {})


def test_method_options_profile_then_experiment():
    assert parse_experiment({**GOOD, "methods": ["wa", "icarl"]}).method_options == {"wa": {"weighting": "fixed"}}
    mine = parse_experiment({**GOOD, "methods": ["wa"], "method_options": {"wa": {"weighting": "old_share"},
                                                                          "memo": {"train_base": False}}})
    assert mine.method_options == {"wa": {"weighting": "old_share"}, "memo": {"train_base": False}}
    assert parse_experiment({**GOOD, "methods": ["wa"], "profile": "cpu"}).method_options == {}
    wa = [run for run in expand(parse_experiment({**GOOD, "methods": ["wa"], "budgets": "fair"}))]
    assert [run.training["method_options"]["weighting"] for run in wa] == ["fixed"]


@pytest.fixture
def probe_method():
    """A method registered only for this test: no profile names it."""
    class Probe(Method):
        name = "probe_method"
    METHODS.add(Probe.name, Probe)
    yield Probe.name
    METHODS._entries.pop(Probe.name)  # the registry has no public removal: tests only


def test_new_method_plans_without_editing_profiles(probe_method):
    assert probe_method not in load_profile_file("paper").later_tasks
    for profile in ("paper", "cpu"):
        experiment = parse_experiment({**GOOD, "methods": ["replay", probe_method], "profile": profile,
                                       "budgets": [8]})
        default = experiment.profile.later_default
        assert experiment.profile.later_tasks[probe_method] == default == experiment.profile.schedule(probe_method, 1)
        runs = {run.method: run for run in expand(experiment)}
        assert runs[probe_method].training["later_tasks"] == asdict(default)
        assert runs[probe_method].backbone == "resnet32" and runs[probe_method].exemplars == runs["replay"].exemplars
    changed = parse_experiment({**GOOD, "methods": [probe_method],
                                "training": {"later_tasks": {probe_method: {"epochs": 9, "milestones": [4]}}}})
    assert changed.profile.later_tasks[probe_method] == Schedule(9, (4,), 2e-4)


def test_a_method_resolved_later_gets_the_default():
    profile = get_profile("paper")
    assert profile.schedule("unregistered_later", 1) == profile.later_default
    assert profile.schedule("unregistered_later", 0) == profile.first_task


def test_bad_profile_file_lists_every_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({
        "first_task": {"epochs": 5, "milestones": [3], "weight_decay": 0.0},
        "later_tasks": {"wa": {"epochs": 0}, "wq": {}}, "method_options": {"wa": {"weigting": "fixed"}}}))
    with pytest.raises(ConfigError) as error:
        load_profile_file("bad")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'bad.yaml'} has 4 problem(s):")
    for part in ("missing key 'later_default'", "later_tasks.wa.epochs: Input should be greater than 0",
                 "later_tasks.wq: unknown method 'wq'", "unknown option(s) ['weigting']"):
        assert part in message
    assert "profile: 'paper' is not allowed; use one of bad" in problems()
    assert "bad.yaml has 4 problem(s)" in problems(profile="bad")


def test_a_profile_file_is_read_by_the_experiment_files_loader(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path)
    (tmp_path / "twice.yaml").write_text("first_task: {epochs: 5}\nlater_default: {epochs: 2}\nfirst_task: {epochs: 6}\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: line 3: key 'first_task' is given twice \(lines 1 and 3\)"):
        load_profile_file("twice")
    (tmp_path / "latin1.yaml").write_bytes("later_default: {epochs: 2}\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: line 2, column 6: byte 0xe9 is not UTF-8 text"):
        load_profile_file("latin1")


def test_schedules_validate_and_travel():
    with pytest.raises(ValidationError):
        Schedule(0, (), 5e-4)
    with pytest.raises(ValidationError):
        Schedule(5, (3,), 5e-4, extra=1)
    profile = get_profile("paper")
    assert pickle.loads(pickle.dumps(profile)) == profile  # runs cross process boundaries


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
    bad.write_text(yaml.safe_dump({**GOOD, "methods": ["replya"], "seeds": [-1]}))
    result = subprocess.run([sys.executable, "run_all.py", "plan", str(bad)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "did you mean replay" in result.stderr and "seeds[0]:" in result.stderr
    assert "Traceback" not in result.stderr
