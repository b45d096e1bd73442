"""The decoded uint8 image cache of folder data sets and the prefetching batch source that reads it."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.train import batches as batches_module
from benchmark.train.batches import (CachedSource, ConcatSource, FolderSource, TensorSource, concat, gather_rows,
                               pins_memory, select, source_of, to_chw_tensor)
from benchmark.data import DataError, FolderImageSet, imageset
from benchmark.data.image_cache import CACHE_ENV, cache_dir_for

REPO = Path(__file__).resolve().parents[1]
COUNT = 6


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[str]:
    """Six small photos-to-be of different sizes and formats, in two class folders."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(COUNT):
        height, width = (int(v) for v in rng.integers(226, 320, size=2))
        path = root / f"c{i % 2}" / f"{i}.{['JPEG', 'png'][i % 2]}"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def folder_set(paths: list[str], cache_dir: Path | None) -> FolderImageSet:
    return FolderImageSet(paths, np.arange(len(paths)) % 2, cache_dir=cache_dir, split="train")


@pytest.fixture()
def decodes(monkeypatch) -> list[str]:
    """Every decode_center_crop call, by path (a list: appends are atomic across the pool's threads)."""
    calls: list[str] = []
    real = imageset.decode_center_crop

    def counting(path: str, **kwargs) -> np.ndarray:
        calls.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(imageset, "decode_center_crop", counting)
    return calls


def test_cache_equals_decoding_and_is_reused_without_decoding(image_paths, tmp_path, decodes, capsys):
    decoded = folder_set(image_paths, None).read(np.arange(COUNT))
    decodes.clear()
    cached = folder_set(image_paths, tmp_path).cached_images()
    assert len(decodes) == COUNT and "building (6 images" in capsys.readouterr().err
    assert cached.dtype == np.uint8 and cached.shape == (COUNT, 224, 224, 3) and not cached.flags.writeable
    np.testing.assert_array_equal(cached, decoded)
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".lock", ".npy", ".used"]  # no temporary left behind
    manifest = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert manifest["count"] == COUNT and manifest["shape"] == [COUNT, 224, 224, 3]
    assert [f[0] for f in manifest["files"]] == image_paths

    decodes.clear()
    again = folder_set(image_paths, tmp_path).cached_images()  # a fresh set: checked, not rebuilt
    assert decodes == [] and capsys.readouterr().err == ""
    np.testing.assert_array_equal(again, decoded)


def test_truncated_cache_is_rebuilt(image_paths, tmp_path, decodes, capsys):
    expected = folder_set(image_paths, tmp_path).cached_images().copy()
    npy = next(tmp_path.glob("*.npy"))
    with open(npy, "r+b") as f:
        f.truncate(npy.stat().st_size - 1000)
    capsys.readouterr()
    decodes.clear()
    rebuilt = folder_set(image_paths, tmp_path).cached_images()
    assert "expected" in (err := capsys.readouterr().err) and "(truncated or partial); rebuilding" in err
    assert len(decodes) == COUNT
    np.testing.assert_array_equal(rebuilt, expected)


def test_changed_file_and_changed_list_are_rebuilt(image_paths, tmp_path, decodes, capsys):
    paths = [str(tmp_path / Path(p).name) for p in image_paths]  # private copies: one gets rewritten
    for src, dst in zip(image_paths, paths):
        Path(dst).write_bytes(Path(src).read_bytes())
    cache = tmp_path / "cache"
    folder_set(paths, cache).cached_images()
    Image.fromarray(np.full((250, 260, 3), 7, np.uint8)).save(paths[2], format="JPEG")
    capsys.readouterr()
    decodes.clear()
    rebuilt = folder_set(paths, cache).cached_images()
    assert f"1 source files changed since the build (first: {paths[2]}); rebuilding" in capsys.readouterr().err
    assert len(decodes) == COUNT and np.abs(rebuilt[2].astype(int) - 7).max() <= 2  # JPEG keeps a flat grey
    decodes.clear()
    fewer = folder_set(paths[1:4], cache).cached_images()  # another file list: another cache file
    assert decodes == paths[1:4] and len(list(cache.glob("*.npy"))) == 2
    np.testing.assert_array_equal(fewer, rebuilt[1:4])


