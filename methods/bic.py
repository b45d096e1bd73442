"""BiC (Wu et al., "Large Scale Incremental Learning", CVPR 2019): distillation, then a bias
correction of the newest classes' logits learned on a held-out split.

The reference is PyCIL's models/bic.py and utils/inc_net.py (IncrementalNetWithBias, BiasLayer_BIC)
at commit 87cc411, the code behind the MEMO paper's BiC numbers; the authors' TensorFlow code
(wuyuebupt/LargeScaleIncrementalLearning, resnet.py and imagenet_main.py) settles what PyCIL gets wrong.

The network (`BiasCorrectedNet`) is a single backbone and classifier plus one bias pair
(alpha, beta) per task; pair t maps task t's logits z to alpha * z + beta, as PyCIL does. A pair
starts at (1, 0), so the first task (which trains no pair) is the plain first-task model every
single-network method shares. The pairs are parameters of the network: the strict policy bills
them (8 bytes a task, in the network and again in the teacher), the paper policy does not (they are
not backbone).

Task t >= 1 trains in two phases:

1. "train" (stage 1): everything but the pairs, on the task's new images plus the exemplars less the
   held-out split, with (1 - l) CE + l KD, l = known / total; KD is the soft cross-entropy at
   temperature T on the old classes' logits, against the previous model, its pairs included.
2. "bias_correction" (stage 2): only the newest pair, on the held-out split, with cross-entropy on
   the corrected logits of the fixed network (eval mode, no gradient through it).

The held-out split (`held_out_per_class`) takes, from every seen class, floor(0.1 x E / known)
images (PyCIL's split_ratio of the memory per old class, E exemplars): exemplars of the old classes
and new images alike. Its exemplars are part of the exemplar budget. Under 10 exemplars per old class
that is none, and the bias correction is skipped; the option `held_out_minimum` (not in the
reference) holds out at least that many images per class instead.

PyCIL's bugs this file fixes, each a deliberate difference from it:

- Stage 2's loss is cross_entropy(softmax(logits)) there: softmax applied twice, so the gradient
  shrinks as the probabilities saturate. Here it is cross_entropy(logits), the authors' loss
  (resnet.py: softmax_cross_entropy(logits=pred_all_classes)) and Avalanche's since PR 1550.
- Stage 2 runs the network in train mode there, so 170 epochs on the small split rewrite every
  BatchNorm layer's running statistics (and the logits it corrects are batch-statistics logits).
  Here the network is fixed in stage 2 (eval mode, no gradient), as the stage trains only the pair;
  the authors' bias stage writes its own checkpoint, so its BatchNorm updates never reach the model.
- With a small memory the split is empty (floor(0.1 E / known) = 0) and PyCIL crashes (LAMDA-CL/PyCIL
  issue 41). Here the stage is skipped (the engine logs it) and the newest pair stays (1, 0).

Other differences, not bugs: the engine draws the split with the run's generator (PyCIL: numpy's
global one). The authors' code keeps only the newest pair (applied to the newest classes at test
time and to the teacher's newest classes in distillation), puts an L2 of 0.1 on beta and none on
alpha, and does not augment the split; this file follows PyCIL (a pair per task, weight decay on
both, augmented split), whose numbers the suite compares with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, Phase, Task, register
from .losses import distillation_loss, frozen_copy
from .networks import IncrementalNet, SingleNet

BIAS_PHASE = "bias_correction"


@dataclass(frozen=True)
class BiCOptions:
    temperature: float = 2.0     # of the distillation softmax: PyCIL models/bic.py T = 2
    held_out_share: float = 0.1  # of the memory per old class held out: PyCIL split_ratio = 0.1 (the authors' nb_val)
    # Images per class held out at least. 0, the reference: a memory under 10 per old class holds
    # out none and the bias correction is skipped (PyCIL crashes there). Not in PyCIL or the paper.
    held_out_minimum: int = 0


class BiasPair(nn.Module):
    """One task's bias correction, alpha * z + beta on its logits z; starts as the identity.
    PyCIL's BiasLayer_BIC (utils/inc_net.py): two parameters of shape (1,)."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.alpha * logits + self.beta


