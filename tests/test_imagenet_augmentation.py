"""ImageNetAugmentation: the pixels of torchvision's resized_crop + hflip + normalize, the parameter
distribution of RandomResizedCrop.get_params, determinism, and the input and output forms."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from benchmark.train.augmentation import (CropParameters, ImageNetAugmentation, crop_parameters,
                                          resized_crops_batched)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def smooth_image(height: int, width: int, seed: int) -> torch.Tensor:
    """uint8 [3, h, w], a view of an [h, w, 3] array as the training store hands images out."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(height // 8, 2), max(width // 8, 2), generator=generator) * 255
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    grain = torch.randn(smooth.shape, generator=generator) * 10
    pixels = (smooth + grain).clamp(0, 255).round().to(torch.uint8)[0]
    return pixels.permute(1, 2, 0).contiguous().permute(2, 0, 1)


# Three images and boxes: a shrinking crop, an enlarging one, and the whole image at the output size.
IMAGES = [smooth_image(48, 64, 1), smooth_image(40, 40, 2), smooth_image(32, 32, 3)]
BOXES = CropParameters(top=torch.tensor([3, 10, 0]), left=torch.tensor([5, 2, 0]), height=torch.tensor([41, 17, 32]),
                       width=torch.tensor([50, 23, 32]), flip=torch.tensor([True, False, True]),
                       factor=torch.ones(3))


def torchvision_reference(images, boxes: CropParameters, size: int) -> torch.Tensor:
    """resized_crop(antialias=True) + hflip + ToTensor + Normalize, image by image, in float64."""
    out = []
    for image, i, j, h, w, flip in zip(images, boxes.top.tolist(), boxes.left.tolist(), boxes.height.tolist(),
                                       boxes.width.tolist(), boxes.flip.tolist()):
        crop = TF.resized_crop(image, i, j, h, w, [size, size], antialias=True)
        out.append(TF.horizontal_flip(crop) if flip else crop)
    x = torch.stack(out).double() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def levels(x: torch.Tensor) -> torch.Tensor:
    """Normalized pixels back on the 0..255 scale."""
    return x.double() * torch.tensor(STD).view(1, 3, 1, 1) * 255


def test_cpu_path_gives_torchvisions_pixels():
    augmentation = ImageNetAugmentation(MEAN, STD, size=32)
    out = augmentation.apply(IMAGES, BOXES)
    difference = (levels(out) - levels(torchvision_reference(IMAGES, BOXES, 32))).abs().max()
    assert difference < 1e-3  # the same uint8 resize; only the float normalize differs


def test_batched_path_is_torchvisions_resize_before_rounding():
    # The accelerator path, run here on the CPU: float, not rounded to uint8 as torchvision's CPU kernel is.
    resized = resized_crops_batched(IMAGES, BOXES, 32)
    reference = levels(torchvision_reference(IMAGES, BOXES, 32)) + torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    difference = (resized.double() - reference).abs().max()
    assert difference <= 1.01  # measured 1.0 (a level: rounding plus the uint8 kernel's fixed-point weights)
    assert (resized.double() - reference).abs().mean() < 0.3


def test_batched_path_reads_a_batch_tensor_too():
    batch = torch.stack([smooth_image(40, 40, seed) for seed in range(3)])
    boxes = CropParameters(torch.tensor([0, 5, 0]), torch.tensor([0, 3, 8]), torch.tensor([40, 20, 32]),
                           torch.tensor([40, 30, 32]), torch.tensor([False, True, False]), torch.ones(3))
    from_batch = resized_crops_batched(batch, boxes, 32)
    from_list = resized_crops_batched(list(batch.unbind(0)), boxes, 32)
    assert torch.equal(from_batch, from_list)


def test_parameter_distribution_matches_torchvision():
    draws = 20_000
    ours = crop_parameters(torch.tensor([[256, 341]]).expand(draws, 2), torch.Generator().manual_seed(0))
    torch.manual_seed(0)  # get_params draws from the global generator
    theirs = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, 256, 341), [0.08, 1.0], [3 / 4, 4 / 3])
                           for _ in range(draws)], dtype=torch.float64)
    their_area = (theirs[:, 2] * theirs[:, 3] / (256 * 341)).mean()
    our_area = (ours.height * ours.width / (256 * 341)).double().mean()
    # Standard errors of the difference of the two means: about 0.0022 (area fraction), 0.0016 (log
    # aspect ratio), 0.4 pixels (offsets); the tolerances are about 3.5 of them.
    assert abs(our_area - their_area) < 0.008
    assert 0.42 < our_area < 0.45  # measured 0.437 (torchvision 0.435): large tries often do not fit
    their_log_ratio = (theirs[:, 3] / theirs[:, 2]).log().mean()
    our_log_ratio = (ours.width / ours.height).double().log().mean()
    assert abs(our_log_ratio - their_log_ratio) < 0.006
    assert abs(ours.top.double().mean() - theirs[:, 0].mean()) < 1.5
    assert abs(ours.left.double().mean() - theirs[:, 1].mean()) < 1.5
    # Every box lies inside the image, and the offsets cover their ranges.
    assert bool((ours.top >= 0).all() and (ours.top + ours.height <= 256).all())
    assert bool((ours.left >= 0).all() and (ours.left + ours.width <= 341).all())
    assert int((ours.top == 0).sum()) > 0 and int((ours.top + ours.height == 256).sum()) > 0
    assert abs(ours.flip.double().mean() - 0.5) < 0.015


