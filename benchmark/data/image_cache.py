"""Decoded-image cache for folder data sets: every image decoded ONCE into a uint8 .npy memory map.

A paper-profile ImageNet-100 run decodes about 20 million JPEGs if every batch goes through PIL; with
the cache, a batch is a gather of rows from a [N, 224, 224, 3] uint8 array (page cache or disk).

Layout, in the cache folder (default DATA/imagenet100/.cache, or $CIL_IMAGE_CACHE):
    <split>-<key>.npy    uint8 [N, H, W, 3], row i = the decoded file i (numpy .npy, memory-mapped)
    <split>-<key>.json   manifest: format version, shape, transform, every file's (path, size, mtime)
    <split>-<key>.lock   fcntl lock: one process of a machine builds, the others wait and then reuse
The key hashes the file list and the transform, so a subset or another crop is another cache; the
manifest catches files changed in place and a truncated array catches an interrupted copy. Labels are
not stored: they are renumbered per seed (relabel), while the images of a file list never change.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from benchmark.files import atomic_path, stable_hash, stale_temporaries, write_json_atomic

from .errors import DataError

FORMAT_VERSION = 1
CACHE_ENV = "CIL_IMAGE_CACHE"  # a folder for the caches, or "off" to decode every batch instead
OFF = ("off", "0", "none", "false")
FIX = (f"set {CACHE_ENV}=DIR to a writable folder with room for the cache, "
       f"or {CACHE_ENV}=off to decode every batch (much slower)")

Decode = Callable[[str], np.ndarray]
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cache_dir_for(data_folder: str | Path) -> Path | None:
    """Where a data set's caches go: $CIL_IMAGE_CACHE, else DATA_FOLDER/.cache; None when turned off."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in OFF:
        return None
    return Path(setting).expanduser() if setting else Path(data_folder) / ".cache"


def cache_key(paths: Sequence[str], transform: dict) -> str:
    """16 hex digits naming the file list and the transform (the hash of run ids and first-task keys)."""
    return stable_hash({"version": FORMAT_VERSION, "transform": transform, "paths": list(paths)}, digits=16)


def _file_facts(paths: Sequence[str]) -> list[list]:
    """(path, size, mtime_ns) of every source file: what the manifest pins."""
    facts = []
    for path in paths:
        stat = os.stat(path)
        facts.append([path, stat.st_size, stat.st_mtime_ns])
    return facts


def _manifest(paths: Sequence[str], shape: tuple[int, ...], transform: dict) -> dict:
    return {"format_version": FORMAT_VERSION, "count": len(paths), "shape": [len(paths), *shape],
            "dtype": "uint8", "transform": transform, "files": _file_facts(paths)}


