"""What a folder data set keeps on disk, built once: the discipline every cache follows, and the
decoded-image cache of evaluation views (uint8 centre crops in one .npy memory map).

A paper-profile ImageNet-100 run decodes about 20 million JPEGs if every batch goes through PIL; with
a cache, a batch is a gather of rows from a [N, 224, 224, 3] uint8 array (page cache or disk). The
training images are kept whole instead (jpeg_store.py), because the training augmentation crops from
the whole image; both kinds follow the rules below.

Files of one cache, in the cache folder (default DATA/imagenet100/.cache, or $CIL_IMAGE_CACHE), all
named <split>-<key>.*, the key hashing the file list and what is kept of each file:
    .npy        (this module) uint8 [N, H, W, 3], row i = the decoded file i, memory-mapped
    .jpegs, .index.npz   (jpeg_store.py) the JPEG bytes of every image, one after another; where each starts
    .json       manifest: kind, format version, what was kept, every source file's (path, size, mtime);
                written last, so a cache without one is an interrupted build
    .lock       build lock: one process of a machine checks or builds at a time (flock LOCK_EX, briefly)
    .used       use lock: every process that has the cache open holds flock LOCK_SH on it until it exits
                (or calls release_caches), so `python -m benchmark.tools.image_caches remove` can tell a
                cache in use; its mtime is the cache's last use
Two lock files, not one: a lock held for a whole run cannot also be the build lock, or a second run
would wait for the first to end before it could even check the cache. Openers take .lock, then .used;
remove takes both (without waiting), in the same order.
The manifest catches source files changed in place, the data file's size an interrupted copy. A rebuild
writes new files and renames them over the old ones, so a process still reading the old ones keeps its
(old, consistent) view. Labels are not stored: they are renumbered per seed (relabel), while the images
of a file list never change.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from benchmark.files import atomic_path, stable_hash, stale_temporaries, write_json_atomic

from .errors import DataError

FORMAT_VERSION = 1
KIND = "centre_crops"
CACHE_ENV = "CIL_IMAGE_CACHE"  # a folder for the caches, or "off" to decode every batch instead
OFF = ("off", "0", "none", "false")
FIX = (f"set {CACHE_ENV}=DIR to a writable folder with room for the cache, "
       f"or {CACHE_ENV}=off to decode every batch (much slower)")
NOT_BUILT = "not built yet"

Decode = Callable[[str], np.ndarray]
Log = Callable[[str], None]
T = TypeVar("T")


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


# ------------------------------------------------------------------------------ shared by every cache


def file_facts(paths: Sequence[str]) -> list[list]:
    """(path, size, mtime_ns) of every source file: what the manifest pins."""
    facts = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as err:
            raise DataError(f"cannot read the source image {path}: {err}") from err
        facts.append([path, stat.st_size, stat.st_mtime_ns])
    return facts


def read_manifest(manifest_file: Path) -> tuple[dict | None, str | None]:
    """(manifest, None), or (None, why it cannot be used)."""
    if not manifest_file.exists():
        return None, NOT_BUILT
    try:
        return json.loads(manifest_file.read_text()), None
    except (OSError, ValueError) as err:
        return None, f"unreadable manifest ({err})"


def manifest_mismatch(found: dict, expected: dict, fields: Sequence[str]) -> str | None:
    """Why a manifest on disk does not describe the cache wanted now: another kind, format version or
    setting (`fields`), or source files added, removed or changed since the build."""
    for field in ("kind", "format_version", *fields):
        if found.get(field, KIND if field == "kind" else None) != expected[field]:
            return f"manifest {field} {found.get(field)}, expected {expected[field]}"
    old, new = found.get("files", []), expected["files"]
    changed = [now[0] for before, now in zip(old, new) if before != now]
    if len(old) != len(new) or changed:
        first = f" (first: {changed[0]})" if changed else ""
        return f"{max(len(changed), abs(len(old) - len(new)))} source files changed since the build{first}"
    return None


def check_room(folder: Path, need: int, what: str) -> None:
    """DataError naming the fix when `folder` has less than `need` bytes free."""
    need += 2**20
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DataError(f"the {what} needs {need / 2**30:.2f} GiB in {folder}, "
                        f"only {free / 2**30:.2f} GiB are free. To fix: {FIX}")


def start_build(manifest_file: Path, *outputs: Path) -> None:
    """Before a build writes `outputs`: the manifest goes first (from here on a crash leaves a cache
    that fails the check) and a killed build's temporaries are removed (we hold the build lock)."""
    manifest_file.unlink(missing_ok=True)
    for output in (manifest_file, *outputs):
        for stale in stale_temporaries(output):
            stale.unlink(missing_ok=True)


