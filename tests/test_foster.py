"""FOSTER (methods/foster.py): the class-balanced weights, the balanced distillation, the boosting
loss and weight aligning on hand-made tensors; the boosted model and the student's structure; a
tiny CIFAR run through boosting and compression (stop-and-resume: tests/test_checkpoint.py); the
same with the boosted model scored; a tiny ImageNet-style folder run; the planner's count against
the runs' audits under both policies."""
from __future__ import annotations

import math

import pytest
import torch

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.train.runner import execute_run
from budgets.planner import PlanContext, method_model
from conftest import extra_phases, tiny_experiment, tiny_training
from methods import METHODS, Task
from methods.foster import (COMPRESSION, FOSTER, FosterNet, align_new_rows, balanced_distillation,
                            class_balanced_weights)

TINY = "conv2_half"  # 32 features


def foster(**options) -> FOSTER:
    torch.manual_seed(0)
    return FOSTER(TINY, options)


def boosted(method: FOSTER, sizes=(2, 1)) -> Task:
    """`method` after the first task and the structure of the second (known 2, total 3)."""
    method.before_task(Task(0, 0, sizes[0], 2))
    task = Task(1, sizes[0], sum(sizes), 2)
    method.before_task(task)
    return task


# -- the pieces ----------------------------------------------------------------------------------
def test_registered_with_the_reference_defaults_and_a_compression_phase():
    assert METHODS.get("foster") is FOSTER and FOSTER.shares_first_task
    assert FOSTER.extra_phases == ("compression",)
    assert FOSTER.default_options == {"beta1": 0.96, "beta2": 0.97, "lambda_okd": 1.0, "temperature": 2.0,
                                      "oofc": "ft", "is_teacher_wa": False, "is_student_wa": False,
                                      "wa_value": 1.0, "evaluate": "student"}
    assert FOSTER.kept_blocks(10, {}) == 1 and FOSTER.kept_blocks(10, {"evaluate": "teacher"}) == 2
    assert FOSTER.kept_blocks(1, {"evaluate": "teacher"}) == 1


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="evaluate 'boosted'.*'student'.*'teacher'"):
        FOSTER.resolve_options({"evaluate": "boosted"}, base_classes=0)
    with pytest.raises(ValueError, match="oofc 'zz'.*'ft'.*'az'"):
        foster(oofc="zz")
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\)"):
        foster(beta2=1.0)


def test_class_balanced_weights_are_pycils():
    # PyCIL's per_cls_weights for 2 old classes of 20 exemplars and a new one of 500 images.
    counts = torch.tensor([20, 20, 500])
    torch.testing.assert_close(class_balanced_weights(counts, 0.96), torch.tensor([1.17279236, 1.17279236, 0.65441528]))
    torch.testing.assert_close(class_balanced_weights(counts, 0.97), torch.tensor([1.22139604, 1.22139604, 0.55720792]))


def test_balanced_distillation_reweights_the_teachers_softmax():
    # Teacher softmax (1/2, 1/2) times weights (1, 3), renormalized: (1/4, 3/4); the student's softmax is
    # (1/4, 3/4) too, so the loss is that distribution's entropy, 0.5623351.
    loss = balanced_distillation(torch.tensor([[0.0, math.log(3.0)]]), torch.zeros(1, 2), torch.tensor([1.0, 3.0]), 1.0)
    torch.testing.assert_close(loss, torch.tensor(0.56233514))


def test_boosting_loss_is_balanced_ce_plus_auxiliary_ce_plus_old_distillation(monkeypatch):
    method = foster(lambda_okd=0.5)
    task = boosted(method)
    method.class_weights = torch.tensor([1.0, 1.0, 0.5])
    outputs = {"logits": torch.tensor([[0.0, 0.0, 1.0]]), "aux_logits": torch.zeros(1, 3), "old_logits": torch.zeros(1, 2)}
    monkeypatch.setattr(method, "network", lambda images: outputs)
    # ln(1 + 2 e^-2) (logits / weights = (0, 0, 2), label 2) + ln 3 (auxiliary) + 0.5 ln 2 (distillation).
    loss = method.loss(task, torch.zeros(1, 3, 32, 32), torch.tensor([2]))
    torch.testing.assert_close(loss, torch.tensor(1.68473065))


