"""Unit tests of the CIL methods and their pieces (no data set needed): herding, the exemplar
memory, NME and accuracy, the loss pieces, the growing networks, the methods' hooks, the shared
first-task model and the method registry. Every expected value is worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.train.evaluation import accuracy, class_means, nme_predict
from budgets.accounting import module_params
from budgets.planner import PlanContext, final_model, method_model
from methods import METHODS, Method, Task, register
from methods.exemplars import ExemplarMemory, herding_order, per_class_quota, random_order
from methods.losses import align_weights, auxiliary_targets, distillation_loss, frozen_copy
from methods.networks import DERNet, MEMONet, SingleNet, build_network

TINY = "resnet8_half"  # 8/16/32 channels: cheap to build and run
# The one pinned list of the methods. Every other test takes the methods from the registry
# (METHODS.names()); this list fails test_every_method_registered_once_under_its_name when a method
# is added, so that it comes with its own tests here.
PINNED_METHODS = ["bic", "coil", "der", "finetune", "foster", "gem", "icarl", "joint", "memo", "podnet", "replay", "wa"]
# The methods whose first task is plain cross-entropy on a linear head: they share one first-task model.
SHARING = [name for name in PINNED_METHODS if name not in ("coil", "podnet")]


def unit(degrees: float, length: float = 1.0) -> list[float]:
    return [length * math.cos(math.radians(degrees)), length * math.sin(math.radians(degrees))]


def tasks(*sizes: int) -> list[Task]:
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return [Task(i, bounds[i], bounds[i + 1], len(sizes)) for i in range(len(sizes))]


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Non-default running statistics, so that a lost buffer changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)


# -- herding -----------------------------------------------------------------------------------
# Three points, given with different lengths (herding L2-normalizes them first):
#   row 0 at 60 degrees, row 1 at 0 degrees, row 2 at -70 degrees.
# Normalized: p0 = (0.500, 0.866), p1 = (1, 0), p2 = (0.342, -0.940); mean m = (0.614, -0.025).
# Pick 1: |p - m| = 0.898 (p0), 0.387 (p1), 0.955 (p2)          -> row 1.
# Pick 2: |(p1 + p)/2 - m|: p0 -> |(0.75, 0.433) - m| = 0.478,
#                           p2 -> |(0.671, -0.470) - m| = 0.449 -> row 2.
# Pick 3: the only one left                                     -> row 0.
# Sorting by distance to the mean would give 1, 0, 2: the second pick tells herding apart.
HERDING_POINTS = torch.tensor([unit(60, 3.0), unit(0, 0.5), unit(-70, 2.0)])


def test_herding_picks_the_hand_computed_order():
    assert herding_order(HERDING_POINTS, 3).tolist() == [1, 2, 0]
    assert herding_order(HERDING_POINTS, 2).tolist() == [1, 2]
    assert herding_order(HERDING_POINTS, 1).tolist() == [1]


def test_herding_is_scale_invariant_and_caps_at_n():
    scaled = HERDING_POINTS * torch.tensor([[0.01], [7.0], [0.3]])
    assert herding_order(scaled, 3).tolist() == [1, 2, 0]
    capped = herding_order(HERDING_POINTS, 10)
    assert capped.tolist() == [1, 2, 0]
    assert capped.dtype == torch.long
    assert herding_order(HERDING_POINTS, 0).tolist() == []


def test_herding_never_picks_a_row_twice():
    # Duplicated rows and a point equal to the mean direction: each index still appears once.
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 8, generator=generator)
    features = torch.cat([features, features[:10]])  # 10 exact duplicates
    order = herding_order(features, 100)
    assert len(order) == 50
    assert sorted(order.tolist()) == list(range(50))
    # The class mean itself (as a row) is the best first pick.
    mean_row = F.normalize(features, dim=1).mean(0, keepdim=True)
    with_mean = torch.cat([features, mean_row])
    assert int(herding_order(with_mean, 1)[0]) == 50


def test_random_order_caps_and_is_unique():
    order = random_order(10, 4, torch.Generator().manual_seed(3))
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    order = random_order(3, 20, torch.Generator().manual_seed(3))
    assert len(order) == 3 and len(set(order.tolist())) == 3
    assert order.tolist() == random_order(3, 20, torch.Generator().manual_seed(3)).tolist()


# -- the exemplar memory -----------------------------------------------------------------------
def images_tagged(label: int, count: int) -> torch.Tensor:
    """uint8 [count, 3, 2, 2] images whose pixels say (label, position): easy to trace."""
    tags = torch.tensor([label * 16 + i for i in range(count)], dtype=torch.uint8)
    return tags[:, None, None, None].expand(count, 3, 2, 2).clone()


def test_per_class_quota_is_the_floor():
    assert per_class_quota(2000, 10) == 200
    assert per_class_quota(2000, 30) == 66
    assert per_class_quota(7431, 100) == 74  # docs/protocol.md section 3: 7,431 ends as 74 x 100
    assert per_class_quota(99, 100) == 0
    assert per_class_quota(2000, 0) == 0
    assert ExemplarMemory(2000).per_class(30) == 66


def test_memory_shrink_keeps_the_first_m_of_each_class_in_order():
    memory = ExemplarMemory(budget=12)
    memory.add_class(0, images_tagged(0, 6))
    memory.add_class(1, images_tagged(1, 6))
    assert len(memory) == 12 and memory.classes == [0, 1]
    memory.check_budget()  # exactly at the budget is fine
    memory.shrink(4)
    assert len(memory) == 8
    for label in (0, 1):
        kept = memory.class_images(label)[:, 0, 0, 0].tolist()
        assert kept == [label * 16 + i for i in range(4)]  # the first 4, in selection order
    assert memory.labels.tolist() == [0] * 4 + [1] * 4
    memory.add_class(2, images_tagged(2, 4))
    memory.shrink(4)  # no-op: every class already has 4
    assert len(memory) == 12
    memory.shrink(10)  # more than a class holds keeps all
    assert len(memory) == 12
    assert memory.images.dtype == torch.uint8


def test_memory_check_budget_raises_above_the_budget():
    memory = ExemplarMemory(budget=5)
    memory.add_class(0, images_tagged(0, 6))
    with pytest.raises(RuntimeError, match="6 images.*budget of 5"):
        memory.check_budget()
    memory.shrink(5)
    memory.check_budget()


# -- evaluation pieces -------------------------------------------------------------------------
def test_class_means_normalize_features_then_the_mean():
    # Class 0: (100, 0) and (0, 1) -> normalized (1, 0) and (0, 1) -> mean (0.5, 0.5) -> (0.707, 0.707).
    #          (Averaging raw features would point along (1, 0) instead.)
    # Class 1: (0.2, 0) -> (1, 0). Class 2 has no sample: a zero row, not NaN.
    features = torch.tensor([[100.0, 0.0], [0.0, 1.0], [0.2, 0.0]])
    labels = torch.tensor([0, 0, 1])
    means = class_means(features, labels, 3)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(means, torch.tensor([[r, r], [1.0, 0.0], [0.0, 0.0]]))

    queries = torch.tensor([[0.06, 0.08],   # 53 deg: 0.36 from class 0's mean, 0.89 from class 1's
                            [1000.0, 1.0],  # ~0 deg: class 1
                            [-1.0, 4.0],    # 104 deg: class 0 (cos 0.51 vs -0.24 vs a zero row)
                            [5.0, 1.0]])    # 11 deg: class 1 (cos 0.98 vs 0.83)
    assert nme_predict(queries, means[:2]).tolist() == [0, 1, 0, 1]


def test_accuracy_overall_and_per_task():
    # Tasks: labels 0-1, 2-3, 4-5 (the last has no test image here -> NaN).
    labels = torch.tensor([0, 1, 1, 0, 2, 3, 3, 2])
    predictions = torch.tensor([0, 1, 0, 2, 2, 3, 1, 1])
    # task 0: 2 of 4 right = 50 %, task 1: 2 of 4 = 50 %; overall 4 of 8.
    result = accuracy(predictions, labels, [0, 2, 4, 6])
    assert result.overall == pytest.approx(50.0)
    assert result.per_task[:2] == [pytest.approx(50.0), pytest.approx(50.0)]
    assert math.isnan(result.per_task[2])
    result = accuracy(torch.tensor([0, 1, 1, 0, 3, 3, 3, 3]), labels, [0, 2, 4])
    assert result.per_task == [pytest.approx(100.0), pytest.approx(50.0)]
    assert result.overall == pytest.approx(75.0)


# -- loss pieces -------------------------------------------------------------------------------
def test_align_weights_equalizes_mean_norms_and_returns_gamma():
    fc = nn.Linear(2, 4)
    with torch.no_grad():
        # old rows: norms 2 and 4 (mean 3); new rows: norms 1 and 0.5 (mean 0.75) -> gamma = 4
        fc.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, -4.0], [0.6, 0.8], [0.3, -0.4]]))
        fc.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    gamma = align_weights(fc, known_classes=2)
    assert gamma == pytest.approx(4.0)
    torch.testing.assert_close(fc.weight, torch.tensor([[2.0, 0.0], [0.0, -4.0], [2.4, 3.2], [1.2, -1.6]]))
    norms = fc.weight.detach().norm(dim=1)
    assert float(norms[:2].mean()) == pytest.approx(float(norms[2:].mean()))
    torch.testing.assert_close(fc.bias, torch.tensor([1.0, 2.0, 3.0, 4.0]))  # biases untouched


def test_auxiliary_targets_map_old_to_zero_and_new_k_to_k_minus_known_plus_one():
    labels = torch.tensor([0, 4, 5, 2, 7, 6, 1])
    assert auxiliary_targets(labels, 5).tolist() == [0, 0, 1, 0, 3, 2, 0]
    assert auxiliary_targets(labels, 0).tolist() == [1, 5, 6, 3, 8, 7, 2]


def test_distillation_loss_equals_a_hand_computation():
    # Soft cross-entropy at T = 2, averaged over the batch:
    # row 1: student/T = (0.5, 1, 1.5), teacher/T = (1.5, 1, 0.5)
    #   p = softmax(teacher/T) = (0.50648, 0.30719, 0.18632); logsumexp(student/T) = log 8.8487 = 2.18022
    #   loss = 0.50648 * 1.68022 + 0.30719 * 1.18022 + 0.18632 * 0.68022 = 1.34035
    # row 2: student/T = (0, 0, 2), teacher/T = (1, 0, 0)
    #   p = (e, 1, 1) / (e + 2) = (0.57612, 0.21194, 0.21194); logsumexp = log 9.38906 = 2.23954
    #   loss = (0.57612 + 0.21194) * 2.23954 + 0.21194 * 0.23954 = 1.81566
    # mean = 1.57800
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [2.0, 0.0, 0.0]])
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(1.57800, abs=2e-5)
    assert float(distillation_loss(student[:1], teacher[:1], 2.0)) == pytest.approx(1.34035, abs=2e-5)
    # At T = 1 on identical logits it is the entropy of the softmax: log 3 for uniform logits.
    uniform = torch.zeros(2, 3)
    assert float(distillation_loss(uniform, uniform, 1.0)) == pytest.approx(math.log(3), abs=1e-6)


def test_frozen_copy_is_independent_and_frozen():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = frozen_copy(net)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert not torch.equal(net[0].weight, teacher[0].weight)
    assert all(p.requires_grad for p in net.parameters())


# -- growing networks against the planner --------------------------------------------------------
@pytest.mark.parametrize("num_tasks", [1, 2, 3])
def test_der_and_memo_backbone_params_grow_as_planned(num_tasks):
    der, memo, single = DERNet("resnet32"), MEMONet("resnet32"), SingleNet("resnet32")
    for _ in range(num_tasks):
        for net in (der, memo, single):
            net.add_task(10)
    assert module_params(der.backbone_modules()) == num_tasks * 463_504
    assert module_params(memo.backbone_modules()) == 112_016 + num_tasks * 351_488
    assert module_params(single.backbone_modules()) == 463_504
    assert der.fc.in_features == memo.fc.in_features == 64 * num_tasks
    assert der.fc.out_features == memo.fc.out_features == 10 * num_tasks
    sizes = (10,) * num_tasks
    assert final_model("der", "resnet32", sizes, "paper", False)[0] == num_tasks * 463_504
    assert final_model("memo", "resnet32", sizes, "paper", False)[0] == 112_016 + num_tasks * 351_488
    # paper policy: float32 backbone parameters; the live network counts the same bytes as the plan
    ctx = PlanContext(task_sizes=sizes, image_shape=(32, 32, 3), family=("resnet32",), benchmark="resnet32")
    assert method_model("der", "resnet32", ctx) == (num_tasks * 463_504, 4 * num_tasks * 463_504)
    assert method_model("memo", "resnet32", ctx)[1] == 4 * (112_016 + num_tasks * 351_488)


def test_ten_task_plan_matches_protocol_counts():
    sizes = (10,) * 10
    assert final_model("der", "resnet32", sizes, "paper", False)[0] == 4_635_040
    assert final_model("memo", "resnet32", sizes, "paper", False)[0] == 112_016 + 3_514_880


def test_der_new_backbone_starts_from_the_previous_one():
    net = DERNet(TINY)
    net.add_task(2)
    with torch.no_grad():
        for p in net.backbones[0].parameters():
            p.add_(0.5)
    net.add_task(2)
    for a, b in zip(net.backbones[0].state_dict().values(), net.backbones[1].state_dict().values()):
        assert torch.equal(a, b)
    assert all(a is not b for a, b in zip(net.backbones[0].parameters(), net.backbones[1].parameters()))


def test_classifier_growth_keeps_old_rows():
    net = SingleNet(TINY)
    net.add_task(3)
    old_weight, old_bias = net.fc.weight.detach().clone(), net.fc.bias.detach().clone()
    net.add_task(2)
    assert tuple(net.fc.weight.shape) == (5, net.feature_dim)
    assert torch.equal(net.fc.weight[:3], old_weight) and torch.equal(net.fc.bias[:3], old_bias)
    der = DERNet(TINY)
    der.add_task(3)
    old = der.fc.weight.detach().clone()
    der.add_task(2)
    width = der.backbones[0].out_dim
    assert tuple(der.fc.weight.shape) == (5, 2 * width)
    assert torch.equal(der.fc.weight[:3, :width], old)


# -- methods' hooks ------------------------------------------------------------------------------
def make(name: str, **options) -> Method:
    """The method with its options resolved as the grid does for a B0 scenario (MEMO: train_base true)."""
    torch.manual_seed(0)
    return METHODS.get(name)(TINY, METHODS.get(name).resolve_options(options, base_classes=0))


def batch(count: int = 6, low: int = 0, high: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 32, 32, generator=generator), torch.randint(low, high, (count,), generator=generator)


def is_frozen(module: nn.Module) -> bool:
    return all(not p.requires_grad for p in module.parameters()) and not any(m.training for m in module.modules())


def is_trainable(module: nn.Module) -> bool:
    return all(p.requires_grad for p in module.parameters()) and all(m.training for m in module.modules())


@pytest.mark.parametrize("name", ["der", "memo"])
def test_old_blocks_frozen_in_eval_mode_after_train(name):
    method = make(name)
    t0, t1, t2 = tasks(2, 2, 2)
    method.before_task(t0)
    method.network.train()
    net = method.network
    blocks = net.backbones if name == "der" else net.specialized
    assert len(blocks) == 1 and is_trainable(blocks[0])
    method.after_task(t0)
    method.before_task(t1)
    method.network.train()
    assert len(blocks) == 2
    assert is_frozen(blocks[0]) and is_trainable(blocks[1])
    method.after_task(t1)
    method.before_task(t2)
    method.network.train()
    assert is_frozen(blocks[0]) and is_frozen(blocks[1]) and is_trainable(blocks[2])
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not any(id(p) in trainable for b in blocks[:2] for p in b.parameters())
    assert all(id(p) in trainable for p in blocks[2].parameters())

    # A training step leaves the old blocks (weights and BatchNorm statistics) unchanged.
    before = [{k: v.clone() for k, v in b.state_dict().items()} for b in blocks[:2]]
    newest = {k: v.clone() for k, v in blocks[2].state_dict().items()}
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    images, labels = batch(8, 0, 6)
    loss = method.loss(t2, images, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for state, block in zip(before, blocks[:2]):
        for key, value in block.state_dict().items():
            assert torch.equal(value, state[key]), key
    assert any(not torch.equal(v, newest[k]) for k, v in blocks[2].state_dict().items())


@pytest.mark.parametrize("train_base", [True, False])
def test_memo_train_base_freezes_generalized_only_after_first_task(train_base):
    method = make("memo", train_base=train_base)
    t0, t1 = tasks(2, 2)
    method.before_task(t0)
    method.network.train()
    assert is_trainable(method.network.generalized)  # the first task always trains it
    method.after_task(t0)
    method.before_task(t1)
    method.network.train()
    if train_base:
        assert is_trainable(method.network.generalized)
    else:
        assert is_frozen(method.network.generalized)
    assert is_frozen(method.network.specialized[0]) and is_trainable(method.network.specialized[1])


@pytest.mark.parametrize("name", ["der", "memo"])
def test_aux_head_only_during_later_tasks(name):
    method = make(name)
    t0, t1, t2 = tasks(3, 2, 4)
    images, labels = batch(5, 0, 3)
    method.before_task(t0)
    assert method.network.aux_fc is None and "aux_logits" not in method.network(images)
    method.after_task(t0)
    method.before_task(t1)
    out = method.network(images)
    assert method.network.aux_fc is not None
    assert tuple(out["aux_logits"].shape) == (5, 2 + 1)  # new classes + one "old" label
    assert method.network.aux_fc.in_features == method.network.newest_dim
    # loss = CE + aux CE, by hand
    method.network.eval()
    images, labels = batch(6, 0, 5, seed=1)
    out = method.network(images)
    expected = F.cross_entropy(out["logits"], labels) + \
        F.cross_entropy(out["aux_logits"], auxiliary_targets(labels, 3))
    torch.testing.assert_close(method.loss(t1, images, labels), expected)
    method.after_task(t1)
    assert method.network.aux_fc is None and "aux_logits" not in method.network(images)
    method.before_task(t2)
    assert tuple(method.network(images)["aux_logits"].shape) == (6, 4 + 1)
    method.after_task(t2)
    assert method.network.aux_fc is None


@pytest.mark.parametrize("name", ["der", "memo", "wa"])
def test_weight_aligning_after_later_tasks(name):
    method = make(name)
    t0, t1 = tasks(3, 2)
    method.before_task(t0)
    first_fc = method.network.fc.weight.detach().clone()
    method.after_task(t0)  # no aligning after the first task
    assert torch.equal(method.network.fc.weight, first_fc)
    method.before_task(t1)
    with torch.no_grad():
        method.network.fc.weight[3:] *= 5.0  # the new rows grew, as they do after training
    method.after_task(t1)
    norms = method.network.fc.weight.detach().norm(dim=1)
    assert float(norms[:3].mean()) == pytest.approx(float(norms[3:].mean()), rel=1e-5)


def test_finetune_loss_ignores_old_logits():
    method = make("finetune")
    t0, t1 = tasks(3, 2)
    method.before_task(t0)
    method.after_task(t0)
    method.before_task(t1)
    images, labels = batch(6, 3, 5)
    loss = method.loss(t1, images, labels)
    method.network.zero_grad()
    loss.backward()
    grad_w, grad_b = method.network.fc.weight.grad, method.network.fc.bias.grad
    assert torch.count_nonzero(grad_w[:3]) == 0 and torch.count_nonzero(grad_b[:3]) == 0
    assert torch.count_nonzero(grad_w[3:]) > 0
    # Replay's loss (cross-entropy over all seen classes) does reach the old rows.
    replay = make("replay")
    replay.before_task(t0)
    replay.before_task(t1)
    replay.loss(t1, images, labels).backward()
    assert torch.count_nonzero(replay.network.fc.weight.grad[:3]) > 0


def test_finetune_loss_is_cross_entropy_over_new_classes():
    method = make("finetune")
    t0, t1 = tasks(3, 2)
    method.before_task(t0)
    method.before_task(t1)
    method.network.eval()
    images, labels = batch(6, 3, 5)
    logits = method.network(images)["logits"]
    # By hand: softmax over the 2 new logits only, labels shifted by the 3 known classes.
    new = logits[:, 3:]
    expected = -(new.gather(1, (labels - 3)[:, None]).squeeze(1) - new.logsumexp(dim=1)).mean()
    torch.testing.assert_close(method.loss(t1, images, labels), expected)


@pytest.mark.parametrize("name", ["icarl", "wa"])
def test_teacher_is_a_frozen_copy_from_before_the_task(name):
    method = make(name)
    t0, t1 = tasks(3, 2)
    method.before_task(t0)
    assert method.teacher is None
    with torch.no_grad():  # "train" the first task: change every weight
        for p in method.network.parameters():
            p.add_(0.1)
    randomize_batchnorm(method.network)
    method.after_task(t0)
    snapshot = {k: v.clone() for k, v in method.network.state_dict().items()}
    method.before_task(t1)
    teacher = method.teacher
    assert teacher is not None and teacher is not method.network
    assert teacher.fc.out_features == 3 and method.network.fc.out_features == 5
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    method.network.train()
    assert is_frozen(teacher)
    assert not any(p is q for p in teacher.parameters() for q in method.trainable_parameters())

    # A training step changes the student, not the teacher.
    images, labels = batch(6, 0, 5)
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    loss = method.loss(t1, images, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, snapshot[key]), key

    # A new teacher at the next task: the model from before that task.
    method.after_task(t1)
    snapshot = {k: v.clone() for k, v in method.network.state_dict().items()}
    t2 = Task(2, 5, 7, 3)
    method.before_task(t2)
    assert method.teacher.fc.out_features == 5
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(value, snapshot[key]), key


@pytest.mark.parametrize("name", ["icarl", "wa"])
def test_distillation_weighting(name):
    """Right after growing, the student's old logits equal the teacher's, so the KD term is the
    entropy of the teacher's softened distribution; iCaRL adds it to CE, WA mixes by known/total."""
    method = make(name)
    t0, t1 = tasks(3, 2)
    method.before_task(t0)
    randomize_batchnorm(method.network)
    method.after_task(t0)
    method.before_task(t1)
    method.network.eval()
    images, labels = batch(6, 0, 5)
    logits = method.network(images)["logits"]
    teacher_logits = method.teacher(images)["logits"]
    torch.testing.assert_close(logits[:, :3], teacher_logits)
    p = F.softmax(teacher_logits / 2, dim=1)
    entropy = -(p * p.log()).sum(dim=1).mean()
    ce = F.cross_entropy(logits, labels)
    expected = ce + entropy if name == "icarl" else (1 - 3 / 5) * ce + (3 / 5) * entropy
    torch.testing.assert_close(method.loss(t1, images, labels), expected)


