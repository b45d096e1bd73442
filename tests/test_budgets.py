"""Memory accounting and the budget planner, against the MEMO paper's numbers (docs/protocol.md section 3)."""
import copy

import pytest
import torch

from budgets.accounting import count_memory, exemplar_bytes, model_bytes
from budgets.planner import BudgetError, PlanContext, fair_point, plan
from methods import METHODS
from methods.networks import build_network

CIFAR_FAMILY = ("conv2", "resnet14", "resnet20", "resnet26", "resnet32")
B0INC10 = PlanContext(task_sizes=(10,) * 10, image_shape=(32, 32, 3), family=CIFAR_FAMILY,
                      benchmark="resnet32", train_images=50_000)
ALL = METHODS.names()

# docs/protocol.md section 3a, CIFAR-100 B0Inc10: budget label -> exemplars of single nets, DER, MEMO
PAPER_TABLE = {
    7.63: (2000, 2096, 2118),
    12.42: (3634, 2000, 2495),
    16.12: (4900, 2000, 2768),
    19.83: (6165, 2000, 3040),
    23.54: (7431, 2000, 3312),
}
PAPER_BACKBONES = {7.63: "conv2", 12.42: "resnet14", 16.12: "resnet20", 19.83: "resnet26", 23.54: "resnet32"}


def cells_by(cells):
    return {(c.method, None if c.budget_mb is None else round(c.budget_mb, 2)): c for c in cells}


def test_paper_curve_exemplars_and_backbones():
    cells = cells_by(plan(ALL, "paper", B0INC10))
    for budget, (single, der, memo) in PAPER_TABLE.items():
        for method in ("replay", "icarl", "wa"):
            assert cells[method, budget].exemplars == single
            assert cells[method, budget].backbone == "resnet32"
        assert cells["der", budget].exemplars == der
        assert cells["memo", budget].exemplars == memo
        assert cells["der", budget].backbone == cells["memo", budget].backbone == PAPER_BACKBONES[budget]
        assert cells["finetune", budget].exemplars == 0


def test_paper_curve_parameter_counts():
    cells = cells_by(plan(["der", "memo", "replay"], "paper", B0INC10))
    assert cells["der", 23.54].model_params == 10 * 463_504
    assert cells["memo", 23.54].model_params == 112_016 + 10 * 351_488
    assert cells["der", 7.63].model_params == 10 * 38_976
    assert cells["memo", 7.63].model_params == 1_920 + 10 * 37_056
    assert cells["replay", 12.42].model_params == 463_504


def test_every_cell_fits_its_budget():
    for cell in plan(ALL, "paper", B0INC10):
        if cell.budget_bytes is not None:
            assert cell.total_bytes <= cell.budget_bytes
            # the leftover is less than one more exemplar (exemplar methods spend the budget)
            if cell.exemplars:
                assert cell.budget_bytes - cell.total_bytes < 3072


def test_fair_budget_is_the_end_point():
    point = fair_point(B0INC10)
    assert point.budget_bytes == 24_684_160  # ten resnet32 (463,504 parameters, 4 bytes) + 2,000 images of 3,072 bytes
    cells = cells_by(plan(["replay", "memo", "der"], "fair", B0INC10))
    # docs/protocol.md section 3b: 2000 + floor((T-1) P 4 / 3072) and 2000 + floor((T P - (Pg + T Ps)) 4 / 3072),
    # worked out by hand; the paper's table has the same (PAPER_TABLE at 23.54)
    assert cells["replay", 23.54].exemplars == 7431
    assert cells["memo", 23.54].exemplars == 3312


def test_budgets_in_megabytes_reproduce_the_curve_rule():
    cells = cells_by(plan(["der", "memo", "replay"], [7.63, 12.42, 16.13], B0INC10))
    assert cells["der", 12.42].backbone == "resnet14"
    assert cells["der", 16.13].backbone == "resnet20"
    assert cells["der", 7.63].backbone == "conv2"
    # (12.42 MiB = 13,023,314 bytes - resnet32's 1,854,016) // 3,072 per image
    assert cells["replay", 12.42].exemplars == 3635


def test_joint_holds_all_training_data():
    (cell,) = plan(["joint"], "paper", B0INC10)
    assert cell.budget_bytes is None and cell.exemplars == 50_000
    assert cell.exemplar_bytes == 153_600_000  # 50,000 images of 3,072 bytes


