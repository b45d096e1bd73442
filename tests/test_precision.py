"""Precision, device type and the engine's other run settings: what reaches the run's identity,
the engine and the record; bf16 refused on the CPU; fp32 heads under autocast; diverged and
out-of-memory failures; which errors break the CUDA context; records readable by others."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.train import runner
from benchmark.train.augmentation import Augmentation
from benchmark.train.batches import TensorSource
from benchmark.config.experiment import parse_experiment
from benchmark.train.engine import DivergedError, Engine, EngineSettings, PhaseData, RunData, uses_autocast
from benchmark.config.grid import expand, precision_problems
from benchmark.config.precision import precision_problem
from benchmark.config.profile import Schedule
from benchmark.files import write_json_atomic
from benchmark.records.store import origin, record_path
from methods import METHODS, Phase
from methods.networks import build_network
from methods.replay import Replay
from conftest import tiny_experiment

RAW = tiny_experiment("precision", methods=["replay", "finetune"], budgets=[0.75])
REPO = Path(__file__).resolve().parents[1]
BF16_FIX = "precision bf16 needs CUDA; set training: {precision: fp32} or run with --gpus"


def runs_of(training: dict | None = None, device_type: str = "cpu"):
    raw = {**RAW, "training": training} if training else RAW
    return {run.method: run for run in expand(parse_experiment(raw), device_type)}


# -- identity ------------------------------------------------------------------------------------
def test_precision_defaults_to_fp32_and_is_part_of_the_run_identity():
    fp32, bf16 = runs_of()["replay"], runs_of({"precision": "bf16"}, "cuda")["replay"]
    assert fp32.training["precision"] == "fp32" and fp32.identity()["precision"] == "fp32"
    assert bf16.training["precision"] == "bf16"
    fp32_cuda = runs_of(device_type="cuda")["replay"]
    assert len({fp32.run_id, fp32_cuda.run_id, bf16.run_id}) == 3
    keys = {runner.first_task_key(run) for run in (fp32, fp32_cuda, bf16)}
    assert len(keys) == 3  # a first-task model is shared only at the same precision on the same device type
    assert runner.first_task_identity(bf16)["precision"] == "bf16"


def test_training_revision_keeps_older_codes_records_and_models_apart(monkeypatch):
    from benchmark.config import grid

    now = runs_of()["replay"]
    assert now.training["revision"] == grid.TRAINING_REVISION
    monkeypatch.setattr(grid, "TRAINING_REVISION", grid.TRAINING_REVISION - 1)
    older = runs_of()["replay"]
    assert older.run_id != now.run_id
    assert runner.first_task_key(older) != runner.first_task_key(now)


def test_device_type_is_part_of_the_run_identity():
    cpu, cuda = runs_of()["replay"], runs_of(device_type="cuda")["replay"]
    assert cpu.device_type == "cpu" and cuda.device_type == "cuda"
    assert cpu.identity()["device_type"] == "cpu" and cuda.identity()["device_type"] == "cuda"
    assert cpu.run_id != cuda.run_id
    assert runner.first_task_identity(cuda)["device_type"] == "cuda"
    assert runner.first_task_key(cpu) != runner.first_task_key(cuda)
    # everything else is the same run
    assert {k: v for k, v in cpu.identity().items() if k != "device_type"} == \
        {k: v for k, v in cuda.identity().items() if k != "device_type"}
    with pytest.raises(ValueError, match="device_type 'gpu' is not allowed; use one of cpu, cuda"):
        expand(parse_experiment(RAW), "gpu")


def test_bf16_on_the_cpu_is_refused_with_the_fix():
    bf16 = list(runs_of({"precision": "bf16"}).values())
    assert precision_problems(bf16, "cpu") == [f"precision: {BF16_FIX}"]
    assert precision_problems(bf16, "cuda") == []
    assert precision_problems(list(runs_of().values()), "cpu") == []
    assert precision_problem("bf16", "cpu") == BF16_FIX
    assert precision_problem("fp16", "cuda") == "precision 'fp16' is not allowed; use one of fp32, bf16"
    data = tiny_data()
    with pytest.raises(ValueError, match=r"precision bf16 needs CUDA; set training: \{precision: fp32\}"):
        Engine(Replay("conv2_half"), data, EngineSettings([SCHEDULE, SCHEDULE], 4, precision="bf16"))


# -- fp32 heads under autocast ---------------------------------------------------------------------
def test_heads_stay_fp32_under_autocast():
    torch.manual_seed(0)
    network = build_network("der", "conv2_half")
    network.add_task(3)
    network.add_task(2)
    network.add_aux_head(2)
    images = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = network(images)
    assert out["features"].dtype == torch.bfloat16  # the backbones do run in bf16
    assert out["logits"].dtype == torch.float32 and out["aux_logits"].dtype == torch.float32
    expected = nn.functional.linear(out["features"].float(), network.fc.weight, network.fc.bias)
    assert torch.equal(out["logits"], expected)
    assert all(p.dtype == torch.float32 for p in network.parameters())  # the model is never cast
    with torch.no_grad():  # outside autocast the heads are plain linear layers on the features
        assert torch.equal(network(images)["logits"], network.fc(network.features(images)))


# -- the engine's settings -------------------------------------------------------------------------
SCHEDULE = Schedule(epochs=1, milestones=(), weight_decay=0.0, batch_size=8)


def tiny_data() -> RunData:
    """Four classes of 10 flat-coloured 8x8 images, two tasks."""
    torch.manual_seed(0)
    labels = torch.arange(40) // 10
    images = (labels * 60).to(torch.uint8).view(40, 1, 1, 1).expand(40, 3, 8, 8).contiguous()
    source = TensorSource(images, labels)
    return RunData(source, source, [0, 2, 4], (8, 8, 3), Augmentation((0.5,) * 3, (0.25,) * 3))


def test_eval_and_herding_batch_sizes_reach_the_engine(monkeypatch):
    run = runs_of({"eval_batch_size": 7, "herding_batch_size": 3})["replay"]
    assert run.training["eval_batch_size"] == 7 and run.training["herding_batch_size"] == 3
    settings = runner.engine_settings(run, run.exemplars)
    assert settings.eval_batch_size == 7 and settings.herding_batch_size == 3 and settings.precision == "fp32"
    assert run.run_id != runs_of()["replay"].run_id
    import benchmark.train.engine as engine_module

    seen = []
    extract = engine_module.extract

    def recording(network, source, augmentation, batch_size, indices=None):
        seen.append((batch_size, len(source) if indices is None else len(indices)))
        return extract(network, source, augmentation, batch_size, indices)

    monkeypatch.setattr(engine_module, "extract", recording)
    data = tiny_data()
    engine = Engine(Replay("conv2_half"), data, EngineSettings([SCHEDULE, SCHEDULE], 4, eval_batch_size=7,
                                                               herding_batch_size=3), log=lambda line: None)
    engine.learn_task(data.task(0))
    # herding: one extraction per new class (10 images each) at 3; then the test rows and the memory at 7
    assert seen == [(3, 10), (3, 10), (7, 20), (7, 4)]


def test_channels_last_weights_and_speed_settings():
    data = tiny_data()
    engine = Engine(METHODS.get("der")("conv2_half"), data, EngineSettings([SCHEDULE, SCHEDULE], 4),
                    log=lambda line: None)
    engine.run()
    convs = [m.weight for m in engine.method.network.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert engine.speed_settings() == {"precision": "fp32", "channels_last": True, "fused_sgd": False,
                                       "cudnn_benchmark": False, "cudnn_tf32": False}


def test_autocast_is_on_for_bf16_on_cuda_only():
    assert uses_autocast("bf16", torch.device("cuda")) and uses_autocast("bf16", torch.device("cuda", 1))
    assert not uses_autocast("fp32", torch.device("cuda")) and not uses_autocast("bf16", torch.device("cpu"))
    assert not uses_autocast("fp32", torch.device("cpu"))
    data = tiny_data()
    assert Engine(Replay("conv2_half"), data, EngineSettings([SCHEDULE, SCHEDULE], 4)).autocast is False
    # bf16 on the CPU never gets as far as an engine (test_bf16_on_the_cpu_is_refused_with_the_fix).


def record_dtypes(engine: Engine) -> tuple[list[dict], list[torch.dtype]]:
    """The dtypes of the network's outputs in training mode, and of every loss the engine asks for."""
    outputs, losses = [], []
    engine.method.network.register_forward_hook(
        lambda module, inputs, out: outputs.append({k: v.dtype for k, v in out.items() if torch.is_tensor(v)})
        if module.training else None)
    loss = engine.method.loss

    def recording(task, images, labels):
        value = loss(task, images, labels)
        losses.append(value.dtype)
        return value

    engine.method.loss = recording  # the engine calls self.method.loss: this instance's attribute wins
    return outputs, losses