def test_first_task_loss_is_plain_cross_entropy_for_every_sharing_method():
    images, labels = batch(6, 0, 3)
    t0 = tasks(3, 2)[0]
    assert [name for name in METHODS.names() if METHODS.get(name).shares_first_task] == \
        [name for name in METHODS.names() if name in SHARING]
    for name in SHARING:
        method = make(name)
        method.before_task(t0)
        method.network.eval()
        expected = F.cross_entropy(method.network(images)["logits"], labels)
        torch.testing.assert_close(method.loss(t0, images, labels), expected, msg=name)


# -- the shared first-task model -------------------------------------------------------------------
def test_first_task_state_loads_into_der_and_memo():
    torch.manual_seed(0)
    single = SingleNet(TINY)
    single.add_task(4)
    randomize_batchnorm(single, seed=1)
    with torch.no_grad():
        for p in single.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = single.first_task_state()

    torch.manual_seed(123)  # a different initialization, so only loading can make them agree
    der, memo = DERNet(TINY), MEMONet(TINY)
    for net in (der, memo):
        net.add_task(4)
        net.load_first_task_state(state)

    for key, value in single.backbone.state_dict().items():
        assert torch.equal(der.backbones[0].state_dict()[key], value), key
    for key, value in single.backbone.specialized.state_dict().items():
        assert torch.equal(memo.specialized[0].state_dict()[key], value), f"specialized {key}"
    for key, value in single.backbone.generalized.state_dict().items():
        assert torch.equal(memo.generalized.state_dict()[key], value), f"generalized {key}"

    images, _ = batch(5)
    outs = []
    for net in (single, der, memo):
        net.eval()
        with torch.no_grad():
            outs.append(net(images)["logits"])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=1e-6)


