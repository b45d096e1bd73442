"""Bytes and images/s of the ways a folder (ImageNet) data set can be kept on disk for training.

    python -m benchmark.tools.io_speed [--images 2000] [--json FILE]
    python -m benchmark.tools.io_speed --dali-site /tmp/dali-venv/lib/python3.11/site-packages

Builds a synthetic ImageFolder of JPEGs at ImageNet-like size and quality in a temporary folder (the
mean file size is printed: ImageNet's training JPEGs average about 110 KB), then, for each candidate:
the one-time build (seconds, images/s), bytes on disk per image (and the projection to ImageNet-1000's
1,281,167 training images), the train pipeline (read + decode + RandomResizedCrop, flip, normalize:
augmentation.ImageNetAugmentation; decode only while it does not exist, and the output says so),
decode alone (whole images, HWC uint8) and the test pipeline (the Resize(256) + CenterCrop(224) view), images/s over one epoch in shuffled
batches of --batch-size on this CPU, with --threads decoding threads. Candidates:
  - jpeg-q90 (the store training reads, jpeg_store.py), jpeg-q95: whole images, shorter side 256;
  - raw-crops: the raw uint8 224x224 centre-crop cache (image_cache.py) that the store replaced for
    training: it cannot serve RandomResizedCrop from the whole image, so its train figure is a read;
  - raw-256: whole images, shorter side 256, as raw uint8 (bytes only: too big to be a choice);
  - pil: no cache, the original JPEGs decoded with PIL per batch (test view);
  - dali: NVIDIA DALI's CPU pipeline (fn.readers.file + fn.decoders.image(device="cpu") +
    fn.random_resized_crop + flip + normalize, --threads threads) on the original JPEGs, and from the
    JPEG-q90 store's bytes through fn.external_source. Only when `nvidia.dali` imports; it stays out
    of the suite's venv: install it in a venv of its own and pass that venv's site-packages folder
    as --dali-site (appended to sys.path, so the suite's own packages win).
Reading only, no training step: the numbers are each data path's ceiling. Freshly written files are
read from the page cache; a store larger than RAM reads at the disk's speed instead.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.data import FolderImageSet
from benchmark.data.image_cache import release_caches
from benchmark.data.jpeg_store import open_jpeg_store
from benchmark.data.specs import dataset_spec
from benchmark.train import augmentation

CLASSES = 10
IMAGENET1000_TRAIN = 1_281_167
QUALITIES = (90, 95)


def make_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """`count` JPEGs of `size` (width, height): smooth colour fields plus grain, quality 90, so file
    sizes (about 75 KB at 500x375) and decode work resemble ImageNet photos, unlike pure noise."""
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


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed_epoch(read, order: np.ndarray, batch_size: int) -> float:
    """images/s of read(rows) over every batch of `order`."""
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        read(order[start:start + batch_size])
    return rate(len(order), time.perf_counter() - started)


def _augmentation():
    """The ImageNet training augmentation, or None while augmentation.py has none."""
    recipe = getattr(augmentation, "ImageNetAugmentation", None)
    if recipe is None:
        return None
    spec = dataset_spec("imagenet100")
    return recipe(spec.mean, spec.std, channels_last=False)


def measure_store(paths: list[str], workdir: Path, quality: int, order: np.ndarray, batch_size: int,
                  threads: int) -> dict:
    started = time.perf_counter()
    store = open_jpeg_store(paths, workdir / "cache", "train", quality=quality, log=lambda line: None,
                            threads=threads)
    build = time.perf_counter() - started
    augment, generator = _augmentation(), torch.Generator().manual_seed(0)

    def train(rows: np.ndarray) -> None:
        images = [torch.from_numpy(image).permute(2, 0, 1) for image in store.decode(rows)]
        if augment is not None:
            augment.train(images, generator)

    return {"build_seconds": build, "build_images_per_s": rate(len(paths), build),
            "bytes_per_image": store.stored_bytes / len(paths),
            "raw_256_bytes_per_image": float(np.mean(store.heights.astype(np.int64) * store.widths * 3)),
            "decode_images_per_s": timed_epoch(store.decode, order, batch_size),
            "train_images_per_s": timed_epoch(train, order, batch_size),
            "test_images_per_s": timed_epoch(store.centre_crops, order, batch_size)}


def measure_raw_crops(paths: list[str], workdir: Path, order: np.ndarray, batch_size: int) -> dict:
    image_set = FolderImageSet(paths, np.zeros(len(paths)), cache_dir=workdir / "cache", split="val")
    started = time.perf_counter()
    crops = image_set.cached_images()
    build = time.perf_counter() - started
    read = timed_epoch(lambda rows: torch.from_numpy(crops[np.sort(rows)]), order, batch_size)
    pil = timed_epoch(image_set.read, order[:min(len(order), 4 * batch_size)], batch_size)
    return {"build_seconds": build, "build_images_per_s": rate(len(paths), build),
            "bytes_per_image": crops.nbytes / len(paths), "train_images_per_s": read, "test_images_per_s": read,
            "pil_test_images_per_s": pil}


def dali_available(site: Path | None) -> str | None:
    """None when nvidia.dali imports, else why not."""
    if site is not None:
        sys.path.append(str(site))
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        return f"not installed ({err})"
    return None


def measure_dali(paths: list[str], store_paths: list[str], workdir: Path, batch_size: int, threads: int) -> dict:
    """DALI's CPU pipelines, one epoch each after a warm-up batch."""
    from nvidia.dali import fn, pipeline_def, types

    spec = dataset_spec("imagenet100")
    mean, std = [255 * m for m in spec.mean], [255 * s for s in spec.std]
    store = open_jpeg_store(store_paths, workdir / "cache", "train", quality=90, log=lambda line: None)

    def finish(images, train: bool):
        if train:
            images = fn.random_resized_crop(images, size=(224, 224))
            return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std,
                                            mirror=fn.random.coin_flip())
        images = fn.resize(images, resize_shorter=256, interp_type=types.INTERP_LINEAR)
        return fn.crop_mirror_normalize(images, crop=(224, 224), dtype=types.FLOAT, output_layout="CHW",
                                        mean=mean, std=std)

    def from_files(train: bool):
        @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None, seed=0)
        def pipeline():
            jpegs, _ = fn.readers.file(files=paths, labels=[0] * len(paths), random_shuffle=True)
            return finish(fn.decoders.image(jpegs, device="cpu", output_type=types.RGB), train)
        return pipeline()

    def from_store():
        order = np.random.default_rng(0).permutation(len(store))

        def batches():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                rows = np.resize(rows, batch_size)  # DALI wants full batches: wrap the last one
                yield [np.frombuffer(jpeg, dtype=np.uint8) for jpeg in store.encoded(rows)]

        @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None, seed=0)
        def pipeline():
            jpegs = fn.external_source(source=batches, cycle="quiet", dtype=types.UINT8)
            return finish(fn.decoders.image(jpegs, device="cpu", output_type=types.RGB), True)
        return pipeline()

    def run(pipe, count: int) -> float:
        pipe.build()
        pipe.run()  # warm-up: allocations, thread start
        batches = math.ceil(count / batch_size)
        started = time.perf_counter()
        for _ in range(batches):
            pipe.run()
        return rate(batches * batch_size, time.perf_counter() - started)

    return {"train_images_per_s": run(from_files(True), len(paths)),
            "test_images_per_s": run(from_files(False), len(paths)),
            "store_train_images_per_s": run(from_store(), len(store))}


