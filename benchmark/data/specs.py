"""Static facts about the supported data sets, available without loading any data.

The budget planner sizes exemplar memories from these numbers before a single image is read, so this
module must stay import-light (no torch, no torchvision).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, 3) of the uint8 images as stored / as read
    mean: tuple[float, float, float]  # per-channel normalisation in [0, 1] units
    std: tuple[float, float, float]
    train_per_class: int  # nominal; ImageNet classes vary around this

    @property
    def image_bytes(self) -> int:
        """Bytes of one stored uint8 image: what one exemplar costs in the memory budget."""
        height, width, channels = self.image_shape
        return height * width * channels


# The normalisation constants are PyCIL's (utils/data.py iCIFAR10 / iCIFAR100 / iImageNet100; the
# MEMO authors' utils/data.py has the same), so that reproduced numbers stay comparable. The CIFAR-100
# ones are the data set's per-channel pixel mean and std (the data README's recomputed values differ
# in the fourth decimal only). The CIFAR-10 std (0.2023, 0.1994, 0.2010) is not the pixel std
# (0.2470, 0.2435, 0.2616) but a widely copied value (it reproduces as the mean of per-image stds,
# per chenyaofo/image-classification-codebase issue 5); kept because the reference normalizes with it.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("cifar100", 100, (32, 32, 3), (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 500),
        DatasetSpec("cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 5000),
        # ImageNet-100 images are read as a 224x224 centre crop (see FolderImageSet).
        DatasetSpec("imagenet100", 100, (224, 224, 3), _IMAGENET_MEAN, _IMAGENET_STD, 1300),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec registered under `name`; an unknown name raises ValueError listing the known ones."""
    key = name.strip().lower()
    if key in DATASETS:
        return DATASETS[key]
    close = difflib.get_close_matches(key, DATASETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown data set {name!r}; known data sets: {', '.join(sorted(DATASETS))}.{hint}")
