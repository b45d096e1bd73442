"""Coil (methods/coil.py): the transport pieces on hand-made tensors, a tiny CIFAR run and a tiny
ImageNet-style folder run through every loss branch, and the planner's count against the run's audit.

Stop-and-resume is tests/test_checkpoint.py's (it covers every method that keeps exemplars).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import ot
import pytest
import torch

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.train.runner import execute_run
from budgets.planner import PlanContext, method_model
from conftest import tiny_experiment, tiny_training
from methods import METHODS, Task
from methods.coil import Coil, TransportState, normalized_mean
from methods.cosine import CosineNet
from test_imagenet_training import NAME as FOLDER_DATASET, SGD as FOLDER_SGD, tiny_folder  # noqa: F401 (a fixture)

TINY = "resnet8_half"  # 32 features


def coil(**options) -> Coil:
    torch.manual_seed(0)
    return Coil(TINY, options)


# -- the pieces ----------------------------------------------------------------------------------
def test_registered_with_a_cosine_network_and_its_own_first_task():
    method = coil()
    assert METHODS.get("coil") is Coil
    assert isinstance(method.network, CosineNet) and not Coil.shares_first_task and Coil.keeps_teacher
    assert Coil.default_options == {"temperature": 2.0, "sinkhorn_reg": 0.464, "cost_norm": 3.0,
                                    "retrospective_weight": 1e-3, "prospective_weight": 1e-3,
                                    "retrospective_every": 30}


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="sinkhorn_reg must be > 0"):
        Coil.resolve_options({"sinkhorn_reg": 0}, base_classes=0)
    with pytest.raises(ValueError, match="retrospective_every .* integer >= 1"):
        coil(retrospective_every=0)


def test_class_prototype_is_the_normalized_mean_of_unit_features():
    features = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # unit: (1, 0) and (0, 1)
    torch.testing.assert_close(normalized_mean(features), torch.tensor([0.70710678, 0.70710678]))


def test_sinkhorn_plan_of_a_symmetric_cost():
    # Cost [[0, 1], [1, 0]] at reg 1: the plan is c^2 exp(-C), rows summing to 1/2: diagonal 1 / (2 (1 + e^-1)).
    plan = coil(sinkhorn_reg=1.0).sinkhorn(torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64), 2)
    torch.testing.assert_close(plan, torch.tensor([[0.36552929, 0.13447071], [0.13447071, 0.36552929]],
                                                  dtype=torch.float64))


class FeaturesAsImages(SimpleNamespace):
    """A TaskData whose "images" are already features: what the transports see, set by hand."""

    def features(self, network, images):
        return images

    def class_images(self, label):
        return self.images[self.labels == label]


def test_prospective_transport_initializes_the_new_rows():
    method = coil()
    method.before_task(Task(0, 0, 2, 2))
    with torch.no_grad():
        method.network.fc.weight.zero_()
        method.network.fc.weight[0, 0], method.network.fc.weight[1, 1] = 3.0, 1.0  # norms 3 and 1: mean 2
    method.before_task(Task(1, 2, 3, 2))
    # The new class's mean lies as far from both old means: the plan splits its 1/2 mass evenly,
    # so the row is 2 * (e0 + e1) / 4, rescaled to the old rows' mean norm 2.
    data = FeaturesAsImages(memory_images=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), memory_labels=torch.tensor([0, 1]),
                            images=torch.tensor([[1.0, 1.0]]), labels=torch.tensor([2]),
                            training_set=[0] * 10, schedule=SimpleNamespace(epochs=3, batch_size=4))
    method.prepare_phase(Task(1, 2, 3, 2), None, data)
    expected = torch.zeros(32)
    expected[:2] = 1.41421356
    torch.testing.assert_close(method.network.fc.weight[2], expected)
    torch.testing.assert_close(method.transport.new_rows_by_transport[0], expected)
    assert (method.transport.steps_per_epoch, method.transport.epochs) == (3, 3)  # ceil(10 / 4) steps


def test_prospective_transport_needs_an_exemplar_of_every_old_class():
    method = coil()
    method.before_task(Task(0, 0, 2, 2))
    method.before_task(Task(1, 2, 3, 2))
    data = FeaturesAsImages(memory_images=torch.tensor([[1.0, 0.0]]), memory_labels=torch.tensor([0]),
                            images=torch.tensor([[1.0, 1.0]]), labels=torch.tensor([2]))
    with pytest.raises(ValueError, match=r"no exemplar of old class\(es\) \[1\].*raise the exemplar budget"):
        method.prepare_phase(Task(1, 2, 3, 2), None, data)


def test_transport_terms_by_epoch():
    """Epoch 0: 1e-3 soft CE of the new logits against the cosines with W_new^OT; later epochs:
    1e-3 (epoch / epochs)^2 soft CE of the cosines with W_old^OT against the teacher (T = 2)."""
    method, task = coil(retrospective_every=30), Task(1, 1, 3, 2)
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    state = TransportState(1, None, rows, steps_per_epoch=2, epochs=4)
    out = {"features": torch.tensor([[2.0, 0.0]]), "logits": torch.tensor([[9.0, 2.0, 0.0]])}
    teacher_logits = torch.tensor([[4.0]])  # one old class
    # softmax((1, 0) / 2) = (0.62245933, 0.37754067); log_softmax((2, 0) / 2) = (-0.31326169, -1.31326169)
    prospective = 1e-3 * (0.62245933 * 0.31326169 + 0.37754067 * 1.31326169)
    for step in range(2):
        torch.testing.assert_close(method.transport_term(task, state, out, teacher_logits),
                                   torch.tensor(prospective))
    # Step 3 is epoch 1's second: W_old^OT as last solved (no re-solve before step 30 of the epoch).
    task = Task(1, 2, 3, 2)
    state.old_rows_by_transport, state.step = rows, 3
    teacher_logits = torch.tensor([[0.0, 0.0]])  # uniform target; cosines (1, 0) / 2
    retrospective = 1e-3 * (1 / 4) ** 2 * (0.5 * 0.47407698 + 0.5 * 0.97407698)
    torch.testing.assert_close(method.transport_term(task, state, out, teacher_logits), torch.tensor(retrospective))


# -- runs ----------------------------------------------------------------------------------------
RAW = tiny_experiment("coil", ["coil"], [0.75], scenario="B0Inc25",
                      training=tiny_training(later_epochs=2, augment=True))


def counting_transports(patch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the prospective (`prepare_phase`) and retrospective transports solved in a run."""
    counts = {"prospective": 0, "retrospective": 0}
    for name, hook in (("prospective", "prepare_phase"), ("retrospective", "retrospective_rows")):
        def counted(self, *args, name=name, original=getattr(Coil, hook)):
            counts[name] += 1
            return original(self, *args)
        patch.setattr(Coil, hook, counted)
    return counts


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, cifar_root):
    root = tmp_path_factory.mktemp("coil")
    (run,) = expand(parse_experiment(RAW))
    with pytest.MonkeyPatch.context() as patch:
        counts = counting_transports(patch)
        record = execute_run(run, root / "experiment", root / "results", "cpu", cifar_root, 1)
    return run, record, counts


