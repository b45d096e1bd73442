"""Where training and test batches come from; the augmentation is in augmentation.py.

A source hands out two views of its rows, both uint8 on the run's device:
  - `images(rows)`: the evaluation view, [n, C, H, W] of the data set's image shape (evaluation,
    herding, class means, and what an exemplar stores);
  - `training_images(rows)`: what the training augmentation reads. For CIFAR the same batch; for
    folder data sets (ImageNet) a list of whole images [C, h_i, w_i] of differing sizes, from which
    RandomResizedCrop cuts (augmentation.ImageNetAugmentation).
CIFAR-size data lives on the device as one uint8 tensor and is indexed there: no per-image PIL
transforms and no DataLoader worker processes. Folder data sets are read from what their data folder
keeps (data/jpeg_store.py for training images, data/image_cache.py for test images), one batch ahead
on a background thread; without a cache each batch is decoded on a thread pool. Exemplars are uint8
tensors too, so a task's training set is the new images plus the exemplars, concatenated once per task.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from benchmark.data import FolderImageSet, ImageSet

# A batch of images: uint8 [n, C, H, W], or (a training batch of whole folder images) a list of
# uint8 [C, h_i, w_i] tensors.
Images = torch.Tensor | list[torch.Tensor]
Batches = Iterator[tuple[torch.Tensor, Images]]


class BatchSource:
    """Labelled uint8 images [N, C, H, W] that can be fetched by index on a device."""

    labels: torch.Tensor
    reads_disk: bool = False  # batches() then reads the next batch on a thread while this one trains

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_images(self, indices: torch.Tensor) -> Images:
        """What the training augmentation reads of those rows; by default the evaluation view."""
        return self.images(indices)

    def batches(self, order: torch.Tensor, batch_size: int, training: bool = False) -> Batches:
        """(rows, uint8 images on the device) for each slice of `order`, in order: the training view
        when `training`, else the evaluation view. Sources that read from disk (and selections or
        concatenations holding one) prefetch the next batch."""
        read = self.training_images if training else self.images
        if self.reads_disk:
            yield from prefetched(read, order, batch_size)
            return
        for rows in order.split(batch_size):
            yield rows, read(rows)


def prefetched(read: Callable[[torch.Tensor], torch.Tensor], order: torch.Tensor, batch_size: int) -> Batches:
    """The batches of `order`, each read by `read(rows)` on one background thread one batch ahead.

    `read` gets the rows on the CPU: the order moves to the host once, so no read waits on a device
    sync for its indices. An error in `read` is raised here, in the consumer; the thread is joined
    when the iteration ends, is closed early or is abandoned by an exception in the consumer.
    """
    host = order.cpu().split(batch_size)
    rows = order.split(batch_size)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
    try:
        pending: Future | None = pool.submit(read, host[0]) if host else None
        for index, batch_rows in enumerate(rows):
            images = pending.result()
            pending = pool.submit(read, host[index + 1]) if index + 1 < len(host) else None
            yield batch_rows, images
    finally:
        # A read in flight finishes (one batch at most); a queued one is dropped.
        pool.shutdown(wait=True, cancel_futures=True)


class TensorSource(BatchSource):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self._images, self.labels = images, labels

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return take_rows(self._images, indices)

    def all_images(self) -> torch.Tensor:
        return self._images


class FolderSource(BatchSource):
    """Decodes the images of a folder data set (a FolderImageSet) per batch, when it keeps no cache."""

    reads_disk = True

    def __init__(self, image_set: FolderImageSet, device: torch.device) -> None:
        self.image_set, self.device = image_set, device
        self.labels = torch.as_tensor(image_set.labels, dtype=torch.long, device=device)

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        batch = self.image_set.read(indices.cpu().numpy())
        return to_chw_tensor(batch, self.device)

    def training_images(self, indices: torch.Tensor) -> Images:
        if self.image_set.stored_as != "jpeg":  # a folder set kept as centre crops trains on them
            return self.images(indices)
        return [whole_image_tensor(image, self.device) for image in self.image_set.read_whole(indices.cpu().numpy())]


class StoreSource(BatchSource):
    """A folder data set kept whole as JPEG (data/jpeg_store.py): training batches are the decoded
    whole images (on CUDA decoded by nvJPEG on the device; on a CPU by a thread pool), the evaluation
    view their centre crops."""

    reads_disk = True

    def __init__(self, store, labels: np.ndarray, crop: int, device: torch.device) -> None:
        if len(store) != len(labels):
            raise ValueError(f"{len(store)} stored images but {len(labels)} labels")
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        self.store, self.crop, self.device = store, crop, self.labels.device  # resolved device: see CachedSource

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        crops = self.store.centre_crops(indices.cpu().numpy(), self.crop)
        host = torch.from_numpy(crops)
        if pins_memory(self.device):
            host = host.pin_memory()
        return host.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def training_images(self, indices: torch.Tensor) -> Images:
        rows = indices.cpu().numpy()
        if self.device.type == "cuda":
            return decode_on_device(self.store.encoded(rows), self.device)
        return [whole_image_tensor(image, self.device) for image in self.store.decode(rows)]


def whole_image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [h, w, 3] numpy -> uint8 [3, h, w] on `device` (a view in channels-last memory)."""
    return torch.from_numpy(image).to(device, non_blocking=True).permute(2, 0, 1)


