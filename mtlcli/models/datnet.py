"""DATNet: Mask R-CNN with dense auxiliary tasks (papers/datnet.txt, MODELS.md §4).

Read top to bottom like the paper's Figure 2:

    ResNet-FPN -> P2..P6 ──┬─> DT head       (4 distance-transform bins) ─┐ F_DT   (stride 4)
                           ├─> semantic head (seg classes)                ─┤ F_seg  (stride 4)
                           └─> fusion  P'_i = P_i + resize(F_DT) + resize(F_seg)  [+ 2 / 4 shared convs]
    P'2..P'6 -> RPN -> proposals -> MSPwA (RoIAlign on P'2..P'5, concat, SE attention with max pooling)
             -> Light head (res5 box head at 7x7, FPN mask head at 14x14 -> 28x28 masks)
              | Heavy head (one res5 at 14x14 shared by box and mask -> 14x14 masks)

Loss: L = L_maskrcnn + dt_weight * L_DT + seg_weight * L_seg, each dense term the focal variant
-alpha_k (1 - p_k)^2 log p_k averaged over the pixels (alpha 0.2 for background, 1 otherwise).
Every piece switches off for the ablations: `dt_weight = 0` / `seg_weight = 0` drop a head (Table 2),
`mspwa = false` pools each RoI from its FPN level instead, `head = "standard" | "4conv1fc"` uses Mask
R-CNN's box heads (Table 3), `fusion` picks the fusion of Table 5. With both weights 0, no MSPwA and
`head = "standard"` the model is Mask R-CNN.

The two-stage machinery (targets, proposals, postprocessing, RPN, RoI sampling) is torchvision's,
through `mtlcli.models.rcnn.TwoStageDetector`; this file holds only DATNet's own pieces.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import Bottleneck
from torchvision.ops import MultiScaleRoIAlign, roi_align

from mtlcli.errors import UserError
from mtlcli.models.rcnn import (
    FPN_LEVELS,
    IGNORE_INDEX,
    TwoStageDetector,
    TwoStageOptions,
    build_resnet_fpn,
    build_roi_heads,
    two_stage_keywords,
)
from mtlcli.models.rcnn import TINY as RCNN_TINY

# The tiny configuration (tests, quickstart, datnet-tiny-synthetic): rcnn.TINY plus a narrow res5.
TINY: dict[str, Any] = {**RCNN_TINY, "res5_planes": 32}

HEADS = ("light", "heavy", "standard", "4conv1fc")
FUSIONS = {"none": None, "sum": 0, "sum2conv": 2, "sum4conv": 4}  # name -> shared convs after the sum
DENSE_TASKS = {"dt": ("dt", "loss_dt"), "seg": ("semantic", "loss_seg")}  # head -> (target key, loss)


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


# ------------------------------------------------------------------------------ auxiliary dense heads
class DenseAuxHead(nn.Module):
    """One auxiliary head (the DT and semantic heads share this architecture, not the weights).

    Every level but P2 climbs to stride 4 by [3x3 conv, ReLU, bilinear x2] steps (P3 one step, P6
    four), the five maps are summed, two [3x3 conv, ReLU] give the features F [B, C, H/4, W/4] used for
    fusion, and one more 3x3 conv gives the logits [B, K, H/4, W/4] for the loss.
    """

    def __init__(self, channels: int, num_classes: int, num_levels: int = 5) -> None:
        super().__init__()
        self.up = nn.ModuleList(
            nn.ModuleList(_conv3x3(channels, channels) for _ in range(level)) for level in range(num_levels)
        )
        self.tower = nn.Sequential(
            _conv3x3(channels, channels), nn.ReLU(inplace=True), _conv3x3(channels, channels), nn.ReLU(inplace=True)
        )
        self.classifier = _conv3x3(channels, num_classes)

    def forward(self, levels: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """levels: P2..P6, [B, C, H/4, W/4] .. [B, C, H/64, W/64] -> (F [B, C, H/4, W/4], logits [B, K, H/4, W/4])."""
        total = levels[0]
        convs: Any
        for level, convs in enumerate(self.up):
            if level == 0:
                continue
            x = levels[level]
            for step, conv in enumerate(convs):
                # upsample to the next finer level's exact size (P6 is ceil(P5 / 2), not always half)
                x = F.interpolate(
                    F.relu(conv(x)), size=levels[level - 1 - step].shape[-2:], mode="bilinear", align_corners=False
                )
            total = total + x
        feats = self.tower(total)
        return feats, self.classifier(feats)


class FeatureFusion(nn.Module):
    """P'_i = P_i + resize_i(F_DT) + resize_i(F_seg) on P2..P5 (bilinear), then `num_convs` [3x3 conv,
    ReLU] layers shared across the levels (Table 5's sum2conv / sum4conv). P'6 is P'5 subsampled, as
    P6 is P5 subsampled in the FPN (inferred: the paper fuses i = 2..5 and feeds P6 to the RPN)."""

    def __init__(self, channels: int, num_convs: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(num_convs):
            layers += [_conv3x3(channels, channels), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)

    def forward(self, features: OrderedDict[str, Tensor], dense: Sequence[Tensor]) -> OrderedDict[str, Tensor]:
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name in FPN_LEVELS:
            p = features[name]
            for f in dense:
                p = p + (
                    f
                    if f.shape[-2:] == p.shape[-2:]
                    else F.interpolate(f, size=p.shape[-2:], mode="bilinear", align_corners=False)
                )
            out[name] = self.convs(p)
        out["pool"] = F.max_pool2d(out[FPN_LEVELS[-1]], kernel_size=1, stride=2)
        return out


def dense_focal_loss(
    logits: Tensor, target: Tensor, background_alpha: float = 0.2, background_index: int = 0, gamma: float = 2.0
) -> Tensor:
    """DATNet's focal variant (Eq. 1-2): mean over valid pixels of -alpha_k (1 - p_k)^gamma log p_k.

    logits [B, K, H, W] (any resolution: bilinearly resized to the target's), target [B, H, W] int64 in
    0..K-1 or 255 (ignored: padding, unlabelled). alpha = `background_alpha` for class
    `background_index` (-1: no background class), 1 otherwise. No valid pixel -> a zero that keeps the graph.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    valid = target != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0
    if int(target[valid].max()) >= logits.shape[1]:
        raise UserError(
            f"a dense target holds class {int(target[valid].max())} but the head predicts {logits.shape[1]} "
            "classes — set model.num_seg_classes (or dt_bins) to match the dataset"
        )
    safe = torch.where(valid, target, torch.zeros_like(target))
    log_p = F.log_softmax(logits, dim=1).gather(1, safe[:, None])[:, 0]
    alpha = torch.ones_like(log_p)
    if background_index >= 0:
        alpha = torch.where(safe == background_index, torch.full_like(alpha, background_alpha), alpha)
    loss = -alpha * (1.0 - log_p.exp()).pow(gamma) * log_p
    return loss[valid].mean()


# ----------------------------------------------------------------------------------------- MSPwA
class ScaleAttention(nn.Module):
    """Squeeze-excitation with global max pooling: x [R, C, k, k] -> x * w, w [R, C] in [0, 1]."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def weights(self, x: Tensor) -> Tensor:
        return self.fc(x.amax(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)[:, :, None, None]


class MultiScalePoolWithAttention(nn.Module):
    """MSPwA: RoIAlign k x k from every level P'2..P'5, concatenated to [R, 4C, k, k], re-weighted by SE.

    Called like torchvision's `MultiScaleRoIAlign`: (features, boxes: list of [R_i, 4] xyxy in the
    network frame, image_shapes) -> [sum R_i, 4C, k, k]. Unlike it, every RoI is pooled from all levels.
    """

    def __init__(
        self,
        channels: int,
        output_size: int,
        featmap_names: Sequence[str] = FPN_LEVELS,
        strides: Sequence[int] = (4, 8, 16, 32),
        sampling_ratio: int = 2,
        reduction: int = 16,
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.strides = list(strides)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.out_channels = channels * len(self.featmap_names)
        self.attention = ScaleAttention(self.out_channels, reduction)

    def pool(self, features: dict[str, Tensor], boxes: list[Tensor]) -> Tensor:
        """The concatenated multi-level RoI features [R, L*C, k, k] before attention."""
        ref = features[self.featmap_names[0]]
        rois = torch.cat([torch.cat([b.new_full((b.shape[0], 1), i), b], dim=1) for i, b in enumerate(boxes)]).to(
            ref.dtype
        )
        return torch.cat(
            [
                roi_align(features[name], rois, self.output_size, 1.0 / stride, self.sampling_ratio, aligned=False)
                for name, stride in zip(self.featmap_names, self.strides, strict=True)
            ],
            dim=1,
        )

    def forward(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]] | None = None
    ) -> Tensor:
        return self.attention(self.pool(features, boxes))


# -------------------------------------------------------------------------------------- RoI heads
def make_res5(
    in_channels: int, block: Any = Bottleneck, planes: int = 512, blocks: int = 3, norm_layer=nn.BatchNorm2d
) -> nn.Sequential:
    """A fresh ResNet conv5 stage (first block stride 2) reading `in_channels`: [R, Cin, k, k] ->
    [R, planes * expansion, ceil(k/2), ceil(k/2)]."""
    out = planes * block.expansion
    downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=2, bias=False), norm_layer(out))
    layers = [block(in_channels, planes, stride=2, downsample=downsample, norm_layer=norm_layer)]
    layers += [block(out, planes, norm_layer=norm_layer) for _ in range(blocks - 1)]
    stage = nn.Sequential(*layers)
    for m in stage.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return stage


class Res5BoxHead(nn.Module):
    """Box feature extractor: res5 -> global average pooling -> [R, C5]."""

    def __init__(self, res5: nn.Sequential) -> None:
        super().__init__()
        self.res5 = res5
        last: Any = res5[-1]  # a torchvision Bottleneck
        self.out_channels: int = last.conv1.in_channels  # a block's input width == the stage's output width

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


class HeavyMaskPredictor(nn.Sequential):
    """Heavy mask branch after the shared res5: Mask R-CNN's C4 predictor ("consistent with [10]"),
    deconv 2x2 stride 2 + ReLU, 1x1 conv -> [R, K+1, 2k', 2k'] logits (14x14 from the 7x7 res5 output)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, channels, 2, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )  # fmt: skip
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _res5_for(body: Any, in_channels: int, planes: int | None) -> nn.Sequential:  # torchvision's BackboneWithFPN
    """The RoI head's res5: a copy of the trunk's layer4 (ImageNet-initialised, with the trunk's norm,
    when the trunk is). When the pooled features are narrower or wider than layer4's input (no MSPwA:
    C = 256 instead of 1024), only the two convs that read them — the first block's conv1 and its
    downsample conv — are new (same shapes but the input width, kaiming-initialised); everything else is
    the same ImageNet res5, so Table 3's rows with and without MSPwA differ by MSPwA alone. A res5 of
    another bottleneck width (`planes`, the tiny configuration) is a fresh stage."""
    layer4: Any = body.body["layer4"]
    block: Any = type(layer4[0])
    trunk_planes = layer4[-1].conv1.in_channels // block.expansion  # 512 for R50, R101 and X101 32x8d
    planes = planes or trunk_planes
    if planes != trunk_planes:
        return make_res5(in_channels, block, planes, len(layer4))
    res5 = copy.deepcopy(layer4)
    first = res5[0]
    if in_channels != first.conv1.in_channels:
        first.conv1 = _rewidth(first.conv1, in_channels)
        first.downsample[0] = _rewidth(first.downsample[0], in_channels)
    return res5


