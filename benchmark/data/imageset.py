"""Labelled sets of uint8 RGB images: in memory (CIFAR) or as image files read on demand (ImageNet).

Both kinds hand out whole batches as uint8 [n, H, W, 3] arrays; augmentation and normalisation happen on
the batch afterwards (on the device), never per image here.
"""
from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .decode import decode_center_crop, decode_resized
from .specs import DatasetSpec


def candidate_dirs(name: str, root: str | Path) -> list[Path]:
    """Where a data set may live: the root itself, then root/<name>.

    Both are searched so that `data/` and `data/cifar100` are equally valid roots.
    """
    root = Path(root).expanduser()
    return [root, root / name]


def _as_indices(indices: np.ndarray, size: int) -> np.ndarray:
    """Integer row indices as int64, checked against `size` so a bad index fails with a clear message."""
    idx = np.asarray(indices)
    if idx.dtype == bool:
        raise TypeError("pass integer row indices, not a boolean mask (use np.flatnonzero(mask))")
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise TypeError(f"indices must be a 1-D integer array, got dtype {idx.dtype} shape {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise IndexError(f"indices range {idx.min()}..{idx.max()} is outside a set of {size} images")
    return idx


def _mapped_labels(labels: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    mapping = np.asarray(mapping)
    if labels.size and labels.max() >= len(mapping):
        raise ValueError(f"mapping has {len(mapping)} entries but the labels go up to {labels.max()}")
    return mapping[labels].astype(np.int64)


class ImageSet(ABC):
    """A labelled set of uint8 RGB images that all share `image_shape`."""

    labels: np.ndarray  # int64 [N]
    image_shape: tuple[int, int, int]
    in_memory: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] images of those rows."""

    @abstractmethod
    def subset(self, indices: np.ndarray) -> "ImageSet":
        """The same kind of set holding only those rows (labels unchanged)."""

    @abstractmethod
    def relabel(self, mapping: np.ndarray) -> "ImageSet":
        """The same images with labels replaced by mapping[labels]."""

    def cached_images(self) -> np.ndarray | None:
        """All images as one uint8 [N, H, W, 3] array (a memory map) when the set keeps such a cache."""
        return None

    def training_store(self):
        """The store of whole images that training batches are read from (jpeg_store.JpegStore), when
        the set keeps one; None: training reads the same images as evaluation."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images of {self.image_shape})"


class ArrayImageSet(ImageSet):
    """Images held in one uint8 [N, H, W, 3] array (CIFAR-size data)."""

    in_memory = True

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_shape = tuple(images.shape[1:])

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.images[_as_indices(indices, len(self))]

    def subset(self, indices: np.ndarray) -> "ArrayImageSet":
        idx = _as_indices(indices, len(self))
        return ArrayImageSet(self.images[idx], self.labels[idx])

    def relabel(self, mapping: np.ndarray) -> "ArrayImageSet":
        # Shares the image array: relabelling must not double the memory of a 50,000-image set.
        return ArrayImageSet(self.images, _mapped_labels(self.labels, mapping))


@functools.lru_cache(maxsize=None)
def _decode_pool(pid: int) -> ThreadPoolExecutor:
    """One pool per process (keyed by pid: a pool inherited through fork has no live threads)."""
    # PIL releases the GIL while decoding and resizing, so a few threads scale well; more mostly
    # contend with the training process for cores.
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="decode")


STORED_AS = ("centre_crops", "jpeg")