def test_weight_aligning_scales_the_new_rows_with_the_wa_value():
    fc = torch.nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
    align_new_rows(fc, known_classes=1, value=2.0)  # gamma = 3 / 1 x 2^(1/1)
    torch.testing.assert_close(fc.weight, torch.tensor([[3.0, 0.0], [0.0, 6.0]]))


def test_boosting_puts_a_copy_beside_the_frozen_old_model():
    method = foster()
    method.before_task(Task(0, 0, 2, 2))
    old_fc = method.network.fc
    old_values = {k: v.clone() for k, v in method.network.backbones[0].state_dict().items()}
    method.before_task(Task(1, 2, 3, 2))
    net = method.network
    assert len(net.backbones) == 2 and net.old_fc is old_fc and method.teacher is None
    assert all(torch.equal(net.backbones[1].state_dict()[k], v) for k, v in old_values.items())
    assert not any(p.requires_grad for p in [*net.backbones[0].parameters(), *old_fc.parameters()])
    assert all(p.requires_grad for p in net.backbones[1].parameters())
    net.train()
    assert not net.backbones[0].training and net.backbones[1].training  # the old BatchNorm stays in eval mode
    assert tuple(net.fc.weight.shape) == (3, 64) and tuple(net.aux_fc.weight.shape) == (3, 32)
    torch.testing.assert_close(net.fc.weight[:2, :32], old_fc.weight)
    net.eval()
    images = torch.randn(2, 3, 32, 32)
    out = net(images)
    torch.testing.assert_close(out["old_logits"], old_fc(net.backbones[0](images)))


def test_compression_trains_a_fresh_student_from_the_old_model_without_weight_decay():
    method = foster()
    task = boosted(method)
    booster = method.network
    main, compression = method.phases(task)
    assert (compression.name, compression.data) == (COMPRESSION, "task")
    method.begin_phase(task, compression)
    student = method.network
    assert method.teacher is booster and not booster.training and len(student.backbones) == 1
    assert not any(p.requires_grad for p in booster.parameters())
    assert all(torch.equal(student.backbones[0].state_dict()[k], v)
               for k, v in booster.backbones[0].state_dict().items())
    torch.testing.assert_close(student.fc.weight[:2], booster.old_fc.weight)
    (group,) = method.phase_parameter_groups(compression)
    assert group["weight_decay"] == 0.0 and len(group["params"]) == len(list(student.parameters()))
    method.end_phase(task, compression)
    assert method.network is student and method.teacher is booster  # the boosted model is held to the task's end
    method.before_task(Task(2, 3, 4, 3))
    assert method.teacher is None and method.network is student and len(student.backbones) == 2


def test_a_teacher_stored_in_half_precision_still_starts_the_student_from_the_old_values():
    torch.manual_seed(0)
    method = FOSTER(TINY, model_storage="fp16")
    task = boosted(method)
    booster = method.network
    old_weight = next(booster.backbones[0].parameters())
    assert old_weight.dtype == torch.float16  # frozen by boosting, stored as the run says
    method.begin_phase(task, method.phases(task)[1])
    student = method.network
    assert all(p.dtype == torch.float32 and p.requires_grad for p in student.parameters())
    torch.testing.assert_close(next(student.backbones[0].parameters()), old_weight.float())
    torch.testing.assert_close(student.fc.weight[:2], booster.old_fc.weight)


def test_scoring_the_teacher_keeps_the_boosted_model_and_boosts_the_student_next():
    method = foster(evaluate="teacher")
    task = boosted(method)
    booster = method.network
    method.begin_phase(task, method.phases(task)[1])
    student = method.network
    method.end_phase(task, method.phases(task)[1])
    assert method.network is booster and method.teacher is student
    method.before_task(Task(2, 3, 4, 3))
    assert method.network is student and method.teacher is None


def test_az_keeps_the_new_rows_on_old_features_at_zero():
    method = foster(oofc="az")
    task = boosted(method)
    fc = method.network.fc
    assert torch.count_nonzero(fc.weight[2:, :32]) == 0 and torch.count_nonzero(fc.weight[2:, 32:]) > 0
    fc.weight.grad = torch.ones_like(fc.weight)
    method.before_step(task, method.phases(task)[0])
    assert torch.count_nonzero(fc.weight.grad[2:, :32]) == 0 and torch.count_nonzero(fc.weight.grad[:2]) == 2 * 64


# -- runs ----------------------------------------------------------------------------------------
# The scored model, the scenario and its task sizes: three tasks, the fewest where a student is
# boosted again (tests/test_checkpoint.py runs four, stopped and resumed).
RUNS = {"student": ("B50Inc25", (50, 25, 25)), "teacher": ("B50Inc25", (50, 25, 25))}


