"""FOSTER (Wang et al., "FOSTER: Feature Boosting and Compression for Class-Incremental Learning",
ECCV 2022), as PyCIL 87cc411 implements it (models/foster.py, utils/inc_net.py FOSTERNet,
exps/foster.json).

Every task after the first has two phases:

- boosting ("train"): a new backbone, initialized from the old one, beside the frozen old one
  (its BatchNorm in eval mode); one classifier over both backbones' features, whose old rows and
  old columns start as the old classifier. Loss: cross-entropy on the logits divided by
  class-balanced weights (Cui et al. 2019, effective number with beta1), plus cross-entropy of an
  auxiliary head on the new backbone's features over all classes (PyCIL's fe_fc), plus
  lambda_okd x distillation of the old logits (the frozen old backbone and classifier) into the
  new logits' old classes at temperature T.
- compression ("compression"): a fresh single-backbone student, its backbone initialized from the
  old backbone and its classifier's old rows from the old classifier, learns the boosted model's
  logits by balanced distillation (the teacher's softmax reweighted by class-balanced weights with
  beta2), SGD without weight decay. The student is the model the next task starts from.

The first task is plain cross-entropy on one backbone (PyCIL's _init_train), so FOSTER loads the
shared first-task model.

What is scored and billed (option `evaluate`):
- "student" (default): the compressed student is evaluated, selects the exemplars and is billed:
  one backbone under the paper policy.
- "teacher": the boosted two-backbone model is evaluated and selects the exemplars, as PyCIL does
  (its student is only logged; the survey's FOSTER numbers are the teacher's, confirmed by
  FOSTER's author in G-U-N/ECCV22-FOSTER issue 6). It is billed what it scores with: two
  backbones under the paper policy (`kept_blocks`, and the network's `backbone_modules`).
Under the strict policy both hold, after a task, the student and the boosted model it was
distilled from (the peak of the task: three backbones, the heads, the old classifier), because
the boosted model is dropped only when the next task begins; that is what the audit then counts.

Deliberate differences from PyCIL 87cc411 (each named in docs/fidelity.md):
- learning rates decay in steps (the engine's schedule), where PyCIL anneals with a cosine;
- the class counts behind the class-balanced weights are those of the phase's training set;
  PyCIL assumes 500 per new class on CIFAR-100 (`samples_new_class`) and the memory per class for
  old ones, which is the same count on full CIFAR-100 with a fixed memory per class;
- with evaluate "student", the exemplars are herded with the student's features (PyCIL: the
  teacher's, which "teacher" keeps).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .base import Method, Phase, Task, TaskData, register
from .losses import distillation_loss
from .networks import IncrementalNet, expanded_classifier, reference_linear
from .storage import store_module

Scored = Literal["student", "teacher"]
SCORED = typing.get_args(Scored)
OldClassifier = Literal["ft", "az"]
OLD_CLASSIFIERS = typing.get_args(OldClassifier)
COMPRESSION = "compression"


@dataclass(frozen=True)
class FOSTEROptions:
    # Defaults: PyCIL 87cc411 exps/foster.json (CIFAR-100), the values of the FOSTER paper's CIFAR runs.
    beta1: float = 0.96          # class-balanced weights of the boosting CE ("beta1")
    beta2: float = 0.97          # class-balanced weights of the compression KD ("beta2")
    lambda_okd: float = 1.0      # weight of the old-logit distillation while boosting ("lambda_okd")
    temperature: float = 2.0     # of both distillations ("T")
    oofc: OldClassifier = "ft"   # new classes' weights on old features: "ft" train them, "az" keep them 0 ("oofc")
    is_teacher_wa: bool = False  # weight aligning of the boosted model ("is_teacher_wa")
    is_student_wa: bool = False  # weight aligning of the student ("is_student_wa")
    wa_value: float = 1.0        # the aligning factor's base, gamma x wa_value^(old/new) ("wa_value")
    evaluate: Scored = "student"  # the model scored and billed; see the module docstring (not in PyCIL)


class FosterNet(IncrementalNet):
    """PyCIL's FOSTERNet: one backbone (first task, student) or the old and the new backbone
    (boosted model), a classifier over their concatenated features, the frozen old classifier
    (`old_fc`, its logits are the old model's) and the auxiliary head on the newest backbone."""

    def __init__(self, backbone: str, storage: str = "fp32") -> None:
        super().__init__(storage)
        self.backbone_name = backbone
        self.backbones = nn.ModuleList([build_backbone(backbone)])
        self.old_fc: nn.Linear | None = None

    def boost(self, new_classes: int) -> None:
        """The boosted model of PyCIL's update_fc: a copy of the backbone beside the frozen old one,
        the classifier expanded over both, the old classifier kept frozen, a fresh auxiliary head
        over all classes (fe_fc)."""
        if len(self.backbones) != 1:
            raise RuntimeError("FOSTER boosts a single-backbone model (the first task's or a student)")
        old = self.backbones[0]
        new = build_backbone(self.backbone_name)
        new.load_state_dict(old.state_dict())
        self.backbones.append(new)
        self.freeze(old)
        self.old_fc = self.fc
        self.freeze(self.old_fc)
        self.num_classes += new_classes
        self.fc = expanded_classifier(self.old_fc, self.feature_dim, self.num_classes)
        self.aux_fc = reference_linear(self.newest_dim, self.num_classes)

    def student(self) -> "FosterNet":
        """PyCIL's _feature_compression student: one fresh backbone loaded with the old backbone's
        values, a fresh classifier over all classes whose old rows are the old classifier's."""
        student = FosterNet(self.backbone_name, self.storage)
        load_values(student.backbones[0], self.backbones[0])
        student.num_classes = self.num_classes
        student.fc = expanded_classifier(self.old_fc, student.feature_dim, self.num_classes)
        return student

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(images) for b in self.backbones], dim=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(images)
        if self.old_fc is not None:
            with torch.autocast(images.device.type, enabled=False):
                out["old_logits"] = self.old_fc(out["features"][:, :self.old_fc.in_features].float())
        return out

    def first_backbone_state(self) -> dict[str, torch.Tensor]:
        return self.backbones[0].state_dict()

    def load_first_backbone(self, state: dict[str, torch.Tensor]) -> None:
        self.backbones[0].load_state_dict(state)

    def backbone_modules(self) -> list[nn.Module]:
        return list(self.backbones)

    @property
    def feature_dim(self) -> int:
        return sum(b.out_dim for b in self.backbones)

    @property
    def newest_dim(self) -> int:
        return self.backbones[-1].out_dim


