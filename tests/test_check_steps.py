"""The device check's step section (benchmark.tools.check_steps) over the data paths of a real run:
the data set on the device, and the prefetching source that folder data sets read through. What a
CPU can show (the same batches, the guard's window, a clean check) runs everywhere; that the sync
guard catches a synchronization on either path needs CUDA's sync debug mode, so those tests are
skipped, with their reason, on a CPU."""
from __future__ import annotations

import math
import traceback

import pytest
import torch

from benchmark.tools import check_steps
from benchmark.tools.timing import method_run, speed_experiment, synthetic_data, task_engine
from benchmark.train import batches
from benchmark.train.batches import CachedSource
from methods import Phase

CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="CUDA's sync debug mode detects host synchronizations on CUDA only")


def tiny_run():
    return method_run(speed_experiment(), "der", "resnet8_half")


def test_the_prefetching_data_reads_the_same_images_through_the_image_caches_reader():
    data = synthetic_data(torch.device("cpu"), per_class=4)
    prefetched = check_steps.prefetching(data)
    assert isinstance(prefetched.train, CachedSource) and prefetched.train.reads_disk
    assert len(prefetched.train) == 20 * 4  # the classes of tasks 0 and 1
    order = torch.randperm(80)
    for (rows, images), (cached_rows, cached_images) in zip(data.train.batches(order, 16),
                                                            prefetched.train.batches(order, 16)):
        assert torch.equal(rows, cached_rows) and torch.equal(images, cached_images)
    engine, _ = task_engine(tiny_run(), prefetched, 1)
    assert engine.training_set(engine.data.task(1)).reads_disk  # new images from the reader, plus exemplars


def test_the_guard_window_opens_at_the_first_step_and_covers_the_prefetching_reads(monkeypatch):
    """Where the guard switches CUDA's mode, seen on a CPU: the epoch's start (the order moved to the
    host, the first read) before it, every step and the reads from the third batch on inside it."""
    engine, _ = task_engine(tiny_run(), check_steps.prefetching(synthetic_data(torch.device("cpu"), per_class=4)), 1)
    modes = ["default"]
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: modes.append(mode))
    reads: list[str] = []
    read = CachedSource.images
    monkeypatch.setattr(CachedSource, "images", lambda self, rows: (reads.append(modes[-1]), read(self, rows))[1])
    optimizer = engine.optimizer(Phase(), engine.settings.schedules[1])
    at_steps: list[str] = []
    optimizer.register_step_post_hook(lambda *_: at_steps.append(modes[-1]))
    source = check_steps.random_batches(engine, engine.training_set(engine.data.task(1)), 4, 4)
    engine.train_epoch(engine.data.task(1), Phase(), check_steps.SyncGuardedSource(source), optimizer, 4)
    assert at_steps == ["error"] * 4 and modes[-1] == "default"
    # Read 0 before the window; read 1 is submitted with batch 0's arrival (it may start either side);
    # reads 2 and 3 are submitted from inside it.
    assert len(reads) == 4 and reads[0] == "default" and reads[2:] == ["error", "error"]


def test_the_step_check_runs_both_data_paths_clean_on_the_cpu(monkeypatch):
    calls = []
    real = batches.prefetched

    def counted(*args):
        calls.append(args)
        yield from real(*args)

    monkeypatch.setattr(batches, "prefetched", counted)
    problems, loss = check_steps.step_problems(tiny_run(), synthetic_data(torch.device("cpu"), per_class=4),
                                               "fp32", 4, 2)
    assert problems == [] and math.isfinite(loss)
    assert len(calls) == 2  # the warm-up and the checked epoch of the prefetching path


@CUDA_ONLY
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_step_check_passes_on_cuda_on_both_data_paths(precision):
    problems, loss = check_steps.step_problems(tiny_run(), synthetic_data(torch.device("cuda"), per_class=4),
                                               precision, 4, 3)
    assert problems == [] and math.isfinite(loss)
    assert torch.cuda.get_sync_debug_mode() == 0


@CUDA_ONLY
def test_the_guard_catches_a_sync_in_a_prefetching_read(monkeypatch):
    engine, _ = task_engine(tiny_run(), check_steps.prefetching(synthetic_data(torch.device("cuda"), per_class=4)), 1)
    task = engine.data.task(1)
    source, optimizer = engine.training_set(task), engine.optimizer(Phase(), engine.settings.schedules[1])
    engine.train_epoch(task, Phase(), check_steps.random_batches(engine, source, 1, 4), optimizer, 4)  # cuDNN warm-up
    read = CachedSource.images

    def syncing(self, rows):
        images = read(self, rows)
        images.sum().item()  # a host synchronization on the reader thread
        return images

    monkeypatch.setattr(CachedSource, "images", syncing)
    with pytest.raises(RuntimeError, match="synchroniz"):
        engine.train_epoch(task, Phase(), check_steps.SyncGuardedSource(check_steps.random_batches(engine, source, 4, 4)),
                           optimizer, 4)
    assert torch.cuda.get_sync_debug_mode() == 0


@CUDA_ONLY
def test_the_prefetching_source_synchronizes_once_at_the_epochs_start():
    """Why the guard's window opens at the first batch: the order's move to the host is a sync."""
    data = check_steps.prefetching(synthetic_data(torch.device("cuda"), per_class=4))
    order = torch.randperm(len(data.train), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz") as caught:
            next(data.train.batches(order, 4))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert traceback.extract_tb(caught.value.__traceback__)[-1].name == "prefetched"  # host = order.cpu()...
