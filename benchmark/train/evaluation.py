"""Evaluation after every task: CNN top-1 (classifier argmax) and NME top-1 (nearest mean of
L2-normalized features, the means computed from the stored images with the current network),
on all classes seen so far and on each task's classes (a row of the accuracy matrix)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.networks import IncrementalNet

from benchmark.train.augmentation import Augmentation
from benchmark.train.batches import BatchSource


@torch.no_grad()
def extract(network: IncrementalNet, source: BatchSource, augmentation: Augmentation, batch_size: int,
            indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of the rows `indices` (default: all), in large no-grad batches."""
    was_training = network.training
    network.eval()
    device = source.labels.device
    rows = torch.arange(len(source), device=device) if indices is None else indices
    features, logits = [], []
    for _, images in source.batches(rows, batch_size):  # disk-backed sources prefetch the next batch
        out = network(augmentation.normalize(images))
        features.append(out["features"].float())
        logits.append(out["logits"].float())
    network.train(was_training)
    return torch.cat(features), torch.cat(logits)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mean of L2-normalized features, normalized again (iCaRL's NME prototypes)."""
    features = torch.nn.functional.normalize(features, dim=1)
    means = torch.zeros(num_classes, features.shape[1], device=features.device)
    means.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    return torch.nn.functional.normalize(means / counts, dim=1)


def nme_predict(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    features = torch.nn.functional.normalize(features, dim=1)
    return torch.cdist(features, means).argmin(dim=1)


@dataclass(frozen=True)
class Accuracy:
    overall: float           # % on all classes seen
    per_task: list[float]    # % on each task's classes so far


def accuracy(predictions: torch.Tensor, labels: torch.Tensor, task_bounds: list[int]) -> Accuracy:
    """Top-1 (%) overall and per task; task j holds labels task_bounds[j] .. task_bounds[j+1] - 1."""
    correct = (predictions == labels).float()
    per_task = []
    for start, end in zip(task_bounds[:-1], task_bounds[1:]):
        mask = (labels >= start) & (labels < end)
        per_task.append(100 * float(correct[mask].mean()) if mask.any() else float("nan"))
    return Accuracy(100 * float(correct.mean()), per_task)
