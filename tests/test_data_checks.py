"""check_dataset: damaged data is one DataError naming the file, the problem and the fix, before any run.

Most cases corrupt a small synthetic prepared layout (2 train shards of 100 images, 1 test image per
class; the per-class counts are patched to match); one corrupts a copy of the real CIFAR-100 files.
"""
from __future__ import annotations

import json
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torchvision.datasets

from benchmark.data import DATASETS, DataError, check_dataset

PREPARED_FIX = "sha256sum -c SHA256SUMS"
UNPICKLED: list[str] = []  # filled only if some code unpickles the planted pickle


class Planted:
    """Unpickling this runs code (appends to UNPICKLED): what a loader must never do with data files."""

    def __reduce__(self):
        return UNPICKLED.append, ("unpickled",)


def arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One image per class of CIFAR-100, classes shuffled."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8), rng.permutation(100).astype(np.uint8)


@pytest.fixture()
def prepared(tmp_path, monkeypatch) -> Path:
    """A valid prepared CIFAR-100 folder in miniature: train-0.npz, train-1.npz, test.npz, meta.json."""
    monkeypatch.setitem(DATASETS, "cifar100", replace(DATASETS["cifar100"], train_per_class=2, test_per_class=1))
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", refuse)  # a check must never reach for a download
    folder = tmp_path / "cifar100"
    folder.mkdir()
    for seed, name in enumerate(("train-0.npz", "train-1.npz", "test.npz")):
        x, y = arrays(seed)
        np.savez(folder / name, x=x, y=y)
    (folder / "meta.json").write_text(json.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return folder


def refuse(*args, **kwargs):
    raise AssertionError("torchvision must not be called")


def rewrite(name: str, **changes) -> Callable[[Path], None]:
    """Mutation: rewrite one npz of the folder with some arrays replaced, derived from the originals."""
    def mutate(folder: Path) -> None:
        with np.load(folder / name) as npz:
            content = {key: npz[key] for key in npz.files}
        content.update({key: change(content) for key, change in changes.items()})
        np.savez(folder / name, **content)
    return mutate


def truncate(folder: Path) -> None:
    data = (folder / "train-1.npz").read_bytes()
    (folder / "train-1.npz").write_bytes(data[: len(data) // 2])


def with_label(value: int, dtype=np.int64) -> Callable[[dict], np.ndarray]:
    def change(content: dict) -> np.ndarray:
        y = content["y"].astype(dtype)
        y[y == 5] = value
        return y
    return change


def shifted_class(content: dict) -> np.ndarray:
    y = content["y"].copy()
    y[y == 7] = 3  # class 3 twice in this shard, class 7 missing
    return y


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return mutate


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


CORRUPTIONS = {
    "truncated npz": (truncate, "train-1.npz", r"truncated or damaged \.npz \(BadZipFile"),
    "zero-length npz": (write("test.npz", b""), "test.npz", r"is empty \(0 bytes\)"),
    "pickle instead of npz": (write("train-0.npz", pickle.dumps({"x": Planted(), "y": Planted()})), "train-0.npz",
                              r"is a Python pickle, not an \.npz archive"),
    "npy instead of npz": (lambda f: np.save(open(f / "test.npz", "wb"), arrays()[0]), "test.npz",
                           r"is a single \.npy array, not an \.npz archive"),
    "object array": (rewrite("train-1.npz", y=lambda c: c["y"].astype(object)), "train-1.npz",
                     r"cannot read its arrays with allow_pickle=False \(Object arrays cannot be loaded"),
    "missing key": (lambda f: np.savez(f / "test.npz", x=arrays()[0]), "test.npz", r"missing \['y'\]"),
    "CHW images": (rewrite("train-0.npz", x=lambda c: c["x"].transpose(0, 3, 1, 2)), "train-0.npz",
                   r"expected images x of uint8 \[N, 32, 32, 3\], found uint8 \[100, 3, 32, 32\]"),
    "float images": (rewrite("test.npz", x=lambda c: c["x"].astype(np.float32)), "test.npz",
                     r"expected images x of uint8 \[N, 32, 32, 3\], found float32 \[100, 32, 32, 3\]"),
    "float labels": (rewrite("test.npz", y=lambda c: c["y"].astype(np.float32)), "test.npz",
                     r"expected integer labels y of shape \[N\], found float32 \[100\]"),
    "label too large": (rewrite("train-1.npz", y=with_label(100)), "train-1.npz",
                        r"expected labels in 0\.\.99, found 0\.\.100"),
    "negative label": (rewrite("test.npz", y=with_label(-1)), "test.npz", r"expected labels in 0\.\.99, found -1\.\.99"),
    "one label short": (rewrite("train-0.npz", y=lambda c: c["y"][:-1]), "train-0.npz",
                        r"expected one label per image, found 100 images and 99 labels"),
    "per-class counts": (rewrite("train-1.npz", y=shifted_class), "train-*.npz",
                         r"expected 2 train images per class \(200 in all\), found 200 images: "
                         r"2 per class except class 3 has 3, class 7 has 1"),
    "missing test.npz": (remove("test.npz"), "test.npz", r"missing; expected an \.npz archive"),
    "missing shard": (lambda f: (f / "train-1.npz").rename(f / "train-2.npz"), "",
                      r"expected train shards numbered 0\.\.2, missing train-1\.npz"),
    "missing meta.json": (remove("meta.json"), "meta.json", r"missing; expected a JSON object with the 100 class names"),
    "meta.json not JSON": (write("meta.json", '{"fine_label_names": ['), "meta.json", r"found no valid JSON"),
    "meta.json a list": (write("meta.json", "[]"), "meta.json", r"found a JSON list"),
    "meta.json 99 names": (write("meta.json", json.dumps({"fine_label_names": ["a"] * 99})), "meta.json",
                           r"expected 100 names under one of .*, found 99 names"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corruption_is_caught_with_file_problem_and_fix(prepared, kind):
    mutate, culprit, problem = CORRUPTIONS[kind]
    mutate(prepared)
    with pytest.raises(DataError) as err:
        check_dataset("cifar100", prepared.parent, download=True)  # download=True: still no download
    message = str(err.value)
    assert re.search(rf"{re.escape(str(prepared / culprit))}: .*{problem}", message), message
    assert PREPARED_FIX in message
    assert UNPICKLED == []


def test_intact_folder_passes_without_downloading(prepared):
    assert check_dataset("cifar100", prepared.parent) == prepared
    assert check_dataset("cifar100", prepared, download=True) == prepared


def test_cifar100_meta_keeps_the_folder_from_cifar10(prepared):
    # 100 names: the folder is CIFAR-100's, so CIFAR-10 is simply not there (no load, no download).
    with pytest.raises(DataError, match=r"(?s)CIFAR-10 \('cifar10'\) not found.*Nothing was downloaded"):
        check_dataset("cifar10", prepared, download=False)


def test_damaged_cache_says_delete(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", refuse)
    cache = tmp_path / "cifar100" / "cifar100-uint8.npz"
    cache.parent.mkdir()
    cache.write_bytes(b"")
    with pytest.raises(DataError, match=rf"(?s){re.escape(str(cache))}: is empty.*delete {re.escape(str(cache))}"):
        check_dataset("cifar100", tmp_path)


def test_damaged_torchvision_files_without_download(tmp_path):
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"could not load \(download=False\) from .*Dataset not found or corrupted"):
        check_dataset("cifar100", tmp_path, download=False)


def test_imagenet_layout_is_located_only(tmp_path):
    with pytest.raises(DataError, match=r"ImageNet-100 \('imagenet100'\) not found"):
        check_dataset("imagenet100", tmp_path)
    (tmp_path / "imagenet100" / "train").mkdir(parents=True)
    assert check_dataset("imagenet100", tmp_path) == tmp_path / "imagenet100"


def test_real_data_passes_and_a_truncated_copy_fails(cifar_root, tmp_path):
    """The real files (either layout) pass; a copy whose last .npz is cut in half fails, naming it."""
    assert check_dataset("cifar100", cifar_root) == cifar_root
    copy = tmp_path / "cifar100"
    copy.mkdir()
    for path in cifar_root.iterdir():  # links, not copies: the real files are 170 MB
        (copy / path.name).symlink_to(path)
    victim = sorted(copy.glob("*.npz"))[-1]  # test.npz, or the uint8 cache of a download
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{re.escape(str(victim))}: truncated or damaged \.npz"):
        check_dataset("cifar100", tmp_path, download=False)
