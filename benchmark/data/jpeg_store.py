"""The training store of a folder data set: every image whole, shorter side 256, as JPEG, in one file.

The training augmentation (RandomResizedCrop) cuts from the whole image, so training cannot read the
224x224 centre crops that evaluation uses (image_cache.py); and decoded whole images of ImageNet-1000
would take about 250 GB. The store keeps each image resized once (shorter side `side`, the aspect
ratio kept, PIL bilinear with torchvision Resize's size arithmetic, up or down) and re-encoded as JPEG
(simplejpeg, quality 90, 4:2:0 chroma as the ImageNet originals): about 5 times smaller than the
centre crops and decoded at thousands of images/s per core (python -m benchmark.tools.io_speed).

Files, in the cache folder, beside the other caches (image_cache.py explains the locks and the checks):
    <split>-<key>.jpegs       the JPEG bytes of image 0, 1, ..., N-1, one after another
    <split>-<key>.index.npz   offsets int64 [N+1] (image i is bytes offsets[i]:offsets[i+1]), heights,
                              widths int32 [N] (one of the two is always `side`)
    <split>-<key>.json        manifest (kind "jpeg_store"), written last
    <split>-<key>.lock, .used
The data file is memory-mapped read-only, so every worker process of a machine shares its pages.
"""
from __future__ import annotations

import functools
import mmap
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmark.files import atomic_path, stable_hash, write_json_atomic

from .decode import decode_resized
from .image_cache import (NOT_BUILT, Log, check_room, disk_full_names_the_fix, file_facts, manifest_mismatch,
                          open_cache, ordered_map, read_manifest, start_build)

KIND = "jpeg_store"
FORMAT_VERSION = 1
SUBSAMPLING = "420"  # as the ImageNet JPEGs themselves; 4:4:4 costs about a third more bytes (io_speed)
SETTINGS = ("side", "quality", "subsampling")
ROOM_SAMPLE = 256  # images encoded before the disk-room check, to estimate the store's size


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def store_key(paths: Sequence[str], side: int, quality: int) -> str:
    return stable_hash({"kind": KIND, "version": FORMAT_VERSION, "side": side, "quality": quality,
                        "subsampling": SUBSAMPLING, "paths": list(paths)}, digits=16)


def resized_rgb(path: str, side: int) -> np.ndarray:
    """uint8 [h, w, 3] RGB with the shorter side exactly `side`: torchvision Resize(side) on a PIL image,
    so a centre crop of it is the evaluation view (imageset.decode_center_crop)."""
    return decode_resized(path, side)


def encode(image: np.ndarray, quality: int) -> bytes:
    import simplejpeg

    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB",
                                  colorsubsampling=SUBSAMPLING)


