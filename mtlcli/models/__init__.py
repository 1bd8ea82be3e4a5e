"""The model registry: a plain dict from name to builder, looked up in one hop.

Builders are named as "module:function" and imported on first use, so `mtl --help` does not import
every family. A recipe's `[model]` table is `name` plus the builder's keyword arguments.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from mtlcli.errors import UserError

MODELS: dict[str, str] = {
    "ivanet": "mtlcli.models.ivanet:build_ivanet",
    "ssd300_vgg16": "mtlcli.models.ivanet:build_ssd300_vgg16",
    "ladder_densenet": "mtlcli.models.ladder:build_ladder_densenet",
    "imtl": "mtlcli.models.imtl:build_imtl",
    "datnet": "mtlcli.models.datnet:build_datnet",
    "maskrcnn": "mtlcli.models.rcnn:build_maskrcnn",
    "fasterrcnn": "mtlcli.models.rcnn:build_fasterrcnn",
    "safpn": "mtlcli.models.safpn:build_safpn",
    "cascade": "mtlcli.models.cascade:build_cascade",
}


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder function registered under `name`; an unknown name lists the valid ones."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    module_name, func = MODELS[name].split(":")
    return getattr(importlib.import_module(module_name), func)


def builder_arguments(name: str) -> dict[str, Any]:
    """Keyword arguments of a builder with their defaults (what a recipe's [model] table may set)."""
    sig = inspect.signature(get_builder(name))
    return {p.name: p.default for p in sig.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown keyword arguments are named with the valid ones."""
    valid = builder_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise UserError(f"model {name!r} has no argument(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return get_builder(name)(**kwargs)


def build_from_recipe(model_table: dict[str, Any], *, load_weights: bool = True, **overrides: Any) -> nn.Module:
    """Build the model of a recipe's `[model]` table (`name` + builder keyword arguments).

    `load_weights=False` skips ImageNet weights (a checkpoint or a benchmark replaces them anyway);
    `overrides` replace table entries.
    """
    # init_weights (and partial_weights) are applied by the trainer after building (mtlcli.engine.finetune)
    kwargs = {k: v for k, v in model_table.items() if k not in ("name", "init_weights", "partial_weights")}
    if not load_weights and "pretrained_backbone" in kwargs:
        kwargs["pretrained_backbone"] = False
    kwargs.update(overrides)
    return build_model(model_table["name"], **kwargs)
