"""Frozen means frozen: across a training stage, a module the stage freezes keeps every parameter and
every buffer (BatchNorm running statistics included), for every shipped recipe with staged training."""

from __future__ import annotations

import copy
import fnmatch
import tomllib
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn

from mtlcli.engine import train as train_mod
from mtlcli.engine.anchors import compute_anchors, with_kmeans_anchors
from mtlcli.engine.optim import apply_freeze, frozen_modules, train_mode
from mtlcli.recipes import load_recipe, read_toml

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
STAGED = sorted(p.stem for p in RECIPES.glob("*.toml") if load_recipe(p.stem, check_model=False)["train"].get("stages"))

# the tiny imtl configuration (its recipe's [model] table), so that every staged recipe runs in seconds
TINY_IMTL = read_toml(RECIPES / "imtl-tiny-synthetic.toml")["model"]


def test_staged_recipes_are_found():
    assert "imtl-cityscapes" in STAGED and "imtl-tiny-synthetic" in STAGED


@pytest.mark.parametrize("name", STAGED)
def test_frozen_modules_keep_parameters_and_buffers_across_each_stage(name, tmp_path, synthetic_prepared, monkeypatch):
    recipe = load_recipe(name, check_model=False)
    assert recipe["model"]["name"] == "imtl", "a new staged family needs its tiny overrides here"
    overrides = [
        f"data.root={synthetic_prepared}",
        "data.dataset=synthetic",
        "data.min_size=96",
        "data.max_size=192",
        "data.crop_size=[96, 192]",
        "train.batch_size=2",
        "train.workers=0",
        "train.restart_every=0",
        "eval.interval=0",
        "eval.batch_size=2",
    ]
    overrides += [
        f"model.{k}={v!r}".replace("'", '"').replace("(", "[").replace(")", "]")
        for k, v in TINY_IMTL.items()
        if k != "dropout"
    ]
    overrides.append("model.dropout=0.5")  # dropout on: a frozen module must not fire it either
    recipe = load_recipe(name, overrides)
    for stage in recipe["train"]["stages"]:
        stage["iterations"] = 2
    recipe["train"]["iterations"] = 2 * len(recipe["train"]["stages"])
    recipe["train"]["checkpoint_interval"] = 2
    recipe["train"]["log_interval"] = 2

    saved: dict[int, dict[str, torch.Tensor]] = {}
    real_save = train_mod.save_checkpoint
    monkeypatch.setattr(
        train_mod,
        "save_checkpoint",
        lambda path, state: (
            saved.setdefault(state["iteration"], copy.deepcopy(state["model"])) or real_save(path, state)
        ),
    )
    train_mod.train(recipe, tmp_path / "run", progress=False)

    # anchors = "kmeans" (the paper recipe's): clustered from the train split, written into recipe.toml
    assert recipe["model"]["anchors"] == "kmeans"
    written = tomllib.loads((tmp_path / "run" / "recipe.toml").read_text())["model"]["anchors"]
    expected = compute_anchors(
        synthetic_prepared,
        "train",
        9,
        input_size=tuple(recipe["model"]["input_size"]),
        label_map=recipe["data"]["label_map"] or None,
    )["anchors"]
    assert written == expected and len(written) == 9

    checked = 0
    for i, stage in enumerate(recipe["train"]["stages"]):
        if not stage["freeze"] or i == 0:
            continue
        before, after = saved[2 * i], saved[2 * i + 2]
        keys = [k for k in before if any(fnmatch.fnmatchcase(k, p) for p in stage["freeze"])]
        assert any("running_mean" in k for k in keys)
        moved = [k for k in keys if not torch.equal(before[k], after[k])]
        assert not moved, f"stage {stage['name']!r} changed frozen {moved[:3]}"
        others = [k for k in before if k not in keys and before[k].is_floating_point()]
        assert any(not torch.equal(before[k], after[k]) for k in others)  # the rest did train
        checked += 1
    assert checked


def test_train_mode_keeps_frozen_modules_in_eval():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    frozen = apply_freeze(model, ["1.*"], trainable)
    mods = frozen_modules(model, frozen)
    assert mods == [model[1]]
    train_mode(model, mods)
    assert not model[1].training and model[0].training and model[2][1].training  # dropout elsewhere stays on


def test_kmeans_anchors_only_where_the_recipe_asks(synthetic_prepared):
    recipe = load_recipe("imtl-tiny-synthetic", [f"data.root={synthetic_prepared}"])
    out = with_kmeans_anchors(recipe, synthetic_prepared)
    assert recipe["model"]["anchors"] == "kmeans"  # the caller's recipe is not modified
    anchors = out["model"]["anchors"]
    assert len(anchors) == 9 and all(a[0] * a[1] <= b[0] * b[1] for a, b in pairwise(anchors))
    fixed = {**recipe, "model": {**recipe["model"], "anchors": [[1, 2]] * 9}}
    assert with_kmeans_anchors(fixed, synthetic_prepared) is fixed
