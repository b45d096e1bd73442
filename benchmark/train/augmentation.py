"""Batch-wise augmentation and normalization, on the batch's device, with the run's generator.

`Augmentation` is the CIFAR recipe (pad-4 random crop, flip, brightness jitter; docs/protocol.md
section 5); `ImageNetAugmentation` the ImageNet one (RandomResizedCrop(224), flip, and for
ImageNet-1000 brightness jitter) on whole images of differing sizes. Every augmentation has the same
two entry points, which the engine calls: `train(images, generator)` for a training batch and
`normalize(images)` for evaluation and herding. Randomness comes only from the generator passed in,
which lives on the batch's device, so a run is reproducible and resumable.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from benchmark.data.specs import CIFAR_AUGMENTATION, DatasetSpec


@dataclass(frozen=True)
class Augmentation:
    """Batch-wise on-device augmentation and normalization (docs/protocol.md section 5)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    padding: int = 4
    brightness: float = 63 / 255
    channels_last: bool = True

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> normalized float32, no augmentation (evaluation, herding)."""
        return self._standardize(images.float().div_(255))

    def train(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop with zero padding, horizontal flip, brightness jitter, then normalize."""
        n, device = len(images), generator.device
        shifts = 2 * self.padding + 1
        dy = torch.randint(0, shifts, (n,), generator=generator, device=device)
        dx = torch.randint(0, shifts, (n,), generator=generator, device=device)
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        factor = 1 + (torch.rand(n, generator=generator, device=device) * 2 - 1) * self.brightness
        # Crop and flip move uint8 pixels (one gather); the float work is in place, one pass per op.
        x = crop_and_flip(images, self.padding, dy, dx, flip).float().div_(255)
        x = x.mul_(factor[:, None, None, None]).clamp_(0, 1)
        return self._standardize(x)

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        return standardize(x, self.mean, self.std, self.channels_last)


def standardize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool) -> torch.Tensor:
    """In place on a fresh float batch; the layout change comes last because elementwise ops
    on a channels_last batch with per-channel constants measured slower on CPU."""
    mean_, std_ = _channel_constants(mean, std, x.device)
    x = x.sub_(mean_).div_(std_)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@lru_cache(maxsize=8)
def _channel_constants(mean: tuple[float, ...], std: tuple[float, ...],
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Made once per device: building them per batch is a blocking host-to-device copy on CUDA."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def crop_and_flip(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor,
                  flip: torch.Tensor | None = None) -> torch.Tensor:
    """Image i cropped at (dy[i], dx[i]) from the zero-padded batch, then mirrored where flip[i].

    One gather over each image's flattened padded plane, the mirror folded into the column index:
    the same pixels as indexing with four broadcast index tensors and then where(flip, x.flip(3), x);
    with it the whole train augmentation of 128 images went from 8.4 to 2.0 ms on the 2-core CPU.
    """
    n, c, h, w = images.shape
    width = w + 2 * padding
    padded = torch.nn.functional.pad(images, (padding,) * 4).reshape(n, c, -1)
    columns = torch.arange(w, device=images.device)
    if flip is not None:
        columns = torch.where(flip[:, None], w - 1 - columns, columns)
    columns = dx[:, None] + columns                                         # [n, w]
    rows = dy[:, None] + torch.arange(h, device=images.device)              # [n, h]
    index = (rows[:, :, None] * width + columns[:, None, :]).view(n, 1, h * w)
    return padded.gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


# -- ImageNet: RandomResizedCrop(224) + flip (+ brightness for ImageNet-1000) -------------------------

