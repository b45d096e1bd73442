"""How many training processes one GPU should hold (`run_all.py run --runs-per-gpu`).

    python -m benchmark.tools.packing [--device cuda] [--counts 1 2 4] [--seconds 15] [--backbone resnet32]

Worker processes are started once (as many as the largest count) and warm up; then, for each
count k in turn, the first k of them train in the same time window, each timing its own steps
(the engine's replay step at task 1 of B0Inc10 on synthetic images, in chunks that end with the
engine's one host synchronization per epoch), and their images/s are summed. The recommended
packing is the smallest k whose total is within 5 % of the best: more processes per GPU cost
memory and make each run slower, so they must pay in throughput.

Small CIL networks leave a GPU idle between kernel launches; several processes fill those gaps
(time-slicing, no MPS needed). On a CPU the same measurement is a smoke test of the code path.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 0.05          # "within 5 % of the best"
TAG = "PACKING "          # prefix of the protocol lines on a worker's stdout (anything else is ignored)
GAP_SECONDS = 1.0         # between windows: the last chunk of the previous one finishes in it
READY_TIMEOUT = 300.0     # a worker must have imported torch and warmed up by then


def recommend_packing(totals: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest packing whose total images/s is within `tolerance` of the best total."""
    if not totals:
        raise ValueError("no packing was measured; give at least one count (e.g. --counts 1 2 4)")
    best = max(totals.values())
    return min(k for k, total in totals.items() if total >= (1 - tolerance) * best)


def windows_for(counts: list[int], start: float, seconds: float) -> dict[int, tuple[float, float]]:
    """One wall-clock window per count, in increasing order, `GAP_SECONDS` apart."""
    return {k: (start + i * (seconds + GAP_SECONDS), start + i * (seconds + GAP_SECONDS) + seconds)
            for i, k in enumerate(sorted(counts))}


@dataclass(frozen=True)
class PackingSpec:
    device: str = "cuda"
    backbone: str = "resnet32"
    batch_size: int = 128
    chunk: int = 10             # steps between two host synchronizations
    warmup: int = 10
    seconds: float = 15.0       # each window's length
    precision: str = "fp32"


# -- the driver -----------------------------------------------------------------------------------
def measure_packing(counts: list[int], spec: PackingSpec) -> dict:
    """{"totals": {k: images/s summed over k processes}, "per_process": {k: [...]}, "recommended": k}."""
    counts = sorted(set(counts))
    if not counts or counts[0] < 1:
        raise ValueError(f"counts {counts}: give positive process counts, e.g. 1 2 4")
    threads = max(1, (os.cpu_count() or 1) // counts[-1])  # the cores split as run_all splits them
    with tempfile.TemporaryDirectory(prefix="packing-") as logs:
        workers = [_Worker(index, spec, threads, Path(logs)) for index in range(counts[-1])]
        try:
            for worker in workers:
                worker.expect("ready", READY_TIMEOUT)
            windows = windows_for(counts, time.time() + 1.0, spec.seconds)
            for index, worker in enumerate(workers):
                worker.send({"windows": [windows[k] for k in counts if index < k]})
            finish = max(end for _, end in windows.values()) + 60 * GAP_SECONDS
            rates = [worker.expect("rates", max(1.0, finish - time.time()))["rates"] for worker in workers]
        finally:
            for worker in workers:
                worker.stop()
    per_process = {k: [rates[i][counts.index(k) - _first_window(i, counts)] for i in range(k)] for k in counts}
    totals = {k: sum(values) for k, values in per_process.items()}
    return {"spec": asdict(spec), "threads_per_process": threads, "totals": totals, "per_process": per_process,
            "recommended": recommend_packing(totals)}


def _first_window(index: int, counts: list[int]) -> int:
    """Worker `index` times the windows of the counts above it: its first is counts' first k > index."""
    return next(position for position, k in enumerate(counts) if index < k)


class _Worker:
    """One worker process, its stdout read on a thread (so every wait can time out), its stderr in a file."""

    def __init__(self, index: int, spec: PackingSpec, threads: int, logs: Path) -> None:
        self.index, self.stderr_path = index, logs / f"worker-{index}.err"
        command = [sys.executable, "-m", "benchmark.tools.packing", "--worker", "--device", spec.device,
                   "--backbone", spec.backbone, "--batch-size", str(spec.batch_size), "--chunk", str(spec.chunk),
                   "--warmup", str(spec.warmup), "--precision", spec.precision, "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.stderr)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith(TAG):
                self.lines.put(line[len(TAG):])
        self.lines.put(None)  # end of output: the process is gone

    def expect(self, key: str, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"packing worker {self.index} sent no {key!r} within {timeout:.0f} s") from None
        if line is None:
            self.process.wait()
            tail = self.stderr_path.read_text()[-2000:]
            raise RuntimeError(f"packing worker {self.index} exited ({self.process.returncode}) "
                               f"before {key!r}:\n{tail}")
        message = json.loads(line)
        if key not in message:
            raise RuntimeError(f"packing worker {self.index} sent {message}, expected {key!r}")
        return message

    def send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.stderr.close()


# -- a worker ---------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch

    from benchmark.tools.timing import FullCell, method_run, speed_experiment, synthetic_data, task_engine

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run = method_run(speed_experiment(), "replay", args.backbone)
    engine, method = task_engine(run, synthetic_data(device), precision=args.precision)
    cell = FullCell(engine, method, args.batch_size)
    cell.run(args.warmup)
    _say({"ready": True})
    plan = json.loads(sys.stdin.readline())
    _say({"rates": [timed_window(cell, start, end, args.chunk) for start, end in plan["windows"]]})


def timed_window(cell, start: float, end: float, chunk: int) -> float:
    """Images/s of chunks of `chunk` steps from wall-clock `start` until the first chunk ending after `end`.
    A chunk is one `train_epoch`, which returns after its host synchronization: its steps are done."""
    time.sleep(max(0.0, start - time.time()))
    began, images = time.perf_counter(), 0
    while True:
        cell.run(chunk)
        images += chunk * cell.batch_size
        if time.time() >= end:
            return images / (time.perf_counter() - began)


def _say(message: dict) -> None:
    print(TAG + json.dumps(message), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmark.tools.packing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda[:index] or cpu (default cuda)")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4], help="processes at once (default 1 2 4)")
    parser.add_argument("--seconds", type=float, default=PackingSpec.seconds, help="length of each timed window")
    parser.add_argument("--backbone", default=PackingSpec.backbone)
    parser.add_argument("--batch-size", type=int, default=PackingSpec.batch_size)
    parser.add_argument("--chunk", type=int, default=PackingSpec.chunk, help="steps per host synchronization")
    parser.add_argument("--warmup", type=int, default=PackingSpec.warmup)
    parser.add_argument("--precision", default=PackingSpec.precision, choices=("fp32", "bf16"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    spec = PackingSpec(args.device, args.backbone, args.batch_size, args.chunk, args.warmup, args.seconds,
                       args.precision)
    result = measure_packing(args.counts, spec)
    for k, total in result["totals"].items():
        print(f"{k} process(es): {total:8.0f} images/s in all")
    print(f"recommended: --runs-per-gpu {result['recommended']}")


if __name__ == "__main__":
    main()