def test_first_task_state_loads_into_every_sharing_method_network():
    single = make("replay")
    single.before_task(Task(0, 0, 4, 2))
    randomize_batchnorm(single.network, seed=2)
    state = single.network.first_task_state()
    images, _ = batch(3)
    single.network.eval()
    reference = single.network(images)["logits"]
    for name in SHARING:
        torch.manual_seed(7)
        method = METHODS.get(name)(TINY, METHODS.get(name).resolve_options({}, base_classes=0))
        method.before_task(Task(0, 0, 4, 2))
        method.network.load_first_task_state(state)
        method.network.eval()
        torch.testing.assert_close(method.network(images)["logits"], reference, rtol=0, atol=1e-6, msg=name)


# -- registry ----------------------------------------------------------------------------------
def test_every_method_registered_once_under_its_name():
    names = METHODS.names()
    assert len(names) == len(set(names))
    assert sorted(names) == PINNED_METHODS
    for name in names:
        cls = METHODS.get(name)
        assert issubclass(cls, Method) and cls.name == name
    traits = {n: (METHODS.get(n).growth, METHODS.get(n).uses_exemplars, METHODS.get(n).keeps_teacher,
                  METHODS.get(n).trains_on_all_data) for n in names}
    assert traits == {
        "finetune": ("single", False, False, False), "replay": ("single", True, False, False),
        "icarl": ("single", True, True, False), "wa": ("single", True, True, False),
        "der": ("der", True, False, False), "memo": ("memo", True, False, False),
        "joint": ("single", False, False, True), "bic": ("single", True, True, False),
        "foster": ("single", True, True, False), "podnet": ("single", True, True, False),
        "coil": ("single", True, True, False), "gem": ("single", True, False, False)}