def test_subset_and_relabel_keep_the_cache_folder(image_paths, tmp_path):
    full = folder_set(image_paths, tmp_path)
    part = full.subset(np.array([4, 1]))
    assert part.cache_dir == tmp_path and part.split == "train"
    np.testing.assert_array_equal(part.cached_images(), full.read(np.array([4, 1])))
    opened = full.cached_images()
    assert full.relabel(np.array([1, 0])).cached_images() is opened  # same files: not opened again


CHILD = """
import json, sys, time
from pathlib import Path
import numpy as np
from benchmark.data import imageset
calls, real = [], imageset.decode_center_crop
def slow(path, **kwargs):
    calls.append(path)
    time.sleep(0.05)  # long enough for the other process to reach the lock while this one builds
    return real(path, **kwargs)
imageset.decode_center_crop = slow
paths, cache, go = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
images = imageset.FolderImageSet(paths, np.zeros(len(paths)), cache_dir=cache, split="train")
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
cached = images.cached_images()
print(json.dumps({"decodes": len(calls), "sum": int(cached.sum(dtype=np.int64))}), flush=True)
"""


def test_two_processes_build_once(image_paths, tmp_path):
    go = tmp_path / "go"
    command = [sys.executable, "-c", CHILD, json.dumps(image_paths), str(tmp_path / "cache"), str(go)]
    children = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    go.touch()  # both start opening the cache at the same moment
    outputs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["decodes"] for r in results) == [0, COUNT]  # one built, the other waited and reused
    assert sum("building" in err for _, err in outputs) == 1
    assert results[0]["sum"] == results[1]["sum"] > 0


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cache_dir_for(tmp_path / "imagenet100") == tmp_path / "imagenet100" / ".cache"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_dir_for(tmp_path / "imagenet100") == tmp_path / "elsewhere"
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_dir_for(tmp_path / "imagenet100") is None


def test_unwritable_cache_dir_names_the_fix(image_paths, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DataError, match=f"cannot write the decoded-image cache in .*a-file.*{CACHE_ENV}=DIR"):
        folder_set(image_paths, blocker / "cache").cached_images()


# ------------------------------------------------------------------------------------------- batches


def test_source_of_picks_the_cache(image_paths, tmp_path):
    cpu = torch.device("cpu")
    assert isinstance(source_of(folder_set(image_paths, tmp_path), cpu), CachedSource)
    assert isinstance(source_of(folder_set(image_paths, None), cpu), FolderSource)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("prefetch")]


def test_batches_match_images_in_order(image_paths, tmp_path):
    image_set = folder_set(image_paths, tmp_path)
    source = source_of(image_set, torch.device("cpu"))
    order = torch.tensor([5, 0, 3, 3, 1, 4, 2])
    got = list(source.batches(order, 3))
    assert [rows.tolist() for rows, _ in got] == [[5, 0, 3], [3, 1, 4], [2]]
    for rows, images in got:
        assert images.dtype == torch.uint8 and images.shape == (len(rows), 3, 224, 224)
        assert images.is_contiguous(memory_format=torch.channels_last)  # the NHWC rows, viewed as NCHW
        assert torch.equal(images, source.images(rows))
        assert torch.equal(images, to_chw_tensor(image_set.read(rows.numpy()), torch.device("cpu")))
    assert prefetch_threads() == []


def test_selection_and_concatenation_prefetch_too(image_paths, tmp_path):
    cached = source_of(folder_set(image_paths, tmp_path), torch.device("cpu"))
    memory = TensorSource(torch.full((2, 3, 224, 224), 9, dtype=torch.uint8), torch.tensor([7, 8]))
    mixed = concat([select(cached, torch.tensor([4, 1, 2])), memory])
    assert isinstance(mixed, ConcatSource) and mixed.reads_disk and not memory.reads_disk
    (rows, first), (_, second) = list(mixed.batches(torch.tensor([3, 0, 4, 2]), 2))
    assert rows.tolist() == [3, 0] and mixed.labels[rows].tolist() == [7, 0]
    assert torch.equal(first[0], memory.images(torch.tensor([0]))[0])
    assert torch.equal(first[1], cached.images(torch.tensor([4]))[0])
    assert torch.equal(second, torch.stack([memory.images(torch.tensor([1]))[0], cached.images(torch.tensor([2]))[0]]))


