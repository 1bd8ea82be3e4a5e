"""The training data path of `mtl train`: where a recipe's prepared dataset is, its training and
evaluation datasets, the dense targets the loader decodes, and the loader itself — a pure function of
(seed, sample position), so that a run resumes on exactly the samples and augmentations it would have
seen (`SeededSamples`, `TrainSampler`) — and the move of a batch to the device (`to_device`).
"""

from __future__ import annotations

import contextlib
import random
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from mtlcli.data.transforms import apply_color_jitter
from mtlcli.engine.checkpoint import preserved_rng
from mtlcli.engine.distributed import DistInfo, TrainSampler
from mtlcli.errors import UserError
from mtlcli.recipes import DATA_KEYS
from mtlcli.recipes import data_root as data_root  # re-exported: the training data path's root

if TYPE_CHECKING:
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.data.unreadable import SkipUnreadable


class MapDataset(Protocol):
    """A map-style dataset: a length and samples by index (torch's `Dataset` declares no `__len__`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


def require_prepared(recipe: dict, root: Path) -> None:
    """A UserError naming the commands that prepare the recipe's dataset unless `root` holds one."""
    if not (root / "dataset.json").is_file():
        from mtlcli.hints import prepare_hint, raw_source_command

        raw = raw_source_command(root)
        if raw is not None:
            prepared = shlex.split(raw)[-1]
            raise UserError(
                f"{root} is a dataset source, not a prepared dataset — prepare it first with `{raw}`, then "
                f"train with --data {shlex.quote(prepared)}"
            )
        raise UserError(
            f"no prepared dataset at {root} — run {prepare_hint(recipe['data']['dataset'], root)} first, or point to "
            f"one with --data (or data.root, or $MTL_DATA)"
        )


def build_datasets(recipe: dict, root: Path) -> tuple[SkipUnreadable, PreparedDataset | None]:
    """(train split with training transforms, val split with eval transforms or None without metrics)."""
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.data.transforms import build_transforms
    from mtlcli.data.unreadable import SkipUnreadable

    require_prepared(recipe, root)
    data = recipe["data"]
    from mtlcli.data.prepared import DatasetMeta

    meta = DatasetMeta.load(root)  # an unlabelled split (test-server images) has nothing to train or score on
    meta.check_labelled(root, data["train_split"], "train")
    if recipe["eval"]["metrics"]:
        meta.check_labelled(root, data["val_split"], "score")
    options = {k: v for k, v in data.items() if k not in DATA_KEYS}
    label_map = data["label_map"] or None
    train_ds = PreparedDataset(
        root,
        data["train_split"],
        transforms=build_transforms(data["augmentation"], True, **options),
        label_map=label_map,
    )
    train_ds.check_label_files()  # a label PNG lost since prepare: refused, not trained on as "ignore"
    train = SkipUnreadable(train_ds)  # a corrupt image is named once and skipped, not the end of the run
    val_ds = eval_dataset(recipe, root, data["val_split"]) if recipe["eval"]["metrics"] else None
    if val_ds is not None:
        val_ds.check_label_files()
    return train, val_ds


def eval_dataset(recipe: dict, root: Path, split: str) -> PreparedDataset:
    """A split of the prepared dataset with the evaluation transforms (val_split, or the split best.pt is
    selected on)."""
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.data.transforms import build_transforms
    from mtlcli.engine.resolution import eval_transforms  # [eval] resolution: the paper's scoring size

    data = recipe["data"]
    options = {k: v for k, v in data.items() if k not in DATA_KEYS}
    return PreparedDataset(
        root,
        split,
        label_map=data["label_map"] or None,
        transforms=eval_transforms(recipe) or build_transforms(data["augmentation"], False, **options),
    )


def training_targets(recipe: dict, model: nn.Module) -> frozenset[str]:
    """The dense targets the training loader decodes: `data.targets` if set, else the model's."""
    from mtlcli.data.dataset import check_targets, loss_targets

    return check_targets(recipe["data"]["targets"]) if recipe["data"].get("targets") else loss_targets(model)


