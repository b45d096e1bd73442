"""How much the first task's accuracy moves with the network seed alone.

Trains only the first task of the reduced CIFAR-100 B0Inc20 setting (50 train / 40 test images per
class, the `cpu` profile's first-task schedule) once per network seed, with the class order fixed,
and prints each seed's CNN top-1 and the mean and standard deviation. Every method shares this
first-task model, so its spread over seeds bounds how finely any later comparison can be read.

    python -m benchmark.tools.first_task_spread --seeds 1 2 3 4 5 --threads 1

It goes through the same pieces a real run uses (prepare_data, new_method, Engine), so a change to
initialization, augmentation or the engine shows up here as it would in a run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmark.train.engine import Engine, EngineSettings
from benchmark.config.grid import Run
from benchmark.config.profile import Schedule
from benchmark.train.runner import new_method, prepare_data

# The reduced protocol's first task (benchmark/config/profile.py `cpu`), with the benchmark backbone.
FIRST_TASK = Schedule(epochs=20, milestones=(14, 18), weight_decay=5e-4, lr=0.1, batch_size=64)
SCENARIO, TRAIN_PER_CLASS, TEST_PER_CLASS = "B0Inc20", 50, 40


def spread_run(network_seed: int, backbone: str, class_seed: int) -> Run:
    """A one-task stand-in for a grid run: only the fields data preparation and seeding read."""
    training = {"first_task": asdict(FIRST_TASK), "images_per_class": TRAIN_PER_CLASS,
                "test_images_per_class": TEST_PER_CLASS, "augment": True}
    return Run("first_task_spread", "cifar100", SCENARIO, class_seed, network_seed, "replay", backbone,
               0, training, ())


def first_task_accuracy(run: Run, data_root: Path, device: str, log=lambda line: None) -> float:
    """CNN top-1 (%) on the first task's test images after training the first task only."""
    data = prepare_data(run, data_root, torch.device(device))
    method = new_method(run, "replay")  # plain cross-entropy, what every method does on task 0
    settings = EngineSettings(schedules=[FIRST_TASK], exemplars=0, augment=True, network_seed=run.network_seed)
    return Engine(method, data, settings, log).learn_task(data.task(0)).cnn.overall


def summary(accuracies: dict[int, float]) -> dict[str, float]:
    values = list(accuracies.values())
    spread = statistics.stdev(values) if len(values) > 1 else 0.0  # sample std (n - 1), as tables report it
    return {"mean": statistics.fmean(values), "std": spread, "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="network seeds")
    parser.add_argument("--class-seed", type=int, default=1993, help="class-order seed (PyCIL's 1993)")
    parser.add_argument("--backbone", default="resnet32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("CIL_DATA_ROOT", "../shared/data/cifar100")))
    parser.add_argument("--json", type=Path, help="also write the per-seed numbers here")
    parser.add_argument("--verbose", action="store_true", help="print the engine's per-epoch log lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    accuracies = {}
    for seed in args.seeds:
        started = time.perf_counter()
        accuracies[seed] = first_task_accuracy(spread_run(seed, args.backbone, args.class_seed), args.data_root,
                                               args.device, log=print if args.verbose else lambda line: None)
        print(f"network_seed {seed}: CNN top-1 {accuracies[seed]:.2f}% ({time.perf_counter() - started:.0f}s)",
              flush=True)
    stats = summary(accuracies)
    print(f"mean {stats['mean']:.2f}%  std {stats['std']:.2f}  (min {stats['min']:.2f}, max {stats['max']:.2f}, "
          f"{len(accuracies)} seeds, {args.backbone}, {SCENARIO} first task)")
    result = {"accuracies": accuracies, **stats, "backbone": args.backbone, "class_seed": args.class_seed}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
