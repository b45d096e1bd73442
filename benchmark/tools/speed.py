"""How fast the engine trains, against what the backbone alone could do on this device.

    python -m benchmark.tools.speed [--device cpu|cuda] [--methods ...] [--backbones ...] [--batches N]
                              [--precision fp32|bf16] [--threads N] [--json OUT]

A benchmark script, not a test. Per method and backbone it reports images/s of
- full: the engine's own step (`Engine.train_epoch`: batch fetch from the on-device uint8 tensor,
  on-device augmentation, the method's loss, the engine's SGD) with the network brought to task 1 of
  CIFAR-100 B0Inc10 by `Engine.advance_to` (iCaRL/WA with a teacher, DER/MEMO with two blocks and the auxiliary head,
  replay methods on 5,000 new images plus 2,000 exemplars), with channels_last batches (the engine's
  default) and without;
- bare: the same backbone and a linear classifier on a random, already normalized float batch, plain
  cross-entropy and SGD, with channels_last (batch and weights) and without;
then full/bare (channels_last both), the training FLOPs per image and the share of the matmul peak
that each step reaches, against the peak of the arithmetic the step uses (benchmark.tools.timing.
step_peak_name: bf16 under --precision bf16; TF32 for fp32 on CUDA while cuDNN may use it; fp32 on
CPUs). Last, one real first-task epoch of iCaRL/resnet32 on 5,000 images plus its test pass, to
compare with PyCIL's ~42 s per epoch on the 2-core CPU machine; on CUDA in fp32 and in bf16, each
the second of two epochs (the first pays cuDNN's autotuning).

FLOPs are counted by FlopCounterMode: "fwd" is one forward of the trained network, "step" the
forward and backward of the method's loss as they run (about 3 x fwd for one network; a frozen DER
block runs forward only, an iCaRL/WA teacher adds a forward). How steps are timed: benchmark.tools.timing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from benchmark.train.engine import RunData
from benchmark.config.grid import Run
from benchmark.config.precision import PRECISIONS, precision_problem
from benchmark.train.runner import engine_settings, new_engine, prepare_data
from benchmark.tools.timing import (METHOD_NAMES, BareCell, FullCell, bare_flops, full_flops, matmul_peaks, measure, method_run,
                     speed_experiment, step_peak_name, task_engine)
from methods import Phase

MAIN = Phase()  # the main phase: the task's own schedule

BACKBONES = ("resnet32", "resnet14", "resnet8_half", "conv2")
PYCIL_EPOCH_SECONDS = 42.0  # PyCIL's iCaRL/resnet32 first-task epoch on the 2-core CPU machine
LAYOUTS = {"cl": True, "nchw": False}


# -- one backbone: every method, both layouts, in turns ----------------------------------------------
def measure_backbone(backbone: str, runs: list[Run], data: RunData, device: torch.device,
                     args: argparse.Namespace, peak: float) -> list[dict]:
    classes = data.task(1).total_classes
    bare = {layout: BareCell(backbone, classes, args.batch_size, device, cl, args.precision)
            for layout, cl in LAYOUTS.items()}
    full = {(name, layout): FullCell(*task_engine(method_run(runs, name, backbone), _with_layout(data, cl),
                                                  precision=args.precision), args.batch_size)
            for name in args.methods for layout, cl in LAYOUTS.items()}
    measure([*bare.values(), *full.values()], device, args.warmup, args.batches)
    bare_step = bare_flops(bare["cl"], device)
    rows = []
    for name in args.methods:
        fwd, step = full_flops(full[name, "cl"], device)
        row = {"method": name, "backbone": backbone, "fwd_flops": fwd, "step_flops": step}
        for layout in LAYOUTS:
            row[f"full_{layout}"] = full[name, layout].images_per_second(device)
            row[f"bare_{layout}"] = bare[layout].images_per_second(device)
            row[f"full_{layout}_steps"] = full[name, layout].times
        row["full_over_bare"] = row["full_cl"] / row["bare_cl"]
        row["peak_full"] = step * row["full_cl"] / (peak * 1e9)
        row["peak_bare"] = bare_step * row["bare_cl"] / (peak * 1e9)
        rows.append(row)
    return rows


def _with_layout(data: RunData, channels_last: bool) -> RunData:
    return replace(data, augmentation=replace(data.augmentation, channels_last=channels_last))


# -- the first-task epoch ---------------------------------------------------------------------------
def first_task_epoch(runs: list[Run], data: RunData, precision: str = "fp32") -> dict:
    """A real first-task epoch of iCaRL/resnet32 through `Engine.train`, from where a run starts it
    (`Engine.advance_to(0)`: seeded, grown), then the CNN test pass. On CUDA two epochs are trained
    and the second is reported: the first pays cuDNN's autotuning."""
    run = method_run(runs, "icarl", "resnet32")
    settings = replace(engine_settings(run, run.exemplars), precision=precision)
    engine = new_engine(run, data, settings, log=lambda _: None)
    task = engine.advance_to(0)
    source = engine.training_set(task)
    epochs = 2 if engine.device.type == "cuda" else 1
    epoch = engine.train(task, MAIN, source, replace(engine.settings.schedules[0], epochs=epochs))[-1]
    started = time.perf_counter()
    cnn, _ = engine.evaluate(task)  # no exemplars yet, so the CNN pass alone (as PyCIL's first eval)
    test_seconds = time.perf_counter() - started
    return {"precision": precision, "epochs_trained": epochs, "train_images": len(source),
            "test_images": len(data.rows(data.test, 0, task.total_classes)),
            "epoch_seconds": epoch["seconds"], "test_seconds": test_seconds, "cnn_accuracy": cnn.overall,
            "total_seconds": epoch["seconds"] + test_seconds, "pycil_seconds": PYCIL_EPOCH_SECONDS}


