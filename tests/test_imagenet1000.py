"""ImageNet-1000 in the suite (docs/protocol.md section 8): its data set spec and folder layout, the
class order of seed 1993, the paper_imagenet profile, the exact fair budget and exemplar counts of
the paper's memory-aligned B0Inc100 experiment (planned without the data), and the projection of
its grid's GPU-hours from a table of step times. Nothing here trains or reads an image."""
import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

import run_all
from benchmark.config.experiment import load_experiment, parse_experiment, read_yaml
from benchmark.config.grid import expand
from benchmark.config.profile import get_profile
from benchmark.data import class_order, dataset_spec, find_dataset_dir, load_dataset
from benchmark.tools import projection
from benchmark.tools.projection import PairSpeed, SpeedTable

from conftest import EXPERIMENT_DIR

FAIR = EXPERIMENT_DIR / "imagenet1000_b0inc100_fair.yaml"

# resnet18 (ImageNet) and its MEMO split, parameters (docs/protocol.md section 2); one 224x224x3 uint8 image.
RESNET18, GENERALIZED, SPECIALIZED, IMAGE = 11_176_512, 2_782_784, 8_393_728, 150_528


# -- the data set ------------------------------------------------------------------------------------
def test_spec():
    spec = dataset_spec("ImageNet1000")
    assert (spec.name, spec.title, spec.loader, spec.num_classes, spec.image_shape) == (
        "imagenet1000", "ImageNet-1000", "folders", 1000, (224, 224, 3))
    assert spec.image_bytes == IMAGE
    # 1300 is the nominal (largest) class of ILSVRC-2012's training split, whose classes hold 732 to
    # 1300 images; 50 is every class's validation count, the test split here.
    assert (spec.per_class("train"), spec.per_class("test")) == (1300, 50)
    assert (spec.mean, spec.std) == (dataset_spec("imagenet100").mean, dataset_spec("imagenet100").std)


def test_class_order_of_seed_1993():
    # PyCIL (utils/data_manager.py _setup_data, shuffle true as in every exps/*.json) draws the order as
    # np.random.seed(1993); np.random.permutation(1000): these literals are that call's first ten
    # entries (numpy 2.4.6; the legacy generator's stream is fixed across numpy versions).
    order = class_order(1000, 1993)
    assert order[:10].tolist() == [54, 7, 894, 512, 126, 337, 988, 11, 284, 493]
    assert sorted(order.tolist()) == list(range(1000))


def test_folder_layout_is_imagefolders(tmp_path):
    """root/imagenet1000/{train,val}/<wnid>/: labels are the sorted folder names, as torchvision's
    ImageFolder (what PyCIL's iImageNet1000 reads) gives them; 1000 classes, so no subset warning."""
    folder = tmp_path / "imagenet1000"
    wnids = [f"n{index:08d}" for index in range(1000)][::-1]  # created in reverse: the scan sorts
    for split in ("train", "val"):
        for wnid in wnids:
            (folder / split / wnid).mkdir(parents=True)
            (folder / split / wnid / f"{wnid}_0.JPEG").touch()  # scanned, never decoded here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_dataset("imagenet1000", tmp_path)
    assert find_dataset_dir("imagenet1000", tmp_path) == folder
    assert data.spec.num_classes == 1000 and data.class_names[:2] == ["n00000000", "n00000001"]
    assert data.train.labels[:3].tolist() == [0, 1, 2] and len(data.test.labels) == 1000


# -- the profile -------------------------------------------------------------------------------------
def test_paper_imagenet_profile_is_the_reference_schedule():
    imagenet, cifar = get_profile("paper_imagenet"), get_profile("paper")
    # Neither reference has an ImageNet branch: the schedules are paper.yaml's, method by method.
    assert (imagenet.first_task, imagenet.later_tasks, imagenet.method_options, imagenet.phases) == (
        cifar.first_task, cifar.later_tasks, cifar.method_options, cifar.phases)
    first, der = imagenet.first_task, imagenet.schedule("der", 1)
    assert (first.epochs, first.milestones, first.weight_decay, first.lr, first.batch_size) == (
        200, (60, 120, 170), 5e-4, 0.1, 128)
    assert (der.epochs, der.milestones, der.weight_decay, der.batch_size) == (170, (80, 120, 150), 2e-4, 128)
    assert {m: (s.epochs, s.milestones) for m, s in imagenet.later_tasks.items() if m in ("replay", "icarl", "wa")} == {
        "replay": (70, (30, 50)), "icarl": (170, (80, 120)), "wa": (170, (60, 100, 140))}


