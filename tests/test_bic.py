"""BiC (methods/bic.py): the bias pairs, the stage-2 loss and the held-out split on hand-made
tensors; a tiny CIFAR run through both stages (the last task's split empty, so its stage 2 is
skipped), stopped and resumed; a tiny ImageNet-style folder run; the planner's count against the
run's audit under both policies.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.data.image_cache import CACHE_ENV
from benchmark.data.specs import DATASETS
from benchmark.records.store import run_dir
from benchmark.train import checkpoints
from benchmark.train.runner import execute_run
from budgets.planner import PlanContext, method_model
from conftest import extra_phases, tiny_experiment, tiny_training
from methods import METHODS, Task
from methods.bic import BIAS_PHASE, BiasCorrectedNet, BiC
from test_checkpoint import Killed, stop_after, timeless
from test_imagenet_training import NAME, SGD, make_folder_dataset

TINY = "conv2_half"  # 32 features


def bic(**options) -> BiC:
    torch.manual_seed(0)
    return BiC(TINY, options)


def set_pair(pair, alpha: float, beta: float) -> None:
    with torch.no_grad():
        pair.alpha.fill_(alpha)
        pair.beta.fill_(beta)


# -- the pieces ----------------------------------------------------------------------------------
def test_registered_with_a_bias_corrected_network_and_the_shared_first_task():
    method = bic()
    assert METHODS.get("bic") is BiC
    assert isinstance(method.network, BiasCorrectedNet) and BiC.shares_first_task and BiC.keeps_teacher
    assert BiC.extra_phases == ("bias_correction",)
    assert BiC.default_options == {"temperature": 2.0, "held_out_share": 0.1, "held_out_minimum": 0}


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="held_out_share 0 must be a number between 0 and 1"):
        BiC.resolve_options({"held_out_share": 0}, base_classes=0)
    with pytest.raises(ValueError, match="held_out_share"):
        bic(held_out_share=1.5)
    with pytest.raises(ValueError, match="held_out_minimum -1 must be an integer >= 0"):
        bic(held_out_minimum=-1)


def test_each_pair_corrects_its_own_task_logits():
    network = BiasCorrectedNet(TINY)
    network.add_task(2)
    network.add_task(1)
    set_pair(network.bias_pairs[1], 2.0, -1.0)
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(network.correct(logits), torch.tensor([[1.0, 2.0, 5.0]]))
    assert network.task_bounds == [0, 2, 3]


def test_the_split_is_a_tenth_of_the_memory_per_old_class():
    method = bic()
    # PyCIL's int(0.1 * 2000 / known): 20 at 10 old classes, 6 at 30, none on the first task.
    assert method.held_out_per_class(Task(1, 10, 20, 10), 2000) == 20
    assert method.held_out_per_class(Task(3, 30, 40, 10), 2000) == 6
    assert method.held_out_per_class(Task(0, 0, 10, 10), 2000) == 0
    # A small memory leaves no split (PyCIL crashes there: its issue 41); the stage is then skipped.
    assert method.held_out_per_class(Task(3, 30, 40, 10), 200) == 0
    assert method.held_out_per_class(Task(1, 10, 20, 10), 0) == 0
    assert bic(held_out_minimum=1).held_out_per_class(Task(3, 30, 40, 10), 200) == 1
    assert bic(held_out_minimum=1).held_out_per_class(Task(3, 30, 40, 10), 2000) == 6


def test_the_teacher_is_the_previous_model_with_its_pairs():
    method = bic()
    method.before_task(Task(0, 0, 2, 2))
    method.before_task(Task(1, 2, 3, 2))
    set_pair(method.network.bias_pairs[0], 3.0, 0.0)
    assert len(method.teacher.bias_pairs) == 1 and len(method.network.bias_pairs) == 2
    assert method.teacher.bias_pairs[0].alpha.item() == 1.0  # a copy, frozen
    assert not any(p.requires_grad for p in method.teacher.parameters())


def test_stage_1_trains_no_pair_and_stage_2_the_newest_only():
    method, task = bic(), Task(1, 2, 3, 2)
    method.before_task(Task(0, 0, 2, 2))
    method.before_task(task)
    main, bias = method.phases(task)
    assert (bias.name, bias.data) == (BIAS_PHASE, "held_out")
    method.begin_phase(task, main)
    pairs = {id(p) for p in method.network.bias_pairs.parameters()}
    stage_1 = method.phase_parameter_groups(main)[0]["params"]
    assert stage_1 and not pairs & {id(p) for p in stage_1}
    assert len(stage_1) == len(list(method.network.parameters())) - 4
    method.begin_phase(task, bias)
    newest = method.network.bias_pairs[-1]
    assert [id(p) for p in method.phase_parameter_groups(bias)[0]["params"]] == [id(newest.alpha), id(newest.beta)]
    assert not method.network.bias_pairs[0].alpha.requires_grad
    assert method.phases(Task(0, 0, 2, 2)) == [main]


def test_stage_2_loss_is_one_softmax_and_leaves_the_network_fixed(monkeypatch):
    method, task = bic(), Task(1, 1, 2, 2)
    method.before_task(Task(0, 0, 1, 2))
    method.before_task(task)
    method.begin_phase(task, method.phases(task)[1])
    set_pair(method.network.bias_pairs[1], 1.0, math.log(3.0))
    monkeypatch.setattr(method.network, "uncorrected", lambda images: {"logits": torch.zeros(1, 2)})
    loss = method.bias_loss(task, torch.zeros(1, 3, 32, 32), torch.tensor([1]))
    # Corrected logits (0, ln 3): softmax (1/4, 3/4), CE -ln(3/4). PyCIL's cross_entropy(softmax(.))
    # would give ln(1 + e^-0.5) = 0.47407698.
    torch.testing.assert_close(loss, torch.tensor(0.28768207))
    loss.backward()
    pair = method.network.bias_pairs[1]
    torch.testing.assert_close((pair.alpha.grad, pair.beta.grad), (torch.tensor([0.0]), torch.tensor([-0.25])))


def test_stage_2_does_not_move_the_batchnorm_statistics():
    method, task = bic(), Task(1, 2, 4, 2)
    method.before_task(Task(0, 0, 2, 2))
    method.before_task(task)
    method.network.train()
    before = {k: v.clone() for k, v in method.network.state_dict().items() if "running" in k}
    assert before
    method.bias_loss(task, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])).backward()
    after = method.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert method.network.training
    assert all(p.grad is None for p in method.network.backbone.parameters())


# -- runs ----------------------------------------------------------------------------------------
# B0Inc25, 8 train images per class; 1.6 MB leaves 532 exemplars: the split holds int(0.1 x 532 /
# known) = 2, 1 and 0 images per class at tasks 1, 2 and 3, whose stage 2 is skipped.
RAW = tiny_experiment("bic", ["bic"], [1.6], scenario="B0Inc25",
                      training=tiny_training(later_epochs=1, augment=True, images_per_class=8))


def run_bic(run, experiment_dir, results_root, data_root) -> dict:
    return execute_run(run, experiment_dir, results_root, "cpu", data_root, 1, keep_checkpoints=True)


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, cifar_root):
    root = tmp_path_factory.mktemp("bic")
    (run,) = expand(parse_experiment(RAW))
    return run, root, run_bic(run, root / "whole", root / "results", cifar_root)


def final_state(experiment_dir, run) -> dict:
    return torch.load(checkpoints.checkpoint_path(run_dir(experiment_dir, run.run_id)), weights_only=True)


def test_tiny_cifar_run_trains_both_stages(cifar_run):
    run, root, record = cifar_run
    assert record["status"] == "complete", record.get("error")
    assert run.exemplars == 532
    assert [t["classes_seen"] for t in record["tasks"]] == [25, 50, 75, 100]
    bias_epochs = [[e for e in t["epochs"] if e.get("phase") == BIAS_PHASE] for t in record["tasks"]]
    assert [len(epochs) for epochs in bias_epochs] == [0, 1, 1, 0]
    assert all(math.isfinite(t["cnn_accuracy"]) and math.isfinite(t["nme_accuracy"]) for t in record["tasks"])
    log = (run_dir(root / "whole", run.run_id) / "log.txt").read_text()
    assert f"task 3 phase {BIAS_PHASE}: no held_out images, nothing to train" in log
    network = final_state(root / "whole", run)["network"]
    pairs = [(network[f"bias_pairs.{t}.alpha"].item(), network[f"bias_pairs.{t}.beta"].item()) for t in range(4)]
    assert pairs[0] == pairs[3] == (1.0, 0.0)  # the first task trains none; task 3's split was empty
    assert pairs[1] != (1.0, 0.0) and pairs[2] != (1.0, 0.0)


def test_a_stopped_run_resumes_to_the_uninterrupted_result(cifar_run, cifar_root, monkeypatch):
    run, root, whole = cifar_run
    with monkeypatch.context() as patch:
        stop_after(2, patch)
        with pytest.raises(Killed):
            run_bic(run, root / "stopped", root / "results", cifar_root)
    resumed = run_bic(run, root / "stopped", root / "results", cifar_root)
    assert resumed["checkpoint"]["resumed_from_task"] == 2
    assert timeless(resumed) == timeless(whole)
    states = [final_state(folder, run) for folder in (root / "stopped", root / "whole")]
    for part in ("network", "teacher"):
        assert all(torch.equal(states[0][part][k], states[1][part][k]) for k in states[1][part])


def test_planner_counts_what_the_run_holds(cifar_run):
    run, _, record = cifar_run
    audited = record["tasks"][-1]["memory"]
    for policy in ("paper", "strict"):
        ctx = PlanContext(task_sizes=(25,) * 4, image_shape=(32, 32, 3), family=(TINY,), benchmark=TINY,
                          policy=policy)
        assert method_model("bic", run.backbone, ctx)[1] == audited[policy]["model_bytes"], policy
    # conv2_half: 10,272 parameters (41,088 bytes) plus BatchNorm buffers, 41,616 bytes in all.
    # Strict: the network (that, a classifier of 100 x 32 + 100 floats, 4 pairs of 2 floats) and the
    # teacher (that, 75 x 32 + 75 floats, 3 pairs): 54,848 + 51,540. Paper: the backbone's parameters.
    assert audited["strict"]["model_bytes"] == 106_388
    assert audited["paper"]["model_bytes"] == 41_088


# -- an ImageNet-style folder run ----------------------------------------------------------------
def test_tiny_folder_run_trains_both_stages(tmp_path):
    make_folder_dataset(tmp_path / "data", train=3)
    spec = dataclasses.replace(DATASETS["imagenet1000"], name=NAME, title="", num_classes=4, train_per_class=3,
                               test_per_class=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS, NAME, spec)
        patch.delenv(CACHE_ENV, raising=False)
        experiment = parse_experiment({
            "name": "tinynet", "dataset": NAME, "scenario": "B2Inc2", "methods": ["bic"], "budgets": [4.4],
            "seeds": [1], "profile": "cpu", "family": ["conv4"], "benchmark_backbone": "conv4",
            "anchor_exemplars": 4, "method_options": {"bic": {"held_out_share": 0.5}}, "training": {
                "images_per_class": None, "test_images_per_class": None, "augment": True,
                "first_task": {"epochs": 1, **SGD}, "later_tasks": {"all": {"epochs": 1, **SGD}},
                "phases": extra_phases(1, **SGD)}})
        (run,) = expand(experiment)
        # 4.4 MB less conv4's 3,624,960 bytes: 6 exemplars of 150,528; int(0.5 x 6 / 2) = 1 per class.
        assert run.exemplars == 6
        record = run_bic(run, tmp_path / "experiment", tmp_path / "results", tmp_path / "data")
    assert record["status"] == "complete", record.get("error")
    assert [t["classes_seen"] for t in record["tasks"]] == [2, 4]
    assert [sum(e.get("phase") == BIAS_PHASE for e in t["epochs"]) for t in record["tasks"]] == [0, 1]
