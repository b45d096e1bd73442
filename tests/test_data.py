"""Data layer: specs, the real CIFAR-100, malformed layouts, the torchvision cache, ImageNet-style folders."""
from __future__ import annotations

import json
import urllib.error
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
from PIL import Image

from benchmark.data import (
    DATASETS,
    ArrayImageSet,
    DataError,
    FolderImageSet,
    class_order,
    dataset_spec,
    find_dataset_dir,
    incremental_labels,
    load_dataset,
    per_class_subset,
)
from benchmark.data import cifar

# ------------------------------------------------------------------------------------------------ specs


def test_specs_sizes():
    assert dataset_spec("cifar100").image_bytes == 32 * 32 * 3
    assert dataset_spec("imagenet100").image_bytes == 224 * 224 * 3
    assert dataset_spec("CIFAR10").num_classes == 10
    facts = {name: (spec.title, spec.loader, spec.per_class("train"), spec.per_class("test"))
             for name, spec in DATASETS.items()}
    assert facts == {"cifar100": ("CIFAR-100", "cifar", 500, 100), "cifar10": ("CIFAR-10", "cifar", 5000, 1000),
                     "imagenet100": ("ImageNet-100", "folders", 1300, 50),
                     "imagenet1000": ("ImageNet-1000", "folders", 1300, 50)}
    assert dataset_spec("cifar100").per_class("test", limit=20) == 20  # a profile's reduced count wins
    assert dataset_spec("cifar10").label == "CIFAR-10 ('cifar10')"


def test_a_spec_without_a_test_count_says_where_to_set_it():
    spec = replace(DATASETS["imagenet100"], name="flowers4", title="", test_per_class=None)
    assert spec.label == "data set 'flowers4'" and spec.per_class("train") == 1300
    with pytest.raises(ValueError, match="data set 'flowers4': .* test images .* set test_per_class"):
        spec.per_class("test")
    with pytest.raises(ValueError, match="unknown loader 'cifarr'; use one of cifar, folders"):
        replace(spec, loader="cifarr")


def test_unknown_spec_lists_names():
    with pytest.raises(ValueError, match="cifar10, cifar100, imagenet100.*'cifar100'"):
        dataset_spec("cifar1000")


# ------------------------------------------------------------------------------------- real CIFAR-100


@pytest.fixture(scope="module")
def cifar100(cifar_root):
    # Loaded through the parent folder when possible, so the root/<name> rule is exercised too.
    root = cifar_root.parent if cifar_root.name == "cifar100" else cifar_root
    return load_dataset("cifar100", root, download=False)


