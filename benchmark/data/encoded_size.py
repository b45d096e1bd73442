"""What one exemplar costs in a stored format, known before any run: the planner's estimate.

Exact formats (raw, downsample) cost a fixed number of bytes per image. A JPEG file's size depends on
the image, so a data set's mean is measured once, on a fixed sample of its training images (the
same rows every time: a seeded draw), and kept in a small JSON file (`ENCODED_SIZES` in the cache
folder) keyed by data set, subset, format, sample size and codec. The engine then fills its byte
budget with the real sizes; this number only sizes the plan.

Formats come from methods/exemplar_formats.py (ExemplarFormat); this module takes any object with
its `name`, `fixed_image_bytes` and `encode`, so that the data room needs no import of methods.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmark.files import write_json_atomic
from .imageset import per_class_subset
from .specs import dataset_spec

ENCODED_SIZES = "encoded_sizes.json"


def user_cache_dir() -> Path:
    """The user's cache folder for small measured numbers: $XDG_CACHE_HOME/cil-bench (default
    ~/.cache/cil-bench). Not the data folder: data sets are often shared and read-only, and a JSON
    of a few numbers does not belong beside them."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cil-bench"
SAMPLE_SEED = 0


class StoredFormat(Protocol):
    """What this module needs of methods.exemplar_formats.ExemplarFormat."""

    @property
    def name(self) -> str: ...
    def fixed_image_bytes(self, image_shape: tuple[int, int, int]) -> int | None: ...
    def encode(self, images: Any) -> Any: ...   # uint8 torch [n, C, H, W] -> StoredImages


@dataclass(frozen=True)
class EncodedSize:
    mean_image_bytes: float     # per stored image (a shared JPEG header not included)
    shared_header_bytes: int    # billed once per memory (jpeg:<q>:shared), else 0
    measured_on: int            # images measured (0: exact, nothing measured)


def mean_stored_bytes(dataset: str, data_root: Path, fmt: StoredFormat, cache_dir: Path, sample: int = 1000,
                      images_per_class: int | None = None) -> float:
    """Mean stored bytes of one exemplar of `dataset` in `fmt` (a shared header not included: see
    `encoded_size`, which also gives it)."""
    return encoded_size(dataset, data_root, fmt, cache_dir, sample, images_per_class).mean_image_bytes


def encoded_size(dataset: str, data_root: Path, fmt: StoredFormat, cache_dir: Path, sample: int = 1000,
                 images_per_class: int | None = None) -> EncodedSize:
    """The stored size of `dataset`'s training images (its first `images_per_class` per class, when
    given, as runs subset them) in `fmt`: exact for raw and downsample, else measured on `sample`
    images and cached in cache_dir/ENCODED_SIZES."""
    spec = dataset_spec(dataset)
    fixed = fmt.fixed_image_bytes(spec.image_shape)
    if fixed is not None:
        return EncodedSize(float(fixed), 0, 0)
    key = cache_key(dataset, images_per_class, fmt.name, sample)
    path = Path(cache_dir) / ENCODED_SIZES
    cached = read_cache(path)
    if key in cached:
        return EncodedSize(**cached[key])
    size = measure(dataset, data_root, fmt, sample, images_per_class)
    # read again just before writing: another process may have added its own key meanwhile
    write_json_atomic(path, {**read_cache(path), key: asdict(size)})
    return size


def cache_key(dataset: str, images_per_class: int | None, format_name: str, sample: int) -> str:
    """Everything the measured number depends on, the codec's version included."""
    subset = f"{images_per_class}_per_class" if images_per_class else "all"
    return f"{dataset}|{subset}|{format_name}|sample={sample}|simplejpeg={metadata.version('simplejpeg')}"


def read_cache(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # written whole (atomic), so only a hand edit gets here: measure again
        return {}


def sample_rows(labels: np.ndarray, sample: int, images_per_class: int | None) -> np.ndarray:
    """`sample` training rows, the same every time: a seeded draw from the (subset) training set, sorted."""
    pool = per_class_subset(labels, images_per_class) if images_per_class else np.arange(len(labels))
    chosen = np.random.default_rng(SAMPLE_SEED).choice(len(pool), size=min(sample, len(pool)), replace=False)
    return np.sort(pool[chosen])


def measure(dataset: str, data_root: Path, fmt: StoredFormat, sample: int, images_per_class: int | None) -> EncodedSize:
    import torch

    from . import load_dataset

    train = load_dataset(dataset, data_root).train
    rows = sample_rows(train.labels, sample, images_per_class)
    images = torch.from_numpy(np.ascontiguousarray(train.read(rows))).permute(0, 3, 1, 2)
    stored = fmt.encode(images)
    sizes = stored.image_bytes()
    return EncodedSize(float(np.mean(sizes)), len(stored.header), len(sizes))
