"""The experiment file's `slurm:` section and the `--slurm-*` options generated from its fields.

Part of the experiment's schema, so that loading an experiment file never loads an executor; the
SLURM executor (benchmark/launch/slurm.py) reads the resolved options.
"""
from __future__ import annotations

import argparse
import typing
from typing import Annotated, Any

from annotated_types import Ge, Gt
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

_Text = Annotated[str, Strict(), Field(min_length=1)]
_Positive = Annotated[int, Strict(), Gt(0)]


class SlurmOptions(BaseModel):
    """The experiment file's `slurm:` section: the resources of each job (one run per job)."""

    # As benchmark.config.validation.STRICT_MODEL, which is not imported here: it loads the method
    # registry (torch), and run_all.py builds its --slurm-* options from these fields for --help.
    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: _Text | None = Field(None, description="partition (sbatch --partition); null: the cluster's default")
    time_min: _Positive = Field(240, description="time limit of each job in minutes (sbatch --time); a run "
                                                 "it stops resumes from its last task with --retry-failed")
    gpus_per_task: Annotated[int, Strict(), Ge(0)] = Field(
        1, description="GPUs per run (sbatch --gpus-per-task); 0: the runs train on CPUs")
    cpus_per_task: _Positive = Field(4, description="CPU cores per run (sbatch --cpus-per-task), its torch threads")
    mem_gb: Annotated[float, Strict(), Field(allow_inf_nan=False), Gt(0)] | None = Field(
        None, description="memory per run in GB (sbatch --mem); null: the partition's default")
    account: _Text | None = Field(None, description="account charged (sbatch --account)")
    qos: _Text | None = Field(None, description="quality of service (sbatch --qos)")
    constraint: _Text | None = Field(None, description="node features (sbatch --constraint), e.g. a100")
    array_parallelism: _Positive = Field(32, description="most jobs of the grid queued or running at once")


# -- options: the file's section, the command line over it -------------------------------------------
ALIASES = {"time_min": ["--slurm-time"]}   # the name sbatch users know


def option_name(field: str) -> str:
    return "--slurm-" + field.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --slurm-<key> option per SlurmOptions field (default None: the file's value, or the field's)."""
    group = parser.add_argument_group("SLURM (with --backend slurm; each overrides the experiment file's slurm: key)")
    for name, info in SlurmOptions.model_fields.items():
        kind = _scalar(info.annotation)
        group.add_argument(option_name(name), *ALIASES.get(name, []), dest=f"slurm_{name}", type=kind,
                           metavar=name.upper(), help=info.description + (
                               f" (default {info.default})" if info.default is not None else ""))


def _scalar(annotation: Any) -> Any:
    """int, float or str, inside an annotation such as Annotated[int, ...] | None."""
    if annotation in (int, float, str):
        return annotation
    return next((found for arg in typing.get_args(annotation) if (found := _scalar(arg))), None)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The --slurm-* options given on the command line, by field name."""
    values = {name: getattr(args, f"slurm_{name}", None) for name in SlurmOptions.model_fields}
    return {name: value for name, value in values.items() if value is not None}


def resolve(section: SlurmOptions, args: argparse.Namespace) -> SlurmOptions:
    """The file's section with the command line's options over it; ValueError naming each bad option."""
    try:
        return SlurmOptions.model_validate({**section.model_dump(exclude_unset=True), **given_options(args)})
    except ValidationError as error:
        raise ValueError("\n".join(f"{option_name(str(item['loc'][0]))} {item['input']}: {item['msg']}"
                                   for item in error.errors())) from None