# -- the fair budget ---------------------------------------------------------------------------------
# DER's final model, 10 x resnet18 in float32, plus the paper's base memory of 20 exemplars x 1000 classes.
BUDGET = 3_457_620_480
# method: (backbone parameters, exemplars). One resnet18 leaves 9 resnet18s of bytes for images:
# 20,000 + floor(9 x 11,176,512 x 4 / 150,528) = 20,000 + 2,672. MEMO keeps the generalized block and
# ten specialized blocks: 20,000 + floor((10 x 11,176,512 - 86,720,064) x 4 / 150,528) = 20,000 + 665.
EXPECTED = {"replay": (11_176_512, 22_672), "icarl": (11_176_512, 22_672), "wa": (11_176_512, 22_672),
            "der": (111_765_120, 20_000), "memo": (86_720_064, 20_665)}


def test_the_literals_are_the_protocols_arithmetic():
    assert BUDGET == 10 * RESNET18 * 4 + 20_000 * IMAGE
    assert EXPECTED["replay"][1] == 20_000 + 9 * RESNET18 * 4 // IMAGE
    assert EXPECTED["memo"] == (GENERALIZED + 10 * SPECIALIZED,
                                20_000 + (10 * RESNET18 - GENERALIZED - 10 * SPECIALIZED) * 4 // IMAGE)


def test_fair_plan_budget_and_exemplars():
    experiment = load_experiment(FAIR)
    assert (experiment.dataset, experiment.scenarios, experiment.anchor_exemplars, experiment.benchmark_backbone,
            experiment.profile.name) == ("imagenet1000", ("B0Inc100",), 20_000, "resnet18", "paper_imagenet")
    cells = [cell for run in expand(experiment) for cell in run.cells]
    assert {cell.method: (cell.model_params, cell.exemplars) for cell in cells} == EXPECTED
    assert {cell.budget_bytes for cell in cells} == {BUDGET}
    assert {cell.method: cell.num_backbones for cell in cells} == {
        "replay": 1, "icarl": 1, "wa": 1, "der": 10, "memo": 10}
    assert all(cell.total_bytes <= BUDGET for cell in cells)
    assert next(c for c in cells if c.method == "der").total_bytes == BUDGET  # DER is the budget


def test_plan_command_prints_them_without_the_data(tmp_path, capsys):
    missing = tmp_path / "no-data-here"
    assert run_all.main(["plan", str(FAIR), "--data-root", str(missing)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("imagenet1000_b0inc100_fair: imagenet1000, B0Inc100, 5 cells in 5 runs")
    rows = {line.split()[4]: line.split() for line in lines[2:]}
    assert {method: (row[3], row[7], row[8]) for method, row in rows.items()} == {
        method: ("3297.44", str(params), str(count)) for method, (params, count) in EXPECTED.items()}
    assert run_all.main(["plan", str(FAIR), "--data-root", str(missing), "--csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    header = csv[0].split(",")
    assert {row.split(",")[header.index("budget_bytes")] for row in csv[1:]} == {str(BUDGET)}
    assert not missing.exists()


def test_the_curve_on_imagenet1000_has_the_fair_budget_at_resnet18():
    raw = {**read_yaml(FAIR), "budgets": "paper", "methods": ["replay", "der"]}
    cells = [cell for run in expand(parse_experiment(raw)) for cell in run.cells]
    budgets = {cell.point_label: cell.budget_bytes for cell in cells if cell.method == "der"}
    assert list(budgets) == ["resnet18+20000", "10xresnet10", "10xresnet18", "10xresnet26_imagenet",
                             "10xresnet34", "10xresnet50"]
    assert budgets["resnet18+20000"] == RESNET18 * 4 + 20_000 * IMAGE and budgets["10xresnet18"] == BUDGET


# -- the projection of its grid ----------------------------------------------------------------------
def tiny_table(image_shape=(224, 224, 3)) -> SpeedTable:
    """A made-up table: 1 ms per training image of a single network; DER 1 ms more per task, MEMO
    (specialized blocks only) 0.5 ms more."""
    single = PairSpeed({1: 1e-3}, {1: 1e-4})
    pairs = {(m, "resnet18"): single for m in ("replay", "icarl", "wa")}
    pairs["der", "resnet18"] = PairSpeed({0: 1e-3, 1: 2e-3}, {0: 1e-4, 1: 2e-4})
    pairs["memo", "resnet18"] = PairSpeed({0: 1e-3, 1: 1.5e-3}, {0: 1e-4, 1: 1.5e-4})
    return SpeedTable(pairs, {"resnet18": PairSpeed({0: 1e-3}, {0: 1e-4})}, 0.0, image_shape, 1.0, "made up")


def test_projection_counts_the_imagenet1000_work():
    runs = expand(load_experiment(FAIR), "cuda")
    result = projection.project_with(runs, tiny_table())
    replay = next(row for row in result["runs"] if row.run.method == "replay")
    # Replay's 22,672 exemplars held before task t (t = 1..9) are floor(22,672 / 100t) x 100t:
    # 22,600 22,600 22,500 22,400 22,500 22,200 22,400 22,400 22,500 = 202,100; each task adds
    # 100 x 1300 new images; 70 epochs at 1 ms an image.
    assert replay.train_seconds == pytest.approx((9 * 130_000 + 202_100) * 70 * 1e-3)
    # The one shared first-task model: 130,000 images x 200 epochs x 1 ms, and 5,000 test images x 0.1 ms.
    assert list(result["first_task_models"].values()) == [("resnet18", pytest.approx(26_000 + 0.5))]
    der = next(row for row in result["runs"] if row.run.method == "der")
    assert der.train_seconds > 5 * replay.train_seconds  # 170 epochs and 2..10 ms an image
    # On 5 devices the grid waits for its longest chain: the first-task model, then DER.
    longest = (26_000.5 + der.train_seconds + der.eval_seconds) / 3600
    assert longest > result["wall_seconds"] / 5 / 3600
    assert projection.wall_hours_on(result, 5) == pytest.approx(longest)
    assert projection.wall_hours_on(result, 1) == pytest.approx(result["serial_seconds"] / 3600)


def test_a_table_that_does_not_fit_the_grid_is_refused():
    runs = expand(load_experiment(FAIR), "cuda")
    cifar = tiny_table((32, 32, 3))
    with pytest.raises(ValueError, match=r"imagenet1000 has \(224, 224, 3\) images, the table was measured on "
                                         r"\(32, 32, 3\)"):
        projection.project_with(runs, cifar)
    partial = replace(tiny_table(), pairs={k: v for k, v in tiny_table().pairs.items() if k[0] != "memo"})
    with pytest.raises(ValueError, match="no speeds for memo/resnet18: measure them"):
        projection.project_with(runs, partial)


def test_projection_command_reads_a_table_or_a_check_report(tmp_path, capsys):
    table = tiny_table()
    assert SpeedTable.from_json(json.loads(json.dumps(table.as_json()))) == table
    report = tmp_path / "check.json"  # the device check's --json: section 5 carries the table
    report.write_text(json.dumps({"sections": [{"data": {}}, {"data": {"speed_table": table.as_json()}}]}))
    assert projection.main([str(FAIR), "--speeds", str(report), "--gpus", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("imagenet1000_b0inc100_fair.yaml: 5 runs + 1 shared first-task models; speeds of made up")
    expected = projection.wall_hours_on(projection.project_with(expand(load_experiment(FAIR), "cuda"), table), 5)
    assert out.splitlines()[-1] == f"on 5 device(s): {expected:.1f} h"
    bare = tmp_path / "table.json"
    bare.write_text(json.dumps(replace(table, image_shape=(32, 32, 3)).as_json()))
    assert projection.main([str(FAIR), "--speeds", str(bare)]) == 2
    assert "the table was measured on (32, 32, 3)" in capsys.readouterr().err


def test_the_device_check_can_project_this_grid():
    from benchmark.tools import check

    args = check.parse_args(["--device", "cpu", "--project", str(FAIR)])
    assert args.project == FAIR
    assert check.parse_args(["--device", "cpu"]).project == check.PAPER_GRID
    with pytest.raises(SystemExit):
        check.parse_args(["--device", "cpu", "--project", str(Path(FAIR).with_name("missing.yaml"))])
