"""The experiment file's JSON schema (for editors): committed, current, and true to the validator."""
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from benchmark.config.experiment import ExperimentFile, experiment_schema, read_yaml
from benchmark.config.profile import Profile, ProfileFile, Schedule, ScheduleOverride, TrainingOverride, get_profile
from conftest import EXPERIMENT_DIR, PROFILE_DIR, SHIPPED_EXPERIMENTS, SHIPPED_PROFILES

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmark" / "config" / "schema.json"
REGENERATE = "python -m benchmark.config --schema > benchmark/config/schema.json"


def test_committed_schema_is_current():
    committed = json.loads(COMMITTED.read_text())
    assert committed == experiment_schema(), f"benchmark/config/schema.json is out of date: run `{REGENERATE}`"


def test_schema_command_prints_it():
    out = subprocess.run([sys.executable, "-m", "benchmark.config", "--schema"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out == COMMITTED.read_text()


@pytest.mark.parametrize("model", [ExperimentFile, TrainingOverride, ScheduleOverride, ProfileFile],
                         ids=lambda m: m.__name__)
def test_every_key_has_help(model):
    missing = [name for name, info in model.model_fields.items() if not info.description]
    assert missing == []


@pytest.mark.parametrize("cls", [Schedule, Profile], ids=lambda c: c.__name__)
def test_every_resolved_field_has_help(cls):
    assert [name for name, info in cls.__pydantic_fields__.items() if not info.description] == []


def test_training_section_mirrors_the_profile():
    """One declaration: the `training:` keys are Profile's fields, with the same help."""
    shared = set(TrainingOverride.model_fields) - {"first_task", "later_tasks", "phases"}  # changes to schedules
    assert shared == set(Profile.__pydantic_fields__) - {"name", "first_task", "later_tasks", "later_default",
                                                           "phases", "method_options"}
    for name in shared:
        assert TrainingOverride.model_fields[name].description == Profile.__pydantic_fields__[name].description


def test_the_shipped_files_are_the_known_ones():
    """The parametrized tests below run over these lists: a folder read empty cannot pass them."""
    assert sorted(path.name for path in EXPERIMENT_DIR.glob("*.yaml")) == SHIPPED_EXPERIMENTS
    assert sorted(path.name for path in PROFILE_DIR.glob("*.yaml")) == SHIPPED_PROFILES


@pytest.mark.parametrize("name", SHIPPED_EXPERIMENTS)
def test_shipped_experiments_satisfy_the_schema(name):
    raw = read_yaml(EXPERIMENT_DIR / name)
    assert raw["name"] == name.removesuffix(".yaml")
    jsonschema.Draft202012Validator(experiment_schema()).validate(raw)


@pytest.mark.parametrize("bad", [
    {"seeds": [-1]}, {"seeds": [True]}, {"budgets": []}, {"methods": ["derr"]}, {"colour": 1},
    {"training": {"first_task": {"epochs": 0}}}, {"training": {"later_tasks": {"derr": {}}}},
    {"method_options": {"memo": {"train_bsae": True}}}, {"scenario": []},
])
def test_schema_rejects_what_the_validator_rejects(bad):
    good = {"name": "t", "dataset": "cifar100", "scenario": "B0Inc10", "methods": ["replay"],
            "budgets": "paper", "seeds": [1993], "profile": "paper"}
    validator = jsonschema.Draft202012Validator(experiment_schema())
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, **bad})


@pytest.mark.parametrize("name", SHIPPED_PROFILES)
def test_profile_files_load(name):
    spec = ProfileFile.model_validate(yaml.safe_load((PROFILE_DIR / name).read_text()))
    assert spec.description
    profile = get_profile(name.removesuffix(".yaml"))
    assert profile.name == name.removesuffix(".yaml") and profile.first_task.epochs >= 1


# -- the package's metadata ---------------------------------------------------------------------
def _pins(lines):
    return {line.split("==")[0].split("[")[0].lower(): line.strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")}


def test_package_pins_are_requirements_pins():
    """pyproject.toml and requirements.txt name the same packages at the same versions."""
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = _pins(project["dependencies"] + [pin for pins in extras.values() for pin in pins])
    assert declared == _pins((REPO / "requirements.txt").read_text().splitlines())
    assert all("==" in pin for pin in declared.values())
    assert extras["slurm"] == ["submitit==1.5.4"] and "pytest" in _pins(extras["dev"])
    assert project["scripts"]["cil-bench"] == "run_all:main" and project["requires-python"] == ">=3.11"
