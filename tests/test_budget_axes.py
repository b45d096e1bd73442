"""The budget axes beyond backbone and exemplar count, from the experiment file to the report:
`exemplar_format` and `model_storage` are parsed, expand the grid, plan with their own bytes, enter a
run's identity only off their defaults, and a tiny real grid with both axes trains, audits, resumes
and reports (the mechanics themselves: tests/test_exemplar_formats.py, tests/test_model_storage.py)."""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest

import run_all
from benchmark.config.experiment import ConfigError, parse_experiment
from benchmark.config.grid import expand, measured_stored_size
from conftest import tiny_experiment, tiny_training, write_experiment


def _axes_experiment(methods=("finetune", "replay", "icarl", "der", "joint"), **overrides) -> dict:
    return tiny_experiment(methods=list(methods), budgets=[0.6], training=tiny_training(), **overrides)


# -- the experiment file ---------------------------------------------------------------------------
def test_the_axes_default_to_what_the_paper_stores():
    experiment = parse_experiment(_axes_experiment())
    assert (experiment.exemplar_format, experiment.model_storage) == (("raw",), ("fp32",))


def test_one_value_or_a_list_and_the_names_are_canonical():
    experiment = parse_experiment(_axes_experiment(exemplar_format="JPEG:50",
                                                   model_storage=["fp32", "int8", "bf16"]))
    assert experiment.exemplar_format == ("jpeg:50",)
    assert experiment.model_storage == ("fp32", "int8", "bf16")
    swapped = parse_experiment(_axes_experiment(exemplar_format=["jpeg:75+downsample:2"]))
    assert swapped.exemplar_format == ("downsample:2+jpeg:75",)


@pytest.mark.parametrize("key, value, expected", [
    ("exemplar_format", "png:9", "exemplar_format[0]: exemplar format 'png:9': 'png:9' is not a part of the grammar"),
    ("exemplar_format", "jpeg:0", "exemplar_format[0]: exemplar format 'jpeg:0': JPEG quality 0 is outside 1..100"),
    ("exemplar_format", ["raw", "RAW"], "exemplar_format: lists raw more than once"),
    ("exemplar_format", "downsample:3", "exemplar_format: format downsample:3: factor 3 does not divide the "
                                        "image's 32x32 pixels"),
    ("model_storage", "fp8", "model_storage[0]: unknown model_storage 'fp8'; use one of fp32, fp16, bf16, int8"),
])
def test_a_bad_axis_value_is_a_located_error(key, value, expected):
    with pytest.raises(ConfigError) as error:
        parse_experiment(_axes_experiment(**{key: value}))
    assert expected in str(error.value)


# -- the grid ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def axes_grid(cifar_root):
    """The tiny experiment over raw / downsample:2 / jpeg:75 exemplars and fp32 / int8 blocks."""
    experiment = parse_experiment(_axes_experiment(exemplar_format=["raw", "downsample:2", "jpeg:75"],
                                                   model_storage=["fp32", "int8"]))
    return expand(experiment, stored_size=measured_stored_size(experiment, cifar_root))


def _cells(runs, method):
    return {(cell.exemplar_format, cell.model_storage): (run, cell) for run in runs for cell in run.cells
            if cell.method == method}


def test_an_axis_that_changes_nothing_for_a_method_is_not_applicable_and_runs_once(axes_grid):
    # finetune keeps no exemplars and freezes nothing; replay and icarl (paper policy: the teacher is
    # not billed) freeze nothing billed: 1 + 3 + 3 + 3 x 2 + 1 runs.
    assert len(axes_grid) == 14
    assert list(_cells(axes_grid, "finetune")) == [("-", "-")]
    assert list(_cells(axes_grid, "joint")) == [("-", "-")]
    assert list(_cells(axes_grid, "icarl")) == [("raw", "-"), ("downsample:2", "-"), ("jpeg:75", "-")]
    assert len(_cells(axes_grid, "der")) == 6
    assert all(len(run.cells) == 1 for run in axes_grid)  # a cell is never listed twice


