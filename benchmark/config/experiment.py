"""Experiment files: YAML (safe-loaded), optionally including a base file, validated against one
schema, ExperimentFile, where each key is declared once with its type, default and help.

Every problem found is reported together in one ConfigError, each with its location
(`training.first_task.milestones: ...`), so a user fixes a file in one pass. The schema is
exported for editors: `python -m benchmark.config --schema > benchmark/config/schema.json`.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Gt, Le
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, Strict, ValidationError, WrapValidator

from budgets.accounting import DEFAULT_POLICY, POLICIES
from budgets.planner import ANCHOR_EXEMPLARS, BUDGET_MODES
from methods import METHODS
from methods.backbones import BACKBONES, BENCHMARK_BACKBONE, FAMILIES, input_kind
from methods.exemplar_formats import ExemplarFormat
from methods.exemplars import SELECTIONS
from methods.storage import STORAGES, check_storage

from benchmark.data import DATASETS, Scenario
from benchmark.config.profile import Profile, TrainingOverride, milestone_notes, profile_names, resolve_profile
from benchmark.config.slurm_options import SlurmOptions
from benchmark.config.yaml_files import load_yaml_file
from benchmark.config.validation import (STRICT_MODEL, ConfigError, ConfigWarning, MethodName, MethodOptions, NonNegativeInt,
                         Seed, choice, finite, problems_of, unique_tuple)

__all__ = ["ConfigError", "ConfigWarning", "Experiment", "ExperimentFile", "load_experiment", "parse_experiment",
           "experiment_schema", "input_kind_of", "read_yaml"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # safe as a folder name under results/
# Defaults of keys that the engine takes too (EngineSettings reads them from here).
NETWORK_SEED = 1
EXEMPLAR_SELECTION = "herding"
EXEMPLAR_FORMAT = "raw"     # uint8 pixels, as the paper stores and bills them
MODEL_STORAGE = "fp32"      # as the paper stores and bills every model
# The name is a folder name (file systems allow 255 bytes); 100 is plenty, and keeps the paths under
# results/ and SLURM's job names (cil-<name>) readable.
NAME_MAX_CHARS = 100


def _safe_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a safe folder name: use letters, digits and _ . - "
                         "(no slashes, not starting with a dot)")
    if len(value) > NAME_MAX_CHARS:
        raise ValueError(f"{value[:20]}... is {len(value)} characters long; a name is a folder name under "
                         f"results/, at most {NAME_MAX_CHARS} characters: shorten it")
    return value


def _scenario_name(value: str) -> str:
    return Scenario.parse(value).name


def _format_name(value: str) -> str:
    return ExemplarFormat.parse(value).name  # canonical, so that "JPEG:50" and "jpeg:50" are one run


def _storage_name(value: str) -> str:
    return check_storage(value)


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value  # one scenario may be written without a list


def _one_or_list(schema: dict[str, Any]) -> None:
    items = schema.pop("items")
    one = {key: schema.pop(key) for key in ("type", "minItems") if key in schema}
    schema["anyOf"] = [items, {**one, "items": items}]


# A terabyte: more than any data set here holds as exemplars (ImageNet's 1.28 M training images are
# 193 GB); past it a budget is a typo, and its byte count would overflow the tables' 64-bit integers.
MAX_BUDGET_MB = 1_000_000


def _explain_budgets(value: Any, handler: Any) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(f"{value!r}: use {', '.join(BUDGET_MODES)}, or a non-empty list of positive, finite budgets "
                         f"in MB of at most {MAX_BUDGET_MB:,}, e.g. [8, 12, 16]{_number_as_text(value)}") from None


def _number_as_text(value: Any) -> str:
    """A hint for YAML 1.1's trap: 1e3 (no dot) is read as the text '1e3', 1.0e+3 as a number."""
    texts = [item for item in value if isinstance(item, str) and _is_number(item)] if isinstance(value, list) else []
    return f"; YAML reads {', '.join(texts)} as text: write a number with a dot, e.g. 1.0e+3" if texts else ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _distinct_budgets(value: Any) -> Any:
    if isinstance(value, tuple) and len(set(value)) != len(value):
        raise ValueError(f"lists a budget twice: {list(value)}")
    return value


Scenarios = Annotated[unique_tuple(Annotated[str, Strict(), AfterValidator(_scenario_name)]),
                      BeforeValidator(_listed), Field(json_schema_extra=_one_or_list)]
Budgets = Annotated[Literal[tuple(BUDGET_MODES)] | Annotated[tuple[finite(Gt(0), Le(MAX_BUDGET_MB)), ...],
                                                          Field(min_length=1)],
                    WrapValidator(_explain_budgets), AfterValidator(_distinct_budgets)]
