"""Section 6 of the device check: the ImageNet data path on the device.

A synthetic JPEG store (ImageNet-like 500x375 JPEGs, kept at shorter side 256 as a real run keeps
them) is read as a training run reads it, through `StoreSource` on the device: on CUDA its JPEGs are
decoded by nvJPEG (torchvision.io.decode_jpeg on the GPU) and RandomResizedCrop runs batched on the
GPU; on a CPU both run as on a CPU training machine. Checked:
  - decode parity: the device's decode of the stored bytes against the CPU's (simplejpeg), within
    a few levels (two JPEG decoders may round their IDCT differently);
  - augmentation parity: the same random parameters, drawn once on the CPU, give the same pixels on
    the device as on the CPU, within 1.01 levels of 255 (the GPU path does not round its resize);
  - throughput: images/s of the training pipeline (read + decode + augmentation) and of the
    evaluation view (centre crops), batch 128, in a shuffled order, as an epoch reads them.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.data import DATASETS
from benchmark.data.jpeg_store import open_jpeg_store
from benchmark.tools.io_speed import make_jpegs
from benchmark.tools.sections import Section
from benchmark.train.augmentation import ImageNetAugmentation, augmentation_for, crop_parameters, image_sizes
from benchmark.train.batches import StoreSource

DECODE_TOLERANCE = 8.0     # levels of 255: nvJPEG and libjpeg-turbo IDCTs may differ, never by a shift
AUGMENT_TOLERANCE = 1.01   # levels of 255: the batched resize's unrounded floats against the uint8 path
PARITY_IMAGES = 16


def imagenet_path_section(section: Section, device: torch.device, images: int, batch_size: int = 128) -> None:
    spec = DATASETS["imagenet1000"]
    augmentation = augmentation_for(spec)
    with tempfile.TemporaryDirectory(prefix="imagenet-path-") as folder:
        paths = make_jpegs(Path(folder) / "train", images, (500, 375))
        store = open_jpeg_store(paths, Path(folder) / "cache", "train", log=lambda line: None)
        source = StoreSource(store, np.arange(images) % 10, spec.image_shape[0], device)
        decoder = "nvJPEG on the GPU" if device.type == "cuda" else "simplejpeg threads on the CPU"
        section.note(f"{images} synthetic 500x375 JPEGs kept at shorter side 256 "
                     f"({store.stored_bytes / images / 1024:.1f} KiB each), decoded by {decoder}")
        check_decode(section, source, device)
        check_augmentation(section, augmentation, source, device)
        measure_throughput(section, augmentation, source, device, batch_size)


def check_decode(section: Section, source: StoreSource, device: torch.device) -> None:
    rows = torch.arange(PARITY_IMAGES)
    on_device = source.training_images(rows)
    on_cpu = [torch.from_numpy(image).permute(2, 0, 1) for image in source.store.decode(rows.numpy())]
    worst = max(float((a.cpu().float() - b.float()).abs().max()) for a, b in zip(on_device, on_cpu))
    mean = float(np.mean([float((a.cpu().float() - b.float()).abs().mean()) for a, b in zip(on_device, on_cpu)]))
    section.data["decode_max_levels"], section.data["decode_mean_levels"] = worst, mean
    section.note(f"decode on {device} vs CPU: max {worst:.2f}, mean {mean:.3f} levels of 255")
    if worst > DECODE_TOLERANCE:
        section.fail(f"the device decodes the stored JPEGs {worst:.2f} levels away from the CPU "
                     f"(allowed {DECODE_TOLERANCE})")


def check_augmentation(section: Section, augmentation: ImageNetAugmentation, source: StoreSource,
                       device: torch.device) -> None:
    rows = torch.arange(PARITY_IMAGES)
    cpu_images = [torch.from_numpy(image).permute(2, 0, 1) for image in source.store.decode(rows.numpy())]
    parameters = crop_parameters(image_sizes(cpu_images, torch.device("cpu")), torch.Generator().manual_seed(0),
                                 augmentation.scale, augmentation.ratio, augmentation.brightness)
    on_device = augmentation.apply([image.to(device) for image in cpu_images], moved(parameters, device))
    on_cpu = augmentation.apply(cpu_images, parameters)
    std = torch.tensor(augmentation.std).view(1, 3, 1, 1)
    worst = float(((on_device.cpu() - on_cpu) * std * 255).abs().max())  # back to levels of 255
    section.data["augmentation_max_levels"] = worst
    section.note(f"RandomResizedCrop + flip + brightness on {device} vs CPU, same parameters: max {worst:.3f} levels")
    if worst > AUGMENT_TOLERANCE:
        section.fail(f"the augmentation on {device} is {worst:.3f} levels from the CPU's (allowed {AUGMENT_TOLERANCE})")


def moved(parameters, device: torch.device):
    return type(parameters)(**{name: value.to(device) for name, value in vars(parameters).items()})


def measure_throughput(section: Section, augmentation: ImageNetAugmentation, source: StoreSource,
                       device: torch.device, batch_size: int) -> None:
    generator = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(len(source), generator=generator, device=device)

    def epoch(training: bool) -> float:
        started = time.perf_counter()
        for _, images in source.batches(order, batch_size, training=training):
            out = augmentation.train(images, generator) if training else augmentation.normalize(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        del out
        return len(source) / (time.perf_counter() - started)

    epoch(True)  # warm-up: the page cache, cuDNN/nvJPEG handles, the pools' threads
    train, test = epoch(True), epoch(False)
    section.data.update({"train_images_per_second": train, "eval_images_per_second": test})
    section.note(f"training pipeline (read, decode, augment): {train:.0f} images/s; "
                 f"evaluation view (centre crops): {test:.0f} images/s; batch {batch_size}")
    if not (train > 0 and test > 0):
        section.fail("no throughput measured")
