"""Data layer: data set facts (specs), image sets, loaders and class-incremental scenarios."""
from __future__ import annotations

from pathlib import Path

from .checks import check_dataset
from .cifar import find_cifar_dir, load_cifar
from .imagenet import find_imagenet_dir, load_imagenet
from .errors import DataError
from .imageset import ArrayImageSet, Dataset, FolderImageSet, ImageSet, per_class_subset
from .scenario import Scenario, class_order, incremental_labels, split_tasks
from .specs import DATASETS, DatasetSpec, dataset_spec

__all__ = [
    "DATASETS", "DatasetSpec", "dataset_spec",
    "ImageSet", "ArrayImageSet", "FolderImageSet", "Dataset", "DataError", "per_class_subset",
    "load_dataset", "find_dataset_dir", "check_dataset",
    "Scenario", "class_order", "split_tasks", "incremental_labels",
]


def load_dataset(name: str, root: str | Path, download: bool = True) -> Dataset:
    """Load `name` from `root` or `root/<name>`; DataError (with the fix) when it is missing or malformed."""
    spec = dataset_spec(name)
    if spec.loader == "cifar":
        return load_cifar(spec, root, download)
    return load_imagenet(spec, root, download)


def find_dataset_dir(name: str, root: str | Path) -> Path:
    """The folder that holds `name` under the resolution rules of load_dataset; DataError if none."""
    spec = dataset_spec(name)
    if spec.loader == "cifar":
        return find_cifar_dir(spec, root)
    return find_imagenet_dir(spec, root)
