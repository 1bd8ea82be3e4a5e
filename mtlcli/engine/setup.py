"""The first two steps of a training run: `prepare_run` (checks, determinism and seeds — nothing built
yet) and `build_model_and_data` (datasets, class counts, anchors, the model with its starting weights,
on its device). Both are pure set-up: the loop itself is `mtlcli.engine.train`.

The order of the calls here is part of exact resume: the model is built (drawing its initialisation
from the seeded global generator) after the datasets, on every process alike.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mtlcli.engine.distributed import DistInfo
from mtlcli.errors import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def per_process_batch(train_cfg: dict, world_size: int) -> int:
    """Images per micro-batch per process; `batch_size` is the global batch of one optimiser step."""
    batch, acc = train_cfg["batch_size"], train_cfg["accumulate"]
    if batch % (world_size * acc):
        raise UserError(
            f"train.batch_size = {batch} is not divisible by {world_size} process(es) x train.accumulate = {acc}; "
            f"choose a batch size that is a multiple of {world_size * acc}"
        )
    return batch // (world_size * acc)


@dataclass
class Plan:
    """The numbers of a run that every step reads: its [train] and [eval] tables, length and batch split."""

    cfg: dict[str, Any]
    ev: dict[str, Any]
    total: int  # iterations of the whole run
    accumulate: int  # micro-batches per optimiser step
    micro: int  # images per micro-batch per process


def prepare_run(recipe: dict, info: DistInfo) -> Plan:
    """Check what can be checked before anything is built, fix determinism and seed every generator."""
    from mtlcli.engine.runlog import tensorboard_writer
    from mtlcli.recipes import total_iterations

    cfg = recipe["train"]
    plan = Plan(
        cfg, recipe["eval"], total_iterations(recipe), cfg["accumulate"], per_process_batch(cfg, info.world_size)
    )
    if cfg["tensorboard"]:
        tensorboard_writer()  # missing: refused before anything is built or written
    configure_determinism(cfg["deterministic"], info.device)
    seed_everything(cfg["seed"] + info.rank)
    return plan


def with_class_counts(recipe: dict, dataset: Dataset) -> dict:
    """Fill model.num_det_classes / num_seg_classes (without background) from the dataset after the
    label map, where the builder takes them and the recipe does not set them."""
    from mtlcli.models import builder_arguments

    model = dict(recipe["model"])
    valid = builder_arguments(model["name"])
    for key, attr in (("num_det_classes", "det_classes"), ("num_seg_classes", "seg_classes")):
        if key in valid and key not in model and hasattr(dataset, attr):
            model[key] = len(getattr(dataset, attr))
    return {**recipe, "model": model}


def build(recipe: dict) -> nn.Module:
    from mtlcli.models import build_from_recipe

    return build_from_recipe(recipe["model"])


@dataclass
class Built:
    """The model (on its device) and the data of a run."""

    model: nn.Module
    train_ds: Any
    val_ds: Any
    card: dict[str, Any]  # the classes the checkpoints carry (mtlcli.engine.modelcard)
    select_ds: Any  # the split best.pt is selected on, where it is not val_ds's (None: val_ds, or no best.pt)
    trainable: dict[str, bool]  # requires_grad of every parameter as built (what stages unfreeze to)


def build_model_and_data(recipe: dict, plan: Plan, info: DistInfo, resume: bool) -> tuple[dict, Built]:
    """(the recipe with class counts and anchors filled in, the built run). A fresh run takes the
    recipe's `model.init_weights` (fine-tuning); a resumed one its own checkpoint, later."""
    from mtlcli.data.overlap import check_no_overlap
    from mtlcli.engine.anchors import with_kmeans_anchors
    from mtlcli.engine.data import build_datasets, data_root, eval_dataset, refuse_wide_semantic, training_targets
    from mtlcli.engine.finetune import check_class_counts, check_weights_fit, init_weights
    from mtlcli.engine.limits import check_batch_fits
    from mtlcli.engine.modelcard import model_card
    from mtlcli.recipes import selection_split

    cfg, device = plan.cfg, info.device
    train_ds, val_ds = build_datasets(recipe, data_root(recipe))
    select = selection_split(recipe)
    select_ds = (
        eval_dataset(recipe, data_root(recipe), select) if select not in ("", recipe["data"]["val_split"]) else None
    )
    check_no_overlap(recipe, train_ds, val_ds)  # refuse to train on evaluation images
    recipe = with_class_counts(recipe, train_ds)
    recipe = with_kmeans_anchors(recipe, data_root(recipe))  # anchors = "kmeans": from the train split
    if not resume:
        check_weights_fit(recipe)  # weights of another backbone: refused before anything is downloaded
    model = build(recipe)
    card = model_card(train_ds)
    check_class_counts(recipe, card)
    if not resume:
        init_weights(model, recipe, card, print if info.is_main else None)
    train_ds.targets, train_ds.compact = training_targets(recipe, model), True  # decode only what the loss reads
    refuse_wide_semantic(train_ds, train_ds.targets)  # more than 255 seg classes: one line, not a wrong loss
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    if cfg["sync_bn"] and info.distributed and device.type == "cpu":
        raise UserError(
            "train.sync_bn = true needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel) — "
            "set --set train.sync_bn=false for distributed training on CPUs"
        )
    if cfg["sync_bn"] and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    check_batch_fits(plan.micro, getattr(model, "input_size", None), device, "train.batch_size per micro-batch")
    return recipe, Built(model, train_ds, val_ds, card, select_ds, trainable)
