"""Does a checkpoint fit the data and the recipe it is used with? Checked before any work.

- `check_label_set`: `mtl eval` / `mtl viz` / `--resume` with a prepared dataset of another label set
  (other class names, or only another class count for checkpoints that predate stored names).
- `check_resume_model`: `--resume` with another recipe or a changed [model] key.
- `check_state_shapes`: a checkpoint whose tensors do not fit the model its recipe builds (another
  class count written into the recipe by hand, another version of the model).
Each failure is one UserError line naming both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mtlcli.errors import UserError

# [model] key holding a class count -> (dataset attribute with the class names, what to call them)
COUNT_KEYS = {"num_det_classes": ("det_classes", "detection"), "num_seg_classes": ("seg_classes", "segmentation")}


def dataset_classes(dataset: Any) -> dict[str, list[str]]:
    """{"det_classes": [...], "seg_classes": [...]}: the class names a model trains on (after the label
    map), stored as a checkpoint's "classes" entry (the keys a fuller model card may share)."""
    return {attr: list(getattr(dataset, attr, []) or []) for attr in ("det_classes", "seg_classes")}


def _preview(names: list[str]) -> str:
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{len(names)} ({shown})"


def check_label_set(
    trained: Mapping[str, list[str]] | None,
    model_table: Mapping[str, Any],
    dataset: Any,
    *,
    checkpoint: str | Path,
    data: str | Path,
    action: str,
) -> None:
    """Refuse when the dataset's classes are not the ones the checkpoint was trained on.

    `trained`: the checkpoint's "classes" entry, {"det_classes": [...], "seg_classes": [...], ...}
    (None for older checkpoints: then the class counts of
    its [model] table are compared). Only the kinds the model predicts (its num_*_classes keys) count.
    `action` starts the message, e.g. "eval" or "--resume"."""
    for key, (attr, what) in COUNT_KEYS.items():
        if key not in model_table or not hasattr(dataset, attr):
            continue
        names = list(getattr(dataset, attr))
        known = (trained or {}).get(attr) if isinstance(trained, Mapping) else None
        if known:
            if list(known) == names:
                continue
            ours = _preview(list(known))
        elif model_table[key] == len(names):
            continue
        else:
            ours = str(model_table[key])
        raise UserError(
            f"{action}: {checkpoint} was trained on {ours} {what} classes but {data} has {_preview(names)} — "
            "use the data prepared for that model (same dataset and data.label_map), or train a new run"
        )


class _Unset:
    def __repr__(self) -> str:
        return "unset (the builder's default)"


UNSET = _Unset()


def changed_model_keys(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in the checkpoint, value now) for every [model] key that differs ("name" first);
    a key one side does not set is UNSET."""
    keys = sorted(set(saved) | set(current), key=lambda k: (k != "name", k))
    return [
        (k, saved.get(k, UNSET), current.get(k, UNSET))
        for k in keys
        if _norm(saved.get(k, UNSET)) != _norm(current.get(k, UNSET))
    ]


def check_resume_model(
    saved: Mapping[str, Any], current: Mapping[str, Any], checkpoint: str | Path, fits: bool = False
) -> list[tuple[str, Any, Any]]:
    """Refuse --resume with another model, or with a changed [model] key when the weights no longer fit
    (`fits` False). Keys that leave every tensor's shape as it was (a score threshold, a loss weight)
    are returned for the caller to report in one line each, not refused."""
    changed = changed_model_keys(saved, current)
    for key, a, b in changed:
        if key == "name" or not fits:
            raise UserError(
                f"--resume: model.{key} is {a!r} in {checkpoint} but {b!r} now — resume with the run's own recipe "
                f"(drop --recipe and --set model.{key}), or start a new run with another --out"
            )
    return changed


def state_fits(model: torch.nn.Module, state: Mapping[str, Any]) -> bool:
    """The checkpoint's model tensors have exactly the model's names and shapes."""
    own = model.state_dict()
    return set(own) == set(state) and all(
        tuple(own[k].shape) == tuple(state[k].shape) for k in own if torch.is_tensor(state[k])
    )


def _norm(value: Any) -> Any:
    return [_norm(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_state_shapes(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], checkpoint: str | Path, model_table: Mapping[str, Any]
) -> None:
    """Refuse a checkpoint whose tensors have other shapes than the model's (names the first one)."""
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and torch.is_tensor(tensor) and tuple(own[name].shape) != tuple(tensor.shape):
            counts = ", ".join(f"{k} = {model_table[k]}" for k in COUNT_KEYS if k in model_table)
            raise UserError(
                f"{checkpoint} does not fit the model its recipe builds ({model_table.get('name')!r}"
                f"{', ' + counts if counts else ''}): {name} is {list(tensor.shape)} in the checkpoint but "
                f"{list(own[name].shape)} in the model — another class count or model version; use the recipe "
                "it was trained with"
            )


def check_resume(
    state: Mapping[str, Any],
    recipe: Mapping[str, Any],
    dataset: Any,
    checkpoint: str | Path,
    data: str | Path,
    model: torch.nn.Module | None = None,
) -> None:
    """Everything `--resume` needs to hold before loading `state`: the same label set and model, and a
    [model] table whose changes (if any) leave the weights fitting; those changes are printed."""
    import sys

    saved = (state.get("recipe") or {}).get("model") or {}
    old_map = ((state.get("recipe") or {}).get("data") or {}).get("label_map") or {}
    new_map = (recipe.get("data") or {}).get("label_map") or {}
    if old_map != new_map:

        def shown(m):
            return ", ".join(f"{k}: {len(v)} entries" for k, v in m.items()) or "none"

        raise UserError(
            f"--resume: data.label_map is {{{shown(old_map)}}} in {checkpoint} but {{{shown(new_map)}}} now "
            "(another recipe?) — resume with the run's own recipe (drop --recipe), or start a new run"
        )
    check_label_set(state.get("classes"), saved, dataset, checkpoint=checkpoint, data=data, action="--resume")
    fits = model is not None and state_fits(model, state.get("model") or {})
    for key, a, b in check_resume_model(saved, recipe["model"], checkpoint, fits=fits):
        print(f"note: --resume with model.{key} = {b!r} (the run had {a!r}); the weights still fit", file=sys.stderr)
