"""Recipes: one TOML file per training setup, one optional level of `extends`, typed `--set` overrides.

    extends = "ivanet300"        # optional: a recipe name (recipes/<name>.toml) or a path
    [model]  name = registry name; every other key is a builder keyword argument
    [data]   dataset, root, train_split, val_split, test_split, allow_overlap, cache, augmentation + options,
             [data.label_map]
    [train]  optimiser, schedule, iterations, batch_size, stages, ...
    [eval]   metrics, interval, best_metric, batch_size, resolution, checkpoint ("last" | "best": the
             reported file), select_split (where best.pt is selected: never test*, see `selection_split`)

`load_recipe(name_or_path, overrides)` returns the resolved recipe: the base merged under the child
(key by key within each table), every default filled in for [data], [train] and [eval], the overrides
applied and everything validated. [model] keeps only the keys the recipe sets; they are checked against
the registered builder's keyword arguments. `dump_toml` writes a resolved recipe back as TOML.

`train.batch_size` is the global batch: images per optimiser step summed over all processes. Each
process runs `accumulate` micro-batches of `batch_size / (world_size * accumulate)` images per step, so
the same recipe gives the same optimisation on one process or under `torchrun`.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from mtlcli.errors import UserError
from mtlcli.metrics import METRIC_NAMES as METRICS  # names only: listing recipes imports no model
from mtlcli.recipe_checks import (  # noqa: F401 (selection_split: re-exported)
    selection_split,
    settle_iterations,
    shorten_schedule,
    total_iterations,
)
from mtlcli.recipe_toml import dump_toml  # noqa: F401 (re-exported: RUN/recipe.toml is written through it)

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("train", "optimizer"): ("sgd", "adam", "adamw"),
    ("train", "schedule"): ("multistep", "poly", "cosine", "constant"),
    ("train", "amp"): ("none", "bf16", "fp16"),
    ("data", "cache"): ("none", "ram"),  # mtlcli.data.cache.MODES
    ("eval", "checkpoint"): ("last", "best"),
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "dataset": "",
        "root": "",
        "train_split": "train",
        "val_split": "val",
        "augmentation": "none",
        "min_size": 0,
        "max_size": 0,
        "scale_range": [1.0, 1.0],
        "crop_size": [0, 0],
        "flip": True,
        "label_map": {},
        "test_split": "",
        "allow_overlap": False,
        "cache": "none",
    },
    "train": {
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "schedule": "multistep",
        "steps": [],
        "gamma": 0.1,
        "power": 0.9,
        "restart_every": 0,
        "warmup_iters": 0,
        "warmup_factor": 0.001,
        "iterations": 1000,
        "batch_size": 8,
        "workers": 2,
        "accumulate": 1,
        "grad_clip": 0.0,
        "amp": "none",
        "channels_last": False,
        "sync_bn": False,
        "seed": 0,
        "deterministic": False,
        "log_interval": 20,
        "checkpoint_interval": 1000,
        "tensorboard": False,
        "loss_weights": {},
        "stages": [],
    },
    "eval": {
        "metrics": [],
        "interval": 1000,
        "best_metric": "",
        "batch_size": 8,
        "resolution": [0, 0],
        # the file the reported number comes from (`mtl eval --run` scores it); the papers report "last"
        "checkpoint": "last",
        # the split best.pt is selected on: "" = data.val_split, "none" = no best.pt; never test*, and for
        # checkpoint = "best" neither val_split nor test_split (a held-out part of the training data)
        "select_split": "",
        # the panoptic merge (mtlcli/ops/panoptic.py; Panoptic FPN's defaults)
        "panoptic_score": 0.5,
        "panoptic_overlap": 0.5,
        "panoptic_stuff_area": 4096,
    },
}

STAGE_DEFAULTS: dict[str, Any] = {"name": "", "iterations": 0, "lr": 0.0, "loss_weights": {}, "freeze": []}
# [data] keys that describe the dataset; every other [data] key is an option of `build_transforms`.
# test_split: a second evaluation split (the paper's test set) that `mtl train` checks for overlap with
# train_split like val_split; allow_overlap = true lets a train split share images with them.
# cache = "ram" keeps the decoded training images and label maps in memory (mtlcli.data.cache).
DATA_KEYS = (
    "dataset",
    "root",
    "train_split",
    "val_split",
    "augmentation",
    "label_map",
    "test_split",
    "allow_overlap",
    "cache",
)


def augmentation_defaults() -> dict[str, Any]:
    """Every augmentation option `build_transforms` accepts, with its default (all valid [data] keys)."""
    from mtlcli.data.transforms import OPTIONS

    return {**{k: v for k, v in DEFAULTS["data"].items() if k not in DATA_KEYS}, **OPTIONS}


def section_keys(section: str) -> dict[str, Any]:
    """Valid keys of a section with their defaults ([data] includes the optional augmentation options)."""
    if section == "data":
        return {**augmentation_defaults(), **DEFAULTS["data"]}
    return DEFAULTS[section]


# Element types of list-valued keys (for type checks and `--set` parsing).
_LIST_ITEMS = {
    "betas": float,
    "steps": int,
    "scale_range": float,
    "crop_size": int,
    "metrics": str,
    "freeze": str,
    "resolution": int,
}
_PAIRS = ("betas", "scale_range", "crop_size")


# --------------------------------------------------------------------------------------------- finding


def available_recipes() -> list[str]:
    """Names of the recipes shipped in `recipes/`."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def find_recipe(name_or_path: str | Path, *, relative_to: Path | None = None) -> Path:
    """A recipe's file: an existing path (or relative to the extending recipe), else recipes/<name>.toml."""
    text = str(name_or_path)
    candidates = [Path(text)]
    if relative_to is not None:
        candidates.insert(0, relative_to / text)
    for p in candidates:
        if p.suffix == ".toml" and p.is_file():
            return p
    named = RECIPES_DIR / f"{Path(text).stem if text.endswith('.toml') else text}.toml"
    if "/" not in text and named.is_file():
        return named
    if text.endswith(".toml") or "/" in text:
        raise UserError(f"recipe file {text} does not exist — give a path to a .toml file or a recipe name")
    import difflib

    names = available_recipes()
    close = difflib.get_close_matches(text, names, n=4, cutoff=0.6)
    if close:
        raise UserError(f"unknown recipe {text!r}; did you mean {', '.join(close)}? (`mtl recipes` lists all)")
    raise UserError(f"unknown recipe {text!r}; valid recipes: {', '.join(names) or '(none)'}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML ({exc}) — fix the file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file — give a TOML recipe") from None


