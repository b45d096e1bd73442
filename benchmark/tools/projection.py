"""Projected hours of an experiment grid (e.g. the paper's CIFAR-100 B0Inc10 curve) from measured
step times: what each run trains and evaluates is counted from its config; what one image costs
is measured on this device.

Per run and task t (counted from the run's scenario, budget and schedules):
- training: images (new classes, plus the exemplars held or, for joint, every seen image) x epochs
  x seconds per training image of its method and backbone at task t;
- evaluation: images passed forward without gradients (the test images of the seen classes; the
  exemplars for NME means, or every seen image for joint; each new class's training images for
  herding) x seconds per forward image, plus herding picks x seconds per pick.
The first task is trained once per shared first-task model (runner.first_task_key), not per run.

What is measured and what extrapolated: seconds per image are measured for every method x backbone
pair of the grid at task 1 (an engine grown by timing.task_engine), and for every backbone at task 0
(the first-task model's plain cross-entropy step); with `last_task` also at the last task for the
growing networks (DER, MEMO). A single network (teacher included) costs the same at every later
task. A growing network's cost is piecewise linear in the task index through its measured tasks,
and beyond the last one the line through the last two: each task adds one frozen block, whose
forward is the same every time.

A SpeedTable holds those measurements (the device check's --json output carries one), so a grid
can be projected later, or on another machine, without measuring again, as long as the table
covers its method x backbone pairs at its image size:

    python -m benchmark.tools.projection EXPERIMENT.yaml --speeds TABLE.json [--gpus N]

prints the grid's GPU-hours (serial, and packed) and its wall hours on N devices.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from methods import METHODS

from benchmark.data import DATASETS, Scenario
from benchmark.config.grid import Run
from benchmark.train.runner import first_task_key



@dataclass(frozen=True)
class TaskWork:
    """What one run does at one task."""

    task: int
    train_images: int      # per epoch
    epochs: int
    forward_images: int    # no-grad forward: test pass, NME means, herding features
    picks: int             # herding picks


@dataclass
class PairSpeed:
    """Measured seconds per image of one method x backbone, by task index."""

    train: dict[int, float] = field(default_factory=dict)
    forward: dict[int, float] = field(default_factory=dict)


def per_image(points: dict[int, float], task: int) -> float:
    """Piecewise linear in the task index through `points` (task -> seconds); outside them the line
    through the two nearest points; one point: constant. Never below the cheapest measured point: a
    network does not get cheaper as it grows, so a falling line is timing noise, not a trend."""
    if not points:
        raise ValueError("no measured task to project from")
    tasks = sorted(points)
    if len(tasks) == 1:
        return points[tasks[0]]
    right = next((i for i, t in enumerate(tasks) if t >= task), len(tasks) - 1)
    right = min(max(right, 1), len(tasks) - 1)
    a, b = tasks[right - 1], tasks[right]
    return max(min(points.values()), points[a] + (points[b] - points[a]) * (task - a) / (b - a))


def run_work(run: Run) -> list[TaskWork]:
    """Per task of `run`: its training images and epochs, forward images and herding picks."""
    spec = DATASETS[run.dataset]
    per_class = spec.per_class("train", run.training["images_per_class"])
    test_per_class = spec.per_class("test", run.training["test_images_per_class"])
    method = METHODS.get(run.method)
    keeps = method.uses_exemplars and run.exemplars > 0
    herding = keeps and run.training["exemplar_selection"] == "herding"
    work, seen, stored = [], 0, 0
    for task, new in enumerate(Scenario.parse(run.scenario).task_sizes(spec.num_classes)):
        held_before = seen * per_class if method.trains_on_all_data else stored
        seen += new
        quota = min(run.exemplars // seen, per_class) if keeps else 0
        stored = quota * seen
        held_after = seen * per_class if method.trains_on_all_data else stored
        epochs = run.training["first_task" if task == 0 else "later_tasks"]["epochs"]
        work.append(TaskWork(task, new * per_class + held_before, epochs,
                             seen * test_per_class + held_after + (new * per_class if herding else 0),
                             quota * new if herding else 0))
    return work


@dataclass(frozen=True)
class RunHours:
    run: Run
    train_seconds: float   # tasks 1 .. T-1 (the first task is the shared model's)
    eval_seconds: float    # every task's forward passes and herding


def run_hours(run: Run, speed: PairSpeed, pick_seconds: float) -> RunHours:
    train = evaluation = 0.0
    for work in run_work(run):
        if work.task > 0:
            train += work.train_images * work.epochs * per_image(speed.train, work.task)
        evaluation += work.forward_images * per_image(speed.forward, work.task) + work.picks * pick_seconds
    return RunHours(run, train, evaluation)


def first_task_seconds(run: Run, speed: PairSpeed) -> float:
    """Training the shared first-task model of `run`, and its own test pass."""
    work = run_work(replace(run, method="replay", exemplars=0))[0]
    test = work.forward_images  # no exemplars, no herding: the test pass alone
    return work.train_images * work.epochs * speed.train[0] + test * speed.forward[0]


def project(runs: list[Run], speeds: dict[tuple[str, str], PairSpeed], first: dict[str, PairSpeed],
            pick_seconds: float, speedup: float) -> dict:
    """The grid's serial seconds (every run, plus each shared first-task model once) and its wall
    seconds on one device packed for `speedup` (total images/s at the chosen packing / one process)."""
    rows = [run_hours(run, speeds[run.method, run.backbone], pick_seconds) for run in runs]
    models = {first_task_key(run): run for run in runs}
    first_rows = {key: (run.backbone, first_task_seconds(run, first[run.backbone])) for key, run in models.items()}
    serial = sum(r.train_seconds + r.eval_seconds for r in rows) + sum(s for _, s in first_rows.values())
    return {"runs": rows, "first_task_models": first_rows, "serial_seconds": serial, "speedup": speedup,
            "wall_seconds": serial / speedup}


def table(projection: dict) -> str:
    lines = [f"{'method':<9} {'backbone':<10} {'exemplars':>9} {'train h':>8} {'eval h':>7} {'total h':>8}"]
    for row in sorted(projection["runs"], key=lambda r: -(r.train_seconds + r.eval_seconds)):
        total = row.train_seconds + row.eval_seconds
        lines.append(f"{row.run.method:<9} {row.run.backbone:<10} {row.run.exemplars:>9} "
                     f"{row.train_seconds / 3600:>8.2f} {row.eval_seconds / 3600:>7.2f} {total / 3600:>8.2f}")
    for key, (backbone, seconds) in projection["first_task_models"].items():
        lines.append(f"{'1st task':<9} {backbone:<10} {'-':>9} {seconds / 3600:>8.2f} {'':>7} {seconds / 3600:>8.2f}"
                     f"  (shared model {key})")
    lines.append(f"serial {projection['serial_seconds'] / 3600:.1f} h; packed (x{projection['speedup']:.2f} "
                 f"throughput) {projection['wall_seconds'] / 3600:.1f} h on one device")
    return "\n".join(lines)


def wall_hours_on(projection: dict, gpus: int) -> float:
    """Hours until the grid is done on `gpus` devices, each packed as measured: its GPU-hours shared
    out, but never less than its longest chain (a shared first-task model, then the longest run
    that starts from it, at one process's speed), since no run can be split between devices."""
    if gpus < 1:
        raise ValueError(f"gpus={gpus}: give at least 1 device")
    first = {key: seconds for key, (_, seconds) in projection["first_task_models"].items()}
    chain = max((first.get(first_task_key(row.run), 0.0) + row.train_seconds + row.eval_seconds
                 for row in projection["runs"]), default=0.0)
    return max(projection["wall_seconds"] / gpus, chain) / 3600


@dataclass(frozen=True)
class SpeedTable:
    """Measured seconds per image (`measure_speeds`), kept to project any grid of the same method x
    backbone pairs at the same image size: per pair and per backbone's first-task step, by task
    index; seconds per herding pick; the packing speedup of the device (1: one run at a time)."""

    pairs: dict[tuple[str, str], PairSpeed]
    first: dict[str, PairSpeed]
    pick_seconds: float
    image_shape: tuple[int, int, int]
    speedup: float = 1.0
    device: str = ""  # what measured it, for the reader ("NVIDIA H100, bf16")

    def as_json(self) -> dict:
        def speed(value: PairSpeed) -> dict:
            return {"train": {str(t): s for t, s in value.train.items()},
                    "forward": {str(t): s for t, s in value.forward.items()}}
        return {"device": self.device, "image_shape": list(self.image_shape), "speedup": self.speedup,
                "pick_seconds": self.pick_seconds, "first": {b: speed(v) for b, v in self.first.items()},
                "pairs": {f"{m}/{b}": speed(v) for (m, b), v in self.pairs.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "SpeedTable":
        def speed(value: dict) -> PairSpeed:
            return PairSpeed({int(t): float(s) for t, s in value["train"].items()},
                             {int(t): float(s) for t, s in value["forward"].items()})
        return cls({tuple(key.split("/", 1)): speed(v) for key, v in data["pairs"].items()},
                   {b: speed(v) for b, v in data["first"].items()}, float(data["pick_seconds"]),
                   tuple(data["image_shape"]), float(data.get("speedup", 1.0)), str(data.get("device", "")))

    def problems(self, runs: list[Run]) -> list[str]:
        """Why the table cannot project `runs` (empty when it can): another image size, or pairs and
        first-task backbones it has not measured."""
        found = []
        for dataset in sorted({run.dataset for run in runs}):
            if tuple(DATASETS[dataset].image_shape) != tuple(self.image_shape):
                found.append(f"{dataset} has {DATASETS[dataset].image_shape} images, the table was measured on "
                             f"{tuple(self.image_shape)}: measure on the grid's data set")
        missing = sorted({f"{run.method}/{run.backbone}" for run in runs} - {f"{m}/{b}" for m, b in self.pairs})
        missing += sorted({f"first task/{run.backbone}" for run in runs} - {f"first task/{b}" for b in self.first})
        if missing:
            found.append(f"no speeds for {', '.join(missing)}: measure them (the device check with --project "
                         "EXPERIMENT.yaml writes a table that covers the experiment)")
        return found


def project_with(runs: list[Run], table: SpeedTable) -> dict:
    """`project` from a saved table; ValueError naming what the table lacks."""
    problems = table.problems(runs)
    if problems:
        raise ValueError("; ".join(problems))
    return project(runs, table.pairs, table.first, table.pick_seconds, table.speedup)


def read_table(path: Path) -> SpeedTable:
    """A table file: a bare SpeedTable's JSON, or the device check's --json report (its section 5's table)."""
    data = json.loads(Path(path).read_text())
    if "sections" in data:
        tables = [s["data"]["speed_table"] for s in data["sections"] if "speed_table" in s.get("data", {})]
        if not tables:
            raise ValueError(f"{path}: a device check report without a speed table (its projection section "
                             "failed or predates tables): run the check again")
        data = tables[0]
    return SpeedTable.from_json(data)


def main(argv: list[str] | None = None) -> int:
    from benchmark.config.experiment import load_experiment
    from benchmark.config.grid import expand

    parser = argparse.ArgumentParser(prog="python -m benchmark.tools.projection",
                                     description="GPU-hours of an experiment's grid from a table of measured step times")
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument("--speeds", required=True, help="a SpeedTable JSON, or the device check's --json report")
    parser.add_argument("--gpus", type=int, default=1, help="devices the grid is spread over (default 1)")
    args = parser.parse_args(argv)
    speeds = read_table(Path(args.speeds))
    runs = expand(load_experiment(args.experiment), "cuda")
    try:
        result = project_with(runs, speeds)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{Path(args.experiment).name}: {len(runs)} runs + {len(result['first_task_models'])} shared first-task "
          f"models; speeds of {speeds.device or 'an unnamed device'}")
    print(table(result))
    print(f"on {args.gpus} device(s): {wall_hours_on(result, args.gpus):.1f} h")
    return 0


# -- measuring ---------------------------------------------------------------------------------------
def measure_speeds(runs: list[Run], device: torch.device, batch_size: int, warmup: int, steps: int,
                   forward_images: int, last_task: bool) -> tuple[dict, dict, float]:
    """(pair speeds, first-task speeds by backbone, seconds per herding pick), measured on synthetic
    images of the grid's one scenario at the grid's one precision."""
    from benchmark.tools.timing import synthetic_data

    scenarios = {run.scenario for run in runs}
    precisions = {run.training["precision"] for run in runs}
    if len(scenarios) != 1 or len(precisions) != 1:
        raise ValueError(f"project one scenario and precision at a time (the grid has {sorted(scenarios)}, "
                         f"{sorted(precisions)}): split the experiment file")
    datasets = {run.dataset for run in runs}
    if len(datasets) != 1:
        raise ValueError(f"project one data set at a time (the grid has {sorted(datasets)}): split the experiment file")
    dataset = datasets.pop()
    # Images of the grid's size: a step's cost depends on them. About 2,000 in all (20 per class of
    # CIFAR-100, 2 of ImageNet-1000's 1000 classes: 300 MB), since steps sample them with replacement.
    data = synthetic_data(device, scenarios.pop(), per_class=max(2, 2000 // DATASETS[dataset].num_classes),
                          dataset=dataset)
    precision = precisions.pop()
    first = {}
    for backbone in sorted({run.backbone for run in runs}):
        # The first-task model: plain cross-entropy, as runner.train_first_task trains it with "replay".
        run = replace(runs[0], method="replay", backbone=backbone, exemplars=0,
                      training={**runs[0].training, "method_options": {}})
        first[backbone] = _speed_at(run, data, 0, precision, batch_size, warmup, steps, forward_images)
    speeds = {}
    for method, backbone in sorted({(run.method, run.backbone) for run in runs}):
        run = next(r for r in runs if (r.method, r.backbone) == (method, backbone))
        grows = METHODS.get(method).grows()  # a growing network's step cost rises with the task index
        tasks = [1, data.num_tasks - 1] if last_task and grows else [1]
        speed = PairSpeed()
        if grows:  # task 0 is a single block: the first-task model
            speed = PairSpeed(dict(first[backbone].train), dict(first[backbone].forward))
        for task in dict.fromkeys(tasks):
            measured = _speed_at(run, data, task, precision, batch_size, warmup, steps, forward_images)
            speed.train.update(measured.train)
            speed.forward.update(measured.forward)
        speeds[method, backbone] = speed
    return speeds, first, herding_pick_seconds(device)


def _speed_at(run: Run, data, task: int, precision: str, batch_size: int, warmup: int, steps: int,
              forward_images: int) -> PairSpeed:
    from benchmark.train.evaluation import extract
    from benchmark.tools.timing import FullCell, measure, synchronize, task_engine

    engine, method = task_engine(run, data, task, precision)
    cell = FullCell(engine, method, batch_size, task)
    measure([cell], engine.device, warmup, steps)
    rows = torch.arange(min(forward_images, len(data.test)), device=engine.device)
    batch = min(engine.settings.eval_batch_size, len(rows))
    extract(method.network, data.test, data.augmentation, batch, rows)  # warm-up (cuDNN autotuning)
    synchronize(engine.device)
    started = time.perf_counter()
    extract(method.network, data.test, data.augmentation, batch, rows)
    synchronize(engine.device)  # extract returns device tensors: wait for their kernels
    forward = (time.perf_counter() - started) / len(rows)
    return PairSpeed({task: 1 / cell.images_per_second(engine.device)}, {task: forward})


def herding_pick_seconds(device: torch.device, images: int = 500, dim: int = 64, picks: int = 50) -> float:
    """Seconds per herding pick on `images` features of width `dim` (one class of CIFAR-100)."""
    from methods.exemplars import herding_order

    features = torch.randn(images, dim, generator=torch.Generator().manual_seed(0)).to(device)
    herding_order(features, 2)  # warm-up
    started = time.perf_counter()
    herding_order(features, picks)  # each pick ends on the host (int of the argmin): synchronized
    return (time.perf_counter() - started) / picks


if __name__ == "__main__":
    sys.exit(main())
