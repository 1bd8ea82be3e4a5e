"""Augmentation pipelines on `torchvision.transforms.v2`, selected by name from a recipe's [data] table.

    tf = build_transforms("cityscapes", train=True, min_size=512, max_size=1024, scale_range=[0.5, 2.0],
                          crop_size=[512, 1024])
    image, target = tf(image, target)          # a PreparedDataset sample (mtlcli.data.dataset)

The sample's spatial entries are tv_tensors, so every geometric step moves the image, boxes, instance
masks and the dense `semantic` / `dt` maps together (masks sampled at pixel centres, nearest-exact).
Inside a pipeline the two dense maps are re-typed as `SemanticMap` / `DistanceMap` (subclasses of
`tv_tensors.Mask`): v2 picks a padding fill per *type*, and the semantic map must be padded with the
ignore index 255 while the dt map and instance masks are padded with 0. They leave as plain Masks.

Evaluation (`train=False`) never augments: models resize their own inputs and map predictions back to
the source frame, and the metrics compare against the untouched ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from mtlcli.data.prepared import IGNORE_INDEX
from mtlcli.errors import UserError

# Padding colour of the image (RGB in 0..1): the ImageNet mean, the "mean pixel" SSD's zoom-out fills with.
IMAGE_FILL = [0.485, 0.456, 0.406]

NAMES = ("none", "ssd", "cityscapes")

# Augmentation options of a recipe's [data] table with their defaults (what each means: build_transforms).
OPTIONS: dict[str, Any] = {
    "min_size": 0,
    "max_size": 0,
    "scale_range": [1.0, 1.0],
    "crop_size": [0, 0],
    "flip": True,
    "photometric": True,
    "zoom_out": 4.0,
    "iou_crop": True,
    "min_box_size": 1.0,
    "targets": [],
    "color_jitter": 0.0,
}
# Other [data] keys, accepted and ignored so that the whole table can be passed through.
RECIPE_KEYS = frozenset({"dataset", "root", "train_split", "val_split", "augmentation", "label_map"})


class SemanticMap(tv_tensors.Mask):
    """A class-index map [H, W] inside a pipeline: transformed like a Mask, padded with 255 (ignore)."""


class DistanceMap(tv_tensors.Mask):
    """A distance-transform bin map [H, W] inside a pipeline: transformed like a Mask, padded with 0."""


# v2 looks the fill up by the exact type of each input; boxes take no fill. Inside a Pipeline the image
# is uint8 (see Pipeline), so its fill is on the 0..255 scale.
FILL: dict[type, Any] = {
    tv_tensors.Image: [round(255 * c) for c in IMAGE_FILL],
    tv_tensors.Mask: 0,
    SemanticMap: IGNORE_INDEX,
    DistanceMap: 0,
}


def _interpolation(inpt: Any, image_mode: InterpolationMode = InterpolationMode.BILINEAR) -> InterpolationMode:
    # v2 resamples masks with torch's legacy "nearest", which samples at pixel corners and so shifts them
    # by up to half a source pixel against the (centre-aligned) bilinear image and the boxes: visible as
    # whole output pixels when SSD blows a small crop up to 300x300. "nearest-exact" samples at centres.
    return InterpolationMode.NEAREST_EXACT if isinstance(inpt, tv_tensors.Mask) else image_mode


class Resize(v2.Resize):
    """v2.Resize with masks sampled at pixel centres (see `_interpolation`)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize,
            inpt,
            self.size,
            interpolation=_interpolation(inpt, self.interpolation),
            max_size=self.max_size,
            antialias=self.antialias,
        )