class BiasCorrectedNet(SingleNet):
    """A single backbone and classifier whose logits pass through one bias pair per task
    (PyCIL's IncrementalNetWithBias with bias_correction=True)."""

    def __init__(self, backbone: str, storage: str = "fp32") -> None:
        super().__init__(backbone, storage)
        self.bias_pairs = nn.ModuleList()
        # Where each task's logits start and end; structure, rebuilt by add_task when a run resumes.
        self.task_bounds = [0]

    def add_task(self, new_classes: int) -> None:
        super().add_task(new_classes)
        self.task_bounds.append(self.num_classes)
        self.bias_pairs.append(BiasPair())

    def uncorrected(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The classifier's logits before any pair (IncrementalNet's forward)."""
        return super().forward(images)

    def correct(self, logits: torch.Tensor) -> torch.Tensor:
        """Every task's logits through its pair. In fp32 under autocast too, as the heads are."""
        with torch.autocast(logits.device.type, enabled=False):
            return torch.cat([pair(logits[:, low:high].float()) for pair, low, high
                              in zip(self.bias_pairs, self.task_bounds, self.task_bounds[1:])], dim=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.uncorrected(images)
        out["logits"] = self.correct(out["logits"])
        return out


@register
class BiC(Method):
    name = "bic"
    keeps_teacher = True
    extra_phases = (BIAS_PHASE,)
    options_type = BiCOptions

    def __init__(self, backbone: str, options: dict[str, Any] | None = None, model_storage: str = "fp32") -> None:
        super().__init__(backbone, options, model_storage)
        _check_share(self.options["held_out_share"])
        _check_minimum(self.options["held_out_minimum"])

    @classmethod
    def resolve_options(cls, options: dict[str, Any], base_classes: int) -> dict[str, Any]:
        """Nothing depends on the scenario; checked here so a bad value fails when the grid is planned."""
        _check_share(options.get("held_out_share", cls.default_options["held_out_share"]))
        _check_minimum(options.get("held_out_minimum", cls.default_options["held_out_minimum"]))
        return dict(options)

    def build_network(self, backbone: str) -> IncrementalNet:
        return BiasCorrectedNet(backbone, self.model_storage)

    # -- structure -----------------------------------------------------------------------------
    def before_task(self, task: Task) -> None:
        if task.index > 0:  # the previous model, its pairs included (PyCIL after_task: copy().freeze())
            self.teacher = frozen_copy(self.network, self.model_storage)
        super().before_task(task)

    def phases(self, task: Task) -> list[Phase]:
        if task.index == 0:
            return [Phase()]
        return [Phase(), Phase(BIAS_PHASE, data="held_out", loss=self.bias_loss,
                              parameter_groups=self.bias_parameter_groups)]

    def begin_phase(self, task: Task, phase: Phase) -> None:
        """Stage 1 trains no pair; stage 2 trains the newest pair only."""
        for pair in self.network.bias_pairs:
            pair.requires_grad_(False)
        if phase.name == BIAS_PHASE:
            self.network.bias_pairs[-1].requires_grad_(True)

    def held_out_per_class(self, task: Task, exemplars: int) -> int:
        """floor(share x E / known) images of every seen class, PyCIL's val_samples_per_class (the
        same expression, evaluated in the same order), or `held_out_minimum` if more; none on the first
        task, which has no stage 2."""
        if task.index == 0 or not exemplars:
            return 0
        share = int(self.options["held_out_share"] * exemplars / task.known_classes)
        return max(share, self.options["held_out_minimum"])

    # -- stage 1 ---------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        pairs = {id(p) for p in self.network.bias_pairs.parameters()}
        return [{"params": [p for p in self.network.parameters() if p.requires_grad and id(p) not in pairs]}]

    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.network(images)["logits"]
        loss = F.cross_entropy(logits, labels)
        if self.teacher is None:
            return loss
        with torch.no_grad():
            old_logits = self.teacher(images)["logits"]
        kd = distillation_loss(logits[:, :task.known_classes], old_logits, self.options["temperature"])
        share_old = task.known_classes / task.total_classes  # PyCIL's lamda
        return (1 - share_old) * loss + share_old * kd

    # -- stage 2 ---------------------------------------------------------------------------------
    def bias_parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.network.bias_pairs[-1].parameters())}]

    def bias_loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the corrected logits; the network itself is fixed (eval mode, no
        gradient), so its BatchNorm statistics stay those of stage 1."""
        network = self.network
        with torch.no_grad():
            network.eval()
            try:
                logits = network.uncorrected(images)["logits"]
            finally:
                network.train()
        return F.cross_entropy(network.correct(logits), labels)


def _check_share(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"bic: held_out_share {value!r} must be a number between 0 and 1 (the share of the "
                         "memory per old class held out for the bias correction; the reference's is 0.1)")


def _check_minimum(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"bic: held_out_minimum {value!r} must be an integer >= 0 (images per class held out "
                         "for the bias correction at least; 0 follows the reference)")
