"""What a training run records: `RUN/metrics.jsonl` (`MetricsLog`, with TensorBoard beside it on request)
and the window of iterations each logged record averages (`LogWindow`).

Each logged record's `data_wait` is the share of the window's wall time (evaluation and checkpoint
writing left out, as from `images_per_s`) that the loop spent blocked in `next(loader)`; moving the
batch to the device and making its floats count as step time.
"""

from __future__ import annotations

import json
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from mtlcli.errors import UserError
from mtlcli.safety import atomic_write_text, named_write_error


def memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on a GPU, the process's peak resident size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _record_upto(line: str, iteration: int) -> bool:
    """A whole metrics.jsonl record of an iteration up to `iteration` (False for a partial line)."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return (
        isinstance(record, dict)
        and isinstance(record.get("iteration", 0), int)
        and record.get("iteration", 0) <= iteration
    )


class MetricsLog:
    """`RUN/metrics.jsonl` (rank 0), the record of every logged step and evaluation; with `tensorboard`,
    the same scalars in RUN/tensorboard/ too (`tensorboard_writer`)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_from: int | None, tensorboard: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled, self.tb = enabled, None
        if not enabled:
            return
        if resume_from is not None and self.path.is_file():
            # Entries past the checkpoint belong to iterations that will run again: drop them, and a line a
            # killed run left half-written (it is the record of an iteration that runs again too).
            keep = [ln for ln in self.path.read_text(errors="replace").splitlines() if _record_upto(ln, resume_from)]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        elif resume_from is None:
            atomic_write_text(self.path, "")
        if tensorboard:
            self.tb = tensorboard_writer()(
                str(run_dir / "tensorboard"), purge_step=resume_from + 1 if resume_from is not None else None
            )

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk raises ENOSPC without the file's name: give it
            raise named_write_error(exc, self.path) from None
        if self.tb is not None:
            flat = {**record.get("losses", {}), **record.get("metrics", {})}
            for key in ("loss", "lr", "images_per_s", "data_wait"):
                if key in record:
                    flat[key] = record[key]
            for key, value in flat.items():
                self.tb.add_scalar(f"{record['type']}/{key}", value, record["iteration"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def tensorboard_writer():
    """torch's `SummaryWriter` class; without the tensorboard package, a UserError that says how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard (train.tensorboard = true) needs the tensorboard package, which is not "
            "installed — pip install tensorboard, or train without it (RUN/metrics.jsonl has every "
            "logged value)"
        ) from None
    return SummaryWriter


class LogWindow:
    """The iterations since the last logged record: summed loss terms, time blocked on data, wall time."""

    def __init__(self) -> None:
        self.terms: defaultdict[str, float] = defaultdict(float)
        self.iterations, self.wait, self.t0 = 0, 0.0, time.perf_counter()

    def add(self, terms: dict[str, float]) -> None:
        self.iterations += 1
        for k, v in terms.items():
            self.terms[k] += v

    def pause(self) -> Any:
        """A context whose time stays out of the window (evaluation, checkpoint writing)."""
        return _Paused(self)

    def record(self, iteration: int, stage: str, lr: float, batch_size: int, device: torch.device) -> dict:
        """The logged record of the window (means of the loss terms, throughput, data wait), then a new window."""
        elapsed = time.perf_counter() - self.t0
        losses = {k: v / self.iterations for k, v in self.terms.items()}
        record = {
            "type": "train",
            "iteration": iteration,
            "stage": stage,
            "loss": sum(losses.values()),
            "losses": losses,
            "lr": lr,
            "images_per_s": self.iterations * batch_size / elapsed,
            "data_wait": min(1.0, self.wait / elapsed),
            "memory_mb": memory_mb(device),
        }
        self.terms.clear()
        self.iterations, self.wait, self.t0 = 0, 0.0, time.perf_counter()
        return record


class _Paused:
    def __init__(self, window: LogWindow) -> None:
        self.window = window

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.window.t0 += time.perf_counter() - self.start
