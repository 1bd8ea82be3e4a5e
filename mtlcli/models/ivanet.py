"""IvaNet (papers/ivanet.txt, MODELS.md §1-2): SSD with local top-down (LTD) modules and a pyramid
segmentation head, its ablations, BlitzNet's full top-down variant, and SSD300-VGG16.

    image -> ResNet trunk (layer2, layer3, layer4: strides 8, 16, 32) -> extra stride-2 layers until 1x1
          -> top-down: "ltd" (IvaNet) | "none" (IvaNet_NO) | "full" (BlitzNet-style ResSkip up path)
          -> per level SSD head (class scores + box offsets)       -> MultiBox loss | decode + NMS
          -> PCM: every level upsampled to the largest, concat, 3x3 conv, 3x3 conv -> seg classes
    L = L_det + W * L_seg

Input to `forward` follows DESIGN.md §4: images [3, H, W] float 0..1 of any size; the model resizes
them to `input_size` (h, w) (square 300/512 or any rectangle), normalises with the ImageNet statistics
and maps every output back to the original frame: boxes [N, 4] xyxy pixels, scores [N], labels [N]
int64 1..K, sem_seg [C, H, W] softmax scores. Training returns loss_det_cls, loss_det_box (together
L_det, both divided by the number of positive default boxes) and loss_seg (already times W).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.ssd import SSDHead, _vgg_extractor
from torchvision.ops.misc import Conv2dNormActivation

from mtlcli.errors import UserError
from mtlcli.models.backbones import load_pretrained
from mtlcli.models.base import IMAGENET_MEAN, IMAGENET_STD, MultiTaskModel, boxes_to_original, semantic_to_original
from mtlcli.ops import multibox

IGNORE_INDEX = 255

# name -> (constructor, ImageNet weights, channels of layer2, layer3, layer4)
TRUNKS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, (128, 256, 512)),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1, (128, 256, 512)),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1, (512, 1024, 2048)),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1, (512, 1024, 2048)),
}


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def pyramid_sizes(input_size: tuple[int, int]) -> list[tuple[int, int]]:
    """(h, w) of every pyramid level for an input (h, w): ResNet layer2..layer4 (strides 8, 16, 32),
    then one per extra layer (3x3 stride 2, padding 1, or 0 along a side of 3 so that 3 -> 1 as in SSD)
    until 1x1. 300 -> 38, 19, 10, 5, 3, 1; 512 -> 64, 32, 16, 8, 4, 2, 1."""
    h, w = input_size
    sizes = []
    h, w = conv_out(h, 7, 2, 3), conv_out(w, 7, 2, 3)  # stem conv
    h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)  # max pool (layer1 keeps the size)
    for _ in range(3):  # layer2..layer4
        h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        sizes.append((h, w))
    while (h, w) != (1, 1):
        h, w = conv_out(h, 3, 2, extra_padding(h)), conv_out(w, 3, 2, extra_padding(w))
        sizes.append((h, w))
    return sizes


def extra_padding(size: int) -> int:
    return 0 if size == 3 else 1


def conv_norm_act(
    in_ch: int, out_ch: int, kernel: int, size: tuple[int, int], *, act: bool = True, **kw: Any
) -> nn.Module:
    """Conv + BN (+ ReLU) for a layer whose output is `size` (h, w). On a 1x1 map BN would normalise
    over the batch alone (and fails for a batch of one), so there the conv keeps its bias instead."""
    norm = nn.BatchNorm2d if size[0] * size[1] > 1 else None
    return Conv2dNormActivation(in_ch, out_ch, kernel, norm_layer=norm, activation_layer=nn.ReLU if act else None, **kw)


# ---------------------------------------------------------------------------------------- bottom-up
class ResNetTrunk(nn.Module):
    """A torchvision ResNet without avgpool/fc (the paper drops everything after block4).

    forward: [B, 3, h, w] normalised -> [layer2, layer3, layer4] features at strides 8, 16, 32.
    Parameter names are torchvision's, so ImageNet state dicts load directly.
    """

    def __init__(self, name: str = "resnet50") -> None:
        super().__init__()
        if name not in TRUNKS:
            raise UserError(f"unknown IvaNet backbone {name!r}; valid: {', '.join(TRUNKS)}")
        net = TRUNKS[name][0](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = list(TRUNKS[name][2])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class ResNetPyramid(nn.Module):
    """Trunk + extra layers (1x1 conv `extra_channels[0]` -> 3x3 stride-2 conv `extra_channels[1]`,
    each with BN-ReLU) until the map is 1x1. forward -> one feature map per level, largest first."""

    def __init__(self, trunk: ResNetTrunk, sizes: Sequence[tuple[int, int]], extra_channels: tuple[int, int]) -> None:
        super().__init__()
        self.trunk = trunk
        mid, out = extra_channels
        self.extras = nn.ModuleList()
        channels = list(trunk.out_channels)
        for (h, w), size in pairwise(sizes[2:]):  # from the level of (h, w) to the next one
            self.extras.append(
                nn.Sequential(
                    conv_norm_act(channels[-1], mid, 1, (h, w)),
                    conv_norm_act(mid, out, 3, size, stride=2, padding=(extra_padding(h), extra_padding(w))),
                )
            )
            channels.append(out)
        self.out_channels = channels

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.trunk(x)
        for extra in self.extras:
            feats.append(extra(feats[-1]))
        return feats


# ---------------------------------------------------------------------------------------- top-down
def upsample_conv(in_ch: int, out_ch: int, src: tuple[int, int], dst: tuple[int, int]) -> nn.ConvTranspose2d:
    """A learned x2 upsampling (3x3 transposed conv, stride 2) whose padding and output padding are
    chosen per side so that `src` (h, w) becomes exactly `dst` (e.g. 10 -> 19, 5 -> 10, 1 -> 3)."""
    pads, extra = [], []
    for s, d in zip(src, dst, strict=True):
        full = 2 * s + 1  # output of a 3x3 stride-2 transposed conv without padding
        p = (full - d + 1) // 2
        pads.append(p)
        extra.append(d - (full - 2 * p))
    if min(pads) < 0 or not all(0 <= e <= 1 for e in extra):
        raise ValueError(f"cannot upsample {src} to {dst} with a stride-2 transposed conv")
    return nn.ConvTranspose2d(
        in_ch, out_ch, 3, stride=2, padding=(pads[0], pads[1]), output_padding=(extra[0], extra[1])
    )


class LocalTopDown(nn.Module):
    """LTD modules (LTD-SSD, IvaNet's 384-channel variant) over all pyramid levels.

    Level n: U1 = 3x3 conv-BN-ReLU(upsample(C_n+1)); U2 = ReLU(upsample(U1 of level n+1) + BN(1x1(C_n)))
    (U1 of level n+1 carries level n+2); out = 1x1 conv-BN-ReLU(concat[C_n, U1, U2]) to `width`.
    The second-to-last level has no U2, the last level only the 1x1 conv.
    """

    def __init__(
        self, channels: Sequence[int], sizes: Sequence[tuple[int, int]], width: int = 384, inner: int = 128
    ) -> None:
        super().__init__()
        n = len(channels)
        self.u1_up = nn.ModuleList(
            [upsample_conv(channels[i + 1], inner, sizes[i + 1], sizes[i]) for i in range(n - 1)]
        )
        self.u1_conv = nn.ModuleList([conv_norm_act(inner, inner, 3, sizes[i]) for i in range(n - 1)])
        self.u2_up = nn.ModuleList([upsample_conv(inner, inner, sizes[i + 1], sizes[i]) for i in range(n - 2)])
        self.u2_lat = nn.ModuleList([conv_norm_act(channels[i], inner, 1, sizes[i], act=False) for i in range(n - 2)])
        self.fuse = nn.ModuleList(
            [conv_norm_act(channels[i] + inner * min(2, n - 1 - i), width, 1, sizes[i]) for i in range(n)]
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        n = len(feats)
        u1 = [conv(up(feats[i + 1])) for i, (up, conv) in enumerate(zip(self.u1_up, self.u1_conv, strict=True))]
        u2 = [
            F.relu(up(u1[i + 1]) + lat(feats[i]))
            for i, (up, lat) in enumerate(zip(self.u2_up, self.u2_lat, strict=True))
        ]
        out = []
        for i in range(n):
            parts = [feats[i]] + u1[i : i + 1] + u2[i : i + 1]
            out.append(self.fuse[i](torch.cat(parts, 1)))
        return out


class NoTopDown(nn.Module):
    """IvaNet_NO: every level is only a 1x1 conv-BN-ReLU to `width`."""

    def __init__(self, channels: Sequence[int], sizes: Sequence[tuple[int, int]], width: int = 384) -> None:
        super().__init__()
        self.proj = nn.ModuleList([conv_norm_act(c, width, 1, s) for c, s in zip(channels, sizes, strict=True)])

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [p(f) for p, f in zip(self.proj, feats, strict=True)]


class FullTopDown(nn.Module):
    """BlitzNet's full top-down path: from the coarsest level down, ResSkip blocks
    y_n = up(y_n+1) + 1x1(3x3(1x1(concat[up(y_n+1), C_n]))) with bilinear `up` to level n's size."""

    def __init__(
        self, channels: Sequence[int], sizes: Sequence[tuple[int, int]], width: int = 384, inner: int = 128
    ) -> None:
        super().__init__()
        self.top = conv_norm_act(channels[-1], width, 1, sizes[-1])
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    conv_norm_act(width + c, inner, 1, s),
                    conv_norm_act(inner, inner, 3, s),
                    nn.Conv2d(inner, width, 1),
                )
                for c, s in zip(channels[:-1], sizes[:-1], strict=True)
            ]
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        y = self.top(feats[-1])
        out = [y]
        for i in range(len(feats) - 2, -1, -1):
            up = F.interpolate(y, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            y = up + self.blocks[i](torch.cat([up, feats[i]], 1))
            out.append(y)
        return out[::-1]


# ---------------------------------------------------------------------------------------- heads
class PyramidSegHead(nn.Module):
    """PCM: every level upsampled bilinearly to the largest level's size, concatenated, 3x3 conv-BN-ReLU
    (`width`), 3x3 conv -> class logits at the largest level's resolution (stride 8).

    `reduce` > 0 first projects each level with a 1x1 conv (no BN/ReLU) at its own resolution (inferred,
    for speed): a 1x1 conv commutes with bilinear upsampling, so this is exactly a block-diagonal 1x1
    projection of the concatenation, at a fraction of the cost.
    """

    def __init__(self, channels: Sequence[int], num_classes: int, width: int = 128, reduce: int = 32) -> None:
        super().__init__()
        self.reduce = nn.ModuleList([nn.Conv2d(c, reduce, 1) if reduce > 0 else nn.Identity() for c in channels])
        cat = reduce * len(channels) if reduce > 0 else sum(channels)
        self.conv = Conv2dNormActivation(cat, width, 3)
        self.classifier = nn.Conv2d(width, num_classes, 3, padding=1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        parts = [r(f) for r, f in zip(self.reduce, feats, strict=True)]
        parts = [parts[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in parts[1:]]
        return self.classifier(self.conv(torch.cat(parts, 1)))


# ---------------------------------------------------------------------------------------- the model
class SSDMultiTask(MultiTaskModel):
    """An SSD-style single-shot model with an optional segmentation head (IvaNet and its variants,
    BlitzNet, SSD300-VGG16). `body(batch)` gives the pyramid levels (largest first, a list or an
    OrderedDict); `det_head` is a torchvision `SSDHead` over them, `seg_head` maps them to logits.

    network(batch [B, 3, h, w]) -> {"cls_logits": [B, A, K+1], "bbox_regression": [B, A, 4],
                                    "seg_logits": [B, C, h', w']} (keys of the heads present)
    """

    default_boxes: Tensor

    def __init__(
        self,
        body: nn.Module,
        det_head: nn.Module | None,
        seg_head: nn.Module | None,
        default_boxes: Tensor | None,
        input_size: int | tuple[int, int],
        *,
        seg_loss_weight: float = 1.0,
        iou_threshold: float = 0.5,
        neg_pos_ratio: int = 3,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        detections_per_img: int = 200,
        topk_candidates: int = 400,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(input_size, mean=mean, std=std)
        if det_head is None and seg_head is None:
            raise UserError("a model needs a detection head, a segmentation head or both — enable det_head or seg_head")
        self.body, self.det_head, self.seg_head = body, det_head, seg_head
        if default_boxes is not None:
            # [A, 4] xyxy in the network frame; recomputed from the configuration, not saved
            self.register_buffer("default_boxes", default_boxes, persistent=False)
        self.seg_loss_weight = seg_loss_weight
        self.iou_threshold, self.neg_pos_ratio = iou_threshold, neg_pos_ratio
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates

    def network(self, batch: Tensor) -> dict[str, Tensor]:
        feats = self.body(batch)
        if isinstance(feats, dict):
            feats = list(feats.values())
        out: dict[str, Tensor] = {}
        if self.det_head is not None:
            out.update(self.det_head(feats))
        if self.seg_head is not None:
            out["seg_logits"] = self.seg_head(feats)
        return out

    def loss(self, raw: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        if self.det_head is not None:
            det = multibox.multibox_loss(
                raw["cls_logits"],
                raw["bbox_regression"],
                self.default_boxes,
                targets,
                iou_threshold=self.iou_threshold,
                neg_pos_ratio=self.neg_pos_ratio,
            )
            losses["loss_det_cls"] = det["loss_cls"]
            losses["loss_det_box"] = det["loss_box"]
        if self.seg_head is not None:
            losses["loss_seg"] = self.seg_loss_weight * segmentation_loss(raw["seg_logits"], targets, self.input_size)
        return losses

    def postprocess(self, raw: dict[str, Tensor], original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        results: list[dict[str, Tensor]] = []
        for i, size in enumerate(original_sizes):
            result: dict[str, Tensor] = {}
            if self.det_head is not None:
                det = multibox.decode_detections(
                    raw["cls_logits"][i],
                    raw["bbox_regression"][i],
                    self.default_boxes,
                    self.input_size,
                    score_thresh=self.score_thresh,
                    nms_thresh=self.nms_thresh,
                    topk_candidates=self.topk_candidates,
                    detections_per_img=self.detections_per_img,
                )
                det["boxes"] = boxes_to_original(det["boxes"], self.input_size, size)
                result.update(det)
            if self.seg_head is not None:
                result["sem_seg"] = semantic_to_original(raw["seg_logits"][i], size)
            results.append(result)
        return results


def segmentation_loss(logits: Tensor, targets: list[dict[str, Tensor]], input_size: tuple[int, int]) -> Tensor:
    """Pixel-wise softmax cross-entropy of logits [B, C, h', w'] (upsampled bilinearly to the network
    input `input_size`) against targets' "semantic" [h, w] int64 (255 = ignore; a missing map ignores
    the whole image), averaged over the labelled pixels of the batch (0 when there are none)."""
    logits = F.interpolate(logits.float(), size=input_size, mode="bilinear", align_corners=False)
    labels = torch.stack(
        [
            t["semantic"].to(logits.device, torch.int64)
            if "semantic" in t
            else torch.full(input_size, IGNORE_INDEX, dtype=torch.int64, device=logits.device)
            for t in targets
        ]
    )
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def default_box_config(
    input_size: tuple[int, int], num_levels: int
) -> tuple[list[list[int]], list[float], list[int] | None]:
    """(aspect ratios, scales, steps): SSD300's or SSD512's boxes at those sizes, else the SSD pattern
    ([2], then [2, 3] on all middle levels, [2] on the last two) with `ssd_scales` and grid-based steps."""
    if input_size == (300, 300) and num_levels == 6:
        return multibox.SSD300_ASPECT_RATIOS, multibox.SSD300_SCALES, multibox.SSD300_STEPS
    if input_size == (512, 512) and num_levels == 7:
        return multibox.SSD512_ASPECT_RATIOS, multibox.SSD512_SCALES, multibox.SSD512_STEPS
    ratios = [[2]] + [[2, 3]] * max(num_levels - 3, 0) + [[2]] * min(2, num_levels - 1)
    return ratios, multibox.ssd_scales(num_levels), None


def _size(input_size: int | Sequence[int]) -> tuple[int, int]:
    sides = [int(input_size)] * 2 if isinstance(input_size, (int, float)) else [int(s) for s in input_size]
    if len(sides) != 2 or min(sides) < 32:
        raise UserError(f"input_size must be a side or an (h, w) pair of at least 32 pixels, got {input_size!r}")
    return sides[0], sides[1]


def build_ivanet(
    num_det_classes: int = 20,
    num_seg_classes: int = 21,
    input_size: int | Sequence[int] = 300,
    backbone: str = "resnet50",
    pretrained_backbone: bool | str = False,
    topdown: str = "ltd",
    det_head: bool = True,
    seg_head: bool = True,
    seg_loss_weight: float = 1.0,
    width: int = 384,
    topdown_channels: int = 128,
    extra_channels: Sequence[int] = (256, 512),
    seg_width: int = 128,
    seg_reduce: int = 32,
    aspect_ratios: list[list[int]] | None = None,
    box_scales: list[float] | None = None,
    iou_threshold: float = 0.5,
    neg_pos_ratio: int = 3,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 200,
) -> SSDMultiTask:
    """IvaNet and its Table 1 variants (defaults: IvaNet300 on VOC, 20 det classes + 21 seg classes).

    topdown: "ltd" (IvaNet), "none" (IvaNet_NO), "full" (BlitzNet-style ResSkip path; inferred form).
    det_head / seg_head: False gives IvaNet_seg / IvaNet_det. input_size: 300, 512 or (h, w).
    width: channels of every pyramid level after the top-down modules (the paper's 384).
    topdown_channels: the LTD's U1/U2 channels (LTD-SSD's 128) and BlitzNet's ResSkip bottleneck.
    extra_channels: (1x1, 3x3 stride-2) channels of the extra layers (SSD's 256 -> 512).
    seg_width: channels of PCM's 3x3 conv; seg_reduce: per-level 1x1 projection before the concatenation,
    0 to concatenate the levels as they are (see `PyramidSegHead`). Both inferred: 128 and 32 keep the
    head at ~4% of the detection model's FLOPs at 300 and 512 (the paper's head costs 12% / 4% of the
    time); MODELS.md's 256 on the plain concatenation would cost 4x more than the whole top-down path.
    aspect_ratios / box_scales: default boxes per level (None: SSD300's or SSD512's, or the SSD
    pattern for other sizes, see `default_box_config`).
    Tiny configuration (tests, quickstart): backbone="resnet18", input_size=(128, 256), width=96,
    topdown_channels=48, extra_channels=(64, 128), seg_width=64, seg_reduce=32.
    """
    size = _size(input_size)
    if topdown not in ("ltd", "none", "full"):
        raise UserError(f"topdown must be one of ltd, none, full (got {topdown!r})")
    if len(extra_channels) != 2:
        raise UserError(f"extra_channels must be two numbers (1x1, 3x3), got {list(extra_channels)!r}")
    sizes = pyramid_sizes(size)
    trunk = ResNetTrunk(backbone)
    load_pretrained(trunk, pretrained_backbone, TRUNKS[backbone][1])
    pyramid = ResNetPyramid(trunk, sizes, (int(extra_channels[0]), int(extra_channels[1])))
    channels = pyramid.out_channels
    if topdown == "ltd":
        top: nn.Module = LocalTopDown(channels, sizes, width, topdown_channels)
    elif topdown == "full":
        top = FullTopDown(channels, sizes, width, topdown_channels)
    else:
        top = NoTopDown(channels, sizes, width)
    body = nn.Sequential(pyramid, top)

    defaults = head = None
    if det_head:
        ratios, scales, steps = default_box_config(size, len(sizes))
        ratios, scales = aspect_ratios or ratios, box_scales or scales
        if len(ratios) != len(sizes) or len(scales) != len(sizes) + 1:
            raise UserError(
                f"input {size} gives {len(sizes)} pyramid levels: aspect_ratios needs {len(sizes)} lists "
                f"and box_scales {len(sizes) + 1} values (got {len(ratios)} and {len(scales)})"
            )
        defaults = multibox.default_boxes(
            size, sizes, ratios, scales, steps if not (aspect_ratios or box_scales) else None
        )
        head = SSDHead([width] * len(sizes), multibox.num_boxes_per_location(ratios), num_det_classes + 1)
    seg = PyramidSegHead([width] * len(sizes), num_seg_classes, seg_width, seg_reduce) if seg_head else None
    return SSDMultiTask(
        body,
        head,
        seg,
        defaults,
        size,
        seg_loss_weight=seg_loss_weight,
        iou_threshold=iou_threshold,
        neg_pos_ratio=neg_pos_ratio,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )


# VGG16 input statistics of torchvision's SSD300 (the Caffe VGG weights expect 0..255 inputs).
VGG_MEAN = (0.48235, 0.45882, 0.40784)
VGG_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)


class VGGFeatures(nn.Module):
    """torchvision's VGG16 without its classifier (SSD never uses it; building its 100M parameters only
    costs time): `features` with torchvision's names and initialisation, for `_vgg_extractor`."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def narrow_convs(module: nn.Module, divisor: int) -> None:
    """Replace, in place, every Conv2d under `module` by one with 1/`divisor` of its channels (an RGB
    input stays 3), initialised like the one it replaces: Kaiming (fan out) in VGG's `features`,
    Xavier in SSD's fc6/fc7 and extra layers."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            c: Any = child  # Conv2d's kernel_size, stride, ... are typed tuple[int, ...]: pairs here
            cin = child.in_channels if child.in_channels == 3 else child.in_channels // divisor
            conv = nn.Conv2d(
                cin,
                child.out_channels // divisor,
                c.kernel_size,
                c.stride,
                c.padding,
                c.dilation,
                bias=child.bias is not None,
            )
            if (
                child.kernel_size == (3, 3)
                and child.dilation == (1, 1)
                and child.stride == (1, 1)
                and child.padding == (1, 1)
            ):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            setattr(module, name, conv)
        else:
            narrow_convs(child, divisor)


SSD300_CHANNELS = (512, 1024, 512, 256, 256, 256)


def build_ssd300_vgg16(
    num_det_classes: int = 1,
    pretrained_backbone: bool | str = False,
    trainable_backbone_layers: int = 4,
    width_divisor: int = 1,
    iou_threshold: float = 0.5,
    neg_pos_ratio: int = 3,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 200,
) -> SSDMultiTask:
    """SSD300-VGG16 with the VOC default boxes (MODELS.md §2; the MOT15 pedestrian detector).

    torchvision's `ssd300_vgg16` body (VGG16 conv4_3 with L2 norm, fc6/fc7 as atrous convs, extra
    layers) and `SSDHead`, with the default boxes of the VOC SSD300 in place of torchvision's COCO
    ones: `DefaultBoxGenerator` with scales [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05] (Caffe SSD's
    min_ratio 20 / max_ratio 90 rule), steps [8, 16, 32, 64, 100, 300], clip=False; and
    `num_det_classes` foreground classes (1: pedestrian). The input is fixed at 300x300: the last two
    extra layers are unpadded 3x3 convs (3 -> 1), so there is no smaller configuration.
    pretrained_backbone loads torchvision's `VGG16_Weights.IMAGENET1K_FEATURES` (or a local file);
    the first `5 - trainable_backbone_layers` VGG stages are then frozen, as torchvision does.
    width_divisor (inferred, the tiny configuration: 8): every conv of the body keeps its kernel,
    stride, padding and dilation, hence the 300x300 input and the 8732 default boxes, with 1/divisor of
    its channels; it trains from scratch (ImageNet weights fit only the full width).
    """
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_FEATURES
    if width_divisor < 1 or any(c % width_divisor for c in SSD300_CHANNELS):
        raise UserError(f"width_divisor must be a positive divisor of 256 (1, 2, 4, 8, ...), got {width_divisor}")
    if width_divisor > 1 and pretrained_backbone:
        raise UserError("pretrained_backbone needs the full VGG16 (width_divisor = 1): ImageNet weights fit only it")
    vgg = VGGFeatures()
    load_pretrained(vgg, pretrained_backbone, weights)
    if not 0 <= trainable_backbone_layers <= 5:
        raise UserError(f"trainable_backbone_layers must be 0..5, got {trainable_backbone_layers}")
    # Freezing stages only makes sense on ImageNet weights; from scratch everything trains.
    body = _vgg_extractor(vgg, False, trainable_backbone_layers if pretrained_backbone else 5)
    if width_divisor > 1:
        narrow_convs(body, width_divisor)
        body.scale_weight = nn.Parameter(torch.full((512 // width_divisor,), 20.0))
    ratios, scales = multibox.SSD300_ASPECT_RATIOS, multibox.SSD300_SCALES
    sizes = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    defaults = multibox.default_boxes((300, 300), sizes, ratios, scales, multibox.SSD300_STEPS, clip=False)
    head = SSDHead(
        [c // width_divisor for c in SSD300_CHANNELS], multibox.num_boxes_per_location(ratios), num_det_classes + 1
    )
    return SSDMultiTask(
        body,
        head,
        None,
        defaults,
        300,
        iou_threshold=iou_threshold,
        neg_pos_ratio=neg_pos_ratio,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        mean=VGG_MEAN,
        std=VGG_STD,
    )