def test_unknown_method_suggests_the_closest():
    with pytest.raises(KeyError, match="did you mean icarl"):
        METHODS.get("icarll")
    with pytest.raises(KeyError, match="did you mean memo"):
        METHODS.get("memmo")
    with pytest.raises(KeyError, match="unknown method 'zzz'"):
        METHODS.get("zzz")


def test_registering_twice_or_a_non_method_is_refused():
    class Again(Method):
        name = "replay"

    with pytest.raises(ValueError, match="registered twice"):
        register(Again)

    class Nameless(Method):
        pass

    with pytest.raises(TypeError):
        register(Nameless)
    with pytest.raises(TypeError):
        register(int)
    assert METHODS.names().count("replay") == 1


def test_unknown_method_option_is_refused():
    with pytest.raises(ValueError, match="unknown option.*train_bse"):
        METHODS.get("memo")(TINY, {"train_bse": False})
    assert METHODS.get("memo")(TINY, {"train_base": False}).options == {"aux_weight": 1.0, "train_base": False}


def test_build_network_kinds():
    assert isinstance(build_network("single", TINY), SingleNet)
    assert isinstance(build_network("der", TINY), DERNet)
    assert isinstance(build_network("memo", TINY), MEMONet)
    with pytest.raises(KeyError, match="unknown network growth"):
        build_network("tree", TINY)


