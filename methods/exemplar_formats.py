"""How an exemplar memory stores its images between tasks, and what that costs in bytes.

A format is `raw` (uint8 pixels, one byte per pixel and channel: the paper's count), a downsampled
copy (`downsample:<f>`: 1/f of each side, upsampled again when replayed), a JPEG file per image
(`jpeg:<q>`), or both (`downsample:2+jpeg:75`: downsampled, then encoded). `jpeg:<q>:shared` stores
every file's header (quantization and Huffman tables, frame and scan headers: identical for every
image of one size and quality) once, as the JPEG standard's abbreviated streams do, and bills it once.

Billing rule: what is stored is billed at its real size: C*(H/f)*(W/f) bytes for an exact format,
each file's bytes for JPEG (its scan bytes plus one header for the memory when tables are shared).
The decoded copy a run trains on is a cache, not stored state, and is not billed.

Codec: simplejpeg (libjpeg-turbo's TurboJPEG API), chosen by measurement on 32x32 CIFAR images
(`python -m benchmark.tools.codec_speed`): per-image calls have the least overhead of the maintained
libraries, which for files of a few hundred bytes is most of the cost. Chroma is subsampled 4:2:0,
libjpeg's default (what "JPEG at quality q" means for Pillow and torchvision too).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

FORMAT_GRAMMAR = ("raw | jpeg:<quality>[:shared] | downsample:<factor> | downsample:<factor>+jpeg:<quality>[:shared]"
                  " (quality an integer 1..100; factor an integer >= 2 that divides the image's height and width)")
CHROMA_SUBSAMPLING = "420"
START_OF_SCAN = b"\xff\xda"

_JPEG = re.compile(r"jpeg:(\d+)(:shared)?")
_DOWNSAMPLE = re.compile(r"downsample:(\d+)")


def _format_error(text: str, problem: str) -> ValueError:
    return ValueError(f"exemplar format {text!r}: {problem}; write one of {FORMAT_GRAMMAR}, "
                      "e.g. 'jpeg:75', 'jpeg:75:shared', 'downsample:2', 'downsample:2+jpeg:75'")


@dataclass(frozen=True)
class ExemplarFormat:
    downsample: int = 1                 # stored at 1/downsample of each side
    jpeg_quality: int | None = None     # None: pixels stored as they are
    shared_tables: bool = False         # JPEG header stored and billed once per memory

    def __post_init__(self) -> None:
        if self.downsample < 1:
            raise ValueError(f"downsample factor {self.downsample} is below 1; use an integer >= 2 (or raw)")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"JPEG quality {self.jpeg_quality} is outside 1..100; use an integer in 1..100")
        if self.shared_tables and self.jpeg_quality is None:
            raise ValueError("shared tables need a JPEG format; write jpeg:<quality>:shared")

    @classmethod
    def parse(cls, text: str) -> "ExemplarFormat":
        """The format a text names (FORMAT_GRAMMAR); the parts of a combination may come in either order."""
        cleaned = str(text).strip().lower()
        if cleaned == "raw":
            return cls()
        parts = cleaned.split("+")
        downsample, quality, shared = 1, None, False
        for part in parts:
            if (match := _DOWNSAMPLE.fullmatch(part)) and downsample == 1:
                downsample = int(match.group(1))
                if downsample < 2:
                    raise _format_error(text, f"downsample factor {downsample} stores nothing smaller than raw")
            elif (match := _JPEG.fullmatch(part)) and quality is None:
                quality, shared = int(match.group(1)), bool(match.group(2))
                if not 1 <= quality <= 100:
                    raise _format_error(text, f"JPEG quality {quality} is outside 1..100")
            else:
                raise _format_error(text, f"{part!r} is not a part of the grammar (or is repeated)")
        return cls(downsample, quality, shared)

    @property
    def name(self) -> str:
        """The canonical text: "raw", "jpeg:50", "jpeg:50:shared", "downsample:2", "downsample:2+jpeg:75"."""
        parts = [f"downsample:{self.downsample}"] if self.downsample > 1 else []
        if self.jpeg_quality is not None:
            parts.append(f"jpeg:{self.jpeg_quality}" + (":shared" if self.shared_tables else ""))
        return "+".join(parts) or "raw"

    def __str__(self) -> str:
        return self.name

    @property
    def is_raw(self) -> bool:
        return self.downsample == 1 and self.jpeg_quality is None

    @property
    def is_exact(self) -> bool:
        """Whether every image costs the same known bytes (no encoding): raw and downsample."""
        return self.jpeg_quality is None

    # -- shapes and bytes ---------------------------------------------------------------------------
    def stored_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, H/f, W/f) of an image of `image_shape` (C, H, W) as stored (before any encoding)."""
        channels, height, width = (int(side) for side in image_shape)
        if height % self.downsample or width % self.downsample:
            raise ValueError(f"format {self.name}: factor {self.downsample} does not divide the image's "
                             f"{height}x{width} pixels (shape (C, H, W) = {tuple(image_shape)}); "
                             f"use a factor that divides both sides")
        return channels, height // self.downsample, width // self.downsample

    def fixed_image_bytes(self, image_shape: tuple[int, int, int]) -> int | None:
        """Exact bytes of one stored image (raw, downsample); None for JPEG, whose size depends on the
        image. `image_shape` is (C, H, W), or (H, W, C) as data set specs give it (the channel axis is
        the end that holds 1 or 3)."""
        if not self.is_exact:
            return None
        channels, height, width = channels_first(image_shape)
        return int(np.prod(self.stored_shape((channels, height, width))))

    # -- encoding -------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> "StoredImages":
        """uint8 images [n, C, H, W] (any device) in this format's stored representation. Exact
        formats keep their pixels on the images' device; JPEG files live on the host."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"encode takes uint8 images [n, C, H, W], got {images.dtype} {tuple(images.shape)}")
        image_shape = tuple(images.shape[1:])
        pixels = downsample(images, self.downsample) if self.downsample > 1 else images
        if self.jpeg_quality is None:
            return StoredImages(image_shape, pixels=pixels)
        files = encode_jpeg(pixels, self.jpeg_quality)
        if not self.shared_tables:
            return StoredImages(image_shape, files=files)
        split = [split_header(data) for data in files]
        headers = {header for header, _ in split}
        if len(headers) > 1:  # a codec that optimized its Huffman tables per image would do this
            raise RuntimeError(f"format {self.name}: the encoder wrote {len(headers)} different headers for one "
                               "quality and size, so they cannot be shared; use jpeg:<quality> without :shared")
        return StoredImages(image_shape, files=[scan for _, scan in split], header=headers.pop() if headers else b"")

    def decode(self, stored: "StoredImages", device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 images [n, C, H, W] at their original size, on `device`: the working copy."""
        device = torch.device(device)
        if stored.pixels is not None:
            pixels = stored.pixels.to(device)
        else:
            files = [stored.header + data for data in stored.files] if stored.header else stored.files
            pixels = decode_jpeg(files, stored.image_shape[0], (len(files), *self.stored_shape(stored.image_shape)))
            pixels = pixels.to(device)
        return upsample(pixels, self.downsample) if self.downsample > 1 else pixels


