"""SA-FPN + EJ-Head: Mask R-CNN with a scale-aware neck and a joint head (papers/safpn-ejhead.txt, MODELS.md §5).

Read top to bottom like the paper's Figure 1(b):

    ResNet C2..C5 ─┬─> TD-FPN   P_i = conv3x3(L_i + up(P_{i+1}))                         ─┐ concat -> 1x1 conv
                   └─> BUF-FPN  N_i = conv3x3(down(N_{i-1}) + L_i + up(L_{i+1}))         ─┘ (or add) -> S2..S5
                                                                  S6 = S5 subsampled (RPN only)
    S2..S6 -> RPN -> proposals -> EJ-Head
        joint path   RoIAlign 14x14 (Enriched Feature) -> Boundary Refinement x + conv3x3(ReLU(conv3x3(x)))
        box branch   conv3x3 stride 2 (14x14 -> 7x7) -> fc 1024 -> fc 1024 -> class scores + boxes
        mask branch  training: the box branch's refined boxes with IoU >= 0.5 to a ground truth
                     (Interleaving); testing: the detections -> joint path -> 4 conv3x3 -> deconv -> 28x28

(L_i = 1x1 lateral conv of C_i, up = nearest upsampling, down = 3x3 conv with stride 2.) Every piece is a
switch for the paper's ablations: `neck` = "td" (Mask R-CNN's FPN) | "bu" (bottom-up, shallower neighbour
only) | "buf" (both neighbours) | "safpn", `fuse` = "concat" | "add" (Table 3); `interleave`, `enriched`
and `refine` = "residual" | "stacked" | "none" (Tables 4 and 5). `neck = "td"` with `ej_head = false` is
Mask R-CNN, state dict included. The model returns boxes, labels, scores and masks (no semantic output).

The two-stage machinery (targets, RPN, RoI sampling, postprocessing) is torchvision's, through
`mtlcli.models.rcnn`; this file holds only the neck and the head of this family.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from mtlcli.errors import UserError
from mtlcli.models.rcnn import (
    FPN_LEVELS,
    TwoStageDetector,
    TwoStageOptions,
    build_resnet_fpn,
    build_roi_heads,
    standard_box_branch,
    standard_mask_branch,
    two_stage_keywords,
)
from mtlcli.models.rcnn import TINY as RCNN_TINY

# The tiny configuration (tests, quickstart, safpn-ejhead-tiny-synthetic): the two-stage one of rcnn.py.
TINY: dict[str, Any] = dict(RCNN_TINY)

NECKS = ("safpn", "td", "bu", "buf")
FUSES = ("concat", "add")
REFINES = ("residual", "stacked", "none")
BOX_HEADS = ("strided", "conv", "flatten", "pool")  # how the box branch reads the 14x14 joint features


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A neck conv initialised like torchvision's FPN (kaiming uniform, a = 1; zero bias)."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.constant_(conv.bias, 0)  # type: ignore[arg-type]  # a Conv2d made with a bias
    return conv


# -------------------------------------------------------------------------------------------- necks
class BottomUpFPN(nn.Module):
    """BU-FPN (`fuse_deeper=False`, Figure 2b) or BUF-FPN (`fuse_deeper=True`, Figure 2c) on C2..C5.

        L_i = conv1x1(C_i)
        N_2 = conv3x3(L_2 [+ up(L_3)])
        N_i = conv3x3(down(N_{i-1}) + L_i [+ up(L_{i+1})])     down = conv3x3 stride 2, up = nearest

    Input: OrderedDict of C2..C5 ([B, Cin_i, H/4, W/4] .. [B, Cin_i, H/32, W/32]); output: the same keys,
    each [B, C, H_i, W_i]. Inferred (the paper shows the fusions only in a figure): the pyramid starts
    from lateral 1x1 convs of the trunk (no top-down pass), the deeper neighbour is its lateral map
    (the bottom-up pass has not reached it yet), and every level ends in a 3x3 conv like the TD-FPN's
    output convs (MODELS.md's PANet form has N_2 = P_2 without one). No activations, as mmdetection's FPNs.
    """

    def __init__(self, in_channels_list: Sequence[int], channels: int, fuse_deeper: bool) -> None:
        super().__init__()
        self.fuse_deeper = fuse_deeper
        self.lateral = nn.ModuleList(_conv(c, channels, 1) for c in in_channels_list)
        self.down = nn.ModuleList(_conv(channels, channels, 3, stride=2) for _ in in_channels_list[1:])
        self.output = nn.ModuleList(_conv(channels, channels, 3) for _ in in_channels_list)

    def forward(self, x: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        laterals = [conv(c) for conv, c in zip(self.lateral, x.values(), strict=True)]
        outs: list[Tensor] = []
        for i, lat in enumerate(laterals):
            total = lat
            if i > 0:
                # a 3x3 stride-2 conv halves like the trunk's stages (ceil(n / 2)), so sizes always agree
                total = total + self.down[i - 1](outs[-1])
            if self.fuse_deeper and i + 1 < len(laterals):
                total = total + F.interpolate(laterals[i + 1], size=lat.shape[-2:], mode="nearest")
            outs.append(self.output[i](total))
        return OrderedDict(zip(x.keys(), outs, strict=True))


class ScaleAwareNeck(nn.Module):
    """The neck of Table 3: C2..C5 -> {"0": S2, .., "3": S5, "pool": S6}, each [B, C, H/s, W/s], s = 4..64.

    "td": torchvision's FPN (Figure 2a); "bu" / "buf": `BottomUpFPN`; "safpn": TD-FPN and BUF-FPN side by
    side, fused per level by `fuse` = "concat" (concat [TD_i, BUF_i] -> 1x1 conv to C, the paper's choice)
    or "add" (TD_i + BUF_i). S6 is S5 subsampled (max-pool, kernel 1, stride 2), as in the FPN.
    Inferred: the two branches have their own lateral convs and the 1x1 reduction is per level.
    """

    def __init__(
        self, in_channels_list: Sequence[int], channels: int, neck: str = "safpn", fuse: str = "concat",
        td: FeaturePyramidNetwork | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.neck, self.fuse = neck, fuse
        self.td = None
        if neck in ("td", "safpn"):
            self.td = td if td is not None else FeaturePyramidNetwork(list(in_channels_list), channels)
        self.bu = BottomUpFPN(in_channels_list, channels, fuse_deeper=neck != "bu") if neck != "td" else None
        self.reduce = None
        if neck == "safpn" and fuse == "concat":
            self.reduce = nn.ModuleList(_conv(2 * channels, channels, 1) for _ in in_channels_list)

    def forward(self, x: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        td = list(self.td(x).values())[: len(x)] if self.td is not None else None  # drop the FPN's own "pool"
        bu = list(self.bu(x).values()) if self.bu is not None else None
        levels: list[Tensor]
        if td is None or bu is None:
            either = td if td is not None else bu
            assert either is not None  # a neck has at least one of the two paths
            levels = either
        elif self.reduce is not None:
            levels = [conv(torch.cat([t, b], dim=1)) for conv, t, b in zip(self.reduce, td, bu, strict=True)]
        else:
            levels = [t + b for t, b in zip(td, bu, strict=True)]
        out = OrderedDict(zip(x.keys(), levels, strict=True))
        out["pool"] = F.max_pool2d(levels[-1], kernel_size=1, stride=2)
        return out


class NeckedBackbone(nn.Module):
    """ResNet trunk (`body`, returns C2..C5 as "0".."3") + a neck (`fpn`), like torchvision's
    `BackboneWithFPN`: images [B, 3, H, W] -> {"0".."3", "pool"} each [B, out_channels, H/s, W/s]."""

    def __init__(self, body: nn.Module, fpn: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(images))


def build_neck_backbone(
    neck: str, fuse: str, backbone: str, pretrained_backbone: bool | str, channels: int, trainable_layers: int | None
) -> nn.Module:
    """The trunk of `rcnn.build_resnet_fpn` (weights, frozen stages and norm as there) with the chosen neck.

    "td" returns `build_resnet_fpn` itself, so that configuration loads Mask R-CNN checkpoints; the
    other necks keep its trunk (and for "safpn" its TD-FPN as the top-down branch).
    """
    base = build_resnet_fpn(backbone, pretrained_backbone, channels, trainable_layers)
    if neck == "td":
        return base
    in_channels = [block[0].in_channels for block in base.fpn.inner_blocks]  # C2..C5 widths
    td = base.fpn if neck == "safpn" else None
    return NeckedBackbone(base.body, ScaleAwareNeck(in_channels, channels, neck, fuse, td=td), channels)


# ------------------------------------------------------------------------------------------ EJ-Head
class BoundaryRefinement(nn.Module):
    """`convs` 3x3 convs (default 2) on RoI features [R, C, k, k] -> [R, C, k, k].

    "residual" (Figure 3): x + conv3x3(ReLU(conv3x3(x))); "stacked" (Table 5's "Simple Conv"):
    ReLU(conv3x3(ReLU(conv3x3(x)))). `convs` > 2 gives Table 5's deeper plain stacks (the paper names no
    depth: 4 in the shipped recipe is inferred); with "residual" the shortcut spans the whole stack.
    """

    def __init__(self, channels: int, mode: str = "residual", convs: int = 2) -> None:
        super().__init__()
        if int(convs) < 1:
            raise UserError(f"refine_convs must be at least 1, got {convs}")
        self.residual = mode == "residual"
        self.depth = int(convs)
        for i in range(self.depth):  # conv1, conv2, ... (the names of the two-conv block's checkpoints)
            conv = nn.Conv2d(channels, channels, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(conv.bias, 0)  # type: ignore[arg-type]  # a Conv2d made with a bias
            setattr(self, f"conv{i + 1}", conv)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for i in range(self.depth):
            y = getattr(self, f"conv{i + 1}")(y if i == 0 else F.relu(y))
        return x + y if self.residual else F.relu(y)


class JointRoIPath(nn.Module):
    """The EJ-Head's shared path: level-assigned RoIAlign k x k (k = 14 with Enriched Feature, else 7),
    then Boundary Refinement (or nothing).

    Called like torchvision's `MultiScaleRoIAlign`: (features, boxes: list of [R_i, 4] xyxy in the network
    frame, image_shapes) -> [sum R_i, C, k, k].
    """

    def __init__(self, channels: int, output_size: int, refine: str = "residual", refine_convs: int = 2) -> None:
        super().__init__()
        self.pool = MultiScaleRoIAlign(FPN_LEVELS, output_size=output_size, sampling_ratio=2)
        self.refine = BoundaryRefinement(channels, refine, refine_convs) if refine != "none" else nn.Identity()

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        return self.refine(self.pool(features, boxes, image_shapes))


class EnrichedBoxHead(nn.Module):
    """Box branch that reads the 14x14 joint features (Enriched Feature), [R, C, 14, 14] -> [R, representation_size].

    form "strided" (default): `convs` 3x3 convs C -> C + ReLU (default 1), the last with stride 2, so the
    learned layer sees every position of the 14x14 map and hands 7x7 to Mask R-CNN's two FC layers
    (fc6 on C x 7 x 7, fc7). "conv": `convs` 3x3 convs at 14x14, then 2x2 max-pool to 7x7 and fc6 / fc7.
    "flatten": fc6 straight on the flattened C x 14 x 14 map (4x fc6). "pool": the 2x2 max-pool alone,
    no learned layer at 14x14 (the earlier form; kept for comparison).
    Inferred: the paper says only that the enlarged 14x14 RoI features feed both predictions through one
    unified path, at a slightly higher cost for the box branch. Costs at C = 256, R50, per RoI (the box
    branch sees all 1000 test proposals; benchmarks/bench_ejhead_box.py): strided +0.59M parameters,
    +0.029 GMAC; conv (2 convs) +1.18M, +0.231 GMAC; flatten +38.5M, +0.038 GMAC.
    fc6 / fc7 keep TwoMLPHead's names and shapes except in "flatten".
    """

    def __init__(self, channels: int, representation_size: int, form: str = "strided", convs: int = 1) -> None:
        super().__init__()
        if form not in BOX_HEADS:
            raise UserError(f"unknown enriched box head {form!r}; valid: {', '.join(BOX_HEADS)}")
        self.form = form
        self.convs = nn.ModuleList()
        if form in ("conv", "strided"):
            n = int(convs)
            if n < 1:
                raise UserError(f"box_convs must be at least 1 for box_head = {form!r}, got {convs}")
            for i in range(n):
                stride = 2 if form == "strided" and i == n - 1 else 1
                conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(conv.bias, 0)  # type: ignore[arg-type]  # a Conv2d made with a bias
                self.convs.append(conv)
        side = 14 if form == "flatten" else 7
        self.fc6 = nn.Linear(channels * side * side, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        if self.form in ("conv", "pool"):
            x = F.max_pool2d(x, 2)
        x = F.relu(self.fc6(x.flatten(start_dim=1)))
        return F.relu(self.fc7(x))


def interleaved_mask_rois(
    proposals: list[Tensor],
    labels: list[Tensor],
    class_logits: Tensor,
    box_regression: Tensor,
    gt_boxes: list[Tensor],
    box_coder: BoxCoder,
    image_shapes: list[tuple[int, int]],
    iou_thresh: float = 0.5,
    max_per_image: int | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Interleaving (training): the mask branch's RoIs are the box branch's refined boxes that overlap a
    ground truth by IoU >= `iou_thresh`, as its RoIs at test time are the detections.

    proposals: the sampled RoIs per image, [N_i, 4] xyxy in the network frame; labels: their assigned
    classes [N_i] int64 (0 = background); class_logits [sum N_i, K+1] and box_regression
    [sum N_i, 4(K+1)] of the box branch; gt_boxes per image [G_i, 4] xyxy; image_shapes (h, w) to clip to.
    A RoI is refined with the regression of its assigned class, a background RoI with that of its
    highest-scoring object class (as HTC's interleaved execution does); the boxes are detached (no
    gradient flows into the box branch through them). At most `max_per_image` boxes are kept (a random
    subset), so the mask branch sees as many RoIs as Mask R-CNN's.
    Returns (boxes per image [M_i, 4], index of the matched ground truth per image [M_i] int64).
    """
    counts = [len(p) for p in proposals]
    decoded = box_coder.decode(box_regression.detach(), proposals)  # [sum N_i, K+1, 4]
    assigned = torch.cat(labels) if labels else class_logits.new_zeros(0, dtype=torch.int64)
    predicted = class_logits.detach()[:, 1:].argmax(dim=1) + 1
    cls = torch.where(assigned > 0, assigned, predicted)
    refined = decoded[torch.arange(len(cls), device=cls.device), cls]
    out_boxes, out_idxs = [], []
    for boxes, gt, shape in zip(refined.split(counts), gt_boxes, image_shapes, strict=True):
        boxes = box_ops.clip_boxes_to_image(boxes, shape)
        if len(gt) == 0 or len(boxes) == 0:
            out_boxes.append(boxes[:0])
            out_idxs.append(torch.zeros(0, dtype=torch.int64, device=boxes.device))
            continue
        iou, idx = box_ops.box_iou(boxes, gt).max(dim=1)
        keep = torch.where(iou >= iou_thresh)[0]
        if max_per_image is not None and len(keep) > max_per_image:
            keep = keep[torch.randperm(len(keep), device=keep.device)[:max_per_image]]
        out_boxes.append(boxes[keep])
        out_idxs.append(idx[keep])
    return out_boxes, out_idxs


class EJRoIHeads(RoIHeads):
    """torchvision's `RoIHeads` (sampling, box coding, losses, postprocessing) with the EJ-Head's flow:

    box branch  box_roi_pool (the joint path) -> box_head -> box_predictor on the sampled RoIs
    mask branch mask_roi_pool (the same joint path with Enriched Feature) -> mask_head -> mask_predictor
                on the interleaved refined boxes (training, `interleave`) or on the positive RoIs
                (Mask R-CNN); on the detections at test time.
    Returns ([{boxes, labels, scores, masks [N, 1, 28, 28]}] in eval, {loss_classifier, loss_box_reg,
    loss_mask} in training), like `RoIHeads`.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_roi_pool: nn.Module,
        mask_head: nn.Module,
        mask_predictor: nn.Module,
        *,
        interleave: bool = True,
        interleave_iou: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__(
            box_roi_pool, box_head, box_predictor,
            0.5, 0.5, batch_size_per_image, positive_fraction, None,
            score_thresh, nms_thresh, detections_per_img,
            mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor,
        )  # fmt: skip
        self.interleave = interleave
        self.interleave_iou = interleave_iou
        self.max_mask_rois = int(batch_size_per_image * positive_fraction)

    def mask_logits(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """Boxes per image [M_i, 4] (network frame) -> mask logits [sum M_i, K+1, 28, 28]."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        )

        if not self.training:
            boxes, scores, classes = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            results = [{"boxes": b, "labels": c, "scores": s} for b, c, s in zip(boxes, classes, scores, strict=True)]
            for result, masks in zip(
                results, maskrcnn_inference(self.mask_logits(features, boxes, image_shapes), classes), strict=True
            ):
                result["masks"] = masks
            return results, {}
        assert targets is not None  # checked on entry in training mode

        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        if self.interleave:
            mask_boxes, mask_idxs = interleaved_mask_rois(
                proposals, labels, class_logits, box_regression, [t["boxes"] for t in targets], self.box_coder,
                image_shapes, self.interleave_iou, self.max_mask_rois,
            )  # fmt: skip
        else:  # Mask R-CNN: the positive sampled proposals, unrefined
            positives = [torch.where(lab > 0)[0] for lab in labels]
            mask_boxes = [p[pos] for p, pos in zip(proposals, positives, strict=True)]
            mask_idxs = [m[pos] for m, pos in zip(matched_idxs, positives, strict=True)]
        loss_mask = maskrcnn_loss(
            self.mask_logits(features, mask_boxes, image_shapes), mask_boxes,
            [t["masks"] for t in targets], [t["labels"] for t in targets], mask_idxs,
        )  # fmt: skip
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss_mask}


