"""The device check (benchmark.tools.check): its pure parts on hand-made inputs, and the whole check at
the CI smoke size on the CPU in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.tools import check_grid, check_steps, packing, projection
from benchmark.tools.check_parity import augment_with, augmentation_parameters, augmentation_problems
from benchmark.config.grid import Run
from benchmark.train.runner import first_task_key
from methods import METHODS
from benchmark.tools.timing import method_run, speed_experiment, synthetic_data, task_engine
from methods import Phase

MAIN = Phase()  # the main phase: the task's own schedule

REPO = Path(__file__).resolve().parents[1]


# -- packing -----------------------------------------------------------------------------------------
def test_recommended_packing_is_the_smallest_within_five_percent_of_the_best():
    assert packing.recommend_packing({1: 1000.0, 2: 1040.0, 4: 1050.0}) == 1   # 1000 >= 0.95 * 1050
    assert packing.recommend_packing({1: 1000.0, 2: 1900.0, 4: 1950.0}) == 2   # 1900 >= 1852.5
    assert packing.recommend_packing({1: 500.0, 2: 900.0, 4: 1000.0}) == 4     # 900 < 950
    assert packing.recommend_packing({4: 1000.0, 1: 960.0}) == 1               # order of the table is irrelevant
    with pytest.raises(ValueError, match="no packing was measured"):
        packing.recommend_packing({})


def test_packing_windows_follow_each_other_with_a_gap():
    windows = packing.windows_for([4, 1, 2], start=100.0, seconds=10.0)
    assert windows == {1: (100.0, 110.0), 2: (111.0, 121.0), 4: (122.0, 132.0)}


# -- projection ----------------------------------------------------------------------------------------
def test_per_image_seconds_are_piecewise_linear_in_the_task():
    points = {0: 1.0, 1: 1.5, 9: 5.5}
    assert projection.per_image(points, 0) == 1.0
    assert projection.per_image(points, 1) == 1.5
    assert projection.per_image(points, 5) == pytest.approx(3.5)     # between tasks 1 and 9
    assert projection.per_image(points, 12) == pytest.approx(7.0)    # beyond: the line through 1 and 9
    assert projection.per_image({1: 2.0}, 7) == 2.0                  # a single network: constant
    assert projection.per_image({0: 2.0, 1: 1.0}, 9) == 1.0          # a falling line is noise: floored
    with pytest.raises(ValueError):
        projection.per_image({}, 1)


def hand_run(method: str, exemplars: int) -> Run:
    training = {"first_task": {"epochs": 3}, "later_tasks": {"epochs": 2}, "images_per_class": 10,
                "test_images_per_class": 5, "exemplar_selection": "herding", "augment": True, "precision": "fp32", "revision": 2,
                "method_options": {}}
    return Run("hand", "cifar100", "B0Inc50", 1993, 1, method, "resnet32", exemplars, training, ())


def test_run_work_counts_images_epochs_and_picks_from_the_config():
    replay = projection.run_work(hand_run("replay", 120))
    # task 0: 50 classes x 10 new images; quota min(120 // 50, 10) = 2 -> 100 stored; forward = 250 test
    # + 100 exemplars (NME means) + 500 herding features; 2 picks x 50 classes.
    assert replay[0] == projection.TaskWork(0, 500, 3, 850, 100)
    # task 1: 500 new + 100 held; quota 120 // 100 = 1 -> 100 stored; forward 500 + 100 + 500.
    assert replay[1] == projection.TaskWork(1, 600, 2, 1100, 50)
    joint = projection.run_work(hand_run("joint", 0))
    assert joint == [projection.TaskWork(0, 500, 3, 750, 0), projection.TaskWork(1, 1000, 2, 1500, 0)]
    finetune = projection.run_work(hand_run("finetune", 0))
    assert finetune == [projection.TaskWork(0, 500, 3, 250, 0), projection.TaskWork(1, 500, 2, 500, 0)]


def test_projection_arithmetic_on_a_hand_made_table():
    runs = [hand_run("replay", 120), hand_run("joint", 0)]
    assert first_task_key(runs[0]) == first_task_key(runs[1])  # one shared first-task model
    speeds = {("replay", "resnet32"): projection.PairSpeed({1: 0.01}, {1: 0.001}),
              ("joint", "resnet32"): projection.PairSpeed({1: 0.01}, {1: 0.001})}
    first = {"resnet32": projection.PairSpeed({0: 0.02}, {0: 0.002})}
    result = projection.project(runs, speeds, first, pick_seconds=1e-4, speedup=2.0)
    replay, joint = result["runs"]
    assert replay.train_seconds == pytest.approx(600 * 2 * 0.01)                           # 12
    assert replay.eval_seconds == pytest.approx(850 * 0.001 + 100e-4 + 1100 * 0.001 + 50e-4)  # 1.965
    assert joint.train_seconds == pytest.approx(1000 * 2 * 0.01)                           # 20
    assert joint.eval_seconds == pytest.approx((750 + 1500) * 0.001)                       # 2.25
    (_, first_seconds), = result["first_task_models"].values()
    assert first_seconds == pytest.approx(500 * 3 * 0.02 + 250 * 0.002)                    # 30.5
    assert result["serial_seconds"] == pytest.approx(12 + 1.965 + 20 + 2.25 + 30.5)
    assert result["wall_seconds"] == pytest.approx(result["serial_seconds"] / 2)
    assert "serial 0.0 h" in projection.table(result)


# -- the step check's pieces -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_engine():
    data = synthetic_data(torch.device("cpu"), per_class=4)
    return task_engine(method_run(speed_experiment(), "der", "resnet8_half"), data, 1)


def test_sync_guard_window_covers_the_steps_and_ends_before_the_epoch_sync(small_engine, monkeypatch):
    """Where the guard switches the mode (which the CPU can show); whether the mode catches a sync is
    test_sync_guard_catches_a_host_sync_in_a_step, on CUDA."""
    engine, method = small_engine
    modes: list[str] = ["default"]
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: modes.append(mode))
    at_steps: list[str] = []
    optimizer = engine.optimizer(MAIN, engine.settings.schedules[1])
    optimizer.register_step_post_hook(lambda *_: at_steps.append(modes[-1]))
    source = check_steps.random_batches(engine, engine.training_set(engine.data.task(1)), 3, 4)
    loss = engine.train_epoch(engine.data.task(1), MAIN, check_steps.SyncGuardedSource(source), optimizer, 4)
    assert at_steps == ["error"] * 3          # every step under "error"
    assert modes[-1] == "default"             # released before train_epoch's own float()
    # DER at task 1 of B0Inc10, untrained: cross-entropy over 20 classes plus the auxiliary one over 11
    # (ln 20 + ln 11 = 5.4 at uniform logits; 7.2 measured), per image of the 12 stepped.
    assert 5.0 < loss / 12 < 10.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode detects host synchronizations "
                                                           "on CUDA only")
def test_sync_guard_catches_a_host_sync_in_a_step():
    data = synthetic_data(torch.device("cuda"), per_class=4)
    engine, method = task_engine(method_run(speed_experiment(), "der", "resnet8_half"), data, 1)
    task, source = data.task(1), engine.training_set(data.task(1))
    optimizer = engine.optimizer(MAIN, engine.settings.schedules[1])
    engine.train_epoch(task, MAIN, check_steps.random_batches(engine, source, 1, 4), optimizer, 4)  # cuDNN warm-up
    clean = engine.train_epoch(task, MAIN, check_steps.SyncGuardedSource(check_steps.random_batches(engine, source, 3, 4)),
                               optimizer, 4)
    assert 0 < clean / 12 < 10.0 and torch.cuda.get_sync_debug_mode() == 0  # the real step: no sync; released
    loss = method.loss

    def syncing(task, images, labels):
        value = loss(task, images, labels)
        value.item()  # a host synchronization inside the step
        return value

    method.loss = syncing
    with pytest.raises(RuntimeError, match="synchroniz"):
        engine.train_epoch(task, MAIN, check_steps.SyncGuardedSource(check_steps.random_batches(engine, source, 1, 4)),
                           optimizer, 4)
    assert torch.cuda.get_sync_debug_mode() == 0  # released after the failure too


def test_placement_and_dtype_checks_can_fail(small_engine):
    engine, method = small_engine
    source = engine.training_set(engine.data.task(1))
    assert check_steps.placement_problems(engine, method, source) == []
    probe = check_steps.DtypeProbe(method)
    try:
        engine.train_epoch(engine.data.task(1), MAIN, check_steps.random_batches(engine, source, 1, 4),
                           engine.optimizer(MAIN, engine.settings.schedules[1]), 4)
    finally:
        probe.remove()
    assert set(probe.seen) == {"first conv", "classifier", "auxiliary head"}
    assert probe.problems(autocast=False) == []
    assert probe.problems(autocast=True) == ["first conv computes in torch.float32, expected torch.bfloat16"]
    moved = engine.memory.labels
    engine.memory.labels = moved.to("meta")
    try:
        assert check_steps.placement_problems(engine, method, source) == ["exemplar labels are on meta"]
    finally:
        engine.memory.labels = moved


def test_where_names_the_suites_own_frame():
    try:
        check_grid.resume_problems(None)  # type: ignore[arg-type]  -- raises inside the suite's code
    except TypeError as error:
        assert check_steps.suite_frame(error).startswith("benchmark/tools/check_grid.py:")


# -- parity and grid helpers ---------------------------------------------------------------------------
def test_augmentation_replay_is_augmentation_train():
    data = synthetic_data(torch.device("cpu"), per_class=1)
    images = data.train.images(torch.arange(16))
    generator = torch.Generator().manual_seed(3)
    replayed = augment_with(data.augmentation, images, augmentation_parameters(data.augmentation, 16, generator))
    assert torch.equal(replayed, data.augmentation.train(images, torch.Generator().manual_seed(3)))
    assert augmentation_problems(data.augmentation, images, torch.device("cpu")) == []


def test_resume_line_must_say_nothing_is_left():
    assert check_grid.resume_problems("x: 2 runs: 2 complete (skipped), 0 failed (skipped), 0 to run\n") == []
    half = "2 runs: 1 complete (skipped), 0 failed (skipped), 1 to run"
    assert "1 of 2 complete" in check_grid.resume_problems(half)[0]
    assert "no resume line" in check_grid.resume_problems("nothing here")[0]
    started = "2 runs: 2 complete (skipped), 0 failed (skipped), 0 to run\nrunning on 2 worker process(es)"
    assert "started workers" in check_grid.resume_problems(started)[0]


def test_record_problems_name_incomplete_records(tmp_path):
    runs = tmp_path / "runs"
    good = {"run_id": "a", "status": "complete", "config": {"method": "icarl", "device_type": "cpu"},
            "tasks": [{}, {}], "summary": {"cnn_last_accuracy": 1.0}}
    bad = {**good, "run_id": "b", "tasks": [{}]}
    for record in (good, bad):
        (runs / record["run_id"]).mkdir(parents=True)
        (runs / record["run_id"] / "record.json").write_text(json.dumps(record))
    assert check_grid.record_problems(tmp_path, "cpu") == ["b (icarl): 1 tasks recorded (expected 2) or no summary"]
    assert len(check_grid.record_problems(tmp_path, "cuda")) == 3   # both trained on the wrong device type


# -- the whole check, CI size ----------------------------------------------------------------------------
def test_quick_device_check_passes_every_section_on_the_cpu(tmp_path, cifar_root):
    out = tmp_path / "check.json"
    env = {**os.environ, "CIL_DATA_ROOT": str(cifar_root)}
    done = subprocess.run([sys.executable, "-m", "benchmark.tools.check", "--device", "cpu", "--quick", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["quick"] is True and report["device"] == "cpu"
    sections = {s["number"]: s for s in report["sections"]}
    assert sorted(sections) == [1, 2, 3, 4, 5, 6]
    assert all(s["status"] == "PASS" for s in sections.values()), [s["notes"] for s in sections.values()]
    assert "bf16: CUDA only, skipped" in sections[1]["notes"]
    assert sections[1]["data"]["skipped"] == ["bf16: CUDA only"]
    assert {key.split("/")[0] for key in sections[1]["data"] if "/" in key} == set(METHODS.names())
    assert sections[3]["data"]["records"] == 2 and sections[3]["data"]["resume_line"].endswith("0 to run")
    assert set(sections[4]["data"]["totals"]) == {"1", "2"} and sections[4]["data"]["recommended"] in (1, 2)
    assert sections[5]["data"]["runs"] == 27 and sections[5]["data"]["serial_hours"] > 0
    # On a CPU the "device" is the CPU: the same decoder and resize, so the pixels are identical.
    assert sections[6]["data"]["decode_max_levels"] == 0 and sections[6]["data"]["augmentation_max_levels"] == 0
    assert sections[6]["data"]["train_images_per_second"] > 0
    for number in range(1, 7):
        assert f"PASS  {number}." in done.stdout
