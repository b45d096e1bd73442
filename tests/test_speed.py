"""The speed benchmark (benchmark.tools.speed, benchmark.tools.timing): its options per device, the peak a
step is held against, and one tiny run on the CPU."""
from __future__ import annotations

import pytest
import torch

from benchmark.tools import speed, timing


def test_defaults_follow_the_device():
    cpu = speed.parse_args(["--device", "cpu"])
    assert (cpu.batches, cpu.warmup, cpu.precision) == (3, 1, "fp32")
    cuda = speed.parse_args(["--device", "cuda"])  # parsing needs no GPU
    assert (cuda.batches, cuda.warmup) == (50, 10)
    assert speed.parse_args(["--device", "cuda", "--batches", "60"]).batches == 60


def test_bf16_on_the_cpu_is_refused_with_the_fix(capsys):
    with pytest.raises(SystemExit):
        speed.parse_args(["--device", "cpu", "--precision", "bf16"])
    assert "use --device cuda or --precision fp32" in capsys.readouterr().err


def test_the_peak_is_the_one_of_the_steps_arithmetic(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert timing.step_peak_name("fp32", cpu) == "fp32"
    assert timing.step_peak_name("bf16", cuda) == "bf16"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert timing.step_peak_name("fp32", cuda) == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert timing.step_peak_name("fp32", cuda) == "fp32"
    assert speed.epoch_precisions(cpu) == ["fp32"] and speed.epoch_precisions(cuda) == ["fp32", "bf16"]


def test_task_engine_stands_at_the_task_as_the_engine_grows_it():
    data = timing.synthetic_data(torch.device("cpu"), per_class=3)
    engine, method = timing.task_engine(timing.method_run(timing.speed_experiment(), "memo", "conv2_half"), data, 2)
    assert len(method.network.specialized) == 3 and method.network.aux_fc.out_features == 11
    assert len(engine.memory) == 20 * 3  # every image of tasks 0 and 1's classes (3 per class, under the budget)
    conv = next(m for m in method.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # Engine.grow's layout


def test_a_tiny_cpu_run_reports_every_column(cifar_root):
    result = speed.main(["--methods", "replay", "--backbones", "conv2_half", "--batches", "2", "--warmup", "0",
                         "--batch-size", "8", "--skip-epoch", "--data-root", str(cifar_root)], log=lambda _: None)
    (row,) = result["rows"]
    assert (row["method"], row["backbone"]) == ("replay", "conv2_half")
    assert len(row["full_cl_steps"]) == 2
    for key in ("full_cl", "full_nchw", "bare_cl", "bare_nchw", "peak_full", "fwd_flops", "step_flops"):
        assert row[key] > 0, key
    assert row["step_flops"] > 2 * row["fwd_flops"]  # forward + backward
    assert result["machine"]["peak_used"] == "fp32" and result["machine"]["matmul_peak_fp32_gflops"] > 0
    assert result["first_task_epochs"] == []


def test_no_module_of_the_suite_imports_a_private_name_of_another():
    """The tools build on the engine's public pieces (runner.engine_settings, new_engine,
    Engine.optimizer, advance_to, step_autocast), not on copies of private ones. (Other libraries'
    internals are another matter: loky's resource tracker has no public hook.)"""
    import ast
    from pathlib import Path

    offenders = []
    for path in sorted((Path(__file__).resolve().parents[1] / "benchmark").rglob("*.py")):
        tree = ast.parse(path.read_text())
        ours = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").split(".")[0] in ("benchmark", "methods", "budgets")]
        imported = {alias.asname or alias.name for node in ours for alias in node.names}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if node in ours else []
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported:
                names = [node.attr]
            offenders += [f"{path.name}:{node.lineno} {name}" for name in names
                          if name.startswith("_") and not name.startswith("__")]
    assert offenders == []
