"""GEM, Gradient Episodic Memory (Lopez-Paz and Ranzato, NeurIPS 2017), and its cheap variant A-GEM
(Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019).

References: PyCIL models/gem.py at commit 87cc411 (the code behind the CIL survey's and the MEMO
paper's GEM numbers: zhoudw-zdw/CIL_Survey runs `-model gem`, the same file, with quadprog), and
facebookresearch/GradientEpisodicMemory model/gem.py (store_grad, overwrite_grad, project2cone2).

Network: the plain single backbone with one growing classifier. Task 0 is plain cross-entropy
(the shared first-task model). For each later task, every step:

1. variant "gem": for each past task k, the gradient g_k of the cross-entropy of ALL its exemplars
   (one batch per past task, as PyCIL), its logits restricted to task k's classes;
   variant "agem": one reference gradient g_ref on `agem_sample` exemplars drawn at random from the
   whole memory, each exemplar's logits restricted to its own task's classes;
2. the gradient g of the current batch's cross-entropy over the NEW classes' logits only (PyCIL and
   GEM mask the other logits with -1e11, the same as slicing them off);
3. if g conflicts with a memory gradient (g . g_k < 0):
   "gem": g <- G^T v + g, v = argmin 1/2 v^T (G G^T + eps I) v + (G g)^T v subject to
   v >= memory_strength: GEM's dual QP (paper Eq. 13; project2cone2), solved with quadprog; the
   margin memory_strength is 0.5 in GEM's runs, 0 in PyCIL;
   "agem": g <- g - (g . g_ref / g_ref . g_ref) g_ref (A-GEM Eq. 11).

The memory forwards run with the network in train mode, as in PyCIL: BatchNorm normalizes each past
task's exemplars with their own batch statistics and its running statistics are updated by every
memory batch, then by the current batch (the same order as PyCIL: memory first). Exemplars are
augmented ONCE per task (PyCIL builds `previous_data` from a train-mode dataset once per task), with
the run's generator, so a resumed run replays them.

GEM's compute: every step forwards and back-propagates every exemplar once per past task's batch,
so at 2,000 exemplars and batches of 128 a step costs about 16 plain steps (and the first later task,
2,000 exemplars in one batch, as much). A-GEM forwards `agem_sample` exemplars per step.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .base import Method, Phase, Task, TaskData, register

Variant = Literal["gem", "agem"]
VARIANTS = typing.get_args(Variant)


@dataclass(frozen=True)
class GEMOptions:
    # "gem": one gradient per past task and the dual QP (the paper; PyCIL models/gem.py, which the
    # survey's numbers used); "agem": one sampled reference gradient, closed-form projection.
    variant: Variant = "gem"
    # The margin of GEM's QP constraints (`memory_strength`, GradientEpisodicMemory main.py and
    # run_experiments.sh: 0.5 for every GEM run). PyCIL 87cc411 solves with 0 (b = zeros): the
    # `paper` profile sets 0 to reproduce its numbers.
    memory_strength: float = 0.5
    # The ridge added to G G^T (project2cone2's eps=1e-3 in GradientEpisodicMemory at 34c6b8e);
    # PyCIL adds none.
    qp_eps: float = 1e-3
    # A-GEM's reference batch: EPS_MEM_BATCH_SIZE = 256 in facebookresearch/agem's scripts.
    agem_sample: int = 256


@register
class GEM(Method):
    name = "gem"
    options_type = GEMOptions

    def __init__(self, backbone: str, options: dict[str, Any] | None = None, model_storage: str = "fp32") -> None:
        super().__init__(backbone, options, model_storage)
        _check_options(self.options)
        # The first class of each task and the class count after the last (plain ints: before_task
        # rebuilds them on resume and in the planner's replay).
        self.task_starts: list[int] = []
        self.total_classes = 0
        self.memory_batches: list[tuple[torch.Tensor, torch.Tensor]] = []  # per past task, augmented
        self.reference: torch.Tensor | None = None  # the memory gradients of this step, one row each
        self.generator: torch.Generator | None = None

    @classmethod
    def resolve_options(cls, options: dict[str, Any], base_classes: int) -> dict[str, Any]:
        """Nothing depends on the scenario; checked here so a bad value fails when the grid is planned."""
        _check_options({**cls.default_options, **options})
        return dict(options)

    def phases(self, task: Task) -> list[Phase]:
        """One phase on the new images only, as GEM and PyCIL train; the exemplars enter through
        the memory gradients (`prepare_phase`), not the batches."""
        return [Phase(data="new")]

    # -- structure ----------------------------------------------------------------------------
    def before_task(self, task: Task) -> None:
        self.task_starts.append(task.known_classes)
        self.total_classes = task.total_classes
        super().before_task(task)

    def after_task(self, task: Task) -> None:
        self.memory_batches, self.reference = [], None  # data of this task only: free it

    def task_of(self, labels: torch.Tensor) -> torch.Tensor:
        """The index of the task each label belongs to."""
        starts = torch.tensor(self.task_starts, device=labels.device)
        return torch.bucketize(labels, starts, right=True) - 1

    # -- data ---------------------------------------------------------------------------------
    def prepare_phase(self, task: Task, phase: Phase, data: TaskData) -> None:
        """The exemplars as PyCIL holds them for the task: augmented once, grouped by past task
        (GEM) or pooled (A-GEM)."""
        self.memory_batches, self.generator = [], data.random()
        if task.index == 0 or not len(data.memory_labels):
            return
        images, labels = augment_in_chunks(data, data.memory_images), data.memory_labels
        if self.options["variant"] == "agem":
            self.memory_batches = [(images, labels)]
            return
        tasks = self.task_of(labels)
        for k in range(task.index):
            rows = (tasks == k).nonzero().flatten()
            if len(rows):
                self.memory_batches.append((images[rows], labels[rows]))

    # -- the step -----------------------------------------------------------------------------
    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The current batch's cross-entropy over the new classes; before it, the memory gradients
        (kept for `before_step`), so BatchNorm sees the memory first, as in PyCIL."""
        if task.index == 0:
            return super().loss(task, images, labels)
        self.reference = self.memory_gradients() if self.memory_batches else None
        return task_masked_cross_entropy(self.network(images)["logits"], labels, self.class_ranges(labels))

    def memory_gradients(self) -> torch.Tensor:
        """One flattened gradient per past task (GEM) or of one sampled reference batch (A-GEM)."""
        params = self.trainable_parameters()
        rows = []
        for images, labels in self.reference_batches():
            logits = self.network(images)["logits"]
            loss = task_masked_cross_entropy(logits, labels, self.class_ranges(labels))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(flatten(grads, params))
        return torch.stack(rows)

    def reference_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.options["variant"] == "gem":
            return self.memory_batches
        images, labels = self.memory_batches[0]
        size = min(self.options["agem_sample"], len(labels))
        rows = torch.randperm(len(labels), generator=self.generator, device=labels.device)[:size]
        return [(images[rows], labels[rows])]

    def class_ranges(self, labels: torch.Tensor) -> torch.Tensor:
        """Each label's task's class range [start, end) as rows of two ints."""
        bounds = torch.tensor(self.task_starts + [self.total_classes], device=labels.device)
        tasks = self.task_of(labels)
        return torch.stack([bounds[tasks], bounds[tasks + 1]], dim=1)

    def before_step(self, task: Task, phase: Phase) -> None:
        if self.reference is None:
            return
        params = self.trainable_parameters()
        grad = flatten([p.grad for p in params], params)
        if self.options["variant"] == "gem":
            projected = gem_project(grad, self.reference, self.options["memory_strength"], self.options["qp_eps"])
        else:
            projected = agem_project(grad, self.reference[0])
        if projected is not grad:
            write_gradient(params, projected)
        self.reference = None