def epoch_line(epoch: dict) -> str:
    which = "one epoch" if epoch["epochs_trained"] == 1 else f"epoch {epoch['epochs_trained']} (warm)"
    return (f"iCaRL resnet32 first task, {epoch['precision']}: {which} on {epoch['train_images']} images "
            f"{epoch['epoch_seconds']:.1f} s + test pass on {epoch['test_images']} images {epoch['test_seconds']:.1f} s"
            f" = {epoch['total_seconds']:.1f} s (PyCIL on the 2-core CPU: ~{PYCIL_EPOCH_SECONDS:.0f} s); "
            f"{epoch['train_images'] / epoch['epoch_seconds']:.0f} images/s in the epoch")


# -- output -----------------------------------------------------------------------------------------
COLUMNS: list[tuple[str, str, str]] = [  # (header, key, format)
    ("method", "method", "{:<8}"), ("backbone", "backbone", "{:<12}"),
    ("full CL", "full_cl", "{:>7.0f}"), ("full NCHW", "full_nchw", "{:>9.0f}"),
    ("bare CL", "bare_cl", "{:>7.0f}"), ("bare NCHW", "bare_nchw", "{:>9.0f}"),
    ("full/bare", "full_over_bare", "{:>9.2f}"), ("fwd GF", "fwd_gflops", "{:>6.3f}"),
    ("step GF", "step_gflops", "{:>7.3f}"), ("peak full", "peak_full", "{:>9.1%}"),
    ("peak bare", "peak_bare", "{:>9.1%}"),
]


def table(rows: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        widths = [len(fmt.format(0 if fmt[-2] in "f%" else "")) for _, _, fmt in COLUMNS]
        title = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, ((h, _, _), w) in enumerate(zip(COLUMNS, widths)))
        lines += [title, "-" * len(title)]
    for row in rows:
        values = {**row, "fwd_gflops": row["fwd_flops"] / 1e9, "step_gflops": row["step_flops"] / 1e9}
        lines.append("  ".join(fmt.format(values[key]) for _, key, fmt in COLUMNS))
    return "\n".join(lines)


def machine(device: torch.device, peaks: dict[str, float], peak_name: str) -> dict:
    info = {"device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "load_average": _load(), "peak_used": peak_name,
            **{f"matmul_peak_{name}_gflops": round(value, 1) for name, value in peaks.items()}}
    info["card" if device.type == "cuda" else "cpu"] = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name())
    return info


def _load() -> float | None:
    """The 1-minute load average: on a shared machine, how many others wanted the cores too."""
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmark.tools.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index] (default cpu)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES, metavar="METHOD",
                        help=f"default: {' '.join(METHOD_NAMES)}")
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES), help="none: the epoch alone")
    parser.add_argument("--batches", type=int, default=None,
                        help="timed steps per cell (default 3 on CPUs, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps per cell first (default 1 on CPUs, 10 on CUDA: cuDNN autotunes)")
    parser.add_argument("--batch-size", type=int, default=128, help="default: the paper profile's 128")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; default 1 on CPUs (on the shared 2-core machine two threads ran "
                             "3x slower under load), torch's choice on CUDA; 0: torch's choice")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="of the timed steps: fp32, or bf16 autocast (CUDA only, as the engine gates it)")
    parser.add_argument("--data-root", default=os.environ.get("CIL_DATA_ROOT", "data"),
                        help="folder holding CIFAR-100 (default: $CIL_DATA_ROOT or data)")
    parser.add_argument("--skip-epoch", action="store_true", help="skip the iCaRL first-task epoch")
    parser.add_argument("--json", help="also write every number to this file")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    args.batches = args.batches if args.batches is not None else (50 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if args.batches < 1 or args.warmup < 0:
        parser.error("--batches must be >= 1 and --warmup >= 0")
    problem = precision_problem(args.precision, torch.device(args.device).type)
    if problem:
        parser.error(f"--precision {args.precision}: {problem.split('; ')[0]}; use --device cuda or --precision fp32")
    return args


def epoch_precisions(device: torch.device) -> list[str]:
    """The first-task epoch is measured in every precision the device trains in."""
    return [p for p in PRECISIONS if precision_problem(p, device.type) is None]


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    runs = speed_experiment()
    data = prepare_data(method_run(runs, "icarl", "resnet32"), Path(args.data_root), device)
    peak_name = step_peak_name(args.precision, device)
    peaks = matmul_peaks(device)
    info = machine(device, peaks, peak_name)
    log(" | ".join(f"{key} {value}" for key, value in info.items()))
    log(f"images/s, batch {args.batch_size}, {args.precision}, {args.warmup} warm-up + {args.batches} timed steps "
        f"per cell ({'median' if device.type == 'cpu' else 'mean'}); full = Engine.train_epoch at task 1 of "
        f"B0Inc10; GF = GFLOP per image; peak = step FLOPs x images/s / {peak_name} matmul peak")
    rows: list[dict] = []
    for backbone in args.backbones:
        new = measure_backbone(backbone, runs, data, device, args, peaks[peak_name])
        log(table(new, header=not rows))
        rows += new
    epochs = [] if args.skip_epoch else [first_task_epoch(runs, data, p) for p in epoch_precisions(device)]
    for epoch in epochs:
        log(epoch_line(epoch))
    info["load_average_end"] = _load()
    log(f"load average at the end {info['load_average_end']}; {time.perf_counter() - started:.0f} s in all")
    result = {"machine": info, "settings": {k: v for k, v in vars(args).items() if k != "json"},
              "rows": rows, "first_task_epochs": epochs}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