BackboneName = choice(BACKBONES.names, BACKBONES.unknown_message)
# The budget axes beyond backbone and exemplar count: one value or a list, each a grid axis.
ExemplarFormats = Annotated[unique_tuple(Annotated[str, Strict(), AfterValidator(_format_name)]),
                            BeforeValidator(_listed), Field(json_schema_extra=_one_or_list)]
ModelStorages = Annotated[unique_tuple(Annotated[str, Strict(), AfterValidator(_storage_name)]),
                          BeforeValidator(_listed), Field(json_schema_extra=_one_or_list)]


class ExperimentFile(BaseModel):
    """An experiment file: what to train (data set, scenarios, methods, budgets, seeds) and how (profile)."""

    model_config = STRICT_MODEL

    name: Annotated[str, Strict(), AfterValidator(_safe_name)] = Field(
        description="experiment name, letters/digits/_.- (its results go to results/<name>/)")
    include: Annotated[str, Strict()] | None = Field(
        None, description="a base experiment file, relative to this one; its keys are defaults")
    dataset: choice(lambda: list(DATASETS)) = Field(description="the data set")
    scenario: Scenarios = Field(description="B{base}Inc{increment}, e.g. B0Inc10 or B50Inc5, or a list of them")
    methods: unique_tuple(MethodName) = Field(description="the methods to compare (registered names)")
    budgets: Budgets = Field(description="paper (the performance-memory curve), fair (one aligned budget), "
                                         "or a list of budgets in MB (2^20 bytes)")
    seeds: unique_tuple(Seed) = Field(description="class-order seeds in [0, 2^32), e.g. [1993]")
    profile: choice(profile_names) = Field(description="training preset (benchmark/config/profiles/<name>.yaml)")
    policy: choice(lambda: POLICIES) = Field(DEFAULT_POLICY, description="memory counting policy")
    network_seed: Seed = Field(NETWORK_SEED, description="torch seed of network initialization and batches, in [0, 2^32)")
    family: unique_tuple(BackboneName) | None = Field(
        None, description="curve backbones, smallest first; null: the data set's default family")
    benchmark_backbone: BackboneName | None = Field(
        None, description="backbone of single-network methods; null: the data set's default")
    anchor_exemplars: NonNegativeInt = Field(ANCHOR_EXEMPLARS, description="exemplars at each curve point's definition")
    min_exemplars: NonNegativeInt | None = Field(
        None, description="fewest exemplars a method may keep; null: one per class")
    exemplar_selection: choice(lambda: SELECTIONS) = Field(EXEMPLAR_SELECTION, description="how exemplars are chosen")
    exemplar_format: ExemplarFormats = Field(
        (EXEMPLAR_FORMAT,), description="how exemplars are stored, or a list (a grid axis): raw, jpeg:<quality>, "
                                        "jpeg:<quality>:shared (JPEG tables billed once), downsample:<factor>, "
                                        "or downsample:<factor>+jpeg:<quality>")
    model_storage: ModelStorages = Field(
        (MODEL_STORAGE,), description=f"dtype of the blocks a method freezes (DER's old backbones, MEMO's old "
                                      f"blocks, a teacher the strict policy bills), or a list (a grid axis): "
                                      f"{', '.join(STORAGES)}")
    method_options: MethodOptions = Field(
        default_factory=dict, description="per-method options over the profile's, e.g. {memo: {train_base: false}}")
    training: TrainingOverride = Field(
        default_factory=TrainingOverride, description="changes to the profile's fields")
    slurm: SlurmOptions = Field(default_factory=SlurmOptions, description="resources of each SLURM job with "
                                "run --backend slurm; the command line's --slurm-* options win")


