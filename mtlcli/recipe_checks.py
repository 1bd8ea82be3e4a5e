"""Range checks of recipe values, and `train.iterations` over staged recipes.

`mtlcli.recipes.validate` checks types; the functions here check that values make sense where a
builder, the optimiser or the data pipeline would otherwise fail deep inside (an `IndexError` in a
head, a 120 GB allocation for `model.input_size = [100000, 100000]`, a negative momentum):
    check_ranges(recipe, source)        [data], [train], [eval] values
    check_model_ranges(model, source)   [model] keys, by what their names mean in every builder
    check_selection(recipe, split, source)  best.pt is never selected on test*, nor on the reported split
    scale_stages(train, iterations)     how `--set train.iterations=N` acts on [[train.stages]]
    scale_schedule(recipe, factor, keep) how it acts on warm-up, milestones and periods

The limits are inferred (the papers set none): sizes from 16 to 8192 pixels a side (MAX_SIDE), class
counts and widths at least 1, thresholds and probabilities in [0, 1], weights finite and >= 0.
"""

from __future__ import annotations

import math
from typing import Any

from mtlcli.errors import UserError

MIN_SIDE, MAX_SIDE = 16, 8192  # inferred: the smallest input the tiny models take, 4x a Cityscapes image
# inferred: the largest width / channel / class count / ratio any [model] key may take (a ResNet's widest
# layer has 2048 channels; 65535 seg classes is what a uint16 label map holds)
MAX_COUNT = 65536


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fail(where: str, value: Any, rule: str) -> None:
    raise UserError(f"{where} = {value!r} is out of range: {rule}")


