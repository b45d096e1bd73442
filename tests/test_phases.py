"""The engine's concepts for methods beyond one loss per task (methods/base.py): phases with their
own data, schedule, parameter groups and loss; the held-out split; the hook between backward and
the optimizer step; the data-reading phase start; structural hooks replayed on resume; model swaps;
backbone feature maps; cosine classifiers; methods with their own first task.

A toy method (not registered) records what the engine calls; the data are random images of the
CIFAR shape (benchmark/tools/timing.py synthetic_data), 8 per class, B0Inc50 cut to two tasks of
conv2_half: each engine run takes well under a second.
"""
from __future__ import annotations

import copy

import pytest
import torch

from benchmark.config.profile import Schedule
from benchmark.tools.timing import synthetic_data
from benchmark.train.engine import Engine, EngineSettings
from methods import Method, Phase, Task
from methods.backbones import build_backbone
from methods.cosine import CosineClassifier, CosineNet, merge_proxies
from methods.networks import SingleNet

PER_CLASS = 8
SCHEDULE = Schedule(epochs=1, milestones=(), weight_decay=0.0, lr=0.1, momentum=0.0, batch_size=64)


class Recorder(Method):
    """Three phases: the main one on the task data less a held-out split, "held" on the split,
    "balanced" on the memory after selection; records every hook with what it saw."""

    name = "recorder"
    extra_phases = ("held", "balanced")

    def __init__(self, backbone: str = "conv2_half", held_out: int = 3) -> None:
        super().__init__(backbone)
        self.calls: list[tuple] = []
        self.held_out = held_out
        self.seen: dict[str, torch.Tensor] = {}

    def phases(self, task: Task) -> list[Phase]:
        return [Phase(), Phase("held", data="held_out"), Phase("balanced", data="memory")]

    def held_out_per_class(self, task: Task, exemplars: int) -> int:
        assert exemplars == 40  # the engine's budget
        return self.held_out

    def before_task(self, task: Task) -> None:
        self.calls.append(("before_task", task.index))
        super().before_task(task)

    def begin_phase(self, task: Task, phase: Phase) -> None:
        self.calls.append(("begin_phase", phase.name))

    def prepare_phase(self, task: Task, phase: Phase, data) -> None:
        self.calls.append(("prepare_phase", phase.name, len(data.memory_labels)))
        self.seen[phase.name] = data.training_set.labels.clone()

    def before_step(self, task: Task, phase: Phase) -> None:
        if not self.calls or self.calls[-1] != ("before_step", phase.name):
            self.calls.append(("before_step", phase.name))

    def end_phase(self, task: Task, phase: Phase) -> None:
        self.calls.append(("end_phase", phase.name))

    def after_task(self, task: Task) -> None:
        self.calls.append(("after_task", task.index))


def engine_for(method: Method, exemplars: int = 40, phase_schedules: dict | None = None) -> Engine:
    data = synthetic_data(torch.device("cpu"), "B0Inc50", PER_CLASS)
    data.task_bounds = [0, 5, 10]  # two tasks of 5 classes: the labels above 9 are never read
    settings = EngineSettings(schedules=[SCHEDULE, SCHEDULE], exemplars=exemplars, selection="random",
                              phase_schedules={"held": SCHEDULE, "balanced": SCHEDULE} if phase_schedules is None
                              else phase_schedules)
    torch.manual_seed(0)
    return Engine(method, data, settings, log=lambda _: None)


def test_hooks_run_in_order_and_each_phase_sees_its_data():
    method = Recorder()
    engine = engine_for(method)
    engine.learn_task(engine.data.task(0))
    method.calls.clear()
    engine.learn_task(engine.data.task(1))
    assert method.calls == [
        ("before_task", 1),
        ("begin_phase", "train"), ("prepare_phase", "train", 40), ("before_step", "train"), ("end_phase", "train"),
        ("begin_phase", "held"), ("prepare_phase", "held", 40), ("before_step", "held"), ("end_phase", "held"),
        # the memory phase trains on this task's selection: 4 per class of 10 classes, selected before it
        ("begin_phase", "balanced"), ("prepare_phase", "balanced", 40), ("before_step", "balanced"),
        ("end_phase", "balanced"),
        ("after_task", 1)]
    counts = {name: torch.bincount(labels, minlength=10).tolist() for name, labels in method.seen.items()}
    # Task 1's data: 8 new images of classes 5-9, 8 exemplars of classes 0-4; 3 of each class held out.
    assert counts["train"] == [5] * 5 + [5] * 5
    assert counts["held"] == [3] * 10
    assert counts["balanced"] == [4] * 10
    assert sorted(engine.memory.labels.tolist()) == sorted(list(range(10)) * 4)  # selected once, not again