def _rewidth(conv: Any, in_channels: int) -> nn.Conv2d:  # conv: an nn.Conv2d
    """`conv` with another input width: a new kaiming-initialised conv of the same kind."""
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    new.weight.requires_grad_(conv.weight.requires_grad)
    return new.to(conv.weight.device)


def build_datnet_roi_heads(
    head: str,
    mspwa: bool,
    channels: int,
    num_classes: int,
    body: nn.Module,
    *,
    res5_planes: int | None = None,
    representation_size: int = 1024,
    mask_channels: int = 256,
    se_reduction: int = 16,
    **sampling: Any,
):
    """torchvision `RoIHeads` with DATNet's pooling and heads (see the module docstring)."""
    pooled = channels * len(FPN_LEVELS) if mspwa else channels

    def pool(k: int) -> nn.Module:
        if mspwa:
            return MultiScalePoolWithAttention(channels, k, reduction=se_reduction)
        return MultiScaleRoIAlign(FPN_LEVELS, output_size=k, sampling_ratio=2)

    def fpn_mask_branch() -> tuple[nn.Module, nn.Module, nn.Module]:
        return (
            pool(14),
            MaskRCNNHeads(pooled, [mask_channels] * 4, 1),
            MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        )

    if head == "standard":
        box_head: nn.Module = TwoMLPHead(pooled * 7 * 7, representation_size)
        box = (pool(7), box_head, FastRCNNPredictor(representation_size, num_classes))
        mask = fpn_mask_branch()
    elif head == "4conv1fc":
        # BatchNorm after each conv is inferred (torchvision's fasterrcnn_resnet50_fpn_v2 head): the paper
        # names only "four convolutions and one fully connected layer"; Detectron's 4conv1fc uses GroupNorm
        box_head = FastRCNNConvFCHead((pooled, 7, 7), [channels] * 4, [representation_size], norm_layer=nn.BatchNorm2d)
        box = (pool(7), box_head, FastRCNNPredictor(representation_size, num_classes))
        mask = fpn_mask_branch()
    elif head == "light":
        box_head = Res5BoxHead(_res5_for(body, pooled, res5_planes))
        box = (pool(7), box_head, FastRCNNPredictor(box_head.out_channels, num_classes))
        mask = fpn_mask_branch()
    else:  # heavy: one 14x14 pooler and one res5 for both branches (the same module objects)
        shared_pool = pool(14)
        box_head = Res5BoxHead(_res5_for(body, pooled, res5_planes))
        box = (shared_pool, box_head, FastRCNNPredictor(box_head.out_channels, num_classes))
        mask = (shared_pool, box_head.res5, HeavyMaskPredictor(box_head.out_channels, mask_channels, num_classes))
    return build_roi_heads(*box, *mask, **sampling)


