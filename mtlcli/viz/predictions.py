"""`mtl viz predictions`: what a trained model sees, drawn over its input.

Each PNG shows one image in its own pixel frame (enlarged by an integer factor when it is less than
256 pixels high), titled panels above a colour legend of the classes present:
  prediction panel  the colourised `sem_seg` argmax blended over the image (dataset palette), instance
                    masks where the model gives them, boxes with "class score" captions (score >= T)
  ground truth      when the image comes from a prepared split with labels: the same drawing of the
                    ground truth on the left, the prediction on the right
Plain images (no dataset) give the prediction panel alone. Captions that would hide each other are
moved (above, inside or below their box) or dropped, the most confident first.

Also home of what every model-based `mtl viz` drawing shares: reading an image file (`read_image_file`)
and the guard against overwriting (`check_free`); loading a run for drawing is `mtlcli.engine.loaded`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlcli.data.prepared import image_stem, output_path
from mtlcli.errors import UserError
from mtlcli.models.base import eval_mode
from mtlcli.viz.draw import (
    MIN_HEIGHT,
    class_colors,
    draw_boxes,
    draw_prediction,
    enlarge,
    legend_entries,
    overlay_masks,
    overlay_semantic,
    prediction_title,
    save_png,
    titled_geometry,
    titled_picture,
    to_uint8,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def check_free(paths: Sequence[Path], force: bool) -> None:
    """Refuse to overwrite existing files unless `force` (DESIGN.md §6)."""
    existing = [p for p in paths if Path(p).exists()]
    if existing and not force:
        more = f" ({len(existing)} files in all)" if len(existing) > 1 else ""
        raise UserError(f"{existing[0]} already exists{more}; choose another --out or pass --force to overwrite")


def safe_name(text: str) -> str:
    """A file-name-safe version of a stem / layer name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def read_image_file(path: str | Path) -> torch.Tensor:
    """An image file as float32 [3, H, W] RGB in 0..1, read by mtl's one image reader
    (`mtlcli.data.images`: EXIF orientation applied, 16 bits scaled); an unreadable file is a UserError."""
    from mtlcli.data.images import ImageError, read_rgb_tensor

    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist — check the path")
    try:
        rgb = read_rgb_tensor(path)
    except ImageError as exc:
        raise UserError(f"{exc} — give a PNG or JPEG file") from None
    return rgb.float() / 255.0


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (their image files, sorted) and keep files as given; none found is a UserError."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            files.append(p)
        else:
            raise UserError(f"--images {p} does not exist — give image files or folders of images")
    if not files:
        raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return files


# ----------------------------------------------------------------------------------------- drawing


def render_prediction(
    image: torch.Tensor,
    output: dict[str, torch.Tensor],
    det_classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    score_threshold: float = 0.3,
    alpha: float = 0.5,
    scale: int = 1,
) -> torch.Tensor:
    """One prediction panel: uint8 [3, scale H, scale W] for an image [3, H, W] (float 0..1 or uint8) and the
    model's output for it (DESIGN.md §4, same pixel frame): sem_seg argmax in `palette` blended with
    `alpha`, instance masks (> 0.5) in their class colours, then boxes with "name score" captions that do
    not hide each other, keeping the detections with score >= `score_threshold`. `scale` enlarges a small
    image first (nearest neighbour) so that captions are drawn at a readable size."""
    semantic = output["sem_seg"].detach().argmax(0).cpu() if "sem_seg" in output else None
    boxes = labels = scores = torch.zeros(0)
    masks = None
    if "boxes" in output:
        keep = output["scores"].detach().cpu() >= score_threshold
        boxes, labels = output["boxes"].detach().cpu()[keep], output["labels"].detach().cpu()[keep]
        scores = output["scores"].detach().cpu()[keep]
        masks = output["masks"].detach().cpu()[keep] if "masks" in output else None
    return draw_prediction(
        image, semantic, boxes, labels, scores, masks, det_classes, palette, alpha=alpha, scale=scale
    )


def render_ground_truth(
    image: torch.Tensor,
    target: dict[str, Any],
    det_classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    scale: int = 1,
) -> torch.Tensor:
    """The ground-truth panel drawn like `render_prediction`: semantic map, instance masks of non-crowd
    objects, boxes with names (crowd grey). uint8 [3, scale H, scale W]."""
    semantic = enlarge(torch.as_tensor(target["semantic"]).as_subclass(torch.Tensor), scale)
    panel = overlay_semantic(enlarge(to_uint8(image), scale), semantic, palette, alpha=alpha)
    labels, crowd = target["labels"], target["iscrowd"]
    masks = target.get("masks")
    if masks is not None and len(masks) and (crowd == 0).any():
        colors = class_colors(max(len(det_classes), 1))
        keep = crowd == 0
        panel = overlay_masks(
            panel,
            enlarge(masks.as_subclass(torch.Tensor)[keep], scale),
            colors=[colors[(int(k) - 1) % len(colors)] for k in labels[keep]],
            alpha=alpha,
        )
    boxes = (
        torch.as_tensor(
            target["boxes"].as_subclass(torch.Tensor) if isinstance(target["boxes"], torch.Tensor) else target["boxes"],
            dtype=torch.float32,
        )
        * scale
    )
    return draw_boxes(panel, boxes, labels, det_classes, iscrowd=crowd)


