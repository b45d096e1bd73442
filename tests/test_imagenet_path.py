"""The folder (ImageNet-style) data path through the engine: training batches read whole from the JPEG
store and test batches from the decoded uint8 cache (both built on first use under the data folder),
exemplars stored as 224x224 uint8 images and charged 150,528 bytes each."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.train.augmentation import augmentation_for
from benchmark.train.batches import CachedSource, ConcatSource, StoreSource, TensorSource, source_of
from benchmark.data import load_dataset
from benchmark.data.image_cache import CACHE_ENV
from benchmark.train.engine import Engine, EngineSettings, RunData
from benchmark.config.profile import Schedule
from methods import METHODS


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "imagenet100"
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for label, name in enumerate(["n01", "n02", "n03"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(230, 300)), int(rng.integers(230, 300)), 3)
                # Each class has its own colour, so a few steps can tell them apart.
                pixels = np.clip(rng.normal(60 + 70 * label, 20, size), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
        patch.delenv(CACHE_ENV, raising=False)  # the default place: DATA/imagenet100/.cache
        warnings.simplefilter("ignore")  # three classes instead of ImageNet-100's hundred
        return load_dataset("imagenet100", root.parent)


def test_replay_runs_on_folder_data_and_charges_imagenet_bytes(tiny_imagenet):
    device = torch.device("cpu")
    spec = tiny_imagenet.spec
    data = RunData(source_of(tiny_imagenet.train, device), source_of(tiny_imagenet.test, device), [0, 2, 3],
                   spec.image_shape, augmentation_for(spec))
    assert isinstance(data.train, StoreSource) and isinstance(data.test, CachedSource)
    cache = sorted(p.name.split("-")[0] + p.suffix for p in tiny_imagenet.train.cache_dir.glob("*.[jn]p[ey]*"))
    assert tiny_imagenet.train.cache_dir.parts[-2:] == ("imagenet100", ".cache") and cache == ["train.jpegs", "val.npy"]
    schedule = Schedule(epochs=1, milestones=(), weight_decay=0.0, batch_size=4)
    torch.manual_seed(0)
    method = METHODS.get("replay")("resnet8_half")
    engine = Engine(method, data, EngineSettings([schedule, schedule], exemplars=4), log=lambda line: None)
    results = engine.run()
    # After task 1 three classes are seen: floor(4 / 3) = 1 exemplar each, decoded to 224x224.
    assert engine.memory.images.shape == (3, 3, 224, 224) and engine.memory.images.dtype == torch.uint8
    assert results[-1].memory["paper"]["exemplar_bytes"] == 3 * 150_528
    assert results[-1].exemplars_stored == 3
    # Task 1 trained on the new folder images plus the stored exemplars.
    assert isinstance(engine.training_set(data.task(1)), ConcatSource)
    assert len(results[-1].cnn.per_task) == 2


def test_without_a_cache_training_reads_whole_images_and_evaluation_centre_crops(tiny_imagenet, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = load_dataset("imagenet100", tiny_imagenet.train.paths[0].rsplit("/imagenet100/", 1)[0])
    source = source_of(dataset.train, torch.device("cpu"))
    assert type(source).__name__ == "FolderSource"
    rows = torch.arange(len(source))
    whole = source.training_images(rows)
    # The fixture's images are 230-299 pixels a side: each whole, its shorter side resized to 256.
    assert isinstance(whole, list) and all(min(image.shape[1:]) == 256 and image.shape[0] == 3 for image in whole)
    crops = source.images(rows)
    assert crops.shape == (len(rows), 3, 224, 224)
    # The evaluation view is the centre of the whole image (torchvision CenterCrop's rounding).
    first = whole[0]
    top, left = round((first.shape[1] - 224) / 2), round((first.shape[2] - 224) / 2)
    assert torch.equal(crops[0], first[:, top:top + 224, left:left + 224])


def test_the_store_serves_both_views_and_a_concatenation_mixes_them(tiny_imagenet):
    device = torch.device("cpu")
    train = source_of(tiny_imagenet.train, device)
    assert isinstance(train, StoreSource)
    rows = torch.tensor([3, 0, 5])
    whole, crops = train.training_images(rows), train.images(rows)
    assert [min(image.shape[1:]) for image in whole] == [256, 256, 256]
    for image, crop in zip(whole, crops):
        top, left = round((image.shape[1] - 224) / 2), round((image.shape[2] - 224) / 2)
        assert torch.equal(crop, image[:, top:top + 224, left:left + 224])
    exemplars = torch.zeros((2, 3, 224, 224), dtype=torch.uint8)
    mixed = ConcatSource([train, TensorSource(exemplars, torch.tensor([7, 8]))])
    batch = mixed.training_images(torch.tensor([len(train), 1, len(train) + 1]))
    assert [tuple(image.shape) for image in batch][0] == (3, 224, 224) and min(batch[1].shape[1:]) == 256
    assert torch.equal(batch[1], train.training_images(torch.tensor([1]))[0])
    # Evaluation reads the same rows as one fixed-size batch.
    assert mixed.images(torch.tensor([len(train), 1])).shape == (2, 3, 224, 224)
