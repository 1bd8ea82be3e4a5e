"""A trained run loaded for drawing and predicting: the model, its recipe, the prepared dataset when it is
here, the class names and palette its outputs are drawn with (`class_info`), and where its pictures go
(`output_dir`: RUN/viz unless --out says otherwise). What every model-based `mtl viz` command shares.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from mtlcli.errors import UserError
from mtlcli.viz.draw import class_colors


@dataclasses.dataclass
class ClassInfo:
    """Names and colours a run's outputs are drawn with.

    det_classes[k - 1] names detection label k (1..K); seg_classes[c] and palette[c] (RGB 0..255) belong
    to `sem_seg` channel c. `cityscapes` is True when the colours are the official Cityscapes ones.
    """

    det_classes: list[str]
    seg_classes: list[str]
    palette: list[list[int]]
    cityscapes: bool = False


def class_info(recipe: dict[str, Any], root: Path | None) -> ClassInfo:
    """The classes of a run: from its prepared dataset (with the recipe's label map) when `root` holds
    one, else the Cityscapes table for Cityscapes-layout data, else "class k" names and tab20 colours
    sized by the recipe's `num_det_classes` / `num_seg_classes`."""
    from mtlcli.data.dataset import resolve_label_map
    from mtlcli.data.prepared import DatasetMeta

    label_map = recipe.get("data", {}).get("label_map") or None
    model_kw = recipe.get("model", {})
    meta = None
    if root is not None and (Path(root) / "dataset.json").is_file():
        meta = DatasetMeta.load(root)
    elif recipe.get("data", {}).get("dataset") in ("cityscapes", "synthetic"):
        from mtlcli.data.cityscapes import cityscapes_meta

        meta = cityscapes_meta(Path(""), ["val"])
    if meta is not None:
        mapped = resolve_label_map(meta, label_map)
        return ClassInfo(mapped.det_classes, mapped.seg_classes, mapped.palette, meta.name == "cityscapes")
    n_det = int(model_kw.get("num_det_classes") or 0)
    n_seg = int(model_kw.get("num_seg_classes") or 0)
    return ClassInfo(
        [f"class {k}" for k in range(1, n_det + 1)],
        [f"class {c}" for c in range(n_seg)],
        [list(c) for c in class_colors(n_seg)],
    )


@dataclasses.dataclass
class LoadedRun:
    """A trained model ready for drawing: model in eval mode on `device`, its resolved recipe, the
    prepared dataset root (None when not here), class names / palette, and the default output folder
    (RUN/viz, or None for a checkpoint outside a run directory)."""

    model: nn.Module
    recipe: dict[str, Any]
    root: Path | None
    classes: ClassInfo
    viz_dir: Path | None
    device: str


def load_run(
    run: Path | None = None, checkpoint: Path | None = None, *, data: Path | None = None, device: str = "cpu"
) -> LoadedRun:
    """`load_for_eval` plus what drawing needs; `data` replaces the recipe's dataset root."""
    from mtlcli.engine.checkpoint import load_for_eval

    model, recipe, root = load_for_eval(run=run, checkpoint=checkpoint, device=device)
    if data is not None:
        if not (Path(data) / "dataset.json").is_file():
            raise UserError(
                f"--data {data} is not a prepared dataset (no dataset.json) — give the --out of `mtl prepare`"
            )
        root = Path(data)
    if run is not None:
        viz_dir: Path | None = Path(run) / "viz"
    else:
        ckpt = Path(checkpoint)  # type: ignore[arg-type]  # load_for_eval took exactly one of the two
        # RUN/checkpoints/x.pt belongs to RUN; a loose checkpoint file has no run to write into
        viz_dir = ckpt.parent.parent / "viz" if ckpt.parent.name == "checkpoints" else None
    return LoadedRun(model, recipe, root, class_info(recipe, root), viz_dir, str(device))


def output_dir(out: Path | None, loaded: LoadedRun, sub: str = "") -> Path:
    """`out`, else RUN/viz[/sub]; a loose checkpoint without --out is a UserError."""
    if out is not None:
        out = Path(out)
    elif loaded.viz_dir is not None:
        out = loaded.viz_dir / sub if sub else loaded.viz_dir
    else:
        raise UserError("the checkpoint is not inside a run directory; say where the PNGs go with --out DIR")
    from mtlcli.safety import refuse_protected_output

    refuse_protected_output(out, "--out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another path")
    return out