@pytest.mark.parametrize("method", METHODS.names())
def test_heads_and_losses_stay_fp32_in_a_cpu_autocast_region(method):
    """The method's loss on task 1, in the CPU's own bf16 autocast: the engine never autocasts on
    the CPU (bf16 is refused there), so this is as far as a CPU can take the bf16 path."""
    data = tiny_data()
    options = METHODS.get(method).resolve_options({}, base_classes=2)
    engine = Engine(METHODS.get(method)("conv2_half", options), data, EngineSettings([SCHEDULE, SCHEDULE], 4),
                    log=lambda line: None)
    engine.learn_task(data.task(0))
    task = data.task(1)
    engine.grow(task)
    outputs, _ = record_dtypes(engine)
    source = engine.training_set(task)
    rows, images = next(iter(source.batches(torch.arange(len(source)), 8)))
    main = Phase()
    engine.method.begin_phase(task, main)  # what the engine does before a phase's steps
    engine.method.prepare_phase(task, main, PhaseData(engine, source, SCHEDULE))
    engine.method.network.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = engine.method.loss(task, engine.augment(images), source.labels[rows])
    assert loss.dtype == torch.float32 and loss.dim() == 0 and torch.isfinite(loss)
    assert outputs and all(s["features"] == torch.bfloat16 and s["logits"] == torch.float32 for s in outputs)
    if engine.method.growth == "der":  # DER's auxiliary head of task 1 computes in fp32 too
        assert all(s["aux_logits"] == torch.float32 for s in outputs)
    loss.backward()
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p in engine.method.network.parameters())  # the model is never cast