RAW = ExemplarFormat()


def channels_first(image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    shape = tuple(int(side) for side in image_shape)
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape
    if len(shape) == 3 and shape[-1] in (1, 3):
        return shape[2], shape[0], shape[1]
    raise ValueError(f"image shape {shape}: give (C, H, W) or (H, W, C) with C of 1 or 3")


@dataclass
class StoredImages:
    """Images as a format stores them: exactly what is billed. Exact formats hold uint8 `pixels`
    [n, C, H/f, W/f]; JPEG formats hold one byte string per image in `files` (only its scan when the
    `header` is shared, which is then billed once per memory, not per image)."""

    image_shape: tuple[int, int, int]          # (C, H, W) before storing: what decoding gives back
    pixels: torch.Tensor | None = None
    files: list[bytes] | None = None
    header: bytes = field(default=b"")

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.files)

    def image_bytes(self) -> list[int]:
        """Bytes of each image as stored (a shared header not included)."""
        if self.pixels is not None:
            return [int(self.pixels[0].numel())] * len(self.pixels)
        return [len(data) for data in self.files]

    def first(self, count: int) -> "StoredImages":
        if self.pixels is not None:
            return StoredImages(self.image_shape, pixels=self.pixels[:count], header=self.header)
        return StoredImages(self.image_shape, files=self.files[:count], header=self.header)

    # -- checkpoints: tensors only, so that torch.load(weights_only=True) reads them ------------------
    def state(self) -> dict[str, torch.Tensor]:
        if self.pixels is not None:
            return {"pixels": self.pixels.cpu()}
        sizes = torch.tensor(self.image_bytes(), dtype=torch.long)
        data = torch.frombuffer(bytearray(b"".join(self.files)), dtype=torch.uint8) if self.files else \
            torch.empty(0, dtype=torch.uint8)
        return {"data": data, "sizes": sizes, "header": _bytes_tensor(self.header)}

    @classmethod
    def from_state(cls, image_shape: tuple[int, int, int], state: dict[str, torch.Tensor],
                   device: torch.device | str = "cpu") -> "StoredImages":
        if "pixels" in state:
            return cls(image_shape, pixels=state["pixels"].to(device))
        data, ends = bytes(state["data"].numpy()), np.cumsum(state["sizes"].numpy())
        files = [data[end - size:end] for end, size in zip(ends.tolist(), state["sizes"].tolist())]
        return cls(image_shape, files=files, header=bytes(state["header"].numpy()))


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