# PyCIL utils/data.py (commit 87cc411): iImageNet100.train_trsf = [RandomResizedCrop(224),
# RandomHorizontalFlip()], iImageNet1000 adds ColorJitter(brightness=63/255) after the flip; both
# then ToTensor + Normalize. The MEMO authors' copy (wangkiw/ICLR23-MEMO utils/data.py) is the same.
# Where this differs from that reference, on purpose:
#   - the crop is cut from the stored image (shorter side 256), not the full-resolution original:
#     the same box distribution relative to the image, but a crop smaller than 224 is upsampled;
#   - an exemplar is kept as its 224x224 centre crop (the evaluation view) and replayed through
#     RandomResizedCrop of that crop;
#   - brightness scales the float resize, not a uint8 PIL image (no second rounding); on an
#     accelerator the resize is not rounded to uint8 either (within one level of torchvision's).
# The data sets' recipes (DatasetSpec.augmentation) that crop whole images, and their brightness jitter.
IMAGENET_BRIGHTNESS = {"resized_crop_flip": 0.0, "resized_crop_flip_brightness": 63 / 255}
CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params: tries before the centre-crop fallback

Images = torch.Tensor | list[torch.Tensor]  # uint8 [N, 3, H, W], or a list of uint8 [3, h_i, w_i]


@dataclass(frozen=True)
class CropParameters:
    """One batch's random draw, tensors [N] on the batch's device: the crop box of each image
    (torchvision's i, j, h, w), whether it is mirrored, and its brightness factor (1 without jitter)."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor
    factor: torch.Tensor


@dataclass(frozen=True)
class ImageNetAugmentation:
    """The reference ImageNet training recipe, batch-wise on the batch's device: RandomResizedCrop to
    `size` (bilinear, antialiased), horizontal flip, brightness jitter when `brightness` > 0, then
    normalize. Training batches are whole images of any size (a list) or one uint8 batch; the
    evaluation view (Resize(256) + CenterCrop(224), done by the data store) is only normalized."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    brightness: float = 0.0
    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    channels_last: bool = True

    @classmethod
    def for_recipe(cls, recipe: str, mean: tuple[float, float, float], std: tuple[float, float, float],
                   size: int = 224, channels_last: bool = True) -> "ImageNetAugmentation":
        """The recipe PyCIL trains ImageNet with ("resized_crop_flip": ImageNet-100's;
        "resized_crop_flip_brightness": ImageNet-1000's, brightness 63/255), cropping to `size`."""
        if recipe not in IMAGENET_BRIGHTNESS:
            raise ValueError(f"no ImageNet augmentation recipe {recipe!r}: "
                             f"use one of {sorted(IMAGENET_BRIGHTNESS)}, or build ImageNetAugmentation(...) directly")
        return cls(mean, std, brightness=IMAGENET_BRIGHTNESS[recipe], size=size, channels_last=channels_last)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, size, size] -> normalized float32, no augmentation (evaluation, herding)."""
        return standardize(images.float().div_(255), self.mean, self.std, self.channels_last)

    def train(self, images: Images, generator: torch.Generator) -> torch.Tensor:
        """Whole uint8 images (a list of [3, h, w], or [N, 3, H, W]) -> normalized float32 [N, 3, size, size]."""
        if len(images) and images[0].device != generator.device:
            raise ValueError(f"images on {images[0].device} but the generator on {generator.device}: "
                             "draw from a generator on the images' device (torch.Generator(device))")
        parameters = crop_parameters(image_sizes(images, generator.device), generator,
                                     self.scale, self.ratio, self.brightness)
        return self.apply(images, parameters)

    def apply(self, images: Images, parameters: CropParameters) -> torch.Tensor:
        """train()'s pixels for given parameters (a test or a device check replays a draw with it)."""
        x = resized_crops(images, parameters, self.size).div_(255)
        if self.brightness > 0:
            x = x.mul_(parameters.factor[:, None, None, None]).clamp_(0, 1)
        return standardize(x, self.mean, self.std, self.channels_last)


