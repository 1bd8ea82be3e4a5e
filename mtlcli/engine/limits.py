"""Refuse a batch that cannot fit before allocating it (an absurd --batch got the process killed).

`check_batch_fits(batch, size, device, option)`: the input tensor alone of `batch` images of
`size` (H, W), 3 channels of float32, must stay under a quarter of the memory available on `device`
(available RAM on a CPU, free GPU memory on CUDA). Activations take many times the input, so a batch that
fails this cannot run; one that passes may still run out of memory, which training reports as its
own one-line error. The quarter is inferred, not measured.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from mtlcli.errors import UserError

SHARE = 0.25


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` in bytes, or None when it cannot be told."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:  # Linux: MemAvailable counts the page cache the kernel would give back; free pages alone do not
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_fits(batch: int, size: Sequence[int] | int | None, device: torch.device, option: str) -> None:
    """UserError when `batch` images of `size` would not fit (see the module docstring)."""
    if size is None:
        return
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    need = batch * 3 * h * w * 4
    have = available_bytes(torch.device(device))
    if have is not None and need > SHARE * have:
        most = max(0, int(SHARE * have // (3 * h * w * 4)))
        raise UserError(
            f"{option} {batch} at {h}x{w}: the input alone needs {need / 2**30:.1f} GiB, more than a quarter of the "
            f"{have / 2**30:.1f} GiB free on {device} — use at most {most} image(s) per batch or a smaller size"
        )
