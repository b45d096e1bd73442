"""JPEG codecs on CIFAR-size exemplars: which library encodes and decodes 32x32 images fastest, what
the files weigh, and how much of a file is its header.

    python -m benchmark.tools.codec_speed --images 2000

Compares, on the first `--images` CIFAR-100 training images (CIL_DATA_ROOT or --data):
  - pillow:      PIL.Image save/open per image (libjpeg-turbo inside the wheel);
  - torchvision: torchvision.io.encode_jpeg / decode_jpeg on lists (one call per batch);
  - simplejpeg:  simplejpeg.encode_jpeg / decode_jpeg per image (libjpeg-turbo's TurboJPEG API).
All at 4:2:0 chroma subsampling (libjpeg's default, what Pillow and torchvision write). For each
quality: encode and decode images/s on this CPU (best of `--repeats`), mean bytes per file, the
header bytes (everything before the entropy-coded scan: SOI, APP0, DQT, SOF, DHT, SOS) and the
mean PSNR of the round trip. The header is what `jpeg:<q>:shared` bills once instead of per image
(methods/exemplar_formats.py).
"""
from __future__ import annotations

import argparse
import io
import os
import time
from typing import Callable

import numpy as np
import torch

from benchmark.data import load_dataset
from methods.exemplar_formats import ExemplarFormat, psnr, split_header

QUALITIES = (50, 75, 90)


def pillow_codec(quality: int) -> tuple[Callable, Callable]:
    from PIL import Image

    def encode(hwc: np.ndarray) -> list[bytes]:
        files = []
        for image in hwc:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=quality)
            files.append(buffer.getvalue())
        return files

    def decode(files: list[bytes]) -> np.ndarray:
        return np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in files])

    return encode, decode


def torchvision_codec(quality: int) -> tuple[Callable, Callable]:
    from torchvision.io import decode_jpeg, encode_jpeg

    def encode(hwc: np.ndarray) -> list[bytes]:
        chw = list(torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous())
        return [bytes(t.numpy()) for t in encode_jpeg(chw, quality=quality)]

    def decode(files: list[bytes]) -> np.ndarray:
        decoded = decode_jpeg([torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files])
        return torch.stack(decoded).permute(0, 2, 3, 1).numpy()

    return encode, decode


def simplejpeg_codec(quality: int) -> tuple[Callable, Callable]:
    import simplejpeg

    def encode(hwc: np.ndarray) -> list[bytes]:
        return [simplejpeg.encode_jpeg(image, quality=quality, colorsubsampling="420") for image in hwc]

    def decode(files: list[bytes]) -> np.ndarray:
        return np.stack([simplejpeg.decode_jpeg(data) for data in files])

    return encode, decode


CODECS = {"pillow": pillow_codec, "torchvision": torchvision_codec, "simplejpeg": simplejpeg_codec}


def best_seconds(action: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    return best, result


def measure(name: str, quality: int, hwc: np.ndarray, repeats: int) -> dict:
    encode, decode = CODECS[name](quality)
    encode_s, files = best_seconds(lambda: encode(hwc), repeats)
    decode_s, decoded = best_seconds(lambda: decode(files), repeats)
    headers = [split_header(data)[0] for data in files]
    chw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    return {"codec": name, "quality": quality, "encode_per_s": len(hwc) / encode_s,
            "decode_per_s": len(hwc) / decode_s, "file_bytes": float(np.mean([len(f) for f in files])),
            "header_bytes": len(headers[0]), "headers_identical": len(set(headers)) == 1,
            "psnr": float(psnr(chw(decoded), chw(hwc)).mean())}


# The formats the second table compares as the suite stores and replays them (ExemplarFormat).
FORMATS = ("raw", "downsample:2", "jpeg:50", "jpeg:75", "downsample:2+jpeg:75")


def stored_format_row(text: str, hwc: np.ndarray) -> dict:
    """Bytes per stored image and PSNR of the replayed image (decoded, upsampled) of one format."""
    fmt = ExemplarFormat.parse(text)
    images = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    stored = fmt.encode(images)
    replayed = fmt.decode(stored)
    return {"format": fmt.name, "bytes": float(np.mean(stored.image_bytes())),
            "psnr": float(psnr(replayed, images).mean())}  # inf for raw: an exact copy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=os.environ.get("CIL_DATA_ROOT", "data"))
    args = parser.parse_args(argv)
    hwc = np.ascontiguousarray(load_dataset("cifar100", args.data, download=False).train.images[: args.images])
    print(f"{len(hwc)} CIFAR-100 training images (32x32), {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs, best of {args.repeats}")
    print(f"{'codec':<12}{'q':>4}{'encode/s':>11}{'decode/s':>11}{'file B':>9}{'header B':>10}"
          f"{'scan B':>8}{'same hdr':>9}{'PSNR dB':>9}")
    for quality in QUALITIES:
        for name in CODECS:
            row = measure(name, quality, hwc, args.repeats)
            print(f"{name:<12}{quality:>4}{row['encode_per_s']:>11,.0f}{row['decode_per_s']:>11,.0f}"
                  f"{row['file_bytes']:>9.1f}{row['header_bytes']:>10}{row['file_bytes'] - row['header_bytes']:>8.1f}"
                  f"{'yes' if row['headers_identical'] else 'no':>9}{row['psnr']:>9.2f}")
    print(f"\nexemplar formats as stored and replayed (bytes per image, the header included; PSNR of the "
          f"replayed image)\n{'format':<22}{'bytes':>9}{'PSNR dB':>9}")
    for text in FORMATS:
        row = stored_format_row(text, hwc)
        print(f"{row['format']:<22}{row['bytes']:>9.1f}{row['psnr']:>9.2f}")


if __name__ == "__main__":
    main()
