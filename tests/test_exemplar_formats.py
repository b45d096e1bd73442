"""Exemplar formats (methods/exemplar_formats.py) and the memory that stores them under a byte budget
(methods/exemplars.py EncodedExemplarMemory): names, exact bytes, the class-balanced fill, decoding,
shared JPEG headers, checkpoints, the planner's cached size estimate, and tiny real runs.
"""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from benchmark.config.experiment import parse_experiment
from benchmark.config.grid import expand
from benchmark.data import load_dataset
from benchmark.data import encoded_size as sizes
from benchmark.records.store import run_dir
from benchmark.train import checkpoints
from benchmark.train.runner import execute_run
from conftest import tiny_experiment
from methods.exemplar_formats import FORMAT_GRAMMAR, ExemplarFormat, StoredImages, psnr, split_header
from methods.exemplars import EncodedExemplarMemory, new_memory
from test_checkpoint import Killed, timeless

HEADER = 623  # simplejpeg 1.9.0, baseline 4:2:0 colour at 32x32: SOI, APP0, 2 DQT, SOF0, 4 DHT, SOS


@pytest.fixture(scope="module")
def cifar_images(cifar_root) -> torch.Tensor:
    """The first 60 CIFAR-100 training images, uint8 [60, 3, 32, 32]."""
    train = load_dataset("cifar100", cifar_root, download=False).train
    return torch.from_numpy(np.ascontiguousarray(train.read(np.arange(60)))).permute(0, 3, 1, 2).contiguous()


def tagged(value: int, count: int, side: int = 32) -> torch.Tensor:
    """`count` constant images whose pixels say value + position (so a stored image names itself)."""
    return torch.stack([torch.full((3, side, side), value + i, dtype=torch.uint8) for i in range(count)])


# -- names ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, name, fields", [
    ("raw", "raw", (1, None, False)),
    (" RAW ", "raw", (1, None, False)),
    ("jpeg:50", "jpeg:50", (1, 50, False)),
    ("jpeg:075", "jpeg:75", (1, 75, False)),
    ("jpeg:50:shared", "jpeg:50:shared", (1, 50, True)),
    ("downsample:2", "downsample:2", (2, None, False)),
    ("downsample:2+jpeg:75", "downsample:2+jpeg:75", (2, 75, False)),
    ("jpeg:75+downsample:4", "downsample:4+jpeg:75", (4, 75, False)),
    ("downsample:2+jpeg:1:shared", "downsample:2+jpeg:1:shared", (2, 1, True)),
    ("jpeg:100", "jpeg:100", (1, 100, False)),
])
def test_formats_parse_to_their_canonical_names(text, name, fields):
    fmt = ExemplarFormat.parse(text)
    assert (fmt.downsample, fmt.jpeg_quality, fmt.shared_tables) == fields
    assert fmt.name == str(fmt) == name
    assert ExemplarFormat.parse(fmt.name) == fmt
    assert fmt.is_raw == (name == "raw")


@pytest.mark.parametrize("text, problem", [
    ("jpeg", "'jpeg' is not a part"), ("jpeg:0", "quality 0 is outside 1..100"),
    ("jpeg:101", "quality 101 is outside 1..100"), ("downsample:1", "factor 1 stores nothing smaller"),
    ("downsample:2+downsample:2", "is repeated"), ("png:5", "'png:5' is not a part"),
    ("jpeg:50:tables", "'jpeg:50:tables' is not a part"), ("", "'' is not a part"),
    ("raw+jpeg:50", "'raw' is not a part"),
])
def test_bad_formats_name_the_problem_and_the_grammar(text, problem):
    with pytest.raises(ValueError) as error:
        ExemplarFormat.parse(text)
    assert problem in str(error.value) and FORMAT_GRAMMAR in str(error.value)


