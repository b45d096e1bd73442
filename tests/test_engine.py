"""The training engine end to end: tiny real runs of every method on the real CIFAR-100 arrays.

Three module-scoped sets of runs keep this cheap (a few CPU minutes in all):
- LEARN: B0Inc50 (2 tasks of 50 classes), conv2_half, 30 train / 20 test images per class, every
  method at one budget that keeps every old image (30 per class) as an exemplar. Long enough on
  task 1 (4 epochs, batch 16, lr 0.1 throughout) for Finetune to forget; used for the accuracy,
  shared-first-task and record checks.
- PLAN: the same scenario at 5 images per class and one epoch per task, at two MB budgets over a
  two-member family (so DER/MEMO pick conv2_half at one point and resnet8_half at the other), and
  a strict-policy plan: the memory audit against the planner.
- single extra runs for the budget failure, determinism and failure records.

Every schedule field is pinned here (not taken from the `cpu` profile), so the measured numbers
the thresholds rest on do not move when the profile is retuned.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import Run, expand
from benchmark.files import write_json_atomic
from benchmark.records.store import record_path, record_status, run_dir
from benchmark.train.runner import execute_run, first_task_path
from methods import METHODS
from methods.finetune import Finetune
from conftest import extra_phases, tiny_experiment

ALL = METHODS.names()
EXEMPLAR_METHODS = [name for name in ALL if METHODS.get(name).uses_exemplars]
SHARING = [name for name in ALL if METHODS.get(name).shares_first_task]
OWN_FIRST_TASK = ["podnet", "coil"]  # cosine classifiers: each trains its own first task
IMAGE_BYTES = 32 * 32 * 3
THREADS = 2
SGD = {"lr": 0.1, "lr_decay": 0.1, "momentum": 0.9}

LEARN_IMAGES = 30
# conv2_half (41,088 bytes) + 3,014 exemplars >= 100 classes x 30 images; DER's two backbones leave it
# exactly the 3,000 (a budget where every method had room to spare would be refused as limiting nothing)
LEARN_MB = 8.87
# Each method's extra phase for 2 epochs. BiC's pair at lr 0.01: at this scale (accuracies near 8 %) its
# stage-2 loss has little to fit, and at lr 0.1 the pair overshoots (held-out loss 3.987 then 4.004)
# and trades the new classes for the old (CNN old/new 13.5/1.5 % against 10.7/5.4 % uncorrected);
# at 0.01 it gives 11.0/4.5 %.
LEARN_PHASES = extra_phases(2, batch_size=16, **SGD, weight_decay=2e-4)
LEARN_PHASES["bic"]["bias_correction"] = {**LEARN_PHASES["bic"]["bias_correction"], "lr": 0.01}
LEARN = {
    "name": "engine_learning", "dataset": "cifar100", "scenario": "B0Inc50", "methods": ALL,
    "budgets": [LEARN_MB], "seeds": [1993], "profile": "cpu",
    "family": ["conv2_half"], "benchmark_backbone": "conv2_half",
    "training": {"images_per_class": LEARN_IMAGES, "test_images_per_class": 20, "augment": True,
                 "first_task": {"epochs": 8, "milestones": [7], "batch_size": 32, **SGD, "weight_decay": 5e-4},
                 "later_tasks": {"all": {"epochs": 4, "milestones": [100], "batch_size": 16, **SGD,
                                         "weight_decay": 2e-4}},
                 "phases": LEARN_PHASES},
}
LEARN_PHASE_EPOCHS = {"bic": 2, "foster": 2, "podnet": 2}
PLAN_IMAGES = 5
PLAN = tiny_experiment("engine_plan", ALL, [0.6, 0.75], training={
    "images_per_class": PLAN_IMAGES, "test_images_per_class": 2, "augment": True,
    "first_task": {"epochs": 1, "milestones": [1], "batch_size": 32, **SGD, "weight_decay": 5e-4},
    "later_tasks": {"all": {"epochs": 1, "milestones": [1], "batch_size": 32, **SGD, "weight_decay": 2e-4}},
    "phases": extra_phases(1, batch_size=32, **SGD, weight_decay=2e-4)})
STRICT = {**PLAN, "name": "engine_strict", "policy": "strict", "methods": EXEMPLAR_METHODS, "budgets": [0.8]}


def execute(run: Run, root: Path, results_root: Path, data_root: Path) -> dict:
    return execute_run(run, root / "experiments" / run.experiment, results_root, "cpu", data_root, threads=THREADS)


def run_all(raw: dict, root: Path, results_root: Path, data_root: Path) -> list[tuple[Run, dict]]:
    torch.manual_seed(0)
    return [(run, execute(run, root, results_root, data_root)) for run in expand(parse_experiment(raw))]


def final(record: dict) -> dict:
    return record["tasks"][-1]


def accuracies(record: dict) -> list:
    return [[t["cnn_accuracy"], t["nme_accuracy"], t["cnn_accuracy_per_task"], t["nme_accuracy_per_task"]]
            for t in record["tasks"]]


def without_nan(value):
    """NaN -> None, recursively, so records compare equal after a JSON round trip."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nan(v) for v in value]
    return value