def measure(count: int, batch_size: int, size: tuple[int, int], workdir: Path, threads: int,
            dali_site: Path | None = None) -> dict:
    paths = make_jpegs(workdir / "train", count, size)
    order = np.random.default_rng(0).permutation(count)
    result = {"images": count, "batch_size": batch_size, "threads": threads, "size": list(size),
              "source_kb": float(np.mean([Path(p).stat().st_size for p in paths])) / 1024,
              "augmentation": "ImageNetAugmentation" if _augmentation() is not None else "none (decode only)"}
    candidates = {"raw-crops": measure_raw_crops(paths, workdir, order, batch_size)}
    for quality in QUALITIES:
        candidates[f"jpeg-q{quality}"] = measure_store(paths, workdir, quality, order, batch_size, threads)
    candidates["raw-256"] = {"bytes_per_image": candidates["jpeg-q90"].pop("raw_256_bytes_per_image")}
    candidates["jpeg-q95"].pop("raw_256_bytes_per_image")
    candidates["pil"] = {"bytes_per_image": result["source_kb"] * 1024,
                         "test_images_per_s": candidates["raw-crops"].pop("pil_test_images_per_s")}
    result["dali"] = dali_available(dali_site) or "installed"
    if result["dali"] == "installed":
        candidates["dali"] = {"bytes_per_image": result["source_kb"] * 1024,
                              **measure_dali(paths, paths, workdir, batch_size, threads)}
    for candidate in candidates.values():
        candidate["imagenet1000_gb"] = candidate["bytes_per_image"] * IMAGENET1000_TRAIN / 1e9
    result["candidates"] = candidates
    return result