@pytest.fixture(scope="module", params=list(RUNS))
def cifar_run(request, tmp_path_factory, cifar_root):
    """5 training images per class, one epoch per phase; `evaluate` as the param."""
    root = tmp_path_factory.mktemp(f"foster_{request.param}")
    raw = tiny_experiment(f"foster_{request.param}", ["foster"], [1.0], scenario=RUNS[request.param][0],
                          method_options={"foster": {"evaluate": request.param}}, training=tiny_training())
    (run,) = expand(parse_experiment(raw))
    return request.param, run, execute_run(run, root / "experiment", root / "results", "cpu", cifar_root, 1)


def test_tiny_cifar_run_boosts_and_compresses(cifar_run):
    evaluate, run, record = cifar_run
    assert record["status"] == "complete", record.get("error")
    sizes = RUNS[evaluate][1]
    assert [t["classes_seen"] for t in record["tasks"]] == [sum(sizes[:i + 1]) for i in range(len(sizes))]
    compressions = [sum(e.get("phase") == COMPRESSION for e in t["epochs"]) for t in record["tasks"]]
    assert compressions == [0] + [1] * (len(sizes) - 1)
    assert all(math.isfinite(t["cnn_accuracy"]) and math.isfinite(t["nme_accuracy"]) for t in record["tasks"])


def test_planner_counts_what_the_run_holds(cifar_run):
    evaluate, run, record = cifar_run
    audited = record["tasks"][-1]["memory"]
    for policy in ("paper", "strict"):
        ctx = PlanContext(task_sizes=RUNS[evaluate][1], image_shape=(32, 32, 3), family=(TINY,), benchmark=TINY,
                          policy=policy, method_options=(("foster", (("evaluate", evaluate),)),))
        assert method_model("foster", run.backbone, ctx)[1] == audited[policy]["model_bytes"], policy
    # conv2_half: 10,272 parameters (41,088 bytes), 41,616 bytes with its BatchNorm buffers. Strict, either
    # way: the student (that, a classifier of 100 x 32 + 100 floats: 54,816) and the boosted model (two
    # backbones 83,232, a classifier of 100 x 64 + 100 floats 26,000, the auxiliary head 100 x 32 + 100
    # 13,200, the old classifier 75 x 32 + 75 9,900: 132,332). Paper: the scored model's backbones.
    assert audited["strict"]["model_bytes"] == 187_148
    assert audited["paper"]["model_bytes"] == {"student": 41_088, "teacher": 82_176}[evaluate]


# -- an ImageNet-style folder run ----------------------------------------------------------------
def test_tiny_folder_run_boosts_and_compresses(tmp_path):
    from test_imagenet_training import NAME, SGD, make_folder_dataset
    import dataclasses
    from benchmark.data.image_cache import CACHE_ENV
    from benchmark.data.specs import DATASETS

    make_folder_dataset(tmp_path / "data", train=3)
    spec = dataclasses.replace(DATASETS["imagenet1000"], name=NAME, title="", num_classes=4, train_per_class=3,
                               test_per_class=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS, NAME, spec)
        patch.delenv(CACHE_ENV, raising=False)
        experiment = parse_experiment({
            "name": "tinynet", "dataset": NAME, "scenario": "B2Inc2", "methods": ["foster"], "budgets": [4.4],
            "seeds": [1], "profile": "cpu", "family": ["conv4"], "benchmark_backbone": "conv4",
            "anchor_exemplars": 4, "training": {
                "images_per_class": None, "test_images_per_class": None, "augment": True,
                "first_task": {"epochs": 1, **SGD}, "later_tasks": {"all": {"epochs": 1, **SGD}},
                "phases": extra_phases(1, **SGD)}})
        (run,) = expand(experiment)
        # 4.4 MB less conv4's 3,624,960 bytes (one backbone billed): 6 exemplars of 150,528.
        assert run.exemplars == 6
        record = execute_run(run, tmp_path / "experiment", tmp_path / "results", "cpu", tmp_path / "data", 1)
    assert record["status"] == "complete", record.get("error")
    assert [t["classes_seen"] for t in record["tasks"]] == [2, 4]
    assert [sum(e.get("phase") == COMPRESSION for e in t["epochs"]) for t in record["tasks"]] == [0, 1]