def test_exact_formats_know_their_bytes_and_shapes():
    assert ExemplarFormat.parse("raw").fixed_image_bytes((3, 32, 32)) == 3072
    assert ExemplarFormat.parse("downsample:2").fixed_image_bytes((3, 32, 32)) == 768
    assert ExemplarFormat.parse("downsample:2").fixed_image_bytes((32, 32, 3)) == 768  # a spec's (H, W, C)
    assert ExemplarFormat.parse("downsample:4").fixed_image_bytes((3, 224, 224)) == 9408
    assert ExemplarFormat.parse("jpeg:75").fixed_image_bytes((3, 32, 32)) is None
    assert ExemplarFormat.parse("downsample:2+jpeg:75").stored_shape((3, 32, 32)) == (3, 16, 16)
    with pytest.raises(ValueError, match="factor 3 does not divide the image's 32x32 pixels"):
        ExemplarFormat.parse("downsample:3").stored_shape((3, 32, 32))


# -- stored bytes and the class-balanced fill -------------------------------------------------------------
def test_a_downsampled_memory_stores_exactly_its_pixels():
    fmt = ExemplarFormat.parse("downsample:2")
    memory = EncodedExemplarMemory(fmt, byte_budget=10_000)
    m = memory.fill({label: fmt.encode(tagged(10 * label, 4)) for label in range(3)})
    assert m == 4 and len(memory) == 12                  # 12 x 768 = 9,216 <= 10,000
    assert memory.stored_bytes() == 9_216
    assert memory.stored[0].pixels.shape == (4, 3, 16, 16)
    assert memory.images.shape == (12, 3, 32, 32)       # the working copy is at full size
    m = memory.fill({3: fmt.encode(tagged(30, 4))})      # 4 classes: 3 each = 9,216; 4 each = 12,288
    assert m == 3 and memory.stored_bytes() == 9_216 and memory.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_the_fill_keeps_one_count_per_class_and_short_classes_keep_all():
    fmt = ExemplarFormat.parse("downsample:4")           # 3 x 8 x 8 = 192 bytes an image
    memory = EncodedExemplarMemory(fmt, byte_budget=2_000)
    # 5, 2 and 5 images: m=4 costs 192 x (4 + 2 + 4) = 1,920; m=5 costs 192 x 12 = 2,304
    m = memory.fill({0: fmt.encode(tagged(0, 5)), 1: fmt.encode(tagged(10, 2)), 2: fmt.encode(tagged(20, 5))})
    assert m == 4 and memory.stored_bytes() == 1_920
    assert [len(memory.stored[label]) for label in (0, 1, 2)] == [4, 2, 4]


def test_the_fill_counts_each_jpeg_file_and_a_shared_header_once():
    fmt = ExemplarFormat.parse("jpeg:75:shared")
    memory = EncodedExemplarMemory(fmt, byte_budget=1_000)

    def files(*lengths: int) -> StoredImages:
        return StoredImages((3, 32, 32), files=[bytes(n) for n in lengths], header=bytes(100))

    # m=1: 100 + 300 + 200 = 600; m=2: 100 + 350 + 400 = 850; m=3: 100 + 350 + 600 = 1,050
    assert memory.per_class_fill({0: files(300, 50), 1: files(200, 200, 200)}) == 2
    assert memory.fill({0: files(300, 50), 1: files(200, 200, 200)}) == 2
    assert memory.stored_bytes() == 850
    memory.shrink(0)
    assert len(memory) == 0 and memory.stored_bytes() == 0  # nothing stored: the header is not billed


def test_a_jpeg_memory_bills_its_encoded_lengths_within_the_budget(cifar_images):
    fmt = ExemplarFormat.parse("jpeg:75")
    memory = EncodedExemplarMemory(fmt, byte_budget=20_000)
    candidates = {label: fmt.encode(cifar_images[20 * label:20 * label + 20]) for label in range(3)}
    m = memory.fill(candidates)
    lengths = [len(data) for label in range(3) for data in memory.stored[label].files]
    assert memory.stored_bytes() == sum(lengths) <= 20_000
    assert len(lengths) == 3 * m and 0 < m < 20
    one_more = sum(len(data) for label in range(3) for data in candidates[label].files[:m + 1])
    assert one_more > 20_000                              # m is the largest count that fits
    assert all(split_header(data)[0][:2] == b"\xff\xd8" for data in memory.stored[0].files)


