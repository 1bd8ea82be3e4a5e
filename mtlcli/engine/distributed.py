"""Distributed helpers: process-group set-up from `torchrun`'s environment, reductions, the sampler.

`mtl train` runs one process by default; under `torchrun --nproc_per_node N -m mtlcli train ...` the
environment carries RANK / WORLD_SIZE / LOCAL_RANK and every process joins one PyTorch process group
(NCCL on GPUs, gloo on CPUs). Nothing here launches processes: that is torchrun's job.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from mtlcli.devices import resolve_device
from mtlcli.errors import UserError


@dataclass
class DistInfo:
    """Where this process stands: its rank among `world_size`, its device, whether it made the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (a no-op without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(resolve_device(device or None, local_rank))
    if world_size <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        owns = True
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev, owns_group=owns
    )


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of `tensor` over all processes (returned; the input is left as it is)."""
    if not info.distributed:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class TrainSampler(Sampler):
    """An endless stream of (global position, dataset index) for one process, resumable at any sample.

    The global stream is epoch after epoch of `DistributedSampler`'s seeded permutation (padded to a
    multiple of the world size); process r takes every world_size-th sample starting at r, exactly as
    `DistributedSampler` shards an epoch. `start` skips this process's first samples, so a resumed run
    continues the same order. The global position lets the dataset seed each sample's augmentation,
    which makes augmentation independent of worker count and of where a run was resumed.
    """

    def __init__(
        self, size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True, start: int = 0
    ) -> None:
        if size == 0:
            raise UserError("the training split has no images — check the prepared dataset")
        self.size, self.world_size, self.rank, self.seed, self.shuffle = size, world_size, rank, seed, shuffle
        self.start = start
        self._epoch_sampler: DistributedSampler[int] = DistributedSampler(
            range(size),  # type: ignore[arg-type]  # a Sampler reads only len(): indices stand for the samples
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.per_epoch = self._epoch_sampler.num_samples  # this process's samples per epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        padded = self.per_epoch * self.world_size
        for e in itertools.count(epoch):
            self._epoch_sampler.set_epoch(e)
            indices = list(self._epoch_sampler)
            for k in range(offset, self.per_epoch):
                yield e * padded + self.rank + k * self.world_size, indices[k]
            offset = 0

    def __len__(self) -> int:  # endless; DataLoader only needs this for len(), which we never ask
        return 2**62


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """`model` in DistributedDataParallel under torchrun, else `model` itself. DDP records which parameters
    take gradients when it is built: wrap again whenever a stage freezes others."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = info.device
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )
