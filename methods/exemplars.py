"""The exemplar memory: stored images (uint8, exactly what the accounting charges) and their labels,
chosen per class by herding (iCaRL's iterative rule) or at random.

Budget rule (docs/protocol.md section 3): with E exemplars and K classes seen, each class keeps
floor(E / K) images, capped by the images the class has. Classes are stored in selection
order, so shrinking an old class to its first m keeps its best m.

Formats other than raw (methods/exemplar_formats.py) live in `EncodedExemplarMemory`, which fills a
byte budget instead: the same count m for every class, the largest m whose real stored bytes fit.
"""
from __future__ import annotations

import numpy as np
import torch

from methods.exemplar_formats import RAW, ExemplarFormat, StoredImages

SELECTIONS = ("herding", "random")


def herding_order(features: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of `count` rows picked by herding on L2-normalized `features` [n, d].

    Each pick is the row that keeps the mean of the picked rows closest to the class mean;
    a row is picked at most once, so count > n is capped at n.
    """
    features = torch.nn.functional.normalize(features.double(), dim=1)
    target = features.mean(dim=0)
    picked_sum = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    order = []
    for k in range(1, min(count, len(features)) + 1):
        distances = (target - (picked_sum + features) / k).norm(dim=1)
        distances[~available] = float("inf")
        best = int(distances.argmin())
        order.append(best)
        available[best] = False
        picked_sum += features[best]
    return torch.tensor(order, dtype=torch.long)


def random_order(count: int, available: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(available, generator=generator)[: min(count, available)]


def per_class_quota(budget: int, classes_seen: int) -> int:
    return budget // classes_seen if classes_seen else 0


class ExemplarMemory:
    """uint8 images [M, C, H, W] and int64 labels [M], grouped by class in selection order."""

    format: ExemplarFormat = RAW

    def __init__(self, budget: int, device: torch.device | str = "cpu") -> None:
        self.budget = budget
        self.device = torch.device(device)
        self.images = torch.empty(0, dtype=torch.uint8, device=self.device)
        self.labels = torch.empty(0, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[int]:
        return sorted(set(self.labels.tolist()))

    def per_class(self, classes_seen: int) -> int:
        return per_class_quota(self.budget, classes_seen)

    def shrink(self, per_class: int) -> None:
        """Cut every stored class to its first `per_class` images."""
        keep = torch.zeros(len(self), dtype=torch.bool, device=self.device)
        for label in self.classes:
            rows = (self.labels == label).nonzero().flatten()
            keep[rows[:per_class]] = True
        self.images, self.labels = self.images[keep], self.labels[keep]

    def add_class(self, label: int, images: torch.Tensor) -> None:
        """Store `images` (uint8 [n, C, H, W], already in selection order) for class `label`."""
        if len(self.images) == 0:
            self.images = images.new_empty((0, *images.shape[1:]))
        self.images = torch.cat([self.images, images.to(self.device)])
        self.labels = torch.cat([self.labels, torch.full((len(images),), label, dtype=torch.long, device=self.device)])

    def class_images(self, label: int) -> torch.Tensor:
        return self.images[self.labels == label]

    def check_budget(self) -> None:
        if len(self) > self.budget:
            raise RuntimeError(f"exemplar memory holds {len(self)} images, above its budget of {self.budget}")

    def stored_bytes(self) -> int:
        """Bytes stored between tasks: one per pixel and channel."""
        return self.images.numel()

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps (on the host)."""
        return {"images": self.images.cpu(), "labels": self.labels.cpu()}

    def load_state(self, state: dict) -> None:
        self.images, self.labels = state["images"].to(self.device), state["labels"].to(self.device)


class EncodedExemplarMemory:
    """Exemplars in a non-raw format (downsampled, JPEG) under a byte budget.

    Stored state, per class in selection order: the format's `StoredImages`, exactly what is billed
    (`stored_bytes`). `images` and `labels` are the decoded working copy that training and the NME
    class means read: a cache of the stored state (decoded per class when first needed, cut with it
    when a class shrinks), never billed, never checkpointed.
    """

    def __init__(self, fmt: ExemplarFormat, byte_budget: int, device: torch.device | str = "cpu") -> None:
        if fmt.is_raw:
            raise ValueError("raw exemplars fill a count budget: use ExemplarMemory")
        self.format, self.budget, self.device = fmt, int(byte_budget), torch.device(device)
        self.stored: dict[int, StoredImages] = {}
        self.header = b""   # the shared JPEG header (jpeg:<q>:shared), billed once while anything is stored
        self._decoded: dict[int, torch.Tensor] = {}
        self._working: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return sum(len(stored) for stored in self.stored.values())

    @property
    def classes(self) -> list[int]:
        return sorted(label for label, stored in self.stored.items() if len(stored))

    # -- bytes and the class-balanced fill -------------------------------------------------------------
    def stored_bytes(self) -> int:
        """Real bytes stored between tasks: every image's stored bytes, plus the shared header once."""
        images = sum(sum(stored.image_bytes()) for stored in self.stored.values())
        return images + (len(self.header) if len(self) else 0)

    def per_class_fill(self, candidates: dict[int, StoredImages]) -> int:
        """The largest m such that every class's first m images fit the byte budget together: the
        stored classes (or their replacements in `candidates`, in selection order) each at min(m, what
        it holds). A class holding fewer than m keeps all it has."""
        pools = [stored.image_bytes() for label, stored in self.stored.items() if label not in candidates]
        pools += [stored.image_bytes() for stored in candidates.values()]
        longest = max((len(sizes) for sizes in pools), default=0)
        totals = np.zeros(longest + 1, dtype=np.int64)   # totals[m]: bytes of every class's first m
        for sizes in pools:
            cumulative = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
            totals += np.concatenate([cumulative, np.full(longest + 1 - len(cumulative), cumulative[-1])])
        header = self.header or next((stored.header for stored in candidates.values() if stored.header), b"")
        totals[1:] += len(header)
        return int((totals <= self.budget).sum()) - 1   # totals never decrease with m

    def fill(self, candidates: dict[int, StoredImages]) -> int:
        """Cut every class to the common count m (`per_class_fill`), then store each candidate class's
        first m; returns m. Candidates must hold each new class's images in selection order."""
        per_class = self.per_class_fill(candidates)
        self.shrink(per_class)
        for label, stored in candidates.items():
            self.add_class(label, stored.first(per_class))
        self.check_budget()
        return per_class

    def shrink(self, per_class: int) -> None:
        """Cut every stored class to its first `per_class` images."""
        for label in list(self.stored):
            self.stored[label] = self.stored[label].first(per_class)
            if label in self._decoded:
                self._decoded[label] = self._decoded[label][:per_class]
        self._working = None

    def add_class(self, label: int, stored: StoredImages) -> None:
        """Store class `label`'s images (already encoded by this memory's format, in selection order)."""
        if stored.header:
            if self.header and stored.header != self.header:
                raise RuntimeError(f"class {label}'s JPEG header differs from the memory's shared one; "
                                   "use jpeg:<quality> without :shared")
            self.header = stored.header
        self.stored[label] = StoredImages(stored.image_shape, stored.pixels, stored.files)  # header kept once
        self._decoded.pop(label, None)
        self._working = None

    def check_budget(self) -> None:
        if self.stored_bytes() > self.budget:
            raise RuntimeError(f"exemplar memory ({self.format.name}) stores {self.stored_bytes():,} bytes, "
                               f"above its budget of {self.budget:,}")

    # -- the working copy -------------------------------------------------------------------------------
    def class_images(self, label: int) -> torch.Tensor:
        """Class `label`'s images decoded (uint8 [m, C, H, W] on the memory's device)."""
        if label not in self._decoded:
            stored = self.stored[label]
            self._decoded[label] = self.format.decode(StoredImages(stored.image_shape, stored.pixels, stored.files,
                                                                   self.header), self.device)
        return self._decoded[label]

    def working_copy(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._working is None:
            labels = [label for label, stored in self.stored.items() if len(stored)]
            if not labels:
                empty = torch.empty(0, dtype=torch.uint8, device=self.device)
                self._working = empty, torch.empty(0, dtype=torch.long, device=self.device)
            else:
                images = torch.cat([self.class_images(label) for label in labels])
                self._working = images, torch.cat([torch.full((len(self.stored[label]),), label, dtype=torch.long,
                                                              device=self.device) for label in labels])
        return self._working

    @property
    def images(self) -> torch.Tensor:
        return self.working_copy()[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.working_copy()[1]

    # -- checkpoints: the stored state only (the working copy is decoded again) ---------------------------
    def state(self) -> dict:
        labels = list(self.stored)
        parts = [self.stored[label] for label in labels]
        shape = parts[0].image_shape if parts else (0, 0, 0)
        joined = StoredImages(shape, header=self.header,
                              pixels=torch.cat([p.pixels for p in parts]) if parts and parts[0].pixels is not None
                              else None,
                              files=None if parts and parts[0].pixels is not None else
                              [data for p in parts for data in p.files])
        return {"format": self.format.name, "image_shape": torch.tensor(shape, dtype=torch.long),
                "classes": torch.tensor(labels, dtype=torch.long),
                "counts": torch.tensor([len(p) for p in parts], dtype=torch.long), **joined.state()}

    def load_state(self, state: dict) -> None:
        if state.get("format") != self.format.name:
            raise ValueError(f"the saved exemplar memory is {state.get('format', 'raw')}, this run stores "
                             f"{self.format.name}; resume it with the format it was saved with")
        shape = tuple(state["image_shape"].tolist())
        joined = StoredImages.from_state(shape, state, self.device)
        self.stored, self.header, self._decoded, self._working = {}, joined.header, {}, None
        start = 0
        for label, count in zip(state["classes"].tolist(), state["counts"].tolist()):
            part = joined.pixels[start:start + count] if joined.pixels is not None else None
            files = joined.files[start:start + count] if joined.files is not None else None
            self.stored[label] = StoredImages(shape, part, files)
            start += count


def new_memory(fmt: ExemplarFormat, count_budget: int, byte_budget: int | None,
               device: torch.device | str = "cpu") -> ExemplarMemory | EncodedExemplarMemory:
    """The memory of a run: raw images under the count budget, any other format under the byte budget."""
    if fmt.is_raw:
        return ExemplarMemory(count_budget, device)
    if byte_budget is None:
        raise ValueError(f"exemplar format {fmt.name} fills a byte budget, and none was given; "
                         "set exemplar_byte_budget (the planner's exemplar bytes) or use the raw format")
    return EncodedExemplarMemory(fmt, byte_budget, device)