@dataclass(frozen=True)
class Experiment:
    """A resolved experiment file (what the grid expands), every key given: the keys and their
    defaults are declared once, in ExperimentFile."""

    name: str
    dataset: str
    scenarios: tuple[str, ...]
    methods: tuple[str, ...]
    budgets: str | tuple[float, ...]
    seeds: tuple[int, ...]
    profile: Profile
    policy: str
    network_seed: int
    family: tuple[str, ...]
    benchmark_backbone: str
    anchor_exemplars: int
    min_exemplars: int | None
    exemplar_selection: str
    exemplar_format: tuple[str, ...] = (EXEMPLAR_FORMAT,)  # canonical names (ExemplarFormat.name)
    model_storage: tuple[str, ...] = (MODEL_STORAGE,)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # profile's, then the file's
    slurm: SlurmOptions = field(default_factory=SlurmOptions)   # --backend slurm's resources; no run's identity

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Safe-load a file (BoundedLoader), merging in its `include` chain (the including file wins)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: include cycle through {[str(p) for p in seen]}")
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist")
    raw = load_yaml_file(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    if "include" in raw:
        include = raw.pop("include")
        if not isinstance(include, str):
            raise ConfigError(f"{path}: include: {include!r} is not a file name; use a path relative to this file")
        raw = {**read_yaml(path.parent / include, seen + (path,)), **raw}
    return raw


def load_experiment(path: str | Path) -> Experiment:
    return parse_experiment(read_yaml(Path(path)), source=str(path))


def parse_experiment(raw: dict[str, Any], source: str = "<experiment>") -> Experiment:
    """Validate `raw` (an experiment file's keys, includes merged); ConfigError lists every problem.
    Settings that are valid but likely mistaken (a milestone past the epochs) give a ConfigWarning."""
    if "include" in raw:
        raise ConfigError.listing(source, ["include: only a file can include another; use load_experiment"])
    try:
        spec = ExperimentFile.model_validate(raw)
    except ValidationError as error:
        raise ConfigError.listing(source, problems_of(error, ExperimentFile)) from None
    problems = _check_together(spec)
    try:
        profile = resolve_profile(spec.profile, spec.training)
    except ConfigError as error:  # a broken profile file: its own located problems
        problems.append(str(error))
    if problems:
        raise ConfigError.listing(source, problems)
    experiment = _build(spec, profile)
    for note in milestone_notes(experiment.profile, experiment.methods):
        warnings.warn(f"{source}: {note}", ConfigWarning, stacklevel=2)
    return experiment


def input_kind_of(dataset: str) -> str:
    """Which backbones fit a data set's images: "imagenet" (224 px) or "cifar" (32 px)."""
    return "imagenet" if DATASETS[dataset].image_shape[0] >= 224 else "cifar"


def _check_together(spec: ExperimentFile) -> list[str]:
    """Checks that need several keys: scenarios against the data set, backbones against its images."""
    problems = []
    classes = DATASETS[spec.dataset].num_classes
    for name in spec.scenario:
        try:
            sizes = Scenario.parse(name).task_sizes(classes)
        except ValueError as error:
            problems.append(f"scenario: {error}")
            continue
        if len(sizes) == 1:
            problems.append(f"scenario: {name} on {spec.dataset} ({classes} classes) is a single task of {classes} "
                            "classes, so nothing is learned incrementally; leave classes for later tasks "
                            f"(e.g. B{classes // 2}Inc{classes // 10 or 1} or B0Inc{classes // 10 or 1})")
    for text in spec.exemplar_format:  # a downsampling factor must divide this data set's images
        try:
            ExemplarFormat.parse(text).fixed_image_bytes(DATASETS[spec.dataset].image_shape)
        except ValueError as error:
            problems.append(f"exemplar_format: {error} ({spec.dataset})")
    kind = input_kind_of(spec.dataset)
    for name in sorted({*(spec.family or FAMILIES[kind]), spec.benchmark_backbone or BENCHMARK_BACKBONE[kind]}):
        if input_kind(name) != kind:
            problems.append(f"backbone {name!r} is built for {input_kind(name)} images, "
                            f"but {spec.dataset} has {kind} images")
    return problems


def _build(spec: ExperimentFile, profile: Profile) -> Experiment:
    kind = input_kind_of(spec.dataset)
    shared = {f.name for f in fields(Experiment)} & set(ExperimentFile.model_fields)
    values = {name: getattr(spec, name) for name in shared}
    values.update(scenarios=spec.scenario, profile=profile, family=spec.family or tuple(FAMILIES[kind]),
                  benchmark_backbone=spec.benchmark_backbone or BENCHMARK_BACKBONE[kind],
                  method_options=_method_options(spec, profile))
    return Experiment(**values)


def _method_options(spec: ExperimentFile, profile: Profile) -> dict[str, dict[str, Any]]:
    """The profile's options for each method, overridden by the experiment's (its own win)."""
    merged = {}
    for method in dict.fromkeys((*spec.methods, *spec.method_options)):
        options = {**profile.method_options.get(method, {}), **spec.method_options.get(method, {})}
        if options:
            merged[method] = options
    return merged


def experiment_schema() -> dict[str, Any]:
    """The JSON schema of an experiment file, for editors (names of methods, backbones, profiles
    and data sets as registered now)."""
    schema = ExperimentFile.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "CIL benchmark experiment",
            **{k: v for k, v in schema.items() if k != "title"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.config", description=__doc__.splitlines()[0])
    parser.add_argument("--schema", action="store_true", help="print the experiment file's JSON schema")
    parser.add_argument("files", nargs="*", help="experiment files to check")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(experiment_schema(), indent=2))
    for path in args.files:
        try:
            load_experiment(path)
            print(f"{path}: ok")
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 2
    return 0