def recipe_name(name_or_path: str | Path) -> str:
    """The short name of a recipe (its file stem), used for the default run directory."""
    return Path(str(name_or_path)).stem


# --------------------------------------------------------------------------------------------- loading


def load_recipe(
    name_or_path: str | Path,
    overrides: list[str] | None = None,
    *,
    check_model: bool = True,
    scale_schedule: bool = True,
    notes: list[str] | None = None,
) -> dict:
    """Read, merge with its base, fill defaults, apply `--set` overrides and validate.

    A `--set train.iterations=N` other than the recipe's length scales its stages and (with
    `scale_schedule`; off for `--resume`, whose schedule has partly run) its warm-up, milestones and
    eval / checkpoint periods by the same factor, except keys also set explicitly; the line that says
    so is appended to `notes`. Raises UserError naming the file and key for anything wrong.
    """
    path = find_recipe(name_or_path)
    raw = read_toml(path)
    base_ref = raw.pop("extends", None)
    if base_ref is not None:
        if not isinstance(base_ref, str):
            raise UserError(f"{path}: 'extends' must be a recipe name or path (a string)")
        base_path = find_recipe(base_ref, relative_to=path.parent)
        base = read_toml(base_path)
        if "extends" in base:
            raise UserError(
                f"{path} extends {base_path}, which itself extends {base['extends']!r}; "
                "only one level of extends is allowed — copy the keys into one recipe"
            )
        raw = merge(base, raw)
    return finish_recipe(
        resolve(raw, source=str(path)),
        overrides,
        source=str(path),
        check_model=check_model,
        scale_schedule=scale_schedule,
        notes=notes,
    )


