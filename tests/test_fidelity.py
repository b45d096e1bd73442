"""Fidelity to the reference implementations (PyCIL, the MEMO authors' code); docs/fidelity.md
lists each point with the reference file. Expected values are worked out by hand below."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.config.experiment import parse_experiment
from benchmark.data import DATASETS
from benchmark.config.grid import expand
from methods import METHODS, Task
from methods.backbones import BACKBONES, build_backbone, input_kind
from methods.backbones.cifar_resnet import BasicBlock, ZeroPadShortcut
from methods.networks import DERNet, MEMONet, SingleNet, expanded_classifier

CIFAR_RESNETS = [n for n in BACKBONES if n.startswith("resnet") and input_kind(n) == "cifar"]


def convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def assert_kaiming_fan_out(conv: nn.Conv2d, tolerance: float) -> None:
    """Weights ~ N(0, 2 / fan_out), fan_out = k*k*out_channels (PyCIL convs/cifar_resnet.py)."""
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    std = conv.weight.detach().std().item()
    assert std == pytest.approx(math.sqrt(2 / fan_out), rel=tolerance), conv
    assert abs(conv.weight.detach().mean().item()) < 5 * std / math.sqrt(conv.weight.numel()), conv


def assert_reference_linear(fc: nn.Linear) -> None:
    """kaiming_uniform_ with the linear gain: U(-b, b), b = sqrt(3 / fan_in), so std = b / sqrt(3);
    bias exactly zero (PyCIL convs/linears.py SimpleLinear)."""
    bound = math.sqrt(3 / fc.in_features)
    weight = fc.weight.detach()
    assert torch.equal(fc.bias.detach(), torch.zeros(fc.out_features))
    assert weight.abs().max().item() <= bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    # Filling the range: PyTorch's default stops at 1/sqrt(fan_in), 58 % of b.
    assert weight.abs().max().item() > 0.9 * bound


# -- 1. initialization -------------------------------------------------------------------------
def test_resnet32_large_conv_has_reference_std():
    torch.manual_seed(0)
    backbone = build_backbone("resnet32")
    last = backbone.specialized[-1].conv2  # 64 -> 64, 3x3: 36,864 weights, std sqrt(2/576) = 0.0589
    assert last.weight.numel() == 36_864
    assert_kaiming_fan_out(last, tolerance=0.02)


@pytest.mark.parametrize("name", CIFAR_RESNETS)
def test_every_cifar_resnet_conv_and_batchnorm_is_reference_initialized(name):
    torch.manual_seed(1)
    backbone = build_backbone(name)
    for conv in convs(backbone):
        # Sample std of n normal draws is off by about 1/sqrt(2n): 5 sigma for the smallest layer.
        assert_kaiming_fan_out(conv, tolerance=5 / math.sqrt(2 * conv.weight.numel()))
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    for bn in norms:
        assert torch.equal(bn.weight.detach(), torch.ones_like(bn.weight))
        assert torch.equal(bn.bias.detach(), torch.zeros_like(bn.bias))


def test_imagenet_resnet_convs_are_fan_out_as_torchvision():
    torch.manual_seed(0)
    backbone = build_backbone("resnet10")
    assert_kaiming_fan_out(backbone.specialized[0].conv2, tolerance=0.02)  # 512 -> 512, 3x3


def test_small_convnets_keep_pytorch_defaults_as_the_reference_does():
    """PyCIL convs/conv_cifar.py sets no init: conv weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with bias."""
    torch.manual_seed(0)
    conv = convs(build_backbone("conv2"))[1]  # 64 -> 64, 3x3
    bound = 1 / math.sqrt(conv.in_channels * 9)
    assert conv.weight.abs().max().item() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert conv.bias is not None and conv.bias.abs().max().item() > 0


def test_classifier_and_its_growth_match_update_fc():
    torch.manual_seed(0)
    net = SingleNet("resnet32")
    net.add_task(100)  # 100 x 64 weights
    assert_reference_linear(net.fc)
    small = SingleNet("resnet32")
    small.add_task(3)
    with torch.no_grad():
        small.fc.bias.copy_(torch.tensor([0.5, -0.25, 1.0]))
    old_weight = small.fc.weight.detach().clone()
    small.add_task(97)
    assert torch.equal(small.fc.weight[:3], old_weight)
    assert small.fc.bias.tolist()[:3] == [0.5, -0.25, 1.0]
    assert torch.equal(small.fc.bias[3:], torch.zeros(97))  # new rows: zero bias
    new_rows = small.fc.weight[3:].detach()
    assert new_rows.abs().max().item() <= math.sqrt(3 / 64)
    assert new_rows.std().item() == pytest.approx(1 / 8, rel=0.05)


def test_der_old_rows_get_fresh_columns_for_the_new_backbone():
    """PyCIL DERNet.update_fc copies old rows into the old columns only; the rest keeps the new init."""
    torch.manual_seed(0)
    der = DERNet("resnet32")
    der.add_task(50)
    old = der.fc.weight.detach().clone()
    der.add_task(50)
    assert der.fc.in_features == 128
    assert torch.equal(der.fc.weight[:50, :64], old)
    fresh = der.fc.weight[:50, 64:].detach()  # 3,200 weights drawn with fan_in 128
    assert fresh.abs().max().item() <= math.sqrt(3 / 128)
    assert fresh.std().item() == pytest.approx(1 / math.sqrt(128), rel=0.06)


def test_expanded_classifier_from_nothing_is_reference_linear():
    torch.manual_seed(0)
    assert_reference_linear(expanded_classifier(None, 256, 40))


@pytest.mark.parametrize("network", [DERNet, MEMONet])
def test_aux_head_is_reference_linear(network):
    torch.manual_seed(0)
    net = network("resnet32")
    net.add_task(10)
    net.add_task(10)
    net.add_aux_head(99)  # 100 x 64 weights
    assert net.aux_fc.in_features == 64 and net.aux_fc.out_features == 100
    assert_reference_linear(net.aux_fc)


def test_zero_pad_shortcut_keeps_channels_last():
    shortcut = ZeroPadShortcut(16)
    x = torch.randn(2, 16, 8, 8)
    expected = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 16, 4, 4)], dim=1)
    out = shortcut(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.equal(out, expected)
    plain = shortcut(x)
    assert plain.is_contiguous() and torch.equal(plain, expected)


def test_downsampling_block_output_stays_channels_last():
    torch.manual_seed(0)
    block = BasicBlock(16, 32, stride=2).eval()
    x = torch.randn(2, 16, 8, 8)
    out = block(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, block(x))


# -- 2. WA's loss weighting ----------------------------------------------------------------------
# One image, 2 old classes + 1 new, label 0, temperature 2.
#   student logits s = (0, 2 ln 3, 0): CE = -log(1 / (1 + 9 + 1)) = ln 11.
#   KD on the old logits at T = 2: student (0, ln 3) -> log-probs (ln 1/4, ln 3/4);
#   teacher t = (2 ln 3, 0) -> (ln 3, 0) -> probs (3/4, 1/4);
#   KD = -(3/4 ln 1/4 + 1/4 ln 3/4) = ln 4 - (ln 3) / 4.
STUDENT = torch.tensor([[0.0, 2 * math.log(3), 0.0]])
TEACHER = torch.tensor([[2 * math.log(3), 0.0]])
CE, KD = math.log(11), math.log(4) - math.log(3) / 4


def wa_loss(**options) -> float:
    method = METHODS.get("wa")("resnet8_half", options or None)
    method.network = lambda images: {"logits": STUDENT.expand(len(images), -1)}
    method.teacher = lambda images: {"logits": TEACHER.expand(len(images), -1)}
    labels = torch.zeros(1, dtype=torch.long)
    return method.loss(Task(1, 2, 3, 2), torch.zeros(1, 3, 32, 32), labels).item()


def test_wa_old_share_weighting_hand_computed():
    # l = known / total = 2/3: (1/3) ln 11 + (2/3)(ln 4 - ln 3 / 4) = 0.799298 + 0.741094 = 1.540393
    assert wa_loss() == pytest.approx(CE / 3 + 2 * KD / 3, abs=1e-6)
    assert wa_loss() == pytest.approx(1.540393, abs=1e-6)
    assert wa_loss(weighting="old_share") == wa_loss()


def test_wa_fixed_weighting_hand_computed():
    # CE + 2 KD, PyCIL's models/wa.py before commit 716625e: 2.397895 + 2 * 1.111641  = 4.621178
    assert wa_loss(weighting="fixed") == pytest.approx(CE + 2 * KD, abs=1e-6)
    assert wa_loss(weighting="fixed") == pytest.approx(4.621178, abs=1e-6)
    assert wa_loss(weighting="fixed", kd_weight=0.5) == pytest.approx(CE + 0.5 * KD, abs=1e-6)


def test_wa_unknown_weighting_is_refused_at_plan_and_build_time():
    with pytest.raises(ValueError, match="unknown weighting 'fixd'.*old_share, fixed"):
        METHODS.get("wa").resolve_options({"weighting": "fixd"}, 0)
    with pytest.raises(ValueError, match="unknown weighting 'fixd'"):
        METHODS.get("wa")("resnet8_half", {"weighting": "fixd"})
    assert METHODS.get("wa").resolve_options({"weighting": "fixed"}, 50) == {"weighting": "fixed"}


# -- 3. MEMO's train_base --------------------------------------------------------------------------
@pytest.mark.parametrize("options, base, expected", [
    ({}, 0, True),                              # B0Inc10: the default "auto" trains the base
    ({}, 50, False),                            # B50Inc10: frozen after the large first task
    ({"train_base": "auto"}, 0, True),
    ({"train_base": "auto"}, 50, False),
    ({"train_base": False}, 0, False),          # explicit values are kept
    ({"train_base": True}, 50, True),
])
def test_memo_train_base_auto_resolves_from_the_base(options, base, expected):
    resolved = METHODS.get("memo").resolve_options({**options, "aux_weight": 0.5}, base)
    assert resolved == {"aux_weight": 0.5, "train_base": expected}
    assert resolved["train_base"] is expected


def test_memo_bad_or_unresolved_train_base_is_refused():
    memo = METHODS.get("memo")
    with pytest.raises(ValueError, match="train_base must be true, false or 'auto', got 'yes'"):
        memo.resolve_options({"train_base": "yes"}, 0)
    with pytest.raises(ValueError, match="got 1"):
        memo("resnet8_half", {"train_base": 1})
    method = memo("resnet8_half")
    with pytest.raises(ValueError, match="train_base is 'auto'.*resolve_options"):
        method.before_task(Task(0, 0, 10, 10))


def test_other_methods_resolve_options_unchanged():
    assert METHODS.get("der").resolve_options({"aux_weight": 2.0}, 50) == {"aux_weight": 2.0}
    assert METHODS.get("icarl").resolve_options({}, 0) == {}


def memo_runs(scenarios: list[str], method_options: dict | None = None) -> dict[str, list]:
    raw = {"name": "t", "dataset": "cifar100", "scenario": scenarios, "methods": ["memo"],
           "budgets": "paper", "seeds": [1993], "profile": "paper"}
    if method_options is not None:
        raw["method_options"] = {"memo": method_options}
    runs: dict[str, list] = {}
    for run in expand(parse_experiment(raw)):
        runs.setdefault(run.scenario, []).append(run)
    return runs


def test_run_identity_carries_the_resolved_train_base():
    runs = memo_runs(["B0Inc10", "B50Inc10"])
    assert {r.identity()["method_options"]["train_base"] for r in runs["B0Inc10"]} == {True}
    assert {r.identity()["method_options"]["train_base"] for r in runs["B50Inc10"]} == {False}
    explicit = memo_runs(["B0Inc10", "B50Inc10"], {"train_base": True})
    assert {r.training["method_options"]["train_base"] for r in explicit["B50Inc10"]} == {True}
    # "auto" on B0 is the same run as an explicit true: same identity, same id.
    assert [r.run_id for r in explicit["B0Inc10"]] == [r.run_id for r in runs["B0Inc10"]]
    assert not {r.run_id for r in explicit["B50Inc10"]} & {r.run_id for r in runs["B50Inc10"]}


# -- 4. normalization constants --------------------------------------------------------------------
def test_normalization_constants_are_pycils():
    """PyCIL utils/data.py iCIFAR10, iCIFAR100 and iImageNet100 (same in the MEMO authors' code)."""
    assert DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert DATASETS["cifar10"].std == (0.2023, 0.1994, 0.2010)
    assert DATASETS["cifar100"].mean == (0.5071, 0.4867, 0.4408)
    assert DATASETS["cifar100"].std == (0.2675, 0.2565, 0.2761)
    assert DATASETS["imagenet100"].mean == (0.485, 0.456, 0.406)
    assert DATASETS["imagenet100"].std == (0.229, 0.224, 0.225)


# -- 5. the first-task spread script ---------------------------------------------------------------
def test_first_task_spread_summary_and_run():
    from benchmark.tools.first_task_spread import spread_run, summary
    stats = summary({1: 10.0, 2: 20.0, 3: 36.0})
    # sample std: sqrt((12^2 + 2^2 + 14^2) / (3 - 1)) = sqrt(172) = 13.114877
    assert (stats["mean"], stats["min"], stats["max"]) == (22.0, 10.0, 36.0)
    assert stats["std"] == pytest.approx(13.114877, abs=1e-6)
    assert summary({5: 30.0})["std"] == 0.0
    run = spread_run(4, "resnet32", 1993)
    assert (run.network_seed, run.seed, run.scenario, run.backbone) == (4, 1993, "B0Inc20", "resnet32")
    assert (run.training["images_per_class"], run.training["test_images_per_class"]) == (50, 40)
    assert run.training["first_task"]["epochs"] == 20 and list(run.training["first_task"]["milestones"]) == [14, 18]
