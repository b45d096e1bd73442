"""Shared test fixtures: where the real CIFAR-100 arrays live."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cifar100_root() -> Path:
    """The prepared CIFAR-100 folder: $CIL_DATA_ROOT/cifar100, $CIL_DATA_ROOT, or ../shared/data/cifar100."""
    candidates = []
    if os.environ.get("CIL_DATA_ROOT"):
        root = Path(os.environ["CIL_DATA_ROOT"])
        candidates += [root / "cifar100", root]
    candidates.append(REPO.parent / "shared" / "data" / "cifar100")
    for path in candidates:
        if (path / "test.npz").exists():
            return path
    pytest.fail(f"CIFAR-100 arrays not found in any of {[str(c) for c in candidates]}; "
                "set CIL_DATA_ROOT to the folder holding test.npz and train-*.npz")


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    return cifar100_root()
