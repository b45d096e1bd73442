"""Memory accounting: bytes of live modules and of stored exemplars, under a named policy.

The planner (before a run) and the audit (after every task of a run) call the same functions
here, so a planned number and an audited number can only differ because the run holds
something the plan did not foresee.

Policies
- paper: backbone parameters only, float32 as stored, as the MEMO paper counts (docs/protocol.md section 1):
  all T backbones of DER, the generalized block plus every specialized block of MEMO.
- strict: everything the method keeps between tasks: every parameter and buffer of the
  network (classifier, BatchNorm running statistics) plus the frozen teacher copy that
  iCaRL and WA hold while they train the next task.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Protocol, Sequence

import torch
from torch import nn

POLICIES = ("paper", "strict")
DEFAULT_POLICY = "paper"  # the budgets of the paper are given in its count
MB = 2 ** 20  # the paper's MB is a MiB


class CountableNetwork(Protocol):
    def backbone_modules(self) -> list[nn.Module]: ...
    def parameters(self) -> Iterable[torch.Tensor]: ...
    def buffers(self) -> Iterable[torch.Tensor]: ...


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the given tensors as stored (element count x element size); works on meta tensors."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _unique(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Drop repeated tensors (a module listed twice, or weights shared between modules)."""
    seen: set[int] = set()
    return [t for t in tensors if not (id(t) in seen or seen.add(id(t)))]


def module_bytes(modules: Sequence[nn.Module], include_buffers: bool = False) -> int:
    tensors = [p for m in modules for p in m.parameters()]
    if include_buffers:
        tensors += [b for m in modules for b in m.buffers()]
    return tensor_bytes(_unique(tensors))


def module_params(modules: Sequence[nn.Module]) -> int:
    return sum(p.numel() for p in _unique([p for m in modules for p in m.parameters()]))


def exemplar_bytes(count: int, image_shape: Sequence[int]) -> int:
    """Stored exemplars are uint8 images: one byte per pixel and channel."""
    bytes_per_image = 1
    for side in image_shape:
        bytes_per_image *= int(side)
    return count * bytes_per_image


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown memory counting policy {policy!r}; use one of {', '.join(POLICIES)}")
    return policy


def model_bytes(network: CountableNetwork, policy: str, teacher: CountableNetwork | None = None) -> int:
    """Bytes of the model a method keeps, under `policy`."""
    check_policy(policy)
    if policy == "paper":
        return module_bytes(network.backbone_modules())
    kept = [network] if teacher is None else [network, teacher]
    return module_bytes(kept, include_buffers=True)


@dataclass(frozen=True)
class MemoryCount:
    """One counted memory footprint; always says which policy produced it."""

    policy: str
    model_bytes: int
    exemplar_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.exemplar_bytes

    @property
    def total_mb(self) -> float:
        return self.total_bytes / MB

    def as_dict(self) -> dict[str, int | str]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def count_memory(network: CountableNetwork, policy: str, stored_images: int, image_shape: Sequence[int],
                 teacher: CountableNetwork | None = None, stored_exemplar_bytes: int | None = None) -> MemoryCount:
    """The memory of `network` (and `teacher`) plus `stored_images` exemplars: raw uint8 images of
    `image_shape`, unless `stored_exemplar_bytes` gives the bytes the memory really stores (a
    downsampled or JPEG format, methods/exemplar_formats.py)."""
    stored = exemplar_bytes(stored_images, image_shape) if stored_exemplar_bytes is None else int(stored_exemplar_bytes)
    return MemoryCount(policy, model_bytes(network, policy, teacher), stored)
