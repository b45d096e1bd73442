"""Images/s of the folder (ImageNet) data path: PIL decoding per batch vs reading the decoded cache.

    python -m benchmark.tools.io_speed --images 2000

Builds a synthetic ImageFolder of JPEGs at ImageNet-like size and quality in a temporary folder, then
reads every image once in shuffled batches, as a training epoch does, through
  - decode: FolderSource.images, the per-batch PIL path (resize 256, centre crop 224 on a thread pool);
  - cache:  CachedSource.batches, rows gathered from the uint8 memory map, the next batch prefetched;
and reports the one-time cache build separately. Reading only: no training step runs, so the
numbers are the data path's ceiling. The cache file is freshly written, so its reads come from the
page cache; a cache larger than RAM reads from disk at the disk's speed instead.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.train.batches import CachedSource, FolderSource
from benchmark.data import FolderImageSet

CLASSES = 10


def make_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """`count` JPEGs of `size` (width, height): smooth colour fields plus grain, quality 90, so file
    sizes (about 60-100 KB at 500x375) and decode work resemble ImageNet photos, unlike pure noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 12, (size[1], size[0], 3)).astype(np.int16)
        path = folder / f"n{i % CLASSES:02d}" / f"{i:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def time_pass(read_batches) -> float:
    started = time.perf_counter()
    for _ in read_batches():
        pass
    return time.perf_counter() - started


def measure(count: int, batch_size: int, size: tuple[int, int], workdir: Path) -> dict:
    cpu = torch.device("cpu")
    paths = make_jpegs(workdir / "train", count, size)
    labels = np.arange(count) % CLASSES
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    decoding = FolderSource(FolderImageSet(paths, labels), cpu)
    decode_s = time_pass(lambda: (decoding.images(rows) for rows in order.split(batch_size)))

    image_set = FolderImageSet(paths, labels, cache_dir=workdir / "cache", split="train")
    started = time.perf_counter()
    cached = CachedSource(image_set.cached_images(), labels, cpu)
    build_s = time.perf_counter() - started
    cache_s = [time_pass(lambda: cached.batches(order, batch_size)) for _ in range(2)]
    sample = order[:8]
    assert torch.equal(decoding.images(sample), cached.images(sample)), "cache and decoding disagree"
    return {"images": count, "batch_size": batch_size, "jpeg_kb": _mean_kb(paths),
            "decode_images_per_s": count / decode_s, "build_seconds": build_s, "build_images_per_s": count / build_s,
            "cache_images_per_s": count / min(cache_s), "cache_gib": count * 224 * 224 * 3 / 2**30}


def _mean_kb(paths: list[str]) -> float:
    return float(np.mean([Path(p).stat().st_size for p in paths])) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic JPEGs to read (default 2000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", default="500x375", help="JPEG width x height (default 500x375, ImageNet's mode)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the JPEGs and the cache "
                        "(default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch_size < 1:
        parser.error("--images and --batch-size must be at least 1")
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) >= 224
    except (ValueError, AssertionError):
        parser.error(f"--size {args.size!r}: expected WIDTHxHEIGHT with both at least 224, e.g. 500x375")
    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="io_speed-"))
    try:
        r = measure(args.images, args.batch_size, size, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{r['images']} JPEGs of {args.size} (mean {r['jpeg_kb']:.0f} KB), shuffled batches of {r['batch_size']}:")
    print(f"  decode per batch (PIL):  {r['decode_images_per_s']:8.0f} images/s")
    print(f"  cache build, once:       {r['build_seconds']:8.1f} s ({r['build_images_per_s']:.0f} images/s, "
          f"{r['cache_gib']:.2f} GiB)")
    print(f"  cache reads:             {r['cache_images_per_s']:8.0f} images/s "
          f"({r['cache_images_per_s'] / r['decode_images_per_s']:.0f}x)")


if __name__ == "__main__":
    main()
