"""Coil (Zhou et al., ACM MM 2021, "Co-Transport for Class-Incremental Learning").

Network: one backbone and a cosine classifier with a learned scale (methods/cosine.py CosineNet);
the first task is its own (plain cross-entropy on the cosine net), not the shared linear model.

Losses, task t > 0, with lambda = known / total and T = 2 (iCaRL's distillation, WA's weighting):

    (1 - lambda) CE(all logits) + lambda KD(old logits, teacher)  +  the transport term, which is
    - epoch 0, prospective: 1e-3 * soft CE between the new classes' logits and the cosines of the
      features with the transported rows W_new^OT (what the new rows were initialized with);
    - later epochs, retrospective: reg_term * (epoch / epochs)^2 * soft CE between the teacher's old
      classes' softmax and the cosines with W_old^OT, the new rows transported back onto the old
      classes, re-solved every 30 steps from the current network.

Both transports are Sinkhorn plans (POT's `ot.sinkhorn`, regularization 0.464) between class means
(normalized means of normalized eval-mode features) under the p = 3 Minkowski cost, with the
reference's marginals: 1 / n_old on every class, old and new (so the new side carries n_new / n_old).
The prospective plan maps the old rows onto the new classes; the new rows start as it, rescaled to
the old rows' mean norm.

Reference: PyCIL 87cc411 models/coil.py (`solving_ot`, `solving_ot_to_old`,
`_update_representation`) and exps/coil.json; the authors' code is github.com/zhoudw-zdw/MM21-Coil.

Two deliberate fixes to the reference:
- the old classes' means in the prospective transport come from the exemplars the method holds;
  PyCIL's `solving_ot` reads the full training set of every old class (`_extract_class_means`),
  which a method at a memory budget may not see. (Its retrospective transport already uses the
  memory, `_extract_class_means_with_memory`.)
- the memory is the run's exemplar budget; PyCIL hard-codes `memory_size = 2000` in models/coil.py
  (the survey's copy, zhoudw-zdw/CIL_Survey models/coil.py, already takes the run's).

Other differences, by design of the suite:
- the backbone is the run's (resnet32 with option-A shortcuts and a final ReLU on CIFAR); the
  reference configuration names `cosine_resnet32` (PyCIL convs/ucir_cifar_resnet.py: 1x1-conv + BN
  shortcuts, no ReLU after the last block); here every method of a curve point has its backbone.
- the first task trains with the profile's first-task schedule; PyCIL trains it like the later
  tasks (160 epochs, milestones 80 and 120, models/coil.py lines 21-25).
- the retrospective plan is re-solved every 30 steps of an epoch, as PyCIL 87cc411 and the authors'
  code do; the survey's copy re-solves every 200 (`retrospective_every: 200` gives that).

The prospective transport runs when task t's phase starts (`prepare_phase`, the first point where
the next task's data is in reach), with the network as task t - 1 left it; PyCIL runs it in
`after_task` of task t - 1 with the same network and data. Nothing of either transport outlives its
task, so a resumed run needs only the network and teacher tensors. The loss counts its calls to
know the epoch (the engine does not pass it), from the phase's schedule.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import ot
import torch
import torch.nn.functional as F

from .base import Phase, Task, TaskData, register
from .cosine import CosineNet
from .icarl import ICaRL, ICaRLOptions
from .losses import distillation_loss
from .networks import IncrementalNet

EPSILON = 1e-8  # PyCIL models/coil.py line 19: feature norms and the retrospective cost


@dataclass(frozen=True)
class CoilOptions(ICaRLOptions):
    # temperature (inherited): 2, PyCIL models/coil.py line 27 (`T = 2`)
    sinkhorn_reg: float = 0.464          # entropic regularization, exps/coil.json "sinkhorn"
    cost_norm: float = 3.0               # Minkowski p of the transport cost, exps/coil.json "norm_term"
    retrospective_weight: float = 1e-3   # exps/coil.json "reg_term" (models/coil.py line 230)
    prospective_weight: float = 1e-3     # hard-coded 0.001, models/coil.py line 211
    retrospective_every: int = 30        # steps between re-solved plans, models/coil.py line 215 (`i % 30`)


@dataclass
class TransportState:
    """What one task's training reads of its transports; rebuilt in `prepare_phase` every task."""

    task_index: int
    data: TaskData
    new_rows_by_transport: torch.Tensor  # W_new^OT: the new rows' initialization (prospective)
    steps_per_epoch: int
    epochs: int
    step: int = 0
    old_rows_by_transport: torch.Tensor | None = None  # W_old^OT, re-solved every few steps


