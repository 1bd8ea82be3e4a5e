"""Fine-tuning: start a run from a trained checkpoint (or any state dict), and check class counts.

    mtl train --from RUN_OR_CKPT --data MINE     the checkpoint's recipe (architecture, schedule), the
                                                 data's classes (`finetune_recipe`)
    mtl train --recipe R --weights CKPT          (or `init_weights = "PATH"` in the recipe's [model])

Every tensor of the file whose name and shape match the new model is loaded; tensors whose shape
differs (a head trained for another number of classes) keep the new model's fresh initialisation and
their modules are named in one line. With `--weights`, `pretrained_backbone` stays what it was: ImageNet
weights for the backbone, applied before these; `--from` turns it off (the checkpoint has the backbone).

Weights of another architecture are refused in one line (`check_architecture`): a checkpoint whose
recipe names another model or backbone, or (inferred rule, for files without a recipe) one that fits
fewer than half of the model's tensors. `model.partial_weights = true` loads what fits anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlcli.errors import UserError

# [model] keys that are not builder arguments
RECIPE_ONLY_MODEL_KEYS = ("init_weights", "partial_weights")
# inferred: below this share of the model's tensors loaded, a file without a recipe is another architecture
MIN_SHARE = 0.5


def check_class_counts(recipe: dict[str, Any], card: dict[str, Any], whose: str = "the recipe's") -> None:
    """A recipe (or a checkpoint's recipe: `whose`) that fixes num_det_classes / num_seg_classes must agree
    with the data it trains on or is evaluated on (`card`: `modelcard.model_card` of that data)."""
    model = recipe["model"]
    for key, what in (("num_det_classes", "det_classes"), ("num_seg_classes", "seg_classes")):
        if key in model and isinstance(model[key], int) and model[key] != len(card[what]):
            names = card[what]
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise UserError(
                f"{whose} model.{key} = {model[key]} but dataset {card['dataset']!r} has {len(names)} "
                f"{what.replace('_', ' ')} ({shown}) — "
                + (
                    f"drop model.{key} from the recipe (it is then taken from the data) or map the data's classes "
                    "with [data.label_map]"
                    if whose == "the recipe's"
                    else "evaluate it on the data it was trained for (--data), or fine-tune it on this data with "
                    "`mtl train --from CKPT --data DATA`"
                )
            )


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(tensors, classes card or None) of an mtl checkpoint, a {"state_dict": ...} file or a bare state dict."""
    tensors, card, _ = read_weights(path)
    return tensors, card


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any] | None]:
    """(tensors, classes card or None, recipe or None) of an mtl checkpoint, a {"state_dict": ...} file or
    a bare state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"--weights {path} does not exist — give a checkpoint (RUN/checkpoints/best.pt) or a state dict file"
        )
    from mtlcli.engine.filekind import NOT_A_PICKLE, foreign_kind

    kind = foreign_kind(path)
    if kind is not None:
        raise UserError(
            f"--weights {path} cannot be read: it is {kind}, not PyTorch weights — give a training checkpoint "
            "(RUN/checkpoints/best.pt) or a state dict file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except NOT_A_PICKLE as exc:  # a file that is no pickle fails in many ways
        first = (
            (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if not isinstance(exc, KeyError)
            else "not a pickle"
        )
        raise UserError(
            f"--weights {path} cannot be read ({first}) — give a PyTorch state dict or an mtl checkpoint"
        ) from None
    card = recipe = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        card = obj.get("classes") if isinstance(obj.get("classes"), dict) else None
        recipe = obj.get("recipe") if isinstance(obj.get("recipe"), dict) else None
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, dict) else {}
    if not tensors:
        raise UserError(f"--weights {path} holds no tensors — give a PyTorch state dict or an mtl checkpoint")
    return tensors, card, recipe


def load_matching(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Copy every tensor of `tensors` whose name and shape match into `model`.

    Returns {"loaded": n, "total": tensors of the model, "reinitialised": [module names whose tensors
    differ in shape], "missing": n model tensors absent from the file}."""
    own = model.state_dict()
    # a DDP-saved file prefixes every key with "module."
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    load, reinit, missing = {}, [], 0
    for name, value in own.items():
        src = tensors.get(name)
        if src is None:
            missing += 1
        elif tuple(src.shape) != tuple(value.shape):
            module = name.rsplit(".", 1)[0]
            if module not in reinit:
                reinit.append(module)
        else:
            load[name] = src.to(value.dtype)
    model.load_state_dict(load, strict=False)  # only the tensors that fit; the rest stays initialised
    return {"loaded": len(load), "total": len(own), "reinitialised": reinit, "missing": missing}


