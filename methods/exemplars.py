"""The exemplar memory: stored images (uint8, exactly what the accounting charges) and their labels,
chosen per class by herding (iCaRL's iterative rule) or at random.

Budget rule (docs/protocol.md section 3): with E exemplars and K classes seen, each class keeps
floor(E / K) images, capped by the images the class has. Classes are stored in selection
order, so shrinking an old class to its first m keeps its best m.
"""
from __future__ import annotations

import torch

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
