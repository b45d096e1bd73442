"""Stored-model precision (`model_storage`, methods/storage.py): exact stored bytes per dtype, the
forward error each costs, conversion exactly when a block freezes, the planner's count against the
audit of real runs, the teacher under strict, resume, and the conversion-cost probe.

resnet32 by hand: 461,232 conv weights over 1,136 output channels, 2,272 BatchNorm affine
parameters (and as many running statistics), 31 BatchNorm layers: 463,504 parameters. The MEMO
split: the generalized block holds 111,024 conv weights (496 channels) and 992 BN parameters
(112,016), the specialized block (stage 3) 350,208 conv weights (640 channels) and 1,280 BN (351,488).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.train import checkpoints
from benchmark.train.engine import EngineSettings
from benchmark.train.runner import execute_run
from budgets.accounting import module_bytes
from budgets.planner import PlanContext, final_model, method_model, stored_final_model
from conftest import tiny_experiment
from methods import METHODS, Method, Task
from methods.backbones import build_backbone
from methods.der import DER
from methods.icarl import ICaRL
from methods.losses import frozen_copy
from methods.memo import MEMO
from methods.storage import STORAGES, check_storage, quantize_int8, storage_applies, store_module, stored_storage

# resnet32 backbone bytes: (parameters only, as the paper policy counts; with buffers, as strict counts)
RESNET32_BYTES = {
    "fp32": (463_504 * 4, 463_504 * 4 + 2_272 * 4 + 31 * 8),                       # 1,854,016 / 1,863,352
    "fp16": (463_504 * 2, 463_504 * 2 + 2_272 * 2 + 31 * 8),                       # 927,008 / 931,800
    "bf16": (463_504 * 2, 463_504 * 2 + 2_272 * 2 + 31 * 8),
    "int8": (461_232 + 1_136 * 4 + 2_272 * 4, 461_232 + 1_136 * 4 + 2_272 * 4 + 2_272 * 4 + 31 * 8),  # 474,864 / 484,200
}
GENERALIZED_INT8 = 111_024 + 496 * 4 + 992 * 4     # 116,976
SPECIALIZED_INT8 = 350_208 + 640 * 4 + 1_280 * 4   # 357,888
# Largest |stored - fp32| / max |fp32| of a resnet32's features on 16 random images, measured with
# random weights and BatchNorm statistics (`resnet32()` below): fp16 6.4e-4, bf16 9.0e-3, int8 1.6e-2.
# The bounds leave about 3x room.
FORWARD_ERROR_BOUND = {"fp32": 0.0, "fp16": 2e-3, "bf16": 2e-2, "int8": 6e-2}


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)


def resnet32(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    backbone = build_backbone("resnet32")
    randomize_batchnorm(backbone, seed)
    return backbone.eval().requires_grad_(False)


def tasks(*sizes: int) -> list[Task]:
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return [Task(i, bounds[i], bounds[i + 1], len(sizes)) for i in range(len(sizes))]


# -- the conversion ----------------------------------------------------------------------------------
def test_an_unknown_storage_names_the_choices():
    assert STORAGES == ("fp32", "fp16", "bf16", "int8")
    with pytest.raises(ValueError, match="unknown model_storage 'fp8'; use one of fp32, fp16, bf16, int8"):
        check_storage("fp8")
    with pytest.raises(ValueError, match="unknown model_storage"):
        DER("conv2_half", model_storage="int4")


@pytest.mark.parametrize("storage", STORAGES)
def test_resnet32_stored_bytes_are_exact(storage):
    backbone = store_module(resnet32(), storage)
    assert (module_bytes([backbone]), module_bytes([backbone], include_buffers=True)) == RESNET32_BYTES[storage]
    # on the meta device (the planner) the same shapes, so the same bytes
    with torch.device("meta"):
        meta = store_module(build_backbone("resnet32"), storage)
    assert (module_bytes([meta]), module_bytes([meta], include_buffers=True)) == RESNET32_BYTES[storage]


def test_resnet32_literals():
    assert RESNET32_BYTES["fp32"] == (1_854_016, 1_863_352)
    assert RESNET32_BYTES["fp16"] == (927_008, 931_800)
    assert RESNET32_BYTES["int8"] == (474_864, 484_200)
    assert GENERALIZED_INT8 + SPECIALIZED_INT8 == 474_864


@pytest.mark.parametrize("storage", STORAGES)
def test_stored_dtypes_per_storage(storage):
    backbone = store_module(resnet32(), storage)
    assert stored_storage(backbone) == storage
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    stored = lambda m, name: m.parametrizations[name].original if hasattr(m, "parametrizations") and name in m.parametrizations else getattr(m, name)  # noqa: E731
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(storage)
    weight_dtype = torch.int8 if storage == "int8" else half or torch.float32
    small_dtype = half or torch.float32  # int8 keeps 1-D tensors and buffers fp32
    assert {stored(m, "weight").dtype for m in convs} == {weight_dtype}
    assert {stored(m, name).dtype for m in bns for name in ("weight", "bias", "running_mean", "running_var")} == {small_dtype}
    assert {m.num_batches_tracked.dtype for m in bns} == {torch.int64}
    # what forward computes with is fp32 whatever is stored
    assert {m.weight.dtype for m in convs} | {m.running_var.dtype for m in bns} == {torch.float32}
    assert not any(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize("storage", STORAGES)
def test_forward_stays_close_to_fp32(storage):
    backbone = resnet32()
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = backbone(images)
    stored = backbone(images) if storage == "fp32" else store_module(copy.deepcopy(backbone), storage)(images)
    error = float((stored - reference).abs().max() / reference.abs().max())
    assert error <= FORWARD_ERROR_BOUND[storage], error
    if storage != "fp32":
        assert error > 0  # something was converted


def test_int8_quantization_by_hand():
    weight = torch.tensor([[1.27, -0.5], [0.1, 0.25]])
    values, scale = quantize_int8(weight)
    assert values.dtype == torch.int8 and values.tolist() == [[127, -50], [51, 127]]
    assert torch.allclose(scale, torch.tensor([0.01, 0.25 / 127]))
    linear = nn.Linear(2, 2).requires_grad_(False)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(torch.tensor([0.5, -0.5]))
    store_module(linear, "int8")
    assert torch.allclose(linear.weight, torch.tensor([[1.27, -0.5], [51 * 0.25 / 127, 0.25]]))
    assert linear.parametrizations.weight.original.dtype == torch.int8 and linear.bias.dtype == torch.float32
    # 4 int8 weights + 2 fp32 scales + 2 fp32 biases
    assert module_bytes([linear]) == 4 + 2 * 4 + 2 * 4


def test_conversion_is_idempotent_and_refuses_a_second_dtype():
    backbone = store_module(resnet32(), "int8")
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    store_module(backbone, "int8")
    assert backbone.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in backbone.state_dict().items())
    assert store_module(backbone, "fp32") is backbone
    with pytest.raises(ValueError, match="stored as int8 cannot be stored as fp16"):
        store_module(backbone, "fp16")


def test_a_converted_block_copies_saves_loads_and_changes_layout():
    backbone = store_module(resnet32(), "int8")
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = backbone(images)
    copied = copy.deepcopy(backbone)
    assert torch.equal(copied(images), expected)
    fresh = store_module(resnet32(seed=5), "int8")  # another block, same structure
    fresh.load_state_dict(backbone.state_dict())
    assert torch.equal(fresh(images), expected)
    fresh.to(memory_format=torch.channels_last)
    # channels_last convolutions sum in another order: equal to float32 rounding (outputs up to ~860;
    # measured: 2e-4 at most)
    assert torch.allclose(fresh(images.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-3)


# -- when: at freeze, and only what freezes ------------------------------------------------------
def test_der_converts_an_old_backbone_when_it_freezes_and_never_trains_it():
    torch.manual_seed(0)
    der = DER("conv2_half", model_storage="int8")
    first, second = tasks(10, 10)
    der.before_task(first)
    der.after_task(first)
    assert stored_storage(der.network) == "fp32"  # nothing frozen after task 0
    der.network.add_task(0)  # grown but not frozen: still fp32
    assert stored_storage(der.network.backbones[1]) == "fp32"
    der = DER("conv2_half", model_storage="int8")
    der.before_task(first)
    der.before_task(second)  # freezes backbone 0
    old, new = der.network.backbones
    assert stored_storage(old) == "int8" and stored_storage(new) == "fp32"
    assert stored_storage(der.network.fc) == "fp32"  # the classifier trains on
    trainable = der.trainable_parameters()
    assert all(p.dtype == torch.float32 and p.requires_grad for p in trainable)
    old_ids = {id(p) for p in old.parameters()}
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    assert not old_ids & {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(p.requires_grad for p in old.parameters())
    der.network.train()
    assert not old.training  # frozen modules stay in eval mode


@pytest.mark.parametrize("train_base, generalized", [(False, "fp16"), (True, "fp32")])
def test_memo_converts_old_specialized_blocks_and_a_frozen_generalized_block(train_base, generalized):
    memo = MEMO("conv2_half", {"train_base": train_base}, model_storage="fp16")
    for task in tasks(10, 10, 10):
        memo.before_task(task)
        memo.after_task(task)
    assert [stored_storage(b) for b in memo.network.specialized] == ["fp16", "fp16", "fp32"]
    assert stored_storage(memo.network.generalized) == generalized


@pytest.mark.parametrize("storage", ["fp32", "bf16", "int8"])
def test_icarl_keeps_its_teacher_in_the_storage_it_was_given(storage):
    icarl = ICaRL("conv2_half", model_storage=storage)
    for task in tasks(10, 10):
        icarl.before_task(task)
    assert stored_storage(icarl.teacher) == storage
    assert stored_storage(icarl.network) == "fp32"  # the student trains: never converted
    assert all(p.dtype == torch.float32 for p in icarl.trainable_parameters())
    assert stored_storage(frozen_copy(icarl.network)) == "fp32"  # the default teacher is as trained


def test_storage_applies_to_growing_methods_and_to_teachers_only_under_strict():
    applies = {(name, policy): storage_applies(METHODS.get(name), policy)
               for name in METHODS.names() for policy in ("paper", "strict")}
    teachers = ("icarl", "wa", "bic", "foster", "podnet", "coil")
    assert applies == {(name, policy): name in ("der", "memo") or (name in teachers and policy == "strict")
                       for name in METHODS.names() for policy in ("paper", "strict")}


# -- the planner ---------------------------------------------------------------------------------
def context(storage: str, policy: str = "paper", train_base: bool = False, tasks_: int = 5) -> PlanContext:
    return PlanContext((100 // tasks_,) * tasks_, (32, 32, 3), ("resnet32",), "resnet32", policy=policy,
                       model_storage=storage, method_options=(("memo", (("train_base", train_base),)),))


@pytest.mark.parametrize("storage, der_bytes", [
    ("fp32", 5 * 1_854_016),                      # 9,270,080
    ("fp16", 4 * 927_008 + 1_854_016),            # 5,562,048: 4 old backbones at 2 bytes, the newest at 4
    ("bf16", 4 * 927_008 + 1_854_016),
    ("int8", 4 * 474_864 + 1_854_016),            # 3,753,472
])
def test_planner_counts_der_old_backbones_in_their_storage(storage, der_bytes):
    assert method_model("der", "resnet32", context(storage)) == (5 * 463_504, der_bytes)


@pytest.mark.parametrize("storage, train_base, memo_bytes", [
    ("fp32", False, 4 * (112_016 + 5 * 351_488)),                            # 7,477,824
    ("fp16", False, 2 * (112_016 + 4 * 351_488) + 4 * 351_488),             # 4,441,888
    ("fp16", True, 4 * 112_016 + 2 * 4 * 351_488 + 4 * 351_488),            # 4,665,920
    ("int8", False, GENERALIZED_INT8 + 4 * SPECIALIZED_INT8 + 4 * 351_488),  # 2,954,480
    ("int8", True, 4 * 112_016 + 4 * SPECIALIZED_INT8 + 4 * 351_488),       # 3,285,568
])
def test_planner_counts_memo_blocks_in_their_storage(storage, train_base, memo_bytes):
    assert method_model("memo", "resnet32", context(storage, train_base=train_base)) == (
        112_016 + 5 * 351_488, memo_bytes)


def test_planner_counts_the_teacher_in_its_storage_under_strict_only():
    network = 1_863_352 + (64 * 100 + 100) * 4      # the student under strict: 1,889,352
    teacher_fc = 64 * 80 + 80                        # the teacher holds the first 80 classes
    assert method_model("icarl", "resnet32", context("fp32", "strict"))[1] == network + 1_863_352 + 4 * teacher_fc
    assert method_model("icarl", "resnet32", context("fp16", "strict"))[1] == network + 931_800 + 2 * teacher_fc
    assert method_model("wa", "resnet32", context("int8", "strict"))[1] == (
        network + 484_200 + 64 * 80 + 4 * 80 + 4 * 80)  # int8 fc weight, fp32 row scales and bias: 2,379,312
    # under the paper policy no teacher is counted: the storage changes nothing
    assert method_model("icarl", "resnet32", context("int8", "paper")) == (463_504, 1_854_016)
    assert method_model("replay", "resnet32", context("int8", "strict")) == method_model(
        "replay", "resnet32", context("fp32", "strict"))


@pytest.mark.parametrize("policy", ["paper", "strict"])
def test_the_replayed_count_at_fp32_is_the_network_count(policy):
    """The two counting paths agree where both apply (the methods whose network is their growth
    kind's): the replay restates nothing. The others are counted by replay only."""
    sizes = (20,) * 5
    plain = [name for name in METHODS.names() if METHODS.get(name).build_network is Method.build_network]
    assert sorted(plain) == ["der", "finetune", "gem", "icarl", "joint", "memo", "replay", "wa"]
    for name in plain:
        traits = METHODS.get(name)
        options = (("train_base", False),) if name == "memo" else ()
        assert stored_final_model(name, "resnet32", sizes, policy, "fp32", options) == final_model(
            traits.growth, "resnet32", sizes, policy, traits.keeps_teacher), name


def test_planner_refuses_unresolved_memo_options_for_a_stored_count():
    bare = dataclasses.replace(context("int8"), method_options=())
    with pytest.raises(ValueError, match="train_base is 'auto'; pass them in PlanContext.method_options"):
        method_model("memo", "resnet32", bare)
    assert method_model("memo", "resnet32", dataclasses.replace(bare, model_storage="fp32"))[1] == 7_477_824


# -- real runs ---------------------------------------------------------------------------------------
SGD = {"lr": 0.1, "lr_decay": 0.1, "momentum": 0.9, "milestones": []}
TINY = tiny_experiment("storage", ["der", "memo", "icarl"], [0.75], scenario="B0Inc25", policy="strict", training={
    "images_per_class": 5, "test_images_per_class": 2, "augment": True,
    "first_task": {"epochs": 1, "batch_size": 32, **SGD, "weight_decay": 5e-4},
    "later_tasks": {"all": {"epochs": 1, "batch_size": 32, **SGD, "weight_decay": 2e-4}}})


def with_training(run, **keys):
    return dataclasses.replace(run, training={**run.training, **keys})


@pytest.fixture(scope="module")
def planned_runs():
    return {run.method: run for run in expand(parse_experiment(TINY))}


def execute(run, root, cifar_root, **kwargs) -> dict:
    record = execute_run(run, root / "experiments", root / "results", "cpu", cifar_root, threads=1, **kwargs)
    assert record["status"] == "complete", record["error"]
    return record


@pytest.fixture(scope="module")
def stored_runs(planned_runs, tmp_path_factory, cifar_root):
    root = tmp_path_factory.mktemp("storage_runs")
    return {(method, storage): execute(with_training(planned_runs[method], model_storage=storage), root, cifar_root)
            for method in ("der", "memo") for storage in ("fp32", "fp16", "int8")}


@pytest.mark.parametrize("method", ["der", "memo"])
@pytest.mark.parametrize("storage", ["fp16", "int8"])
def test_a_real_runs_audit_equals_the_planners_count(method, storage, planned_runs, stored_runs):
    run = planned_runs[method]
    options = tuple(sorted(run.training["method_options"].items()))
    final = stored_runs[(method, storage)]["tasks"][-1]["memory"]
    fp32 = stored_runs[(method, "fp32")]["tasks"][-1]["memory"]
    for policy in ("paper", "strict"):
        ctx = PlanContext((25,) * 4, (32, 32, 3), (run.backbone,), run.backbone, policy=policy,
                          model_storage=storage, method_options=((method, options),))
        assert final[policy]["model_bytes"] == method_model(method, run.backbone, ctx)[1], policy
        assert final[policy]["model_bytes"] < fp32[policy]["model_bytes"], policy
        fp32_ctx = dataclasses.replace(ctx, model_storage="fp32")
        assert fp32[policy]["model_bytes"] == method_model(method, run.backbone, fp32_ctx)[1], policy


def test_a_real_icarl_run_bills_its_converted_teacher(planned_runs, tmp_path, cifar_root):
    run = planned_runs["icarl"]
    records = {storage: execute(with_training(run, model_storage=storage), tmp_path, cifar_root)
               for storage in ("fp32", "fp16")}
    strict = {s: r["tasks"][-1]["memory"]["strict"]["model_bytes"] for s, r in records.items()}
    ctx = PlanContext((25,) * 4, (32, 32, 3), (run.backbone,), run.backbone, policy="strict", model_storage="fp16")
    assert strict["fp16"] == method_model("icarl", run.backbone, ctx)[1] < strict["fp32"]
    # the student is never converted: its own paper count is unchanged
    assert {r["tasks"][-1]["memory"]["paper"]["model_bytes"] for r in records.values()} == {
        final_model("single", run.backbone, (25,) * 4, "paper", False)[1]}


class Killed(BaseException):
    """Escapes execute_run's `except Exception`, as a kill would: no record is written."""


def timeless(record: dict) -> dict:
    tasks_ = [{k: v for k, v in t.items() if not k.endswith("_seconds") and k != "epochs"} for t in record["tasks"]]
    return json.loads(json.dumps({**record, "tasks": tasks_, "summary": None, "origin": None, "checkpoint": None},
                                 default=str).replace("NaN", "null"))


def test_a_resumed_int8_der_run_equals_the_uninterrupted_one(planned_runs, stored_runs, tmp_path, cifar_root,
                                                             monkeypatch):
    run = with_training(planned_runs["der"], model_storage="int8")
    save = checkpoints.save

    def save_then_stop(path, run_id, engine, results, wall_seconds):
        save(path, run_id, engine, results, wall_seconds)
        if len(results) == 2:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "save", save_then_stop)
        with pytest.raises(Killed):
            execute(run, tmp_path, cifar_root, keep_checkpoints=True)
    resumed = execute(run, tmp_path, cifar_root)
    assert resumed["checkpoint"]["resumed_from_task"] == 2
    assert timeless(resumed) == timeless(stored_runs[("der", "int8")])