@torch.no_grad()
def load_values(target: nn.Module, source: nn.Module) -> None:
    """Copy `source`'s values into the fp32 module `target` of the same architecture. `source` may
    be stored in another dtype (methods/storage.py): its attributes read back as the fp32 values
    it computes with, which a state_dict (the stored tensors) would not give."""
    sources = dict(source.named_modules())
    for name, module in target.named_modules():
        for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            tensor.copy_(getattr(sources[name], key))


def class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-class weights (1 - beta) / (1 - beta^n_c), normalized to sum to the number of classes
    (Cui et al., CVPR 2019; PyCIL models/foster.py per_cls_weights)."""
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts.double()))
    return (weights / weights.sum() * len(counts)).float()


def balanced_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """PyCIL's BKD: soft cross-entropy to the teacher's softmax reweighted per class and renormalized."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    soft = F.softmax(teacher_logits / temperature, dim=1) * weights
    soft = soft / soft.sum(dim=1, keepdim=True)
    return -(soft * log_student).sum(dim=1).mean()


@torch.no_grad()
def align_new_rows(fc: nn.Linear, known_classes: int, value: float) -> None:
    """PyCIL FOSTERNet.weight_align: new rows scaled by mean||w_old|| / mean||w_new|| x value^(old/new)."""
    norms = fc.weight.norm(dim=1)
    new = fc.out_features - known_classes
    gamma = norms[:known_classes].mean() / norms[known_classes:].mean() * value ** (known_classes / new)
    fc.weight[known_classes:] *= gamma


