"""python -m benchmark.tools.image_caches: listing the caches and removing those no process uses."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data import image_cache
from benchmark.data.jpeg_store import open_jpeg_store
from benchmark.tools import image_caches

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    """A raw centre-crop cache of 3 images and a JPEG store of 2, opened (and so in use) by this process."""
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((260, 300, 3), 40 * i, np.uint8)).save(paths[-1])
    folder = tmp_path / "cache"
    image_cache.open_image_cache(paths, lambda path: np.full((4, 4, 3), 7, np.uint8), (4, 4, 3), {"crop": 4},
                                 folder, "val", log=lambda line: None, threads=1)
    open_jpeg_store(paths[:2], folder, "train", log=lambda line: None, threads=1)
    yield folder
    image_cache.release_caches()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark.tools.image_caches", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def listed(capsys, folder: Path) -> list[list[str]]:
    assert image_caches.main(["list", str(folder)]) == 0
    return [line.split() for line in capsys.readouterr().out.splitlines()]


def test_list_shows_kind_size_use_and_state(cache_dir, capsys):
    header, first, second, total = listed(capsys, cache_dir)
    assert header == ["cache", "kind", "split", "images", "on", "disk", "built", "last", "used", "in", "use", "state"]
    assert first[0].startswith("train-") and first[1:5] == ["JPEG", "store", "train", "2"]
    assert first[-2:] == ["use", "valid"] and first[-3] == "in"  # this process holds it open
    assert second[0].startswith("val-") and second[1:6] == ["raw", "centre", "crops", "val", "3"]
    assert second[6:8] == ["0.0", "MiB"] and second[-2:] == ["use", "valid"]
    assert total[:2] == ["2", "caches,"]

    image_cache.release_caches()
    npy = next(cache_dir.glob("*.npy"))
    with open(npy, "r+b") as f:
        f.truncate(npy.stat().st_size - 10)
    _, first, second, _ = listed(capsys, cache_dir)
    assert first[-2:] == ["no", "valid"]
    assert " ".join(second[12:]) == f"no array file is {npy.stat().st_size} bytes, expected " \
                                    f"{npy.stat().st_size + 10} (truncated or partial)"


def test_remove_refuses_a_cache_in_use_then_frees_it(cache_dir):
    names = sorted(path.name for path in cache_dir.iterdir())
    key = next(cache_dir.glob("train-*.jpegs")).name[len("train-"):][:6]
    refused = run_cli("remove", key, str(cache_dir))
    assert refused.returncode == 1 and "a process has it open or is building it. To fix: stop the runs " in refused.stderr
    assert sorted(path.name for path in cache_dir.iterdir()) == names

    image_cache.release_caches()  # as if the run had ended
    dry = run_cli("remove", key, str(cache_dir), "--dry-run")
    assert dry.returncode == 0 and "would remove" in dry.stdout and "(JPEG store, 5 files)" in dry.stdout
    assert sorted(path.name for path in cache_dir.iterdir()) == names
    done = run_cli("remove", key, str(cache_dir))
    assert done.returncode == 0 and "freed" in done.stdout, done.stderr
    assert sorted(path.suffix for path in cache_dir.iterdir()) == [".json", ".lock", ".npy", ".used"]  # the val cache


def test_remove_unused_days_and_bad_usage(cache_dir, capsys):
    image_cache.release_caches()
    assert image_caches.main(["remove", "--unused-days", "2", str(cache_dir)]) == 2  # both used just now
    assert "no cache matched" in capsys.readouterr().err
    old = time.time() - 3 * 86400
    used = next(cache_dir.glob("val-*.used"))
    os.utime(used, (old, old))
    assert image_caches.main(["remove", "--unused-days", "2", str(cache_dir)]) == 0
    assert "removed" in capsys.readouterr().out and not list(cache_dir.glob("val-*"))
    assert image_caches.main(["remove", "0123", str(cache_dir)]) == 2
    with pytest.raises(SystemExit) as stop:
        image_caches.main(["remove", "--all", "--unused-days", "1", str(cache_dir)])
    assert stop.value.code == 2
    with pytest.raises(SystemExit):
        image_caches.main(["remove"])
    assert "remove needs KEY, --all or --unused-days N" in capsys.readouterr().err
    assert image_caches.main(["list", str(cache_dir / "nowhere")]) == 2