def finish_recipe(
    recipe: dict,
    overrides: list[str] | None = None,
    *,
    source: str = "recipe",
    check_model: bool = True,
    scale_schedule: bool = True,
    notes: list[str] | None = None,
) -> dict:
    """A resolved recipe (`resolve`: read from a file, or a checkpoint's for `mtl train --from`) with the
    `--set` overrides applied, validated, and its stages and schedule fitted to train.iterations."""
    planned = total_iterations(recipe)  # the recipe's own length, before --set
    explicit = set()  # in a recipe file, stages decide; `--set train.iterations` scales them
    base = copy.deepcopy(recipe)  # the file's own recipe: a failing --set is named, not the file
    for item in overrides or []:
        apply_override(recipe, item)
        explicit.add(item.split("=", 1)[0].strip())
    validate_blaming_overrides(recipe, base, overrides or [], source, check_model)
    settle_iterations(recipe, "train.iterations" in explicit)
    note = shorten_schedule(recipe, planned, total_iterations(recipe), explicit, scale_schedule)
    if note and notes is not None:
        notes.append(note)
    return recipe


def validate_blaming_overrides(recipe: dict, base: dict, overrides: list[str], source: str, check_model: bool) -> None:
    """`validate(recipe)`, where a failure that a `--set` brings in names that `--set`, not the recipe file:
    the recipe before its overrides (`base`, resolved) is validated alone, then with the overrides added one
    by one."""
    try:
        validate(recipe, source=source, check_model=check_model)
    except UserError:
        if not overrides:
            raise
        trial = copy.deepcopy(base)
        try:
            validate(trial, source=source, check_model=check_model)
        except UserError:
            raise  # the file itself (or the overrides only together) — the first error stands
        for item in overrides:
            apply_override(trial, item)
            validate(trial, source=f"--set {item.strip()!r}", check_model=check_model)
        raise


def merge(base: dict, child: dict) -> dict:
    """Child keys replace the base's key by key inside each table (tables one level deep)."""
    out = copy.deepcopy(base)
    for section, table in child.items():
        if isinstance(table, dict) and isinstance(out.get(section), dict):
            out[section].update(copy.deepcopy(table))
        else:
            out[section] = copy.deepcopy(table)
    return out


def resolve(raw: dict, *, source: str = "recipe") -> dict:
    """Fill every default of [data], [train], [eval]; reject unknown sections and keys."""
    unknown = sorted(set(raw) - {"model", *DEFAULTS})
    if unknown:
        raise UserError(f"{source}: unknown section(s) {', '.join(unknown)}; valid: model, data, train, eval")
    recipe: dict[str, Any] = {"model": copy.deepcopy(raw.get("model", {}))}
    for section, defaults in DEFAULTS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise UserError(f"{source}: [{section}] must be a table")
        valid = section_keys(section)
        bad = sorted(set(table) - set(valid))
        if bad:
            raise UserError(
                f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in bad)}; "
                f"valid [{section}] keys: {', '.join(valid)}"
            )
        recipe[section] = {**copy.deepcopy(defaults), **copy.deepcopy(table)}
    stages = []
    for i, stage in enumerate(recipe["train"]["stages"]):
        if not isinstance(stage, dict):
            raise UserError(f"{source}: train.stages[{i}] must be a table ([[train.stages]])")
        bad = sorted(set(stage) - set(STAGE_DEFAULTS))
        if bad:
            raise UserError(
                f"{source}: unknown key(s) {', '.join(bad)} in train.stages[{i}]; valid: {', '.join(STAGE_DEFAULTS)}"
            )
        stages.append({**copy.deepcopy(STAGE_DEFAULTS), "name": f"stage{i + 1}", **stage})
    recipe["train"]["stages"] = stages
    return recipe


# ------------------------------------------------------------------------------------------ overrides


def parse_value(text: str) -> Any:
    """A `--set` value as TOML (numbers, booleans, lists, inline tables); anything else is a string.
    It must be exactly one value: a newline or other control character, or TOML that parses to more than
    the one key (`0.001\\n[model]...`), is a UserError — it would be dropped silently, or written into
    the run's recipe.toml as keys of its own."""
    if any(not ch.isprintable() for ch in text):
        raise UserError(
            f"--set value {text!r} holds a newline or another control character; give exactly one TOML value "
            "on one line (e.g. --set train.lr=0.001)"
        )
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    if set(parsed) != {"v"}:
        raise UserError(f"--set value {text!r} is more than one TOML value; give exactly one (e.g. train.lr=0.001)")
    return parsed["v"]


