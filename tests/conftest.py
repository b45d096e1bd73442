"""Shared test fixtures: where CIFAR-100 comes from.

Offline (CI: `make test DATA=../shared/data/cifar100` sets CIL_DATA_ROOT): whatever layout the data
layer finds under $CIL_DATA_ROOT, ../shared/data or <repo>/data, the prepared arrays first. Otherwise
torchvision downloads CIFAR-100 once into $CIL_DATA_ROOT or <repo>/data (git-ignored), and the uint8
cache written next to it serves every later session without a network.
"""
from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

# Every Ray node a test starts (a local instance, a multi-node cluster) binds and advertises the
# loopback address only: Ray treats a machine with this switch off as a single-machine setup and
# uses 127.0.0.1 instead of the interface address. Set before any test module imports Ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Small measured numbers (an exemplar format's mean size) are cached in the user's cache folder:
# the tests' go to a folder of their own, never the home folder's (subprocesses inherit it).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="cil-test-cache-")

from benchmark.data import DataError, dataset_spec, find_dataset_dir, load_dataset
from benchmark.data.cifar import locate

# A suite started in the background of a non-interactive shell (`cmd &`, nohup) inherits SIGINT
# ignored, and every process it starts would inherit that too: the tests that stop a driver or a
# SLURM-local job with Ctrl-C (SIGINT) need it delivered. A Python handler is not inherited across
# exec, so the children start with the default again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]


def search_roots() -> list[Path]:
    """Data roots to search, in order; each is searched itself and as root/cifar100."""
    roots = [Path(os.environ["CIL_DATA_ROOT"])] if os.environ.get("CIL_DATA_ROOT") else []
    return roots + [REPO.parent / "shared" / "data", REPO / "data"]


def download_root() -> Path:
    """Where the download goes when nothing is found: the root the user named, else the repo's data/."""
    return Path(os.environ.get("CIL_DATA_ROOT") or REPO / "data")


def find_or_download_cifar100(roots: list[Path], target: Path) -> Path:
    """A CIFAR-100 folder that load_dataset accepts as root, whichever layout it holds.

    A torchvision folder without our cache (an interrupted download, say) goes through one load with
    download=True, which completes it and writes the cache, so tests loading with download=False work.
    """
    spec = dataset_spec("cifar100")
    for root in roots:
        found = locate(spec, root)
        if found is None:
            continue
        layout, folder = found
        if layout != "torchvision":
            return folder
        target = folder
        break
    try:
        load_dataset("cifar100", target, download=True)
    except DataError as err:
        searched = ", ".join(str(root) for root in roots)
        pytest.fail(
            f"CIFAR-100 for the tests: no prepared arrays or cache under {searched} (each also as <root>/cifar100), "
            f"and the torchvision download into {target} failed:\n{err}\n"
            "Either run `make test DATA=DIR` (sets CIL_DATA_ROOT) with DIR holding the prepared arrays "
            "(train-*.npz, test.npz, meta.json) or a finished download, or run the tests once on a machine "
            f"with a network so that torchvision downloads CIFAR-100 into {target}.",
            pytrace=False,
        )
    return find_dataset_dir("cifar100", target)


def cifar100_root() -> Path:
    return find_or_download_cifar100(search_roots(), download_root())


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """A folder holding CIFAR-100 (prepared arrays, or the torchvision download and its cache), as an
    absolute path: tests link to its files from other folders and pass it to subprocesses."""
    return cifar100_root().resolve()


# -- the tests' tiny experiment -------------------------------------------------------------------
def tiny_experiment(name: str = "tiny", methods: tuple[str, ...] | list[str] = ("finetune", "replay"),
                    budgets: tuple | list = (0.6,), training: dict | None = None, **overrides) -> dict:
    """The suite's small experiment as parse_experiment takes it: CIFAR-100 B0Inc50 (two tasks), the
    cpu profile, two small backbones and a 200-image anchor. `training` and any other key replace
    the defaults; write_experiment puts it in a file for the CLI."""
    raw = {"name": name, "dataset": "cifar100", "scenario": "B0Inc50", "methods": list(methods),
           "budgets": list(budgets), "seeds": [1993], "profile": "cpu", "family": ["conv2_half", "resnet8_half"],
           "benchmark_backbone": "conv2_half", "anchor_exemplars": 200}
    if training is not None:
        raw["training"] = training
    return raw | overrides


def tiny_training(later_epochs: int = 1, **overrides) -> dict:
    """A `training:` section for runs of seconds: 5 training and 2 test images per class, one epoch
    on the first task, `later_epochs` on each later one and on each extra phase (BiC's, FOSTER's,
    PODNet's: the profile's own are longer), batches of 32."""
    return {"images_per_class": 5, "test_images_per_class": 2,
            "first_task": {"epochs": 1, "milestones": [], "batch_size": 32},
            "later_tasks": {"all": {"epochs": later_epochs, "milestones": [], "batch_size": 32}},
            "phases": extra_phases(later_epochs)} | overrides


def extra_phases(epochs: int, **schedule) -> dict:
    """A `training.phases` section that runs every method's extra phase for `epochs` epochs with
    `schedule` (the cpu profile's phases are longer than a test needs)."""
    phase = {"epochs": epochs, "milestones": [], **schedule}
    return {"bic": {"bias_correction": dict(phase)}, "foster": {"compression": dict(phase)},
            "podnet": {"finetune": dict(phase)}}


def write_experiment(folder: Path, raw: dict) -> Path:
    """`raw` (see tiny_experiment) as folder/<name>.yaml."""
    import yaml

    path = Path(folder) / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -- processes, from /proc -------------------------------------------------------------------------
def process_state(pid: int) -> str | None:
    """The state letter of process `pid` (R, S, Z, ...), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie counts as ended)."""
    return process_state(pid) not in (None, "Z", "X")


def all_gone(pids: list[int], within: float = 10) -> bool:
    """Whether every process of `pids` has ended within `within` seconds."""
    import time

    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def children(pid: int) -> list[int]:
    """The running processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


# -- the shipped configuration files (pinned: a file added or lost fails tests/test_schema.py) ---------
EXPERIMENT_DIR = REPO / "benchmark" / "config" / "experiments"
PROFILE_DIR = REPO / "benchmark" / "config" / "profiles"
SHIPPED_EXPERIMENTS = ["cifar100_b0inc10_paper.yaml", "cifar100_b0inc10_survey_fair.yaml", "cifar100_b0inc20_cpu.yaml",
                       "cifar100_b0inc20_cpu_formats.yaml", "cifar100_b0inc20_cpu_seeds.yaml",
                       "cifar100_b0inc20_cpu_storage.yaml", "cifar100_b0inc20_cpu_survey.yaml", "cifar100_b0inc20_cpu_threads2.yaml",
                       "cifar100_b0inc5_survey_fair.yaml", "imagenet1000_b0inc100_fair.yaml"]
SHIPPED_PROFILES = ["cpu.yaml", "paper.yaml", "paper_imagenet.yaml"]