@contextmanager
def disk_full_names_the_fix(folder: Path, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise DataError(f"the disk holding {folder} filled up while writing the {what}. To fix: {FIX}") from err


def ordered_map(work: Callable[[int], T], count: int, threads: int | None, desc: str,
                window: int = 1024) -> Iterator[T]:
    """work(0), ..., work(count - 1) in order, computed on a thread pool (PIL and simplejpeg release the
    GIL) a window at a time, so a million images never queue a million futures; a progress bar on a
    terminal, silence in worker log files."""
    from tqdm import tqdm

    pool = ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1), thread_name_prefix="cache-build")
    try:
        with tqdm(total=count, desc=desc, unit="img", disable=None) as bar:
            for start in range(0, count, window):
                for result in pool.map(work, range(start, min(start + window, count))):
                    bar.update()
                    yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error, do not decode the rest


# --------------------------------------------------------------------------------- locks and openers


@dataclass
class _Opened:
    use_lock: IO  # the .used file, LOCK_SH held while this process has the cache open
    value: Any


_OPEN: dict[tuple[int, str], _Opened] = {}  # (pid, .used path) -> the opened cache of this process


def _locked_file(path: Path, mode: int) -> IO:
    """`path` opened and flock'ed with `mode`; if it was removed (by `remove`) while we waited, the
    lock we got is on a deleted file, so the new file is locked instead."""
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, mode)
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        except BaseException:
            handle.close()
            raise
        handle.close()


def _writable_lock(path: Path, mode: int) -> IO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _locked_file(path, mode)
    except OSError as err:
        raise DataError(f"cannot write the decoded-image cache in {path.parent}: {err}. To fix: {FIX}") from err


def open_cache(folder: Path, stem: str, mismatch: Callable[[], str | None], build: Callable[[str], None],
               load: Callable[[], T]) -> T:
    """The cache `stem` in `folder`, checked (and built when `mismatch()` gives a reason) under the
    build lock; this process then holds the use lock until it exits. Opened again in this process, it
    is checked again but not loaded again unless it had to be rebuilt."""
    folder = Path(folder)
    key = (os.getpid(), str(folder / f"{stem}.used"))
    with _writable_lock(folder / f"{stem}.lock", fcntl.LOCK_EX):  # closing it releases the build lock
        reason = mismatch()
        opened = _OPEN.get(key)
        if reason is not None:
            build(reason)
        if reason is not None or opened is None:
            value = load()
            use_lock = opened.use_lock if opened else _writable_lock(folder / f"{stem}.used", fcntl.LOCK_SH)
            opened = _OPEN[key] = _Opened(use_lock, value)
    os.utime(opened.use_lock.fileno())  # the last-use time that `image_caches list` shows
    return opened.value


def release_caches() -> None:
    """Let go of the use locks of every cache this process opened (the caches already handed out stay
    readable, but `remove` no longer sees them in use). For tests and long-lived processes."""
    for key in [key for key in _OPEN if key[0] == os.getpid()]:
        _OPEN.pop(key).use_lock.close()


# ------------------------------------------------------------------------- the centre-crop .npy cache


def _manifest(paths: Sequence[str], shape: tuple[int, ...], transform: dict) -> dict:
    return {"kind": KIND, "format_version": FORMAT_VERSION, "count": len(paths), "shape": [len(paths), *shape],
            "dtype": "uint8", "transform": transform, "files": file_facts(paths)}


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


