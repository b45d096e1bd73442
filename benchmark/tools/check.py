"""The device check: `make check-device`, i.e.

    python -m benchmark.tools.check [--device cuda|cpu] [--quick] [--json OUT] [--data-root DIR]

One command that a person with a GPU runs before a grid (sized for about 8 minutes on one GPU, not
yet timed on one), and that CI runs on the CPU with --quick as a smoke test (under a minute on 2
idle cores):
1. every registered method's training step on the device, fp32 and bf16 (CUDA only): placement,
   no host synchronization inside a step, finite loss, fp32 heads under bf16 (check_steps.py);
2. CPU-vs-device parity of augmentation, herding and NME (check_parity.py);
3. a small real grid through `run_all.py run`, two runs at once, then the same command again,
   which must run nothing (check_grid.py);
4. packing: images/s of 1, 2 and 4 concurrent training processes, and the recommended
   `--runs-per-gpu` (packing.py);
5. the projected hours of the paper's CIFAR-100 B0Inc10 curve grid, or of the grid of --project
   EXPERIMENT.yaml (e.g. the ImageNet-1000 one), measured on that grid's own image size; its table of
   step times goes into the --json report, for `python -m benchmark.tools.projection` (projection.py);
6. the ImageNet data path on the device: the JPEG store decoded there (nvJPEG on CUDA) and
   RandomResizedCrop batched there, both against the CPU's pixels, and their images/s
   (check_imagenet.py).
Each section prints PASS or FAIL; the exit code is 1 when any failed, 2 for a bad request.
Sections 1-2 check correctness and run while section 3's grid trains in a subprocess; sections 4
to 6 time things, so in a full check they wait until it is done (with --quick, whose timings are
only a smoke test, everything overlaps).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmark.tools.sections import Section, run_section

PAPER_GRID = Path(__file__).resolve().parents[1] / "config" / "experiments" / "cifar100_b0inc10_paper.yaml"


@dataclass(frozen=True)
class Sizes:
    """How much each section does: the full check, or the CI smoke (--quick)."""

    backbone: str              # section 1's methods (section 3 has its own tiny grid)
    batch_size: int
    checked_steps: int         # steps under the sync check, after one warm-up step
    packing_backbone: str
    packing_counts: tuple[int, ...]
    packing_seconds: float
    packing_batch: int
    packing_chunk: int
    projection_batch: int
    projection_warmup: int
    projection_steps: int
    forward_images: int        # images of the no-grad forward timing
    last_task: bool            # time DER/MEMO at the last task too (else extrapolate from tasks 0, 1)
    imagenet_images: int       # section 6's synthetic JPEG store


FULL = Sizes("resnet32", 128, 10, "resnet32", (1, 2, 4), 15.0, 128, 10, 128, 10, 50, 2000, True, 2048)
QUICK = Sizes("resnet8_half", 16, 2, "resnet8_half", (1, 2), 2.0, 32, 1, 8, 1, 1, 16, False, 48)


# -- sections 1, 2, 4, 5 (3 is check_grid.section_grid) --------------------------------------------
def steps_section(section: Section, device: torch.device, data_root: Path, sizes: Sizes) -> None:
    from methods import METHODS

    from benchmark.tools.check_steps import step_problems
    from benchmark.config.precision import PRECISIONS, precision_problem
    from benchmark.train.runner import prepare_data
    from benchmark.tools.timing import method_run, speed_experiment

    runs = speed_experiment()
    data = prepare_data(method_run(runs, "icarl", "resnet32"), data_root, device)
    section.data["data"] = data
    precisions = [p for p in PRECISIONS if precision_problem(p, device.type) is None]
    section.note(f"{sizes.backbone}, task 1 of CIFAR-100 B0Inc10, batch {sizes.batch_size}, 1 warm-up + "
                 f"{sizes.checked_steps} checked steps" + ("" if device.type == "cuda" else "; no sync check on a CPU"))
    section.data["skipped"] = [] if "bf16" in precisions else ["bf16: CUDA only"]
    if "bf16" not in precisions:
        section.note("bf16: CUDA only, skipped")
    for name in METHODS.names():
        for precision in precisions:
            problems, loss = step_problems(method_run(runs, name, sizes.backbone), data, precision,
                                           sizes.batch_size, sizes.checked_steps)
            section.data[f"{name}/{precision}"] = {"problems": problems, "loss": loss}
            for problem in problems:
                section.fail(f"{name} {precision}: {problem}")
            if not problems:
                section.note(f"{name} {precision}: on {device}, loss {loss:.3f}")


def parity_section(section: Section, device: torch.device, data) -> None:
    from benchmark.tools.check_parity import section_parity

    images = data.train.images(torch.arange(64, device=data.train.labels.device))
    section_parity(section, data.augmentation, images, device)


def packing_section(section: Section, device: torch.device, sizes: Sizes) -> None:
    from benchmark.tools.packing import PackingSpec, measure_packing

    spec = PackingSpec(str(device), sizes.packing_backbone, sizes.packing_batch, sizes.packing_chunk,
                       warmup=10 if device.type == "cuda" else 1, seconds=sizes.packing_seconds)
    result = measure_packing(list(sizes.packing_counts), spec)
    section.data.update(result)
    section.note(f"{spec.backbone} replay steps at task 1, batch {spec.batch_size}, {spec.seconds:.0f} s windows, "
                 f"{result['threads_per_process']} thread(s) per process")
    for k, total in result["totals"].items():
        each = ", ".join(f"{rate:.0f}" for rate in result["per_process"][k])
        section.note(f"{k} process(es): {total:.0f} images/s in all ({each})")
        if not all(rate > 0 for rate in result["per_process"][k]):
            section.fail(f"{k} process(es): a process measured no throughput")
    section.note(f"recommended: --runs-per-gpu {result['recommended']} (the smallest packing within 5 % of the best)")


def projection_section(section: Section, device: torch.device, sizes: Sizes, packing: dict,
                       grid: Path = PAPER_GRID) -> None:
    from benchmark.tools import projection
    from benchmark.config.experiment import load_experiment
    from benchmark.config.grid import expand
    from benchmark.data import DATASETS

    runs = expand(load_experiment(grid), device.type)
    speeds, first, pick = projection.measure_speeds(runs, device, sizes.projection_batch, sizes.projection_warmup,
                                                    sizes.projection_steps, sizes.forward_images, sizes.last_task)
    totals = packing.get("totals") or {}
    if totals and 1 in totals:
        packed, speedup = packing["recommended"], totals[packing["recommended"]] / totals[1]
    else:
        packed, speedup = 1, 1.0
        section.note("no packing measurement (section 4 failed): one run at a time")
    result = projection.project(runs, speeds, first, pick, speedup)
    section.data["speed_table"] = projection.SpeedTable(
        speeds, first, pick, DATASETS[runs[0].dataset].image_shape, speedup,
        f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"{runs[0].training['precision']}, packed {packed}").as_json()
    section.note(f"{grid.name}: {len(runs)} runs + {len(result['first_task_models'])} shared first-task "
                 f"models, precision {runs[0].training['precision']}, packed {packed} per device")
    for line in projection.table(result).splitlines():
        section.note(line)
    last = " and, for DER/MEMO, at the last task" if sizes.last_task else ""
    section.note(f"measured: seconds per training image (batch {sizes.projection_batch}, {sizes.projection_warmup} "
                 f"warm-up + {sizes.projection_steps} timed steps) and per forward image of the {len(speeds)} method x "
                 f"backbone pairs at task 1{last}, of each backbone's first-task step, and per herding pick")
    section.note("derived: a single network costs the same at every later task; DER/MEMO linearly in the task index "
                 + ("between tasks 0, 1 and the last" if sizes.last_task else "from tasks 0 and 1 (extrapolated)")
                 + "; images and epochs per task counted from each run's config")
    section.data.update({"serial_hours": result["serial_seconds"] / 3600, "wall_hours": result["wall_seconds"] / 3600,
                         "speedup": speedup, "runs": len(result["runs"])})
    if not (result["serial_seconds"] > 0 and len(result["runs"]) == len(runs)):
        section.fail(f"the projection is empty or lost runs: {result['serial_seconds']} s for "
                     f"{len(result['runs'])} runs")


# -- the whole check -------------------------------------------------------------------------------
def check(device: torch.device, quick: bool, data_root: Path, log: Callable[[str], None] = print,
          project: Path = PAPER_GRID) -> list[Section]:
    from benchmark.tools.check_grid import section_grid
    from benchmark.tools.check_imagenet import imagenet_path_section

    sizes = QUICK if quick else FULL
    sections = {n: Section(n, title) for n, title in enumerate(
        ["training steps on the device", "CPU-vs-device parity", "a small grid through run_all.py, then resumed",
         "packing throughput", "projected hours of the paper grid", "the ImageNet data path on the device"],
        start=1)}

    def done(section: Section) -> None:
        log(section.text())

    with tempfile.TemporaryDirectory(prefix="device-check-") as workdir:
        grid = threading.Thread(target=lambda: done(run_section(
            sections[3], lambda s: section_grid(s, device, data_root, Path(workdir)))))
        grid.start()
        try:
            done(run_section(sections[1], lambda s: steps_section(s, device, data_root, sizes)))
            data = sections[1].data.pop("data", None)
            if data is None:
                sections[2].fail("no data: section 1 failed before loading it")
            else:
                done(run_section(sections[2], lambda s: parity_section(s, device, data)))
            if not quick:  # the timed sections want the device to themselves
                grid.join()
            done(run_section(sections[4], lambda s: packing_section(s, device, sizes)))
            done(run_section(sections[5], lambda s: projection_section(s, device, sizes, sections[4].data, project)))
            done(run_section(sections[6], lambda s: imagenet_path_section(s, device, sizes.imagenet_images)))
        finally:
            grid.join()
    return list(sections.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmark.tools.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda[:index] or cpu (default: cuda when available, else cpu)")
    parser.add_argument("--quick", action="store_true", help="the CI smoke size (tiny backbones, few steps)")
    parser.add_argument("--json", help="also write the sections and their numbers to this file")
    parser.add_argument("--data-root", default=os.environ.get("CIL_DATA_ROOT", "data"),
                        help="folder holding CIFAR-100 (default: $CIL_DATA_ROOT or data)")
    parser.add_argument("--project", type=Path, default=PAPER_GRID,
                        help="the experiment whose grid section 5 projects (default: the paper's CIFAR-100 curve)")
    args = parser.parse_args(argv)
    if not args.project.is_file():
        parser.error(f"--project {args.project}: no such experiment file")
    device = torch.device(args.device)
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device}: use cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; run with --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        parser.error(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return args


def data_problem(data_root: Path) -> str | None:
    from benchmark.data import DataError, find_dataset_dir

    try:
        find_dataset_dir("cifar100", data_root)
    except DataError as error:
        return f"--data-root {data_root}: {error}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, data_root = torch.device(args.device), Path(args.data_root)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    problem = data_problem(data_root)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CPU check shares its cores with its own workers (sections 3, 4)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device check on {device} ({card}), {'quick' if args.quick else 'full'} size, torch {torch.__version__}")
    started = time.perf_counter()
    sections = check(device, args.quick, data_root, project=args.project)
    seconds = time.perf_counter() - started
    failed = [s for s in sections if s.status != "PASS"]
    print("\n" + "\n".join(f"{s.status}  {s.number}. {s.title}" for s in sections))
    print(f"{len(sections) - len(failed)} of {len(sections)} sections passed in {seconds:.0f} s")
    if args.json:
        report = {"device": str(device), "card": card, "quick": args.quick, "torch": torch.__version__,
                  "sizes": asdict(QUICK if args.quick else FULL), "seconds": seconds, "passed": not failed,
                  "sections": [asdict(s) for s in sections]}
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
