"""The budget planner: turns a memory budget into a backbone (or backbones) plus an exemplar
count for each method, from live byte counts of the networks the methods will build.

Budgets are aligned at the final task (docs/protocol.md section 3): the planner builds each
method's final network on the meta device (no memory is allocated), counts it with the same
function the run-time audit uses, and spends what is left of the budget on exemplars.

Three ways to give budgets:
- "paper": the performance-memory curve. The start point is one benchmark backbone plus the
  anchor exemplars (ANCHOR_EXEMPLARS, 2,000); every larger member X of the backbone family adds a point whose
  budget is DER's final model with T copies of X plus the anchor exemplars.
- "fair": the single aligned budget of the paper, the curve point where X is the benchmark backbone.
- a list of MB: for each budget, single-network methods keep the benchmark backbone; growing
  methods (DER, MEMO) take the largest family member that still leaves the anchor exemplars,
  or the smallest member if none does. Everyone spends the rest on exemplars.
A method whose model plus the minimum exemplar count does not fit is a BudgetError.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import torch

from methods import METHODS, Method, Task
from methods.exemplar_formats import ExemplarFormat
from methods.networks import build_network
from methods.storage import check_storage, storage_applies

from .accounting import DEFAULT_POLICY, MB, check_policy, exemplar_bytes, model_bytes, module_params

# Exemplars at every curve point's definition (and the floor a growing method's backbone must leave):
# the MEMO paper's smallest CIFAR-100 budget, 2,000 images.
ANCHOR_EXEMPLARS = 2000
# A budget axis that changes nothing for a method. Not "n/a": pandas reads that back as a missing value.
NOT_APPLICABLE = "-"


class BudgetError(ValueError):
    """A budget that cannot hold a method; the message names the method, the budget and the minimum."""


@dataclass(frozen=True)
class PlanContext:
    """Everything the planner needs; no data and no device."""

    task_sizes: tuple[int, ...]        # classes per task
    image_shape: tuple[int, int, int]  # one exemplar's shape (uint8)
    family: tuple[str, ...]            # curve backbones, smallest first
    benchmark: str                     # the single-network methods' backbone
    policy: str = DEFAULT_POLICY
    anchor_exemplars: int = ANCHOR_EXEMPLARS
    min_exemplars: int | None = None   # fewest exemplars a method may be left with; None: one per class
    train_images: int = 0              # training images of all classes (joint holds them all)
    # How exemplars are stored (methods/exemplar_formats.py) and what one costs: exact for raw and
    # downsampled images; for JPEG, the data set's measured mean encoded size (an estimate: the
    # engine fills the byte budget with the real sizes).
    exemplar_format: str = "raw"
    stored_image_bytes: float | None = None  # None: the format's exact size
    shared_header_bytes: int = 0             # jpeg:<q>:shared: the one JPEG header, billed once
    # The dtype of blocks a method freezes and never trains again (methods/storage.py).
    model_storage: str = "fp32"
    method_options: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()  # resolved, hashable

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    @property
    def image_bytes(self) -> float:
        """Bytes one stored exemplar costs: exact for raw and downsampled images, the measured mean
        for encoded ones (`stored_image_bytes`)."""
        exact = ExemplarFormat.parse(self.exemplar_format).fixed_image_bytes(self.image_shape)
        if exact is not None:
            return exact
        if self.stored_image_bytes is None:
            raise BudgetError(f"exemplar_format {self.exemplar_format!r}: its exemplars' size is known only from "
                              "the data (the measured mean encoded size); plan with the data set at hand "
                              "(--data-root or $CIL_DATA_ROOT)")
        return self.stored_image_bytes

    @property
    def minimum_exemplars(self) -> int:
        return sum(self.task_sizes) if self.min_exemplars is None else self.min_exemplars


@dataclass(frozen=True)
class BudgetPoint:
    index: int
    label: str
    budget_bytes: int
    curve_backbone: str | None  # X of a curve point; None for the start point and MB budgets

    @property
    def budget_mb(self) -> float:
        return self.budget_bytes / MB


@dataclass(frozen=True)
class CellPlan:
    """One method at one budget point: what it keeps and how many bytes that is."""

    method: str
    point: int | None          # None for joint, which is not on the memory axis
    point_label: str
    budget_bytes: int | None
    backbone: str
    num_backbones: int         # backbones (DER) or specialized blocks (MEMO) at the final task
    model_params: int          # backbone parameters of the final model
    model_bytes: int
    exemplars: int
    exemplar_bytes: int
    policy: str
    # The budget axes; "-" (NOT_APPLICABLE) where the axis changes nothing for the method (Finetune keeps no
    # exemplars; Replay freezes no block).
    exemplar_format: str = "raw"
    model_storage: str = "fp32"

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.exemplar_bytes

    @property
    def budget_mb(self) -> float | None:
        return None if self.budget_bytes is None else self.budget_bytes / MB

    def as_row(self) -> dict:
        row = {k: getattr(self, k) for k in self.__dataclass_fields__}
        row.update(budget_mb=self.budget_mb, total_bytes=self.total_bytes, total_mb=self.total_bytes / MB)
        return row


# -- live byte counts ------------------------------------------------------------------------
@lru_cache(maxsize=None)
def final_model(growth: str, backbone: str, task_sizes: tuple[int, ...], policy: str,
                keeps_teacher: bool) -> tuple[int, int]:
    """(backbone parameters, bytes under `policy`) of the network after the last task."""
    with torch.device("meta"):
        network = build_network(growth, backbone)
        teacher = None
        for task, size in enumerate(task_sizes):
            if keeps_teacher and task == len(task_sizes) - 1 and task > 0:
                teacher = copy.deepcopy(network)  # the previous model, held while training the last task
            network.add_task(size)
    return module_params(network.backbone_modules()), model_bytes(network, policy, teacher)


@lru_cache(maxsize=None)
def stored_final_model(method: str, backbone: str, task_sizes: tuple[int, ...], policy: str, storage: str,
                       options: tuple[tuple[str, object], ...]) -> tuple[int, int]:
    """(backbone parameters, bytes under `policy`) after the last task of `method` given `storage`.

    The method itself is built on the meta device and its own structural hooks are replayed for
    every task (`Method.replay_task`: what `Engine.replay` does when a run resumes), so exactly the modules
    the run freezes are converted (methods/storage.py) and the teacher is the one it holds during
    the last task; nothing of which blocks freeze is restated here. `options` are the method's
    resolved options (MEMO's train_base decides whether the generalized block freezes)."""
    with torch.device("meta"):
        kept = replayed_method(method, backbone, task_sizes, storage, options)
    # The parameter count is the trained model's, whatever it is stored in (int8 scales are bytes, not parameters).
    traits = METHODS.get(method)
    if traits.build_network is Method.build_network:
        params = final_model(traits.growth, backbone, task_sizes, policy, traits.keeps_teacher)[0]
    else:  # its own network: the parameters of the fp32 replay's backbones
        with torch.device("meta"):
            trained = kept if storage == "fp32" else replayed_method(method, backbone, task_sizes, "fp32", options)
        params = module_params(trained.network.backbone_modules())
    return params, model_bytes(kept.network, policy, kept.teacher)


def replayed_method(method: str, backbone: str, task_sizes: tuple[int, ...], storage: str,
                    options: tuple[tuple[str, object], ...]):
    """`method` after every task's structural hooks, built on the meta device (call under it)."""
    kept = METHODS.get(method)(backbone, dict(options), model_storage=storage)
    known = 0
    for index, size in enumerate(task_sizes):
        kept.replay_task(Task(index, known, known + size, len(task_sizes)))
        known += size
    return kept


def method_model(method: str, backbone: str, ctx: PlanContext) -> tuple[int, int]:
    """What `method` keeps at the final task: the fp32 count of its network kind, or the count of
    the method itself replayed (with the context's model_storage where it applies to it,
    methods/storage.py storage_applies): always for a method that builds its own network (bias
    layers, cosine heads, a compressed student), whose final size only its own hooks know."""
    traits = METHODS.get(method)
    plain = traits.build_network is Method.build_network  # the growth kind's network, as final_model builds it
    if plain and (ctx.model_storage == "fp32" or not storage_applies(traits, ctx.policy)):
        return final_model(traits.growth, backbone, ctx.task_sizes, ctx.policy, traits.keeps_teacher)
    storage = ctx.model_storage if storage_applies(traits, ctx.policy) else "fp32"
    return stored_final_model(method, backbone, ctx.task_sizes, ctx.policy, check_storage(storage),
                              _resolved_options(method, ctx))


def _resolved_options(method: str, ctx: PlanContext) -> tuple[tuple[str, object], ...]:
    """The method's options from the context; an option left "auto" (scenario-dependent) is refused,
    because the replay would fail on it, and what freezes may hang on it (MEMO's train_base)."""
    options = dict(dict(ctx.method_options).get(method, ()))
    unresolved = sorted(key for key, value in {**METHODS.get(method).default_options, **options}.items()
                        if isinstance(value, str) and value == "auto")
    if unresolved:
        raise ValueError(f"{method}: counting model_storage {ctx.model_storage!r} needs its resolved options, but "
                         f"{', '.join(unresolved)} is 'auto'; pass them in PlanContext.method_options (the grid "
                         "resolves them with the method's resolve_options)")
    return tuple(sorted(options.items()))


# -- budget points ---------------------------------------------------------------------------
def _anchor_bytes(ctx: PlanContext) -> int:
    return exemplar_bytes(ctx.anchor_exemplars, ctx.image_shape)


def curve_points(ctx: PlanContext) -> list[BudgetPoint]:
    """The paper's performance-memory curve: the start point, then one point per larger family member."""
    check_policy(ctx.policy)
    start = final_model("single", ctx.benchmark, ctx.task_sizes, ctx.policy, False)[1] + _anchor_bytes(ctx)
    points = [BudgetPoint(0, f"{ctx.benchmark}+{ctx.anchor_exemplars}", start, None)]
    for backbone in ctx.family[1:]:
        budget = final_model("der", backbone, ctx.task_sizes, ctx.policy, False)[1] + _anchor_bytes(ctx)
        points.append(BudgetPoint(len(points), f"{ctx.num_tasks}x{backbone}", budget, backbone))
    return points


def fair_point(ctx: PlanContext) -> BudgetPoint:
    """The paper's single aligned budget: DER's final size with the benchmark backbone plus the anchor."""
    budget = final_model("der", ctx.benchmark, ctx.task_sizes, ctx.policy, False)[1] + _anchor_bytes(ctx)
    return BudgetPoint(0, "fair", budget, ctx.benchmark)


def megabyte_points(budgets_mb: Sequence[float]) -> list[BudgetPoint]:
    return [BudgetPoint(i, f"{mb:g}MB", round(mb * MB), None) for i, mb in enumerate(sorted(budgets_mb))]


# -- one cell --------------------------------------------------------------------------------
def choose_backbone(method: str, point: BudgetPoint, ctx: PlanContext) -> str:
    """Which backbone a method keeps at a budget point (the documented rule of the module docstring)."""
    if not METHODS.get(method).grows():
        return ctx.benchmark
    if point.curve_backbone is not None:
        return point.curve_backbone
    if point.index == 0 and point.label.startswith(f"{ctx.benchmark}+"):
        return ctx.family[0]  # the curve's start point: growing methods take the smallest member
    fitting = [b for b in ctx.family
               if method_model(method, b, ctx)[1] + _anchor_bytes(ctx) <= point.budget_bytes]
    return fitting[-1] if fitting else ctx.family[0]


def plan_cell(method: str, point: BudgetPoint, ctx: PlanContext) -> CellPlan:
    backbone = choose_backbone(method, point, ctx)
    params, model = method_model(method, backbone, ctx)
    traits = METHODS.get(method)
    room = point.budget_bytes - model - ctx.shared_header_bytes
    exemplars = max(0, math.floor(room / ctx.image_bytes)) if traits.uses_exemplars else 0
    if model > point.budget_bytes or (traits.uses_exemplars and exemplars < ctx.minimum_exemplars):
        raise BudgetError(_too_small(method, backbone, model, point, ctx))
    return CellPlan(method, point.index, point.label, point.budget_bytes, backbone, _num_blocks(method, ctx),
                    params, model, exemplars, _planned_exemplar_bytes(exemplars, point, model, ctx), ctx.policy,
                    *axes_of(method, ctx))


def _planned_exemplar_bytes(exemplars: int, point: BudgetPoint, model: int, ctx: PlanContext) -> int:
    """Exact for formats of a fixed size; for encoded ones the byte budget the engine fills with the
    real sizes (the count is then the estimate from the measured mean size)."""
    exact = ExemplarFormat.parse(ctx.exemplar_format).fixed_image_bytes(ctx.image_shape)
    if exact is not None or not exemplars:
        return exemplars * int(exact or 0)
    return point.budget_bytes - model


def axes_of(method: str, ctx: PlanContext) -> tuple[str, str]:
    """The cell's exemplar format and model storage, "-" where the axis changes nothing for the
    method: a method without an exemplar budget (Finetune; Joint, which holds the data set), or one
    that freezes no block (and keeps no teacher that the policy bills)."""
    traits = METHODS.get(method)
    has_budget = traits.uses_exemplars and not traits.trains_on_all_data
    return (ctx.exemplar_format if has_budget else NOT_APPLICABLE,
            ctx.model_storage if storage_applies(traits, ctx.policy) else NOT_APPLICABLE)


def plan_joint(ctx: PlanContext) -> CellPlan:
    """Joint holds every training image it has seen: its memory is that data, not a budget."""
    params, model = method_model("joint", ctx.benchmark, ctx)
    return CellPlan("joint", None, "all data", None, ctx.benchmark, 1, params, model, ctx.train_images,
                    exemplar_bytes(ctx.train_images, ctx.image_shape), ctx.policy, *axes_of("joint", ctx))


def _num_blocks(method: str, ctx: PlanContext) -> int:
    return METHODS.get(method).kept_blocks(ctx.num_tasks, dict(dict(ctx.method_options).get(method, ())))


def _too_small(method: str, backbone: str, model: int, point: BudgetPoint, ctx: PlanContext) -> str:
    needs_exemplars = METHODS.get(method).uses_exemplars
    minimum = model + (math.ceil(ctx.minimum_exemplars * ctx.image_bytes) + ctx.shared_header_bytes
                       if needs_exemplars else 0)
    kept = f"{ctx.num_tasks} x {backbone}" if METHODS.get(method).grows() else backbone
    floor = f" plus the minimum of {ctx.minimum_exemplars} exemplars" if needs_exemplars else ""
    return (f"budget {point.budget_mb:.2f} MB ({point.label}) cannot hold method {method!r}: its smallest model "
            f"({kept}, {model / MB:.2f} MB under policy {ctx.policy!r}){floor} needs {minimum / MB:.2f} MB "
            f"({minimum:,} bytes). Raise the budget to at least {minimum / MB:.2f} MB"
            + (", or lower min_exemplars." if needs_exemplars else "."))


# -- the whole plan --------------------------------------------------------------------------
# The named ways to give budgets (see the module docstring); any other is a list of MB.
BUDGET_MODES: dict[str, Callable[[PlanContext], list[BudgetPoint]]] = {
    "paper": curve_points,
    "fair": lambda ctx: [fair_point(ctx)],
}


def budget_points(budgets: str | Sequence[float], ctx: PlanContext) -> list[BudgetPoint]:
    if isinstance(budgets, str):
        return BUDGET_MODES[budgets](ctx)
    return megabyte_points(budgets)


def plan(methods: Sequence[str], budgets: str | Sequence[float], ctx: PlanContext) -> list[CellPlan]:
    """Every (method, budget point) cell; joint gets one cell. Raises one BudgetError listing every misfit."""
    problems = _count_problems(ctx, isinstance(budgets, str))
    if problems:  # the curve's points would be built on counts that no data set fills
        raise BudgetError("\n".join(problems))
    points = budget_points(budgets, ctx)
    cells = []
    for method in methods:
        if METHODS.get(method).trains_on_all_data:
            cells.append(plan_joint(ctx))
            continue
        for point in points:
            try:
                cells.append(plan_cell(method, point, ctx))
            except BudgetError as error:
                problems.append(str(error))
    problems += [text for text in (_limits_nothing(point, cells, ctx) for point in points) if text]
    if problems:
        raise BudgetError("\n".join(problems))
    return cells


def _count_problems(ctx: PlanContext, curve: bool) -> list[str]:
    """Exemplar counts above the scenario's training images, which no method could ever hold (the
    anchor defines the points of the paper's curve and of "fair")."""
    if not ctx.train_images:  # unknown (a bare PlanContext)
        return []
    counts = {"anchor_exemplars": ctx.anchor_exemplars if curve else None, "min_exemplars": ctx.min_exemplars}
    return [f"{key}: {count:,} exemplars, but the scenario has only {ctx.train_images:,} training images to "
            f"keep; use at most {ctx.train_images:,}" for key, count in counts.items()
            if count is not None and count > ctx.train_images]


def _limits_nothing(point: BudgetPoint, cells: list[CellPlan], ctx: PlanContext) -> str:
    """Why a budget point measures nothing (every exemplar method there has room for more exemplars
    than the scenario's training images, so memory limits none of them), or "" when it does."""
    if not ExemplarFormat.parse(ctx.exemplar_format).is_raw:
        return ""  # budgets are defined in raw images; a smaller format may well hold the whole data set
    kept = [cell for cell in cells if cell.point == point.index and METHODS.get(cell.method).uses_exemplars]
    if not ctx.train_images or not kept or any(cell.exemplars <= ctx.train_images for cell in kept):
        return ""
    biggest = max(kept, key=lambda cell: cell.model_bytes)  # the last method to run out of room
    largest = biggest.model_bytes + exemplar_bytes(ctx.train_images + 1, ctx.image_shape) - 1
    return (f"budget {point.budget_mb:,.2f} MB ({point.label}) leaves every method room for more exemplars "
            f"({min(cell.exemplars for cell in kept):,} or more) than the scenario's {ctx.train_images:,} "
            f"training images, so memory limits none of them. The largest sensible budget is "
            f"{math.floor(largest / MB * 1e4) / 1e4:.4f} MB ({largest:,} bytes, where {biggest.method!r} holds "
            f"exactly the {ctx.train_images:,} images): give budgets up to that, or use more images per class.")