def cuda_data() -> RunData:
    data = tiny_data()
    move = lambda source: TensorSource(source.images(torch.arange(len(source))).cuda(), source.labels.cuda())
    return RunData(move(data.train), move(data.test), data.task_bounds, data.image_shape, data.augmentation)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the engine autocasts to bf16 on CUDA only")
@pytest.mark.parametrize("method", ["icarl", "der"])
def test_the_bf16_path_keeps_heads_and_losses_fp32(method):
    data = cuda_data()
    assert Engine(Replay("conv2_half"), data, EngineSettings([SCHEDULE, SCHEDULE], 4)).autocast is False  # fp32
    engine = Engine(METHODS.get(method)("conv2_half"), data,
                    EngineSettings([SCHEDULE, SCHEDULE], 4, precision="bf16"), log=lambda line: None)
    assert engine.autocast is True
    outputs, losses = record_dtypes(engine)
    results = engine.run()
    assert len(results) == 2 and all(len(r.epochs) == 1 for r in results)
    assert outputs and all(s["features"] == torch.bfloat16 and s["logits"] == torch.float32 for s in outputs)
    assert losses and set(losses) == {torch.float32}
    if method == "der":  # the auxiliary head of task 1 was fp32 too
        assert any(s.get("aux_logits") == torch.float32 for s in outputs)
    assert all(p.dtype == torch.float32 for p in engine.method.network.parameters())  # never cast