def test_held_out_split_is_disjoint_and_each_class_keeps_one_image():
    method = Recorder(held_out=50)  # more than any class has
    engine = engine_for(method)
    task = engine.data.task(0)
    engine.begin_task(task)
    train, held = engine.split_task_data(task)
    assert torch.bincount(train.labels).tolist() == [1] * 5
    assert torch.bincount(held.labels).tolist() == [7] * 5
    rows = lambda source: {tuple(image.flatten()[:16].tolist()) for image in source.images(torch.arange(len(source)))}
    assert not rows(train) & rows(held)


def test_a_phase_without_a_schedule_names_the_profile_key():
    engine = engine_for(Recorder(), phase_schedules={})
    with pytest.raises(KeyError, match=r"training\.phases\.recorder\.held"):
        engine.learn_task(engine.data.task(0))


class Groups(Method):
    """The backbone frozen by a zero learning-rate scale; the classifier with its own weight decay."""

    name = "groups"

    def parameter_groups(self) -> list[dict]:
        return [{"params": self.network.backbone.parameters(), "lr_scale": 0.0},
                {"params": self.network.fc.parameters(), "weight_decay": 0.5}]


def test_parameter_groups_scale_the_lr_and_set_weight_decay():
    method = Groups("conv2_half")
    engine = engine_for(method, exemplars=0)
    task = engine.data.task(0)
    engine.begin_task(task)
    optimizer = engine.optimizer(Phase(), SCHEDULE)
    assert [group["lr"] for group in optimizer.param_groups] == [0.0, 0.1]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.0, 0.5]
    before = copy.deepcopy(method.network.backbone.state_dict())
    engine.train_phases(task)
    after = method.network.backbone.state_dict()
    weights = [key for key in before if key.endswith("weight")]
    assert all(torch.equal(before[key], after[key]) for key in weights)


def test_an_unknown_parameter_group_key_is_an_error():
    method = Groups("conv2_half")
    method.parameter_groups = lambda: [{"params": [], "lr": 1.0}]
    engine = engine_for(method, exemplars=0)
    engine.begin_task(engine.data.task(0))
    with pytest.raises(ValueError, match="lr_scale"):
        engine.optimizer(Phase(), SCHEDULE)


class NoSteps(Method):
    """Zeroes every gradient between backward and the step: with no weight decay nothing moves."""

    name = "nosteps"

    def before_step(self, task: Task, phase: Phase) -> None:
        for parameter in self.trainable_parameters():
            parameter.grad = torch.zeros_like(parameter)


def test_before_step_sees_and_changes_the_gradients():
    method = NoSteps("conv2_half")
    engine = engine_for(method, exemplars=0)
    task = engine.data.task(0)
    engine.begin_task(task)
    before = {k: v.clone() for k, v in method.network.state_dict().items() if k.endswith("weight")}
    engine.train_phases(task)
    assert all(torch.equal(before[k], method.network.state_dict()[k]) for k in before)


class Swapper(Method):
    """A FOSTER-like swap: a second phase trains a fresh student, which becomes the network."""

    name = "swapper"
    keeps_teacher = True
    extra_phases = ("distil",)

    def phases(self, task: Task) -> list[Phase]:
        return [Phase(), Phase("distil")] if task.index > 0 else [Phase()]

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        if task.index > 0:  # a second head on another backbone: a structure the student does not have
            self.network.aux_fc = torch.nn.Linear(self.network.feature_dim, 3)

    def begin_phase(self, task: Task, phase: Phase) -> None:
        if phase.name == "distil":
            student = SingleNet("conv2_half")
            student.add_task(task.total_classes)
            self.teacher, self.network = self.network, student

    def after_task(self, task: Task) -> None:
        self.teacher = None