# -- the pieces, on plain tensors -------------------------------------------------------------------
def task_masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where each row competes only with its own task's classes [start, end): GEM's
    and PyCIL's `logits[:, other tasks].data.fill_(-10e10)`, whose softmax puts exactly 0 there."""
    classes = torch.arange(logits.shape[1], device=logits.device)
    inside = (classes >= ranges[:, :1]) & (classes < ranges[:, 1:])
    return F.cross_entropy(logits.masked_fill(~inside, float("-inf")), labels)


def flatten(grads, params) -> torch.Tensor:
    """The gradients as one fp32 vector in parameter order; a parameter without one counts as zeros."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


def write_gradient(params, vector: torch.Tensor) -> None:
    """GEM's overwrite_grad: `vector` back into the parameters' .grad, in parameter order."""
    offset = 0
    for p in params:
        n = p.numel()
        chunk = vector[offset:offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def gem_project(grad: torch.Tensor, memories: torch.Tensor, margin: float, eps: float) -> torch.Tensor:
    """GEM's projection (project2cone2): `grad` unchanged when no memory gradient (a row of
    `memories`) conflicts with it; else G^T v + grad with v solving the dual QP
        min_v 1/2 v^T (G G^T + eps I) v + (G grad)^T v   s.t.  v >= margin.
    The t x t problem is formed on the gradients' device in float64 (PyCIL forms it in float64 on
    the CPU from the whole t x P matrix; the products are the same) and solved with quadprog."""
    if not bool((memories @ grad < 0).any()):
        return grad
    from quadprog import solve_qp  # imported here: only GEM runs need the package

    g, G = grad.double(), memories.double()
    t = G.shape[0]
    P = (G @ G.T).cpu().numpy()
    P = 0.5 * (P + P.T) + eps * np.eye(t)
    q = -(G @ g).cpu().numpy()
    v = solve_qp(P, q, np.eye(t), np.full(t, float(margin)))[0]
    return (G.T @ torch.from_numpy(v).to(G) + g).float()


def agem_project(grad: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection (Chaudhry et al. 2019, Eq. 11): unchanged when grad . ref >= 0, else
    grad - (grad . ref / ref . ref) ref. Written without a branch on the host (no device sync)."""
    dot = grad @ reference
    scale = torch.where(dot < 0, dot / (reference @ reference), torch.zeros_like(dot))
    return grad - scale * reference


def augment_in_chunks(data: TaskData, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Training inputs of uint8 `images`, in chunks (the augmentation's peak memory stays small)."""
    return torch.cat([data.augment(images[i:i + chunk]) for i in range(0, len(images), chunk)])


def _check_options(options: dict[str, Any]) -> None:
    if options["variant"] not in VARIANTS:
        raise ValueError(f"gem: unknown variant {options['variant']!r}; use one of {', '.join(VARIANTS)} "
                         "('gem': one gradient per past task and a QP; 'agem': one sampled reference gradient)")
    if options["memory_strength"] < 0:
        raise ValueError(f"gem: memory_strength {options['memory_strength']} is negative; use 0 (PyCIL) or "
                         "a positive margin (0.5 in the GEM paper's runs)")
    if options["qp_eps"] < 0:
        raise ValueError(f"gem: qp_eps {options['qp_eps']} is negative; use 0 (PyCIL) or a small ridge (1e-3, GEM)")
    if int(options["agem_sample"]) < 1:
        raise ValueError(f"gem: agem_sample {options['agem_sample']} must be at least 1 (256 in A-GEM's code)")