def test_each_format_and_storage_buys_its_own_exemplars(axes_grid):
    # 0.6 MB = 629,146 bytes; conv2_half is 41,088 bytes in fp32 (10,272 parameters).
    icarl, der = _cells(axes_grid, "icarl"), _cells(axes_grid, "der")
    assert icarl["raw", "-"][1].exemplars == 191            # (629,146 - 41,088) // 3,072
    assert icarl["downsample:2", "-"][1].exemplars == 765   # // 768 (16 x 16 x 3)
    assert der["raw", "fp32"][1].model_bytes == 82_176        # two fp32 backbones
    assert der["raw", "fp32"][1].exemplars == 178             # (629,146 - 82,176) // 3,072
    assert der["raw", "int8"][1].model_bytes == 52_192        # the old backbone int8 (11,104 bytes with scales)
    assert der["raw", "int8"][1].exemplars == 187             # (629,146 - 52,192) // 3,072
    jpeg = icarl["jpeg:75", "-"][1]
    assert jpeg.exemplar_bytes == 588_058                     # the byte budget the run fills with real sizes
    assert 600 < jpeg.exemplars < 700                         # the estimate from a measured ~920 bytes each


def test_the_identity_gains_an_axis_only_off_its_default(axes_grid):
    icarl, der = _cells(axes_grid, "icarl"), _cells(axes_grid, "der")
    plain = icarl["raw", "-"][0].training
    assert not {"exemplar_format", "exemplar_byte_budget", "model_storage", "storage_probe"} & set(plain)
    assert icarl["jpeg:75", "-"][0].training["exemplar_format"] == "jpeg:75"
    assert icarl["jpeg:75", "-"][0].training["exemplar_byte_budget"] == 588_058
    assert der["raw", "int8"][0].training["model_storage"] == "int8"
    assert der["raw", "fp32"][0].training["storage_probe"] == ["int8"]  # its conversion cost, measured
    assert "model_storage" not in der["raw", "fp32"][0].training


def test_a_run_without_the_axes_keeps_the_id_it_had(cifar_root):
    """Runs planned before the axes existed (and the default bench's) keep their ids and records."""
    experiment = parse_experiment(tiny_experiment(methods=["replay"], budgets=[0.6], training=tiny_training()))
    with_axes = parse_experiment(tiny_experiment(methods=["replay"], budgets=[0.6], training=tiny_training(),
                                                 exemplar_format="raw", model_storage=["fp32", "int8"]))
    assert [run.run_id for run in expand(experiment)] == [run.run_id for run in expand(with_axes)]


def test_a_jpeg_plan_without_the_data_names_the_fix():
    experiment = parse_experiment(_axes_experiment(methods=["replay"], exemplar_format="jpeg:50"))
    with pytest.raises(ValueError, match=r"jpeg:50.*measured mean encoded size.*--data-root"):
        expand(experiment)


def test_plan_prints_the_estimate_and_the_axes(tmp_path, cifar_root):
    experiment = write_experiment(tmp_path, _axes_experiment(methods=["icarl"], exemplar_format=["raw", "jpeg:75"]))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_all.main(["plan", str(experiment), "--data-root", str(cifar_root)]) == 0
    text = out.getvalue()
    assert "exemplar_format jpeg:75: about 9" in text and "bytes per exemplar" in text
    assert "exemplar_format" in text.splitlines()[2]  # a column of the table
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_all.main(["plan", str(experiment), "--data-root", str(cifar_root), "--csv"]) == 0
    table = pd.read_csv(io.StringIO(out.getvalue()))
    assert sorted(table["exemplar_format"]) == ["jpeg:75", "raw"]
    # measured once, kept in the user's cache folder (the tests' own, tests/conftest.py), not beside the data
    cached = json.loads((Path(os.environ["XDG_CACHE_HOME"]) / "cil-bench" / "encoded_sizes.json").read_text())
    assert [key for key in cached if "|jpeg:75|" in key] == ["cifar100|5_per_class|jpeg:75|sample=1000|simplejpeg=1.9.0"]
    assert not list(Path(cifar_root).rglob("encoded_sizes.json"))


