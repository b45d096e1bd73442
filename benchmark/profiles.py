"""Training presets ("profiles"): the schedules of every task, resolved into typed dataclasses.

`paper` holds the reference defaults of PROTOCOL.md section 5. `cpu` is the reduced protocol
that `make bench` runs on a 2-core machine (README.md says how it differs). An experiment file
may override any field under `training:`; unknown keys are errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class Schedule:
    """SGD with step decay, as every reference run uses."""

    epochs: int
    milestones: tuple[int, ...]
    weight_decay: float
    lr: float = 0.1
    lr_decay: float = 0.1
    momentum: float = 0.9
    batch_size: int = 128


@dataclass(frozen=True)
class Profile:
    name: str
    first_task: Schedule
    later_tasks: dict[str, Schedule]          # per method
    images_per_class: int | None = None       # train subset: the first N images of every class
    test_images_per_class: int | None = None  # test subset, likewise
    augment: bool = True                      # pad-4 crop, flip, brightness jitter
    eval_batch_size: int = 1000
    herding_batch_size: int = 1000
    precision: str = "fp32"                   # fp32, or bf16 autocast (CUDA only)

    def schedule(self, method: str, task: int) -> Schedule:
        return self.first_task if task == 0 else self.later_tasks[method]


def _paper() -> Profile:
    later = Schedule(170, (80, 120, 150), 2e-4)
    return Profile(
        name="paper",
        first_task=Schedule(200, (60, 120, 170), 5e-4),
        later_tasks={
            "finetune": Schedule(80, (40, 70), 2e-4),
            "replay": Schedule(70, (30, 50), 2e-4),
            "icarl": Schedule(170, (80, 120), 2e-4),
            "wa": Schedule(170, (60, 100, 140), 2e-4),
            "der": later,
            "memo": later,
            # Joint: the reference gives no schedule; it takes the first task's, applied to all seen data.
            "joint": Schedule(200, (60, 120, 170), 5e-4),
        },
    )


def _cpu() -> Profile:
    """The paper's schedule shape scaled to minutes on 2 cores. Later tasks use small batches:
    what makes old classes fade (and weight aligning matter) is the number of SGD steps on the new
    data, and batches of 32 give a few hundred steps per task in a few epochs."""
    later = Schedule(6, (5,), 2e-4, batch_size=32)
    return Profile(
        name="cpu",
        first_task=Schedule(20, (14, 18), 5e-4, batch_size=64),  # shared by every method: worth the epochs
        later_tasks={m: later for m in ("finetune", "replay", "icarl", "wa", "der", "memo", "joint")},
        images_per_class=50,
        test_images_per_class=40,
    )


PROFILES = {"paper": _paper, "cpu": _cpu}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]()


def _schedule_with(base: Schedule, overrides: dict[str, Any], where: str) -> Schedule:
    known = {f.name for f in fields(Schedule)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    if "milestones" in overrides:
        overrides = {**overrides, "milestones": tuple(overrides["milestones"])}
    return replace(base, **overrides)


def apply_overrides(profile: Profile, overrides: dict[str, Any]) -> Profile:
    """The profile with the experiment's `training:` section applied (every key checked)."""
    known = {f.name for f in fields(Profile)} - {"name"}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"training: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    changes: dict[str, Any] = {k: v for k, v in overrides.items() if k not in ("first_task", "later_tasks")}
    if "first_task" in overrides:
        changes["first_task"] = _schedule_with(profile.first_task, overrides["first_task"], "training.first_task")
    if "later_tasks" in overrides:
        later = dict(profile.later_tasks)
        for method, values in overrides["later_tasks"].items():
            if method == "all":
                later = {m: _schedule_with(s, values, "training.later_tasks.all") for m, s in later.items()}
            elif method not in later:
                raise ValueError(f"training.later_tasks: unknown method {method!r}; known: {sorted(later)} or 'all'")
            else:
                later[method] = _schedule_with(later[method], values, f"training.later_tasks.{method}")
        changes["later_tasks"] = later
    return replace(profile, **changes)