def _has_ground_truth(target: dict[str, Any]) -> bool:
    semantic = torch.as_tensor(target["semantic"])
    return bool(len(target["boxes"])) or bool((semantic != 255).any())


def _spread(n_items: int, num: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n_items - 1, min(num, n_items)).round()})


@torch.inference_mode()
def render_predictions(
    model: nn.Module,
    source: Any,
    out: str | Path,
    num: int = 8,
    score_threshold: float = 0.3,
    palette: Sequence[Sequence[int]] | None = None,
    seg_classes: Sequence[str] | None = None,
    det_classes: Sequence[str] | None = None,
    *,
    force: bool = False,
    device: str = "cpu",
    progress: bool = True,
    panoptic: Any = None,
) -> list[Path]:
    """Draw the model's predictions for `num` images of `source` into `out/<stem>.png`; returns the paths.
    `panoptic` (an `mtlcli.engine.panoptic.PanopticMaker`) adds a panel of the panoptic merge.

    `source` is a PreparedDataset (images spread evenly over the split; ground truth drawn beside the
    prediction where the image has labels) or a sequence of image files / folders. Class names and palette
    default to the dataset's; for plain images pass them (else "class k" names and tab20 colours).
    Existing PNGs are a UserError unless `force`. The model is used in eval mode and left as it was.
    """
    from rich.progress import Progress

    from mtlcli.data.dataset import PreparedDataset

    if num < 1:
        raise UserError(f"--num must be at least 1, got {num}")
    if not 0.0 <= score_threshold <= 1.0:
        raise UserError(f"--score-threshold must lie in 0..1, got {score_threshold}")
    is_dataset = isinstance(source, PreparedDataset)
    if is_dataset:
        if len(source) == 0:
            raise UserError(f"split {source.split!r} of {source.root} has no images — nothing to draw")
        indices = _spread(len(source), num)
        stems = [image_stem(source.image_info(i)) for i in indices]
        palette = palette if palette is not None else source.palette
        det_classes = det_classes if det_classes is not None else source.det_classes
        seg_classes = seg_classes if seg_classes is not None else source.seg_classes
    else:
        files = image_files(source if isinstance(source, (list, tuple)) else [source])[:num]
        indices, stems = list(range(len(files))), [f.stem for f in files]
    det_classes = list(det_classes or [])
    if palette is None:
        palette = class_colors(len(seg_classes) if seg_classes else 20)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another path")
    names: list[Path] = []
    for stem in stems:  # the one naming rule of per-image outputs: nested names stay nested
        name = output_path(out, stem)
        k = 2
        while name in names:  # the same stem in two folders
            name = output_path(out, f"{stem}-{k}")
            k += 1
        names.append(name)
    check_free(names, force)

    paths: list[Path] = []
    with eval_mode(model):
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("drawing predictions", total=len(indices))
            for i, path in zip(indices, names, strict=True):
                if is_dataset:
                    image, target = source[i]
                    image = image.as_subclass(torch.Tensor)
                else:
                    image, target = read_image_file(files[i]), None
                output = model([image.to(device)])[0]
                scale, _ = titled_geometry(int(image.shape[-2]), MIN_HEIGHT)
                panels = [render_prediction(image, output, det_classes, palette, score_threshold, scale=scale)]
                titles = [prediction_title(score_threshold if "boxes" in output else None)]
                if panoptic is not None and ("sem_seg" in output or "masks" in output):
                    from mtlcli.viz.panoptic import draw_panoptic

                    ids, segs = panoptic(output, None)
                    class_of = {c: k for k, c in enumerate(panoptic.class_ids)}
                    panels.append(draw_panoptic(image, ids, segs, class_of, palette, scale=scale))
                    titles.append(f"panoptic ({len(segs)} segments)")
                maps = [output["sem_seg"].detach().argmax(0).cpu()] if "sem_seg" in output else []
                drawn = (
                    [output["labels"].detach().cpu()[output["scores"].detach().cpu() >= score_threshold]]
                    if "boxes" in output
                    else []
                )
                if target is not None and _has_ground_truth(target):
                    panels.insert(0, render_ground_truth(image, target, det_classes, palette, scale=scale))
                    titles.insert(0, "ground truth")
                    maps.append(torch.as_tensor(target["semantic"]).as_subclass(torch.Tensor))
                    drawn.append(torch.as_tensor(target["labels"]).as_subclass(torch.Tensor))
                entries = legend_entries(maps, drawn, list(seg_classes or []), det_classes, palette)
                paths.append(save_png(titled_picture(panels, titles, entries), path))
                bar.advance(task)
    return paths
