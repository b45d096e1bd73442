"""Shared test fixtures: where CIFAR-100 comes from.

Offline (CI: `make test DATA=../shared/data/cifar100` sets CIL_DATA_ROOT): whatever layout the data
layer finds under $CIL_DATA_ROOT, ../shared/data or <repo>/data, the prepared arrays first. Otherwise
torchvision downloads CIFAR-100 once into $CIL_DATA_ROOT or <repo>/data (git-ignored), and the uint8
cache written next to it serves every later session without a network.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every Ray node a test starts (a local instance, a multi-node cluster) binds and advertises the
# loopback address only: Ray treats a machine with this switch off as a single-machine setup and
# uses 127.0.0.1 instead of the interface address. Set before any test module imports Ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from benchmark.data import DataError, dataset_spec, find_dataset_dir, load_dataset
from benchmark.data.cifar import locate

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