def image_sizes(images: Images, device: torch.device) -> torch.Tensor:
    """int64 [N, 2] (height, width) of each image, on `device`: the shapes are known on the host, so
    this is at most one small queued host-to-device copy, no sync."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"expected a uint8 batch [N, 3, H, W] or a list of [3, h, w] images, got shape {tuple(images.shape)}")
        n, height, width = len(images), images.shape[-2], images.shape[-1]
        return torch.stack([torch.full((n,), height, device=device), torch.full((n,), width, device=device)], dim=1)
    sizes = torch.tensor([tuple(image.shape[-2:]) for image in images], dtype=torch.long).view(-1, 2)
    if device.type == "cuda":  # from pinned memory the copy is queued; from pageable memory it blocks
        sizes = sizes.pin_memory()
    return sizes.to(device, non_blocking=True)


def crop_parameters(sizes: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), brightness: float = 0.0) -> CropParameters:
    """RandomResizedCrop's boxes for images of `sizes` [N, 2], drawn all at once from `generator`.

    The distribution of torchvision's RandomResizedCrop.get_params (0.29): up to 10 tries of an area
    fraction ~ U(scale) and an aspect ratio log-uniform in `ratio`, w = round(sqrt(area * ratio)),
    h = round(sqrt(area / ratio)); the first try with 0 < w <= W and 0 < h <= H is kept and placed at
    i ~ U{0..H-h}, j ~ U{0..W-w}; without one, the centre crop of the whole image with its aspect
    ratio clamped into `ratio`. All 10 tries are drawn for every image, so a batch always consumes
    the same amount of the generator's stream (a resumed run replays it) and nothing waits on the
    host. Then the flip (p = 0.5) and, when `brightness` > 0, a factor ~ U[1 - b, 1 + b]."""
    n, device = len(sizes), sizes.device
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    log_ratio = torch.tensor(ratio).log()  # float32, as torchvision's
    fraction = torch.rand(n, CROP_ATTEMPTS, generator=generator, device=device) * (scale[1] - scale[0]) + scale[0]
    aspect = (torch.rand(n, CROP_ATTEMPTS, generator=generator, device=device)
              * float(log_ratio[1] - log_ratio[0]) + float(log_ratio[0])).exp()
    area = height * width * fraction.double()
    w = (area * aspect.double()).sqrt().round()
    h = (area / aspect.double()).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.byte().argmax(dim=1, keepdim=True)  # index of the first fitting try (0 when none fits)
    found = fits.any(dim=1)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    height, width = height.squeeze(1), width.squeeze(1)
    fallback_h, fallback_w = centre_crop_fallback(height, width, ratio)
    h, w = torch.where(found, h, fallback_h), torch.where(found, w, fallback_w)
    position = torch.rand(n, 2, generator=generator, device=device).double()
    # floor(u * count) is uniform on 0..count-1; the clamp only guards float rounding at u -> 1.
    top = torch.minimum((position[:, 0] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((position[:, 1] * (width - w + 1)).floor(), width - w)
    top = torch.where(found, top, ((height - h) / 2).floor())
    left = torch.where(found, left, ((width - w) / 2).floor())
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    if brightness > 0:
        factor = 1 + (torch.rand(n, generator=generator, device=device) * 2 - 1) * brightness
    else:
        factor = torch.ones(n, device=device)
    return CropParameters(top.long(), left.long(), h.long(), w.long(), flip, factor)


def centre_crop_fallback(height: torch.Tensor, width: torch.Tensor,
                         ratio: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's (h, w) when no try fits: the whole image, cut to the nearest allowed aspect ratio."""
    in_ratio = width / height
    too_tall, too_wide = in_ratio < min(ratio), in_ratio > max(ratio)
    h = torch.where(too_tall, (width / min(ratio)).round(), height)
    w = torch.where(too_wide, (height * max(ratio)).round(), width)
    return h, w


def resized_crops(images: Images, parameters: CropParameters, size: int) -> torch.Tensor:
    """Each image's box resized to size x size (bilinear, antialiased) and mirrored where flipped:
    float32 [N, 3, size, size] on the 0..255 scale. On the CPU, where reading the boxes costs no
    sync, one uint8 resize per image (torchvision's own pixels, and the fastest of the candidates
    benchmark/tools/augment_speed.py measures); on an accelerator one batched float resize that never
    reads a parameter on the host (the engine syncs once per epoch, not per step). The two agree
    within one level: the uint8 path rounds, the float one does not."""
    if parameters.top.device.type == "cpu":
        return resized_crops_per_image(images, parameters, size).float()
    return resized_crops_batched(images, parameters, size)