def test_tiny_cifar_run_trains_every_task(cifar_run):
    run, record, counts = cifar_run
    assert record["status"] == "complete", record.get("error")
    assert [t["classes_seen"] for t in record["tasks"]] == [25, 50, 75, 100]
    assert all(len(t["epochs"]) == 2 for t in record["tasks"][1:])
    assert all(math.isfinite(t["cnn_accuracy"]) and math.isfinite(t["nme_accuracy"]) for t in record["tasks"])
    # Every task has both: prepare_phase (a no-op on task 0) and one retrospective plan at epoch 1's first step.
    assert counts == {"prospective": 4, "retrospective": 3}


def test_planner_counts_what_the_run_holds(cifar_run):
    run, record, _ = cifar_run
    audited = record["tasks"][-1]["memory"]
    for policy in ("paper", "strict"):
        ctx = PlanContext(task_sizes=(25,) * 4, image_shape=(32, 32, 3), family=("conv2_half",),
                          benchmark="conv2_half", policy=policy)
        assert method_model("coil", run.backbone, ctx)[1] == audited[policy]["model_bytes"], policy
    # conv2_half: two blocks of conv (32 x 3|32 x 3 x 3 weights + 32 biases) and BatchNorm (32 weights,
    # 32 biases; running mean and variance, 32 floats each, and one int64 count): 10,272 parameters,
    # 41,088 bytes, the paper's count; with the buffers 41,616 bytes. Strict: that twice (network
    # and teacher), plus the cosine heads of 100 and 75 classes x 32 features and one sigma each.
    assert audited["paper"]["model_bytes"] == 4 * (864 + 32 + 64 + 9_216 + 32 + 64) == 41_088
    assert audited["strict"]["model_bytes"] == 2 * 41_616 + 4 * (100 * 32 + 1 + 75 * 32 + 1) == 105_640


def test_unbalanced_marginals_change_only_the_plan_scale():
    """With 6 old and 3 new classes the sides carry 1 and 1/2: the plan is the balanced one (uniform
    marginals of equal mass) up to a factor, which the transports normalize away."""
    import ot

    cost = torch.rand(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plan = coil().sinkhorn(cost, 6)
    balanced = ot.sinkhorn(torch.full((6,), 1 / 6, dtype=torch.float64), torch.full((3,), 1 / 3, dtype=torch.float64),
                           cost, 0.464)
    torch.testing.assert_close(plan / plan.sum(), balanced, rtol=0, atol=1e-12)


def test_tiny_imagenet_folder_run_trains_every_phase(tiny_folder):
    """Four generated classes in the ImageNet folder layout, conv4, B2Inc2; two epochs on the later task
    reach the retrospective transport."""
    experiment = parse_experiment({
        "name": "coil-folder", "dataset": FOLDER_DATASET, "scenario": "B2Inc2", "methods": ["coil"], "budgets": [4.5],
        "seeds": [1], "profile": "cpu", "family": ["conv4"], "benchmark_backbone": "conv4", "anchor_exemplars": 8,
        "training": {"images_per_class": None, "test_images_per_class": None, "augment": True,
                     "first_task": {"epochs": 1, **FOLDER_SGD}, "later_tasks": {"all": {"epochs": 2, **FOLDER_SGD}}}})
    (run,) = expand(experiment)
    with pytest.MonkeyPatch.context() as patch:
        counts = counting_transports(patch)
        record = execute_run(run, tiny_folder / "coil", tiny_folder / "results", "cpu", tiny_folder / "data", 1)
    assert record["status"] == "complete", record.get("error")
    assert [t["classes_seen"] for t in record["tasks"]] == [2, 4]
    assert [t["exemplars_stored"] for t in record["tasks"]] == [6, 4]  # 7 exemplars: 3, then 1 per class
    assert counts == {"prospective": 2, "retrospective": 1}