# ------------------------------------------------------------------------------------------ model
class DATNet(TwoStageDetector):
    """DATNet on torchvision's two-stage machinery; the contract of `TwoStageDetector` plus:

    train -> also loss_dt (DT head) and loss_seg (semantic head), already multiplied by their weights;
             targets need `dt` [H, W] int64 bins 0..3 and `semantic` [H, W] int64 (255 = ignore)
    eval  -> also sem_seg [C, H, W] float softmax scores in the original frame (with a semantic head) and
             dt [K, H, W] softmax scores of the distance-transform bins (with a DT head; `mtl eval --metric dt`)
    """

    dense_keys = ("dt", "semantic")

    def __init__(
        self,
        backbone: nn.Module,
        rpn: nn.Module,
        roi_heads: nn.Module,
        dense_heads: dict[str, DenseAuxHead],
        dense_weights: dict[str, float],
        fusion: FeatureFusion | None,
        *,
        background_alpha: float = 0.2,
        seg_background_index: int = 0,
        output_sem_seg: bool = True,
        **transform: Any,
    ) -> None:
        super().__init__(backbone, rpn, roi_heads, **transform)
        self.dense_heads = nn.ModuleDict(dense_heads)
        self.dense_weights = dict(dense_weights)
        self.fusion = fusion
        self.background_alpha = background_alpha
        self.background_index = {"dt": 0, "seg": seg_background_index}
        self.output_sem_seg = output_sem_seg

    def extract(self, images: Tensor) -> tuple[OrderedDict[str, Tensor], dict[str, Tensor]]:
        """Padded batch [B, 3, Hp, Wp] -> (fused P'2..P'6, {"dt"/"seg": logits [B, K, Hp/4, Wp/4]})."""
        features = self.backbone(images)
        levels = list(features.values())
        dense_feats, logits = [], {}
        for name, head in self.dense_heads.items():
            feats, logits[name] = head(levels)
            dense_feats.append(feats)
        if self.fusion is not None and dense_feats:
            features = self.fusion(features, dense_feats)
        return features, logits

    def dense_losses(self, dense: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        losses = {}
        for name, logits in dense.items():
            key, loss_name = DENSE_TASKS[name]
            if any(key not in t for t in targets):
                raise UserError(
                    f"DATNet's {name} head needs a '{key}' map in every target (the prepared dataset's "
                    f"{key}/ PNGs); set model.{name}_weight = 0 to train without it"
                )
            target = torch.stack([t[key] for t in targets])
            loss = dense_focal_loss(logits, target, self.background_alpha, self.background_index[name])
            losses[loss_name] = self.dense_weights[name] * loss
        return losses

    def dense_outputs(
        self, dense: dict[str, Tensor], image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        outs: list[dict[str, Tensor]] = [{} for _ in original_sizes]
        for name, key in (("seg", "sem_seg"), ("dt", "dt")):
            if name not in dense or (name == "seg" and not self.output_sem_seg):
                continue
            for i, (size, orig) in enumerate(zip(image_sizes, original_sizes, strict=True)):
                outs[i][key] = logits_to_original(dense[name][i], size, orig, stride=4).softmax(0)
        return outs


def logits_to_original(logits: Tensor, size: tuple[int, int], original: tuple[int, int], stride: int = 4) -> Tensor:
    """Logits [K, Hp/stride, Wp/stride] of a padded batch -> [K, H, W] in the original frame (bilinear).

    `size` (h, w) is the image's resized extent inside the padded batch; sampling straight from the
    low-resolution map avoids a full-resolution [K, Hp, Wp] intermediate.
    """
    (h, w), (H, W) = size, original
    hp, wp = logits.shape[-2] * stride, logits.shape[-1] * stride
    ys = ((torch.arange(H, device=logits.device, dtype=logits.dtype) + 0.5) * (h / H)) / hp * 2 - 1
    xs = ((torch.arange(W, device=logits.device, dtype=logits.dtype) + 0.5) * (w / W)) / wp * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # [1, H, W, (x, y)]
    return F.grid_sample(logits[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


# ---------------------------------------------------------------------------------------- builder
@two_stage_keywords
def build_datnet(
    num_det_classes: int = 80,
    num_seg_classes: int = 81,
    backbone: str = "resnet50",
    pretrained_backbone: bool | str = False,
    head: str = "light",
    mspwa: bool = True,
    dt_weight: float = 0.25,
    seg_weight: float = 0.25,
    fusion: str = "sum",
    dt_bins: int = 4,
    background_alpha: float = 0.2,
    seg_background_index: int = 0,
    se_reduction: int = 16,
    res5_planes: int = 512,
    output_sem_seg: bool = True,
    *,
    options: TwoStageOptions,
) -> DATNet:
    """DATNet R50-FPN with the paper's defaults (Light head, MSPwA, sum fusion, w1 = w2 = 0.25).

    num_det_classes: object classes without background (labels 1..K); num_seg_classes: channels of the
    semantic head (the dataset's seg classes; COCO: background + 80); dt_bins: DT classes incl. 0.
    head: "light" | "heavy" | "standard" (2fc, Mask R-CNN) | "4conv1fc" (four 3x3 convs each followed by
    BatchNorm + ReLU, one fc: the BatchNorm is inferred, torchvision's v2 head; the paper names no norm);
    fusion: "sum" | "sum2conv" | "sum4conv" | "none" (auxiliary losses only). A weight of 0 removes that head.
    seg_background_index: the seg class that gets `background_alpha` (-1: none, e.g. Cityscapes). res5_planes:
    bottleneck width of the res5 head (512 -> 2048 out). The res5 head is a copy of the trunk's layer4 (ImageNet
    when the trunk is); without MSPwA only its first block's input convs are new (`_res5_for`). Heavy's mask
    predictor is Mask R-CNN's C4 one (deconv 2x2 + ReLU, 1x1 conv, 14x14 masks). Inferred (MODELS.md): P'6 =
    subsampled P'5; Heavy's mask branch reruns the shared res5 on the positive RoIs.
    The other keywords are `rcnn.TwoStageOptions`'. Tiny configuration: `build_datnet(**datnet.TINY)`.
    Parameters (COCO, R50): Light 62.28M, Heavy 59.849M (paper: 62.3M / 59.9M; Heavy 0.08% under).
    """
    if head not in HEADS:
        raise UserError(f"unknown DATNet head {head!r}; valid: {', '.join(HEADS)}")
    if fusion not in FUSIONS:
        raise UserError(f"unknown DATNet fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
    if int(num_det_classes) < 1 or int(num_seg_classes) < 1:
        raise UserError(
            f"num_det_classes and num_seg_classes must be at least 1 (got {num_det_classes}, {num_seg_classes})"
        )
    if dt_weight < 0 or seg_weight < 0:
        raise UserError(f"dt_weight and seg_weight must be >= 0 (got {dt_weight}, {seg_weight})")
    o = options
    body = build_resnet_fpn(backbone, pretrained_backbone, o.fpn_channels, o.trainable_layers)
    dense_heads: dict[str, DenseAuxHead] = {}
    weights: dict[str, float] = {}
    for name, weight, classes in (("dt", dt_weight, dt_bins), ("seg", seg_weight, num_seg_classes)):
        if weight > 0:
            dense_heads[name] = DenseAuxHead(o.fpn_channels, int(classes))
            weights[name] = float(weight)
    convs = FUSIONS[fusion]
    fuse = FeatureFusion(o.fpn_channels, convs) if convs is not None and dense_heads else None
    rpn = o.rpn()
    roi_heads = build_datnet_roi_heads(
        head, mspwa, o.fpn_channels, num_det_classes + 1, body,
        res5_planes=res5_planes, representation_size=o.representation_size, mask_channels=o.mask_channels,
        se_reduction=se_reduction, **o.sampling(),
    )  # fmt: skip
    return DATNet(
        body, rpn, roi_heads, dense_heads, weights, fuse,
        background_alpha=background_alpha, seg_background_index=seg_background_index,
        output_sem_seg=output_sem_seg, **o.transform(),
    )  # fmt: skip