def test_prefetch_thread_ends_when_closed_early_or_on_errors(image_paths, tmp_path):
    source = source_of(folder_set(image_paths, tmp_path), torch.device("cpu"))
    stream = source.batches(torch.arange(COUNT), 2)
    next(stream)
    assert len(prefetch_threads()) == 1  # reading the second batch meanwhile
    stream.close()
    assert prefetch_threads() == []

    with pytest.raises(ZeroDivisionError):  # training fails mid-epoch
        for _ in source.batches(torch.arange(COUNT), 2):
            1 / 0
    assert prefetch_threads() == []


class BrokenReads(CachedSource):
    def images(self, indices: torch.Tensor) -> torch.Tensor:
        if 4 in indices.tolist():
            raise OSError("disk read failed")
        return super().images(indices)


def test_reader_errors_surface_in_the_consumer(image_paths, tmp_path):
    cached = folder_set(image_paths, tmp_path).cached_images()
    source = BrokenReads(cached, np.zeros(COUNT), torch.device("cpu"))
    seen = []
    with pytest.raises(OSError, match="disk read failed"):
        for rows, _ in source.batches(torch.arange(COUNT), 2):
            seen.append(rows.tolist())
    assert seen == [[0, 1], [2, 3]] and prefetch_threads() == []


def test_gather_rows_restores_the_order():
    array = np.arange(10 * 2).reshape(10, 2)
    out = np.empty((4, 2), dtype=array.dtype)
    gather_rows(array, np.array([7, 2, 9, 2]), out)
    assert out.tolist() == [[14, 15], [4, 5], [18, 19], [4, 5]]


@pytest.fixture()
def pin_requests(monkeypatch) -> list[bool]:
    """The pin_memory argument of every torch.empty the batch sources call."""
    requested: list[bool] = []
    real_empty = torch.empty

    def recording_empty(*args, **kwargs):
        requested.append(kwargs.get("pin_memory", False))
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(batches_module.torch, "empty", recording_empty)
    return requested


def test_pinned_memory_only_for_cuda(image_paths, tmp_path, pin_requests):
    assert pins_memory(torch.device("cuda")) and pins_memory(torch.device("cuda", 1))
    assert not pins_memory(torch.device("cpu"))
    cached = folder_set(image_paths, tmp_path).cached_images()
    images = CachedSource(cached, np.zeros(COUNT), torch.device("cpu")).images(torch.tensor([1, 0]))
    assert pin_requests == [False] and not images.is_pinned()
    assert images.device.type == "cpu" and torch.equal(images, to_chw_tensor(cached[[1, 0]], torch.device("cpu")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned, non-blocking copy is the CUDA branch")
def test_cuda_reads_go_through_pinned_memory(image_paths, tmp_path, pin_requests):
    cached = folder_set(image_paths, tmp_path).cached_images()
    on_cpu = CachedSource(cached, np.zeros(COUNT), torch.device("cpu")).images(torch.tensor([1, 0]))
    pin_requests.clear()
    on_gpu = CachedSource(cached, np.zeros(COUNT), torch.device("cuda")).images(torch.tensor([1, 0]))
    assert pin_requests == [True] and on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)


def test_io_speed_runs_and_checks_its_arguments(tmp_path, capsys):
    from benchmark.tools import io_speed

    io_speed.main(["--images", "5", "--batch-size", "2", "--size", "240x230", "--workdir", str(tmp_path),
                   "--json", str(tmp_path / "speed.json")])
    out = capsys.readouterr().out
    assert "5 synthetic JPEGs of 240x230" in out and "jpeg-q90" in out and "raw-crops" in out and "dali" in out
    assert len(list((tmp_path / "train").rglob("*.JPEG"))) == 5 and len(list((tmp_path / "cache").glob("*.npy"))) == 1
    assert len(list((tmp_path / "cache").glob("*.jpegs"))) == 2  # quality 90 and 95
    result = json.loads((tmp_path / "speed.json").read_text())
    assert sorted(result["candidates"])[:5] == ["jpeg-q90", "jpeg-q95", "pil", "raw-256", "raw-crops"]
    assert result["candidates"]["raw-crops"]["bytes_per_image"] == 224 * 224 * 3
    with pytest.raises(SystemExit):
        io_speed.main(["--size", "100x100"])
    assert "expected WIDTHxHEIGHT with both at least 224" in capsys.readouterr().err