def apply_override(recipe: dict, item: str) -> None:
    """Apply one `section.key=value` to a resolved recipe, converting the value to the key's type."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=0.001")
    key, text = item.split("=", 1)
    if not key.strip().isprintable():
        raise UserError(f"--set {item!r}: the key holds a newline or another control character")
    parts = key.strip().split(".")
    section = parts[0]
    if section not in recipe or len(parts) < 2:
        raise UserError(f"--set {item!r}: key must be one of model.*, data.*, train.*, eval.* (e.g. train.lr=0.001)")
    table, name = recipe[section], parts[1]
    if name == "stages":
        raise UserError(f"--set {item!r}: stages cannot be set from the command line — edit the recipe file")
    if section != "model" and name not in section_keys(section):
        raise UserError(f"--set {item!r}: unknown key {section}.{name}; valid: {', '.join(section_keys(section))}")
    value = parse_value(text.strip())
    if len(parts) == 3 and isinstance(table.get(name), dict):  # e.g. train.loss_weights.loss_seg=0.5
        table[name] = {**table[name], parts[2]: value}
        return
    if len(parts) > 2:
        raise UserError(f"--set {item!r}: {section}.{name} has no sub-keys")
    if section == "model":
        default = _builder_default(table.get("name"), name)
    else:
        default = section_keys(section)[name]
    if isinstance(default, str) and not isinstance(value, str):
        value = text.strip()  # e.g. --set model.failure=nan: a string key keeps the text as written
    table[name] = coerce(value, default, name)


def _builder_default(model_name: Any, key: str) -> Any:
    from mtlcli.models import MODELS, builder_arguments

    if not isinstance(model_name, str) or model_name not in MODELS:
        return None  # validation reports the model name
    default = builder_arguments(model_name).get(key)
    return None if default is inspect.Parameter.empty else default


def coerce(value: Any, like: Any, name: str) -> Any:
    """Convert a parsed override to the type of `like` where that is lossless (1 -> 1.0, a -> [a])."""
    if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(like, list) and not isinstance(value, list):
        if isinstance(value, str) and name in _LIST_ITEMS and _LIST_ITEMS[name] is str:
            return [v.strip() for v in value.split(",") if v.strip()]
        return [value]
    if isinstance(like, list) and _LIST_ITEMS.get(name) is float:
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


# ------------------------------------------------------------------------------------------ validation


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _check_type(value: Any, default: Any, where: str, item: type | None = None) -> None:
    ok: bool
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"{where} must be {_kind(default)}, got {value!r}")
    if isinstance(value, list) and item is not None:
        for v in value:
            good = (
                isinstance(v, str)
                if item is str
                else (isinstance(v, (int, float)) and not isinstance(v, bool) and (item is float or isinstance(v, int)))
            )
            if not good:
                raise UserError(f"{where} must be a list of {item.__name__}s, got {value!r}")


def validate(recipe: dict, *, source: str = "recipe", check_model: bool = True) -> None:
    """Types, choices and cross-key rules of a resolved recipe; [model] against the builder."""
    for section in DEFAULTS:
        for key, default in section_keys(section).items():
            value = recipe[section].get(key)
            if key in ("scale_range", "crop_size") and isinstance(value, (int, float)) and not isinstance(value, bool):
                continue  # one number stands for both sides
            if key in recipe[section]:
                choices = CHOICES.get((section, key))
                if choices and not isinstance(value, str):  # e.g. cache = true: say what is valid
                    raise UserError(f"{source}: {section}.{key} = {value!r}; valid: {', '.join(choices)}")
                _check_type(recipe[section][key], default, f"{source}: {section}.{key}", _LIST_ITEMS.get(key))
    for (section, key), choices in CHOICES.items():
        if recipe[section][key] not in choices:
            raise UserError(f"{source}: {section}.{key} = {recipe[section][key]!r}; valid: {', '.join(choices)}")
    data, train, ev = recipe["data"], recipe["train"], recipe["eval"]
    if not data["dataset"]:
        raise UserError(f'{source}: data.dataset is not set — name the prepared dataset (e.g. "synthetic")')
    for key in _PAIRS:
        table = train if key == "betas" else data
        if isinstance(table[key], list) and len(table[key]) != 2:
            raise UserError(f"{source}: {key} must have two values, got {table[key]!r}")
    if len(ev["resolution"]) != 2 or min(ev["resolution"]) < 0:
        raise UserError(
            f"{source}: eval.resolution must be [H, W] (or [0, 0]: the source resolution), got {ev['resolution']!r}"
        )
    for key in ("iterations", "batch_size", "accumulate", "log_interval", "checkpoint_interval"):
        if train[key] < 1:
            raise UserError(f"{source}: train.{key} must be at least 1, got {train[key]}")
    if train["workers"] < 0 or ev["interval"] < 0 or ev["batch_size"] < 1:
        raise UserError(f"{source}: train.workers and eval.interval must be >= 0, eval.batch_size >= 1")
    if train["lr"] <= 0 and not train["stages"]:
        raise UserError(f"{source}: train.lr must be positive, got {train['lr']}")
    if any(not math.isfinite(v) for v in (train["lr"], train["weight_decay"], train["grad_clip"])):
        raise UserError(f"{source}: train.lr, weight_decay and grad_clip must be finite numbers")
    if train["steps"] != sorted(train["steps"]):
        raise UserError(f"{source}: train.steps must be increasing, got {train['steps']}")
    for name, w in train["loss_weights"].items():
        _check_type(w, 1.0, f"{source}: train.loss_weights.{name}")
    bad = [m for m in ev["metrics"] if m not in METRICS]
    if bad:
        raise UserError(f"{source}: unknown metric(s) {', '.join(bad)} in eval.metrics; valid: {', '.join(METRICS)}")
    if ev["best_metric"] and ev["best_metric"] not in ev["metrics"]:
        raise UserError(f"{source}: eval.best_metric {ev['best_metric']!r} is not among eval.metrics {ev['metrics']}")
    label_map = data["label_map"]
    for key, table in label_map.items():
        if (
            key not in ("seg", "det")
            or not isinstance(table, dict)
            or not all(isinstance(v, str) for v in table.values())
        ):
            raise UserError(
                f"{source}: data.label_map.{key} is invalid; valid: seg and det, each a table of "
                "source class name -> new class name"
            )
    for i, stage in enumerate(train["stages"]):
        where = f"{source}: train.stages[{i}] ({stage['name']})"
        for key, default in STAGE_DEFAULTS.items():
            _check_type(stage[key], default, f"{where}.{key}", _LIST_ITEMS.get(key))
        if stage["iterations"] < 1 or stage["lr"] <= 0:
            raise UserError(f"{where}: iterations and lr must be positive")
        for name, w in stage["loss_weights"].items():
            _check_type(w, 1.0, f"{where}.loss_weights.{name}")
    from mtlcli.recipe_checks import check_ranges, check_selection

    check_ranges(recipe, source)
    check_selection(recipe, selection_split(recipe), source)
    if check_model:
        validate_model(recipe["model"], source)


def validate_model(model: dict, source: str = "recipe") -> None:
    """[model] must name a registered model and use only its builder's keyword arguments."""
    from mtlcli.models import MODELS, builder_arguments

    name = model.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"{source}: [model] needs name = one of {', '.join(sorted(MODELS))}")
    if name not in MODELS:
        raise UserError(f"{source}: unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    valid = builder_arguments(name)
    for key, value in model.items():
        if key == "name":
            continue
        if key == "init_weights":  # a weights file to start from (mtlcli.engine.finetune), not a builder argument
            if not isinstance(value, str):
                raise UserError(f"{source}: model.init_weights must be a path (a string), got {value!r}")
            continue
        if key == "partial_weights":  # load init_weights of another architecture as far as they fit
            if not isinstance(value, bool):
                raise UserError(f"{source}: model.partial_weights must be true or false, got {value!r}")
            continue
        if key not in valid:
            raise UserError(f"{source}: model {name!r} has no argument {key!r}; valid: {', '.join(sorted(valid))}")
        default = valid[key]
        if default is None or default is inspect.Parameter.empty:
            continue
        # Numbers may be given as a pair (sizes), tuples as lists; otherwise the default's kind.
        if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, list):
            continue
        if isinstance(default, tuple) and isinstance(value, list):
            continue
        if key == "pretrained_backbone" and isinstance(value, str):
            continue  # a local weights file: true downloads from torchvision, a path reads it offline
        if key == "min_size" and isinstance(value, str):
            continue  # a continuous range "LO-HI" of training sizes (the two-stage models check it)
        _check_type(value, default, f"{source}: model.{key}")
    from mtlcli.recipe_checks import check_model_ranges

    check_model_ranges(model, source)


def data_root(recipe: dict) -> Path:
    """The prepared dataset: `[data].root` (which `--data` sets), else `$MTL_DATA/<dataset>` (default ./data)."""
    data = recipe["data"]
    if data["root"]:
        return Path(data["root"]).expanduser()
    return Path(os.environ.get("MTL_DATA", "data")) / data["dataset"]
