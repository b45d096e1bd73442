"""Metrics on hand-made numbers, each expected value worked out in a comment."""
from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.records.metrics import (HIGHER_IS_BETTER, accuracy_matrix, accuracy_per_memory,
                               area_under_curve, average_incremental_accuracy, forgetting,
                               last_accuracy)

NAN = float("nan")


def test_average_and_last_accuracy():
    # (80 + 70 + 60 + 50) / 4 = 65; the first task counts.
    assert average_incremental_accuracy([80.0, 70.0, 60.0, 50.0]) == pytest.approx(65.0)
    assert last_accuracy([80.0, 70.0, 60.0, 50.0]) == 50.0
    assert average_incremental_accuracy([42.0]) == 42.0


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, NAN]])
def test_curve_metrics_reject_bad_curves(bad):
    with pytest.raises(ValueError):
        average_incremental_accuracy(bad)
    with pytest.raises(ValueError):
        last_accuracy(bad)


def test_forgetting_hand_made_3x3():
    matrix = np.array([[70.0, NAN, NAN],
                       [75.0, 80.0, NAN],
                       [60.0, 84.0, 88.0]])
    # task 0: best before the last task = max(70, 75) = 75, final 60 -> 15
    # task 1: best before the last task = 80 (row 1 only), final 84 -> -4 (backward transfer)
    # task 2 is the last task: not old. forgetting = (15 + -4) / 2 = 5.5
    # (using the first accuracy instead of the max gives 3.0; letting the last row count as
    #  "best" gives (15 + 0) / 2 = 7.5)
    assert forgetting(matrix) == pytest.approx(5.5)


def test_forgetting_one_task_is_nan():
    assert math.isnan(forgetting(np.array([[91.0]])))


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros(3), np.zeros((0, 0)),
                                 np.array([[50.0, NAN], [NAN, 60.0]])])
def test_forgetting_rejects_bad_matrices(bad):
    with pytest.raises(ValueError):
        forgetting(bad)


def test_accuracy_matrix_from_record_rows():
    matrix = accuracy_matrix([[70.0], [75.0, 80.0], [60.0, 84.0, 88.0]])
    assert matrix.shape == (3, 3)
    assert matrix[2, 1] == 84.0 and math.isnan(matrix[0, 1])
    assert forgetting(matrix) == pytest.approx(5.5)
    with pytest.raises(ValueError):
        accuracy_matrix([[70.0], [75.0]])


def test_auc_flat_curve_protocol_check():
    # docs/protocol.md section 4: flat 27.1 % from 7.6 to 23.5 MB -> 0.271 x 15.9 = 4.3089 (not normalized).
    memory = [7.6, 12.4, 16.0, 19.8, 23.5]
    assert area_under_curve(memory, [27.1] * 5) == pytest.approx(4.3089)


def test_auc_uneven_curve():
    # trapezoids: (20 - 10) x (0.50 + 0.60) / 2 = 5.5 and (40 - 20) x (0.60 + 0.80) / 2 = 14.0
    # -> 19.5. Normalizing by the 30 MB range would give 0.65; percent instead of fraction 1950.
    assert area_under_curve([10.0, 20.0, 40.0], [50.0, 60.0, 80.0]) == pytest.approx(19.5)


def test_auc_sorts_points_by_memory():
    assert area_under_curve([40.0, 10.0, 20.0], [80.0, 50.0, 60.0]) == pytest.approx(19.5)


@pytest.mark.parametrize("memory, accuracy", [
    ([10.0], [50.0]),                     # one point: no area
    ([10.0, 10.0, 20.0], [50, 60, 70]),   # duplicate memory
    ([10.0, 20.0], [50.0]),               # length mismatch
    ([10.0, 20.0], [50.0, NAN]),          # missing accuracy
    ([], []),
])
def test_auc_rejects_bad_input(memory, accuracy):
    with pytest.raises(ValueError):
        area_under_curve(memory, accuracy)


def test_accuracy_per_memory():
    assert accuracy_per_memory(61.0, 8.0) == pytest.approx(7.625)
    for bad in (0.0, -1.0, NAN):
        with pytest.raises(ValueError):
            accuracy_per_memory(61.0, bad)


def test_higher_is_better_directions():
    assert HIGHER_IS_BETTER["forgetting"] is False
    for name in ("average_accuracy", "last_accuracy", "auc_average", "auc_last", "apm_start",
                 "apm_end"):
        assert HIGHER_IS_BETTER[name] is True


def test_mb_has_one_definition():
    # The report's MB conversions use the memory accounting's MB; metrics defines none of its own.
    import benchmark.records.metrics as metrics
    import benchmark.report.tables as tables
    from budgets.accounting import MB

    assert MB == 2**20 and not hasattr(metrics, "MB") and tables.MB is MB