def _size(where: str, value: Any, *, allow_zero: bool = False, pair: bool = True) -> None:
    """An image side or (H, W) pair: integers in MIN_SIDE..MAX_SIDE (0 = off where allowed)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if pair and isinstance(value, (list, tuple)) and len(value) != 2:
        _fail(where, value, "give one size or an [H, W] pair")
    for v in values:
        if not _num(v) or v != int(v):
            _fail(where, value, "sizes are whole numbers of pixels")
        if allow_zero and v == 0:
            continue
        if not MIN_SIDE <= v <= MAX_SIDE:
            _fail(
                where,
                value,
                f"each side must be {MIN_SIDE}..{MAX_SIDE} pixels" + (" (or 0 for off)" if allow_zero else ""),
            )


def check_model_ranges(model: dict[str, Any], source: str = "recipe") -> None:
    """Ranges of [model] keys, by name (the same names mean the same thing in every builder)."""
    for key, value in model.items():
        where = f"{source}: model.{key}"
        if value is None or key in ("name", "anchors", "pretrained_backbone") or isinstance(value, (str, bool)):
            continue
        if key in ("input_size", "min_size", "max_size", "test_min_size", "test_max_size"):
            _size(where, value, pair=key == "input_size")  # min_size may list several scales
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(_num(v) for v in items):
            continue  # types are validate_model's
        if not all(math.isfinite(v) for v in items):
            _fail(where, value, "must be a finite number")
        if "thresh" in key or key.endswith("_iou") or key in ("dropout", "background_alpha"):
            if not all(0 <= v <= 1 for v in items):
                _fail(where, value, "a threshold or probability lies in [0, 1]")
        elif "weight" in key:
            if not all(v >= 0 for v in items):
                _fail(where, value, "loss weights are >= 0")
        elif key.startswith("num_") or any(
            w in key
            for w in (
                "width",
                "channels",
                "size",
                "planes",
                "rate",
                "blocks",
                "layers",
                "bins",
                "top_n",
                "per_im",
                "ratio",
                "reduc",
                "dilation",
                "config",
            )
        ):
            lowest = 0 if key == "trainable_layers" or key == "trainable_backbone_layers" else 1
            if not all(v >= lowest for v in items):
                _fail(where, value, f"must be at least {lowest}")
            if not all(v <= MAX_COUNT for v in items):  # e.g. context_width = 10**9: terabytes of weights
                _fail(where, value, f"must be at most {MAX_COUNT:,}")


def check_ranges(recipe: dict[str, Any], source: str = "recipe") -> None:
    """Ranges of [data], [train] and [eval] values that the type checks let through."""
    data, train = recipe["data"], recipe["train"]
    for key in ("min_size", "max_size"):
        if _num(data.get(key)):
            _size(f"{source}: data.{key}", data[key], allow_zero=True)
    if "crop_size" in data:
        _size(f"{source}: data.crop_size", data["crop_size"], allow_zero=True)
    scale = data.get("scale_range")
    scales = scale if isinstance(scale, list) else [scale]
    if all(_num(v) for v in scales) and (not all(0 < v <= 16 for v in scales) or scales != sorted(scales)):
        _fail(f"{source}: data.scale_range", scale, "scales lie in (0, 16], low before high")
    rules = {
        "momentum": (0.0, 1.0),
        "gamma": (0.0, None),
        "power": (0.0, None),
        "weight_decay": (0.0, None),
        "grad_clip": (0.0, None),
        "warmup_iters": (0, None),
        "restart_every": (0, None),
        "seed": (0, 2**63 - 1),
    }
    for key, (lo, hi) in rules.items():
        v = train[key]
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            _fail(f"{source}: train.{key}", v, f"must be >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if not 0 < train["warmup_factor"] <= 1:
        _fail(
            f"{source}: train.warmup_factor", train["warmup_factor"], "the warm-up starts at a fraction in (0, 1] of lr"
        )
    if not train["eps"] > 0:
        _fail(f"{source}: train.eps", train["eps"], "must be > 0")
    if not all(0 <= b < 1 for b in train["betas"]):
        _fail(f"{source}: train.betas", train["betas"], "Adam's betas lie in [0, 1)")
    if any(s < 1 for s in train["steps"]):
        _fail(f"{source}: train.steps", train["steps"], "steps are iterations >= 1")
    for name, w in train["loss_weights"].items():
        if not (math.isfinite(w) and w >= 0):
            _fail(f"{source}: train.loss_weights.{name}", w, "loss weights are finite and >= 0")


def check_selection(recipe: dict[str, Any], split: str, source: str = "recipe") -> None:
    """Model selection off the reported numbers: best.pt is never selected on a test* split (`split`:
    `mtlcli.recipes.selection_split`), and a recipe that reports best.pt (`eval.checkpoint = "best"`)
    selects it on a split that is neither data.val_split nor data.test_split — a held-out part of the
    training data, which `mtl train` checks for overlap with the train split like the others."""
    data, ev = recipe["data"], recipe["eval"]
    if split.lower().startswith("test"):
        raise UserError(
            f"{source}: best.pt would be selected on {split!r}, a test split (eval.select_split, by default "
            'data.val_split) — set eval.select_split to a held-out split of the training data, or "none"'
        )
    if ev["checkpoint"] == "best" and (not split or split in (data["val_split"], data["test_split"])):
        raise UserError(
            f'{source}: eval.checkpoint = "best" reports best.pt, but it is selected on '
            + (f"{split!r}, the split it is reported on" if split else "no split")
            + ' — set eval.select_split to a held-out split of the training data, or eval.checkpoint = "last"'
        )


def scale_stages(train: dict[str, Any], iterations: int) -> None:
    """Make [[train.stages]] last `iterations` in all, keeping their proportions (in place).

    Every stage boundary moves to the same fraction of the run (rounded), each stage keeps at least
    one iteration, and the sum is exactly `iterations`: 40/40/40/40 scaled to 10 is 2/3/3/2. Fewer
    iterations than stages is a UserError."""
    stages = train["stages"]
    if not stages:
        train["iterations"] = iterations
        return
    if iterations < len(stages):
        raise UserError(
            f"train.iterations = {iterations} cannot cover the recipe's {len(stages)} stages "
            f"(at least one iteration each) — give at least {len(stages)}"
        )
    old = sum(s["iterations"] for s in stages)
    cum, end = 0, 0
    for i, stage in enumerate(stages):
        cum += stage["iterations"]
        left = len(stages) - i - 1
        # stage boundaries at the same fractions of the run, at least one iteration per stage
        new_end = min(max(round(iterations * cum / old), end + 1), iterations - left)
        stage["iterations"] = new_end - end
        end = new_end
    train["iterations"] = iterations


# The schedule keys that count iterations: `--set train.iterations=N` scales them with the run
# (`scale_schedule`); the poly / cosine horizon is the stage length, which scales with the stages.
SCHEDULE_KEYS = (
    ("train", "warmup_iters"),
    ("train", "steps"),
    ("train", "restart_every"),
    ("train", "checkpoint_interval"),
    ("eval", "interval"),
)


def _scaled(value: int, factor: float) -> int:
    """`value` iterations times `factor`, rounded; a positive count stays at least 1 (0 stays 0: off)."""
    return max(1, round(value * factor)) if value > 0 else 0


def scale_schedule(recipe: dict[str, Any], factor: float, keep: set[str]) -> list[str]:
    """Scale every schedule key of SCHEDULE_KEYS by `factor` (in place), except those named in `keep`
    ("train.steps", ...: set explicitly, kept as given). Returns "key old -> new" for each change.

    A short run is then the recipe's schedule in small: with `steps = [330]` of 400 iterations and
    warm-up 50, 20 iterations drop the rate at 16 and end warm-up at 2 (the same fractions of the run)."""
    changes = []
    for section, key in SCHEDULE_KEYS:
        name = f"{section}.{key}"
        old = recipe[section][key]
        if name in keep:
            continue
        new = [_scaled(v, factor) for v in old] if isinstance(old, list) else _scaled(old, factor)
        if new != old:
            recipe[section][key] = new
            changes.append(f"{name} {old} -> {new}")
    return changes


def shorten_schedule(recipe: dict[str, Any], planned: int, total: int, explicit: set[str], scale: bool) -> str:
    """After `--set train.iterations` (stages already scaled by `mtlcli.recipes.settle_iterations`; `total`
    iterations now, `planned` in the recipe): scale the schedule
    keys by the same factor (`mtlcli.recipe_checks.scale_schedule`, explicitly set keys kept) and return
    the one line that says what changed ("" when the length is the recipe's own)."""
    if "train.iterations" not in explicit or total == planned or planned < 1:
        return ""
    factor = total / planned
    changes = scale_schedule(recipe, factor, explicit) if scale else []
    if recipe["train"]["stages"]:
        changes.insert(0, f"stages {'/'.join(str(s['iterations']) for s in recipe['train']['stages'])}")
    kept = sorted(k for k in explicit if k in {f"{a}.{b}" for a, b in SCHEDULE_KEYS})
    if not changes and not kept:
        return ""
    return (
        f"schedule scaled x{factor:.3g} to train.iterations = {total} (recipe: {planned}): "
        + (", ".join(changes) or "nothing to scale")
        + (f"; kept as set: {', '.join(kept)}" if kept else "")
        + ("" if scale else " (--resume: the rest of the schedule as it was)")
    )


def selection_split(recipe: dict[str, Any]) -> str:
    """The split best.pt is selected on ("" when none is kept): `eval.select_split`, by default
    `data.val_split`; "none", or a recipe without metrics, keeps no best.pt."""
    ev = recipe["eval"]
    if not ev["metrics"] or ev.get("select_split") == "none":
        return ""
    return ev.get("select_split") or recipe["data"]["val_split"]


def settle_iterations(recipe: dict[str, Any], explicit: bool) -> None:
    """Make train.iterations and [[train.stages]] agree, so that recipe.toml says what the run does.

    With stages, a `--set train.iterations=N` that differs from the stages' sum scales every stage by
    the same factor (`mtlcli.recipe_checks.scale_stages`: rounded, at least
    one iteration each, the last stage takes the remainder); otherwise (a recipe file's own
    train.iterations included) train.iterations becomes the stages' sum."""
    train = recipe["train"]
    if not train["stages"]:
        return
    total = sum(s["iterations"] for s in train["stages"])
    if explicit and train["iterations"] != total:
        scale_stages(train, train["iterations"])
    else:
        train["iterations"] = total


def total_iterations(recipe: dict[str, Any]) -> int:
    """Iterations of the whole run: the sum over stages, or train.iterations without stages (a loaded
    recipe has both equal: `settle_iterations`)."""
    stages = recipe["train"]["stages"]
    return sum(s["iterations"] for s in stages) if stages else recipe["train"]["iterations"]
