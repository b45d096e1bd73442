"""An ImageNet-style run end to end through the folder data path: the training images kept whole in
the JPEG store (shorter side 256) and cropped by RandomResizedCrop, the test images as centre crops,
exemplars stored as 224x224x3 images and billed 150,528 bytes each; a run stopped after a task and
started again ends exactly where the uninterrupted run ends.

The data set is a generated folder data set of four classes registered like ImageNet-1000 (its
recipe adds the brightness jitter), so the whole ImageNet recipe runs; its images have ImageNet-like
sizes and aspect ratios, each class its own colour so that a few steps learn something.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.data.image_cache import CACHE_ENV
from benchmark.data.specs import DATASETS
from benchmark.records.store import record_path, run_dir
from benchmark.train import augmentation as augmentation_module
from benchmark.train import checkpoints
from benchmark.train.runner import execute_run
from test_checkpoint import Killed, stop_after, timeless

NAME = "tinynet"
SIZES = [(320, 240), (240, 320), (300, 300), (400, 260)]  # (width, height), as ImageNet photos vary
SGD = {"lr": 0.05, "momentum": 0.9, "milestones": [], "weight_decay": 0.0, "batch_size": 8}


def make_folder_dataset(root, classes: int = 4, train: int = 6, val: int = 2) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for label in range(classes):
            folder = root / NAME / split / f"n{label:02d}"
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = SIZES[(label + i) % len(SIZES)]
                pixels = np.clip(rng.normal(40 + 55 * label, 30, (height, width, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinynet")
    make_folder_dataset(root / "data")
    spec = dataclasses.replace(DATASETS["imagenet1000"], name=NAME, title="", num_classes=4, train_per_class=6,
                               test_per_class=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS, NAME, spec)
        patch.delenv(CACHE_ENV, raising=False)  # the default place: DATA/tinynet/.cache
        yield root


@pytest.fixture(scope="module")
def planned(tiny_folder):
    experiment = parse_experiment({
        "name": "tinynet", "dataset": NAME, "scenario": "B2Inc1", "methods": ["icarl"], "budgets": [4.5],
        "seeds": [1], "profile": "cpu", "family": ["conv4"], "benchmark_backbone": "conv4",
        "anchor_exemplars": 8, "training": {
            "images_per_class": None, "test_images_per_class": None, "augment": True,
            "first_task": {"epochs": 2, **SGD}, "later_tasks": {"all": {"epochs": 1, **SGD}}}})
    (run,) = expand(experiment)
    return run


def run_to_end(run, experiment_dir, results_root, data_root) -> dict:
    return execute_run(run, experiment_dir, results_root, "cpu", data_root, 1, keep_checkpoints=True)


@pytest.fixture(scope="module")
def whole(tiny_folder, planned):
    """The uninterrupted run, with what its augmentation was handed, batch by batch."""
    seen = []
    train = augmentation_module.ImageNetAugmentation.train

    def spying(self, images, generator):
        seen.append([tuple(image.shape) for image in images])
        return train(self, images, generator)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(augmentation_module.ImageNetAugmentation, "train", spying)
        record = run_to_end(planned, tiny_folder / "whole", tiny_folder / "results", tiny_folder / "data")
    return record, seen


def test_training_crops_from_whole_images_and_replays_stored_crops(whole, tiny_folder):
    record, seen = whole
    assert record["status"] == "complete", record["error"]
    assert [t["classes_seen"] for t in record["tasks"]] == [2, 3, 4]
    shapes = {shape for batch in seen for shape in batch}
    # The new images whole, shorter side 256: 320x240 -> 341x256, 240x320 -> 256x341, 400x260 -> 393x256.
    assert {(3, 256, 341), (3, 341, 256), (3, 256, 256), (3, 256, 393)} <= shapes
    # Exemplars replayed as what is stored of them, the 224x224 centre crop; the first task has none.
    assert (3, 224, 224) in shapes
    cache = tiny_folder / "data" / NAME / ".cache"
    assert sorted(path.suffix for path in cache.glob("val-*.npy")) == [".npy"]  # test images: centre crops


def test_the_exemplar_audit_equals_the_bill(whole, planned):
    record, _ = whole
    (cell,) = planned.cells
    # 4.5 MB (4,718,592 bytes) less conv4's 3,624,960: room for 7 exemplars of 150,528 bytes.
    assert (cell.exemplars, cell.exemplar_bytes) == (7, 1_053_696)
    # floor(7 / 3) = 2 per class after task 1, floor(7 / 4) = 1 after task 2, each billed 224x224x3.
    assert [task["exemplars_stored"] for task in record["tasks"]] == [6, 6, 4]
    for task in record["tasks"]:
        memory = task["memory"]["paper"]
        assert memory["exemplar_bytes"] == task["exemplars_stored"] * 150_528
        assert memory["model_bytes"] == 3_624_960
        assert memory["total_bytes"] <= cell.budget_bytes == 4_718_592


def test_the_run_learns_something(whole):
    record, _ = whole
    # Four colour-coded classes; chance on all four is 25 %. The few steps of conv4 separate them in
    # feature space (NME; 100 % when measured) before the classifier catches up.
    assert record["tasks"][-1]["nme_accuracy"] >= 75


def test_a_stopped_run_resumes_to_the_uninterrupted_result(whole, planned, tiny_folder, monkeypatch):
    record, _ = whole
    experiment_dir = tiny_folder / "stopped"
    with monkeypatch.context() as patch:
        stop_after(2, patch)
        with pytest.raises(Killed):
            run_to_end(planned, experiment_dir, tiny_folder / "results", tiny_folder / "data")
    assert not record_path(experiment_dir, planned.run_id).exists()
    assert checkpoints.checkpoint_path(run_dir(experiment_dir, planned.run_id)).exists()
    resumed = run_to_end(planned, experiment_dir, tiny_folder / "results", tiny_folder / "data")
    assert resumed["checkpoint"]["resumed_from_task"] == 2
    assert timeless(resumed) == timeless(record)
    final = [torch.load(checkpoints.checkpoint_path(run_dir(folder, planned.run_id)), weights_only=True)
             for folder in (experiment_dir, tiny_folder / "whole")]
    assert torch.equal(final[0]["memory"]["images"], final[1]["memory"]["images"])
    assert final[0]["memory"]["images"].shape[1:] == (3, 224, 224)