def test_a_diverged_run_fails_naming_the_task_epoch_and_fix():
    class Exploding(Replay):
        def loss(self, task, images, labels):
            loss = super().loss(task, images, labels)
            return loss * float("nan") if task.index == 1 else loss

    data = tiny_data()
    engine = Engine(Exploding("conv2_half"), data, EngineSettings([SCHEDULE, SCHEDULE], 4), log=lambda line: None)
    with pytest.raises(DivergedError) as error:
        engine.run()
    assert str(error.value) == "loss is nan at task 1 epoch 1; lower the lr (training.later_tasks.replay.lr, now 0.1)"


# -- failures and records --------------------------------------------------------------------------
def test_breaks_cuda_context():
    assert runner.breaks_cuda_context(RuntimeError("CUDA error: device-side assert triggered"))
    assert runner.breaks_cuda_context(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert runner.breaks_cuda_context(torch.AcceleratorError("CUDA error: unspecified launch failure"))
    try:
        try:
            raise RuntimeError("CUDA error: misaligned address")
        except RuntimeError as inner:
            raise ValueError("while evaluating") from inner
    except ValueError as outer:
        assert runner.breaks_cuda_context(outer)
    assert not runner.breaks_cuda_context(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not runner.breaks_cuda_context(RuntimeError("boom"))
    assert not runner.breaks_cuda_context(ValueError("unknown option train_bse"))


def test_out_of_memory_errors_carry_the_memory_figures():
    gib = 2**30
    assert runner.memory_text(gib // 2, 3 * gib // 4, gib, 80 * gib) == (
        "CUDA memory: 0.50 GiB allocated, 0.75 GiB reserved, 1.00 GiB max allocated, 80.00 GiB total")
    entry = runner.error_entry(torch.cuda.OutOfMemoryError("CUDA out of memory."), "cpu")
    assert entry["type"] == "OutOfMemoryError" and entry["cuda_context_broken"] is False
    assert entry["message"].startswith("CUDA out of memory. [CUDA memory figures unavailable")  # no CUDA here
    assert runner.error_entry(RuntimeError("boom"), "cpu")["message"] == "boom"


def test_the_real_failed_record_of_a_dead_worker(tmp_path):
    run = runs_of()["finetune"]
    returned = runner.write_failed_record(run, tmp_path, "WorkerCrashedError", "worker exited with -9", "Traceback ...")
    on_disk = json.loads(record_path(tmp_path, run.run_id).read_text())
    assert on_disk == json.loads(json.dumps(returned))
    assert on_disk["status"] == "failed" and on_disk["run_id"] == run.run_id and on_disk["tasks"] == []
    assert on_disk["error"] == {"type": "WorkerCrashedError", "message": "worker exited with -9",
                                "traceback": "Traceback ...", "cuda_context_broken": False}
    assert on_disk["origin"]["device"] == "unknown" and on_disk["origin"]["device_name"] is None
    assert on_disk["config"]["device_type"] == "cpu" and on_disk["config"]["precision"] == "fp32"


def test_origin_records_the_speed_settings_and_versions():
    cpu = origin("cpu", {"precision": "fp32", "channels_last": True, "fused_sgd": False, "cudnn_benchmark": False})
    assert cpu["device"] == "cpu" and cpu["precision"] == "fp32" and cpu["channels_last"] is True
    assert cpu["fused_sgd"] is False and cpu["cudnn_benchmark"] is False
    assert cpu["cuda_version"] is None and cpu["cudnn_version"] is None  # not a CUDA run
    assert origin("unknown")["device"] == "unknown"


def test_records_are_readable_by_other_users(tmp_path):
    """mkstemp makes files 0600; a record ends 0666 less the umask: 0640 under a umask of 027, set in a
    fresh process before the store reads it."""
    path = tmp_path / "runs" / "x" / "record.json"
    code = ("import os, sys; from pathlib import Path; os.umask(0o027)\n"
            f"from {write_json_atomic.__module__} import write_json_atomic\n"
            "write_json_atomic(Path(sys.argv[1]), {'status': 'complete'})")
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=True, timeout=120)
    assert path.stat().st_mode & 0o777 == 0o640
    assert json.loads(path.read_text()) == {"status": "complete"}
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temporary file left