def _npy_data_offset(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """(where the data starts, shape, dtype) from a .npy header."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version}")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read_header(f)
        return f.tell(), shape, dtype


def _mismatch(npy: Path, manifest_file: Path, expected: dict) -> str | None:
    """Why the cache on disk cannot be reused (None: it can)."""
    if not npy.exists() or not manifest_file.exists():
        return "not built yet"
    try:
        found = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    if found.get("format_version") != FORMAT_VERSION:
        return f"format version {found.get('format_version')}, expected {FORMAT_VERSION}"
    for field in ("shape", "dtype", "transform"):
        if found.get(field) != expected[field]:
            return f"manifest {field} {found.get(field)}, expected {expected[field]}"
    changed = [new[0] for old, new in zip(found.get("files", []), expected["files"]) if old != new]
    if len(found.get("files", [])) != len(expected["files"]) or changed:
        first = f" (first: {changed[0]})" if changed else ""
        return f"{len(changed)} source files changed since the build{first}"
    try:
        offset, shape, dtype = _npy_data_offset(npy)
    except (OSError, ValueError) as err:
        return f"unreadable array header ({err})"
    if list(shape) != expected["shape"] or dtype != np.uint8:
        return f"array is {dtype} {shape}, expected uint8 {expected['shape']}"
    size, wanted = npy.stat().st_size, offset + int(np.prod(shape))
    if size != wanted:
        return f"array file is {size} bytes, expected {wanted} (truncated or partial)"
    return None


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Exclusive across the processes of a machine (flock; not reliable on some network filesystems).
    Closing the file releases the lock, also when the process dies."""
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_file, "a")
    except OSError as err:
        raise DataError(f"cannot write the decoded-image cache in {lock_file.parent}: {err}. To fix: {FIX}") from err
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def open_image_cache(paths: Sequence[str], decode: Decode, shape: tuple[int, int, int], transform: dict,
                     cache_dir: str | Path, split: str, log: Log = _stderr, threads: int | None = None) -> np.ndarray:
    """The decoded images of `paths` as a read-only uint8 memmap [N, *shape], built here if needed.

    `decode(path)` must return uint8 `shape`; `transform` names what decode does (it is part of the key).
    """
    cache_dir = Path(cache_dir)
    stem = f"{split}-{cache_key(paths, transform)}"
    npy, manifest_file = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    with _locked(cache_dir / f"{stem}.lock"):
        expected = _manifest(paths, shape, transform)
        reason = _mismatch(npy, manifest_file, expected)
        if reason is not None:
            verb = "building" if reason == "not built yet" else f"{reason}; rebuilding"
            log(f"image cache {npy}: {verb} ({len(paths)} images, {_gib(len(paths), shape):.2f} GiB)")
            _build(paths, decode, shape, npy, manifest_file, expected, log, threads)
    return np.load(npy, mmap_mode="r")


def _gib(count: int, shape: tuple[int, ...]) -> float:
    return count * int(np.prod(shape)) / 2**30


def _build(paths: Sequence[str], decode: Decode, shape: tuple[int, int, int], npy: Path, manifest_file: Path,
           manifest: dict, log: Log, threads: int | None) -> None:
    """Decode into a temporary .npy, then rename it and write the manifest (last: it marks completion)."""
    manifest_file.unlink(missing_ok=True)  # from here on a crash leaves a cache that fails the check
    for stale in stale_temporaries(npy) + stale_temporaries(manifest_file):  # of a killed build (we hold the lock)
        stale.unlink()
    _check_room(npy.parent, len(paths), shape)
    started = time.perf_counter()
    with atomic_path(npy) as temporary:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))
        _decode_into(out, paths, decode, threads)
        out.flush()
        del out
    write_json_atomic(manifest_file, manifest, indent=None)
    seconds = time.perf_counter() - started
    log(f"image cache {npy}: built {len(paths)} images in {seconds:.1f} s ({len(paths) / seconds:.0f} images/s)")


def _check_room(folder: Path, count: int, shape: tuple[int, ...]) -> None:
    need, free = count * int(np.prod(shape)) + 2**20, shutil.disk_usage(folder).free
    if free < need:
        raise DataError(f"the decoded-image cache needs {need / 2**30:.2f} GiB in {folder}, "
                        f"only {free / 2**30:.2f} GiB are free. To fix: {FIX}")


def _decode_into(out: np.ndarray, paths: Sequence[str], decode: Decode, threads: int | None) -> None:
    """out[i] = decode(paths[i]) on a thread pool: PIL releases the GIL while it decodes and resizes."""
    from tqdm import tqdm

    def work(i: int) -> None:
        image = decode(paths[i])
        if image.shape != out.shape[1:] or image.dtype != np.uint8:
            raise ValueError(f"decoding {paths[i]} gave {image.dtype} {image.shape}, expected uint8 {out.shape[1:]}")
        out[i] = image

    workers = threads or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cache-build")
    try:
        # disable=None: a progress bar on a terminal, silence in worker log files.
        with tqdm(total=len(paths), desc=f"decoding {len(paths)} images", unit="img", disable=None) as bar:
            for _ in pool.map(work, range(len(paths))):
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error, do not decode the rest
