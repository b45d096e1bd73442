"""Bad inputs a new user may give, each refused before any training with a message that names the
problem, the place and the fix, and never a Python traceback (issue 11, section 6)."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_experiment, write_experiment

import run_all
from benchmark.launch.devices import worker_problems
from benchmark.config.experiment import ConfigError, load_experiment, parse_experiment


def plan(capsys, path: Path) -> tuple[int, str]:
    """`run_all.py plan PATH`: its exit code and what it printed to stderr."""
    code = run_all.main(["plan", str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as error:
        load_experiment(path)
    return str(error.value)


# -- YAML ----------------------------------------------------------------------------------------
def test_a_file_that_is_not_utf8_names_the_byte_and_its_line(tmp_path, capsys):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\ndataset: cifar100\n")
    code, err = plan(capsys, path)
    assert code == 2
    assert f"{path}: line 1, column 10: byte 0xe9 is not UTF-8 text; save it as UTF-8" in err


def test_an_included_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "base.yaml").write_bytes(b"dataset: cifar100\n# r\xe9sum\xe9\n")
    child = tmp_path / "child.yaml"
    child.write_text("include: base.yaml\nname: child\n")
    assert f"{tmp_path / 'base.yaml'}: line 2, column 4: byte 0xe9 is not UTF-8" in refused(child)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^10 values
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nseeds: *a9\n")
    code, err = plan(capsys, path)
    assert code == 2
    # a4 holds 10^5 strings (plus its lists): the first node past 100,000, on line 5
    assert f"{path}: line 5: expands to more than 100,000 values" in err and "write the values out" in err


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nseeds: &s [1, *s]\n")
    assert "line 2: an alias refers to the node that contains it (a loop)" in refused(path)


def test_deep_nesting_is_refused_with_the_limit(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("name: deep\nseeds: " + "[" * 5000 + "]" * 5000 + "\n")
    code, err = plan(capsys, path)
    assert code == 2 and f"{path}: line 2: nested more than 50 levels deep" in err


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\nseeds: [1993]\ndataset: cifar100\nseeds: [7]\n")
    code, err = plan(capsys, path)
    assert code == 2
    assert f"{path}: line 4: key 'seeds' is given twice (lines 2 and 4); YAML would keep only the last: delete one" in err


def test_a_nested_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text("name: n\ntraining:\n  first_task:\n    epochs: 3\n    epochs: 4\n")
    assert "line 5: key 'epochs' is given twice (lines 4 and 5)" in refused(path)


def test_merge_keys_still_override(tmp_path):
    """YAML's `<<` merge is an explicit override, not a repeat."""
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother: {<<: *b, y: 3}\n")
    from benchmark.config.experiment import read_yaml

    assert read_yaml(path)["other"] == {"x": 1, "y": 3}


# -- names, scenarios, budgets -------------------------------------------------------------------
def test_a_name_too_long_for_a_folder_is_refused(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment(name="x" * 300)))
    code, err = plan(capsys, path)
    assert code == 2
    assert "name: xxxxxxxxxxxxxxxxxxxx... is 300 characters long; a name is a folder name under results/, " \
           "at most 100 characters: shorten it" in err
    parse_experiment(tiny_experiment(name="x" * 100))  # the limit itself is allowed


def test_a_scenario_of_one_task_is_refused(capsys, tmp_path):
    path = write_experiment(tmp_path, tiny_experiment(scenario="B100Inc10"))
    code, err = plan(capsys, path)
    assert code == 2
    assert ("scenario: B100Inc10 on cifar100 (100 classes) is a single task of 100 classes, so nothing is "
            "learned incrementally; leave classes for later tasks (e.g. B50Inc10 or B0Inc10)") in err
    with pytest.raises(ConfigError, match="B0Inc100 on cifar100 .* single task"):
        parse_experiment(tiny_experiment(scenario="B0Inc100"))


