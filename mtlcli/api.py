"""The Python API: a trained model in three lines.

    from mtlcli import load_model
    model = load_model("runs/ivanet-tiny-synthetic/exp1")      # a run directory or a checkpoint file
    result = model.predict("street.jpg")                        # path, PIL image, HxWx3 uint8 array, tensor
    results = model.predict(["a.jpg", "b.png"])                 # a list is run in batches

A `Result` holds, in the image's own pixel frame, what the model outputs: `boxes` [N, 4] xyxy float,
`scores` [N], `labels` [N] int64 (1..K) and their `class_names`, `masks` [N, H, W] bool (models with an
instance-mask head), `semantic` [H, W] int64 class indices (the argmax of the segmentation scores) with
`seg_classes` naming them, and `panoptic` (ids [H, W], segments_info with category ids) from the
panoptic merge of docs/panoptic.md. Everything the model needs (weights, recipe, class names, palette) comes from
the checkpoint: no dataset folder is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlcli.devices import resolve_device
from mtlcli.engine.result import Result, output_to_result
from mtlcli.errors import UserError

__all__ = ["Predictor", "Result", "load_model", "output_to_result", "resolve_checkpoint", "to_image_tensor"]

ImageLike = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor


def to_image_tensor(image: ImageLike) -> torch.Tensor:
    """Any supported image as float32 [3, H, W] RGB in 0..1 on the CPU.

    path (str / Path) · PIL image (any mode) · numpy HxWx3 (or HxW, HxWx4) uint8, or float in 0..1 ·
    tensor [3, H, W] uint8 or float in 0..1."""
    if isinstance(image, (str, Path)):
        from mtlcli.viz.predictions import read_image_file

        return read_image_file(image)
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            from mtlcli.data.images import pil_to_rgb

            image = pil_to_rgb(image)  # the file readers' rules: EXIF orientation, 16 bits scaled
    except ImportError:  # pragma: no cover - PIL is a dependency
        pass
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise UserError(f"a numpy image must be HxWx3 (RGB), got shape {image.shape}")
        image = torch.from_numpy(np.array(image[..., :3], copy=True)).permute(2, 0, 1)
    if not torch.is_tensor(image):
        raise UserError(
            f"cannot read an image from a {type(image).__name__}; give a path, a PIL image, a numpy "
            "HxWx3 uint8 array or a [3, H, W] tensor"
        )
    image = image.detach().cpu().as_subclass(torch.Tensor)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise UserError(f"an image tensor must be [3, H, W], got {list(image.shape)}")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return check_unit_range(image.float())


def check_unit_range(image: torch.Tensor) -> torch.Tensor:
    """A float image must hold values in 0..1: one in 0..255 (a uint8 image cast to float) would be read
    as almost all white, silently; refused in one line, as are NaN and infinite values."""
    if image.numel() == 0:
        return image
    if not bool(torch.isfinite(image).all()):
        raise UserError("the float image holds NaN or infinite values — give finite values in 0..1")
    low, high = float(image.min()), float(image.max())
    if low < -1e-3 or high > 1.0 + 1e-3:
        hint = " — it looks like 0..255: divide by 255 or pass a uint8 array" if high <= 255.0 + 1e-3 else ""
        raise UserError(f"a float image must hold values in 0..1, this one spans {low:.4g}..{high:.4g}{hint}")
    return image


class Predictor:
    """A trained model with its classes: `predict(image or list)`. Build it with `load_model`.

    Attributes: network (the nn.Module, eval mode), recipe (resolved recipe), det_classes, seg_classes,
    palette, det_category_ids (original ids of the training data), device, checkpoint (path).
    """

    def __init__(
        self,
        network: nn.Module,
        recipe: dict[str, Any],
        card: dict[str, Any],
        device: str,
        checkpoint: Path | None = None,
    ) -> None:
        self.network, self.recipe, self.card = network.eval(), recipe, card
        self.det_classes: list[str] = list(card["det_classes"])
        self.seg_classes: list[str] = list(card["seg_classes"])
        self.palette: list[list[int]] = [list(c) for c in card["palette"]]
        self.det_category_ids: list[int] = list(card.get("det_category_ids") or range(1, len(self.det_classes) + 1))
        self.device, self.checkpoint = device, checkpoint

    def __repr__(self) -> str:
        return (
            f"Predictor({self.recipe['model'].get('name')!r}, {len(self.det_classes)} det classes, "
            f"{len(self.seg_classes)} seg classes, device={self.device!r})"
        )

    @torch.inference_mode()
    def raw(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The model's own outputs (DESIGN.md §4) for float [3, H, W] images, on the model's device."""
        return self.network([img.to(self.device, non_blocking=True) for img in images])

    def predict(
        self, images: ImageLike | Sequence[ImageLike], *, score_threshold: float = 0.3, batch_size: int = 8
    ) -> Result | list[Result]:
        """Predictions for one image (-> Result) or a list of them (-> list[Result], run in batches of
        `batch_size`). Detections below `score_threshold` are dropped."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not 0.0 <= score_threshold <= 1.0:
            raise UserError(f"score_threshold must lie in 0..1, got {score_threshold}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        results: list[Result] = []
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + batch_size]
            tensors = [to_image_tensor(x) for x in chunk]
            outputs = self.raw(tensors)
            for item, img, out in zip(chunk, tensors, outputs, strict=True):
                result = output_to_result(
                    out,
                    self.det_classes,
                    self.seg_classes,
                    tuple(img.shape[-2:]),
                    score_threshold,
                    str(item) if isinstance(item, (str, Path)) else None,
                )
                result.panoptic = self.panoptic_of(out)
                results.append(result)
        return results[0] if single else results

    __call__ = predict

    def panoptic_of(self, output: dict[str, torch.Tensor]) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
        """The panoptic merge (docs/panoptic.md) of one raw output: (ids [H, W] int32, segments_info)."""
        if "sem_seg" not in output and "masks" not in output:
            return None
        if getattr(self, "_panoptic_maker", None) is None:
            from mtlcli.engine.panoptic import PanopticMaker, merge_settings

            self._panoptic_maker = PanopticMaker(
                self.det_classes,
                self.seg_classes,
                self.card.get("thing_classes"),
                self.card.get("panoptic_category_ids"),
                merge_settings(self.recipe),
            )
        ids, segments = self._panoptic_maker(output, None)
        things = self._panoptic_maker.things
        class_ids = self._panoptic_maker.class_ids
        for s in segments:
            s["isthing"] = int(class_ids.index(s["category_id"]) in things)
        return ids.astype(np.int32), segments

    def draw(self, image: ImageLike, result: Result, alpha: float = 0.5) -> torch.Tensor:
        """The overlay of `result` on `image`: uint8 [3, H + legend, W] (semantic map, masks, boxes with captions,
        in the image's own pixels; below it a legend of the classes present)."""
        from mtlcli.engine.predict import render_result

        return render_result(to_image_tensor(image), result, self.det_classes, self.palette, alpha=alpha)


def resolve_checkpoint(source: str | Path) -> Path:
    """A run directory (its best.pt, else last.pt) or a checkpoint file."""
    from mtlcli.engine.checkpoint import find_run_checkpoint

    path = Path(source).expanduser()
    if path.is_dir():
        return find_run_checkpoint(path)
    if not path.exists():
        raise UserError(f"{path} does not exist — give a run directory of `mtl train` or a checkpoint file")
    return path


def load_model(source: str | Path, *, device: str = "cpu") -> Predictor:
    """The model of a run directory (`RUN/checkpoints/best.pt`, else last.pt) or of a checkpoint file,
    on `device` ("cpu", "cuda", "cuda:1", "auto"), in eval mode, with its class names and palette."""
    from mtlcli.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from mtlcli.engine.modelcard import card_of

    device = resolve_device(device or None)
    path = resolve_checkpoint(source)
    state = load_checkpoint(path)
    network, recipe = model_from_checkpoint(state, path)
    root = None
    if not isinstance(state.get("classes"), dict):  # an older checkpoint: its dataset may say
        from mtlcli.recipes import data_root

        root = data_root(recipe)
        root = root if (root / "dataset.json").is_file() else None
    return Predictor(network.to(device), recipe, card_of(state, recipe, root), device, path)