# -- a tiny real grid with both axes, end to end ------------------------------------------------
def _run(experiment: Path, results: Path, cifar_root: Path, *extra: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return run_all.main(["run", str(experiment), "--results", str(results), "--data-root", str(cifar_root),
                             "--gpus", "cpu", "--workers", "1", *extra])


def _records(folder: Path) -> dict[tuple, dict]:
    records = [json.loads(path.read_text()) for path in sorted((folder / "runs").glob("*/record.json"))]
    return {(r["cell"]["method"], r["cell"]["exemplar_format"], r["cell"]["model_storage"]): r for r in records}


@pytest.fixture(scope="module")
def trained_grid(tmp_path_factory, cifar_root):
    folder = tmp_path_factory.mktemp("axes")
    raw = tiny_experiment(name="axes", methods=["icarl", "der"], budgets=[0.6], training=tiny_training(),
                          exemplar_format=["raw", "jpeg:75"], model_storage=["fp32", "int8"])
    experiment = write_experiment(folder, raw)
    assert _run(experiment, folder / "results", cifar_root, "--keep-checkpoints") == 0
    return experiment, folder / "results" / "axes"


def test_the_grid_trains_every_configuration_within_its_budget(trained_grid):
    _, folder = trained_grid
    records = _records(folder)
    assert sorted(records) == [("der", "jpeg:75", "fp32"), ("der", "jpeg:75", "int8"), ("der", "raw", "fp32"),
                               ("der", "raw", "int8"), ("icarl", "jpeg:75", "-"), ("icarl", "raw", "-")]
    for record in records.values():
        assert record["status"] == "complete"
        for task in record["tasks"]:
            assert task["memory"]["paper"]["total_bytes"] <= record["cell"]["budget_bytes"] == 629_146
    # int8: the audit bills the int8 old backbone with its scales, exactly as planned
    der_int8 = records["der", "raw", "int8"]
    assert der_int8["tasks"][-1]["memory"]["paper"]["model_bytes"] == der_int8["cell"]["model_bytes"] == 52_192
    # jpeg: the real encoded bytes hold every training image of the tiny set (5 per class), which raw
    # images at the same budget could not
    jpeg = records["icarl", "jpeg:75", "-"]["tasks"][-1]
    assert jpeg["exemplars_stored"] == 500 and 400_000 < jpeg["memory"]["paper"]["exemplar_bytes"] <= 588_058
    assert records["icarl", "raw", "-"]["tasks"][-1]["exemplars_stored"] == 100  # 191 // 100 classes, 1 each


def test_fp32_runs_measure_what_the_precision_alone_costs(trained_grid):
    _, folder = trained_grid
    records = _records(folder)
    for task in records["der", "raw", "fp32"]["tasks"]:
        assert set(task["storage_probe"]) == {"int8"}
        assert set(task["storage_probe"]["int8"]) == {"cnn_accuracy", "nme_accuracy"}
    assert "storage_probe" not in records["der", "raw", "int8"]["tasks"][-1]


def test_a_lost_record_resumes_from_its_checkpoint_to_the_same_result(trained_grid, cifar_root):
    experiment, folder = trained_grid
    before = _records(folder)
    for key in (("der", "jpeg:75", "int8"), ("icarl", "jpeg:75", "-")):
        (folder / "runs" / before[key]["run_id"] / "record.json").unlink()
    assert _run(experiment, folder.parent, cifar_root, "--keep-checkpoints") == 0
    after = _records(folder)
    for key in (("der", "jpeg:75", "int8"), ("icarl", "jpeg:75", "-")):
        assert after[key]["checkpoint"]["resumed_from_task"] == 2  # nothing trained again
        assert after[key]["tasks"] == before[key]["tasks"]


def test_the_report_shows_the_axes(trained_grid):
    _, folder = trained_grid
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert run_all.main(["report", str(folder)]) == 0
    runs = pd.read_csv(folder / "runs.csv")
    assert sorted(zip(runs["method"], runs["exemplar_format"], runs["model_storage"])) == [
        ("der", "jpeg:75", "fp32"), ("der", "jpeg:75", "int8"), ("der", "raw", "fp32"), ("der", "raw", "int8"),
        ("icarl", "jpeg:75", "-"), ("icarl", "raw", "-")]
    assert (folder / "storage_cost.csv").exists()
    assert "jpeg:75" in (folder / "report.html").read_text()