def test_too_small_budget_names_method_budget_and_minimum():
    with pytest.raises(BudgetError) as error:
        plan(["replay", "der"], [1.5], B0INC10)
    message = str(error.value)
    assert "'replay'" in message and "'der'" in message and "1.50 MB" in message
    # replay needs resnet32 (1,854,016 B) + 100 exemplars (307,200 B) = 2.06 MB
    assert "at least 2.06 MB" in message


def test_strict_policy_counts_more_and_says_so():
    strict = PlanContext(**{**B0INC10.__dict__, "policy": "strict"})
    paper_cells = cells_by(plan(["replay", "icarl"], "fair", B0INC10))
    strict_cells = cells_by(plan(["replay", "icarl"], "fair", strict))
    assert all(c.policy == "strict" for c in strict_cells.values())
    replay = next(c for (m, _), c in strict_cells.items() if m == "replay")
    icarl = next(c for (m, _), c in strict_cells.items() if m == "icarl")
    # strict = backbone + BN buffers + classifier (64 x 100 + 100); iCaRL also holds its teacher
    assert replay.model_bytes > 463_504 * 4 + (64 * 100 + 100) * 4
    assert icarl.model_bytes > 2 * 463_504 * 4
    assert icarl.exemplars < replay.exemplars
    assert next(iter(paper_cells.values())).policy == "paper"


def test_accounting_counts_live_modules():
    net = build_network("der", "resnet14")
    for _ in range(3):
        net.add_task(10)
    assert model_bytes(net, "paper") == 2_062_272  # three resnet14 backbones of 171,856 parameters, 4 bytes each
    # strict adds the classifier ((3 x 64 x 30 + 30) x 4 = 23,160 bytes) and the BN buffers (3 x 3,816 bytes)
    assert model_bytes(net, "strict") == 2_062_272 + 23_160 + 11_448
    teacher = copy.deepcopy(net)
    assert model_bytes(net, "strict", teacher) == 2 * model_bytes(net, "strict")
    count = count_memory(net, "paper", 100, (32, 32, 3))
    assert count.exemplar_bytes == exemplar_bytes(100, (32, 32, 3)) == 307_200
    assert count.total_bytes == 2_062_272 + 307_200


def test_memo_network_shares_the_generalized_block():
    net = build_network("memo", "resnet32")
    for _ in range(10):
        net.add_task(10)
    assert model_bytes(net, "paper") == 14_507_584  # (112,016 generalized + 10 x 351,488 specialized) x 4
    assert net(torch.randn(2, 3, 32, 32))["logits"].shape == (2, 100)


def test_imagenet_budgets_use_imagenet_image_size():
    ctx = PlanContext(task_sizes=(50,) + (5,) * 10, image_shape=(224, 224, 3),
                      family=("conv4", "resnet10", "resnet18"), benchmark="resnet18", train_images=130_000)
    cells = cells_by(plan(["replay", "der"], "fair", ctx))
    replay = next(c for (m, _), c in cells.items() if m == "replay")
    assert replay.exemplars == 4969  # 2000 + (10 x 11,176,512 x 4) // 150,528 (a 224 x 224 x 3 image)


def test_default_bench_puts_model_memory_against_exemplars():
    """The `make bench` curve must show the trade-off the suite measures: at its last point DER's and
    MEMO's models hold at least half of the budget, and the curve spans at least 3x in memory."""
    from benchmark.config.experiment import load_experiment
    from benchmark.config.grid import expand

    runs = expand(load_experiment("benchmark/config/experiments/cifar100_b0inc20_cpu.yaml"))
    cells = [cell for run in runs for cell in run.cells if cell.budget_bytes is not None]
    budgets = sorted({cell.budget_bytes for cell in cells})
    assert budgets[-1] / budgets[0] >= 3
    last = {cell.method: cell for cell in cells if cell.budget_bytes == budgets[-1]}
    for method in ("der", "memo"):
        assert last[method].model_bytes / budgets[-1] >= 0.5, method
        assert last[method].total_bytes <= budgets[-1]


def test_which_methods_grow_is_read_from_the_registry():
    """Method.grows() is the one statement of it that the planner, the sweep's order and the speed
    projection read: DER and MEMO, each with one backbone (block) per task in its plan."""
    assert sorted(name for name in METHODS.names() if METHODS.get(name).grows()) == ["der", "memo"]
    cells = plan(["der", "memo", "icarl"], "fair", B0INC10)
    assert {cell.method: cell.num_backbones for cell in cells} == {"der": 10, "memo": 10, "icarl": 1}