@register
class Coil(ICaRL):
    name = "coil"
    shares_first_task = False  # its first task trains the cosine net
    options_type = CoilOptions

    def __init__(self, backbone: str, options: dict[str, Any] | None = None, model_storage: str = "fp32") -> None:
        super().__init__(backbone, options, model_storage)
        _check_options(self.options)
        self.transport: TransportState | None = None

    @classmethod
    def resolve_options(cls, options: dict[str, Any], base_classes: int) -> dict[str, Any]:
        """Nothing depends on the scenario; checked here so a bad value fails when the grid is planned."""
        _check_options({**cls.default_options, **options})
        return dict(options)

    def build_network(self, backbone: str) -> IncrementalNet:
        return CosineNet(backbone, self.model_storage)  # one proxy, learned sigma (SimpleCosineIncrementalNet)

    def before_task(self, task: Task) -> None:
        self.transport = None
        super().before_task(task)  # the teacher, then the grown cosine head

    # -- the transports ---------------------------------------------------------------------
    @torch.no_grad()
    def prepare_phase(self, task: Task, phase: Phase, data: TaskData) -> None:
        """Task t > 0: the prospective transport initializes the new rows (PyCIL `solving_ot`)."""
        if task.index == 0:
            return
        old_means = self.memory_class_means(data, task.known_classes)
        new_means = self.training_class_means(data, task)
        cost = torch.cdist(old_means.double(), new_means.double(), p=self.options["cost_norm"])
        plan = self.sinkhorn(cost, task.known_classes)
        fc = self.network.fc
        old_rows = fc.weight[:task.known_classes]
        transported = plan.T.to(old_rows) @ F.normalize(old_rows, dim=1) * task.known_classes
        # Rescaled to the old rows' mean norm (the reference's "calibration term" gamma).
        gamma = old_rows.norm(dim=1).mean() / transported.norm(dim=1).mean()
        new_rows = transported * gamma
        fc.weight[task.known_classes:task.total_classes] = new_rows
        schedule = data.schedule  # the transport terms are weighted by epoch, which the loss counts in steps
        self.transport = TransportState(task.index, data, new_rows.clone(),
                                        math.ceil(len(data.training_set) / schedule.batch_size), schedule.epochs)

    def retrospective_rows(self, task: Task) -> torch.Tensor:
        """W_old^OT: the current new rows transported onto the old classes (PyCIL `solving_ot_to_old`),
        class means from the current network: the old from the exemplars, the new from the task's data."""
        data = self.transport.data
        old_means = self.memory_class_means(data, task.known_classes)
        new_means = self.training_class_means(data, task)
        cost = torch.cdist(new_means.double(), old_means.double(), p=self.options["cost_norm"]) + EPSILON
        plan = self.sinkhorn(cost, task.known_classes)
        new_rows = self.network.fc.weight[task.known_classes:task.total_classes]
        # The reference scales this by n_old and its calibration term; the loss normalizes the rows.
        return plan.T.to(new_rows) @ F.normalize(new_rows, dim=1)

    def sinkhorn(self, cost: torch.Tensor, old_classes: int) -> torch.Tensor:
        """The entropic plan for `cost` [rows, columns] with the reference's marginals: 1 / n_old on
        every class of either side (models/coil.py lines 66-71 and 107-110)."""
        rows = torch.full((cost.shape[0],), 1.0 / old_classes, dtype=torch.float64)
        columns = torch.full((cost.shape[1],), 1.0 / old_classes, dtype=torch.float64)
        # Unless n_new = n_old the two sides carry different masses, so the iterations never meet
        # both marginals: the scaling vectors drift by n_old / n_new per round until POT stops (at its
        # 1,000 rounds, or at an overflow, keeping the last finite ones) and warns. The plan's shape
        # has converged by then and only its scale drifts, which every use normalizes away.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"ot\.")
            return ot.sinkhorn(rows, columns, cost.cpu(), self.options["sinkhorn_reg"])

    def memory_class_means(self, data: TaskData, classes: int) -> torch.Tensor:
        labels = data.memory_labels
        missing = sorted(set(range(classes)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"coil: no exemplar of old class(es) {missing[:10]} to take a class mean from; the "
                             f"transport needs one of each: raise the exemplar budget to at least one per class")
        features = data.features(self.network, data.memory_images)
        return torch.stack([normalized_mean(features[labels == label]) for label in range(classes)])

    def training_class_means(self, data: TaskData, task: Task) -> torch.Tensor:
        return torch.stack([normalized_mean(data.features(self.network, data.class_images(label)))
                            for label in range(task.known_classes, task.total_classes)])

    # -- the loss ---------------------------------------------------------------------------
    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.network(images)
        logits = out["logits"]
        ce = F.cross_entropy(logits, labels)
        if self.teacher is None:
            return ce
        with torch.no_grad():
            teacher_logits = self.teacher(images)["logits"]
        share_old = task.known_classes / task.total_classes
        kd = distillation_loss(logits[:, :task.known_classes], teacher_logits, self.options["temperature"])
        loss = (1 - share_old) * ce + share_old * kd
        transport = self.transport
        if transport is None or transport.task_index != task.index:
            # Without the phase's data (the speed tools take steps without `prepare_phase`) there is
            # nothing to transport.
            return loss
        # In fp32 under bf16 autocast, like the heads (IncrementalNet.forward); the class means of a
        # re-solved plan then come from fp32 features, as the prospective ones do.
        with torch.autocast(images.device.type, enabled=False):
            return loss + self.transport_term(task, transport, out, teacher_logits)

    def transport_term(self, task: Task, transport: TransportState, out: dict[str, torch.Tensor],
                       teacher_logits: torch.Tensor) -> torch.Tensor:
        """The epoch's transport loss; one call per step, which is how the epoch is counted."""
        epoch, step_in_epoch = divmod(transport.step, transport.steps_per_epoch)
        transport.step += 1
        temperature = self.options["temperature"]
        features = F.normalize(out["features"].float(), dim=1)
        if epoch < 1:
            # The new classes' logits learn the cosines with W_new^OT, at the weight
            # max(1 - (epoch / 2)^2, 0) = 1 of the one epoch it applies in (models/coil.py line 168).
            # As in the reference the target is not detached: the features learn from both sides.
            target = F.softmax(cosines(features, transport.new_rows_by_transport) / temperature, dim=1)
            student = F.log_softmax(out["logits"][:, task.known_classes:] / temperature, dim=1)
            return self.options["prospective_weight"] * soft_cross_entropy(target, student)
        if step_in_epoch % self.options["retrospective_every"] == 0:
            with torch.no_grad():
                transport.old_rows_by_transport = self.retrospective_rows(task)
        # The cosines with W_old^OT learn the teacher's old-class softmax, weight (epoch / epochs)^2
        # (models/coil.py line 169).
        target = F.softmax(teacher_logits / temperature, dim=1)
        student = F.log_softmax(cosines(features, transport.old_rows_by_transport) / temperature, dim=1)
        weight = (epoch / transport.epochs) ** 2
        return self.options["retrospective_weight"] * weight * soft_cross_entropy(target, student)

    def after_task(self, task: Task) -> None:
        self.transport = None  # holds the phase's data; nothing of it outlives the task


def cosines(unit_features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Cosine logits without a scale, as the reference's transport terms use them."""
    return F.linear(unit_features, F.normalize(rows, dim=1))


def soft_cross_entropy(target: torch.Tensor, log_student: torch.Tensor) -> torch.Tensor:
    """-sum target * log student per sample, batch mean (the reference's distillation form)."""
    return -(target * log_student).sum(dim=1).mean()


def normalized_mean(features: torch.Tensor) -> torch.Tensor:
    """A class's prototype: the normalized mean of its L2-normalized features (PyCIL
    `_extract_class_means`: features / (norm + 1e-8), mean, / norm)."""
    unit = features / (features.norm(dim=1, keepdim=True) + EPSILON)
    return F.normalize(unit.mean(dim=0), dim=0)




def _check_options(options: dict[str, Any]) -> None:
    if not options["sinkhorn_reg"] > 0:
        raise ValueError(f"coil: sinkhorn_reg must be > 0 (the entropic regularization; the reference "
                         f"uses 0.464), got {options['sinkhorn_reg']}")
    if not options["cost_norm"] >= 1:
        raise ValueError(f"coil: cost_norm is the Minkowski p of the transport cost and must be >= 1 "
                         f"(the reference uses 3), got {options['cost_norm']}")
    if not (isinstance(options["retrospective_every"], int) and options["retrospective_every"] >= 1):
        raise ValueError(f"coil: retrospective_every counts steps between re-solved plans and must be an "
                         f"integer >= 1 (the reference uses 30), got {options['retrospective_every']!r}")
