"""`mtl viz dataset`: ground-truth overlays of a prepared split, to check a `mtl prepare` by eye.

Each PNG is two panels of the source image's size, side by side ([3, H, 2W]):
  left   the semantic map in the dataset's palette blended over the image (ignore left clear), the
         instance boxes with class names (crowd regions grey, "(crowd)")
  right  the distance-transform bins blended over the image (boundary dark -> centre bright), boxes again
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlcli.data.dataset import PreparedDataset
from mtlcli.errors import UserError
from mtlcli.viz.draw import draw_boxes, overlay_dt, overlay_semantic, save_png, side_by_side, to_uint8


def render_sample(image: torch.Tensor, target: dict[str, Any], det_classes: list[str],
                  palette: list[list[int]], num_dt_bins: int) -> torch.Tensor:
    """One ground-truth overlay: uint8 [3, H, 2W] for an image [3, H, W] (float 0..1 or uint8) and its
    PreparedDataset target."""
    base = to_uint8(image)
    boxes = dict(boxes=target["boxes"], labels=target["labels"], class_names=det_classes, iscrowd=target["iscrowd"])
    left = draw_boxes(overlay_semantic(base, target["semantic"], palette, alpha=0.5), **boxes)
    right = draw_boxes(overlay_dt(base, target["dt"], num_dt_bins, alpha=0.6), **boxes)
    return side_by_side([left, right])


def _file_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) + ".png"


def render_dataset(root: str | Path, split: str, out: str | Path, num: int = 8, force: bool = False,
                   progress: bool = True) -> list[Path]:
    """Write ground-truth overlays (`render_sample`) of `num` images spread evenly over `split` to
    `out/<stem>.png`; returns the paths. Existing PNGs there are a UserError unless `force`."""
    if num < 1:
        raise UserError(f"--num must be at least 1, got {num}")
    ds = PreparedDataset(root, split)
    if len(ds) == 0:
        raise UserError(f"split {split!r} of {root} has no images — nothing to draw")
    indices = sorted({int(i) for i in np.linspace(0, len(ds) - 1, min(num, len(ds))).round()})
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another path")
    targets: list[Path] = []
    for i in indices:
        info = ds.image_info(i)
        name = _file_name(info.get("stem") or Path(info["file_name"]).stem)
        if out / name in targets:  # same stem in two source folders
            name = f"{Path(name).stem}_{info['id']}.png"
        targets.append(out / name)
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists ({len(existing)} of the overlays would be overwritten); "
                        "choose another --out or pass --force")
    num_bins = len(ds.meta.dt_thresholds) + 1

    from rich.progress import Progress

    paths = []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"drawing {split}", total=len(indices))
        for i, path in zip(indices, targets):
            image, target = ds[i]
            paths.append(save_png(render_sample(image, target, ds.det_classes, ds.palette, num_bins), path))
            bar.advance(task)
    return paths
