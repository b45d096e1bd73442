"""Experiment files: YAML (safe-loaded), optionally including a base file, checked key by key.

Every problem found is collected and reported together in one ConfigError, so a user fixes
a file in one pass. See README.md ("The experiment file") for every key.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from methods import METHODS
from methods.backbones import BACKBONES, BENCHMARK_BACKBONE, FAMILIES, input_kind

from .data import DATASETS, Scenario
from .profiles import PROFILES, Profile, apply_overrides, get_profile


class ConfigError(ValueError):
    """An experiment file with problems; the message lists every one."""


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # safe as a folder name under results/
SELECTIONS = ("herding", "random")

# key -> (required, description shown in errors)
KEYS: dict[str, tuple[bool, str]] = {
    "name": (True, "experiment name, letters/digits/_.- (its results go to results/<name>/)"),
    "include": (False, "a base experiment file, relative to this one; its keys are defaults"),
    "dataset": (True, f"one of {', '.join(DATASETS)}"),
    "scenario": (True, "B{base}Inc{increment}, e.g. B0Inc10 or B50Inc5, or a list of them"),
    "methods": (True, f"a list of {', '.join(METHODS.names())}"),
    "budgets": (True, "paper, fair, or a list of budgets in MB"),
    "seeds": (True, "a list of class-order seeds, e.g. [1993]"),
    "profile": (True, f"training preset: {', '.join(PROFILES)}"),
    "policy": (False, "memory counting policy: paper (default) or strict"),
    "network_seed": (False, "torch seed of network initialization and batches (default 1)"),
    "family": (False, "curve backbones, smallest first (default by data set)"),
    "benchmark_backbone": (False, "backbone of single-network methods (default by data set)"),
    "anchor_exemplars": (False, "exemplars at each curve point's definition (default 2000)"),
    "min_exemplars": (False, "fewest exemplars a method may keep (default: one per class)"),
    "exemplar_selection": (False, "herding (default) or random"),
    "method_options": (False, "per-method options, e.g. {memo: {train_base: false}}"),
    "training": (False, "overrides of the profile's fields"),
}


@dataclass(frozen=True)
class Experiment:
    name: str
    dataset: str
    scenarios: tuple[str, ...]
    methods: tuple[str, ...]
    budgets: str | tuple[float, ...]
    seeds: tuple[int, ...]
    profile: Profile
    policy: str = "paper"
    network_seed: int = 1
    family: tuple[str, ...] = ()
    benchmark_backbone: str = ""
    anchor_exemplars: int = 2000
    min_exemplars: int | None = None
    exemplar_selection: str = "herding"
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Safe-load a file, merging in its `include` chain (the including file wins)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: include cycle through {[str(p) for p in seen]}")
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    if "include" in raw:
        base = read_yaml(path.parent / str(raw.pop("include")), seen + (path,))
        raw = {**base, **raw}
    return raw


def load_experiment(path: str | Path) -> Experiment:
    return parse_experiment(read_yaml(Path(path)), source=str(path))


def parse_experiment(raw: dict[str, Any], source: str = "<experiment>") -> Experiment:
    problems: list[str] = []
    for key in raw:
        if key not in KEYS:
            problems.append(f"unknown key {key!r}; allowed keys: {', '.join(KEYS)}")
    for key, (required, description) in KEYS.items():
        if required and key not in raw:
            problems.append(f"missing key {key!r}: {description}")
    values = {k: v for k, v in raw.items() if k in KEYS}
    checked: dict[str, Any] = {}
    for key, check in CHECKS.items():
        if key in values:
            try:
                checked[key] = check(values[key])
            except (ValueError, KeyError, TypeError) as error:
                problems.append(f"{key}: {_text(error)}")
    if not problems:
        problems += _check_together(checked)
    if problems:
        raise ConfigError(f"{source} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return _build(checked)


def _text(error: Exception) -> str:
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


# -- one check per key ------------------------------------------------------------------------
def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a safe folder name: use letters, digits and _ . - "
                         "(no slashes, not starting with a dot)")
    return value


def _choice(allowed: tuple[str, ...] | list[str]):
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"{value!r} is not allowed; use one of {', '.join(allowed)}")
        return value
    return check


def _scenarios(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(Scenario.parse(str(item)).name for item in items)


def _methods(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of {', '.join(METHODS.names())}")
    bad = [m for m in value if m not in METHODS]
    if bad:
        raise ValueError("; ".join(METHODS.unknown_message(m) for m in bad))
    if len(set(value)) != len(value):
        raise ValueError(f"lists a method twice: {value}")
    return tuple(value)


def _budgets(value: Any) -> str | tuple[float, ...]:
    if value in ("paper", "fair"):
        return value
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and v > 0 for v in value):
        if len(set(value)) != len(value):
            raise ValueError(f"lists a budget twice: {value}")
        return tuple(float(v) for v in value)
    raise ValueError(f"{value!r}: use paper, fair, or a non-empty list of positive budgets in MB, e.g. [8, 12, 16]")


def _int_list(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{value!r}: use a non-empty list of integers, e.g. [1993]")
    if len(set(value)) != len(value):
        raise ValueError(f"lists a seed twice: {value}")
    return tuple(value)


def _non_negative_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r}: use a whole number >= 0")
    return value


def _optional_int(value: Any) -> int | None:
    return None if value is None else _non_negative_int(value)


def _backbones(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) < 1:
        raise ValueError("use a list of backbone names, smallest first")
    for name in value:
        BACKBONES.get(name)
    return tuple(value)


def _backbone(value: Any) -> str:
    BACKBONES.get(value)
    return value


def _method_options(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise ValueError("use a mapping of method name to its options")
    for method, options in value.items():
        cls = METHODS.get(method)
        unknown = set(options or {}) - set(cls.default_options)
        if unknown:
            raise ValueError(f"{method}: unknown option(s) {sorted(unknown)}; known: {sorted(cls.default_options) or 'none'}")
    return {m: dict(o or {}) for m, o in value.items()}


def _training(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("use a mapping of profile fields to override")
    return value


CHECKS = {
    "name": _name,
    "dataset": _choice(list(DATASETS)),
    "scenario": _scenarios,
    "methods": _methods,
    "budgets": _budgets,
    "seeds": _int_list,
    "profile": _choice(list(PROFILES)),
    "policy": _choice(["paper", "strict"]),
    "network_seed": _non_negative_int,
    "family": _backbones,
    "benchmark_backbone": _backbone,
    "anchor_exemplars": _non_negative_int,
    "min_exemplars": _optional_int,
    "exemplar_selection": _choice(list(SELECTIONS)),
    "method_options": _method_options,
    "training": _training,
}


def input_kind_of(dataset: str) -> str:
    """Which backbones fit a data set's images: "imagenet" (224 px) or "cifar" (32 px)."""
    return "imagenet" if DATASETS[dataset].image_shape[0] >= 224 else "cifar"