@pytest.fixture(scope="module")
def learning(tmp_path_factory, cifar_root):
    root = tmp_path_factory.mktemp("learning")
    results_root = root / "results"
    pairs = run_all(LEARN, root, results_root, cifar_root)
    assert [r.method for r, _ in pairs] == ALL  # one run per method (a single budget point)
    return {"root": root, "results_root": results_root, "experiment_dir": root / "experiments" / LEARN["name"],
            "runs": {r.method: r for r, _ in pairs}, "records": {r.method: rec for r, rec in pairs}}


@pytest.fixture(scope="module")
def planned(tmp_path_factory, cifar_root):
    root = tmp_path_factory.mktemp("plan")
    results_root = root / "results"
    pairs = run_all(PLAN, root, results_root, cifar_root) + run_all(STRICT, root, results_root, cifar_root)
    return {"root": root, "results_root": results_root, "pairs": pairs}


# -- every method learns ---------------------------------------------------------------------------
def test_every_registered_method_runs_every_task(learning):
    assert set(learning["records"]) == set(METHODS.names())
    for method, record in learning["records"].items():
        assert record["status"] == "complete", (method, record["error"])
        assert [t["task"] for t in record["tasks"]] == [0, 1]
        assert [t["classes_seen"] for t in record["tasks"]] == [50, 100]
        assert [len(t["cnn_accuracy_per_task"]) for t in record["tasks"]] == [1, 2]
        for task in record["tasks"]:
            assert 0 <= task["cnn_accuracy"] <= 100
            # overall accuracy is the mean of the per-task ones (equal tasks, 20 test images per class)
            assert task["cnn_accuracy"] == pytest.approx(sum(task["cnn_accuracy_per_task"]) / (task["task"] + 1),
                                                         abs=1e-4)
        epochs = record["tasks"][1]["epochs"]
        assert sum("phase" not in e for e in epochs) == 4  # the later-task schedule ran
        assert sum("phase" in e for e in epochs) == LEARN_PHASE_EPOCHS.get(method, 0), method  # its extra phase
        assert record["tasks"][0]["epochs"] == []       # the first task was loaded, not retrained


def test_first_task_learns_well_above_chance(learning):
    # 50 classes: chance is 2 %. Measured: 14.5 % after 8 epochs on 30 images per class.
    for method, record in learning["records"].items():
        assert record["tasks"][0]["cnn_accuracy"] >= 7.0, method


def test_every_method_learns_the_new_classes(learning):
    # Chance on the second task's classes (argmax over 100) is 1 %. Measured: 6.3-11.3 %.
    for method, record in learning["records"].items():
        assert final(record)["cnn_accuracy_per_task"][1] >= 3.0, method


def test_exemplar_methods_keep_old_classes_better_than_finetune(learning):
    """Accuracy on the first task's classes after the second task. Finetune (new logits only, no
    exemplars) forgets them; the exemplar methods, which keep all 30 images of every old class, do not.
    Measured (first task 14.5 %): Finetune 0.6 %; CNN replay 8.7, iCaRL 9.7, WA 5.0, DER 4.5, MEMO 4.5,
    joint 7.9 %; NME 7.8-9.2 %. (Weight aligning lowers the old classes' CNN accuracy at this tiny scale.)
    GEM trains on the new classes' logits only and keeps the old ones through its gradient constraint
    alone: measured 1.9 % CNN, so it is held to less (test_gem_keeps_some_old_classes)."""
    records = learning["records"]
    finetune_old = final(records["finetune"])["cnn_accuracy_per_task"][0]
    assert finetune_old <= 2.0  # Finetune really forgot (chance on 100 classes is 1 %)
    for method in [m for m in EXEMPLAR_METHODS if m != "gem"] + ["joint"]:
        task = final(records[method])
        cnn_old, nme_old = task["cnn_accuracy_per_task"][0], task["nme_accuracy_per_task"][0]
        assert cnn_old >= finetune_old + 2.0, (method, task["cnn_accuracy_per_task"])
        assert max(cnn_old, nme_old) >= finetune_old + 4.0, (method, cnn_old, nme_old)
    # Without weight aligning the classifier itself keeps the old classes by a wide margin.
    for method in ("replay", "icarl", "joint"):
        assert final(records[method])["cnn_accuracy_per_task"][0] >= finetune_old + 4.0, method


