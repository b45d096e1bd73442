"""Where training and test batches come from, and the batch types; the augmentation is in augmentation.py.

CIFAR-size data lives on the run's device as one uint8 tensor and is indexed there: no
per-image PIL transforms and no DataLoader worker processes. Folder data sets (ImageNet-100) are
read from their decoded uint8 cache (data/image_cache.py), a memory map, one batch ahead on a
background thread; without a cache each batch is decoded on a thread pool. Exemplars are uint8
tensors too, so a task's training set is the new images plus the exemplars, concatenated once per task.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from benchmark.data import ImageSet

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class BatchSource:
    """Labelled uint8 images [N, C, H, W] that can be fetched by index on a device."""

    labels: torch.Tensor
    reads_disk: bool = False  # batches() then reads the next batch on a thread while this one trains

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batches(self, order: torch.Tensor, batch_size: int) -> Batches:
        """(rows, uint8 images on the device) for each slice of `order`, in order. Sources that
        read from disk (and selections or concatenations holding one) prefetch the next batch."""
        if self.reads_disk:
            yield from prefetched(self.images, order, batch_size)
            return
        for rows in order.split(batch_size):
            yield rows, self.images(rows)


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
    """Decodes the images of a folder data set per batch (when it has no decoded cache)."""

    reads_disk = True

    def __init__(self, image_set: ImageSet, device: torch.device) -> None:
        self.image_set, self.device = image_set, device
        self.labels = torch.as_tensor(image_set.labels, dtype=torch.long, device=device)

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        batch = self.image_set.read(indices.cpu().numpy())
        return to_chw_tensor(batch, self.device)


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
        pieces, order = [], []
        for part, start, end in zip(self.parts, self.starts[:-1], self.starts[1:]):
            mask = (indices >= int(start)) & (indices < int(end))
            if mask.any():
                pieces.append(part.images(indices[mask] - int(start)))
                order.append(mask.nonzero().flatten())
        batch = torch.cat(pieces)
        return take_rows(batch, torch.argsort(torch.cat(order)))


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
    """The whole image set on the device when it is in memory, else read from its decoded cache
    (built on first use), else decoded per batch."""
    if image_set.in_memory:
        labels = torch.as_tensor(image_set.labels, dtype=torch.long, device=device)
        return TensorSource(to_chw_tensor(image_set.images, device), labels)
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
        mapping = self.host_indices if indices.device.type == "cpu" else self.indices
        return self.source.images(mapping[indices])


def concat(sources: Sequence[BatchSource]) -> BatchSource:
    sources = [s for s in sources if len(s)]
    if all(isinstance(s, TensorSource) for s in sources):
        return TensorSource(torch.cat([s.all_images() for s in sources]), torch.cat([s.labels for s in sources]))
    return ConcatSource(sources)