def test_an_absurd_budget_is_refused_by_the_schema(tmp_path, capsys):
    """Finetune keeps no exemplars, so only the schema's bound stops 1e30 MB (64-bit overflow in plan)."""
    path = write_experiment(tmp_path, tiny_experiment(methods=["finetune"], budgets=[1.0e30]))
    code, err = plan(capsys, path)
    assert code == 2 and "budgets: [1e+30]: use paper, fair, or a non-empty list of positive, finite budgets " \
                         "in MB of at most 1,000,000" in err
    assert parse_experiment(tiny_experiment(methods=["finetune"], budgets=[1_000_000])).budgets == (1_000_000,)



def test_a_number_that_yaml_reads_as_text_is_explained(tmp_path, capsys):
    path = tmp_path / "text.yaml"
    path.write_text("name: text\ndataset: cifar100\nscenario: B0Inc50\nmethods: [finetune]\nbudgets: [1e30, 8]\n"
                    "seeds: [1993]\nprofile: cpu\n")
    code, err = plan(capsys, path)
    assert code == 2 and ("budgets: ['1e30', 8]: use paper, fair, or a non-empty list of positive, finite budgets in "
                          "MB of at most 1,000,000, e.g. [8, 12, 16]; YAML reads 1e30 as text: write a number with "
                          "a dot, e.g. 1.0e+3") in err

# -- plans that hold more exemplars than the data set has images ---------------------------------
def test_an_anchor_above_the_training_images_is_refused(tmp_path, capsys):
    """cpu profile: 50 training images per class x 100 classes = 5,000 images."""
    path = write_experiment(tmp_path, tiny_experiment() | {"budgets": "paper", "anchor_exemplars": 10_000_000})
    code, err = plan(capsys, path)
    assert code == 2
    assert ("anchor_exemplars: 10,000,000 exemplars, but the scenario has only 5,000 training images to keep; "
            "use at most 5,000") in err


def test_a_budget_past_every_method_s_need_is_refused_with_the_largest_sensible_one(tmp_path, capsys):
    path = write_experiment(tmp_path, tiny_experiment(methods=["replay", "der"], budgets=[0.6, 100_000]))
    code, err = plan(capsys, path)
    assert code == 2
    # der's final model (2 x resnet8_half) is 151,104 bytes: 151,104 + 5,001 x 3,072 - 1 = 15,514,175 bytes
    assert ("budget 100,000.00 MB (100000MB) leaves every method room for more exemplars (34,133,284 or more) "
            "than the scenario's 5,000 training images, so memory limits none of them. The largest sensible "
            "budget is 14.7954 MB (15,514,175 bytes, where 'der' holds exactly the 5,000 images): give budgets "
            "up to that, or use more images per class.") in err
    assert "0.60 MB" not in err  # the sensible point is not named


def test_the_subset_of_images_per_class_bounds_the_plan(tmp_path, capsys):
    raw = tiny_experiment(methods=["icarl"], budgets=[2], training={"images_per_class": 5})
    code, err = plan(capsys, write_experiment(tmp_path, raw))
    assert code == 2 and "than the scenario's 500 training images" in err
    # conv2_half's 41,088 bytes + 500 x 3,072 bytes, and 3,071 more before a 501st exemplar fits
    assert "The largest sensible budget is 1.5069 MB (1,580,159 bytes, where 'icarl' holds exactly" in err
    raw["budgets"] = [1.5069]
    assert run_all.main(["plan", str(write_experiment(tmp_path, raw))]) == 0


def test_a_budget_where_one_method_still_runs_out_of_room_is_kept():
    """DER's bigger model leaves it exactly the 5,000 images, the others more: memory still limits DER."""
    from benchmark.config.grid import expand

    runs = {run.method: run for run in expand(parse_experiment(tiny_experiment(methods=["replay", "der"],
                                                                                budgets=[14.7954])))}
    assert runs["der"].exemplars == 5000 and runs["replay"].exemplars == 5036


