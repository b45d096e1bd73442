"""The JPEG training store: whole images at shorter side 256, built once, checked on every open."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data import DataError, image_cache
from benchmark.data.imageset import decode_center_crop
from benchmark.data.jpeg_store import open_jpeg_store

REPO = Path(__file__).resolve().parents[1]
SIZES = [(300, 400), (500, 200), (200, 150)]  # (width, height): taller, wider, smaller than 256 (upscaled)


def smooth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Colour fields like a photo's, not noise: JPEG keeps them within a few levels."""
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    return coarse.resize((width, height), Image.BICUBIC)


@pytest.fixture()
def sources(tmp_path) -> list[str]:
    rng = np.random.default_rng(5)
    paths = []
    for i, (width, height) in enumerate(SIZES * 4):  # twelve files, JPEG and PNG
        path = tmp_path / "src" / f"{i:02d}.{'png' if i % 3 == 2 else 'JPEG'}"
        path.parent.mkdir(exist_ok=True)
        smooth_image(rng, width, height).save(path, **({"quality": 95} if path.suffix == ".JPEG" else {}))
        paths.append(str(path))
    return paths


@pytest.fixture(autouse=True)
def release():
    yield
    image_cache.release_caches()  # let go of the use locks this test took


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def open_store(paths: list[str], folder: Path, log: Log, **kwargs):
    return open_jpeg_store(paths, folder, "train", log=log, threads=2, **kwargs)


def test_round_trip(sources, tmp_path):
    log = Log()
    store = open_store(sources, tmp_path / "cache", log)
    assert len(store) == 12 and len(log) == 2 and "building (12 images, shorter side 256, quality 90)" in log[0]
    assert store.heights.tolist()[:3] == [341, 256, 256] and store.widths.tolist()[:3] == [256, 640, 341]
    assert store.stored_bytes == store.data_file.stat().st_size == sum(len(b) for b in store.encoded(range(12)))
    assert all(bytes(jpeg[:2]) == b"\xff\xd8" for jpeg in store.encoded([0, 11, -1]))
    whole = store.decode([1, 0])
    assert [image.shape for image in whole] == [(256, 640, 3), (341, 256, 3)] and whole[0].dtype == np.uint8
    crops = store.centre_crops(np.arange(12))
    assert crops.shape == (12, 224, 224, 3) and crops.dtype == np.uint8
    for crop, path in zip(crops, sources):
        assert np.abs(crop.astype(int) - decode_center_crop(path)).mean() < 3
    manifest = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert (manifest["kind"], manifest["side"], manifest["quality"], manifest["count"]) == ("jpeg_store", 256, 90, 12)
    assert sorted(p.name.split(".", 1)[1] for p in (tmp_path / "cache").iterdir()) == [
        "index.npz", "jpegs", "json", "lock", "used"]  # no temporary left behind

    assert open_store(sources, tmp_path / "cache", log) is store and len(log) == 2  # checked, not rebuilt
    image_cache.release_caches()
    again = open_store(sources, tmp_path / "cache", log)  # loaded afresh, still not rebuilt
    assert again is not store and len(log) == 2 and again.encoded([3])[0] == store.encoded([3])[0]


def test_a_changed_source_file_rebuilds(sources, tmp_path):
    log = Log()
    open_store(sources, tmp_path / "cache", log)
    Image.fromarray(np.full((260, 300, 3), 7, np.uint8)).save(sources[4], format="JPEG")
    store = open_store(sources, tmp_path / "cache", log)
    assert f"1 source files changed since the build (first: {sources[4]}); rebuilding" in log[2]
    assert (store.heights[4], store.widths[4]) == (256, 295) and np.abs(store.decode([4])[0].astype(int) - 7).max() <= 2


def test_a_truncated_data_file_and_a_bad_index_rebuild(sources, tmp_path):
    log = Log()
    store = open_store(sources, tmp_path / "cache", log)
    expected = store.centre_crops(np.arange(12))
    with open(store.data_file, "r+b") as f:
        f.truncate(store.stored_bytes - 100)
    rebuilt = open_store(sources, tmp_path / "cache", log)
    assert f"data file is {store.stored_bytes - 100} bytes, expected {store.stored_bytes} (truncated" in log[2]
    np.testing.assert_array_equal(rebuilt.centre_crops(np.arange(12)), expected)

    index = next((tmp_path / "cache").glob("*.index.npz"))
    np.savez(index, offsets=rebuilt.offsets[::-1], heights=rebuilt.heights, widths=rebuilt.widths)
    open_store(sources, tmp_path / "cache", log)
    assert "bad index (index offsets do not rise from 0); rebuilding" in log[4]


def test_another_setting_in_the_manifest_rebuilds(sources, tmp_path):
    log = Log()
    open_store(sources, tmp_path / "cache", log)
    manifest_file = next((tmp_path / "cache").glob("*.json"))
    manifest_file.write_text(manifest_file.read_text().replace('"quality": 90', '"quality": 95'))
    open_store(sources, tmp_path / "cache", log)
    assert "manifest quality 95, expected 90; rebuilding" in log[2]
    open_store(sources, tmp_path / "cache", log, quality=95)  # another setting: another store beside it
    assert len(list((tmp_path / "cache").glob("*.jpegs"))) == 2


def test_too_little_room_names_the_fix(sources, tmp_path, monkeypatch):
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda folder: type("Usage", (), {"free": 1000})())
    with pytest.raises(DataError, match=r"the JPEG store needs 0\.00 GiB in .*cache, only 0\.00 GiB are free\. "
                                        r"To fix: set CIL_IMAGE_CACHE=DIR"):
        open_store(sources, tmp_path / "cache", Log())
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".lock"]  # nothing half-written stays


CHILD = """
import json, sys, time
from pathlib import Path
from benchmark.data import jpeg_store
real, calls = jpeg_store.resized_rgb, []
def slow(path, side):
    calls.append(path)
    time.sleep(0.05)  # long enough for the other process to reach the lock while this one builds
    return real(path, side)
jpeg_store.resized_rgb = slow
paths, cache, go = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
store = jpeg_store.open_jpeg_store(paths, cache, "train", threads=1)
print(json.dumps({"resized": len(calls), "bytes": store.stored_bytes}), flush=True)
"""


def test_two_processes_build_once(sources, tmp_path):
    go = tmp_path / "go"
    command = [sys.executable, "-c", CHILD, json.dumps(sources[:6]), str(tmp_path / "cache"), str(go)]
    children = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    go.touch()  # both open the store at the same moment
    outputs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["resized"] for r in results) == [0, 6]  # one built, the other waited and reused
    assert sum("building" in err for _, err in outputs) == 1
    assert results[0]["bytes"] == results[1]["bytes"] > 0
