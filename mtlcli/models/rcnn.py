"""Two-stage detectors (Faster / Mask R-CNN) behind the DESIGN.md §4 contract, built from torchvision.

What every two-stage family (the baselines here, DATNet in `datnet.py`, SA-FPN in `safpn.py`) shares:

- `build_resnet_fpn`: a torchvision ResNet trunk (ImageNet weights via `load_pretrained`) with an FPN of
  any width; levels "0".."3" = P2..P5 (strides 4..32) and "pool" = P6 (max-pool of P5, stride 64).
- `build_rpn` / `build_roi_heads`: torchvision's `RegionProposalNetwork` and `RoIHeads` with their
  defaults spelled out as keyword arguments (the box/mask pooler, heads and predictors can be swapped).
- `TwoStageDetector`: the adapter between torchvision's GeneralizedRCNN pieces and our contract —
  crowd boxes and degenerate boxes are removed from the targets before matching, box-only datasets can
  train the mask head on filled boxes, dense targets (`semantic`, `dt`) are resized and padded with the
  images, and eval outputs carry the RPN `proposals` (for the AR metric) in the original frame.

Steps (named so that a benchmark can time the network alone):
    preprocess(images, targets) -> (ImageList, targets, original sizes)   resize, normalise, pad
    network(batch, targets)     -> raw dict                               backbone, RPN, RoI heads
    loss(raw, targets)          -> dict of loss_*                         (training)
    postprocess(raw, ...)       -> list of per-image dicts                boxes rescaled, masks pasted
In training the RPN and RoI heads sample their anchors / RoIs against the targets inside `network`
(sampling is part of a two-stage forward pass), so their loss terms are computed there and `loss`
collects them together with any dense auxiliary losses.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
    resize_boxes,
)
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from mtlcli.errors import UserError
from mtlcli.models.backbones import load_pretrained
from mtlcli.models.base import IMAGENET_MEAN, IMAGENET_STD

IGNORE_INDEX = 255
FPN_LEVELS = ["0", "1", "2", "3"]  # P2..P5; "pool" (P6) only feeds the RPN

RESNET_WEIGHTS = {
    "resnet18": resnet.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": resnet.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": resnet.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": resnet.ResNet101_Weights.IMAGENET1K_V1,
    # DATNet Tables 1 and 7: torchvision's ResNeXt-101 32x8d (local weights: its .pth state dict)
    "resnext101_32x8d": resnet.ResNeXt101_32X8D_Weights.IMAGENET1K_V1,
}

# The tiny configuration used by tests, the quickstart and `*-tiny-synthetic` recipes: a resnet18
# trunk, a 32-channel FPN, images of at most 160 pixels and few RoIs. Pass as **TINY to a builder.
TINY: dict[str, Any] = dict(
    backbone="resnet18",
    fpn_channels=32,
    representation_size=64,
    mask_channels=32,
    min_size=128,
    max_size=160,
    anchor_sizes=(16, 32, 64, 128, 256),
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=64,
)


# --------------------------------------------------------------------------------------------- pieces
def build_resnet_fpn(
    backbone: str = "resnet50",
    pretrained_backbone: bool | str = False,
    fpn_channels: int = 256,
    trainable_layers: int | None = None,
) -> BackboneWithFPN:
    """ResNet trunk + FPN: returns {"0": P2, "1": P3, "2": P4, "3": P5, "pool": P6}, each [B, C, H/s, W/s].

    With ImageNet weights the trunk uses frozen batch norm and trains its last `trainable_layers`
    (default 3) stages, as torchvision's detection builders do; from scratch it uses ordinary batch norm
    and trains everything. The trunk is also kept as `.trunk_layer4` so a res5 head can start from it.
    """
    if backbone not in RESNET_WEIGHTS:
        raise UserError(f"unknown backbone {backbone!r} for a two-stage model; valid: {', '.join(RESNET_WEIGHTS)}")
    pretrained = pretrained_backbone not in (False, None, "", "false")
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    trunk = getattr(resnet, backbone)(weights=None, norm_layer=norm_layer)
    load_pretrained(trunk, pretrained_backbone, RESNET_WEIGHTS[backbone])
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise UserError(f"trainable_layers must be between 0 and 5, got {trainable_layers}")
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for name, param in trunk.named_parameters():
        if not any(name.startswith(prefix) for prefix in train):
            param.requires_grad_(False)
    c5 = trunk.inplanes  # channels after layer4: 2048 (bottleneck) or 512 (basic block)
    in_channels = [c5 // 8, c5 // 4, c5 // 2, c5]
    return BackboneWithFPN(
        trunk,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=in_channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def build_rpn(
    channels: int,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    pre_nms_top_n_train: int = 2000,
    post_nms_top_n_train: int = 2000,
    pre_nms_top_n_test: int = 1000,
    post_nms_top_n_test: int = 1000,
    nms_thresh: float = 0.7,
    fg_iou_thresh: float = 0.7,
    bg_iou_thresh: float = 0.3,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
) -> RegionProposalNetwork:
    """torchvision's RPN with one anchor size per pyramid level (P2..P6) and three aspect ratios."""
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (tuple(aspect_ratios),) * len(anchor_sizes))
    return RegionProposalNetwork(
        anchors,
        RPNHead(channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh,
        bg_iou_thresh,
        batch_size_per_image,
        positive_fraction,
        dict(training=pre_nms_top_n_train, testing=pre_nms_top_n_test),
        dict(training=post_nms_top_n_train, testing=post_nms_top_n_test),
        nms_thresh,
    )


def build_roi_heads(
    box_roi_pool: nn.Module,
    box_head: nn.Module,
    box_predictor: nn.Module,
    mask_roi_pool: nn.Module | None = None,
    mask_head: nn.Module | None = None,
    mask_predictor: nn.Module | None = None,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> RoIHeads:
    """torchvision's `RoIHeads` (sampling 512 RoIs at 1:3, IoU 0.5, box coder weights 10, 10, 5, 5).

    The pooler is any module called as `pool(features, proposals, image_shapes)`, so multi-level poolers
    (DATNet's MSPwA) plug in where `MultiScaleRoIAlign` would go.
    """
    return RoIHeads(
        box_roi_pool, box_head, box_predictor,
        0.5, 0.5, batch_size_per_image, positive_fraction, None,
        score_thresh, nms_thresh, detections_per_img,
        mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor,
    )  # fmt: skip


Branch = tuple[nn.Module, nn.Module, nn.Module]  # (RoI pooler, head, predictor): build_roi_heads' order


def standard_box_branch(channels: int, num_classes: int, representation_size: int = 1024) -> Branch:
    """FPN box branch of Mask R-CNN: level-assigned RoIAlign 7x7, two FC layers, class + box predictor."""
    pool = MultiScaleRoIAlign(FPN_LEVELS, output_size=7, sampling_ratio=2)
    head = TwoMLPHead(channels * 7 * 7, representation_size)
    return pool, head, FastRCNNPredictor(representation_size, num_classes)


def standard_mask_branch(channels: int, num_classes: int, mask_channels: int = 256) -> Branch:
    """FPN mask branch of Mask R-CNN: RoIAlign 14x14, four 3x3 convs, deconv x2, 1x1 conv -> 28x28 logits."""
    pool = MultiScaleRoIAlign(FPN_LEVELS, output_size=14, sampling_ratio=2)
    head = MaskRCNNHeads(channels, [mask_channels] * 4, 1)
    return pool, head, MaskRCNNPredictor(mask_channels, mask_channels, num_classes)


class RCNNTransform(GeneralizedRCNNTransform):
    """`GeneralizedRCNNTransform` with a separate test scale and continuous multi-scale training.

    Training picks the short side at random from `min_size` (multi-scale training) with the long side at
    most `max_size`: a list is a set of choices, a string "LO-HI" (e.g. "400-1200") any integer in that
    range, uniformly (the DATNet paper's MST: "randomly chosen between 400 and 1200"). Evaluation always
    uses `test_min_size` / `test_max_size` (torchvision would use the last training scale instead).
    """

    def __init__(
        self, min_size: int | str | Sequence[int], max_size: int, test_min_size: int, test_max_size: int
    ) -> None:
        self.size_range = parse_size_range(min_size)
        if self.size_range is not None:
            sizes: tuple[int, ...] = (self.size_range[0],)
        else:
            sizes = (int(min_size),) if isinstance(min_size, (int, float)) else tuple(int(s) for s in min_size)
        super().__init__(sizes, int(max_size), list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=32)
        self.test_min_size = int(test_min_size)
        self.test_max_size = int(test_max_size)

    def torch_choice(self, k: list[int]) -> int:
        if self.size_range is not None:
            lo, hi = self.size_range
            return int(torch.randint(lo, hi + 1, (1,)).item())
        return super().torch_choice(k)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if self.training:
            return super().resize(image, target)
        h, w = image.shape[-2:]
        sides = eval_resize_size(image, self.test_min_size, self.test_max_size)
        # traced: the 0-dim tensors themselves (the graph's Resize takes them as its sizes); eager: ints
        size: Any = sides if torch.jit.is_tracing() else [int(v) for v in sides]
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is not None:
            if "masks" in target:  # as torchvision's resize does it (nearest)
                masks = target["masks"]
                target["masks"] = F.interpolate(masks[:, None].float(), size=size)[:, 0].to(masks.dtype)
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target


def eval_resize_size(image: Tensor, min_size: int, max_size: int) -> list[Tensor]:
    """The evaluation size of `image` [C, H, W]: short side to `min_size` unless the long side would pass
    `max_size` (then long side to `max_size`), the other side floor(side * scale), in integer arithmetic.
    torchvision multiplies by a float scale: eager in float64, an exported graph in float32 by a reciprocal,
    so at some sizes (141 x 185 at 128 / 256) the graph makes 127 rows where eager PyTorch makes 128 and
    the two see other pictures. Exact integers give both the same size; eager PyTorch's float64 floor
    differs from them only where side * scale is a whole number that float64 rounds below (then by one
    pixel). Traceable: int64 tensors [2] -> a list of two 0-dim tensors."""
    shape = torch._shape_as_tensor(image)[-2:]
    lo, hi = shape.min(), shape.max()
    by_short = min_size * hi <= max_size * lo  # min_size / lo <= max_size / hi
    out = torch.where(by_short, torch.div(shape * min_size, lo, rounding_mode="floor"),
                      torch.div(shape * max_size, hi, rounding_mode="floor"))  # fmt: skip
    return [out[0], out[1]]


def parse_size_range(min_size: Any) -> tuple[int, int] | None:
    """ "LO-HI" -> (LO, HI) (a continuous range of training short sides); anything else -> None."""
    if not isinstance(min_size, str):
        return None
    parts = min_size.replace(" ", "").split("-")
    try:
        lo, hi = (int(x) for x in parts)
    except ValueError:
        raise UserError(
            f'min_size {min_size!r}: give an int, a list of ints or a range "LO-HI" such as "400-1200"'
        ) from None
    if not 0 < lo <= hi:
        raise UserError(f"min_size range {min_size!r} needs 0 < LO <= HI")
    return lo, hi


# ------------------------------------------------------------------------------------------- adapter
def _plain(x: Any) -> Any:
    """tv_tensors (BoundingBoxes, Mask, Image) -> plain tensors, so torchvision's ops see ordinary data."""
    return x.as_subclass(Tensor) if isinstance(x, Tensor) else x


def boxes_to_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Filled boxes as instance masks: boxes [N, 4] xyxy pixels -> uint8 [N, H, W] (1 inside)."""
    h, w = size
    ys = torch.arange(h, device=boxes.device, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=torch.float32)[None, None, :] + 0.5
    b = boxes[:, :, None, None].float()
    inside = (xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])
    return inside.to(torch.uint8)


class TwoStageDetector(nn.Module):
    """Backbone -> RPN -> RoI heads, following DESIGN.md §4.

        model(images: list[Tensor[3, H, W] float 0..1], targets=None)
        train -> {loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg[, loss_mask], ...}
        eval  -> per image, in its original pixel frame: boxes [N, 4] xyxy float, scores [N],
                 labels [N] int64 1..K, masks [N, 1, H, W] float 0..1 (with a mask head),
                 proposals [P, 4] xyxy float (RPN boxes, best first), plus `dense_outputs` (sem_seg)
        targets: boxes [N, 4] xyxy, labels [N] int64 1..K, masks [N, H, W] uint8 (mask head),
                 iscrowd [N] (crowd boxes are dropped before matching), dense keys in `dense_keys`

    Subclasses change `extract` (features, plus raw dense outputs), `dense_losses` and `dense_outputs`.
    """

    dense_keys: tuple[str, ...] = ()  # target keys resized + padded with the images (255 = ignore)

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        *,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        test_min_size: int | None = None,
        test_max_size: int | None = None,
        boxes_as_masks: bool = False,
    ) -> None:
        super().__init__()
        if test_min_size is None:
            test_min_size = min_size if isinstance(min_size, (int, float)) else 800  # a list or a range: 800
        self.transform = RCNNTransform(min_size, max_size, test_min_size, test_max_size or max_size)
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.boxes_as_masks = boxes_as_masks

    @property
    def has_masks(self) -> bool:
        return self.roi_heads.has_mask()

    # -- step 1: inputs into the network frame
    def preprocess(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None, list[tuple[int, int]]]:
        """Normalise, resize (short side `min_size`, long side <= `max_size`) and pad to a multiple of 32.

        Returns (ImageList: tensors [B, 3, Hp, Wp] + per-image resized (h, w), targets in that frame
        (dense maps padded to [Hp, Wp] with 255), original (H, W) sizes).
        """
        images = [_plain(img) for img in images]
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        if targets is not None:
            targets = [self._clean_target(t, size) for t, size in zip(targets, sizes, strict=True)]
        batch, targets = self.transform(images, targets)
        if targets is not None and self.dense_keys:
            padded = batch.tensors.shape[-2:]
            for t, (h, w) in zip(targets, batch.image_sizes, strict=True):
                for key in self.dense_keys:
                    if key in t:
                        t[key] = _resize_pad_dense(t[key], (h, w), padded)
        return batch, targets, sizes

    def _clean_target(self, target: dict[str, Any], size: tuple[int, int]) -> dict[str, Tensor]:
        t = {k: _plain(v) for k, v in target.items()}
        if "boxes" not in t or "labels" not in t:
            raise ValueError("every target needs 'boxes' [N, 4] xyxy and 'labels' [N]")
        boxes = t["boxes"].float().reshape(-1, 4)
        labels = t["labels"].long().reshape(-1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # augmentation can flatten boxes
        if "iscrowd" in t:
            keep &= t["iscrowd"].reshape(-1) == 0  # crowd regions are not objects to match
        # Usually nothing is dropped: then no copies (the masks are an image plane per instance).
        everything = bool(keep.all())
        out = {"boxes": boxes, "labels": labels} if everything else {"boxes": boxes[keep], "labels": labels[keep]}
        if self.has_masks:
            if self.boxes_as_masks:
                out["masks"] = boxes_to_masks(out["boxes"], size)
            elif "masks" in t:
                out["masks"] = (t["masks"] if everything else t["masks"][keep]).to(torch.uint8)
            else:
                raise UserError(
                    "this model has a mask head but the targets carry no instance 'masks'; "
                    "set model.boxes_as_masks = true to train it on filled boxes"
                )
        for key in self.dense_keys:
            if key in t:
                out[key] = t[key].long()
        return out

    # -- step 2: the network
    def extract(self, images: Tensor) -> tuple[OrderedDict[str, Tensor], dict[str, Tensor]]:
        """Padded batch [B, 3, Hp, Wp] -> (pyramid features for RPN and RoI heads, raw dense outputs)."""
        return self.backbone(images), {}

    def network(self, batch: ImageList, targets: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        """Backbone, RPN and RoI heads on a preprocessed batch (what a benchmark times as the network).

        Returns {"proposals": list of [P, 4] (network frame, best first), "detections": list of dicts in
        the network frame (masks as [N, 1, M, M] probabilities), "dense": raw dense outputs,
        "losses": RPN + RoI losses (training only)}.
        """
        features, dense = self.extract(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        return {
            "proposals": proposals,
            "detections": detections,
            "dense": dense,
            "losses": {**rpn_losses, **roi_losses},
        }

    # -- step 3a: losses
    def dense_losses(self, dense: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return {}

    def loss(self, raw: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """All loss terms (already weighted): RPN and RoI terms from `network`, dense terms from `dense_losses`."""
        return {**raw["losses"], **self.dense_losses(raw["dense"], targets)}

    # -- step 3b: outputs in the original frame
    def dense_outputs(
        self, dense: dict[str, Tensor], image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return [{} for _ in original_sizes]

    def postprocess(
        self, raw: dict[str, Any], image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Boxes and proposals scaled to the original frame and clipped, masks pasted into [N, 1, H, W]."""
        detections = [dict(d) for d in raw["detections"]]  # torchvision rescales in place; keep `raw` intact
        results = self.transform.postprocess(detections, image_sizes, original_sizes)
        dense = self.dense_outputs(raw["dense"], image_sizes, original_sizes)
        for result, extra, proposals, size, orig in zip(
            results, dense, raw["proposals"], image_sizes, original_sizes, strict=True
        ):
            result["proposals"] = box_ops.clip_boxes_to_image(resize_boxes(proposals, size, orig), orig)
            result.update(extra)
        return results

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        batch, targets, sizes = self.preprocess(images, targets if self.training else None)
        raw = self.network(batch, targets)
        if self.training and targets is not None:
            return self.loss(raw, targets)
        return self.postprocess(raw, batch.image_sizes, sizes)


def _resize_pad_dense(label: Tensor, size: tuple[int, int], padded: Sequence[int]) -> Tensor:
    """Dense label map [H, W] int64 -> nearest-resized to `size`, padded to `padded` with 255."""
    if tuple(label.shape[-2:]) != tuple(size):
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    out = label.new_full(tuple(padded), IGNORE_INDEX)
    out[: size[0], : size[1]] = label
    return out


# ------------------------------------------------------------------------------------------ builders
def _check_classes(num_det_classes: int) -> None:
    if int(num_det_classes) < 1:
        raise UserError(f"num_det_classes must be at least 1, got {num_det_classes}")


@dataclass(frozen=True)
class TwoStageOptions:
    """The keyword arguments every R-CNN-family builder shares (Mask / Faster R-CNN, DATNet, SA-FPN), with
    their defaults: trunk layers left trainable, FPN and head widths, image scales (`min_size` may be a
    list: multi-scale training, evaluated at `test_min_size`, default 800; `boxes_as_masks` trains the
    mask head on filled boxes), the RPN's proposal counts and the RoI heads' sampling and test settings.
    A builder decorated with `two_stage_keywords` lists them after its own arguments."""

    trainable_layers: int | None = None
    fpn_channels: int = 256
    representation_size: int = 1024
    mask_channels: int = 256
    min_size: int | Sequence[int] = 800
    max_size: int = 1333
    test_min_size: int | None = None
    test_max_size: int | None = None
    boxes_as_masks: bool = False
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100

    def rpn(self) -> RegionProposalNetwork:
        return build_rpn(
            self.fpn_channels, self.anchor_sizes,
            pre_nms_top_n_train=self.rpn_pre_nms_top_n_train, post_nms_top_n_train=self.rpn_post_nms_top_n_train,
            pre_nms_top_n_test=self.rpn_pre_nms_top_n_test, post_nms_top_n_test=self.rpn_post_nms_top_n_test,
        )  # fmt: skip

    def sampling(self) -> dict[str, Any]:
        """`build_roi_heads`' keyword arguments: RoIs sampled per image, test score / NMS / count."""
        return dict(
            batch_size_per_image=self.box_batch_size_per_image, score_thresh=self.box_score_thresh,
            nms_thresh=self.box_nms_thresh, detections_per_img=self.box_detections_per_img,
        )  # fmt: skip

    def transform(self) -> dict[str, Any]:
        """`TwoStageDetector`'s keyword arguments: the image scales."""
        return dict(
            min_size=self.min_size, max_size=self.max_size, test_min_size=self.test_min_size,
            test_max_size=self.test_max_size, boxes_as_masks=self.boxes_as_masks,
        )  # fmt: skip


B = TypeVar("B")


def two_stage_keywords(builder: Callable[..., B]) -> Callable[..., B]:
    """`builder(own arguments..., *, options: TwoStageOptions)` as a function whose signature is its own
    arguments followed by TwoStageOptions' fields as keywords (what `mtlcli.models.builder_arguments` and
    the recipe checks read); the call gathers those keywords into `options`."""
    own = [p for p in inspect.signature(builder).parameters.values() if p.name != "options"]
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in dataclasses.fields(TwoStageOptions)
    ]
    signature = inspect.signature(builder).replace(parameters=own + shared)

    @functools.wraps(builder)
    def build(*args: Any, **kwargs: Any) -> B:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        options = TwoStageOptions(**{f.name: values.pop(f.name) for f in dataclasses.fields(TwoStageOptions)})
        return builder(**values, options=options)

    build.__signature__ = signature  # type: ignore[attr-defined]
    return build


def _build_baseline(
    masks: bool, num_det_classes: int, backbone: str, pretrained_backbone: bool | str, o: TwoStageOptions
) -> TwoStageDetector:
    _check_classes(num_det_classes)
    body = build_resnet_fpn(backbone, pretrained_backbone, o.fpn_channels, o.trainable_layers)
    rpn = o.rpn()
    num_classes = num_det_classes + 1
    # the mask branch is drawn before the box branch: the order the initial weights have always come in
    mask_pool, mask_head, mask_predictor = (
        standard_mask_branch(o.fpn_channels, num_classes, o.mask_channels) if masks else (None, None, None)
    )
    box_pool, box_head, box_predictor = standard_box_branch(o.fpn_channels, num_classes, o.representation_size)
    roi_heads = build_roi_heads(box_pool, box_head, box_predictor, mask_pool, mask_head, mask_predictor, **o.sampling())
    return TwoStageDetector(body, rpn, roi_heads, **o.transform())


@two_stage_keywords
def build_maskrcnn(
    num_det_classes: int = 80,
    backbone: str = "resnet50",
    pretrained_backbone: bool | str = False,
    *,
    options: TwoStageOptions,
) -> TwoStageDetector:
    """Mask R-CNN R50-FPN (torchvision's architecture: 44.4M parameters for COCO) behind our contract.

    `num_det_classes` excludes background; the other keywords are `TwoStageOptions`'.
    The tiny configuration is `build_maskrcnn(**rcnn.TINY)`.
    """
    return _build_baseline(True, num_det_classes, backbone, pretrained_backbone, options)


@two_stage_keywords
def build_fasterrcnn(
    num_det_classes: int = 20,
    backbone: str = "resnet50",
    pretrained_backbone: bool | str = False,
    *,
    options: TwoStageOptions,
) -> TwoStageDetector:
    """Faster R-CNN R50-FPN (boxes only; `mask_channels` / `boxes_as_masks` are accepted and unused so
    that recipes can switch between the two baselines). Default: the 20 VOC classes."""
    return _build_baseline(False, num_det_classes, backbone, pretrained_backbone, options)
