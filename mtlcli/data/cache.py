"""`data.cache = "ram"`: the decoded training images and label maps kept in memory (Ultralytics' cache=ram).

    cache = fill_ram_cache(train_ds, available_bytes(cpu))   # before the loader forks; None: not cached
    train_ds.ram = cache                 # dataset[i] now copies its pixels out of memory

What is kept is what `PreparedDataset.decode` returns for every sample: the uint8 image [3, H, W] and
the uint8 label maps among the loss's targets (`semantic`, `dt`), exactly as decoded from the files.
Boxes, labels and crowd flags are in memory anyway (instances.json), and instance masks stay their
RLE (decoded per sample over the columns they cover: decoded, N instances would take N image planes).
Augmentation still runs on every read, on a copy of the cached pixels, with the same per-sample seed
(`mtlcli.engine.data.SeededSamples`), so a cached run draws the same samples as an uncached one and
`--resume` stays exact; filling the cache draws no random numbers.

Everything sits in one flat uint8 buffer whose size is known before anything is decoded (the image
sizes are in instances.json), so the memory guard is exact: the cache (times the training processes
on this machine, which each hold one) may take at most `RAM_SHARE` of the memory available, else
training goes on without it and says so. DataLoader workers share the filled buffer: forked workers
inherit its pages (never written after the fill), spawned ones receive it as one shared-memory
segment. A sample that cannot be read is left out of the cache (the training loader's
`SkipUnreadable` names and replaces it, as without a cache).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from typing import Any

import torch

from mtlcli.data.unreadable import READ_ERRORS

MODES = ("none", "ram")
RAM_SHARE = 0.5  # inferred: leaves the other half to the model, the optimiser and the loader workers
_CHANNELS = {"image": 3, "semantic": 1, "dt": 1}  # uint8 planes per pixel of each cached entry


class RamCache:
    """Decoded samples in one uint8 buffer: `slots[i]` maps each key to (offset, shape), None = not cached."""

    def __init__(self, buffer: torch.Tensor, slots: list[dict[str, tuple[int, tuple[int, ...]]] | None]) -> None:
        self.buffer, self.slots = buffer, slots

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    def __len__(self) -> int:
        return sum(slot is not None for slot in self.slots)

    def get(self, index: int, keys: Collection[str]) -> dict[str, torch.Tensor] | None:
        """Copies of sample `index`'s cached tensors ("image" and the dense `keys`), or None when the
        sample or one of the keys is not cached (the caller decodes it from the files)."""
        slot = self.slots[index]
        if slot is None or not all(k in slot for k in keys):
            return None
        out = {}
        for key in ("image", *keys):
            offset, shape = slot[key]
            n = 1
            for s in shape:
                n *= s
            # a copy: transforms and models may write into their inputs, the cache must stay as decoded
            out[key] = self.buffer[offset : offset + n].view(shape).clone()
        return out


def cache_keys(targets: frozenset[str] | set[str]) -> tuple[str, ...]:
    """The dense maps a cache holds for these loss targets (instance masks stay RLE)."""
    return tuple(k for k in ("semantic", "dt") if k in targets)


def planned_bytes(dataset: Any) -> tuple[int, list[int | None]]:
    """(total bytes, bytes per sample or None where instances.json gives no size) of caching `dataset`."""
    planes = 3 + len(cache_keys(dataset.targets))
    sizes: list[int | None] = []
    for i in range(len(dataset)):
        info = dataset.image_info(i)
        h, w = info.get("height"), info.get("width")
        sizes.append(int(h) * int(w) * planes if h and w else None)
    return sum(s for s in sizes if s), sizes


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def fill_ram_cache(
    dataset: Any,
    available: int | None,
    *,
    copies: int = 1,
    share: float = RAM_SHARE,
    note: Callable[[str], None] | None = print,
    progress: bool = False,
) -> RamCache | None:
    """Decode every sample of `dataset` (a PreparedDataset, with its `targets` set) into a RamCache.

    `available`: bytes of memory available (`mtlcli.engine.limits.available_bytes`; None: unknown, no
    guard). `copies`: processes on this machine that each fill one (the local training processes).
    When the caches would take more than `share` of `available`, returns None after `note`-ing why
    (training runs uncached); `note` also reports the filled cache. Draws no random numbers."""
    total, sizes = planned_bytes(dataset)
    if available is not None and total * copies > share * available:
        if note is not None:
            each = f" ({copies} training processes, one cache each)" if copies > 1 else ""
            note(
                f'note: data.cache = "ram" needs {_size(total * copies)} for {len(dataset)} decoded training images'
                f"{each}, more than {share:.0%} of the {_size(available)} of memory available — training without "
                'the cache (set data.cache = "none" to silence this note)'
            )
        return None
    keys = cache_keys(dataset.targets)
    buffer = torch.empty(total, dtype=torch.uint8)
    slots: list[dict[str, tuple[int, tuple[int, ...]]] | None] = [None] * len(dataset)
    t0, offset = time.perf_counter(), 0
    indices: Any = range(len(dataset))
    if progress:
        from rich.progress import track

        indices = track(indices, description="caching", transient=True)
    for i in indices:
        if sizes[i] is None:
            continue
        start, offset = offset, offset + sizes[i]  # the slot stays reserved when the sample is unreadable
        try:
            pixels = dataset.decode(i)
        except READ_ERRORS:
            continue  # left to the loader, which names the file and skips it
        slot, at = {}, start
        for key in ("image", *keys):
            plane = pixels[key].as_subclass(torch.Tensor).reshape(-1)
            buffer[at : at + plane.numel()] = plane
            slot[key] = (at, tuple(pixels[key].shape))
            at += plane.numel()
        slots[i] = slot
    cache = RamCache(buffer, slots)
    if note is not None:
        note(
            f'data.cache = "ram": {len(cache)} of {len(dataset)} training images decoded into memory '
            f"({_size(cache.nbytes)}, {time.perf_counter() - t0:.1f} s)"
        )
    return cache


def local_processes() -> int:
    """Training processes on this machine (torchrun sets LOCAL_WORLD_SIZE), each of which holds a cache."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1