@register
class FOSTER(Method):
    name = "foster"
    # The old model is held while a task trains: inside the boosted model, then as the teacher of
    # the compression (also what makes model_storage apply to its strict count).
    keeps_teacher = True
    extra_phases = (COMPRESSION,)
    options_type = FOSTEROptions

    def __init__(self, backbone: str, options: dict[str, Any] | None = None, model_storage: str = "fp32") -> None:
        super().__init__(backbone, options, model_storage)
        _check_options(self.options)
        self.class_weights: torch.Tensor | None = None  # of the phase being trained; read from its data

    @classmethod
    def resolve_options(cls, options: dict[str, Any], base_classes: int) -> dict[str, Any]:
        _check_options({**cls.default_options, **options})
        return dict(options)

    @classmethod
    def kept_blocks(cls, num_tasks: int, options: dict[str, Any]) -> int:
        """One backbone (the student), or two when the boosted model is scored after a later task."""
        return 2 if options.get("evaluate", "student") == "teacher" and num_tasks > 1 else 1

    def build_network(self, backbone: str) -> FosterNet:
        return FosterNet(backbone, self.model_storage)

    # -- structure ----------------------------------------------------------------------------
    def before_task(self, task: Task) -> None:
        if task.index == 0:
            self.network.add_task(task.new_classes)
            return
        if self.options["evaluate"] == "teacher" and task.index > 1:
            self.network = self.teacher  # the previous student, kept aside while the boosted model was scored
        self.teacher = None  # the previous boosted model: held until now only to bill the task's peak
        self.network.boost(task.new_classes)
        if self.options["oofc"] == "az":
            self.zero_new_rows_on_old_features(task, self.network.fc.weight)

    def phases(self, task: Task) -> list[Phase]:
        if task.index == 0:
            return [Phase()]
        return [Phase(), Phase(COMPRESSION, "task", self.compression_loss, self.compression_groups)]

    def begin_phase(self, task: Task, phase: Phase) -> None:
        if phase.name != COMPRESSION:
            return
        boosted = self.network
        boosted.requires_grad_(False)
        store_module(boosted, self.model_storage)  # from now on a teacher, stored as teachers are
        self.teacher = boosted.eval()
        self.network = boosted.student()

    def end_phase(self, task: Task, phase: Phase) -> None:
        if task.index == 0:
            return
        if phase.name != COMPRESSION:
            if self.options["is_teacher_wa"]:
                align_new_rows(self.network.fc, task.known_classes, self.options["wa_value"])
            return
        if self.options["is_student_wa"]:
            align_new_rows(self.network.fc, task.known_classes, self.options["wa_value"])
        if self.options["evaluate"] == "teacher":
            self.network, self.teacher = self.teacher, self.network

    # -- statistics ---------------------------------------------------------------------------
    def prepare_phase(self, task: Task, phase: Phase, data: TaskData) -> None:
        """The class-balanced weights from the images per class the phase trains on."""
        if task.index == 0:
            return
        counts = torch.bincount(data.training_set.labels.cpu(), minlength=task.total_classes)
        beta = self.options["beta2" if phase.name == COMPRESSION else "beta1"]
        self.class_weights = class_balanced_weights(counts, beta).to(data.training_set.labels.device)

    # -- losses -------------------------------------------------------------------------------
    def loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Boosting (PyCIL _feature_boosting); the first task is plain cross-entropy."""
        out = self.network(images)
        if task.index == 0:
            return F.cross_entropy(out["logits"], labels)
        logits = out["logits"]
        balanced = F.cross_entropy(logits / self.class_weights, labels)
        auxiliary = F.cross_entropy(out["aux_logits"], labels)
        old = distillation_loss(logits[:, :task.known_classes], out["old_logits"].detach(), self.options["temperature"])
        return balanced + auxiliary + self.options["lambda_okd"] * old

    def compression_loss(self, task: Task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(images)["logits"]
        student_logits = self.network(images)["logits"]
        return balanced_distillation(student_logits, teacher_logits, self.class_weights, self.options["temperature"])

    def compression_groups(self) -> list[dict[str, Any]]:
        """Every student parameter, without weight decay (PyCIL's compression optimizer has none)."""
        return [{"params": self.trainable_parameters(), "weight_decay": 0.0}]

    def before_step(self, task: Task, phase: Phase) -> None:
        if task.index > 0 and phase.name != COMPRESSION and self.options["oofc"] == "az":
            grad = self.network.fc.weight.grad
            if grad is not None:
                self.zero_new_rows_on_old_features(task, grad)

    def zero_new_rows_on_old_features(self, task: Task, matrix: torch.Tensor) -> None:
        """oofc "az": the new classes' weights on the old backbone's features stay 0 (PyCIL zeroes
        them before boosting and their gradients at every step)."""
        with torch.no_grad():
            matrix[task.known_classes:, :self.network.old_fc.in_features] = 0.0


def _check_options(options: dict[str, Any]) -> None:
    if options["evaluate"] not in SCORED:
        raise ValueError(f"foster: unknown evaluate {options['evaluate']!r}; use 'student' (the compressed model, "
                         "billed one backbone) or 'teacher' (the boosted model, billed two, as PyCIL scores)")
    if options["oofc"] not in OLD_CLASSIFIERS:
        raise ValueError(f"foster: unknown oofc {options['oofc']!r}; use 'ft' (train the new classes' weights on "
                         "old features) or 'az' (keep them at zero)")
    for key in ("beta1", "beta2"):
        if not 0.0 <= options[key] < 1.0:
            raise ValueError(f"foster: {key} must be in [0, 1) (the class-balanced weights' beta), got {options[key]!r}")