def test_a_swapped_model_is_trained_placed_and_replayed():
    method = Swapper("conv2_half")
    engine = engine_for(method, exemplars=20, phase_schedules={"distil": SCHEDULE})
    for index in range(2):
        engine.learn_task(engine.data.task(index))
    assert method.network.aux_fc is None and method.teacher is None  # the student, without the aux head
    assert method.network.fc.out_features == 10
    resumed = Swapper("conv2_half")
    engine_for(resumed, exemplars=20, phase_schedules={"distil": SCHEDULE}).replay(2)
    assert resumed.network.state_dict().keys() == method.network.state_dict().keys()
    assert all(a.shape == b.shape for a, b in zip(resumed.network.state_dict().values(),
                                                  method.network.state_dict().values()))
    resumed.network.load_state_dict(method.network.state_dict())


def test_feature_maps_are_every_stage_and_the_last_pools_to_the_features():
    backbone = build_backbone("resnet8_half").eval()
    images = torch.randn(2, 3, 32, 32)
    maps = backbone.feature_maps(images)
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 32, 32), (16, 16, 16), (32, 8, 8)]
    torch.testing.assert_close(maps[-1].mean(dim=(2, 3)), backbone(images))
    conv = build_backbone("conv2_half").eval()  # no stem-and-stages sequence: two maps
    assert len(conv.feature_maps(images)) == 2


def test_cosine_classifier_merges_proxies_and_keeps_old_rows_when_grown():
    cosines = torch.tensor([[0.0, 1.0, 0.5, 0.5]])  # one image, two classes of two proxies
    # class 0: softmax(0, 1) = (0.2689, 0.7311) -> 0.7311; class 1: 0.5
    torch.testing.assert_close(merge_proxies(cosines, 2), torch.tensor([[0.7311, 0.5]]), atol=1e-4, rtol=0)
    head = CosineClassifier(4, 2, proxies=2)
    with torch.no_grad():
        head.sigma.fill_(3.0)
    grown = head.expanded(5)
    assert grown.weight.shape == (10, 4) and float(grown.sigma.detach()) == 3.0
    torch.testing.assert_close(grown.weight[:4], head.weight)
    assert grown.class_rows(2, 5) == slice(4, 10)
    features = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert grown(features).abs().max() <= 3.0 + 1e-6  # sigma times a cosine


def test_cosine_net_loads_the_first_task_state_of_its_own_kind():
    net = CosineNet("conv2_half", proxies=2)
    net.add_task(5)
    other = CosineNet("conv2_half", proxies=2)
    other.add_task(5)
    other.load_first_task_state(net.first_task_state())
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(other.eval()(images)["logits"], net.eval()(images)["logits"])


def test_a_method_with_its_own_first_task_gets_its_own_first_task_key(monkeypatch):
    from benchmark.config.experiment import parse_experiment
    from benchmark.config.grid import expand
    from benchmark.train.runner import first_task_key
    from conftest import tiny_experiment
    from methods import METHODS

    runs = {run.method: run for run in expand(parse_experiment(tiny_experiment("keys", ["replay", "icarl"], [0.75])))}
    assert first_task_key(runs["replay"]) == first_task_key(runs["icarl"])  # both share the plain model
    monkeypatch.setattr(METHODS.get("icarl"), "shares_first_task", False)
    assert first_task_key(runs["replay"]) != first_task_key(runs["icarl"])


class NewOnly(Recorder):
    """Trains on the new images only; the exemplars stay readable when the phase starts (GEM)."""

    def phases(self, task: Task) -> list[Phase]:
        return [Phase(data="new")]


def test_a_new_data_phase_trains_on_the_new_images_and_still_sees_the_memory():
    method = NewOnly(held_out=0)
    engine = engine_for(method)
    engine.learn_task(engine.data.task(0))
    engine.learn_task(engine.data.task(1))
    assert torch.bincount(method.seen["train"], minlength=10).tolist() == [0] * 5 + [8] * 5
    assert ("prepare_phase", "train", 40) in method.calls  # the 40 exemplars of task 0, readable