def _cell(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(r: dict) -> None:
    print(f"{r['images']} synthetic JPEGs of {r['size'][0]}x{r['size'][1]} (mean {r['source_kb']:.0f} KB; "
          f"ImageNet's training JPEGs average about 110 KB), shuffled batches of {r['batch_size']}, "
          f"{r['threads']} decoding threads")
    print(f"train pipeline: read + decode + {r['augmentation']}; test pipeline: the 224x224 centre crops")
    header = ("candidate", "KB/image", "ImageNet-1000 GB", "build s", "build img/s", "decode img/s", "train img/s",
              "test img/s")
    print("  ".join(f"{h:>16}" if i else f"{h:<10}" for i, h in enumerate(header)))
    for name, c in r["candidates"].items():
        cells = [_cell(c["bytes_per_image"] / 1024, 1), _cell(c["imagenet1000_gb"], 1), _cell(c.get("build_seconds"), 1),
                 _cell(c.get("build_images_per_s")), _cell(c.get("decode_images_per_s")),
                 _cell(c.get("train_images_per_s")), _cell(c.get("test_images_per_s"))]
        print(f"{name:<10}  " + "  ".join(f"{cell:>16}" for cell in cells))
    if "dali" in r["candidates"]:
        print(f"dali from the jpeg-q90 store's bytes (fn.external_source): "
              f"{r['candidates']['dali']['store_train_images_per_s']:.0f} train img/s")
    else:
        print(f"dali: {r['dali']}")
    print("raw-crops train = a read of the crops (they cannot serve RandomResizedCrop); raw-256: bytes only; "
          "pil: original JPEGs decoded per batch, no cache")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic JPEGs (default 2000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", default="500x375", help="JPEG width x height (default 500x375, ImageNet's mode)")
    parser.add_argument("--threads", type=int, default=2, help="decoding threads and torch threads (default 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the JPEGs and the caches "
                        "(default: a temporary folder, removed afterwards)")
    parser.add_argument("--dali-site", type=Path, default=None, help="site-packages folder of a venv with "
                        "nvidia-dali (appended to sys.path)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.threads < 1:
        parser.error("--images, --batch-size and --threads must be at least 1")
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) >= 224
    except (ValueError, AssertionError):
        parser.error(f"--size {args.size!r}: expected WIDTHxHEIGHT with both at least 224, e.g. 500x375")
    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="io_speed-"))
    try:
        result = measure(args.images, args.batch_size, size, workdir, args.threads, args.dali_site)
    finally:
        release_caches()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
