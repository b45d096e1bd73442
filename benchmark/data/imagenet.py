"""ImageNet-100 (or any ImageFolder-style subset) as FolderImageSets.

Layout, in `root` or `root/imagenet100`:
    train/<class_dir>/*.JPEG, val/<class_dir>/*.JPEG          (class index = sorted class dir names)
    optional train.txt, val.txt: lines "relative/path.JPEG label" (the PyCIL/PODNet split lists)
When both lists exist they define the split and the labels; otherwise the folders are scanned.
Batch sources read the images from what is kept of them in root/imagenet100/.cache ($CIL_IMAGE_CACHE
moves it or turns it off), built on first use: the training images whole at shorter side 256 as JPEG
(jpeg_store.py; the training augmentation crops from the whole image), the test images as their
Resize(256) + CenterCrop(224) view in a uint8 memory map (image_cache.py).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from .image_cache import cache_dir_for
from .errors import DataError, not_found_error
from .imageset import Dataset, FolderImageSet, candidate_dirs
from .specs import DatasetSpec

EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val")  # val is the test split, as in every ImageNet CIL paper
SHOW = 5  # how many offending entries an error lists


def _holds_imagenet(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "train.txt").is_file()


def _looked_in(spec: DatasetSpec, root: str | Path) -> list[str]:
    what = "train/<class>/*.JPEG + val/<class>/*.JPEG, optionally train.txt + val.txt"
    return [f"{folder}  (for {what})" for folder in candidate_dirs(spec.name, root)]


def find_imagenet_dir(spec: DatasetSpec, root: str | Path) -> Path:
    for folder in candidate_dirs(spec.name, root):
        if _holds_imagenet(folder):
            return folder
    reason = "ImageNet cannot be downloaded automatically; prepare the folders from the ILSVRC-2012 release."
    raise not_found_error(spec.label, _looked_in(spec, root), reason)


def _listing(items: list[str], total: int) -> str:
    more = f", ... ({total} in all)" if total > len(items) else ""
    return ", ".join(items) + more


# ----------------------------------------------------------------------------------------- folder scan


def _class_dirs(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: expected a folder with one sub-folder per class, found none")
    names = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not names:
        raise DataError(f"{split_dir}: expected one sub-folder per class, found no sub-folders")
    return names


def _images_under(class_dir: Path) -> list[str]:
    """Image files in a class folder, recursively and sorted, the order torchvision's ImageFolder uses."""
    found = []
    for dirpath, _, filenames in sorted(os.walk(class_dir, followlinks=True)):
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(EXTENSIONS)]
    return found


def scan_split(split_dir: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """Paths and labels of one split folder; every class must be present and non-empty."""
    present = _class_dirs(split_dir)
    if present != classes:
        missing, extra = sorted(set(classes) - set(present)), sorted(set(present) - set(classes))
        raise DataError(
            f"{split_dir}: expected the same class folders as train/ ({len(classes)}), found {len(present)}; "
            f"missing: {_listing(missing[:SHOW], len(missing)) or 'none'}; "
            f"extra: {_listing(extra[:SHOW], len(extra)) or 'none'}"
        )
    paths, labels = [], []
    empty = []
    for label, name in enumerate(classes):
        images = _images_under(split_dir / name)
        if not images:
            empty.append(name)
        paths += images
        labels += [label] * len(images)
    if empty:
        raise DataError(
            f"{split_dir}: expected image files ({', '.join(EXTENSIONS)}) in every class folder, "
            f"found none in {_listing(empty[:SHOW], len(empty))}"
        )
    return paths, np.asarray(labels, dtype=np.int64)


# ----------------------------------------------------------------------------------------- split lists


def read_split_list(list_file: Path, folder: Path) -> tuple[list[str], np.ndarray]:
    """Paths (resolved against `folder`) and labels of a "relative/path label" list; all files must exist."""
    paths, labels = [], []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)  # rsplit: a path may contain spaces, the label cannot
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{list_file}:{number}: expected 'relative/path/to/image.JPEG label', found {line!r}")
        paths.append(str(folder / parts[0].strip()))
        labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"{list_file}: expected lines 'relative/path/to/image.JPEG label', found an empty file")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{list_file}: {len(missing)} listed images do not exist: {_listing(missing[:SHOW], len(missing))}. "
            f"Paths are read relative to {folder}."
        )
    return paths, np.asarray(labels, dtype=np.int64)


def _names_from_lists(paths: list[str], labels: np.ndarray, list_file: Path) -> list[str]:
    """Class names = the parent folder of each class's first image; labels must be exactly 0..C-1."""
    present = np.unique(labels)
    if present[0] != 0 or present[-1] != len(present) - 1:
        raise DataError(
            f"{list_file}: expected labels 0..C-1 with every class present, "
            f"found {len(present)} distinct labels in {present[0]}..{present[-1]}"
        )
    first = {}
    for path, label in zip(paths, labels.tolist()):
        first.setdefault(label, Path(path).parent.name)
    return [first[c] for c in range(len(present))]


def _load_lists(folder: Path) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[str]]:
    splits = {split: read_split_list(folder / f"{split}.txt", folder) for split in SPLITS}
    names = _names_from_lists(*splits["train"], folder / "train.txt")
    val_labels = splits["val"][1]
    if val_labels.min() < 0 or val_labels.max() >= len(names):
        raise DataError(f"{folder / 'val.txt'}: expected labels in 0..{len(names) - 1} (as in train.txt), "
                        f"found {val_labels.min()}..{val_labels.max()}")
    return splits, names


def _load_folders(folder: Path) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[str]]:
    names = _class_dirs(folder / "train")
    return {split: scan_split(folder / split, names) for split in SPLITS}, names


# ---------------------------------------------------------------------------------------------- entry


def load_imagenet(spec: DatasetSpec, root: str | Path, download: bool = True) -> Dataset:
    """`download` is accepted for a uniform signature; ImageNet is never downloaded."""
    folder = find_imagenet_dir(spec, root)
    lists = [(folder / f"{split}.txt").is_file() for split in SPLITS]
    if any(lists) and not all(lists):
        have, lack = ("train.txt", "val.txt") if lists[0] else ("val.txt", "train.txt")
        raise DataError(f"{folder}: found {have} but no {lack}; provide both split lists or neither")
    splits, names = _load_lists(folder) if all(lists) else _load_folders(folder)
    if len(names) != spec.num_classes:
        # A smaller subset (a smoke test, a custom split) is fine, but say so: results would not be
        # comparable with published ImageNet-100 numbers.
        warnings.warn(f"{folder}: {spec.name} has {spec.num_classes} classes, found {len(names)}; using {len(names)}")
        spec = dataclasses.replace(spec, num_classes=len(names))
    cache_dir = cache_dir_for(folder)  # used (and built) when a batch source is made, not here
    crop = spec.image_shape[0]  # the shorter side is resized in ImageNet's 256:224 ratio to the crop
    stored_as = {"train": "jpeg", "val": "centre_crops"}
    train, test = (FolderImageSet(*splits[split], resize=round(crop * 256 / 224), crop=crop,
                                  cache_dir=cache_dir, split=split, stored_as=stored_as[split]) for split in SPLITS)
    return Dataset(spec, train, test, names)
