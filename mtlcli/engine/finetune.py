"""Fine-tuning: start a run from a trained checkpoint (or any state dict), and check class counts.

    mtl train --recipe R --weights CKPT          (or `init_weights = "PATH"` in the recipe's [model])

Every tensor of the file whose name and shape match the new model is loaded; tensors whose shape
differs (a head trained for another number of classes) keep the new model's fresh initialisation and
their modules are named in one line. `pretrained_backbone` stays what it was: ImageNet weights for the
backbone, applied before these.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlcli.errors import UserError

# [model] keys that are not builder arguments
RECIPE_ONLY_MODEL_KEYS = ("init_weights",)


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
                    else "evaluate it on the data it was trained for (--data), "
                    "or fine-tune it with `mtl train --weights`"
                )
            )


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(tensors, classes card or None) of an mtl checkpoint, a {"state_dict": ...} file or a bare state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"--weights {path} does not exist — give a checkpoint (RUN/checkpoints/best.pt) or a state dict file"
        )
    from mtlcli.engine.filekind import foreign_kind

    kind = foreign_kind(path)
    if kind is not None:
        raise UserError(
            f"--weights {path} cannot be read: it is {kind}, not PyTorch weights — give a training checkpoint "
            "(RUN/checkpoints/best.pt) or a state dict file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ) as exc:  # a file that is no pickle fails in many ways
        first = (
            (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if not isinstance(exc, KeyError)
            else "not a pickle"
        )
        raise UserError(
            f"--weights {path} cannot be read ({first}) — give a PyTorch state dict or an mtl checkpoint"
        ) from None
    card = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        card = obj.get("classes") if isinstance(obj.get("classes"), dict) else None
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, dict) else {}
    if not tensors:
        raise UserError(f"--weights {path} holds no tensors — give a PyTorch state dict or an mtl checkpoint")
    return tensors, card


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
    tensors, src_card = read_state_dict(path)
    report = load_matching(model, tensors)
    if report["loaded"] == 0:
        raise UserError(
            f"--weights {path} fits no tensor of model {recipe['model'].get('name')!r} — was it "
            "trained with another model or backbone?"
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