def test_exemplars_and_memory_of_the_learning_runs(learning):
    for method, record in learning["records"].items():
        run = learning["runs"][method]
        stored = [t["exemplars_stored"] for t in record["tasks"]]
        if method == "finetune":
            assert stored == [0, 0]
            assert all(math.isnan(t["nme_accuracy"]) for t in record["tasks"])
        else:  # the budget holds more than 30 per class: every training image is kept
            assert stored == [50 * LEARN_IMAGES, 100 * LEARN_IMAGES], method
            assert all(not math.isnan(t["nme_accuracy"]) for t in record["tasks"])
        if method in EXEMPLAR_METHODS:
            assert run.exemplars >= 100 * LEARN_IMAGES
        for task in record["tasks"]:
            for policy in ("paper", "strict"):
                memory = task["memory"][policy]
                assert memory["policy"] == policy
                assert memory["exemplar_bytes"] == task["exemplars_stored"] * IMAGE_BYTES
                assert memory["total_bytes"] == memory["model_bytes"] + memory["exemplar_bytes"]
            assert task["memory"]["strict"]["model_bytes"] > task["memory"]["paper"]["model_bytes"]
        cell = run.cells[0]
        assert final(record)["memory"][cell.policy]["model_bytes"] == cell.model_bytes, method
    # growing methods add a backbone (DER) or a specialized block (MEMO) at the second task
    for method in ("der", "memo"):
        paper = [t["memory"]["paper"]["model_bytes"] for t in learning["records"][method]["tasks"]]
        assert paper[1] > paper[0]
    der_paper = [t["memory"]["paper"]["model_bytes"] for t in learning["records"]["der"]["tasks"]]
    assert der_paper[1] == 2 * der_paper[0]


def test_gem_keeps_some_old_classes(learning):
    """GEM's episodic memory constrains each step so that no past task's loss rises: Finetune, with
    the same masked new-class loss and no constraint, keeps 0.3-0.6 % of the old classes."""
    records = learning["records"]
    finetune_old = final(records["finetune"])["cnn_accuracy_per_task"][0]
    gem = final(records["gem"])
    assert max(gem["cnn_accuracy_per_task"][0], gem["nme_accuracy_per_task"][0]) >= finetune_old + 1.0


# -- the shared first-task model ---------------------------------------------------------------------
def test_methods_share_the_first_task_model(learning):
    records = learning["records"]
    assert sorted(set(ALL) - set(SHARING)) == sorted(OWN_FIRST_TASK)
    first = {m: r["tasks"][0] for m, r in records.items() if m in SHARING}
    reference = first["finetune"]
    for method, task in first.items():
        assert task["cnn_accuracy"] == reference["cnn_accuracy"], method
        assert task["cnn_accuracy_per_task"] == reference["cnn_accuracy_per_task"], method
    # the exemplar methods keep the same 30 images per class with the same network: same NME
    nme = {first[m]["nme_accuracy"] for m in EXEMPLAR_METHODS if m in SHARING}
    assert len(nme) == 1
    cache = sorted((learning["results_root"] / "first_task").glob("*.pt"))
    # one shared model, and one of its own for each method that does not share it
    own = {first_task_path(learning["results_root"], learning["runs"][m]) for m in OWN_FIRST_TASK}
    shared = first_task_path(learning["results_root"], learning["runs"]["memo"])
    assert set(cache) == own | {shared} and len(own) == len(OWN_FIRST_TASK) and shared not in own
    payload = torch.load(shared, weights_only=True)
    assert payload["cnn_accuracy"] == reference["cnn_accuracy"]
    assert payload["identity"]["backbone"] == "conv2_half" and payload["identity"]["first_task_classes"] == 50
    # trained once (by the first run), loaded by every run
    logs = {m: (run_dir(learning["experiment_dir"], learning["runs"][m].run_id) / "log.txt").read_text()
            for m in records}
    trained = [m for m, text in logs.items() if re.search(r"first-task model \w+\.pt: CNN", text)]
    assert sorted(trained) == sorted([SHARING[0], *OWN_FIRST_TASK])  # each model trained once, by its first run
    assert all("loaded the shared first-task model" in text for text in logs.values())