def test_random_selection_draws_each_class_separately():
    """With random selection, each class gets its own draw (a shared seed would pick the same
    positions in every class)."""
    from benchmark.train.augmentation import Augmentation
    from benchmark.train.batches import TensorSource
    from benchmark.train.engine import Engine, EngineSettings, RunData
    from benchmark.config.profile import Schedule
    from methods import METHODS

    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 8, 8).contiguous()
    labels = torch.arange(40) // 20  # class 0: rows 0-19, class 1: rows 20-39
    source = TensorSource(images, labels)
    data = RunData(source, source, [0, 2], (8, 8, 3), Augmentation((0.5,) * 3, (0.25,) * 3))
    schedule = Schedule(epochs=1, milestones=(), weight_decay=0.0)  # the draw does not depend on training
    engine = Engine(METHODS.get("replay")("resnet8_half"), data,
                    EngineSettings([schedule], exemplars=10, selection="random"), log=lambda line: None)
    engine.learn_task(data.task(0))
    stored = engine.memory.images[:, 0, 0, 0].long()
    positions = [sorted((stored[engine.memory.labels == c] - 20 * c).tolist()) for c in (0, 1)]
    assert all(len(p) == 5 and len(set(p)) == 5 for p in positions)
    assert positions[0] != positions[1]
