"""GEM and A-GEM (methods/gem.py): the task-masked loss, both projections on hand-made gradients,
the per-task memory batches, a tiny CIFAR run of each variant through the engine, an ImageNet-style
folder run, and the planner's bill equal to the run's audit under both policies.

Stop-and-resume equality is tests/test_checkpoint.py's (every method that keeps exemplars: `-k gem`).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.data.image_cache import CACHE_ENV
from benchmark.data.specs import DATASETS
from benchmark.train.runner import execute_run
from budgets.accounting import model_bytes
from conftest import tiny_experiment, tiny_training
from methods import METHODS
from methods.base import Task
from methods.gem import GEM, agem_project, gem_project, task_masked_cross_entropy, write_gradient
from test_imagenet_training import NAME, make_folder_dataset

torch.set_num_threads(1)


# -- the formulas ------------------------------------------------------------------------------
def test_task_masked_cross_entropy_sees_only_each_rows_task():
    logits = torch.tensor([[2.0, 0.0, 5.0, 9.0], [1.0, 7.0, 0.0, 0.0]])
    labels = torch.tensor([0, 3])
    ranges = torch.tensor([[0, 2], [2, 4]])
    # row 0: log(1 + e^-2) = 0.126928; row 1: log(2) = 0.693147 (logits 0 and 0 in classes 2..3)
    assert task_masked_cross_entropy(logits, labels, ranges).item() == pytest.approx((0.126928 + 0.693147) / 2, abs=1e-6)


def test_gem_leaves_a_gradient_that_agrees_with_every_memory():
    grad = torch.tensor([1.0, 1.0])
    assert gem_project(grad, torch.tensor([[1.0, 0.0], [0.0, 2.0]]), 0.5, 1e-3) is grad


def test_gem_projects_onto_the_cone_without_margin():
    # one memory g1 = (0, 1), g = (1, -1): v = -g.g1 / |g1|^2 = 1, g~ = g + v g1 = (1, 0)
    out = gem_project(torch.tensor([1.0, -1.0]), torch.tensor([[0.0, 1.0]]), 0.0, 0.0)
    assert out.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_gem_margin_and_ridge_push_past_the_cone():
    # v >= 0.5 and min 1/2 (1 + 0.001) v^2 - v: v = 1 / 1.001 = 0.999001 > 0.5, g~ = (1, -0.000999)
    out = gem_project(torch.tensor([1.0, -1.0]), torch.tensor([[0.0, 1.0]]), 0.5, 1e-3)
    assert out.tolist() == pytest.approx([1.0, -0.000999], abs=1e-6)
    # a large margin binds: v = 3, g~ = (1, 2)
    out = gem_project(torch.tensor([1.0, -1.0]), torch.tensor([[0.0, 1.0]]), 3.0, 0.0)
    assert out.tolist() == pytest.approx([1.0, 2.0], abs=1e-6)


def test_gem_with_two_memories_satisfies_both():
    memories = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = gem_project(torch.tensor([-1.0, -2.0, 3.0]), memories, 0.0, 0.0)
    assert out.tolist() == pytest.approx([0.0, 0.0, 3.0], abs=1e-6)


def test_agem_projection():
    ref = torch.tensor([0.0, 2.0])
    assert agem_project(torch.tensor([1.0, 1.0]), ref).tolist() == [1.0, 1.0]
    # g.ref = -4, |ref|^2 = 4: g - (-1) ref = (3, 0)
    assert agem_project(torch.tensor([3.0, -2.0]), ref).tolist() == [3.0, 0.0]


def test_write_gradient_fills_parameters_in_order():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1, 2))
    a.grad = torch.ones(2)
    write_gradient([a, b], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert a.grad.tolist() == [1.0, 2.0] and b.grad.tolist() == [[3.0, 4.0]]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="unknown variant 'qp'"):
        GEM("conv2_half", {"variant": "qp"})
    with pytest.raises(ValueError, match="memory_strength -1"):
        GEM("conv2_half", {"memory_strength": -1})


# -- the memory and a step on a real network ---------------------------------------------------
class FakeData:
    """The TaskData a phase start gives: exemplars of classes 0..3 (task 0: 0..1, task 1: 2..3)."""

    def __init__(self):
        self.memory_images = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
        self.memory_labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        self.generator = torch.Generator().manual_seed(0)

    def augment(self, images):
        return images.float() / 255

    def random(self):
        return self.generator


@pytest.mark.parametrize("variant", ["gem", "agem"])
def test_a_step_groups_memory_by_task_and_projects(variant):
    torch.manual_seed(0)
    method = GEM("conv2_half", {"variant": variant, "agem_sample": 3})
    tasks = [Task(0, 0, 2, 3), Task(1, 2, 4, 3), Task(2, 4, 6, 3)]
    for task in tasks:
        method.before_task(task)
    method.prepare_phase(tasks[2], None, FakeData())
    if variant == "gem":
        assert [b[1].tolist() for b in method.memory_batches] == [[0, 0, 1, 1], [2, 2, 3, 3]]
    else:
        assert method.memory_batches[0][1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    method.network.train()
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([4, 5, 0, 2])  # two exemplar rows: left out
    loss = method.loss(tasks[2], images, labels)
    assert method.reference.shape == (2 if variant == "gem" else 1, sum(p.numel() for p in method.trainable_parameters()))
    loss.backward()
    reference = method.reference.clone()
    method.before_step(tasks[2], None)
    grad = torch.cat([p.grad.reshape(-1) for p in method.trainable_parameters()])
    # the update agrees with every memory gradient (GEM: up to the QP's tolerance)
    assert bool((reference @ grad >= -1e-4).all())
    assert method.reference is None  # used once


# -- runs through the engine ---------------------------------------------------------------------
def gem_run(variant: str, policy: str = "paper", **overrides):
    raw = tiny_experiment(f"gem_{variant}_{policy}", ["gem"], [0.75], scenario="B0Inc25", training=tiny_training(),
                          method_options={"gem": {"variant": variant}}, policy=policy, **overrides)
    (run,) = expand(parse_experiment(raw))
    return run


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory, cifar_root):
    root = tmp_path_factory.mktemp("gem")
    return {variant: execute_run(gem_run(variant), root / "exp", root / "results", "cpu", cifar_root, 1)
            for variant in ("gem", "agem")}


@pytest.mark.parametrize("variant", ["gem", "agem"])
def test_a_tiny_cifar_run_completes(cifar_runs, variant):
    record = cifar_runs[variant]
    assert record["status"] == "complete", record["error"]
    assert [t["classes_seen"] for t in record["tasks"]] == [25, 50, 75, 100]
    assert all(t["epochs"] for t in record["tasks"][1:])


@pytest.mark.parametrize("policy", ["paper", "strict"])
def test_the_plan_bills_what_the_run_holds(cifar_runs, policy):
    (cell,) = gem_run("gem", policy).cells
    audit = cifar_runs["gem"]["tasks"][-1]["memory"][policy]
    assert cell.model_bytes == audit["model_bytes"]


def test_strict_bill_of_a_small_backbone():
    method = GEM("conv2_half")
    for index in range(4):
        method.before_task(Task(index, 25 * index, 25 * (index + 1), 4))
    # paper: conv2_half's 10,272 parameters x 4 B (two 3x3 convs with bias, 3->32->32, two BNs)
    assert model_bytes(method.network, "paper") == 41_088
    # strict adds the 100-class head ((32 x 100 + 100) x 4 = 13,200 B) and the BN buffers (4 x 32 fp32
    # running statistics, 512 B, and two int64 batch counters, 16 B); no teacher
    assert model_bytes(method.network, "strict") == 41_088 + 13_200 + 528
    assert METHODS.get("gem").keeps_teacher is False


def test_an_imagenet_style_folder_run_trains_every_phase(tmp_path, monkeypatch):
    make_folder_dataset(tmp_path / "data")
    spec = dataclasses.replace(DATASETS["imagenet1000"], name=NAME, title="", num_classes=4, train_per_class=6,
                               test_per_class=2)
    monkeypatch.setitem(DATASETS, NAME, spec)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    sgd = {"lr": 0.05, "momentum": 0.9, "milestones": [], "weight_decay": 0.0, "batch_size": 8}
    (run,) = expand(parse_experiment({
        "name": "tinynet_gem", "dataset": NAME, "scenario": "B2Inc1", "methods": ["gem"], "budgets": [4.5],
        "seeds": [1], "profile": "cpu", "family": ["conv4"], "benchmark_backbone": "conv4",
        "anchor_exemplars": 8, "training": {
            "images_per_class": None, "test_images_per_class": None, "augment": True,
            "first_task": {"epochs": 1, **sgd}, "later_tasks": {"all": {"epochs": 1, **sgd}}}}))
    record = execute_run(run, tmp_path / "exp", tmp_path / "results", "cpu", tmp_path / "data", 1)
    assert record["status"] == "complete", record["error"]
    assert [t["classes_seen"] for t in record["tasks"]] == [2, 3, 4]
    assert all(t["epochs"] for t in record["tasks"][1:])
