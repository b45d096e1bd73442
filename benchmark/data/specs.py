"""Static facts about the supported data sets, available without loading any data.

The budget planner sizes exemplar memories from these numbers before a single image is read, so this
module must stay import-light (no torch, no torchvision).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

LOADERS = ("cifar", "folders")
# The reference training augmentations (docs/protocol.md section 5; train/augmentation.py builds them):
# PyCIL's iCIFAR100, iImageNet100 and iImageNet1000 train_trsf.
CIFAR_AUGMENTATION = "pad_crop_flip_brightness"  # the recipe every run trained with before ImageNet had its own
AUGMENTATIONS = (CIFAR_AUGMENTATION, "resized_crop_flip", "resized_crop_flip_brightness")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, 3) of the uint8 images as stored / as read
    mean: tuple[float, float, float]  # per-channel normalisation in [0, 1] units
    std: tuple[float, float, float]
    train_per_class: int  # nominal; ImageNet classes vary around this
    test_per_class: int | None = None  # None: not stated (a folder data set's split decides)
    title: str = ""  # how messages name it ("CIFAR-100"); "": its name
    loader: str = "folders"  # "cifar": arrays or the torchvision download; "folders": class folders (ImageNet's layout)
    augmentation: str = "resized_crop_flip"  # the training augmentation, one of AUGMENTATIONS

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            raise ValueError(f"{self.label}: unknown loader {self.loader!r}; use one of {', '.join(LOADERS)}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"{self.label}: unknown augmentation {self.augmentation!r}; "
                             f"use one of {', '.join(AUGMENTATIONS)}")

    @property
    def image_bytes(self) -> int:
        """Bytes of one stored uint8 image: what one exemplar costs in the memory budget."""
        height, width, channels = self.image_shape
        return height * width * channels

    @property
    def label(self) -> str:
        """The data set as messages name it: "CIFAR-100 ('cifar100')", or "data set 'flowers4'" untitled."""
        return f"{self.title} ({self.name!r})" if self.title else f"data set {self.name!r}"

    def per_class(self, split: str, limit: int | None = None) -> int:
        """Images per class of `split` ("train" or "test"): `limit` (a profile's images_per_class or
        test_images_per_class) when given, else the data set's own count."""
        if limit:
            return limit
        count = {"train": self.train_per_class, "test": self.test_per_class}[split]
        if count is None:
            raise ValueError(f"{self.label}: its spec does not say how many {split} images a class has; "
                             f"set {split}_per_class in benchmark/data/specs.py")
        return count


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
        # CIFAR: the official splits' counts, which the loader checks class by class.
        DatasetSpec("cifar100", 100, (32, 32, 3), (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 500, 100,
                    title="CIFAR-100", loader="cifar", augmentation=CIFAR_AUGMENTATION),
        DatasetSpec("cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 5000, 1000,
                    title="CIFAR-10", loader="cifar", augmentation=CIFAR_AUGMENTATION),
        # ImageNet-100 trains on RandomResizedCrop(224) of the whole image and is evaluated (and keeps
        # exemplars) as a 224x224 centre crop (see FolderImageSet); the 50 per class are ILSVRC-2012's
        # validation images, its test split here.
        DatasetSpec("imagenet100", 100, (224, 224, 3), _IMAGENET_MEAN, _IMAGENET_STD, 1300, 50,
                    title="ImageNet-100"),
        # ImageNet-1000 is ILSVRC-2012 whole: PyCIL's iImageNet1000 reads train/ and val/ with torchvision's
        # ImageFolder (labels = sorted class folder names, the order this loader uses) and shuffles the
        # 1000 labels with the seed (scenario.class_order). Its classes hold 732 to 1300 training images
        # (1,281,167 in all); 1300, the most, is the nominal count, so what is derived from it (Joint's
        # bytes, the projected hours) is an upper bound by 1.5 %; the loader reads every image there is,
        # and the exemplar quota of the paper's fair budget (226 per class after B0Inc100's first task,
        # 22 after its last) stays below 732, so no class runs short.
        DatasetSpec("imagenet1000", 1000, (224, 224, 3), _IMAGENET_MEAN, _IMAGENET_STD, 1300, 50,
                    title="ImageNet-1000", augmentation="resized_crop_flip_brightness"),
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