def test_run_dry_run_refuses_a_budget_past_the_data(tmp_path, capsys, cifar_root):
    path = write_experiment(tmp_path, tiny_experiment(methods=["icarl"], budgets=[500]))
    code = run_all.main(["run", str(path), "--results", str(tmp_path / "results"), "--data-root", str(cifar_root),
                         "--gpus", "cpu", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "error: nothing was run; fix these first:" in err
    assert "budgets: B0Inc50: budget 500.00 MB (500MB) leaves every method room" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


# -- the command line: results folder, workers, a full disk --------------------------------------
def run_cli(capsys, path: Path, results: Path, data_root: Path, *options: str) -> tuple[int, str]:
    code = run_all.main(["run", str(path), "--results", str(results), "--data-root", str(data_root),
                         "--gpus", "cpu", *options])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


@pytest.mark.parametrize("below, options", [("", ()), ("sub/folder", ("--dry-run",))])
def test_results_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys, cifar_root, below, options):
    results = tmp_path / "results.txt"
    results.write_text("not a folder")
    code, err = run_cli(capsys, write_experiment(tmp_path, tiny_experiment()), results / below, cifar_root,
                        *options)
    assert code == 2 and "error: nothing was run; fix these first:" in err
    assert (f"--results {results / below}: {results} is a file, not a folder; give a folder you can write, "
            "or a path where one can be made (e.g. --results results)") in err
    assert results.read_text() == "not a folder"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc, where no folder can be made")
def test_results_that_cannot_be_created_is_refused(tmp_path, capsys, cifar_root):
    code, err = run_cli(capsys, write_experiment(tmp_path, tiny_experiment()), Path("/proc/cil-results"),
                        cifar_root, "--dry-run")
    assert code == 2 and "--results /proc/cil-results: cannot write in /proc: " in err


# Root writes into a read-only folder anyway: as root (CI), the command runs without the capability
# that lets it (util-linux's setpriv), so the folder's permissions hold.
AS_ORDINARY = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


@pytest.mark.skipif(AS_ORDINARY != [] and shutil.which("setpriv") is None,
                    reason="as root, needs util-linux's setpriv to drop the override of file permissions")
def test_a_read_only_results_folder_is_refused(tmp_path, cifar_root):
    results = tmp_path / "results"
    results.mkdir(mode=0o555)
    done = subprocess.run([*AS_ORDINARY, sys.executable, str(REPO / "run_all.py"), "run",
                           str(write_experiment(tmp_path, tiny_experiment())), "--results", str(results),
                           "--data-root", str(cifar_root), "--dry-run"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"--results {results}: cannot write in {results}: Permission denied" in done.stderr
    assert list(results.iterdir()) == []


def test_more_workers_than_cores_are_refused(tmp_path, capsys, cifar_root):
    cores = os.cpu_count()
    code, err = run_cli(capsys, write_experiment(tmp_path, tiny_experiment()), tmp_path / "results", cifar_root,
                        "--workers", str(cores + 1), "--dry-run")
    assert code == 2
    assert (f"--workers {cores + 1}: this machine has {cores} cores, and each worker needs one (more only take "
            f"turns, each holding its own data set); use at most {cores}") in err
    assert worker_problems(2, 2) == [] and worker_problems(1000, 1) == [
        "--workers 1000: this machine has 1 core, and each worker needs one (more only take turns, each holding "
        "its own data set); use at most 1"]


def test_a_disk_full_at_the_grid_names_the_file_and_that_the_run_resumes(tmp_path, capsys, cifar_root,
                                                                         monkeypatch):
    """The disk is faked (its fsync reports ENOSPC, as delayed allocation does); the writer is the real one."""
    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    results = tmp_path / "results"
    code, err = run_cli(capsys, write_experiment(tmp_path, tiny_experiment()), results, cifar_root)
    assert code == 1
    assert f"error: no space left to write {results / 'tiny' / 'grid.json'} (No space left on device; " in err
    assert "then run the same command again; it goes on from what is written." in err
    assert list((results / "tiny").iterdir()) == []  # no temporary file left, nothing ran


@pytest.fixture
def full_disk(tmp_path):
    """A real 64 KB file system, filled up (needs the right to mount a tmpfs)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        with open(mount / "filler", "wb") as filler, contextlib.suppress(OSError):
            filler.write(b"\0" * 128 * 1024)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_names_the_file(tmp_path, capsys, cifar_root, full_disk):
    code, err = run_cli(capsys, write_experiment(tmp_path, tiny_experiment()), full_disk, cifar_root)
    assert code == 1
    assert f"error: no space left to write {full_disk / 'tiny' / 'grid.json'} (No space left on device; " \
           "0.0 MB free on its disk)" in err