def _check_together(checked: dict[str, Any]) -> list[str]:
    """Checks that need several keys: scenarios against the data set, backbones against its images."""
    problems = []
    spec = DATASETS[checked["dataset"]]
    for name in checked["scenario"]:
        try:
            Scenario.parse(name).task_sizes(spec.num_classes)
        except ValueError as error:
            problems.append(f"scenario: {error}")
    kind = input_kind_of(checked["dataset"])
    family = checked.get("family", FAMILIES[kind])
    bench = checked.get("benchmark_backbone", BENCHMARK_BACKBONE[kind])
    for name in {*family, bench}:
        if input_kind(name) != kind:
            problems.append(f"backbone {name!r} is built for {input_kind(name)} images, "
                            f"but {checked['dataset']} has {kind} images")
    try:
        apply_overrides(get_profile(checked["profile"]), checked.get("training", {}))
    except ValueError as error:
        problems.append(str(error))
    return problems


def _build(checked: dict[str, Any]) -> Experiment:
    kind = input_kind_of(checked["dataset"])
    return Experiment(
        name=checked["name"], dataset=checked["dataset"], scenarios=checked["scenario"],
        methods=checked["methods"], budgets=checked["budgets"], seeds=checked["seeds"],
        profile=apply_overrides(get_profile(checked["profile"]), checked.get("training", {})),
        policy=checked.get("policy", "paper"), network_seed=checked.get("network_seed", 1),
        family=checked.get("family", tuple(FAMILIES[kind])),
        benchmark_backbone=checked.get("benchmark_backbone", BENCHMARK_BACKBONE[kind]),
        anchor_exemplars=checked.get("anchor_exemplars", 2000), min_exemplars=checked.get("min_exemplars"),
        exemplar_selection=checked.get("exemplar_selection", "herding"),
        method_options=checked.get("method_options", {}),
    )