def centre_window(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of the centre crop, with torchvision CenterCrop's rounding."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


@functools.lru_cache(maxsize=None)
def _decode_pool(pid: int, threads: int):
    """One pool per process and size (keyed by pid: a pool inherited through fork has no live threads)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jpeg-decode")


def _decode_one(data) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB")  # releases the GIL while it decodes


class JpegStore:
    """The stored images of one split, read-only. Rows are positions in the file list it was built from."""

    def __init__(self, data_file: Path, offsets: np.ndarray, heights: np.ndarray, widths: np.ndarray,
                 threads: int | None = None):
        self.data_file = Path(data_file)
        self.offsets, self.heights, self.widths = offsets, heights, widths
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._map: tuple[int, mmap.mmap | bytes] | None = None  # (pid, map): mapped again after fork

    def __len__(self) -> int:
        return len(self.heights)

    def __repr__(self) -> str:
        return f"JpegStore({len(self)} images, {self.stored_bytes / 2**20:.1f} MiB in {self.data_file})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}  # a worker process maps the file itself

    @property
    def stored_bytes(self) -> int:
        return int(self.offsets[-1])

    def _data(self) -> memoryview:
        if self._map is None or self._map[0] != os.getpid():
            if self.stored_bytes == 0:  # mmap refuses an empty file
                data: mmap.mmap | bytes = b""
            else:
                with open(self.data_file, "rb") as f:
                    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._map = (os.getpid(), data)
        return memoryview(self._map[1])

    def encoded(self, rows: Sequence[int] | np.ndarray) -> list[memoryview]:
        """The stored JPEG bytes of those rows (views of the memory map: no copy), e.g. for a GPU decoder."""
        data, offsets = self._data(), self.offsets
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"rows {rows.min()}..{rows.max()} are outside a store of {len(self)} images")
        rows = rows % max(len(self), 1)
        return [data[offsets[row]:offsets[row + 1]] for row in rows.tolist()]

    def decode(self, rows: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """uint8 [h, w, 3] RGB of those rows, decoded on this process's thread pool."""
        encoded = self.encoded(rows)
        if len(encoded) <= 1:  # not worth a round trip through the pool
            return [_decode_one(data) for data in encoded]
        return list(_decode_pool(os.getpid(), self.threads).map(_decode_one, encoded))

    def centre_crops(self, rows: Sequence[int] | np.ndarray, crop: int = 224) -> np.ndarray:
        """uint8 [n, crop, crop, 3]: the evaluation view (CenterCrop(crop) of the stored Resize(side))."""
        images = self.decode(rows)
        out = np.empty((len(images), crop, crop, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            top, left = centre_window(image.shape[0], image.shape[1], crop)
            out[i] = image[top:top + crop, left:left + crop]
        return out


# ------------------------------------------------------------------------------------------- checks


def _expected_manifest(paths: Sequence[str], side: int, quality: int) -> dict:
    return {"kind": KIND, "format_version": FORMAT_VERSION, "count": len(paths), "side": side,
            "quality": quality, "subsampling": SUBSAMPLING, "files": file_facts(paths)}


def _read_index(index_file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(index_file) as index:
        return index["offsets"], index["heights"], index["widths"]


def index_mismatch(offsets: np.ndarray, heights: np.ndarray, widths: np.ndarray, count: int,
                   side: int) -> str | None:
    """Why an index cannot describe `count` images of shorter side `side` (None: it can)."""
    if offsets.shape != (count + 1,) or heights.shape != (count,) or widths.shape != (count,):
        return f"index holds {offsets.shape} offsets, {heights.shape} heights, {widths.shape} widths for {count} images"
    if count and (offsets[0] != 0 or (np.diff(offsets) <= 0).any()):
        return "index offsets do not rise from 0"
    if count and (np.minimum(heights, widths) != side).any():
        return f"index sizes whose shorter side is not {side}"
    return None


def stored_mismatch(data_file: Path, index_file: Path, count: int, side: int) -> str | None:
    """Why the data and index files are not a whole store of `count` images (None: they are)."""
    if not data_file.exists() or not index_file.exists():
        return NOT_BUILT
    try:
        offsets, heights, widths = _read_index(index_file)
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable index ({err})"
    reason = index_mismatch(offsets, heights, widths, count, side)
    if reason is not None:
        return f"bad index ({reason})"
    size = data_file.stat().st_size
    if size != offsets[-1]:
        return f"data file is {size} bytes, expected {offsets[-1]} (truncated or partial)"
    return None


def _mismatch(data_file: Path, index_file: Path, manifest_file: Path, expected: dict) -> str | None:
    """Why the store on disk cannot be reused (None: it can)."""
    if not data_file.exists() or not index_file.exists():
        return NOT_BUILT
    found, reason = read_manifest(manifest_file)
    if found is None:
        return reason
    return (manifest_mismatch(found, expected, SETTINGS)
            or stored_mismatch(data_file, index_file, expected["count"], expected["side"]))


# -------------------------------------------------------------------------------------------- build


def open_jpeg_store(paths: Sequence[str], cache_dir: str | Path, split: str, side: int = 256, quality: int = 90,
                    log: Log = _stderr, threads: int | None = None) -> JpegStore:
    """The store of `paths` (shorter side `side`, JPEG `quality`), built here if needed; held open
    (image_cache.open_cache) until the process exits."""
    cache_dir = Path(cache_dir)
    stem = f"{split}-{store_key(paths, side, quality)}"
    data_file, index_file = cache_dir / f"{stem}.jpegs", cache_dir / f"{stem}.index.npz"
    manifest_file = cache_dir / f"{stem}.json"
    expected: dict = {}

    def mismatch() -> str | None:
        expected.update(_expected_manifest(paths, side, quality))  # under the lock: stats every file once
        return _mismatch(data_file, index_file, manifest_file, expected)

    def build(reason: str) -> None:
        verb = "building" if reason == NOT_BUILT else f"{reason}; rebuilding"
        log(f"JPEG store {data_file}: {verb} ({len(paths)} images, shorter side {side}, quality {quality})")
        _build(paths, side, quality, data_file, index_file, manifest_file, expected, log, threads)

    def load() -> JpegStore:
        return JpegStore(data_file, *_read_index(index_file), threads=threads)

    return open_cache(cache_dir, stem, mismatch, build, load)


def _build(paths: Sequence[str], side: int, quality: int, data_file: Path, index_file: Path,
           manifest_file: Path, manifest: dict, log: Log, threads: int | None) -> None:
    """Resize and encode into a temporary data file, rename it, then the index, then the manifest."""
    start_build(manifest_file, data_file, index_file)
    count = len(paths)
    offsets = np.zeros(count + 1, dtype=np.int64)
    heights, widths = np.zeros(count, dtype=np.int32), np.zeros(count, dtype=np.int32)

    def work(i: int) -> bytes:
        image = resized_rgb(paths[i], side)
        heights[i], widths[i] = image.shape[:2]
        return encode(image, quality)

    started = time.perf_counter()
    with disk_full_names_the_fix(data_file.parent, "JPEG store"), atomic_path(data_file) as temporary:
        with open(temporary, "wb") as out:
            for i, jpeg in enumerate(ordered_map(work, count, threads, f"storing {count} images")):
                if i + 1 == min(ROOM_SAMPLE, count):  # nothing big written yet: stop early if it cannot fit
                    check_room(data_file.parent, (offsets[i] + len(jpeg)) * count // (i + 1) * 5 // 4, "JPEG store")
                out.write(jpeg)
                offsets[i + 1] = offsets[i] + len(jpeg)
    with atomic_path(index_file) as temporary, open(temporary, "wb") as out:
        np.savez(out, offsets=offsets, heights=heights, widths=widths)
    manifest["data_bytes"] = int(offsets[-1])
    write_json_atomic(manifest_file, manifest, indent=None)
    seconds = time.perf_counter() - started
    log(f"JPEG store {data_file}: built {count} images in {seconds:.1f} s ({count / seconds:.0f} images/s, "
        f"{offsets[-1] / max(count, 1) / 1024:.1f} KiB each)")
