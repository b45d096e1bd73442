"""CIFAR-10/100 as in-memory uint8 arrays, from one of three layouts (first found wins):

1. prepared numpy arrays: train-0.npz .. train-K.npz + test.npz (keys x, y) + meta.json;
2. our cache <name>-uint8.npz, written after the first torchvision load;
3. the torchvision download (cifar-100-python/ or cifar-10-batches-py/), fetched if allowed.

Each is looked for in `root` and in `root/<name>`. Whatever the source, the arrays pass the same checks.
"""
from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np

from benchmark.files import write_atomic

from .errors import DataError, not_found_error
from .imageset import ArrayImageSet, Dataset, candidate_dirs
from .specs import DatasetSpec, dataset_spec

# torchvision class and the folder its download unpacks to.
TORCHVISION = {"cifar100": ("CIFAR100", "cifar-100-python"), "cifar10": ("CIFAR10", "cifar-10-batches-py")}
# meta.json key of the class names: our CIFAR-100 layout uses the fine labels; CIFAR-10 has one kind.
META_KEYS = ("fine_label_names", "label_names")
# Appended to every problem found in the prepared arrays (they are never written by this code).
PREPARED_FIX = (
    "To fix: restore the prepared arrays from their original copy (`sha256sum -c SHA256SUMS` in the folder, "
    "where there is one, names the damaged files), or pass --data-root DIR with an empty DIR on a machine "
    "with a network so that torchvision downloads the data set afresh."
)


def cache_name(name: str) -> str:
    return f"{name}-uint8.npz"


def _train_shards(folder: Path) -> dict[int, Path]:
    """train-<n>.npz files by their number n (numeric, so that train-10 follows train-9)."""
    return {int(m.group(1)): p for p in folder.glob("train-*.npz") if (m := re.fullmatch(r"train-(\d+)\.npz", p.name))}


def _meta_class_count(folder: Path) -> int | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    names = next((meta[key] for key in META_KEYS if key in meta), None)
    return len(names) if isinstance(names, list) else None


def _holds_prepared(folder: Path, spec: DatasetSpec) -> bool:
    """True when `folder` has any of the prepared arrays, unless its meta.json names another CIFAR's classes.

    A partial layout counts, so that a missing test.npz is reported as such instead of the loader going
    on to download next to it. meta.json is consulted so that a root holding CIFAR-100 arrays is not
    mistaken for CIFAR-10; a meta.json that fits neither data set is left for the loader to report.
    """
    if not ((folder / "test.npz").is_file() or _train_shards(folder)):
        return False
    count = _meta_class_count(folder)
    others = {dataset_spec(name).num_classes for name in TORCHVISION if name != spec.name}
    return count == spec.num_classes or count not in others


def locate(spec: DatasetSpec, root: str | Path) -> tuple[str, Path] | None:
    """(layout, folder) of the first layout found, searching the prepared arrays first; None if none."""
    folders = candidate_dirs(spec.name, root)
    base_folder = TORCHVISION[spec.name][1]
    for layout, present in (
        ("prepared", lambda d: _holds_prepared(d, spec)),
        ("cache", lambda d: (d / cache_name(spec.name)).is_file()),
        ("torchvision", lambda d: (d / base_folder).is_dir()),
    ):
        for folder in folders:
            if present(folder):
                return layout, folder
    return None


def looked_in(spec: DatasetSpec, root: str | Path) -> list[str]:
    """Human-readable list of the places searched, with what would have been accepted there."""
    base_folder = TORCHVISION[spec.name][1]
    what = f"train-*.npz + test.npz + meta.json, {cache_name(spec.name)}, or {base_folder}/"
    return [f"{folder}  (for {what})" for folder in candidate_dirs(spec.name, root)]


# ---------------------------------------------------------------------------------------------- checks


