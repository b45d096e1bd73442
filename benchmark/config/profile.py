"""Training presets ("profiles"): YAML files under benchmark/config/profiles/, one per profile,
resolved into the typed Schedule and Profile dataclasses that the grid and the engine read.

A profile gives the first task's schedule, a default later-task schedule, per-method changes of
it, per-method changes for the phases a method trains after its main one (`phases.<method>.<phase>`,
changes to that method's later-task schedule; methods/base.py `Method.extra_phases`), and
per-method default options. A method the profile does not list trains with the default,
so registering a new method needs no edit here. An experiment's `training:` section overrides
any field: `later_tasks.all` every method's later-task schedule, `later_tasks.<method>` one.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Lt
from pydantic import AfterValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from methods import METHODS

from benchmark.config.precision import PRECISIONS
from benchmark.config.yaml_files import load_yaml_file
from benchmark.config.validation import (ConfigError, Fraction, MethodName, MethodOptions, NonNegativeFloat, PositiveFloat,
                         PositiveInt, StrictBool, choice, derived_model, drop_default, finite, problems_of)

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
SCHEDULE_CONFIG = ConfigDict(extra="forbid")  # a misspelt field is an error, not a silent default

# Defaults of the Profile fields that the engine takes too (EngineSettings reads them from here).
AUGMENT = True
EVAL_BATCH_SIZE = 1000
HERDING_BATCH_SIZE = 1000
PRECISION = "fp32"
CPU_THREADS = 1  # torch threads of a run on the CPU (docs/choices.md, "Threads per run")


def _increasing(milestones: tuple[int, ...]) -> tuple[int, ...]:
    if any(later <= earlier for earlier, later in zip(milestones, milestones[1:])):
        raise ValueError(f"{list(milestones)} must be strictly increasing, e.g. [60, 120, 170]")
    return milestones


@dataclass(frozen=True, config=SCHEDULE_CONFIG)
class Schedule:
    """SGD with step decay, as every reference run uses."""

    epochs: PositiveInt = Field(description="training epochs of the task (at least 1)")
    milestones: Annotated[tuple[PositiveInt, ...], AfterValidator(_increasing)] = Field(
        description="epochs after which lr is multiplied by lr_decay, strictly increasing; "
                    "[] keeps lr constant. A milestone >= epochs never takes effect (a warning)")
    weight_decay: NonNegativeFloat = Field(description="SGD weight decay (L2), >= 0")
    lr: PositiveFloat = Field(0.1, description="initial learning rate, > 0")
    lr_decay: Fraction = Field(0.1, description="factor applied at each milestone, in (0, 1]")
    momentum: finite(Ge(0), Lt(1)) = Field(0.9, description="SGD momentum, in [0, 1)")
    batch_size: PositiveInt = Field(128, description="training images per SGD step")


@dataclass(frozen=True, config=SCHEDULE_CONFIG)
class Profile:
    name: str = Field(description="the profile's file name without .yaml")
    first_task: Schedule = Field(description="schedule of the first task, shared by every method")
    later_tasks: dict[str, Schedule] = Field(
        description="later-task schedule per method: every method registered when the profile was resolved")
    later_default: Schedule = Field(description="later-task schedule of a method the profile does not list")
    images_per_class: PositiveInt | None = Field(
        None, description="train on the first N images of every class; null: all of them")
    test_images_per_class: PositiveInt | None = Field(
        None, description="test on the first N images of every class; null: all of them")
    augment: StrictBool = Field(AUGMENT, description="pad-4 random crop, horizontal flip, brightness jitter")
    eval_batch_size: PositiveInt = Field(EVAL_BATCH_SIZE, description="images per no-grad batch when evaluating")
    herding_batch_size: PositiveInt = Field(
        HERDING_BATCH_SIZE, description="images per no-grad batch when extracting features for exemplar selection")
    precision: choice(lambda: PRECISIONS) = Field(
        PRECISION, description="fp32, or bf16 autocast of the backbones (CUDA only)")
    cpu_threads: PositiveInt = Field(
        CPU_THREADS, description="torch threads of every run on the CPU, whatever --workers or the backend give "
                                 "its worker: the floats change with the thread count, so it is a setting of the run")
    method_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="the profile's default options per method")
    phases: dict[str, dict[str, Schedule]] = Field(
        default_factory=dict, description="per method: the schedule of each phase it trains after its main one")

    def schedule(self, method: str, task: int) -> Schedule:
        if task == 0:
            return self.first_task
        return self.later_tasks.get(method, self.later_default)

    def phase_schedules(self, method: str) -> dict[str, Schedule]:
        return self.phases.get(method, {})


# Fields of Profile that a profile file and the `training:` section give as plain values.
SCHEDULES = ("first_task", "later_tasks", "later_default", "phases")
ScheduleOverride = derived_model(Schedule, "ScheduleOverride", "Changes to some fields of a schedule.")
LaterKey = choice(lambda: ["all", *METHODS.names()], lambda name: f"{METHODS.unknown_message(name)} or 'all'")


def _known_phases(phases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for method, by_phase in phases.items():
        known = METHODS.get(method).extra_phases
        unknown = sorted(set(by_phase) - set(known))
        if unknown:
            raise ValueError(f"{method} has no phase {', '.join(unknown)}; its phases after the main one: "
                             f"{', '.join(known) or 'none'}")
    return phases


PhaseChanges = Annotated[dict[MethodName, dict[str, ScheduleOverride]], AfterValidator(_known_phases)]

ProfileFile = derived_model(
    Profile, "ProfileFile", "A profile as written in benchmark/config/profiles/<name>.yaml.",
    skip=("name", *SCHEDULES, "method_options"), optional=False,
    description=(str, Field("", description="what the profile is for")),
    first_task=(Schedule, Field(description="schedule of the first task, shared by every method")),
    later_default=(Schedule, Field(description="later-task schedule of every method not in later_tasks")),
    later_tasks=(dict[MethodName, ScheduleOverride], Field(
        default_factory=dict, description="per method: changes to later_default")),
    phases=(PhaseChanges, Field(default_factory=dict, description=(
        "per method and phase (BiC's bias_correction, FOSTER's compression, PODNet's finetune): changes to "
        "the method's later-task schedule"))),
    method_options=(MethodOptions, Field(default_factory=dict, description="default options per method")))

TrainingOverride = derived_model(
    Profile, "Training", "The experiment's changes to its profile.", skip=("name", *SCHEDULES, "method_options"),
    first_task=(ScheduleOverride, Field(None, description="changes to the first task's schedule",
                                        json_schema_extra=drop_default)),
    later_tasks=(dict[LaterKey, ScheduleOverride], Field(
        None, description="changes to later-task schedules: 'all' (every method), then <method>",
        json_schema_extra=drop_default)),
    phases=(PhaseChanges, Field(None, description="changes to a method's phase schedules: <method>.<phase>",
                                json_schema_extra=drop_default)))


_NO_CHANGE = ScheduleOverride()


def profile_names() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))


def load_profile_file(name: str) -> Any:
    """The validated ProfileFile of `name`; ConfigError (every problem, located) when it is not valid."""
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; known: {', '.join(profile_names())}")
    try:
        return ProfileFile.model_validate(load_yaml_file(path) or {})
    except ValidationError as error:
        raise ConfigError.listing(str(path), problems_of(error, ProfileFile)) from None


def get_profile(name: str) -> Profile:
    return resolve_profile(name)


def resolve_profile(name: str, training: Any = None) -> Profile:
    """Profile `name` with the experiment's `training:` section (a TrainingOverride) applied.
    Later-task schedules: default, then the profile's change for the method, then the
    experiment's `all`, then the experiment's change for the method."""
    spec = load_profile_file(name)
    changes = training.model_dump(exclude_unset=True) if training is not None else {}
    later_changes = changes.pop("later_tasks", {})
    phase_changes = changes.pop("phases", {})
    profile_later = {method: change.model_dump(exclude_unset=True) for method, change in spec.later_tasks.items()}

    def later(method: str | None) -> Schedule:
        schedule = replace(spec.later_default, **profile_later.get(method, {}))
        schedule = replace(schedule, **later_changes.get("all", {}))
        return replace(schedule, **later_changes.get(method, {}))

    plain = [field for field in ProfileFile.model_fields if field not in (*SCHEDULES, "description")]
    values = {field: getattr(spec, field) for field in plain}
    values.update({k: v for k, v in changes.items() if k != "first_task"})
    def phase(method: str, name: str) -> Schedule:
        """The method's later-task schedule, then the profile's change for the phase, then the experiment's."""
        schedule = replace(later(method), **spec.phases.get(method, {}).get(name, _NO_CHANGE).model_dump(
            exclude_unset=True))
        return replace(schedule, **phase_changes.get(method, {}).get(name, {}))

    phases = {method: {name: phase(method, name) for name in METHODS.get(method).extra_phases}
              for method in METHODS.names() if METHODS.get(method).extra_phases}
    return Profile(name=name, first_task=replace(spec.first_task, **changes.get("first_task", {})),
                   later_tasks={method: later(method) for method in METHODS.names()},
                   later_default=later(None), phases=phases, **values)


def milestone_notes(profile: Profile, methods: tuple[str, ...]) -> list[str]:
    """Warnings for milestones that never take effect (>= the schedule's epochs), one per schedule."""
    users: dict[Schedule, list[str]] = {}
    for method in methods:
        users.setdefault(profile.schedule(method, 1), []).append(method)
    named = [("training.first_task", profile.first_task)]
    named += [(f"training.later_tasks ({', '.join(names)})", schedule) for schedule, names in users.items()]
    notes = []
    for where, schedule in named:
        late = [m for m in schedule.milestones if m >= schedule.epochs]
        if late:
            notes.append(f"{where}: milestone(s) {late} are not below epochs={schedule.epochs} and never take "
                         "effect; lower them, or set milestones: [] for a constant lr")
    return notes