def refuse_wide_semantic(dataset: Dataset, targets: frozenset[str]) -> None:
    """The models' segmentation losses take 255 as the ignore value: a dataset of more than 255 seg
    classes (uint16 maps, 65535 = ignore) is refused in one line where the loss reads `semantic` —
    training on it would silently ignore class 255 and fail on 65535."""
    meta = getattr(dataset, "meta", None)
    if "semantic" in targets and meta is not None and meta.ignore_index != 255:
        raise UserError(
            f"the dataset has {len(meta.seg_classes)} segmentation classes (16-bit maps); the models' "
            "segmentation losses take at most 255 — merge classes with a seg table in data.label_map"
        )


def collate_fn():
    from mtlcli.data.dataset import collate

    return collate


class SeededSamples(Dataset):
    """Reads dataset[index] for a (global position, index) pair with every RNG seeded by the position,
    so a sample's augmentation does not depend on worker count, worker order or where a run resumed."""

    def __init__(self, dataset: MapDataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        position, index = item
        sample_seed = (self.seed * 1_000_003 + position) % 2**63
        # In the main process (workers = 0) the training RNG must not move; a worker's may.
        guard = preserved_rng() if torch.utils.data.get_worker_info() is None else contextlib.nullcontext()
        with guard:
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2**32)
            # The CPU generator alone (transforms run on the CPU); torch.manual_seed would also queue
            # CUDA seeding and costs ~100x more.
            torch.default_generator.manual_seed(sample_seed)
            return self.dataset[index]


def make_loader(
    dataset: MapDataset, *, micro_batch: int, workers: int, seed: int, info: DistInfo, start: int, collate
) -> Iterator:
    """An endless iterator of (images, targets) micro-batches for this process, from sample `start` on."""
    sampler = TrainSampler(len(dataset), world_size=info.world_size, rank=info.rank, seed=seed, start=start)
    loader = DataLoader(
        SeededSamples(dataset, seed),
        batch_sampler=BatchSampler(sampler, micro_batch, drop_last=False),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=info.device.type == "cuda",
        # A private generator: creating the iterator must not draw from the training RNG.
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_seed_worker,
        persistent_workers=False,
    )
    return iter(loader)


def ram_cache(train_ds: Dataset, main: bool, progress: bool):
    """`data.cache = "ram"`: the training split decoded into memory (`mtlcli.data.cache`), or None (with a
    note) when the caches of this machine's training processes would not fit beside the training."""
    from mtlcli.data.cache import fill_ram_cache, local_processes
    from mtlcli.engine.limits import available_bytes

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    return fill_ram_cache(
        train_ds,
        available_bytes(torch.device("cpu")),
        copies=local_processes(),
        note=note if main else None,
        progress=progress and main,
    )


def _seed_worker(worker_id: int) -> None:
    # torch seeds python and torch per worker; numpy (used by some transforms) needs it too.
    np.random.seed(torch.initial_seed() % 2**32)


def to_device(images: list, targets: list[dict], device: torch.device) -> tuple[list, list[dict]]:
    nb = device.type == "cuda"
    # a compact loader ships uint8 images (mtlcli.data.dataset): 0..1 floats are made on the device
    images = [img.to(device, non_blocking=nb) for img in images]
    images = [img.float().div_(255) if img.dtype == torch.uint8 else img for img in images]
    # a colour jitter the loader drew but left to the device (mtlcli.data.transforms.Pipeline); its
    # factors stay on the host (read as python numbers, no device sync)
    images = [
        apply_color_jitter(img, t["color_jitter"]) if "color_jitter" in t else img
        for img, t in zip(images, targets, strict=True)
    ]
    targets = [
        {k: v.to(device, non_blocking=nb) if torch.is_tensor(v) else v for k, v in t.items() if k != "color_jitter"}
        for t in targets
    ]
    return images, targets