def test_shrinking_keeps_each_class_first_images():
    fmt = ExemplarFormat.parse("downsample:2")
    memory = EncodedExemplarMemory(fmt, byte_budget=100_000)
    memory.fill({0: fmt.encode(tagged(0, 6)), 1: fmt.encode(tagged(100, 6))})
    assert memory.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 100, 101, 102, 103, 104, 105]
    memory.shrink(2)
    assert memory.images[:, 0, 0, 0].tolist() == [0, 1, 100, 101]  # the cached copy is cut too
    assert memory.stored[1].pixels[:, 0, 0, 0].tolist() == [100, 101]
    assert memory.stored_bytes() == 4 * 768


def test_decoding_comes_close_to_the_original(cifar_images):
    # mean PSNR over these 60 images: jpeg:90 33.5 dB, jpeg:75 30.4, downsample:2 25.8 (measured)
    for text, bound in (("jpeg:90", 32.0), ("jpeg:75", 29.0), ("downsample:2", 24.5), ("jpeg:75:shared", 29.0)):
        fmt = ExemplarFormat.parse(text)
        decoded = fmt.decode(fmt.encode(cifar_images))
        assert decoded.dtype == torch.uint8 and decoded.shape == cifar_images.shape
        assert float(psnr(decoded, cifar_images).mean()) > bound, text
    raw = ExemplarFormat.parse("raw")
    assert torch.equal(raw.decode(raw.encode(cifar_images)), cifar_images)


def test_shared_tables_bill_the_header_once(cifar_images):
    whole, shared = ExemplarFormat.parse("jpeg:75"), ExemplarFormat.parse("jpeg:75:shared")
    per_image, abbreviated = (EncodedExemplarMemory(fmt, 10**6) for fmt in (whole, shared))
    for memory in (per_image, abbreviated):
        memory.fill({0: memory.format.encode(cifar_images)})
    assert len(per_image) == len(abbreviated) == 60
    assert len(abbreviated.header) == HEADER
    assert per_image.stored_bytes() - abbreviated.stored_bytes() == 59 * HEADER
    assert torch.equal(per_image.images, abbreviated.images)  # the same pixels, decoded from header + scan


def test_a_jpeg_memory_survives_a_checkpoint(cifar_images):
    fmt = ExemplarFormat.parse("downsample:2+jpeg:75:shared")
    memory = EncodedExemplarMemory(fmt, 30_000)
    memory.fill({5: fmt.encode(cifar_images[:30]), 7: fmt.encode(cifar_images[30:])})
    buffer = io.BytesIO()
    torch.save(memory.state(), buffer)
    buffer.seek(0)
    restored = new_memory(fmt, 0, 30_000)
    restored.load_state(torch.load(buffer, weights_only=True))
    assert restored.stored_bytes() == memory.stored_bytes() and restored.header == memory.header
    assert [restored.stored[c].files for c in (5, 7)] == [memory.stored[c].files for c in (5, 7)]
    assert torch.equal(restored.images, memory.images) and torch.equal(restored.labels, memory.labels)
    with pytest.raises(ValueError, match="saved exemplar memory is downsample:2\\+jpeg:75:shared"):
        new_memory(ExemplarFormat.parse("jpeg:75"), 0, 1).load_state(memory.state())


def test_a_non_raw_memory_needs_a_byte_budget():
    with pytest.raises(ValueError, match="set exemplar_byte_budget"):
        new_memory(ExemplarFormat.parse("jpeg:75"), 2000, None)