class FolderImageSet(ImageSet):
    """Images stored as files. read() decodes them to the evaluation view (shorter side `resize`, centre
    `crop`). With a `cache_dir`, what the batch sources read instead is kept on disk once, as `stored_as`:
      - "centre_crops": the evaluation view, decoded into a uint8 memory map (image_cache.py); exact,
        and all an evaluation split needs;
      - "jpeg": the whole image at shorter side `resize`, as JPEG (jpeg_store.py); it serves the
        training augmentation, which crops from the whole image, and the evaluation view (a centre
        crop of it), at a fifth of the centre crops' bytes.
    """

    in_memory = False

    def __init__(self, paths: Sequence[str | Path], labels: np.ndarray, resize: int = 256, crop: int = 224,
                 cache_dir: str | Path | None = None, split: str = "images", stored_as: str = "centre_crops"):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        if stored_as not in STORED_AS:
            raise ValueError(f"stored_as must be one of {', '.join(STORED_AS)}, got {stored_as!r}")
        self.paths = np.asarray([str(p) for p in paths], dtype=object)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.resize, self.crop = resize, crop
        self.image_shape = (crop, crop, 3)
        self.cache_dir, self.split, self.stored_as = cache_dir, split, stored_as
        self._cached = None  # opened once per set: the check stats every file

    def read(self, indices: np.ndarray) -> np.ndarray:
        idx = _as_indices(indices, len(self))
        out = np.empty((len(idx), *self.image_shape), dtype=np.uint8)
        decode = functools.partial(decode_center_crop, resize=self.resize, crop=self.crop)
        for row, image in enumerate(self._decoded(decode, idx)):
            out[row] = image
        return out

    def read_whole(self, indices: np.ndarray) -> list[np.ndarray]:
        """The images of those rows at shorter side `resize`, whole (uint8 [h, w, 3] each): what the
        training augmentation crops from, decoded per batch when no store is kept."""
        idx = _as_indices(indices, len(self))
        return list(self._decoded(functools.partial(decode_resized, resize=self.resize), idx))

    def _decoded(self, decode, idx: np.ndarray):
        if len(idx) <= 1:  # not worth a round trip through the pool
            return map(decode, self.paths[idx])
        return _decode_pool(os.getpid()).map(decode, self.paths[idx])

    def cached_images(self) -> np.ndarray | None:
        if self.cache_dir is None or self.stored_as != "centre_crops":
            return None
        if self._cached is None:
            from .image_cache import open_image_cache

            decode = functools.partial(decode_center_crop, resize=self.resize, crop=self.crop)
            transform = {"decode": "resize_shorter_bilinear+center_crop", "resize": self.resize, "crop": self.crop}
            self._cached = open_image_cache(self.paths.tolist(), decode, self.image_shape, transform,
                                            self.cache_dir, self.split)
        return self._cached

    def training_store(self):
        """The JPEG store of these images (built on first use), when they are kept as "jpeg"; else None."""
        if self.cache_dir is None or self.stored_as != "jpeg":
            return None
        if self._cached is None:
            from .jpeg_store import open_jpeg_store

            self._cached = open_jpeg_store(self.paths.tolist(), self.cache_dir, self.split, side=self.resize)
        return self._cached

    def _like(self, paths: np.ndarray, labels: np.ndarray) -> "FolderImageSet":
        return FolderImageSet(paths, labels, self.resize, self.crop, self.cache_dir, self.split, self.stored_as)

    def subset(self, indices: np.ndarray) -> "FolderImageSet":
        # Another file list is another cache (built on first use), so a reduced profile never
        # decodes the images it does not use.
        idx = _as_indices(indices, len(self))
        return self._like(self.paths[idx], self.labels[idx])

    def relabel(self, mapping: np.ndarray) -> "FolderImageSet":
        relabelled = self._like(self.paths, _mapped_labels(self.labels, mapping))
        relabelled._cached = self._cached  # same files, same cache
        return relabelled


@dataclass(frozen=True)
class Dataset:
    spec: DatasetSpec
    train: ImageSet
    test: ImageSet
    class_names: list[str]


def per_class_subset(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Sorted indices of the first `per_class` rows of every class present, in data-set order.

    Deterministic on purpose (no sampling): a reduced data set must be the same on every machine.
    """
    labels = np.asarray(labels)
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    order = np.argsort(labels, kind="stable")  # stable: rows of one class stay in data-set order
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    short = counts < per_class
    if short.any():
        listed = ", ".join(f"class {c} has {n}" for c, n in zip(classes[short][:5], counts[short][:5]))
        more = f" (and {short.sum() - 5} more classes)" if short.sum() > 5 else ""
        raise ValueError(f"per_class={per_class} asks for more images than some classes hold: {listed}{more}")
    rank = np.arange(len(labels)) - np.repeat(starts, counts)  # position of each row within its class
    return np.sort(order[rank < per_class]).astype(np.int64)
