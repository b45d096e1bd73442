"""PODNet (methods/podnet.py) and its UCIR backbone (methods/backbones/ucir_resnet.py): the losses on
hand-made tensors, the classifier's frozen old proxies, a tiny CIFAR run and a tiny ImageNet-style
folder run through both phases, and the planner's count against the run's audit.

Stop-and-resume is tests/test_checkpoint.py's (it covers every method that keeps exemplars:
`pytest tests/test_checkpoint.py -k podnet`).
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.train.runner import execute_run
from budgets.planner import PlanContext, method_model
from conftest import tiny_experiment, tiny_training
from methods import METHODS, Phase, Task
from methods.backbones import build_backbone, parameter_count
from methods.podnet import (FINETUNE, PODNet, PODNetNet, adaptive_factor, nca_loss, pod_flat_loss,
                            pod_spatial_loss)

TINY = "resnet8_half"  # PODNet trains its UCIR variant, resnet8_half_ucir: 32 features


def podnet(backbone: str = TINY, **options) -> PODNet:
    torch.manual_seed(0)
    return PODNet(backbone, options)


# -- the pieces ----------------------------------------------------------------------------------
def test_registered_with_its_own_network_and_first_task():
    method = podnet()
    assert METHODS.get("podnet") is PODNet
    assert isinstance(method.network, PODNetNet) and not PODNet.shares_first_task and PODNet.keeps_teacher
    assert PODNet.extra_phases == (FINETUNE,)
    assert PODNet.default_options == {"proxies": 10, "margin": 0.6, "nca_scale": 1.0, "lambda_flat": 1.0,
                                      "lambda_spatial": 5.0, "ucir_backbone": True}


def test_the_backbone_is_the_ucir_variant_where_there_is_one():
    assert parameter_count(podnet().network.backbone) == 19_624  # resnet8_half_ucir, not resnet8_half's 18,888
    assert parameter_count(podnet(ucir_backbone=False).network.backbone) == 18_888
    assert parameter_count(podnet("conv2_half").network.backbone) == 10_272  # no UCIR variant: as is


def test_ucir_resnet32_has_projection_shortcuts_and_no_final_relu():
    backbone = build_backbone("resnet32_ucir")
    # resnet32's 463,504 plus two shortcuts: 1x1 convs 16x32 and 32x64 and their BatchNorms (2 x 32, 2 x 64).
    assert parameter_count(backbone) == 463_504 + 16 * 32 + 32 * 64 + 2 * 32 + 2 * 64 == 466_256
    assert [block.last for block in backbone.specialized] == [False] * 4 + [True]
    last = backbone.specialized[-1]
    with torch.no_grad():
        last.bn2.bias.fill_(-10.0)  # the residual sum goes negative; without a final ReLU it stays so
        maps = backbone.feature_maps(torch.zeros(1, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)]
    assert maps[-1].max() < 0


def test_nca_puts_the_margin_on_the_positive_only():
    logits, labels = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0])
    # margin 0.5: scaled (1.5, 1, 0), shifted (0, -0.5, -1.5); the positive entry zeroed stays in the
    # sum: log(1 + e^-0.5 + e^-1.5) - 0 = 0.60413
    torch.testing.assert_close(nca_loss(logits, labels, margin=0.5, scale=1.0), torch.tensor(0.60413), atol=1e-5,
                               rtol=0)
    # margin 0 is what the reference code computes for any margin (it cancels there):
    # shifted (0, -1, -2): log(1 + e^-1 + e^-2) = 0.40761
    torch.testing.assert_close(nca_loss(logits, labels, margin=0.0, scale=1.0), torch.tensor(0.40761), atol=1e-5,
                               rtol=0)
    # scale 2, margin 0.5: scaled (3, 2, 0), shifted (0, -1, -3): log(1 + e^-1 + e^-3) = 0.34901
    torch.testing.assert_close(nca_loss(logits, labels, margin=0.5, scale=2.0), torch.tensor(0.34901), atol=1e-5,
                               rtol=0)


def test_pod_spatial_compares_width_and_height_pooled_maps():
    a = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # energy in the top-left pixel
    b = torch.tensor([[[[0.0, 0.0], [0.0, 3.0]]]])  # in the bottom-right (its scale normalizes away)
    # a: rows (1, 0), columns (1, 0) -> (1, 0, 1, 0) / sqrt 2; b: (0, 1, 0, 1) / sqrt 2; distance sqrt 2.
    # Two stages, the second identical: the mean is sqrt(2) / 2.
    torch.testing.assert_close(pod_spatial_loss([a, a], [b, a]), torch.tensor(0.70711), atol=1e-5, rtol=0)


def test_pod_flat_and_the_adaptive_factor():
    features, old = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    torch.testing.assert_close(pod_flat_loss(features, old), torch.tensor((1 - 0.70711) / 2), atol=1e-5, rtol=0)
    assert adaptive_factor(Task(2, 20, 30, 3)) == pytest.approx(1.7320508)  # sqrt(30 / 10)


def test_logits_merge_each_class_proxies_and_scale_by_sigma():
    method = podnet(proxies=2)
    method.before_task(Task(0, 0, 2, 2))
    fc = method.network.fc
    with torch.no_grad():
        fc.blocks[0].copy_(torch.eye(4, 32))  # class 0: proxies e0, e1; class 1: e2, e3
        fc.sigma.fill_(2.0)
    # features e0: cosines (1, 0 | 0, 0); class 0 merges to softmax(1, 0) . (1, 0) = 0.73106
    logits = fc(torch.eye(1, 32))
    torch.testing.assert_close(logits, torch.tensor([[2 * 0.73106, 0.0]]), atol=1e-5, rtol=0)


def test_old_proxies_keep_their_values_and_new_ones_learn():
    method = podnet()
    task0, task1 = Task(0, 0, 4, 2), Task(1, 4, 6, 2)
    method.before_task(task0)
    method.before_task(task1)
    assert method.teacher is not None and method.teacher.fc.num_classes == 4
    assert [p.shape[0] for p in method.network.fc.blocks] == [40, 20]
    groups = method.parameter_groups()
    assert groups[1] == {"params": [method.network.fc.blocks[0]], "lr_scale": 0.0, "weight_decay": 0.0}
    assert [p.shape for p in groups[1]["params"]] == [(40, 32)]
    assert all(p is not method.network.fc.blocks[0] for p in groups[0]["params"])
    assert [phase.name for phase in method.phases(task0)] == ["train"]
    assert method.phases(task1) == [Phase(), Phase(FINETUNE, data="memory")]
    optimizer = torch.optim.SGD([{"params": g["params"], "lr": 0.1 * g.get("lr_scale", 1.0),
                                  **({"weight_decay": g["weight_decay"]} if "weight_decay" in g else {})}
                                 for g in groups], lr=0.1, momentum=0.9, weight_decay=5e-4)
    old, new = (method.network.fc.blocks[i].detach().clone() for i in (0, 1))
    for _ in range(2):
        optimizer.zero_grad()
        method.loss(task1, torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 4, 5])).backward()
        optimizer.step()
    assert torch.equal(method.network.fc.blocks[0], old)
    assert not torch.equal(method.network.fc.blocks[1], new)


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="proxies must be an integer >= 1"):
        podnet(proxies=0)
    with pytest.raises(ValueError, match="lambda_spatial must be a finite number >= 0"):
        PODNet.resolve_options({"lambda_spatial": -1.0}, base_classes=0)


# -- runs ----------------------------------------------------------------------------------------
FINETUNE_SCHEDULE = {"epochs": 1, "milestones": [], "lr": 0.005, "batch_size": 32}
RAW = tiny_experiment("podnet", ["podnet"], [0.75], scenario="B0Inc25", benchmark_backbone=TINY,
                      training=tiny_training(augment=True, phases={"podnet": {FINETUNE: FINETUNE_SCHEDULE}}))


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, cifar_root):
    root = tmp_path_factory.mktemp("podnet")
    (run,) = expand(parse_experiment(RAW))
    return run, execute_run(run, root / "experiment", root / "results", "cpu", cifar_root, 1)


def test_tiny_cifar_run_trains_both_phases(cifar_run):
    run, record = cifar_run
    assert record["status"] == "complete", record.get("error")
    assert [t["classes_seen"] for t in record["tasks"]] == [25, 50, 75, 100]
    finetune_epochs = [sum(e.get("phase") == FINETUNE for e in t["epochs"]) for t in record["tasks"]]
    assert finetune_epochs == [0, 1, 1, 1]
    assert all(math.isfinite(t["cnn_accuracy"]) and math.isfinite(t["nme_accuracy"]) for t in record["tasks"])


def test_planner_counts_what_the_run_holds(cifar_run):
    run, record = cifar_run
    audited = record["tasks"][-1]["memory"]
    for policy in ("paper", "strict"):
        ctx = PlanContext(task_sizes=(25,) * 4, image_shape=(32, 32, 3), family=(TINY,), benchmark=TINY,
                          policy=policy)
        assert method_model("podnet", run.backbone, ctx)[1] == audited[policy]["model_bytes"], policy
    # resnet8_half_ucir: 19,624 parameters (78,496 bytes) and BatchNorm buffers of 336 floats and nine
    # int64 counts (1,416 bytes): 79,912. Strict: that twice (network and teacher), plus the heads:
    # 100 classes x 10 proxies x 32 features and sigma (128,004), and the teacher's 75 classes (96,004).
    # Paper: the network's backbone parameters only; the heads, ten times a linear head, are not billed.
    assert audited["strict"]["model_bytes"] == 2 * 79_912 + 128_004 + 96_004 == 383_832
    assert audited["paper"]["model_bytes"] == 78_496


# -- an ImageNet-style folder run ----------------------------------------------------------------
def test_tiny_folder_run_trains_both_phases(tmp_path):
    from test_imagenet_training import NAME, SGD, make_folder_dataset
    from benchmark.data.image_cache import CACHE_ENV
    from benchmark.data.specs import DATASETS

    make_folder_dataset(tmp_path / "data")
    spec = dataclasses.replace(DATASETS["imagenet1000"], name=NAME, title="", num_classes=4, train_per_class=6,
                               test_per_class=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS, NAME, spec)
        patch.delenv(CACHE_ENV, raising=False)
        experiment = parse_experiment({
            "name": "tinynet", "dataset": NAME, "scenario": "B3Inc1", "methods": ["podnet"], "budgets": [4.5],
            "seeds": [1], "profile": "cpu", "family": ["conv4"], "benchmark_backbone": "conv4",
            "anchor_exemplars": 8, "training": {
                "images_per_class": None, "test_images_per_class": None, "augment": True,
                "first_task": {"epochs": 1, **SGD}, "later_tasks": {"all": {"epochs": 1, **SGD}},
                "phases": {"podnet": {FINETUNE: {"epochs": 1, **SGD}}}}})
        (run,) = expand(experiment)
        record = execute_run(run, tmp_path / "experiment", tmp_path / "results", "cpu", tmp_path / "data", 1)
    assert record["status"] == "complete", record.get("error")
    assert [t["classes_seen"] for t in record["tasks"]] == [3, 4]  # two tasks: the second fine-tunes
    assert [sum(e.get("phase") == FINETUNE for e in t["epochs"]) for t in record["tasks"]] == [0, 1]