def test_cifar100_shapes_and_counts(cifar100):
    train, test = cifar100.train, cifar100.test
    assert isinstance(train, ArrayImageSet) and train.in_memory
    assert train.images.shape == (50_000, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (10_000, 32, 32, 3)
    assert train.labels.dtype == np.int64 and test.labels.dtype == np.int64
    assert (np.bincount(train.labels) == 500).all() and (np.bincount(test.labels) == 100).all()
    assert cifar100.spec.name == "cifar100"


def test_cifar100_official_order_and_names(cifar100):
    assert cifar100.train.labels[:6].tolist() == [19, 29, 0, 11, 1, 86]
    assert cifar100.test.labels[:6].tolist() == [49, 33, 72, 51, 71, 92]
    assert len(cifar100.class_names) == 100
    assert cifar100.class_names[0] == "apple" and cifar100.class_names[-1] == "worm"


def test_cifar100_pixels(cifar100):
    # Channel means from the README, on every 10th image to stay fast: catches a CHW or BGR layout
    # (those would be off by 0.03 to 0.07).
    mean = cifar100.train.images[::10].reshape(-1, 3).mean(axis=0) / 255
    np.testing.assert_allclose(mean, [0.5071, 0.4865, 0.4409], atol=5e-3)


def test_find_dataset_dir_both_roots(cifar_root):
    assert find_dataset_dir("cifar100", cifar_root) == cifar_root
    if cifar_root.name == "cifar100":
        assert find_dataset_dir("cifar100", cifar_root.parent) == cifar_root


def test_cifar100_folder_is_not_cifar10(cifar_root):
    # meta.json lists 100 names, so the folder must not be taken for CIFAR-10.
    with pytest.raises(DataError, match="CIFAR-10 "):
        find_dataset_dir("cifar10", cifar_root)


def test_per_class_subset_real(cifar100):
    labels = cifar100.train.labels
    idx = per_class_subset(labels, 5)
    assert len(idx) == 500 and (np.diff(idx) > 0).all()
    assert (np.bincount(labels[idx], minlength=100) == 5).all()
    for c in (0, 19, 99):  # the first five of the class, in data-set order
        assert idx[labels[idx] == c].tolist() == np.flatnonzero(labels == c)[:5].tolist()
    with pytest.raises(ValueError, match="class 0 has 500"):
        per_class_subset(labels, 501)


def test_per_class_subset_small():
    labels = np.array([2, 0, 2, 1, 0, 2, 1])
    assert per_class_subset(labels, 2).tolist() == [0, 1, 2, 3, 4, 6]
    assert per_class_subset(labels, 0).tolist() == []
    with pytest.raises(ValueError, match="class 0 has 2, class 1 has 2"):
        per_class_subset(labels, 3)


def test_array_imageset_subset_relabel(cifar100):
    train = cifar100.train
    idx = np.array([5, 0, 49_999])
    part = train.subset(idx)
    assert len(part) == 3 and part.labels.tolist() == train.labels[idx].tolist()
    np.testing.assert_array_equal(part.read(np.arange(3)), train.images[idx])
    order = class_order(100)
    relabelled = train.relabel(incremental_labels(order))
    assert relabelled.images is train.images  # no copy of 150 MB
    first_task = np.isin(train.labels, order[:10])
    assert set(relabelled.labels[first_task].tolist()) == set(range(10))
    with pytest.raises(IndexError, match="outside a set of 50000"):
        train.read(np.array([50_000]))


# --------------------------------------------------------------------------------- malformed layouts


def write_prepared(folder: Path, x: np.ndarray, y: np.ndarray, num_names: int = 100) -> Path:
    """A tiny prepared layout: one train shard and a test file with the same arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train-0.npz", "test.npz"):
        np.savez(folder / name, x=x, y=y)
    (folder / "meta.json").write_text(json.dumps({"fine_label_names": [f"c{i}" for i in range(num_names)]}))
    return folder


def test_prepared_wrong_shape(tmp_path):
    folder = write_prepared(tmp_path / "cifar100", np.zeros((10, 28, 28, 3), np.uint8), np.zeros(10, np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", tmp_path, download=False)
    message = str(err.value)
    assert str(folder / "train-0.npz") in message
    assert "uint8 [N, 32, 32, 3]" in message and "[10, 28, 28, 3]" in message


def test_prepared_label_out_of_range(tmp_path):
    y = np.arange(10, dtype=np.uint8) * 11  # 0..99
    y[-1] = 100
    write_prepared(tmp_path, np.zeros((10, 32, 32, 3), np.uint8), y)
    with pytest.raises(DataError, match=r"train-0\.npz: expected labels in 0\.\.99, found 0\.\.100"):
        load_dataset("cifar100", tmp_path, download=False)


def test_prepared_unequal_class_counts(tmp_path):
    y = np.arange(100)
    y[7] = 3  # class 3 twice, class 7 missing
    write_prepared(tmp_path, np.zeros((100, 32, 32, 3), np.uint8), y)
    with pytest.raises(DataError, match="expected 500 train images per class") as err:
        load_dataset("cifar100", tmp_path, download=False)
    assert "class 3 has 2" in str(err.value) and "class 7 has 0" in str(err.value)


def test_prepared_missing_key(tmp_path):
    np.savez(tmp_path / "train-0.npz", x=np.zeros((1, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "test.npz", x=np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"train-0\.npz: expected arrays \['x', 'y'\].*missing \['y'\]"):
        load_dataset("cifar100", tmp_path, download=False)


def assert_lists_places_and_fix(message: str, root: Path, name: str) -> None:
    assert str(root) in message and str(root / name) in message
    assert "--data-root DIR" in message and "DATA=DIR" in message


def test_missing_folder_without_download(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match="CIFAR-100 .* not found") as err:
        load_dataset("cifar100", root, download=False)
    assert_lists_places_and_fix(str(err.value), root, "cifar100")
    with pytest.raises(DataError, match="not found"):
        find_dataset_dir("cifar100", root)


def test_failed_download_is_one_data_error(tmp_path, monkeypatch):
    def offline(root, train, download):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataError, match="URLError.*no network") as err:
        load_dataset("cifar100", tmp_path, download=True)
    assert_lists_places_and_fix(str(err.value), tmp_path, "cifar100")


# ------------------------------------------------------------------------------ torchvision + cache


def fake_split(per_class: int, seed: int) -> tuple[np.ndarray, list[int]]:
    images = np.random.default_rng(seed).integers(0, 256, (per_class * 10, 32, 32, 3), dtype=np.uint8)
    return images, list(range(10)) * per_class


class FakeCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10: data, targets, classes, and a record of calls."""

    calls: list[tuple[str, bool, bool]] = []
    splits = {"train": fake_split(3, seed=0), "test": fake_split(2, seed=1)}

    def __init__(self, root, train, download):
        FakeCIFAR10.calls.append((root, train, download))
        self.data, self.targets = self.splits["train" if train else "test"]
        self.classes = [f"class{i}" for i in range(10)]


def refuse(*args, **kwargs):
    raise AssertionError("torchvision must not be called when the cache exists")


@pytest.mark.filterwarnings("error")  # a cache that silently fails to be written is a failure here
def test_torchvision_conversion_and_cache(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "cifar10", replace(DATASETS["cifar10"], train_per_class=3, test_per_class=2))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    FakeCIFAR10.calls.clear()
    first = load_dataset("cifar10", tmp_path)
    assert FakeCIFAR10.calls == [(str(tmp_path / "cifar10"), True, True), (str(tmp_path / "cifar10"), False, True)]
    np.testing.assert_array_equal(first.train.images, FakeCIFAR10.splits["train"][0])
    assert first.train.labels.dtype == np.int64 and first.test.labels.tolist() == list(range(10)) * 2
    assert first.class_names == [f"class{i}" for i in range(10)]

    cache = tmp_path / "cifar10" / "cifar10-uint8.npz"
    assert cache.is_file() and [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp file left
    assert all(info.compress_type == zipfile.ZIP_STORED for info in zipfile.ZipFile(cache).infolist())
    assert find_dataset_dir("cifar10", tmp_path) == cache.parent

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", refuse)
    again = load_dataset("cifar10", tmp_path / "cifar10")  # the data set folder itself works as root too
    np.testing.assert_array_equal(again.train.images, first.train.images)
    np.testing.assert_array_equal(again.test.labels, first.test.labels)
    assert again.class_names == first.class_names


def test_damaged_cache(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "cifar10", replace(DATASETS["cifar10"], train_per_class=3, test_per_class=2))
    x = np.zeros((30, 32, 32, 3), np.uint8)
    y = np.array(list(range(10)) * 3)
    y[0] = 42
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "cifar10-uint8.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20] % 10,
             class_names=np.array([str(i) for i in range(10)]))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", refuse)
    with pytest.raises(DataError, match=r"(?s)cifar10-uint8\.npz \(train\): expected labels in 0\.\.9.*delete"):
        load_dataset("cifar10", tmp_path)


# ------------------------------------------------------------------------------ ImageNet-style folder

CLASSES = ["n02", "n00", "n01"]  # deliberately unsorted: class index = sorted name


def make_image(path: Path, rng: np.random.Generator) -> None:
    height, width = rng.integers(60, 400, size=2)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture()
def imagenet_root(tmp_path) -> Path:
    """tmp/imagenet100/{train,val}/<class>/ with 4 train and 2 val images per class, mixed formats."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "imagenet100"
    for name in CLASSES:
        for i in range(4):
            make_image(folder / "train" / name / f"{name}_{i}{['.png', '.JPEG'][i % 2]}", rng)
        for i in range(2):
            make_image(folder / "val" / name / f"val_{name}_{i}.jpg", rng)
        (folder / "train" / name / "notes.txt").write_text("not an image")
    return tmp_path


def load_small(root: Path):
    with pytest.warns(UserWarning, match="imagenet100 has 100 classes, found 3"):
        return load_dataset("imagenet100", root)


def test_imagenet_folder_scan(imagenet_root):
    data = load_small(imagenet_root)
    assert data.class_names == ["n00", "n01", "n02"]
    assert data.spec.num_classes == 3 and data.spec.image_shape == (224, 224, 3)
    assert isinstance(data.train, FolderImageSet) and not data.train.in_memory
    assert data.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert [Path(p).name for p in data.train.paths[:4]] == ["n00_0.png", "n00_1.JPEG", "n00_2.png", "n00_3.JPEG"]
    images = data.train.read(np.arange(len(data.train)))
    assert images.shape == (12, 224, 224, 3) and images.dtype == np.uint8
    assert find_dataset_dir("imagenet100", imagenet_root) == imagenet_root / "imagenet100"


def test_folder_read_matches_torchvision_eval_transform(imagenet_root):
    from torchvision import transforms

    data = load_small(imagenet_root)
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    for i in (0, 5, 11):
        with Image.open(data.train.paths[i]) as img:
            expected = np.asarray(reference(img.convert("RGB")))
        np.testing.assert_array_equal(data.train.read(np.array([i]))[0], expected)


def test_folder_subset_relabel(imagenet_root):
    train = load_small(imagenet_root).train
    part = train.subset(np.array([11, 4]))
    assert isinstance(part, FolderImageSet) and part.labels.tolist() == [2, 1]
    np.testing.assert_array_equal(part.read(np.array([0, 1])), train.read(np.array([11, 4])))
    assert train.relabel(np.array([2, 0, 1])).labels.tolist() == [2] * 4 + [0] * 4 + [1] * 4
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # the original is untouched


def test_imagenet_split_lists(imagenet_root):
    folder = imagenet_root / "imagenet100"
    # Lists define the split and the labels: a subset, labelled in reverse of the sorted order.
    (folder / "train.txt").write_text("train/n02/n02_0.png 0\ntrain/n01/n01_3.JPEG 1\n\ntrain/n00/n00_1.JPEG 2\n")
    (folder / "val.txt").write_text("val/n00/val_n00_0.jpg 2\nval/n02/val_n02_1.jpg 0\n")
    data = load_small(imagenet_root)
    assert data.train.labels.tolist() == [0, 1, 2] and data.test.labels.tolist() == [2, 0]
    assert data.class_names == ["n02", "n01", "n00"]
    assert data.train.paths[1] == str(folder / "train" / "n01" / "n01_3.JPEG")
    assert data.test.read(np.array([0, 1])).shape == (2, 224, 224, 3)


def test_imagenet_list_with_missing_file(imagenet_root):
    folder = imagenet_root / "imagenet100"
    (folder / "train.txt").write_text("train/n00/n00_0.png 0\ntrain/n00/gone.JPEG 0\n")
    (folder / "val.txt").write_text("val/n00/val_n00_0.jpg 0\n")
    with pytest.raises(DataError, match=r"train\.txt: 1 listed images do not exist: .*gone\.JPEG"):
        load_dataset("imagenet100", imagenet_root)


def test_imagenet_list_needs_both(imagenet_root):
    (imagenet_root / "imagenet100" / "train.txt").write_text("train/n00/n00_0.png 0\n")
    with pytest.raises(DataError, match="found train.txt but no val.txt"):
        load_dataset("imagenet100", imagenet_root)


def test_imagenet_bad_list_line(imagenet_root):
    folder = imagenet_root / "imagenet100"
    (folder / "train.txt").write_text("train/n00/n00_0.png zero\n")
    (folder / "val.txt").write_text("val/n00/val_n00_0.jpg 0\n")
    with pytest.raises(DataError, match=r"train\.txt:1: expected 'relative/path/to/image.JPEG label'"):
        load_dataset("imagenet100", imagenet_root)


def test_imagenet_empty_class(imagenet_root):
    (imagenet_root / "imagenet100" / "train" / "n03").mkdir()
    (imagenet_root / "imagenet100" / "val" / "n03").mkdir()
    with pytest.raises(DataError, match=r"train: expected image files .* found none in n03"):
        load_dataset("imagenet100", imagenet_root)


def test_imagenet_val_classes_differ(imagenet_root):
    (imagenet_root / "imagenet100" / "val" / "n01").rename(imagenet_root / "imagenet100" / "val" / "n09")
    with pytest.raises(DataError, match="missing: n01; extra: n09"):
        load_dataset("imagenet100", imagenet_root)


def test_imagenet_missing_folder(tmp_path):
    with pytest.raises(DataError, match="ImageNet-100 .* not found") as err:
        load_dataset("imagenet100", tmp_path)
    assert_lists_places_and_fix(str(err.value), tmp_path, "imagenet100")
