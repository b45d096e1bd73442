"""Method options are typed where each method declares them (Method.options_type, a dataclass in
methods/<name>.py), and the experiment schema checks them with the rest of the file: a wrong type
is a located error before anything runs, never a TypeError or ValueError at training."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Literal

import pytest

import run_all
from benchmark.config.experiment import ConfigError, parse_experiment
from conftest import tiny_experiment, write_experiment
from methods import METHODS
from methods.base import Method

BAD = {
    "icarl temperature as a string": ({"icarl": {"temperature": "2"}},
                                      "method_options.icarl.temperature: Input should be a valid number, got '2' (str)"),
    "wa weighting unknown": ({"wa": {"weighting": "bogus"}},
                             "method_options.wa.weighting: Input should be 'old_share' or 'fixed', got 'bogus' (str)"),
    "memo train_base not a bool": ({"memo": {"train_base": "maybe"}}, "method_options.memo.train_base: Input should "
                                   "be a valid boolean or 'auto', got 'maybe' (str)"),
    "memo train_base 1": ({"memo": {"train_base": 1}},
                          "method_options.memo.train_base: Input should be a valid boolean or 'auto', got 1 (int)"),
    "der aux_weight a bool": ({"der": {"aux_weight": True}},
                              "method_options.der.aux_weight: Input should be a valid number, got True (bool)"),
    "wa inherits icarl's temperature": ({"wa": {"temperature": None}},
                                        "method_options.wa.temperature: Input should be a valid number, got None"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_wrong_type_is_a_located_error_of_run_and_nothing_runs(case, tmp_path, cifar_root):
    options, expected = BAD[case]
    experiment = write_experiment(tmp_path, tiny_experiment(methods=["replay"], method_options=options))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_all.main(["run", str(experiment), "--results", str(tmp_path / "results"),
                             "--data-root", str(cifar_root), "--gpus", "cpu"])
    assert code == 2 and "error: nothing was run" in err.getvalue()
    assert expected in err.getvalue()
    assert "Traceback" not in err.getvalue() and not (tmp_path / "results").exists()


def test_right_types_pass_and_are_kept_as_written():
    options = {"icarl": {"temperature": 3}, "wa": {"weighting": "fixed", "kd_weight": 0.5},
               "memo": {"train_base": False}, "der": {"aux_weight": 1.0}}
    experiment = parse_experiment(tiny_experiment(methods=["replay"], method_options=options))
    assert experiment.method_options == options
    assert type(experiment.method_options["icarl"]["temperature"]) is int  # an int is a number; run ids unchanged


def test_the_declared_types_are_the_defaults_source():
    assert METHODS.get("wa").default_options == {"temperature": 2.0, "weighting": "old_share", "kd_weight": 2.0}
    assert METHODS.get("memo").default_options == {"aux_weight": 1.0, "train_base": "auto"}
    assert METHODS.get("replay").default_options == {}


@dataclass(frozen=True)
class ProbeOptions:
    mode: Literal["a", "b"] = "a"
    weight: float = 1.0


@pytest.fixture
def probes():
    """Two methods registered after import: one with typed options, one with only default_options."""
    class Typed(Method):
        name = "typed_probe"
        options_type = ProbeOptions

    class Untyped(Method):
        name = "untyped_probe"
        default_options = {"weight": 1.0}

    for cls in (Typed, Untyped):
        METHODS.add(cls.name, cls)
    yield Typed, Untyped
    for cls in (Typed, Untyped):
        METHODS._entries.pop(cls.name)  # the registry has no public removal: tests only


def test_a_method_registered_later_is_checked_by_its_declaration(probes):
    typed, untyped = probes
    assert typed.default_options == {"mode": "a", "weight": 1.0}
    with pytest.raises(ConfigError) as error:
        parse_experiment(tiny_experiment(method_options={"typed_probe": {"mode": "c", "weight": "1"}}))
    assert "method_options.typed_probe.mode: Input should be 'a' or 'b', got 'c' (str)" in str(error.value)
    assert "method_options.typed_probe.weight: Input should be a valid number, got '1' (str)" in str(error.value)
    # Only default_options: the names are checked, any value is taken, none is required.
    assert parse_experiment(tiny_experiment(method_options={"untyped_probe": {}})).name == "tiny"
    experiment = parse_experiment(tiny_experiment(method_options={"untyped_probe": {"weight": "heavy"}}))
    assert experiment.method_options["untyped_probe"] == {"weight": "heavy"}
    with pytest.raises(ConfigError, match=r"untyped_probe: unknown option\(s\) \['wieght'\]"):
        parse_experiment(tiny_experiment(method_options={"untyped_probe": {"wieght": 2.0}}))
