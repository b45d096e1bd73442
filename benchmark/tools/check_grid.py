"""The device check's section 3: a small real grid through the command line, twice.

`run_all.py run` on a tiny CIFAR-100 experiment (conv2_half, B0Inc50, 5 training and 5 test images
per class, one epoch per task, iCaRL and DER: two runs) with both runs at once on the device
(`--runs-per-gpu 2` on a GPU, `--workers 2` on the CPU). It must exit 0 and leave a complete
record per run (every task, a summary, the device type); the same command again must run nothing.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

if TYPE_CHECKING:
    from benchmark.tools.sections import Section

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 600
TINY_EXPERIMENT = {
    "name": "device_check_tiny", "dataset": "cifar100", "scenario": "B0Inc50", "methods": ["icarl", "der"],
    "budgets": "fair", "seeds": [1993], "profile": "cpu", "family": ["conv2_half"],
    "benchmark_backbone": "conv2_half", "anchor_exemplars": 100,
    "training": {"images_per_class": 5, "test_images_per_class": 5, "first_task": {"epochs": 1, "milestones": []},
                 "later_tasks": {"all": {"epochs": 1, "milestones": []}}},
}
TASKS = 2          # B0Inc50 on 100 classes
RUNS = 2
RESUME_LINE = re.compile(r"(\d+) runs: (\d+) complete \(skipped\), .*?(\d+) to run")


def grid_command(experiment: Path, results: Path, data_root: Path, device: torch.device) -> list[str]:
    placement = (["--gpus", str(device.index or 0), "--runs-per-gpu", "2"] if device.type == "cuda"
                 else ["--gpus", "cpu", "--workers", "2"])
    return [sys.executable, str(REPO / "run_all.py"), "run", str(experiment), "--results", str(results),
            "--data-root", str(data_root), *placement]


def record_problems(experiment_dir: Path, device_type: str) -> list[str]:
    records = sorted((experiment_dir / "runs").glob("*/record.json"))
    problems = [] if len(records) == RUNS else [f"{len(records)} records in {experiment_dir / 'runs'}, expected {RUNS}"]
    for path in records:
        record = json.loads(path.read_text())
        where = f"{record.get('run_id')} ({record.get('config', {}).get('method')})"
        if record.get("status") != "complete":
            problems.append(f"{where}: status {record.get('status')}: {(record.get('error') or {}).get('message')}")
            continue
        if len(record.get("tasks", [])) != TASKS or not record.get("summary"):
            problems.append(f"{where}: {len(record.get('tasks', []))} tasks recorded (expected {TASKS}) or no summary")
        if record.get("config", {}).get("device_type") != device_type:
            trained = record.get("config", {}).get("device_type")
            problems.append(f"{where}: trained as {trained}, expected {device_type}")
    return problems


def resume_problems(stdout: str) -> list[str]:
    """The second command must say that every run is complete and none is left to run."""
    match = RESUME_LINE.search(stdout)
    if not match:
        return ["the second command printed no resume line ('N runs: N complete (skipped), ... 0 to run'):\n"
                + stdout[-500:]]
    total, complete, to_run = map(int, match.groups())
    if (total, complete, to_run) != (RUNS, RUNS, 0):
        return [f"the second command found {complete} of {total} complete and {to_run} to run, "
                f"expected {RUNS}, {RUNS}, 0"]
    if "running on" in stdout:
        return ["the second command started workers although every run was complete"]
    return []


def section_grid(section: Section, device: torch.device, data_root: Path, workdir: Path) -> None:
    experiment = workdir / "device_check_tiny.yaml"
    experiment.write_text(yaml.safe_dump(TINY_EXPERIMENT, sort_keys=False))
    results = workdir / "results"
    command = grid_command(experiment, results, data_root, device)
    section.note("$ " + " ".join(command[1:]))
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    if first.returncode != 0:
        section.fail(f"exit code {first.returncode}:\n{(first.stdout + first.stderr)[-1500:]}")
        return
    problems = record_problems(results / TINY_EXPERIMENT["name"], device.type)
    section.data["records"] = len(list((results / TINY_EXPERIMENT["name"] / "runs").glob("*/record.json")))
    for problem in problems:
        section.fail(problem)
    if not problems:
        section.note(f"exit 0, {RUNS} complete records of {TASKS} tasks each, trained on {device.type}")
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    problems = ([f"the second command exited {second.returncode}:\n{second.stderr[-800:]}"]
                if second.returncode != 0 else resume_problems(second.stdout))
    for problem in problems:
        section.fail(problem)
    if not problems:
        section.data["resume_line"] = RESUME_LINE.search(second.stdout).group(0)
        section.note(f"the same command again: {section.data['resume_line']}")
