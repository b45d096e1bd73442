"""Decoding one image file the way the reference's transforms see it: PIL, RGB, torchvision's
Resize(side) arithmetic, CenterCrop's rounding. The training store (jpeg_store.py) and the folder
image sets (imageset.py) both decode through here, so their pixels agree."""
from __future__ import annotations

import numpy as np

from .errors import DataError


def _open_rgb(path: str):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"cannot decode image {path}: {err}") from err


def resize_shorter_side(img, side: int):
    """A PIL image with its shorter side resized to `side` (bilinear), the aspect ratio kept: the size
    arithmetic of torchvision's Resize(side) on a PIL image, so the pixels match the reference's."""
    from PIL import Image

    width, height = img.size
    short, long = min(width, height), max(width, height)
    new_long = int(side * long / short)  # truncation, as torchvision does
    size = (side, new_long) if width <= height else (new_long, side)
    return img.resize(size, Image.BILINEAR)


def centre_crop(image: np.ndarray, crop: int) -> np.ndarray:
    """The centre `crop` x `crop` window of an HWC image (a view), with torchvision CenterCrop's rounding."""
    height, width = image.shape[:2]
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return image[top:top + crop, left:left + crop]


def decode_resized(path: str, resize: int = 256) -> np.ndarray:
    """RGB uint8 [H, W, 3] with the shorter side `resize`: what the training store keeps of an image."""
    return np.array(resize_shorter_side(_open_rgb(path), resize), dtype=np.uint8)  # writable: torch shares it


def decode_center_crop(path: str, resize: int = 256, crop: int = 224) -> np.ndarray:
    """RGB uint8 [crop, crop, 3]: shorter side resized to `resize` (bilinear), then a centre crop.

    Copies torchvision's Resize(256) + CenterCrop(224), so images match the reference pipelines'
    evaluation transform pixel for pixel.
    """
    return np.ascontiguousarray(centre_crop(decode_resized(path, resize), crop))