# -- budgets -------------------------------------------------------------------------------------------
def test_plan_has_the_expected_shape(planned):
    cells = {(r.method, c.point_label, c.policy): c for r, _ in planned["pairs"] for c in r.cells}
    # DER/MEMO: the 0.6 MB point leaves no room for resnet8_half plus 200 anchor exemplars; 0.75 MB does.
    assert cells["der", "0.6MB", "paper"].backbone == "conv2_half"
    assert cells["der", "0.75MB", "paper"].backbone == "resnet8_half"
    assert cells["memo", "0.75MB", "paper"].backbone == "resnet8_half"
    assert cells["replay", "0.75MB", "paper"].backbone == "conv2_half"
    # Finetune keeps no exemplars: one run serves both points.
    finetune = [r for r, _ in planned["pairs"] if r.method == "finetune"]
    assert len(finetune) == 1 and len(finetune[0].cells) == 2
    assert {c.policy for r, _ in planned["pairs"] for c in r.cells} == {"paper", "strict"}


def test_every_planned_run_fits_its_budget(planned):
    checked = 0
    for run, record in planned["pairs"]:
        assert record["status"] == "complete", (run.method, record["error"])
        last = final(record)
        for cell in run.cells:
            memory = last["memory"][cell.policy]
            # the audit counts exactly what the planner planned for the model
            assert memory["model_bytes"] == cell.model_bytes, (run.method, cell.point_label, cell.policy)
            if cell.budget_bytes is not None:
                assert memory["total_bytes"] <= cell.budget_bytes, (run.method, cell.point_label, cell.policy)
                checked += 1
        for task in record["tasks"]:
            assert task["exemplars_stored"] <= run.exemplars, (run.method, task["task"])
            assert task["memory"]["paper"]["exemplar_bytes"] == task["exemplars_stored"] * IMAGE_BYTES
        if METHODS.get(run.method).uses_exemplars:
            # floor(E / K) per class, capped by the 5 images each class has
            expected = [min(run.exemplars // seen, PLAN_IMAGES) * seen for seen in (50, 100)]
            assert [t["exemplars_stored"] for t in record["tasks"]] == expected, run.method
        if run.method == "joint":
            assert last["exemplars_stored"] == run.exemplars == 100 * PLAN_IMAGES
        if METHODS.get(run.method).growth != "single":
            # growing methods are below budget before the last task
            assert record["tasks"][0]["memory"]["paper"]["model_bytes"] < last["memory"]["paper"]["model_bytes"]
    assert checked == 2 * 11 + 10  # paper: 11 methods (not Joint) x 2 points; strict: 10 exemplar methods x 1


def test_strict_audit_counts_the_teacher(planned):
    strict = {r.method: (r, rec) for r, rec in planned["pairs"] if r.cells[0].policy == "strict"}
    replay, icarl = final(strict["replay"][1])["memory"]["strict"], final(strict["icarl"][1])["memory"]["strict"]
    # iCaRL holds the previous model (50 classes) next to the current one (100 classes)
    assert icarl["model_bytes"] > replay["model_bytes"]
    teacher = icarl["model_bytes"] - replay["model_bytes"]
    assert teacher == replay["model_bytes"] - 50 * (32 + 1) * 4  # the teacher's classifier has 50 rows fewer
    assert strict["icarl"][0].exemplars < strict["replay"][0].exemplars


def test_a_run_above_its_budget_fails_loudly(planned, cifar_root, tmp_path):
    run = next(r for r, _ in planned["pairs"] if r.method == "finetune")
    cell = dataclasses.replace(run.cells[0], budget_bytes=run.cells[0].model_bytes - 1)
    tight = dataclasses.replace(run, cells=(cell,))
    record = execute_run(tight, tmp_path / "exp", planned["results_root"], "cpu", cifar_root, threads=THREADS)
    assert record["status"] == "failed"
    assert record["error"]["type"] == "BudgetExceeded"
    audited, budget = final(record)["memory"]["paper"]["total_bytes"], cell.budget_bytes
    assert audited == cell.model_bytes == 41_088 and budget == 41_087
    assert f"{audited:,}" in record["error"]["message"] and f"{budget:,}" in record["error"]["message"]
    assert "finetune" in record["error"]["message"] and "paper" in record["error"]["message"]
    assert record["summary"] is None and len(record["tasks"]) == 2
    assert record_status(tmp_path / "exp", run.run_id) == "failed"


# -- determinism -----------------------------------------------------------------------------------------
def test_later_tasks_are_deterministic(planned, cifar_root, tmp_path):
    """The same run twice (fresh experiment dirs, the cached first-task model) gives identical numbers."""
    run = next(r for r, _ in planned["pairs"] if r.method == "der" and r.cells[0].point_label == "0.75MB")
    first = execute_run(run, tmp_path / "a", planned["results_root"], "cpu", cifar_root, threads=THREADS)
    torch.rand(123)  # whatever the process did in between must not matter
    second = execute_run(run, tmp_path / "b", planned["results_root"], "cpu", cifar_root, threads=THREADS)
    assert first["status"] == second["status"] == "complete"
    assert without_nan(accuracies(first)) == without_nan(accuracies(second))
    reference = next(rec for r, rec in planned["pairs"] if r.run_id == run.run_id)
    assert without_nan(accuracies(first)) == without_nan(accuracies(reference))


def test_first_task_model_does_not_depend_on_the_global_rng(planned, cifar_root, tmp_path):
    """The same run twice in fresh results dirs (so the first task is trained twice) gives identical
    numbers, whatever the process's global torch RNG held before: a run is a function of its config
    (network_seed), not of what the worker ran earlier."""
    run = next(r for r, _ in planned["pairs"] if r.method == "replay" and r.cells[0].point_label == "0.6MB")
    torch.manual_seed(0)
    first = execute_run(run, tmp_path / "a", tmp_path / "results_a", "cpu", cifar_root, threads=THREADS)
    torch.manual_seed(1)
    second = execute_run(run, tmp_path / "b", tmp_path / "results_b", "cpu", cifar_root, threads=THREADS)
    assert first["status"] == second["status"] == "complete"
    state_a = torch.load(next((tmp_path / "results_a" / "first_task").glob("*.pt")), weights_only=True)["state"]
    state_b = torch.load(next((tmp_path / "results_b" / "first_task").glob("*.pt")), weights_only=True)["state"]
    differing = [f"{part}.{key}" for part in state_a for key in state_a[part]
                 if not torch.equal(state_a[part][key], state_b[part][key])]
    assert not differing, f"first-task models differ in {differing[:4]}"
    assert without_nan(accuracies(first)) == without_nan(accuracies(second))


# -- records ------------------------------------------------------------------------------------------------
def test_record_is_complete_and_written_atomically(learning):
    for method in ("replay", "finetune"):
        run, record = learning["runs"][method], learning["records"][method]
        path = record_path(learning["experiment_dir"], run.run_id)
        on_disk = json.loads(path.read_text())
        assert without_nan(on_disk) == without_nan(json.loads(json.dumps(record, default=str)))
        assert sorted(p.name for p in path.parent.iterdir()) == ["log.txt", "record.json"]  # no temporary left
        assert on_disk["run_id"] == run.run_id and on_disk["status"] == "complete" and on_disk["error"] is None
        assert on_disk["experiment"] == LEARN["name"]
        cell = on_disk["cell"]
        assert cell["method"] == method and cell["dataset"] == "cifar100" and cell["scenario"] == "B0Inc50"
        assert cell["seed"] == 1993 and cell["budget_bytes"] == round(LEARN_MB * 2**20) and cell["policy"] == "paper"
        assert cell["exemplars"] == run.exemplars and len(on_disk["cells"]) == len(run.cells)
        config = on_disk["config"]
        assert config["method"] == method and config["backbone"] == "conv2_half"
        assert config["images_per_class"] == LEARN_IMAGES and config["later_tasks"]["epochs"] == 4
        assert config["network_seed"] == 1 and config["experiment"] == LEARN["name"]
        origin = on_disk["origin"]
        assert origin["torch"] == torch.__version__ and origin["device"] == "cpu"
        assert origin["precision"] == "fp32" and origin["channels_last"] is True
        assert origin["fused_sgd"] is False and origin["cudnn_benchmark"] is False  # CUDA-only settings
        assert origin["cuda_version"] is None and origin["cudnn_version"] is None
        assert config["device_type"] == "cpu" and config["precision"] == "fp32"
        # the checkpoint was written after every task and removed with the run complete
        assert on_disk["checkpoint"]["bytes"] > 0 and on_disk["checkpoint"]["kept"] is False
        assert on_disk["checkpoint"]["resumed_from_task"] is None
        assert "git_sha" in origin and (origin["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", origin["git_sha"]))
        for task in on_disk["tasks"]:
            for policy in ("paper", "strict"):
                assert set(task["memory"][policy]) == {"policy", "model_bytes", "exemplar_bytes", "total_bytes"}
            for key in ("cnn_accuracy", "nme_accuracy", "cnn_accuracy_per_task", "nme_accuracy_per_task",
                        "exemplars_stored", "train_seconds", "eval_seconds", "select_seconds", "epochs"):
                assert key in task
        summary, curve = on_disk["summary"], [t["cnn_accuracy"] for t in on_disk["tasks"]]
        assert summary["cnn_average_accuracy"] == pytest.approx(sum(curve) / 2)
        assert summary["cnn_last_accuracy"] == pytest.approx(curve[-1])
        old = [t["cnn_accuracy_per_task"][0] for t in on_disk["tasks"]]
        assert summary["cnn_forgetting"] == pytest.approx(old[0] - old[1])
        assert summary["wall_seconds"] > 0
        if method == "finetune":  # no NME without exemplars
            assert summary["nme_average_accuracy"] is None and summary["nme_forgetting"] is None
        else:
            assert summary["nme_last_accuracy"] == pytest.approx(on_disk["tasks"][-1]["nme_accuracy"])


def test_interrupted_record_write_leaves_the_old_record(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "x" / "record.json"
    write_json_atomic(path, {"status": "complete", "value": 1})

    def broken_fsync(fd):
        raise OSError("disk gone")

    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(OSError):
        write_json_atomic(path, {"status": "failed", "value": 2})
    assert json.loads(path.read_text()) == {"status": "complete", "value": 1}
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]


def test_a_bad_method_option_gives_a_failed_record(planned, cifar_root, tmp_path):
    run = next(r for r, _ in planned["pairs"] if r.method == "memo" and r.cells[0].policy == "paper")
    bad = dataclasses.replace(run, training={**run.training, "method_options": {"train_bse": False}})
    record = execute_run(bad, tmp_path / "exp", planned["results_root"], "cpu", cifar_root, threads=THREADS)
    assert record["status"] == "failed"
    assert record["error"]["type"] == "ValueError" and "train_bse" in record["error"]["message"]
    assert record["error"]["cuda_context_broken"] is False
    assert "Traceback" in record["error"]["traceback"] and "train_bse" in record["error"]["traceback"]
    assert record["tasks"] == [] and record["summary"] is None
    on_disk = json.loads(record_path(tmp_path / "exp", bad.run_id).read_text())
    assert on_disk["status"] == "failed" and on_disk["run_id"] == bad.run_id
    assert "train_bse" in (run_dir(tmp_path / "exp", bad.run_id) / "log.txt").read_text()


def test_an_error_after_a_task_keeps_the_finished_tasks(planned, cifar_root, tmp_path, monkeypatch):
    def explode(self, task):
        if task.index == 1:
            raise RuntimeError("boom in after_task")

    monkeypatch.setattr(Finetune, "after_task", explode)
    run = next(r for r, _ in planned["pairs"] if r.method == "finetune")
    record = execute_run(run, tmp_path / "exp", planned["results_root"], "cpu", cifar_root, threads=THREADS)
    assert record["status"] == "failed" and record["error"]["type"] == "RuntimeError"
    assert "boom in after_task" in record["error"]["traceback"]
    assert [t["task"] for t in record["tasks"]] == [0]
    assert record_status(tmp_path / "exp", run.run_id) == "failed"


# -- random streams ---------------------------------------------------------------------------------
def test_a_class_stream_is_not_the_task_stream_of_its_number():
    from benchmark.train.engine import Engine, EngineSettings, stream_seed
    from benchmark.tools.timing import synthetic_data
    from methods.exemplars import random_order

    assert [stream_seed("task", 1, k) for k in (0, 3)] == [1000, 1003]  # what every recorded run trained with
    assert stream_seed("class", 1, 3) == 2_147_484_651                   # 2^31 + 1003
    data = synthetic_data(torch.device("cpu"), per_class=40)
    settings = EngineSettings(schedules=[], exemplars=200, selection="random", network_seed=1)
    engine = Engine(METHODS.get("replay")("conv2_half", None), data, settings, log=lambda line: None)
    picked = engine.selection_order(data.train, data.rows(data.train, 3, 4), 20, label=3)
    as_task_stream = random_order(20, 40, torch.Generator().manual_seed(1003))
    as_class_stream = random_order(20, 40, torch.Generator().manual_seed(2_147_484_651))
    assert torch.equal(picked, as_class_stream) and not torch.equal(picked, as_task_stream)


STREAMS = tiny_experiment("streams", ["finetune", "replay", "icarl", "der", "memo", "wa"], [0.75], scenario="B0Inc25",
                          training={"images_per_class": 5, "test_images_per_class": 2, "augment": True,
                                    "first_task": {"epochs": 1, "batch_size": 32, **SGD, "milestones": [],
                                                   "weight_decay": 5e-4},
                                    "later_tasks": {"all": {"epochs": 1, "batch_size": 32, **SGD, "milestones": [],
                                                            "weight_decay": 2e-4}}})


def test_random_selection_runs_got_new_ids_herding_runs_kept_theirs():
    """Class streams left the task streams' seeds: the records of random-selection runs made before
    are not reused (their ids changed), herding runs' and first-task models' are (ids and keys kept).
    Ids before the change: random replay 150145c45aae, icarl 430f78419299, der c8975f9e8c12,
    memo 6318c6670eeb, wa 92397e30988b; Finetune draws no class stream, so its id stands."""
    from benchmark.train.runner import first_task_key

    def ids(selection: str) -> dict[str, str]:
        return {run.method: run.run_id for run in expand(parse_experiment({**STREAMS, "exemplar_selection": selection}))}

    assert ids("herding") == {"finetune": "fd91e7d82dfd", "replay": "a617d9daf0dd", "icarl": "da341c54a3ab",
                              "der": "ab29b6d0a900", "memo": "43779a309f59", "wa": "d145f1e00227"}
    assert ids("random") == {"finetune": "3f79e08b5c5f", "replay": "30099accada1", "icarl": "be57472b3fe8",
                             "der": "609fea56d178", "memo": "eeed56adf84c", "wa": "3c60b434e07c"}
    runs = expand(parse_experiment({**STREAMS, "exemplar_selection": "random"}))
    assert {first_task_key(run) for run in runs} == {"1a13ca8c3537"}  # the herding runs' first-task model


def test_an_engine_brought_to_a_task_stands_where_a_run_trains_it():
    """`Engine.advance_to(1)` (what the measuring tools time) against a run that learned task 0 and
    began task 1: the same structure, exemplars, random streams and freshly drawn head."""
    from benchmark.tools.timing import method_run, speed_experiment, synthetic_data
    from benchmark.train.runner import engine_settings, new_engine

    data = synthetic_data(torch.device("cpu"), per_class=3)
    run = method_run(speed_experiment(), "der", "conv2_half")
    settings = dataclasses.replace(engine_settings(run, run.exemplars), selection="random")
    learned = new_engine(run, data, settings, log=lambda line: None)
    learned.learn_task(data.task(0))
    learned.begin_task(data.task(1))
    brought = new_engine(run, data, settings, log=lambda line: None)
    assert brought.advance_to(1) == data.task(1)
    shapes = [{k: v.shape for k, v in e.method.network.state_dict().items()} for e in (learned, brought)]
    assert shapes[0] == shapes[1]
    assert torch.equal(learned.memory.images, brought.memory.images) and len(brought.memory) == 10 * 3
    assert torch.equal(learned.generator.get_state(), brought.generator.get_state())
    # The auxiliary head is drawn afresh at task 1 from the task's stream; the blocks start from
    # the trained one in the run (DER copies the last block), from the initial one here.
    aux = [e.method.network.aux_fc.weight for e in (learned, brought)]
    assert torch.equal(*aux)
    blocks = [next(e.method.network.backbones[1].parameters()) for e in (learned, brought)]
    assert not torch.equal(*blocks)