class RandomScale(v2.Transform):
    """Resize to a base size, times a factor drawn uniformly from `scale_range`, in one resampling step.

    Base size: shorter side `min_size` with the longer side capped at `max_size` (v2.Resize's rule;
    `max_size` alone sets the longer side; neither keeps the input size). torchvision's ScaleJitter /
    RandomResize fix the base in pixels whatever the orientation, and Resize followed by a second
    resize would blur the image twice and double the cost on 2048x1024 frames.
    """

    def __init__(self, scale_range: Sequence[float] = (1.0, 1.0), min_size: int = 0, max_size: int = 0) -> None:
        super().__init__()
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        r = self.min_size / min(h, w) if self.min_size else 1.0
        if self.max_size:
            r = min(r, self.max_size / max(h, w)) if self.min_size else self.max_size / max(h, w)
        lo, hi = self.scale_range
        r *= lo + float(torch.rand(())) * (hi - lo)
        return {"size": [max(1, round(h * r)), max(1, round(w * r))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize, inpt, size=params["size"], interpolation=_interpolation(inpt), antialias=True
        )


def _axis(n_src: int, n_scaled: int, n_crop: int) -> tuple[int, int, int, int]:
    """One axis of ScaleCrop: (source start, source length, resized length, padding before)."""
    if n_scaled >= n_crop:
        off = int(torch.randint(0, n_scaled - n_crop + 1, ()))
        a = min(n_src - 1, round(off * n_src / n_scaled))
        b = min(n_src, max(a + 1, round((off + n_crop) * n_src / n_scaled)))
        return a, b - a, n_crop, 0
    # smaller than the crop: the whole side, at a uniform offset in the padded crop (v2.RandomCrop's
    # pad_if_needed gives the same distribution)
    return 0, n_src, n_scaled, int(torch.randint(0, n_crop - n_scaled + 1, ()))


class ScaleCrop(v2.Transform):
    """`RandomScale` followed by a random `crop_size` crop, computed as one crop of the source and one
    resampling of only that region (then padding with the type's fill where the scaled image is smaller
    than the crop). Resizing a whole 2048x1024 frame to throw most of it away costs several times more.

    The source window is rounded to whole pixels, so the scale actually applied differs from the drawn
    one by less than one source pixel over the window (inferred: immaterial for a random scale). Boxes
    keep their clamping mode (run it on unclipped boxes and follow with DropBoxesOutsideCrop).
    """

    def __init__(
        self, crop_size: Sequence[int], scale_range: Sequence[float] = (1.0, 1.0), min_size: int = 0, max_size: int = 0
    ) -> None:
        super().__init__()
        self.scale = RandomScale(scale_range, min_size=min_size, max_size=max_size)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        sh, sw = self.scale.make_params(flat_inputs)["size"]
        top, height, out_h, pad_top = _axis(h, sh, self.crop_size[0])
        left, width, out_w, pad_left = _axis(w, sw, self.crop_size[1])
        padding = [pad_left, pad_top, self.crop_size[1] - out_w - pad_left, self.crop_size[0] - out_h - pad_top]
        return {"window": (top, left, height, width), "size": [out_h, out_w], "padding": padding}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = self._call_kernel(F.crop, inpt, *params["window"])
        out = self._call_kernel(F.resize, out, size=params["size"], interpolation=_interpolation(out), antialias=True)
        if any(params["padding"]):
            out = self._call_kernel(F.pad, out, padding=params["padding"], fill=FILL.get(type(inpt), 0))
        return out


def iou_crop_params(iou: v2.RandomIoUCrop, boxes: tv_tensors.BoundingBoxes) -> dict[str, Any]:
    """`v2.RandomIoUCrop.make_params` on XYXY boxes with each option's `trials` drawn at once: the
    same distribution (the first acceptable of independent trials), without a Python loop of up to 40
    trials, each with its own box_iou, per option draw."""
    from torchvision.ops import box_iou

    h, w = boxes.canvas_size
    xyxy = boxes.as_subclass(torch.Tensor).float()
    cx, cy = 0.5 * (xyxy[:, 0] + xyxy[:, 2]), 0.5 * (xyxy[:, 1] + xyxy[:, 3])
    n = iou.trials
    while True:
        min_iou = iou.options[int(torch.randint(low=0, high=len(iou.options), size=(1,)))]
        if min_iou >= 1.0:
            return {}
        r = iou.min_scale + (iou.max_scale - iou.min_scale) * torch.rand(n, 2)
        new_w, new_h = (w * r[:, 0]).long(), (h * r[:, 1]).long()  # int() truncation, as in v2
        pos = torch.rand(n, 2)
        left, top = ((w - new_w) * pos[:, 0]).long(), ((h - new_h) * pos[:, 1]).long()
        right, bottom = left + new_w, top + new_h
        aspect = new_w / new_h.clamp(min=1)
        ok = (new_h > 0) & (aspect >= iou.min_aspect_ratio) & (aspect <= iou.max_aspect_ratio)
        ok &= (left != right) & (top != bottom)
        within = (left[:, None] < cx) & (cx < right[:, None]) & (top[:, None] < cy) & (cy < bottom[:, None])
        ok &= within.any(1)
        if not ok.any():
            continue
        windows = torch.stack([left, top, right, bottom], 1).float()
        ious = box_iou(xyxy, windows).T.masked_fill(~within, -1.0)  # [trials, boxes], boxes inside only
        ok &= ious.max(1).values >= min_iou
        if ok.any():
            i = int(ok.nonzero()[0])
            return {
                "top": int(top[i]),
                "left": int(left[i]),
                "height": int(new_h[i]),
                "width": int(new_w[i]),
                "is_within_crop_area": within[i],
            }


class SSDGeometry(v2.Transform):
    """SSD's zoom-out (probability 0.5), IoU-constrained crop and resize to `size`, planned on the boxes
    and carried out as one crop of the source and one resampling of it, then padding with the mean
    pixel where the crop reaches into the zoom-out canvas. Doing the three steps literally builds a
    canvas of up to `zoom_out`^2 times the image (64 MB for a 2048x1024 frame at 4x) to keep a fraction
    of it. The random draws are those of v2.RandomZoomOut and v2.RandomIoUCrop.

    `photometric` (a transform, e.g. v2.RandomPhotometricDistort) is applied to the image's visible
    region after resampling and before padding, so the canvas keeps the exact mean pixel as in SSD;
    its contrast step therefore averages over the visible region rather than the whole source
    (inferred: SSD's order distorts the source first). `size` None keeps the crop's size.
    """

    def __init__(
        self,
        size: tuple[int, int] | None,
        zoom_out: float = 4.0,
        iou_crop: bool = True,
        photometric: Callable | None = None,
    ) -> None:
        super().__init__()
        self.size = size
        self.zoom_out = float(zoom_out)
        self.iou = v2.RandomIoUCrop() if iou_crop else None
        self.photometric = photometric

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw, top, left = h, w, 0, 0  # the zoom-out canvas and where the image sits on it
        if self.zoom_out > 1.0 and float(torch.rand(())) < 0.5:
            r = 1.0 + float(torch.rand(1)) * (self.zoom_out - 1.0)
            cw, ch = int(w * r), int(h * r)
            r2 = torch.rand(2)
            left, top = int((cw - w) * r2[0]), int((ch - h) * r2[1])
        window, within = (0, 0, ch, cw), None  # the crop on the canvas
        if self.iou is not None:
            src = next(x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes))
            xyxy = F.convert_bounding_box_format(
                src.as_subclass(torch.Tensor), old_format=src.format, new_format=tv_tensors.BoundingBoxFormat.XYXY
            )
            shifted = tv_tensors.BoundingBoxes(
                xyxy + torch.tensor([left, top, left, top], dtype=xyxy.dtype), format="XYXY", canvas_size=(ch, cw)
            )
            crop = iou_crop_params(self.iou, shifted) if len(shifted) else {}
            if crop:
                window, within = (crop["top"], crop["left"], crop["height"], crop["width"]), crop["is_within_crop_area"]
        wt, wl, wh, ww = window
        out_h, out_w = self.size if self.size else (wh, ww)
        # the visible part of the source inside the window, and where it lands in the output
        y0, y1 = max(wt - top, 0), min(wt - top + wh, h)
        x0, x1 = max(wl - left, 0), min(wl - left + ww, w)
        if y1 <= y0 or x1 <= x0:  # cannot happen with boxes inside the image; keep a valid plan anyway
            y0, y1, x0, x1 = 0, h, 0, w
        oy0, oy1 = round((y0 - (wt - top)) * out_h / wh), round((y1 - (wt - top)) * out_h / wh)
        ox0, ox1 = round((x0 - (wl - left)) * out_w / ww), round((x1 - (wl - left)) * out_w / ww)
        oy1, ox1 = min(max(oy1, oy0 + 1), out_h), min(max(ox1, ox0 + 1), out_w)
        oy0, ox0 = min(oy0, oy1 - 1), min(ox0, ox1 - 1)
        return {
            "window": (y0, x0, y1 - y0, x1 - x0),
            "size": [oy1 - oy0, ox1 - ox0],
            "padding": [ox0, oy0, out_w - ox1, out_h - oy1],
            "within": within,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = self._call_kernel(F.crop, inpt, *params["window"])
        out = self._call_kernel(F.resize, out, size=params["size"], interpolation=_interpolation(out), antialias=True)
        if self.photometric is not None and isinstance(out, tv_tensors.Image):
            # in float32 once: on uint8 every colour op would convert to float and back
            plain = F.to_dtype(out.as_subclass(torch.Tensor), torch.float32, scale=True)
            plain = self.photometric(tv_tensors.Image(plain)).as_subclass(torch.Tensor)
            out = tv_tensors.wrap(F.to_dtype(plain, out.dtype, scale=True), like=out)
        if any(params["padding"]):
            out = self._call_kernel(F.pad, out, padding=params["padding"], fill=FILL.get(type(inpt), 0))
        if isinstance(out, tv_tensors.BoundingBoxes) and params["within"] is not None:
            out[~params["within"]] = 0  # outside the crop: emptied, then removed by SanitizeBoxes
        return out


class DropBoxesOutsideCrop(v2.Transform):
    """Mark boxes whose centre lies outside the canvas as empty, then clip all boxes to the canvas.

    Run it right after a crop on boxes whose `clamping_mode` is None (so that the crop left them
    unclipped and their centres are still true), and follow it with SanitizeBoundingBoxes, which removes
    the emptied boxes together with their labels, crowd flags and masks — the same contract as
    RandomIoUCrop. Boxes leave with `clamping_mode="soft"`, torchvision's default.
    """

    _transformed_types = (tv_tensors.BoundingBoxes,)

    def transform(self, inpt: tv_tensors.BoundingBoxes, params: dict[str, Any]) -> tv_tensors.BoundingBoxes:
        h, w = inpt.canvas_size
        xyxy = F.convert_bounding_box_format(
            inpt.as_subclass(torch.Tensor), old_format=inpt.format, new_format=tv_tensors.BoundingBoxFormat.XYXY
        )
        cx = 0.5 * (xyxy[:, 0] + xyxy[:, 2])
        cy = 0.5 * (xyxy[:, 1] + xyxy[:, 3])
        inside = (cx > 0) & (cx < w) & (cy > 0) & (cy < h)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        xyxy[~inside] = 0
        out = F.convert_bounding_box_format(xyxy, old_format=tv_tensors.BoundingBoxFormat.XYXY, new_format=inpt.format)
        return tv_tensors.wrap(out, like=inpt, clamping_mode="soft")


def _labels_and_crowd(inputs: Any) -> tuple[torch.Tensor, ...]:
    """labels_getter for SanitizeBoundingBoxes: the per-box tensors of a (image, target) sample."""
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "iscrowd") if k in target)