def resized_crops_per_image(images: Images, parameters: CropParameters, size: int) -> torch.Tensor:
    """uint8 [N, 3, size, size]: one F.interpolate per image on its uint8 crop (a view). On a CPU
    this is PyTorch's native uint8 antialiased resize, exactly torchvision's resized_crop pixels."""
    p = parameters
    boxes = torch.stack([p.top, p.left, p.height, p.width, p.flip.long()], dim=1).tolist()
    out = torch.empty(len(boxes), 3, size, size, dtype=torch.uint8, device=p.top.device)
    for k, (image, (i, j, h, w, flip)) in enumerate(zip(images, boxes)):
        crop = image[None, :, i:i + h, j:j + w]
        if (h, w) != (size, size):  # torchvision returns an exact-size crop unresized
            crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                                   align_corners=False, antialias=True)
        out[k] = crop[0].flip(-1) if flip else crop[0]
    return out


def resized_crops_batched(images: Images, parameters: CropParameters, size: int) -> torch.Tensor:
    """All crops at once, without reading a parameter on the host: the antialiased bilinear resize is
    separable, so each image's resize is two small matrix products, rows = Wy @ image @ Wx^T, with
    weight matrices that are zero outside the crop (the flip mirrors Wx). Ragged images are
    zero-padded into one batch first; the padding gets zero weight."""
    p = parameters
    batch = padded_batch(images).float()
    wy = resize_weights(p.top, p.height, batch.shape[-2], size)                     # [N, size, H]
    wx = resize_weights(p.left, p.width, batch.shape[-1], size)                     # [N, size, W]
    wx = torch.where(p.flip[:, None, None], wx.flip(1), wx)
    return wy[:, None] @ (batch @ wx.transpose(1, 2)[:, None])


def padded_batch(images: Images) -> torch.Tensor:
    """uint8 [N, 3, H_max, W_max]: the images at the top left, zeros elsewhere."""
    if isinstance(images, torch.Tensor):
        return images
    height, width = max(image.shape[-2] for image in images), max(image.shape[-1] for image in images)
    batch = images[0].new_zeros(len(images), 3, height, width)
    for slot, image in zip(batch, images):
        slot[:, :image.shape[-2], :image.shape[-1]].copy_(image)
    return batch


def resize_weights(start: torch.Tensor, length: torch.Tensor, extent: int, size: int) -> torch.Tensor:
    """float32 [N, size, extent]: output pixel o of image n is sum_x weight[n, o, x] * input[x], the
    weights of PyTorch's antialiased bilinear resize (upsample_bilinear2d_aa) of input[start:start+length]
    to `size`: a triangle filter centred on (o + 0.5) * scale, widened by the scale when shrinking,
    cut to the crop and normalized to sum 1."""
    scale = (length.float() / size)[:, None, None]                                  # input pixels per output pixel
    centre = scale * (torch.arange(size, device=start.device).float()[None, :, None] + 0.5)
    x = torch.arange(extent, device=start.device)[None, None, :] - start[:, None, None]  # position in the crop
    stretch = scale.clamp(min=1)
    weight = (1 - ((x + 0.5 - centre) / stretch).abs()).clamp_(min=0)
    weight = weight * ((x >= 0) & (x < length[:, None, None]))
    return weight / weight.sum(dim=2, keepdim=True)


def augmentation_for(spec: DatasetSpec, channels_last: bool = True) -> Augmentation | ImageNetAugmentation:
    """The training augmentation a data set's spec names (DatasetSpec.augmentation)."""
    if spec.augmentation == CIFAR_AUGMENTATION:
        return Augmentation(spec.mean, spec.std, channels_last=channels_last)
    return ImageNetAugmentation.for_recipe(spec.augmentation, spec.mean, spec.std, size=spec.image_shape[0],
                                           channels_last=channels_last)
