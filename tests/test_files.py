"""benchmark/files.py: one atomic write (temporary name, sync of file and folder, permissions) used
by every writer, and one stable hash for run ids, first-task keys and image-cache keys."""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from benchmark import files
from benchmark.config.grid import identity_hash
from benchmark.data import cifar, image_cache
from benchmark.files import stable_hash, stale_temporaries, write_atomic, write_json_atomic


@pytest.fixture()
def synced(monkeypatch) -> list[tuple[str, str]]:
    """Every os.fsync, as ("file" or "folder", the path's name), in order."""
    calls: list[tuple[str, str]] = []
    real = os.fsync

    def recording(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return calls


def temporary_of(name: str) -> str:
    """The one temporary-name pattern, as a regular expression for `name`."""
    return rf"\.{name.replace('.', '[.]')}\.[^/]+\.tmp"


def test_a_write_syncs_the_temporary_then_renames_it_and_syncs_the_folder(tmp_path, synced):
    path = tmp_path / "run" / "record.json"
    write_json_atomic(path, {"status": "complete", "n": np.int64(3)})
    assert json.loads(path.read_text()) == {"status": "complete", "n": 3}
    assert [kind for kind, _ in synced] == ["file", "folder"]
    assert synced[0][1] != "record.json"  # synced before the rename, under its temporary name
    assert re.fullmatch(temporary_of("record.json"), synced[0][1])
    assert synced[1][1] == "run"
    assert os.listdir(path.parent) == ["record.json"]


def test_while_writing_only_a_temporary_exists_and_a_failure_removes_it(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    seen = []

    def write(file) -> None:
        seen.extend(stale_temporaries(path))
        file.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomic(path, write)
    assert [p.name for p in seen] != [] and seen[0].name.startswith(".model.pt.") and seen[0].suffix == ".tmp"
    assert path.read_bytes() == b"old" and stale_temporaries(path) == []


def test_stable_hash_is_the_sha256_of_sorted_json():
    assert stable_hash({"b": 1, "a": [1, 2.5, "x"]}) == "44f5a7e5d99b"
    assert stable_hash({"a": [1, 2.5, "x"], "b": 1}) == "44f5a7e5d99b"  # key order does not matter
    assert stable_hash({"p": Path("/x")}, digits=16) == "315207e87f1e86b2"  # what JSON lacks: str
    assert identity_hash({"b": 1, "a": [1, 2.5, "x"]}) == "44f5a7e5d99b"  # run ids use it


def test_the_cifar_cache_is_written_through_the_atomic_write(tmp_path, synced):
    arrays = {"x_train": np.zeros((2, 32, 32, 3), np.uint8), "y_train": np.zeros(2, np.int64)}
    cifar.write_cache(tmp_path / "cifar10-uint8.npz", arrays, ["a"])
    assert [kind for kind, _ in synced] == ["file", "folder"]
    assert re.fullmatch(temporary_of("cifar10-uint8.npz"), synced[0][1])
    assert os.listdir(tmp_path) == ["cifar10-uint8.npz"]
    assert (tmp_path / "cifar10-uint8.npz").stat().st_mode & 0o777 == 0o666 & ~files._umask()


def test_the_image_cache_syncs_its_array_and_its_manifest(tmp_path, synced):
    sources = []
    for i in range(3):
        sources.append(tmp_path / f"{i}.jpg")
        sources[-1].write_bytes(b"x")
    paths = [str(p) for p in sources]
    images = image_cache.open_image_cache(paths, lambda path: np.full((2, 2, 3), 7, np.uint8), (2, 2, 3),
                                          {"crop": 2}, tmp_path / "cache", "train", log=lambda line: None, threads=1)
    assert images.shape == (3, 2, 2, 3) and (images == 7).all()
    stem = f"train-{image_cache.cache_key(paths, {'crop': 2})}"
    files_synced = [name for kind, name in synced if kind == "file"]
    assert len(files_synced) == 2
    assert re.fullmatch(temporary_of(f"{stem}.npy"), files_synced[0])
    assert re.fullmatch(temporary_of(f"{stem}.json"), files_synced[1])  # the manifest, last: it marks completion
    assert synced.count(("folder", "cache")) == 2
    assert sorted(os.listdir(tmp_path / "cache")) == [f"{stem}.json", f"{stem}.lock", f"{stem}.npy", f"{stem}.used"]


def test_the_image_cache_key_is_the_stable_hash_of_its_list_and_transform():
    assert image_cache.cache_key(["/d/a.jpg", "/d/b.jpg"], {"resize": 256, "crop": 224}) == "353003eede0d34c4"