def build_ej_head(
    channels: int, num_classes: int, *, interleave: bool = True, enriched: bool = True, refine: str = "residual",
    interleave_iou: float = 0.5, representation_size: int = 1024, mask_channels: int = 256,
    refine_convs: int = 2, box_head: str = "strided", box_convs: int = 1, **sampling: Any,
) -> EJRoIHeads:  # fmt: skip
    """EJ-Head for `num_classes` (background included) on `channels`-wide pyramid levels.

    With `enriched` one 14x14 joint path (pooler + refinement) feeds both branches — the "unified path";
    without it the joint path is the box branch's 7x7 one and the mask branch keeps Mask R-CNN's own
    14x14 pooler (inferred: Boundary Refinement then refines the box path only). With every switch off
    this is Mask R-CNN's head, parameter for parameter. With `enriched` the box branch reads the 14x14
    joint features through `EnrichedBoxHead` (`box_head` = "strided" | "conv" with `box_convs` 3x3
    convs, "flatten" or "pool"); `refine_convs` is the depth of the refinement block (Table 5's deeper stacks).
    """
    size = 14 if enriched else 7
    joint = JointRoIPath(channels, size, refine, refine_convs)
    if enriched:
        head: nn.Module = EnrichedBoxHead(channels, representation_size, box_head, box_convs)
    else:
        head = TwoMLPHead(channels * 7 * 7, representation_size)
    mask: tuple[nn.Module, nn.Module, nn.Module]
    if enriched:
        mask = (
            joint,
            MaskRCNNHeads(channels, [mask_channels] * 4, 1),
            MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        )
    else:
        mask = standard_mask_branch(channels, num_classes, mask_channels)
    return EJRoIHeads(
        joint, head, FastRCNNPredictor(representation_size, num_classes), *mask,
        interleave=interleave, interleave_iou=interleave_iou, **sampling,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- builder
@two_stage_keywords
def build_safpn(
    num_det_classes: int = 80,
    backbone: str = "resnet50",
    pretrained_backbone: bool | str = False,
    neck: str = "safpn",
    fuse: str = "concat",
    ej_head: bool = True,
    interleave: bool = True,
    enriched: bool = True,
    refine: str = "residual",
    interleave_iou: float = 0.5,
    refine_convs: int = 2,
    box_head: str = "strided",
    box_convs: int = 1,
    *,
    options: TwoStageOptions,
) -> TwoStageDetector:
    """SA-FPN + EJ-Head, ResNet-50, with the paper's defaults (1333x800, 512 RoIs per image at 1:3).

    DESIGN.md §4 contract (see `rcnn.TwoStageDetector`): eval -> boxes [N, 4] xyxy in the original pixel
    frame, scores [N], labels [N] int64 1..K, masks [N, 1, H, W] float 0..1 (and the RPN proposals).
    num_det_classes: object classes without background. neck: "safpn" | "td" | "bu" | "buf"; fuse:
    "concat" | "add" (SA-FPN only). ej_head = false: Mask R-CNN's box and mask heads (the three switches
    below are then unused). interleave: mask RoIs in training = refined boxes with IoU >= interleave_iou to
    a ground truth; enriched: 14x14 joint RoI features shared by both branches; refine: "residual"
    (Boundary Refinement) | "stacked" (plain convs, Table 5) | "none"; refine_convs: the depth of that block
    (2; Table 5's deeper plain stacks: 4, inferred). box_head: how the box branch reads the 14x14 joint
    features with `enriched` — "strided" (`box_convs` 3x3 convs, the last stride 2, 14x14 -> 7x7, then
    fc6/fc7), "conv" (`box_convs` 3x3 convs at 14x14, then 2x2 max-pool), "flatten" (fc6 on 14x14) or
    "pool" (max-pool to 7x7 only).
    Inferred (the paper gives figures, not layer lists): BU/BUF-FPN start from their own lateral 1x1
    convs and end each level with a 3x3 conv; BUF's deeper neighbour is its lateral map; SA-FPN reduces
    per level; the box branch reads the 14x14 joint features through a 3x3 stride-2 conv before fc6;
    without Enriched Feature the mask branch keeps its own pooler; interleaved RoIs are capped at the
    positives' quota (128 of 512). Parameters (COCO, R50): Mask R-CNN 44.4M, +SA-FPN 50.0M, +EJ-Head
    46.2M, both 51.8M (the paper reports none).
    The other keywords are `rcnn.TwoStageOptions`'. Tiny configuration: `build_safpn(**safpn.TINY)`.
    """
    if neck not in NECKS:
        raise UserError(f"unknown neck {neck!r}; valid: {', '.join(NECKS)}")
    if fuse not in FUSES:
        raise UserError(f"unknown SA-FPN fusion {fuse!r}; valid: {', '.join(FUSES)}")
    if refine not in REFINES:
        raise UserError(f"unknown boundary refinement {refine!r}; valid: {', '.join(REFINES)}")
    if box_head not in BOX_HEADS:
        raise UserError(f"unknown enriched box head {box_head!r}; valid: {', '.join(BOX_HEADS)}")
    if int(box_convs) < 1 or int(refine_convs) < 1:
        raise UserError(f"box_convs and refine_convs must be at least 1, got {box_convs} and {refine_convs}")
    if int(num_det_classes) < 1:
        raise UserError(f"num_det_classes must be at least 1, got {num_det_classes}")
    if not 0.0 < interleave_iou <= 1.0:
        raise UserError(f"interleave_iou must be in (0, 1], got {interleave_iou}")
    o = options
    body = build_neck_backbone(neck, fuse, backbone, pretrained_backbone, o.fpn_channels, o.trainable_layers)
    rpn = o.rpn()
    num_classes = int(num_det_classes) + 1
    if ej_head:
        roi_heads: RoIHeads = build_ej_head(
            o.fpn_channels, num_classes, interleave=interleave, enriched=enriched, refine=refine,
            interleave_iou=interleave_iou, representation_size=o.representation_size,
            mask_channels=o.mask_channels, refine_convs=refine_convs, box_head=box_head, box_convs=box_convs,
            **o.sampling(),
        )  # fmt: skip
    else:
        roi_heads = build_roi_heads(
            *standard_box_branch(o.fpn_channels, num_classes, o.representation_size),
            *standard_mask_branch(o.fpn_channels, num_classes, o.mask_channels), **o.sampling(),
        )  # fmt: skip
    return TwoStageDetector(body, rpn, roi_heads, **o.transform())