def check_arrays(x: np.ndarray, y: np.ndarray, spec: DatasetSpec, source: str) -> None:
    """Dtype, shape and label range of one array pair; `source` names the file in the error."""
    expected = f"uint8 [N, {', '.join(map(str, spec.image_shape))}]"
    if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != spec.image_shape:
        raise DataError(f"{source}: expected images x of {expected}, found {x.dtype} {list(x.shape)}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: expected integer labels y of shape [N], found {y.dtype} {list(y.shape)}")
    if len(y) != len(x):
        raise DataError(f"{source}: expected one label per image, found {len(x)} images and {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
        raise DataError(f"{source}: expected labels in 0..{spec.num_classes - 1}, found {y.min()}..{y.max()}")


def check_class_counts(y: np.ndarray, spec: DatasetSpec, split: str, source: str) -> None:
    """Every class has the official count (the spec's); catches truncated files and mixed-up splits."""
    per_class = spec.per_class(split)
    counts = np.bincount(y, minlength=spec.num_classes)
    if (counts == per_class).all():
        return
    # Describe what was found as "the usual count, except these classes", which points at the culprits.
    values, frequency = np.unique(counts, return_counts=True)
    usual = values[frequency.argmax()]
    odd = np.flatnonzero(counts != usual)
    found = f"{usual} per class" + (" except " if odd.size else "")
    found += ", ".join(f"class {c} has {counts[c]}" for c in odd[:5]) + (", ..." if odd.size > 5 else "")
    raise DataError(
        f"{source}: expected {per_class} {split} images per class ({per_class * spec.num_classes:,} in all), "
        f"found {len(y):,} images: {found}"
    )


# --------------------------------------------------------------------------------------------- layouts


def _not_an_npz(path: Path) -> str | None:
    """What `path` is instead of an .npz archive, judged by its first bytes; None when it looks like one."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"PK"):  # the zip signature every .npz starts with
        return None
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(b"\x93NUMPY"):
        return "is a single .npy array, not an .npz archive"
    if head.startswith(b"\x80"):  # pickle protocols 2+
        return "is a Python pickle, not an .npz archive (pickles are never loaded here: they can run code)"
    return "is not an .npz archive (it lacks the zip signature)"


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays, read with allow_pickle=False; any damage is one DataError naming the file."""
    try:
        problem = _not_an_npz(path)
        if problem:
            raise DataError(f"{path}: {problem}; expected an .npz archive with arrays {list(keys)}")
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{path}: expected arrays {list(keys)}, found {npz.files} (missing {missing})")
            return {k: npz[k] for k in keys}
    except FileNotFoundError as err:
        raise DataError(f"{path}: missing; expected an .npz archive with arrays {list(keys)}") from err
    except ValueError as err:  # e.g. numpy refusing an object array without allow_pickle
        raise DataError(f"{path}: cannot read its arrays with allow_pickle=False ({err})") from err
    # A cut-off or bit-flipped archive: zip directory missing, CRC mismatch, short read.
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: truncated or damaged .npz ({type(err).__name__}: {err})") from err


def _read_class_names(path: Path, spec: DatasetSpec) -> list[str]:
    expected = f"a JSON object with the {spec.num_classes} class names under one of {META_KEYS}"
    if not path.is_file():
        raise DataError(f"{path}: missing; expected {expected}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: expected {expected}, found no valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected {expected}, found a JSON {type(meta).__name__}")
    names = next((meta[key] for key in META_KEYS if key in meta), None)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        found = f"{len(names)} names" if isinstance(names, list) else f"keys {sorted(meta)}"
        raise DataError(f"{path}: expected {spec.num_classes} names under one of {META_KEYS}, found {found}")
    return [str(n) for n in names]


def _checked_shards(folder: Path) -> list[Path]:
    """train-0.npz .. train-K.npz with no number missing (a missing shard would silently drop images)."""
    shards = _train_shards(folder)
    if not shards:
        raise DataError(f"{folder}: found test.npz but no train-0.npz .. train-K.npz")
    missing = sorted(set(range(max(shards) + 1)) - set(shards))
    if missing:
        raise DataError(f"{folder}: expected train shards numbered 0..{max(shards)}, "
                        f"missing {', '.join(f'train-{n}.npz' for n in missing)}")
    return [shards[n] for n in sorted(shards)]


def load_prepared(folder: Path, spec: DatasetSpec) -> Dataset:
    try:
        return _load_prepared(folder, spec)
    except DataError as err:
        raise DataError(f"{err}\n{PREPARED_FIX}") from err


def _load_prepared(folder: Path, spec: DatasetSpec) -> Dataset:
    """The prepared layout: train shards concatenated in order, then test.npz."""
    xs, ys = [], []
    for shard in _checked_shards(folder):
        arrays = _read_npz(shard, ("x", "y"))
        check_arrays(arrays["x"], arrays["y"], spec, str(shard))
        xs.append(arrays["x"])
        ys.append(arrays["y"].astype(np.int64))
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    check_class_counts(y_train, spec, "train", f"{folder}/train-*.npz")
    test = _read_npz(folder / "test.npz", ("x", "y"))
    check_arrays(test["x"], test["y"], spec, str(folder / "test.npz"))
    y_test = test["y"].astype(np.int64)
    check_class_counts(y_test, spec, "test", str(folder / "test.npz"))
    names = _read_class_names(folder / "meta.json", spec)
    return Dataset(spec, ArrayImageSet(x_train, y_train), ArrayImageSet(test["x"], y_test), names)


def _dataset_from_arrays(spec: DatasetSpec, arrays: dict[str, np.ndarray], names: list[str], source: str) -> Dataset:
    """Checks both splits of a cache or torchvision load and wraps them."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        check_arrays(x, y, spec, f"{source} ({split})")
        check_class_counts(y, spec, split, f"{source} ({split})")
    if len(names) != spec.num_classes:
        raise DataError(f"{source}: expected {spec.num_classes} class names, found {len(names)}")
    train = ArrayImageSet(arrays["x_train"], arrays["y_train"].astype(np.int64))
    test = ArrayImageSet(arrays["x_test"], arrays["y_test"].astype(np.int64))
    return Dataset(spec, train, test, list(names))


def load_cache(path: Path, spec: DatasetSpec) -> Dataset:
    try:
        arrays = _read_npz(path, ("x_train", "y_train", "x_test", "y_test", "class_names"))
        names = [str(n) for n in arrays.pop("class_names")]
        return _dataset_from_arrays(spec, arrays, names, str(path))
    except DataError as err:
        raise DataError(f"{err}\nThe cache is damaged: delete {path} and load again to rebuild it.") from err


def write_cache(path: Path, arrays: dict[str, np.ndarray], names: list[str]) -> None:
    """Uncompressed (loads in well under a second), written atomically so a crash leaves no half file."""
    try:
        write_atomic(path, lambda file: np.savez(file, **arrays, class_names=np.asarray(names, dtype=str)))
    except OSError as err:
        # A read-only data folder still loads; it just pays the pickle decode every time.
        warnings.warn(f"could not write the cache {path} ({err}); later loads will decode the torchvision files again")


def download_dir(name: str, root: str | Path) -> Path:
    """Where torchvision gets pointed when nothing was found: root/<name>, unless root is already that."""
    root = Path(root).expanduser()
    return root if root.name == name else root / name


def load_torchvision(spec: DatasetSpec, folder: Path, download: bool, searched: list[str]) -> Dataset:
    """torchvision's CIFAR reader (downloading if allowed), converted to arrays and cached next to it."""
    import torchvision.datasets  # deferred: importing torch costs seconds and most loads never need it

    cls = getattr(torchvision.datasets, TORCHVISION[spec.name][0])
    try:
        parts = {split: cls(str(folder), train=split == "train", download=download) for split in ("train", "test")}
    except (OSError, RuntimeError) as err:  # URLError is an OSError; missing files raise RuntimeError
        action = "download into" if download else "load (download=False) from"
        reason = f"torchvision could not {action} {folder}: {type(err).__name__}: {err}"
        raise not_found_error(spec.label, searched, reason) from err
    arrays = {}
    for split, part in parts.items():
        arrays[f"x_{split}"] = np.asarray(part.data)
        arrays[f"y_{split}"] = np.asarray(part.targets, dtype=np.int64)
    names = [str(n) for n in parts["train"].classes]
    dataset = _dataset_from_arrays(spec, arrays, names, f"torchvision {cls.__name__} in {folder}")
    write_cache(folder / cache_name(spec.name), arrays, names)
    return dataset


def load_cifar(spec: DatasetSpec, root: str | Path, download: bool = True) -> Dataset:
    found = locate(spec, root)
    if found and found[0] == "prepared":
        return load_prepared(found[1], spec)
    if found and found[0] == "cache":
        return load_cache(found[1] / cache_name(spec.name), spec)
    folder = found[1] if found else download_dir(spec.name, root)
    return load_torchvision(spec, folder, download, looked_in(spec, root))


def find_cifar_dir(spec: DatasetSpec, root: str | Path) -> Path:
    found = locate(spec, root)
    if found is None:
        raise not_found_error(spec.label, looked_in(spec, root))
    return found[1]