# -- resampling ---------------------------------------------------------------------------------------
def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """uint8 [n, C, H/f, W/f]: each f x f block's mean (area interpolation: for an integer factor the
    box filter, which averages every source pixel once and aliases least of the cheap filters), rounded."""
    small = F.interpolate(images.float(), scale_factor=1 / factor, mode="area")
    return small.round_().clamp_(0, 255).to(torch.uint8)


def upsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """uint8 [n, C, H*f, W*f] by bilinear interpolation (half-pixel centres): smooth, no block edges
    for the network to learn that the new images lack, and cheap on any device."""
    large = F.interpolate(images.float(), scale_factor=factor, mode="bilinear", align_corners=False)
    return large.round_().clamp_(0, 255).to(torch.uint8)


# -- JPEG through simplejpeg (libjpeg-turbo) ----------------------------------------------------------
def encode_jpeg(images: torch.Tensor, quality: int) -> list[bytes]:
    """One baseline JFIF file per uint8 image [n, C, H, W] (C of 1 or 3), at `quality`."""
    import simplejpeg

    hwc = np.ascontiguousarray(images.permute(0, 2, 3, 1).cpu().numpy())
    if hwc.shape[-1] == 1:
        return [simplejpeg.encode_jpeg(image, quality=quality, colorspace="gray", colorsubsampling="gray")
                for image in hwc]
    return [simplejpeg.encode_jpeg(image, quality=quality, colorsubsampling=CHROMA_SUBSAMPLING) for image in hwc]


def decode_jpeg(files: list[bytes], channels: int, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """uint8 [n, C, H, W] (on the host) of `files`, decoded into one preallocated array."""
    import simplejpeg

    out = np.empty((shape[0], shape[2], shape[3], channels), dtype=np.uint8)
    colorspace = "gray" if channels == 1 else "rgb"
    for index, data in enumerate(files):
        simplejpeg.decode_jpeg(data, colorspace=colorspace, buffer=out[index])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header, scan) of a baseline JPEG file: everything up to the end of its start-of-scan segment
    (SOI, APP0, DQT, SOF, DHT, SOS), then the entropy-coded data and EOI. header + scan == data."""
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            break
        marker, length = data[position:position + 2], int.from_bytes(data[position + 2:position + 4], "big")
        position += 2 + length
        if marker == START_OF_SCAN:
            return data[:position], data[position:]
    raise ValueError("not a baseline JPEG file with one scan (no start-of-scan segment found)")


def psnr(decoded: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 images [n, ...] (inf for an exact copy)."""
    error = (decoded.double() - original.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(255.0 ** 2 / error)