def test_fallback_is_torchvisions_centre_crop():
    # A 32x400 strip: few tries fit, so most draws fall back to the centre 32x43 (aspect clamped to 4/3).
    draws = 2_000
    ours = crop_parameters(torch.tensor([[32, 400]]).expand(draws, 2), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    theirs = [RandomResizedCrop.get_params(torch.empty(3, 32, 400), [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(draws)]
    our_fallbacks = sum(box == (0, 178, 32, 43) for box in zip(ours.top.tolist(), ours.left.tolist(),
                                                               ours.height.tolist(), ours.width.tolist()))
    their_fallbacks = sum(box == (0, 178, 32, 43) for box in theirs)
    assert abs(our_fallbacks - their_fallbacks) / draws < 0.03  # standard error of the difference about 0.009
    assert 0.88 < our_fallbacks / draws < 0.95  # measured 0.916 (torchvision 0.920)
    tall = crop_parameters(torch.tensor([[400, 32]]).expand(draws, 2), torch.Generator().manual_seed(0))
    centre = (tall.top == 178) & (tall.left == 0) & (tall.height == 43) & (tall.width == 32)
    assert 0.88 < float(centre.double().mean()) < 0.95


def test_same_seed_same_batch_other_seed_other_batch():
    augmentation = ImageNetAugmentation.for_recipe("resized_crop_flip", MEAN, STD)
    images = [smooth_image(64, 85, 4), smooth_image(224, 224, 5)]
    first = augmentation.train(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, augmentation.train(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augmentation.train(images, torch.Generator().manual_seed(4)))


def test_ragged_list_and_batch_tensor_give_channels_last_float_batches():
    augmentation = ImageNetAugmentation.for_recipe("resized_crop_flip", MEAN, STD)
    ragged = [smooth_image(60, 80, 6), smooth_image(224, 224, 7), smooth_image(90, 50, 8)]
    out = augmentation.train(ragged, torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    batch = torch.stack([smooth_image(70, 70, seed) for seed in range(2)])
    plain = ImageNetAugmentation(MEAN, STD, channels_last=False).train(batch, torch.Generator().manual_seed(0))
    assert plain.shape == (2, 3, 224, 224) and plain.is_contiguous()


def test_recipes():
    assert ImageNetAugmentation.for_recipe("resized_crop_flip", MEAN, STD).brightness == 0.0
    assert ImageNetAugmentation.for_recipe("resized_crop_flip_brightness", MEAN, STD).brightness == 63 / 255
    with pytest.raises(ValueError, match="pad_crop_flip_brightness"):
        ImageNetAugmentation.for_recipe("pad_crop_flip_brightness", MEAN, STD)


def test_brightness_only_in_the_imagenet1000_recipe():
    sizes = torch.tensor([[256, 341]]).expand(4000, 2)
    plain = crop_parameters(sizes, torch.Generator().manual_seed(0))
    jittered = crop_parameters(sizes, torch.Generator().manual_seed(0), brightness=63 / 255)
    assert bool((plain.factor == 1).all())
    # The factor is drawn last, so the boxes and flips are the same draw.
    assert torch.equal(plain.top, jittered.top) and torch.equal(plain.flip, jittered.flip)
    assert 1 - 63 / 255 <= float(jittered.factor.min()) < 1 - 0.24
    assert 1 + 0.24 < float(jittered.factor.max()) <= 1 + 63 / 255
    images = [smooth_image(64, 85, 9)]
    without = ImageNetAugmentation.for_recipe("resized_crop_flip", MEAN, STD).train(images, torch.Generator().manual_seed(1))
    jitter = ImageNetAugmentation.for_recipe("resized_crop_flip_brightness", MEAN, STD)
    with_ = jitter.train(images, torch.Generator().manual_seed(1))
    assert not torch.equal(without, with_)
    # The same pixels scaled by the drawn factor and clamped to [0, 1], as adjust_brightness does.
    factor = float(crop_parameters(torch.tensor([[64, 85]]), torch.Generator().manual_seed(1), brightness=63 / 255).factor)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = ((without * std + mean) * factor).clamp(0, 1)
    assert (with_ * std + mean - expected).abs().max() < 1e-5


def test_normalize_is_the_evaluation_path():
    images = torch.full((2, 3, 224, 224), 255, dtype=torch.uint8)
    out = ImageNetAugmentation.for_recipe("resized_crop_flip", MEAN, STD).normalize(images)
    assert out.shape == (2, 3, 224, 224) and out.is_contiguous(memory_format=torch.channels_last)
    assert out[0, :, 0, 0].tolist() == pytest.approx([2.2489083, 2.4285715, 2.64], abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the batched on-device resize is checked on the CPU only")
def test_cuda_matches_cpu_for_the_same_parameters():
    device = torch.device("cuda")
    augmentation = ImageNetAugmentation(MEAN, STD, size=32, brightness=63 / 255)
    boxes = CropParameters(BOXES.top, BOXES.left, BOXES.height, BOXES.width, BOXES.flip, torch.tensor([0.8, 1.0, 1.2]))
    on_cpu = augmentation.apply(IMAGES, boxes)
    on_device = augmentation.apply([image.to(device) for image in IMAGES],
                                   CropParameters(*(getattr(boxes, f).to(device) for f in ("top", "left", "height",
                                                                                          "width", "flip", "factor"))))
    assert on_device.is_contiguous(memory_format=torch.channels_last)
    assert (levels(on_device.cpu()) - levels(on_cpu)).abs().max() <= 1.3  # uint8 rounding on the CPU, up to a level x 1.2
    train = augmentation.train([image.to(device) for image in IMAGES], torch.Generator(device).manual_seed(0))
    assert train.shape == (3, 3, 32, 32) and train.device.type == "cuda"


def test_a_generator_elsewhere_is_named():
    elsewhere = [torch.empty(3, 40, 40, dtype=torch.uint8, device="meta")]
    with pytest.raises(ValueError, match="images on meta but the generator on cpu"):
        ImageNetAugmentation(MEAN, STD).train(elsewhere, torch.Generator())
