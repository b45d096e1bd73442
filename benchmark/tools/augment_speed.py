"""Milliseconds per training batch of the ImageNet augmentation, for each way of doing its resize.

    python -m benchmark.tools.augment_speed --batch 128 --repeats 5

Times ImageNetAugmentation's whole train step (parameter draw, RandomResizedCrop to 224, flip,
normalize) on a batch of whole images as the training store hands them out (a list of uint8
[3, h, w] views of [h, w, 3] arrays), once for 256x341 images (an ImageNet photo with its shorter side
at 256), for 224x224 images (replayed exemplars) and for landscape and portrait photos mixed, with
each resize candidate:
  - per_image_uint8: one F.interpolate per image on its uint8 crop (PyTorch's native uint8 path),
                     then float: what train() does on a CPU (torchvision's own pixels);
  - per_image_float: the same on the float crop (no rounding; torchvision resizes uint8
                     images in float off the CPU);
  - batched:         two batched matrix products with the resize weights (what train() does on an
                     accelerator: no parameter is read on the host);
  - roi_align:       torchvision.ops.roi_align with adaptive sampling: an average of bilinear samples
                     per output pixel, not the same filter (its max pixel difference is printed too).
Best of `--repeats` per cell, on the device given (default the CPU), after one warm-up.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from benchmark.train.augmentation import (CropParameters, ImageNetAugmentation, padded_batch, resized_crops_batched,
                                          resized_crops_per_image)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Landscape photos; replayed exemplars; landscape and portrait photos alternating (the batched resize
# pads them all to 341x341).
SHAPES = {"256x341": [(256, 341)], "224x224": [(224, 224)], "256x341+341x256": [(256, 341), (341, 256)]}


def per_image_float(images, p: CropParameters, size: int) -> torch.Tensor:
    boxes = torch.stack([p.top, p.left, p.height, p.width, p.flip.long()], dim=1).tolist()
    out = torch.empty(len(boxes), 3, size, size, device=p.top.device)
    for k, (image, (i, j, h, w, flip)) in enumerate(zip(images, boxes)):
        resized = torch.nn.functional.interpolate(image[None, :, i:i + h, j:j + w].float(), size=(size, size),
                                                  mode="bilinear", align_corners=False, antialias=True)[0]
        out[k] = resized.flip(-1) if flip else resized
    return out


def per_image_uint8(images, p: CropParameters, size: int) -> torch.Tensor:
    return resized_crops_per_image(images, p, size).float()


def roi_align(images, p: CropParameters, size: int) -> torch.Tensor:
    from torchvision.ops import roi_align as align

    batch = padded_batch(images).float()
    boxes = torch.stack([torch.arange(len(batch), device=batch.device), p.left, p.top,
                         p.left + p.width, p.top + p.height], dim=1).float()
    out = align(batch, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return torch.where(p.flip[:, None, None, None], out.flip(-1), out)


CANDIDATES: dict[str, Callable] = {"per_image_uint8": per_image_uint8, "per_image_float": per_image_float,
                                   "batched": resized_crops_batched, "roi_align": roi_align}


def whole_images(count: int, shapes: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
    """`count` uint8 images [3, h, w] of `shapes` in turn, each a view of an [h, w, 3] array as the
    store gives them: smooth random colour fields plus grain (pure noise would exaggerate how much
    two resize filters differ)."""
    generator = torch.Generator().manual_seed(0)
    images = []
    for k in range(count):
        height, width = shapes[k % len(shapes)]
        coarse = torch.rand(1, 3, height // 16, width // 16, generator=generator) * 255
        smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        pixels = (smooth + torch.randn(smooth.shape, generator=generator) * 12).clamp(0, 255).round().to(torch.uint8)
        images.append(pixels.permute(1, 2, 0).contiguous().to(device).permute(2, 0, 1))
    return images


def best_ms(action: Callable[[], object], repeats: int, device: torch.device) -> float:
    action()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        action()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def train_with(resize: Callable, augmentation: ImageNetAugmentation):
    """augmentation.train with `resize` in place of its resized_crops."""
    import benchmark.train.augmentation as module

    def train(images, generator):
        saved, module.resized_crops = module.resized_crops, resize
        try:
            return augmentation.train(images, generator)
        finally:
            module.resized_crops = saved
    return train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    augmentation = ImageNetAugmentation.for_recipe("resized_crop_flip", IMAGENET_MEAN, IMAGENET_STD)
    print(f"ImageNetAugmentation.train, batch {args.batch}, {device}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats} (ms per batch; max |difference| from the first row on the 0..255 scale)")
    for label, shapes in SHAPES.items():
        images = whole_images(args.batch, shapes, device)
        reference, first = None, None
        for name, resize in CANDIDATES.items():
            if name == "per_image_uint8" and device.type != "cpu":
                continue  # PyTorch's uint8 antialiased resize is a CPU kernel
            train = train_with(resize, augmentation)
            ms = best_ms(lambda: train(images, torch.Generator(device).manual_seed(1)), args.repeats, device)
            out = train(images, torch.Generator(device).manual_seed(1))
            if reference is None:
                reference, first = out, (name, ms)
            difference = ((out - reference) * torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255).abs().max()
            print(f"  {label:16s} {name:16s} {ms:8.1f} ms  "
                  f"({ms / first[1]:.2f}x {first[0]})  max diff {float(difference):.3f}")


if __name__ == "__main__":
    main()
