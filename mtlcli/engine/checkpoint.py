"""Checkpoints: atomic writes, safe loads, RNG state, and `load_for_eval` for `mtl eval` / `mtl viz`.

A checkpoint is a plain dict saved with `torch.save` and read with `torch.load(weights_only=True)`:
    model       state_dict of the bare model (never the DDP wrapper)
    optimizer, schedule, scaler   their state_dicts
    iteration   completed iterations
    rng         one entry per process (rank order): python / numpy / torch / cuda generator states
    best        {"metric": name, "value": float, "iteration": int} or {}
    recipe      the resolved recipe (with the class counts filled in from the dataset)
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlcli.errors import UserError


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (`mtlcli.safety.atomic_save`: a temporary file in the same
    folder, fsynced, the user's umask, then a rename), so an interrupted write never leaves a truncated
    checkpoint behind. A failed write (disk full, read-only file system) is the OSError it was, which
    `mtl` reports as one line, not torch's "[enforce fail at inline_container.cc]"."""
    from mtlcli.safety import atomic_save

    def write(f) -> None:
        recorder = _WriteRecorder(f)
        try:
            torch.save(state, recorder)  # type: ignore[arg-type]  # a file object: write and flush are all it uses
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise

    atomic_save(Path(path), write)


class _WriteRecorder:
    """A file wrapper that remembers the OSError of a failed write: torch.save turns it into a RuntimeError."""

    def __init__(self, f) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; a missing or corrupt file is a UserError."""
    import warnings

    from mtlcli.engine.filekind import INSTEAD, NOT_A_PICKLE, foreign_kind

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist — check the path or train first with `mtl train`")
    kind = foreign_kind(path)
    if kind is not None:
        raise UserError(f"checkpoint {path} cannot be read: it is {kind}, not an mtl checkpoint — {INSTEAD}")
    try:
        with warnings.catch_warnings():  # torch's own advice about weights_only would bury the one line below
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except NOT_A_PICKLE as exc:  # torch's own text runs to hundreds of characters
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first if len(first) <= 100 else first[:97] + "..."
        raise UserError(
            f"checkpoint {path} cannot be read ({first}) — it is corrupt or not an mtl checkpoint"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):  # a tensor, a list, ...
        raise UserError(
            f"checkpoint {path} is not an mtl checkpoint (no model state) — give a file from RUN/checkpoints"
        )
    return state


# ------------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict[str, Any]:
    """Every global generator's state in types that `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------------------------------------- for eval


@contextlib.contextmanager
def preserved_rng():
    """Run a block without moving python's, numpy's or torch's global generators."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def reported_checkpoint(run: Path) -> str:
    """ "last" or "best": the file a run's number is reported from (`[eval] checkpoint` of RUN/recipe.toml;
    "last", the model at the end of the schedule, where the recipe does not say)."""
    import tomllib

    try:
        which = tomllib.loads((Path(run) / "recipe.toml").read_text()).get("eval", {}).get("checkpoint", "last")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        which = "last"
    return which if which in ("last", "best") else "last"


def find_run_checkpoint(run: Path) -> Path:
    """The run's reported checkpoint (`reported_checkpoint`: RUN/checkpoints/last.pt, or best.pt where the
    recipe reports it), else the other one."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist — give the --out folder of an `mtl train` run")
    first = reported_checkpoint(run)
    for name in (f"{first}.pt", "best.pt" if first == "last" else "last.pt"):
        p = checkpoint_dir(run) / name
        if p.is_file():
            return p
    raise UserError(f"{run} has no checkpoints/best.pt or checkpoints/last.pt — train it first with `mtl train`")


def model_from_checkpoint(state: dict[str, Any], path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(the model of a loaded checkpoint with its weights, on the CPU, in train mode; its recipe)."""
    from mtlcli.models import build_from_recipe

    recipe = state.get("recipe")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("model"), dict):
        raise UserError(f"checkpoint {path} carries no recipe — it was not written by `mtl train`")
    from mtlcli.recipes import validate_model

    # the recipe inside a checkpoint gets the checks of a recipe file: a score_thresh of 7 would give no
    # detection, a negative growth rate or a width of 10**9 would fail deep inside the builder
    validate_model(recipe["model"], f"checkpoint {path}")
    # the trained weights replace ImageNet's: do not download them
    model = build_from_recipe(recipe["model"], load_weights=False)
    from mtlcli.engine.compat import check_state_shapes

    check_state_shapes(model, state["model"], path, recipe["model"])
    missing, unexpected = model.load_state_dict(state["model"], strict=False)  # see the one line below
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not fit model {recipe['model']['name']!r} "
            f"(missing {len(missing)}, unexpected {len(unexpected)} keys, e.g. {(missing or unexpected)[0]}) — "
            "was it written by a different version of the model?"
        )
    _check_class_names(state.get("classes"), recipe["model"], path)
    return model, recipe


def _check_class_names(card: Any, model: dict[str, Any], path: Path) -> None:
    """The class names a checkpoint carries must be as many as its model's outputs."""
    if not isinstance(card, dict):
        return
    from mtlcli.engine.compat import COUNT_KEYS

    for key, (field, task) in COUNT_KEYS.items():
        count, names = model.get(key), card.get(field)
        if isinstance(count, int) and isinstance(names, list) and len(names) != count:
            raise UserError(
                f"checkpoint {path} names {len(names)} {task} classes but its model has {count} {task} outputs "
                "— the file was edited or mixed up; use the checkpoint `mtl train` wrote"
            )


def load_for_eval(
    run: Path | None = None, checkpoint: Path | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any], Path | None]:
    """Build the model of a run (or of one checkpoint file) with its weights, in eval mode.

    Returns (model on `device` in eval mode, the resolved recipe stored in the checkpoint, the prepared
    dataset root the recipe names, or None when that folder does not exist here).
    """
    if (run is None) == (checkpoint is None):
        raise UserError("give either a run directory (--run) or a checkpoint file (--checkpoint), not both")
    path = find_run_checkpoint(Path(run)) if run is not None else Path(checkpoint)  # type: ignore[arg-type]  # one of the two
    state = load_checkpoint(path)
    model, recipe = model_from_checkpoint(state, path)
    model.to(device).eval()
    from mtlcli.recipes import data_root

    root = data_root(recipe)
    # model.trained_classes: the class names it was trained on ({"det_classes": [...], "seg_classes": [...], ...};
    # None for checkpoints older than that entry), for `mtlcli.engine.compat.check_label_set`
    model.trained_classes = state.get("classes")  # type: ignore[assignment]  # our attribute on the nn.Module
    return model, recipe, root if (root / "dataset.json").is_file() else None
