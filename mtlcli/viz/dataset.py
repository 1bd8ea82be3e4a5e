"""`mtl viz dataset`: ground-truth overlays of a prepared split, to check a `mtl prepare` by eye.

Each PNG shows one image in its own pixel frame (enlarged by an integer factor when it is less than
256 pixels high, like `mtl viz predictions`), two titled panels side by side, a line naming the image,
and a colour legend of what is present:
  left   "semantic map and boxes": the semantic map in the dataset's palette blended over the image
         (ignore left clear), the instance boxes with class names (crowd regions grey, "(crowd)")
  right  "distance transform and boxes": the DT bins blended over the image (boundary dark -> centre bright),
         the boxes again
  legend the segmentation classes present (filled swatches), the box classes (hollow), crowd regions,
         and the DT bins present with the range of normalised distance each one holds
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlcli.data.dataset import PreparedDataset
from mtlcli.errors import UserError
from mtlcli.viz.draw import (
    CROWD_COLOR,
    MIN_HEIGHT,
    draw_boxes,
    dt_palette,
    enlarge,
    legend_entries,
    overlay_dt,
    overlay_semantic,
    save_png,
    titled_geometry,
    titled_picture,
    to_uint8,
)

TITLES = ("semantic map and boxes", "distance transform and boxes")


def dt_bin_names(dt_thresholds: Sequence[float]) -> list[str]:
    """Legend names of DT bins 1..K+1 for thresholds [t1, ..., tK] of the normalised distance to the object's
    boundary (DESIGN.md §3): "DT ≤ t1 (boundary)", "DT t1–t2", ..., "DT > tK (centre)"."""
    t = [f"{float(v):g}" for v in dt_thresholds]
    if not t:
        return ["DT > 0"]
    return [f"DT ≤ {t[0]} (boundary)"] + [f"DT {a}–{b}" for a, b in pairwise(t)] + [f"DT > {t[-1]} (centre)"]


def ground_truth_legend(
    target: dict[str, Any],
    det_classes: Sequence[str],
    seg_classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    dt_thresholds: Sequence[float],
) -> list[tuple[str, Sequence[int], bool]]:
    """(name, RGB, filled) of what `render_sample` draws for `target`: the segmentation classes in its
    semantic map, the classes of its non-crowd boxes, "crowd region" when it has one, its DT bins."""
    crowd = torch.as_tensor(target["iscrowd"]).bool()
    labels = torch.as_tensor(target["labels"]).as_subclass(torch.Tensor)
    semantic = torch.as_tensor(target["semantic"]).as_subclass(torch.Tensor)
    entries = legend_entries([semantic], [labels[~crowd]], seg_classes, det_classes, palette)
    if crowd.any():
        entries.append(("crowd region (box)", CROWD_COLOR, False))
    names = dt_bin_names(dt_thresholds)
    colors = dt_palette(len(names))
    present = sorted(int(k) for k in torch.unique(torch.as_tensor(target["dt"]).as_subclass(torch.Tensor)))
    entries += [(names[k - 1], colors[k - 1], True) for k in present if 1 <= k <= len(names)]
    return entries


def render_sample(
    image: torch.Tensor,
    target: dict[str, Any],
    det_classes: Sequence[str],
    seg_classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    dt_thresholds: Sequence[float],
    caption: str | None = None,
) -> torch.Tensor:
    """One ground-truth picture (module docstring) for an image [3, H, W] (float 0..1 or uint8) and its
    PreparedDataset target: uint8 [3, H', W'], the panels enlarged by `titled_geometry(H, MIN_HEIGHT)`'s factor."""
    scale, _ = titled_geometry(int(image.shape[-2]), MIN_HEIGHT)
    base = enlarge(to_uint8(image), scale)
    semantic = enlarge(torch.as_tensor(target["semantic"]).as_subclass(torch.Tensor), scale)
    dt = enlarge(torch.as_tensor(target["dt"]).as_subclass(torch.Tensor), scale)
    boxes = (
        torch.as_tensor(
            target["boxes"].as_subclass(torch.Tensor) if isinstance(target["boxes"], torch.Tensor) else target["boxes"],
            dtype=torch.float32,
        )
        * scale
    )
    drawn = dict(boxes=boxes, labels=target["labels"], class_names=det_classes, iscrowd=target["iscrowd"])
    left = draw_boxes(overlay_semantic(base, semantic, palette, alpha=0.5), **drawn)
    right = draw_boxes(overlay_dt(base, dt, len(dt_thresholds) + 1, alpha=0.6), **drawn)
    entries = ground_truth_legend(target, det_classes, seg_classes, palette, dt_thresholds)
    return titled_picture([left, right], list(TITLES), entries, caption)


def sample_caption(split: str, stem: str, target: dict[str, Any]) -> str:
    """The line under the panels: which image, how many objects."""
    crowd = int(torch.as_tensor(target["iscrowd"]).sum())
    objects = len(target["labels"]) - crowd
    labelled = bool((torch.as_tensor(target["semantic"]) != 255).any())
    return (
        f"{split}/{stem}: {objects} object{'s' if objects != 1 else ''}"
        + (f", {crowd} crowd region{'s' if crowd != 1 else ''}" if crowd else "")
        + ("" if labelled else ", no semantic labels")
    )


def _file_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) + ".png"


def render_dataset(
    root: str | Path, split: str, out: str | Path, num: int = 8, force: bool = False, progress: bool = True
) -> list[Path]:
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
    stems: list[str] = []
    for i in indices:
        info = ds.image_info(i)
        stems.append(info.get("stem") or Path(info["file_name"]).stem)
        name = _file_name(stems[-1])
        if out / name in targets:  # same stem in two source folders
            name = f"{Path(name).stem}_{info['id']}.png"
        targets.append(out / name)
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise UserError(
            f"{existing[0]} already exists ({len(existing)} of the overlays would be overwritten); "
            "choose another --out or pass --force"
        )

    from rich.progress import Progress

    paths = []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"drawing {split}", total=len(indices))
        for i, stem, path in zip(indices, stems, targets, strict=True):
            image, target = ds[i]
            picture = render_sample(
                image,
                target,
                ds.det_classes,
                ds.seg_classes,
                ds.palette,
                ds.meta.dt_thresholds,
                caption=sample_caption(split, stem, target),
            )
            paths.append(save_png(picture, path))
            bar.advance(task)
    return paths
