"""Scenarios: parsing, task sizes, PyCIL's class order and label mapping."""
from __future__ import annotations

import numpy as np
import pytest

from benchmark.data import Scenario, class_order, incremental_labels, split_tasks


@pytest.mark.parametrize("text, base, increment", [
    ("B0Inc10", 0, 10), ("b0inc10", 0, 10), ("B50Inc5", 50, 5), (" b50_INC5 ", 50, 5), ("B10-Inc10", 10, 10),
])
def test_parse(text, base, increment):
    scenario = Scenario.parse(text)
    assert (scenario.base, scenario.increment) == (base, increment)
    assert scenario.name == f"B{base}Inc{increment}"
    assert Scenario.parse(scenario.name) == scenario


@pytest.mark.parametrize("text", ["", "B0", "Inc10", "0-10", "B0Inc", "Bx Inc10", "B-5Inc10", "B0Inc10x"])
def test_parse_errors_show_the_form(text):
    with pytest.raises(ValueError, match=r"expected 'B<base>Inc<increment>', e\.g\. 'B0Inc10'"):
        Scenario.parse(text)


def test_zero_increment_rejected():
    with pytest.raises(ValueError, match="increment >= 1"):
        Scenario.parse("B0Inc0")


@pytest.mark.parametrize("text, sizes", [
    ("B0Inc10", [10] * 10),
    ("B0Inc5", [5] * 20),
    ("B0Inc20", [20] * 5),
    ("B50Inc10", [50] + [10] * 5),
    ("B50Inc5", [50] + [5] * 10),
    ("B100Inc10", [100]),
])
def test_task_sizes_on_100_classes(text, sizes):
    scenario = Scenario.parse(text)
    assert scenario.task_sizes(100) == sizes
    assert scenario.num_tasks(100) == len(sizes)


def test_non_dividing_b0():
    valid = "valid increments: 1, 2, 4, 5, 10, 20, 25, 50, 100$"
    with pytest.raises(ValueError, match=rf"100 classes do not divide into tasks of 30 .*{valid}"):
        Scenario.parse("B0Inc30").task_sizes(100)


def test_non_dividing_after_base():
    with pytest.raises(ValueError, match=r"the 50 classes after the base task of 50 do not divide into tasks of 20"):
        Scenario.parse("B50Inc20").task_sizes(100)


def test_base_too_large():
    with pytest.raises(ValueError, match="base 60 exceeds the 10 classes"):
        Scenario.parse("B60Inc10").task_sizes(10)


def test_class_order_pycil_seed():
    order = class_order(100)
    assert order[:10].tolist() == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    assert sorted(order.tolist()) == list(range(100))
    assert class_order(100, seed=None).tolist() == list(range(100))
    assert class_order(100, seed=1994)[:10].tolist() != order[:10].tolist()


def test_class_order_leaves_global_rng_alone():
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    class_order(100)
    assert np.random.rand() == expected


def test_split_tasks_and_incremental_labels():
    order = class_order(100)
    sizes = Scenario.parse("B50Inc10").task_sizes(100)
    tasks = split_tasks(order, sizes)
    assert [len(t) for t in tasks] == sizes
    np.testing.assert_array_equal(np.concatenate(tasks), order)
    mapping = incremental_labels(order)
    start = 0
    for task in tasks:  # task t's classes become the next consecutive block of labels
        assert sorted(mapping[task].tolist()) == list(range(start, start + len(task)))
        start += len(task)
    # PyCIL's _map_new_class_index: label -> order.index(label); 68, 56 and 76 are the order's 1st, 2nd, 10th
    labels = np.array([68, 0, 99, 56, 76])
    assert mapping[labels].tolist() == [0, 69, 68, 1, 9]


def test_split_and_mapping_errors():
    with pytest.raises(ValueError, match=r"sum to 20, but the class order has 10"):
        split_tasks(np.arange(10), [10, 10])
    with pytest.raises(ValueError, match="permutation of 0..2"):
        incremental_labels(np.array([0, 0, 2]))