def init_weights(
    model: nn.Module, recipe: dict[str, Any], card: dict[str, Any] | None, log: Callable[[str], None] | None = print
) -> dict[str, Any] | None:
    """Apply the recipe's `model.init_weights` to a freshly built model; None when it names no file."""
    path = recipe["model"].get("init_weights")
    if not path:
        return None
    tensors, src_card, src_recipe = read_weights(path)
    if not recipe["model"].get("partial_weights"):
        check_architecture(src_recipe, recipe, path)
    report = load_matching(model, tensors)
    if report["loaded"] == 0:
        raise UserError(
            f"--weights {path} fits no tensor of model {recipe['model'].get('name')!r} — was it "
            "trained with another model or backbone?"
        )
    if not recipe["model"].get("partial_weights") and report["loaded"] < MIN_SHARE * report["total"]:
        raise UserError(
            f"--weights {path} fits only {report['loaded']}/{report['total']} tensors of model "
            f"{recipe['model'].get('name')!r}: another architecture — give weights of this model, or "
            "--set model.partial_weights=true to load what fits"
        )
    if log is not None:
        classes = ""
        if src_card and card:
            classes = (
                f"; classes {len(src_card['det_classes'])} det / {len(src_card['seg_classes'])} seg -> "
                f"{len(card['det_classes'])} det / {len(card['seg_classes'])} seg"
            )
        reinit = ", ".join(report["reinitialised"]) or "none"
        log(
            f"weights from {path}: {report['loaded']}/{report['total']} tensors loaded{classes}; "
            f"re-initialised (shape differs): {reinit}"
        )
    return report


def check_weights_fit(recipe: dict[str, Any]) -> None:
    """Before the model is built (and ImageNet weights fetched for it): `model.init_weights` of another
    architecture is refused (`check_architecture`) unless `model.partial_weights = true`."""
    path = recipe["model"].get("init_weights")
    if path and not recipe["model"].get("partial_weights"):
        check_architecture(read_weights(path)[2], recipe, path)


def backbone_of(model: dict[str, Any]) -> str:
    """`model.backbone` of a [model] table, or its builder's default ("" where the builder has none)."""
    from mtlcli.models import MODELS, builder_arguments

    if "backbone" in model:
        return str(model["backbone"])
    name = model.get("name")
    if name not in MODELS:
        return ""
    default = builder_arguments(name).get("backbone")
    return default if isinstance(default, str) else ""


def check_architecture(src_recipe: dict[str, Any] | None, recipe: dict[str, Any], path: str | Path) -> None:
    """Weights from a checkpoint whose recipe builds another model or backbone: one UserError naming both
    (before any ImageNet weight is fetched for a backbone the file would replace). Files without a
    recipe are judged by how much of the model they fit (`init_weights`)."""
    if not src_recipe or not isinstance(src_recipe.get("model"), dict):
        return
    old, new = src_recipe["model"], recipe["model"]
    a, b = (old.get("name"), backbone_of(old)), (new.get("name"), backbone_of(new))
    if a != b:
        raise UserError(
            f"--weights {path} is {a[0]} with backbone {a[1] or '?'} but the recipe builds {b[0]} with backbone "
            f"{b[1] or '?'} — fine-tune it with its own architecture (`mtl train --from {path} --data DATA`), or "
            "--set model.partial_weights=true to load the tensors that fit"
        )


def checkpoint_of(source: str | Path) -> Path:
    """The checkpoint `--from` names: a file, or a run directory's reported checkpoint."""
    from mtlcli.engine.checkpoint import find_run_checkpoint

    source = Path(source).expanduser()
    if source.is_dir():
        return find_run_checkpoint(source)
    if not source.is_file():
        raise UserError(f"--from {source} does not exist — give a run directory (runs/NAME/expN) or a checkpoint file")
    return source


def finetune_recipe(source: str | Path, data: Path | None) -> tuple[dict[str, Any], Path]:
    """(recipe, checkpoint) of `mtl train --from SOURCE --data DATA`: the checkpoint's own recipe —
    architecture, augmentation, schedule, evaluation — with the class counts left to the data, the
    data's label set (no label map of the old data), starting from the checkpoint's weights
    (`init_weights`), without ImageNet weights (the checkpoint holds the backbone)."""
    from mtlcli.data.prepared import DatasetMeta
    from mtlcli.engine.checkpoint import load_checkpoint

    path = checkpoint_of(source).resolve()
    state = load_checkpoint(path)
    old = state.get("recipe")
    if not isinstance(old, dict) or not isinstance(old.get("model"), dict):
        raise UserError(
            f"--from {path} carries no recipe — give a checkpoint written by `mtl train`, or use "
            "--recipe R --weights FILE"
        )
    skip = ("num_det_classes", "num_seg_classes", *RECIPE_ONLY_MODEL_KEYS)
    model = {k: v for k, v in old["model"].items() if k not in skip}
    if "pretrained_backbone" in model:
        model["pretrained_backbone"] = False
    model["init_weights"] = str(path)
    recipe = {**old, "model": model, "data": {**old.get("data", {}), "label_map": {}}}
    if data is not None:
        root = data.expanduser().resolve()
        recipe["data"]["root"] = str(root)
        if (root / "dataset.json").is_file():
            meta = DatasetMeta.load(root)
            recipe["data"]["dataset"] = meta.name
            if recipe["data"].get("test_split") and recipe["data"]["test_split"] not in meta.splits:
                recipe["data"]["test_split"] = ""  # the old data's test split: none here
    return recipe, path
