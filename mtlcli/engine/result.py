"""One image's predictions as users of Ultralytics / Detectron2 expect them (`Result`), built from a model's
eval output (`output_to_result`), and the images a predictor takes (`to_image_tensor`).

Below the API on purpose: `mtlcli.engine.predict` and `mtlcli.api` both use it (STYLE.md §13).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlcli.errors import UserError

ImageLike = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclasses.dataclass
class Result:
    """One image's predictions (detections with score >= the threshold), on the CPU.

    boxes [N, 4] float32 xyxy pixels; scores [N]; labels [N] int64 1..K; class_names [N] str;
    masks [N, H, W] bool or None; semantic [H, W] int64 indices into `seg_classes` or None;
    size (H, W) of the image; source: the file it came from, if any. det_classes, palette and image
    (uint8 [3, H, W]) are what `plot` draws with; category_ids the dataset's own ids of labels 1..K.
    """

    boxes: Any
    scores: Any
    labels: Any
    class_names: list[str]
    masks: Any
    semantic: Any
    size: tuple[int, int]
    seg_classes: list[str]
    source: str | None = None
    # (ids [H, W] int32 numpy, 0 = void; segments_info [{id, category_id, isthing, ...}]) from the
    # panoptic merge (mtlcli/ops/panoptic.py, docs/panoptic.md); None for a model with neither a
    # semantic map nor instance masks
    panoptic: tuple[np.ndarray, list[dict[str, Any]]] | None = None
    det_classes: list[str] | None = None
    palette: list[list[int]] | None = None
    category_ids: list[int] | None = None
    image: Any = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def _map(self, fn: Any) -> Result:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("boxes", "scores", "labels", "masks", "semantic", "image"):
            if fields[key] is not None:
                fields[key] = fn(fields[key])
        return Result(**fields)

    def numpy(self) -> Result:
        """A copy whose arrays are numpy arrays (boxes float32, labels int64, masks bool, semantic int64)."""
        return self._map(lambda v: v.numpy() if torch.is_tensor(v) else np.asarray(v))

    def cpu(self) -> Result:
        """A copy whose arrays are torch tensors on the CPU."""
        return self._map(lambda v: v.cpu() if torch.is_tensor(v) else torch.from_numpy(np.asarray(v)))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python: {"source", "size", "detections": [{"box" xyxy, "score", "label", "class_name",
        "category_id", "mask_area"?}], "semantic": {"classes": {name: pixel count}} or None}."""
        r = self.cpu()
        ids = self.category_ids
        dets = []
        for k, (box, score, label) in enumerate(
            zip(r.boxes.tolist(), r.scores.tolist(), r.labels.tolist(), strict=True)
        ):
            d = {
                "box": [round(v, 2) for v in box],
                "score": round(score, 5),
                "label": int(label),
                "class_name": self.class_names[k],
                "category_id": int(ids[label - 1]) if ids and 1 <= label <= len(ids) else int(label),
            }
            if r.masks is not None:
                d["mask_area"] = int(r.masks[k].sum())
            dets.append(d)
        semantic = None
        if r.semantic is not None:
            values, counts = torch.unique(r.semantic, return_counts=True)
            names = [self.seg_classes[v] if 0 <= v < len(self.seg_classes) else str(v) for v in values.tolist()]
            semantic = {"classes": dict(zip(names, counts.tolist(), strict=True))}
        return {"source": self.source, "size": list(self.size), "detections": dets, "semantic": semantic}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def plot(self, image: ImageLike | None = None, alpha: float = 0.5, legend: bool = True) -> np.ndarray:
        """The overlay: HxWx3 uint8 numpy (the image with semantic map, masks and captioned boxes; below
        it a legend of the classes present). `image` defaults to the one predicted (kept by `predict`)."""
        picture = image if image is not None else self.image
        if picture is None:
            raise UserError("this Result holds no image; pass it: result.plot(image)")
        det_classes = self.det_classes or sorted(set(self.class_names))
        palette = self.palette or [[0, 0, 0]] * len(self.seg_classes)
        panel = render_result(to_image_tensor(picture), self.cpu(), det_classes, palette, alpha=alpha, legend=legend)
        return panel.permute(1, 2, 0).contiguous().numpy()

    def save(self, path: str | Path, image: ImageLike | None = None) -> Path:
        """Write the result: `.json` -> `to_json`; an image suffix -> `plot` as that image. Written under a
        temporary name and renamed when complete."""
        from mtlcli.safety import atomic_write_bytes

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            atomic_write_bytes(path, self.to_json(indent=1).encode())
        elif suffix in IMAGE_SUFFIXES:
            import io

            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(self.plot(image)).save(buf, format=Image.registered_extensions()[suffix])
            atomic_write_bytes(path, buf.getvalue())
        else:
            raise UserError(
                f"cannot save a Result as {path.name}: use .json or an image suffix ({', '.join(IMAGE_SUFFIXES)})"
            )
        return path

    def to_coco(
        self, image_id: int, category_ids: Sequence[int] | None = None, with_masks: bool = True
    ) -> list[dict[str, Any]]:
        """COCO results [{image_id, category_id, category_name, bbox [x, y, w, h], score, segmentation?}];
        `category_ids[k - 1]` is the id written for label k (default: the dataset's own ids, `category_ids`
        of the Result, else k)."""
        if category_ids is None:
            category_ids = self.category_ids
        r = self.cpu()
        rles = None
        if with_masks and r.masks is not None and len(self):
            from pycocotools import mask as mask_utils

            rles = mask_utils.encode(np.asfortranarray(r.masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
        out = []
        for k, ((x1, y1, x2, y2), score, label) in enumerate(
            zip(r.boxes.tolist(), r.scores.tolist(), r.labels.tolist(), strict=True)
        ):
            cat = category_ids[label - 1] if category_ids is not None and 1 <= label <= len(category_ids) else label
            d = {
                "image_id": image_id,
                "category_id": int(cat),
                "category_name": self.class_names[k],
                # unrounded: what `mtl eval` scores, so that saved predictions score the same
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": score,
            }
            if rles is not None:
                d["segmentation"] = {
                    "size": [int(s) for s in rles[k]["size"]],
                    "counts": rles[k]["counts"].decode("ascii"),
                }
            out.append(d)
        return out


def render_result(
    image: torch.Tensor,
    result: Any,
    det_classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    legend: bool = True,
    titled: bool = False,
    score_threshold: float | None = None,
) -> torch.Tensor:
    """The overlay of `result` on `image` (float 0..1 or uint8 [3, H, W]), drawn by the helpers of `mtl viz
    predictions` (`mtlcli.viz.draw`): the semantic map blended over the image, instance masks in class
    colours, boxes with "name score" captions that do not hide each other; the legend lists the classes
    present (segmentation classes filled, box classes hollow).

    titled (the overlay PNGs of `mtl predict`): the picture `mtl viz predictions` draws for a plain image —
    enlarged by an integer factor to a readable size (images lower than `MIN_HEIGHT`), titled "prediction
    (score ≥ T)" (T = `score_threshold`, where the model detects), the legend below: uint8 [3, H', W'].
    Else in the image's own pixels: uint8 [3, H + legend, W] (`Predictor.draw`), or [3, H, W] without the
    legend (video frames)."""
    from mtlcli.viz import draw

    image = draw.to_uint8(image)
    h = int(image.shape[-2])
    scale = draw.titled_geometry(h, draw.MIN_HEIGHT)[0] if titled else 1
    panel = draw.draw_prediction(
        image,
        result.semantic,
        result.boxes,
        result.labels,
        result.scores,
        result.masks,
        det_classes,
        palette,
        alpha=alpha,
        scale=scale,
    )
    if not (legend or titled):
        return panel
    maps = [result.semantic] if result.semantic is not None else []
    entries = draw.legend_entries(maps, [result.labels], result.seg_classes, det_classes, palette)
    if titled:
        title = draw.prediction_title(score_threshold if det_classes else None)
        return draw.titled_picture([panel], [title], entries)
    return draw.stack([panel, draw.legend(entries, int(panel.shape[-1]), draw.font_size_for(h))]) if entries else panel


def to_image_tensor(image: ImageLike) -> torch.Tensor:
    """Any supported image as float32 [3, H, W] RGB in 0..1 on the CPU.

    path (str / Path) · PIL image (any mode) · numpy HxW (grey), HxWx1/3/4 (grey, RGB, RGBA),
    uint8 0..255 or float 0..1 · tensor [3, H, W] / [H, W, 3] / [1, H, W] / [H, W], uint8 or float 0..1.
    Anything else is one UserError line."""
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
        if image.dtype == bool or image.dtype.kind not in "uif":
            raise UserError(f"a numpy image must be uint8 or float, got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[-1] not in (1, 3, 4):
            raise UserError(f"a numpy image must be HxWx3 (RGB), HxWx4 (RGBA) or HxW (grey), got shape {image.shape}")
        if image.ndim == 3:  # numpy's layout: HWC
            image = image.transpose(2, 0, 1)
        image = torch.from_numpy(np.array(image, copy=True))
    if not torch.is_tensor(image):
        raise UserError(
            f"cannot read an image from a {type(image).__name__}; give a path, a PIL image, a numpy "
            "HxWx3 uint8 array or a [3, H, W] tensor"
        )
    image = image.detach().cpu().as_subclass(torch.Tensor)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise UserError(f"an image must be [3, H, W], [H, W, 3] or [H, W], got shape {list(image.shape)}")
    if image.shape[0] not in (1, 3, 4) and image.shape[-1] in (1, 3, 4):
        image = image.permute(2, 0, 1)  # HWC -> CHW
    if image.shape[0] not in (1, 3, 4):
        raise UserError(f"an image must be [3, H, W] or [H, W, 3] (RGB), got shape {list(image.shape)}")
    if image.shape[0] == 4:  # RGBA: the colour planes
        image = image[:3]
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if not image.is_floating_point():
        raise UserError(f"an image tensor must be uint8 or float in 0..1, got {image.dtype}")
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


def output_to_result(
    output: dict[str, torch.Tensor],
    class_names: Sequence[str],
    seg_classes: Sequence[str],
    size: Sequence[int],  # (H, W)
    score_threshold: float,
    source: str | None = None,
    *,
    classes: Sequence[int] | None = None,
    max_det: int | None = None,
    **extra: Any,
) -> Result:
    """A model's eval output for one image (DESIGN.md §4; or an exported graph's, whose `semantic` [H, W]
    is already the class map) as a Result on the CPU. `classes` keeps only those labels (1..K), `max_det`
    the best that many; `extra` fills the Result's drawing fields (det_classes, palette, category_ids, image)."""
    if "boxes" in output:
        keep = output["scores"].detach() >= score_threshold
        if classes is not None:
            keep &= torch.isin(output["labels"].detach(), torch.as_tensor(list(classes), device=keep.device))
        keep = torch.nonzero(keep).flatten()
        if max_det is not None:
            keep = keep[output["scores"].detach()[keep].argsort(descending=True)[:max_det]]
        boxes = output["boxes"].detach()[keep].float().cpu()
        scores = output["scores"].detach()[keep].float().cpu()
        labels = output["labels"].detach()[keep].long().cpu()
        masks = None
        if "masks" in output:
            m = output["masks"].detach()[keep]
            masks = (m[:, 0] if m.ndim == 4 else m).cpu() > 0.5
    else:
        boxes, scores, labels, masks = torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long), None
    names = [class_names[k - 1] if 1 <= k <= len(class_names) else f"class {k}" for k in labels.tolist()]
    if "semantic" in output:
        semantic = output["semantic"].detach().cpu().long()
    elif "sem_seg" in output:
        semantic = output["sem_seg"].detach().argmax(0).cpu()
    else:
        semantic = None
    extra.setdefault("det_classes", list(class_names))
    hw = (int(size[0]), int(size[1]))
    return Result(boxes, scores, labels, names, masks, semantic, hw, list(seg_classes), source, **extra)


def semantic_png(semantic: np.ndarray, palette: Sequence[Sequence[int]] | None) -> Any:
    """A uint8 semantic map as a palette image (PIL "P"): the pixel values are the class indices unchanged
    (255 = none, black) and a viewer shows them in the classes' colours. Write it with
    `mtlcli.safety.atomic_save_image` (PNG keeps the palette)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(semantic, dtype=np.uint8))
    colours = np.zeros((256, 3), np.uint8)
    if palette:
        n = min(len(palette), 255)
        colours[:n] = np.asarray(palette[:n], dtype=np.uint8)
    img.putpalette(colours.flatten().tolist())
    return img