class SanitizeBoxes(v2.SanitizeBoundingBoxes):
    """SanitizeBoundingBoxes that drops the labels, crowd flags and instance masks of removed boxes and
    leaves the dense maps alone (v2 would index an [H, W] map by the box mask whenever H == N)."""

    def __init__(self, min_size: float = 1.0) -> None:
        super().__init__(min_size=min_size, labels_getter=_labels_and_crowd)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (SemanticMap, DistanceMap)) or bool(params["valid"].all()):
            return inpt  # indexing by an all-true mask would still copy every instance mask
        return super().transform(inpt, params)


class Pipeline:
    """`(image, target) -> (image, target)` around a v2.Compose.

    On the way in the dense maps are re-typed (see module docstring) and, like the image, carried as
    uint8: the source data are 8-bit anyway, and SSD's zoom-out builds canvases of up to 16x the image
    area, which as float32 / int64 cost 4-8x the memory traffic. On the way out the image and maps get
    their input dtypes back (float32 0..1, int64) and plain tv_tensors types. Non-tensor entries
    (image_id, stem, orig_size) pass through untouched.
    """

    defers_color = True  # the training loader may leave the colour jitter to the device (`apply_color_jitter`)

    def __init__(self, name: str, transforms: Sequence[Callable], color_jitter: v2.ColorJitter | None = None) -> None:
        self.name = name
        self.transforms = list(transforms)
        self.compose = v2.Compose(self.transforms) if self.transforms else None
        self.color_jitter = color_jitter

    def __call__(
        self, image: torch.Tensor, target: dict[str, Any], *, defer_color: bool = False
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """`defer_color`: draw the colour jitter's factors but leave them in target["color_jitter"] for
        `apply_color_jitter` to apply on the device, batched with the uint8 -> float conversion there,
        instead of three float round trips of the image on a loader core."""
        if self.compose is None and self.color_jitter is None:
            return image, target
        image, target = self._geometry(image, target)
        if self.color_jitter is not None:
            p = self.color_jitter.make_params([image])
            target = {
                **target,
                "color_jitter": torch.tensor(
                    [*p["fn_idx"].tolist(), p["brightness_factor"], p["contrast_factor"], p["saturation_factor"]]
                ),
            }
            if not defer_color:
                jittered = apply_color_jitter(
                    image.as_subclass(torch.Tensor).float() / 255
                    if image.dtype == torch.uint8
                    else image.as_subclass(torch.Tensor),
                    target.pop("color_jitter"),
                )
                image = tv_tensors.Image(
                    F.to_dtype(jittered, image.dtype, scale=True) if image.dtype == torch.uint8 else jittered
                )
        return image, target

    def _geometry(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.compose is None:
            return image, target
        image_dtype = image.dtype
        image = tv_tensors.Image(F.to_dtype(image.as_subclass(torch.Tensor), torch.uint8, scale=True))
        target = dict(target)
        dtypes = {}
        for key, kind in (("semantic", SemanticMap), ("dt", DistanceMap)):
            if key in target:
                dense = target[key].as_subclass(torch.Tensor)
                dtypes[key] = dense.dtype
                if dense.dtype != torch.uint8 and dense.numel() and 0 <= int(dense.min()) and int(dense.max()) <= 255:
                    dense = dense.to(torch.uint8)
                target[key] = kind(dense)
        image, target = self.compose(image, target)
        image = tv_tensors.Image(F.to_dtype(image.as_subclass(torch.Tensor), image_dtype, scale=True))
        for key, dtype in dtypes.items():
            target[key] = tv_tensors.Mask(target[key].as_subclass(torch.Tensor).to(dtype))
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(type(t).__name__ for t in self.transforms) or "identity"
        if self.color_jitter is not None:
            inner += ", ColorJitter"
        return f"Pipeline({self.name!r}: {inner})"


def apply_color_jitter(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter on a float 0..1 image [3, H, W] (any device) with the factors a
    `Pipeline` drew: params [7] = the order of the four adjustments (0 brightness, 1 contrast, 2
    saturation, 3 hue: not used), then the brightness, contrast and saturation factors."""
    order, factors = params[:4].long().tolist(), params[4:].tolist()
    adjust = {0: F.adjust_brightness, 1: F.adjust_contrast, 2: F.adjust_saturation}
    for fn in order:
        if fn in adjust:
            image = adjust[fn](image, factors[fn])
    return image


def _int(options: dict[str, Any], key: str) -> int:
    v = options[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise UserError(f"data.{key} must be a whole number >= 0 (0 = off), got {v!r}")
    return v


def _pair(options: dict[str, Any], key: str, kind: type) -> tuple:
    v = options[key]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v, v]
    ok = (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v)
    )
    if ok and kind is int:
        ok = all(float(x).is_integer() for x in v)
    if not ok:
        raise UserError(f"data.{key} must be a pair of {'whole numbers' if kind is int else 'numbers'} >= 0, got {v!r}")
    return kind(v[0]), kind(v[1])


def _bool(options: dict[str, Any], key: str) -> bool:
    if not isinstance(options[key], bool):
        raise UserError(f"data.{key} must be true or false, got {options[key]!r}")
    return options[key]


def _float(options: dict[str, Any], key: str, low: float) -> float:
    v = options[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
        raise UserError(f"data.{key} must be a number >= {low:g}, got {v!r}")
    return float(v)


def build_transforms(name: str, train: bool, **options: Any) -> Pipeline:
    """The augmentation pipeline `name` as a callable `(image, target) -> (image, target)`.

    Names:
      none        nothing (the model resizes its own inputs)
      ssd         SSD (Liu et al. 2016): photometric distortion, zoom-out, IoU-constrained random crop,
                  horizontal flip, resize to a min_size x min_size square, drop emptied boxes
      cityscapes  resize to min_size/max_size times a random scale from scale_range (one resampling),
                  random crop (crop_size, padded
                  with 255 / 0 where the image is smaller), drop boxes whose centre left the crop,
                  horizontal flip, drop emptied boxes
    With `train=False` every name is the identity (see the module docstring).

    Options (a recipe's [data] keys; `OPTIONS` holds the defaults, other keys are a UserError except the
    non-augmentation keys in `RECIPE_KEYS`, which are ignored):
      min_size      int, 0 = off. ssd: side of the square output. cityscapes: shorter side after resizing.
      max_size      int, 0 = off. cityscapes: cap on the longer side after resizing (alone: longer side).
      scale_range   [lo, hi] floats > 0, default [1, 1] = off. cityscapes: random scale factor.
      crop_size     [H, W] ints (or one int), 0 = off. cityscapes: random crop size.
      flip          bool, default true: horizontal flip with probability 0.5 (both names).
      photometric   bool, default true. ssd: RandomPhotometricDistort.
      zoom_out      float >= 1, default 4.0 (1 = off). ssd: largest canvas side / image side of zoom-out.
      iou_crop      bool, default true. ssd: RandomIoUCrop.
      min_box_size  float >= 1, default 1. Boxes narrower or shorter than this (pixels) after augmenting
                    are dropped with their labels, crowd flags and masks.
      targets       list of names, default [] = what the model's loss reads (`dataset.loss_targets`):
                    the dense targets the training loader decodes, among masks, semantic, dt. Not an
                    augmentation: read by the training loop, accepted here so that [data] passes whole.
      color_jitter  float >= 0, default 0 = off. cityscapes: random brightness, contrast and saturation
                    factors in [1 - j, 1 + j] (v2.ColorJitter), after the geometric steps; in the training
                    loader the factors are drawn per sample and applied on the device (`to_device`).
    """
    if name not in NAMES:
        raise UserError(f"unknown augmentation {name!r}; choose one of: {', '.join(NAMES)}")
    unknown = sorted(set(options) - set(OPTIONS) - RECIPE_KEYS)
    if unknown:
        raise UserError(f"unknown augmentation option(s) {', '.join(unknown)}; valid options: {', '.join(OPTIONS)}")
    opts = {**OPTIONS, **{k: v for k, v in options.items() if k in OPTIONS}}
    min_size, max_size = _int(opts, "min_size"), _int(opts, "max_size")
    scale = _pair(opts, "scale_range", float)
    crop = _pair(opts, "crop_size", int)
    flip, photometric, iou_crop = _bool(opts, "flip"), _bool(opts, "photometric"), _bool(opts, "iou_crop")
    zoom_out = _float(opts, "zoom_out", 1.0)
    min_box_size = _float(opts, "min_box_size", 1.0)
    jitter = _float(opts, "color_jitter", 0.0)
    if scale[0] <= 0 or scale[0] > scale[1]:
        raise UserError(f"data.scale_range must be [lo, hi] with 0 < lo <= hi, got {list(scale)}")
    if (crop[0] == 0) != (crop[1] == 0):
        raise UserError(f"data.crop_size must be [H, W] with both > 0, or [0, 0] for no crop; got {list(crop)}")

    if not train or name == "none":
        return Pipeline(name, [])
    steps: list[Callable] = []
    if name == "ssd":
        size = (min_size, min_size) if min_size else None
        if zoom_out > 1.0 or iou_crop or size:
            steps.append(
                SSDGeometry(
                    size,
                    zoom_out=zoom_out,
                    iou_crop=iou_crop,
                    photometric=v2.RandomPhotometricDistort(p=0.5) if photometric else None,
                )
            )
        elif photometric:
            steps.append(v2.RandomPhotometricDistort(p=0.5))
        if flip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
    else:  # cityscapes
        scaled = min_size or max_size or scale != (1.0, 1.0)
        if crop[0]:
            # unclipped boxes through the crop, so that DropBoxesOutsideCrop sees their true centres
            steps += [
                v2.SetClampingMode(None),
                ScaleCrop(crop, scale, min_size=min_size, max_size=max_size),
                DropBoxesOutsideCrop(),
            ]
        elif scaled:
            steps.append(RandomScale(scale, min_size=min_size, max_size=max_size))
        if flip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps.append(SanitizeBoxes(min_size=min_box_size))
    # colour jitter after the geometric steps: on the (usually smaller) crop, and, in the training loader,
    # on the device (`apply_color_jitter`)
    jitter_step = (
        v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter)
        if name == "cityscapes" and jitter > 0
        else None
    )
    return Pipeline(name, steps, color_jitter=jitter_step)
