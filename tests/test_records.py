"""One judge of a run record (benchmark.records.schema) for `run` and `report`: a damaged record
is run again by `run_all.py run` (which says so) and skipped by the report with a warning that
names the file, never skipped by the one as done and dropped by the other.

The grid runs with the fake runner of tests/dispatch_fakes.py (no training); resume, the sweep
and the report are the real ones.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from benchmark.config.experiment import load_experiment
from benchmark.config.grid import expand
from benchmark.launch import sweep
from benchmark.records.schema import judge, record_problem
from benchmark.report.writer import write_report
from dispatch_fakes import fake_runner, read_journal, run_cli, write_experiment

WHOLE = {"run_id": "r", "status": "complete", "cell": {"method": "replay"}, "tasks": [{"task": 0}],
         "summary": {"cnn_average_accuracy": 50.0}, "error": None}

# What is done to a whole record, and the words the judge must find for it.
DAMAGE = {
    "missing cell": (lambda record: record.pop("cell"), "cell: missing"),
    "tasks of the wrong type": (lambda record: record.update(tasks={"0": 1}), "tasks: Input should be a valid list"),
    "complete without tasks and summary": (lambda record: [record.pop("tasks"), record.pop("summary")],
                                           "a complete record needs tasks and summary"),
    "null summary": (lambda record: record.update(summary=None), "a complete record needs summary"),
    "bogus status": (lambda record: record.update(status="finished"),
                     "status: 'finished' is not one of complete, failed"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_the_judge_names_what_is_wrong(damage):
    spoil, words = DAMAGE[damage]
    record = json.loads(json.dumps(WHOLE))
    spoil(record)
    assert words in record_problem(record)


def test_whole_records_pass_and_a_failed_one_needs_its_error(tmp_path):
    assert record_problem(WHOLE) is None
    failed = {**WHOLE, "status": "failed", "summary": None, "error": {"type": "ValueError", "message": "x"}}
    assert record_problem(failed) is None
    assert "a failed record needs error" in record_problem({**failed, "error": None})
    assert record_problem(["r", "complete"]) == "a JSON list, not an object"
    assert judge(tmp_path / "record.json").status == "absent"
    (tmp_path / "record.json").write_text('{"run_id": "r", "sta')
    verdict = judge(tmp_path / "record.json")
    assert verdict.status == "damaged" and verdict.problem.startswith("JSONDecodeError")


def _run(experiment: Path, results: Path, data_root: Path, journal: Path, monkeypatch):
    monkeypatch.setattr(sweep, "default_runner", lambda: fake_runner(journal))
    return run_cli(experiment, results, data_root, "--gpus", "cpu", "--backend", "inline")


def test_a_damaged_record_is_run_again_by_run_and_skipped_by_report_with_a_warning(tmp_path, cifar_root,
                                                                                 monkeypatch):
    experiment = write_experiment(tmp_path)  # 5 runs
    runs = expand(load_experiment(experiment))
    experiment_dir, journal = tmp_path / "results" / "tiny", tmp_path / "journal.txt"
    first = _run(experiment, tmp_path / "results", cifar_root, journal, monkeypatch)
    assert first.code == 0, first.err
    damaged = {}
    for run, (damage, (spoil, words)) in zip(runs, DAMAGE.items()):
        path = experiment_dir / "runs" / run.run_id / "record.json"
        record = json.loads(path.read_text())
        spoil(record)
        path.write_text(json.dumps(record))
        damaged[run.run_id] = (path, words)

    with pytest.warns(UserWarning) as caught:
        write_report(experiment_dir)
    named = [str(warning.message) for warning in caught if "damaged run record" in str(warning.message)]
    assert len(named) == 5
    for path, words in damaged.values():
        [message] = [message for message in named if str(path) in message]
        assert words in message and "`run_all.py run` on its experiment file runs it again" in message

    journal.unlink()
    with warnings.catch_warnings(record=True):  # the report at the end of the run: all whole again
        second = _run(experiment, tmp_path / "results", cifar_root, journal, monkeypatch)
    assert second.code == 0, second.err
    assert "5 runs: 0 complete (skipped), 0 failed (skipped), 5 to run" in second.out
    for run_id, (path, words) in damaged.items():
        assert f"damaged record {path} (" in second.out and f"): run {run_id} runs again" in second.out
    assert sorted(entry["run_id"] for entry in read_journal(journal) if entry["job"] == "run") == sorted(damaged)
    assert all(judge(path).status == "complete" for path, _ in damaged.values())

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no damaged record is left to warn about
        write_report(experiment_dir)
    third = _run(experiment, tmp_path / "results", cifar_root, journal, monkeypatch)
    assert "5 runs: 5 complete (skipped), 0 failed (skipped), 0 to run" in third.out