def decode_on_device(encoded: Sequence, device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes -> uint8 [3, h, w] tensors decoded on the GPU (nvJPEG, batched by torchvision)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in encoded]
    with torch.cuda.device(device):  # the reader thread's current device is always 0
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class CachedSource(BatchSource):
    """Rows of a decoded uint8 [N, H, W, 3] memory map, gathered in file order into (on CUDA) pinned
    memory and copied to the device without blocking the host; images come as uint8 [n, C, H, W]
    in channels_last memory format."""

    reads_disk = True

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} cached images but {len(labels)} labels")
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        # The labels' device is resolved here ("cuda" -> "cuda:k"); the reader thread must not resolve
        # a bare "cuda" itself, its current device is always 0. A plain ndarray view of the map:
        # indexing a np.memmap builds a memmap object per row.
        self.cache, self.device = np.asarray(images), self.labels.device

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        rows = indices.cpu().numpy()
        host = torch.empty((len(rows), *self.cache.shape[1:]), dtype=torch.uint8, pin_memory=pins_memory(self.device))
        gather_rows(self.cache, rows, host.numpy())
        # [N, C, H, W] in channels_last memory, a view of the NHWC rows: no layout copy (25 ms per
        # batch of 128 on the 2-core CPU, 10x the gather), and the augmentation then measured faster.
        return host.to(self.device, non_blocking=True).permute(0, 3, 1, 2)


def pins_memory(device: torch.device) -> bool:
    """Page-locked host buffers only for CUDA: they make the copy asynchronous there, and pinning
    needs a CUDA driver."""
    return device.type == "cuda"


def gather_rows(array: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[i] = array[rows[i]], reading the rows in increasing order (sequential on disk, kind to
    readahead) and writing each straight into its place, so the batch order costs no second copy."""
    for position in np.argsort(rows, kind="stable"):
        out[position] = array[rows[position]]


class ConcatSource(BatchSource):
    def __init__(self, parts: Sequence[BatchSource]) -> None:
        self.parts = list(parts)
        self.labels = torch.cat([p.labels for p in self.parts])
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.reads_disk = any(p.reads_disk for p in self.parts)

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        pieces, order = self._pieces(indices, "images")
        return take_rows(torch.cat(pieces), torch.argsort(torch.cat(order)))

    def training_images(self, indices: torch.Tensor) -> Images:
        pieces, order = self._pieces(indices, "training_images")
        if all(isinstance(piece, torch.Tensor) for piece in pieces):
            return take_rows(torch.cat(pieces), torch.argsort(torch.cat(order)))
        # Whole images of differing sizes beside fixed-size ones (the exemplars): one list.
        images = [image for piece in pieces for image in (piece.unbind(0) if isinstance(piece, torch.Tensor) else piece)]
        return [images[i] for i in torch.argsort(torch.cat(order)).tolist()]

    def _pieces(self, indices: torch.Tensor, view: str) -> tuple[list[Images], list[torch.Tensor]]:
        """Each part's `view` of its rows among `indices`, and where those rows sit in `indices`."""
        pieces, order = [], []
        for part, start, end in zip(self.parts, self.starts[:-1], self.starts[1:]):
            mask = (indices >= int(start)) & (indices < int(end))
            if mask.any():
                pieces.append(getattr(part, view)(indices[mask] - int(start)))
                order.append(mask.nonzero().flatten())
        return pieces, order


def take_rows(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tensor[indices] along dim 0: index_select measured ten times faster than indexing on a batch."""
    # non_blocking: CPU indices (a prefetching read's) must not wait for the device's queued work.
    if indices.dtype == torch.bool:
        return tensor[indices]
    return tensor.index_select(0, indices.to(tensor.device, non_blocking=True))


def to_chw_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N, H, W, C] numpy -> uint8 [N, C, H, W] on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)


def source_of(image_set: ImageSet, device: torch.device) -> BatchSource:
    """The whole image set on the device when it is in memory, else read from its JPEG store or its
    decoded cache (built on first use), else decoded per batch."""
    if image_set.in_memory:
        labels = torch.as_tensor(image_set.labels, dtype=torch.long, device=device)
        return TensorSource(to_chw_tensor(image_set.images, device), labels)
    store = image_set.training_store()
    if store is not None:
        return StoreSource(store, image_set.labels, image_set.image_shape[0], device)
    cached = image_set.cached_images()
    if cached is not None:
        return CachedSource(cached, image_set.labels, device)
    return FolderSource(image_set, device)


def select(source: BatchSource, indices: torch.Tensor) -> BatchSource:
    """The rows `indices` of a source (materialized when the source is in memory)."""
    if isinstance(source, TensorSource):
        return TensorSource(take_rows(source.all_images(), indices), take_rows(source.labels, indices))
    return _IndexedSource(source, indices)


class _IndexedSource(BatchSource):
    def __init__(self, source: BatchSource, indices: torch.Tensor) -> None:
        self.source, self.indices = source, indices
        self.labels = source.labels[indices]
        self.reads_disk = source.reads_disk
        # A host copy for prefetching reads, whose rows are on the CPU: mapping them through device
        # indices and back would wait for the device on every batch.
        self.host_indices = indices.cpu() if source.reads_disk else indices

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return self.source.images(self._mapped(indices))

    def training_images(self, indices: torch.Tensor) -> Images:
        return self.source.training_images(self._mapped(indices))

    def _mapped(self, indices: torch.Tensor) -> torch.Tensor:
        mapping = self.host_indices if indices.device.type == "cpu" else self.indices
        return mapping[indices]


def concat(sources: Sequence[BatchSource]) -> BatchSource:
    sources = [s for s in sources if len(s)]
    if all(isinstance(s, TensorSource) for s in sources):
        return TensorSource(torch.cat([s.all_images() for s in sources]), torch.cat([s.labels for s in sources]))
    return ConcatSource(sources)