# -- the planner's estimate -------------------------------------------------------------------------------
def test_the_measured_size_is_cached_and_reused(cifar_root, tmp_path, monkeypatch):
    fmt = ExemplarFormat.parse("jpeg:75:shared")
    first = sizes.encoded_size("cifar100", cifar_root, fmt, tmp_path, sample=50)
    assert first.shared_header_bytes == HEADER and first.measured_on == 50 and 150 < first.mean_image_bytes < 600
    cached = json.loads((tmp_path / sizes.ENCODED_SIZES).read_text())
    assert list(cached) == ["cifar100|all|jpeg:75:shared|sample=50|simplejpeg=1.9.0"]

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(sizes, "measure", no_measuring)
    assert sizes.mean_stored_bytes("cifar100", cifar_root, fmt, tmp_path, sample=50) == first.mean_image_bytes
    assert sizes.mean_stored_bytes("cifar100", cifar_root, ExemplarFormat.parse("downsample:2"), tmp_path) == 768.0


# -- tiny real runs -------------------------------------------------------------------------------------------
SGD = {"lr": 0.1, "lr_decay": 0.1, "momentum": 0.9, "milestones": []}
RUNS = tiny_experiment("formats", ["icarl"], [0.75], scenario="B0Inc25", training={
    "images_per_class": 5, "test_images_per_class": 2, "augment": True,
    "first_task": {"epochs": 1, "batch_size": 32, **SGD, "weight_decay": 5e-4},
    "later_tasks": {"all": {"epochs": 1, "batch_size": 32, **SGD, "weight_decay": 2e-4}}})
# 100 classes at the end: downsample:2 keeps 1 per class (76,800 bytes), jpeg:75 about 1 (~92,000)
BYTE_BUDGETS = {"downsample:2": 80_000, "jpeg:75": 100_000}


def formatted_run(text: str):
    (run,) = expand(parse_experiment(RUNS))
    return dataclasses.replace(run, training={**run.training, "exemplar_format": text,
                                              "exemplar_byte_budget": BYTE_BUDGETS[text]})


def stored_memory(experiment_dir, run) -> EncodedExemplarMemory:
    saved = torch.load(checkpoints.checkpoint_path(run_dir(experiment_dir, run.run_id)), weights_only=True)
    memory = EncodedExemplarMemory(ExemplarFormat.parse(run.training["exemplar_format"]),
                                   run.training["exemplar_byte_budget"])
    memory.load_state(saved["memory"])
    return memory


@pytest.mark.parametrize("text", sorted(BYTE_BUDGETS))
def test_a_formatted_memory_trains_audits_and_resumes(text, tmp_path, cifar_root, monkeypatch):
    run = formatted_run(text)

    def execute(folder):
        return execute_run(run, tmp_path / folder, tmp_path / "results", "cpu", cifar_root, 1, keep_checkpoints=True)

    whole = execute("whole")
    assert whole["status"] == "complete", whole["error"]
    audited = [task["memory"]["paper"]["exemplar_bytes"] for task in whole["tasks"]]
    assert all(0 < stored <= BYTE_BUDGETS[text] for stored in audited[1:]), audited
    assert audited[-1] == stored_memory(tmp_path / "whole", run).stored_bytes()
    assert [task["memory"]["strict"]["exemplar_bytes"] for task in whole["tasks"]] == audited
    if text == "downsample:2":  # exact: 4, 2, 1 and 1 images per class of 25, 50, 75 and 100 classes
        assert audited == [4 * 25 * 768, 2 * 50 * 768, 75 * 768, 100 * 768]
        assert [task["exemplars_stored"] for task in whole["tasks"]] == [100, 100, 75, 100]

    save = checkpoints.save

    def save_then_stop(path, run_id, engine, results, wall_seconds, *rest):
        save(path, run_id, engine, results, wall_seconds, *rest)
        if len(results) == 2:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "save", save_then_stop)
        with pytest.raises(Killed):
            execute("stopped")
    resumed = execute("stopped")
    assert resumed["checkpoint"]["resumed_from_task"] == 2
    assert timeless(resumed) == timeless(whole)
    again, first = stored_memory(tmp_path / "stopped", run), stored_memory(tmp_path / "whole", run)
    assert again.stored_bytes() == first.stored_bytes() and torch.equal(again.images, first.images)
