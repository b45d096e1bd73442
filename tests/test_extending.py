"""README.md's worked example of extending the suite, run as written: the three code blocks under
"Extending" (a method, a backbone, a data set) are taken from the README, executed, and then a
two-task grid that uses all three is planned and trained end to end on a generated folder data set.
If the README's code stops working, this test fails."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.config.experiment import parse_experiment
from benchmark.data.image_cache import CACHE_ENV
from benchmark.data.specs import DATASETS
from benchmark.config.grid import expand
from benchmark.train.runner import execute_run
from methods import METHODS
from methods.backbones import BACKBONES

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(name: str) -> str:
    """The python block right after the `<!-- extending: NAME -->` marker."""
    match = re.search(rf"<!-- extending: {name} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md has no python block after '<!-- extending: {name} -->'"
    return match.group(1)


@pytest.fixture()
def extended(monkeypatch):
    """Runs the three README blocks; undoes their registrations afterwards."""
    module = types.ModuleType("methods.lwf")  # where the README puts the method
    monkeypatch.setitem(sys.modules, "methods.lwf", module)
    exec(compile(readme_block("method"), "README.md (method)", "exec"), module.__dict__)
    exec(compile(readme_block("backbone"), "README.md (backbone)", "exec"), {})
    exec(compile(readme_block("dataset"), "README.md (dataset)", "exec"), {})
    yield
    METHODS._entries.pop("lwf", None)
    BACKBONES._entries.pop("resnet20_quarter", None)
    DATASETS.pop("flowers4", None)


def make_folder_dataset(root: Path, classes: int, train: int, val: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for label in range(classes):
            folder = root / "flowers4" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                # One colour per class, so that two epochs can tell them apart.
                pixels = np.clip(rng.normal(40 + 55 * label, 25, (48, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_readme_method_backbone_and_dataset_train_end_to_end(extended, tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    make_folder_dataset(tmp_path / "data", classes=4, train=6, val=3)
    sgd = {"epochs": 2, "milestones": [], "batch_size": 8, "weight_decay": 0.0}
    experiment = parse_experiment({
        "name": "extended", "dataset": "flowers4", "scenario": "B0Inc2", "methods": ["finetune", "lwf"],
        "budgets": [1.0], "seeds": [1], "profile": "cpu", "family": ["resnet20_quarter"],
        "benchmark_backbone": "resnet20_quarter", "method_options": {"lwf": {"kd_weight": 2.0}},
        "training": {"images_per_class": None, "test_images_per_class": None,
                     "first_task": sgd, "later_tasks": {"all": sgd}},
    })
    runs = {run.method: run for run in expand(experiment)}
    lwf = runs["lwf"]
    assert lwf.exemplars == 0 and lwf.backbone == "resnet20_quarter"
    assert lwf.training["method_options"] == {"kd_weight": 2.0}  # the experiment's option reaches the run
    assert lwf.training["later_tasks"]["epochs"] == 2  # no profile lists lwf: it still gets a schedule

    record = execute_run(lwf, tmp_path / "results" / "extended", tmp_path / "results", "cpu",
                         tmp_path / "data", threads=1)
    assert record["status"] == "complete", record["error"]
    assert [task["classes_seen"] for task in record["tasks"]] == [2, 4]
    final = record["tasks"][-1]["memory"]
    assert final["paper"]["exemplar_bytes"] == 0
    # The strict policy counts LwF's teacher, a second resnet20_quarter, on top of the network.
    assert final["strict"]["total_bytes"] > 2 * final["paper"]["model_bytes"]
    assert 0 <= record["summary"]["cnn_last_accuracy"] <= 100