# -- the conversion-cost probe -----------------------------------------------------------------------
def test_the_probe_needs_an_fp32_run_and_known_dtypes():
    with pytest.raises(ValueError, match="probe an fp32 run"):
        EngineSettings(schedules=[], exemplars=0, model_storage="int8", storage_probe=("fp16",))
    with pytest.raises(ValueError, match="unknown model_storage 'half'"):
        EngineSettings(schedules=[], exemplars=0, storage_probe=("half",))


def test_the_probe_records_each_dtype_and_fp32_reproduces_the_run(planned_runs, stored_runs, tmp_path, cifar_root):
    run = with_training(planned_runs["der"], model_storage="fp32", storage_probe=["fp32", "fp16", "int8"])
    record = execute(run, tmp_path, cifar_root)
    plain = stored_runs[("der", "fp32")]
    for task, unprobed in zip(record["tasks"], plain["tasks"]):
        probe = task["storage_probe"]
        assert list(probe) == ["fp32", "fp16", "int8"]
        assert all(set(entry) == {"cnn_accuracy", "nme_accuracy"} for entry in probe.values())
        # probing is the evaluation path: fp32 "conversion" gives the run's own numbers
        assert probe["fp32"] == {"cnn_accuracy": task["cnn_accuracy"], "nme_accuracy": task["nme_accuracy"]}
        # and probing perturbs nothing the run does
        assert (task["cnn_accuracy"], task["nme_accuracy"]) == (unprobed["cnn_accuracy"], unprobed["nme_accuracy"])
        if task["task"] == 0:  # nothing is frozen yet: every dtype is the run itself
            assert all(entry == probe["fp32"] for entry in probe.values())
    assert not math.isnan(record["tasks"][-1]["storage_probe"]["int8"]["nme_accuracy"])
    assert "storage_probe" not in plain["tasks"][0]  # only recorded when probed