def npy_mismatch(npy: Path, shape: Sequence[int]) -> str | None:
    """Why the array file is not a whole uint8 array of `shape` (None: it is)."""
    if not npy.exists():
        return NOT_BUILT
    try:
        offset, found, dtype = _npy_data_offset(npy)
    except (OSError, ValueError) as err:
        return f"unreadable array header ({err})"
    if list(found) != list(shape) or dtype != np.uint8:
        return f"array is {dtype} {found}, expected uint8 {list(shape)}"
    size, wanted = npy.stat().st_size, offset + int(np.prod(found))
    if size != wanted:
        return f"array file is {size} bytes, expected {wanted} (truncated or partial)"
    return None


def _mismatch(npy: Path, manifest_file: Path, expected: dict) -> str | None:
    """Why the cache on disk cannot be reused (None: it can)."""
    if not npy.exists():
        return NOT_BUILT
    found, reason = read_manifest(manifest_file)
    if found is None:
        return reason
    return manifest_mismatch(found, expected, ("shape", "dtype", "transform")) or npy_mismatch(npy, expected["shape"])


def open_image_cache(paths: Sequence[str], decode: Decode, shape: tuple[int, int, int], transform: dict,
                     cache_dir: str | Path, split: str, log: Log = _stderr, threads: int | None = None) -> np.ndarray:
    """The decoded images of `paths` as a read-only uint8 memmap [N, *shape], built here if needed.

    `decode(path)` must return uint8 `shape`; `transform` names what decode does (it is part of the key).
    """
    cache_dir = Path(cache_dir)
    stem = f"{split}-{cache_key(paths, transform)}"
    npy, manifest_file = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    expected: dict = {}

    def mismatch() -> str | None:
        expected.update(_manifest(paths, shape, transform))  # under the lock: stats every file once
        return _mismatch(npy, manifest_file, expected)

    def build(reason: str) -> None:
        verb = "building" if reason == NOT_BUILT else f"{reason}; rebuilding"
        log(f"image cache {npy}: {verb} ({len(paths)} images, {_gib(len(paths), shape):.2f} GiB)")
        _build(paths, decode, shape, npy, manifest_file, expected, log, threads)

    return open_cache(cache_dir, stem, mismatch, build, lambda: np.load(npy, mmap_mode="r"))


def _gib(count: int, shape: tuple[int, ...]) -> float:
    return count * int(np.prod(shape)) / 2**30


def _build(paths: Sequence[str], decode: Decode, shape: tuple[int, int, int], npy: Path, manifest_file: Path,
           manifest: dict, log: Log, threads: int | None) -> None:
    """Decode into a temporary .npy, then rename it and write the manifest (last: it marks completion)."""
    start_build(manifest_file, npy)
    check_room(npy.parent, len(paths) * int(np.prod(shape)), "decoded-image cache")
    started = time.perf_counter()
    with disk_full_names_the_fix(npy.parent, "decoded-image cache"), atomic_path(npy) as temporary:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))
        _decode_into(out, paths, decode, threads)
        out.flush()
        del out
    write_json_atomic(manifest_file, manifest, indent=None)
    seconds = time.perf_counter() - started
    log(f"image cache {npy}: built {len(paths)} images in {seconds:.1f} s ({len(paths) / seconds:.0f} images/s)")


def _decode_into(out: np.ndarray, paths: Sequence[str], decode: Decode, threads: int | None) -> None:
    """out[i] = decode(paths[i]), on a thread pool."""

    def work(i: int) -> None:
        image = decode(paths[i])
        if image.shape != out.shape[1:] or image.dtype != np.uint8:
            raise ValueError(f"decoding {paths[i]} gave {image.dtype} {image.shape}, expected uint8 {out.shape[1:]}")
        out[i] = image

    for _ in ordered_map(work, len(paths), threads, f"decoding {len(paths)} images"):
        pass
