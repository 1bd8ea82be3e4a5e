"""Cascade Mask R-CNN (Cai & Vasconcelos 2018/2019), with SA-FPN and EJ-Head as plug-ins (papers/safpn-ejhead.txt,
Table 2's Cascade rows: "the proposed SA-FPN and EJ-Head modules also provide considerable improvements for
multi-stage method like Cascaded Mask R-CNN").

MMDetection's `cascade_mask_rcnn_r50_fpn_1x` (the paper trains with mmdetection), read top to bottom:

    ResNet + neck (FPN, or SA-FPN: `safpn.build_neck_backbone`) -> RPN -> proposals r_0
    stage t = 1, 2, 3 (IoU 0.5 / 0.6 / 0.7, loss weight 1 / 0.5 / 0.25, box coder stds
                       [0.1, 0.1, 0.2, 0.2] / [0.05, 0.05, 0.1, 0.1] / [0.033, 0.033, 0.067, 0.067]):
        training  ground truths added to r_{t-1}, matched at IoU_t, 512 sampled at 1:3
        box       RoIAlign 7x7 -> fc 1024 -> fc 1024 -> K+1 class logits + 4 class-agnostic deltas
        mask      RoIAlign 14x14 -> 4 conv3x3 256 -> deconv x2 -> 1x1 -> K+1 masks of 28x28 (own head per stage)
        r_t       the stage's regressed boxes (detached, clipped; the added ground truths dropped)
    test          each stage scores the boxes it receives; score = softmax(mean of the three stages'
                  logits), box = stage 3's regression of r_2; per-class NMS 0.5, score > 0.05, top 100;
                  mask = mean of the three stages' mask probabilities on the final boxes

(MMDetection's `CascadeRoIHead`: `_refine_roi` averages the logits `cls_score` of every stage and the
last bbox head applies the softmax; `predict_mask` runs every stage's mask head on the detections and
merges them with `merge_aug_masks`, a mean; `refine_bboxes` drops the ground truths that were added as
proposals before the next stage.) Box loss: smooth L1 with beta 1.0 over the positives, divided by the
number of sampled RoIs (as `fastrcnn_loss` divides), cross-entropy over all sampled RoIs.

With `ej_head`, each stage's box and mask branches become the EJ-Head of `safpn.py`: one joint path per
stage (RoIAlign 14x14 = Enriched Feature, then Boundary Refinement) feeding the stage's box branch
(through `EnrichedBoxHead`) and its mask branch; with Interleaving the stage's mask branch trains on the
stage's own regressed boxes that overlap a ground truth by IoU >= `interleave_iou` (Hybrid Task
Cascade's interleaved execution), not on its sampled RoIs. Inferred (the paper gives no layer list for
the cascade): one joint path per stage, the interleaving bar 0.5 at every stage.

Loss terms: loss_objectness, loss_rpn_box_reg, and per stage t = 0, 1, 2 loss_s{t}_classifier,
loss_s{t}_box_reg, loss_s{t}_mask (already multiplied by the stage's weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from mtlcli.errors import UserError
from mtlcli.models.rcnn import FPN_LEVELS, TwoStageDetector, TwoStageOptions, two_stage_keywords
from mtlcli.models.rcnn import TINY as RCNN_TINY
from mtlcli.models.safpn import BOX_HEADS, FUSES, NECKS, REFINES, EnrichedBoxHead, JointRoIPath, build_neck_backbone

# MMDetection's cascade_mask_rcnn_r50_fpn: the three stages' IoU thresholds, loss weights, box coder stds
IOUS = (0.5, 0.6, 0.7)
STAGE_WEIGHTS = (1.0, 0.5, 0.25)
BOX_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))

# The tiny configuration (tests, cascade-tiny-synthetic): the two-stage one of rcnn.py.
TINY: dict[str, Any] = dict(RCNN_TINY)


class AgnosticPredictor(nn.Module):
    """[R, representation] -> (class logits [R, K+1], class-agnostic box deltas [R, 4]).
    Initialised as MMDetection's BBoxHead: logits N(0, 0.01), deltas N(0, 0.001), zero biases."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeStage(nn.Module):
    """One stage: box pooler -> box head -> predictor; mask pooler -> mask head -> mask predictor.
    With the EJ-Head the two poolers are one module (the joint path)."""

    def __init__(
        self,
        box_pool: nn.Module,
        box_head: nn.Module,
        predictor: AgnosticPredictor,
        mask_pool: nn.Module | None,
        mask_head: nn.Module | None,
        mask_predictor: nn.Module | None,
    ) -> None:
        super().__init__()
        self.box_pool, self.box_head, self.predictor = box_pool, box_head, predictor
        self.mask_pool, self.mask_head, self.mask_predictor = mask_pool, mask_head, mask_predictor

    def boxes(self, features: dict[str, Tensor], rois: list[Tensor], shapes: list[tuple[int, int]]):
        """RoIs per image [R_i, 4] (network frame) -> (logits [sum R_i, K+1], deltas [sum R_i, 4])."""
        return self.predictor(self.box_head(self.box_pool(features, rois, shapes)))

    def masks(self, features: dict[str, Tensor], boxes: list[Tensor], shapes: list[tuple[int, int]]) -> Tensor:
        """Boxes per image [M_i, 4] -> mask logits [sum M_i, K+1, 28, 28]."""
        pool, head, predictor = self.mask_pool, self.mask_head, self.mask_predictor
        if pool is None or head is None or predictor is None:
            raise ValueError("this cascade has no mask branch (masks = false)")
        return predictor(head(pool(features, boxes, shapes)))


def decode_agnostic(coder: det_utils.BoxCoder, deltas: Tensor, rois: list[Tensor], shapes) -> list[Tensor]:
    """Class-agnostic deltas [sum R_i, 4] applied to the RoIs per image -> boxes per image [R_i, 4], clipped."""
    boxes = coder.decode(deltas, rois).reshape(-1, 4)
    return [box_ops.clip_boxes_to_image(b, s) for b, s in zip(boxes.split([len(r) for r in rois]), shapes, strict=True)]


class CascadeRoIHeads(nn.Module):
    """The cascade of RoI heads (module docstring). Called as torchvision's `RoIHeads`:
    (features, proposals per image [P_i, 4] xyxy network frame, image_shapes, targets) ->
    ([{boxes, labels, scores, masks [N, 1, 28, 28] probabilities}] in eval, losses in training)."""

    def __init__(
        self,
        stages: Sequence[CascadeStage],
        *,
        ious: Sequence[float] = IOUS,
        stage_weights: Sequence[float] = STAGE_WEIGHTS,
        box_stds: Sequence[Sequence[float]] = BOX_STDS,
        box_loss_beta: float = 1.0,
        interleave: bool = False,
        interleave_iou: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        n = len(stages)
        if not (len(ious) == len(stage_weights) == len(box_stds) == n) or n < 1:
            raise UserError(
                f"a cascade needs as many IoU thresholds, stage weights and box stds as stages ({n}); "
                f"got {len(ious)}, {len(stage_weights)}, {len(box_stds)}"
            )
        if any(len(s) != 4 or min(s) <= 0 for s in box_stds):
            raise UserError(f"box_stds: give four positive numbers per stage, got {[list(s) for s in box_stds]}")
        self.stages = nn.ModuleList(stages)
        self.ious, self.stage_weights = [float(v) for v in ious], [float(w) for w in stage_weights]
        self.coders = [det_utils.BoxCoder(tuple(1.0 / float(v) for v in s)) for s in box_stds]
        self.matchers = [det_utils.Matcher(u, u, allow_low_quality_matches=False) for u in self.ious]
        self.sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_loss_beta = box_loss_beta
        self.interleave, self.interleave_iou = interleave, interleave_iou
        self.max_mask_rois = int(batch_size_per_image * positive_fraction)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    def stage_list(self) -> list[CascadeStage]:
        return cast(list[CascadeStage], list(self.stages))

    def has_mask(self) -> bool:
        return self.stage_list()[0].mask_head is not None

    # -- training
    def sample(self, t: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, list[Tensor]]:
        """Stage t's RoIs: proposals + ground truths, matched at IoU_t, 512 sampled at 1:3. Returns per
        image rois [R, 4], labels [R] (0 = background), matched ground-truth index [R], regression
        targets [R, 4] (stage t's coder) and is_gt [R] bool (the RoI is an added ground truth)."""
        out: dict[str, list[Tensor]] = {k: [] for k in ("rois", "labels", "matched", "targets", "is_gt")}
        all_rois, all_labels, all_matched = [], [], []
        for props, tgt in zip(proposals, targets, strict=True):
            gt = tgt["boxes"]
            rois = torch.cat([props, gt])
            if len(gt) == 0:
                matched = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
                labels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
            else:
                idx = self.matchers[t](box_ops.box_iou(gt, rois))
                matched = idx.clamp(min=0)
                labels = tgt["labels"][matched].to(torch.int64)
                labels[idx < 0] = 0  # below IoU_t: background (no in-between band: low = high threshold)
            all_rois.append(rois)
            all_labels.append(labels)
            all_matched.append(matched)
            out["is_gt"].append(torch.arange(len(rois), device=rois.device) >= len(props))
        pos, neg = self.sampler(all_labels)
        for i, (p, n) in enumerate(zip(pos, neg, strict=True)):
            keep = torch.where(p | n)[0]
            rois, labels, matched = all_rois[i][keep], all_labels[i][keep], all_matched[i][keep]
            gt = targets[i]["boxes"]
            target = self.coders[t].encode_single(gt[matched], rois) if len(gt) else torch.zeros_like(rois)
            out["rois"].append(rois)
            out["labels"].append(labels)
            out["matched"].append(matched)
            out["targets"].append(target)
            out["is_gt"][i] = out["is_gt"][i][keep]
        return out

    def box_loss(self, logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy over the sampled RoIs; smooth L1 (beta `box_loss_beta`) of the class-agnostic
        deltas of the positives, summed and divided by the number of sampled RoIs."""
        loss_cls = F.cross_entropy(logits, labels)
        pos = torch.where(labels > 0)[0]
        loss_box = F.smooth_l1_loss(deltas[pos], targets[pos], beta=self.box_loss_beta, reduction="sum")
        return loss_cls, loss_box / max(labels.numel(), 1)

    def mask_rois(
        self, t: int, sampled: dict[str, list[Tensor]], refined: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The mask branch's training RoIs of stage t and their ground-truth index: the positive sampled
        RoIs (Cascade Mask R-CNN), or with Interleaving the stage's regressed boxes with IoU >=
        `interleave_iou` to a ground truth (at most the positives' quota, a random subset)."""
        if not self.interleave:
            pos = [torch.where(lab > 0)[0] for lab in sampled["labels"]]
            return [r[p] for r, p in zip(sampled["rois"], pos, strict=True)], [
                m[p] for m, p in zip(sampled["matched"], pos, strict=True)
            ]
        boxes, idxs = [], []
        for b, tgt in zip(refined, targets, strict=True):
            gt = tgt["boxes"]
            if len(gt) == 0 or len(b) == 0:
                boxes.append(b[:0])
                idxs.append(torch.zeros(0, dtype=torch.int64, device=b.device))
                continue
            iou, idx = box_ops.box_iou(b, gt).max(dim=1)
            keep = torch.where(iou >= self.interleave_iou)[0]
            if len(keep) > self.max_mask_rois:
                keep = keep[torch.randperm(len(keep), device=keep.device)[: self.max_mask_rois]]
            boxes.append(b[keep])
            idxs.append(idx[keep])
        return boxes, idxs

    def forward_train(
        self, features: dict[str, Tensor], proposals: list[Tensor], shapes: list[tuple[int, int]], targets
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        rois = [p.detach() for p in proposals]
        for t, stage in enumerate(self.stage_list()):
            w = self.stage_weights[t]
            sampled = self.sample(t, rois, targets)
            logits, deltas = stage.boxes(features, sampled["rois"], shapes)
            loss_cls, loss_box = self.box_loss(
                logits, deltas, torch.cat(sampled["labels"]), torch.cat(sampled["targets"])
            )
            losses[f"loss_s{t}_classifier"] = w * loss_cls
            losses[f"loss_s{t}_box_reg"] = w * loss_box
            with torch.no_grad():
                refined = decode_agnostic(self.coders[t], deltas.detach(), sampled["rois"], shapes)
            if self.has_mask():
                boxes, idxs = self.mask_rois(t, sampled, refined, targets)
                loss_mask = maskrcnn_loss(
                    stage.masks(features, boxes, shapes), boxes,
                    [tg["masks"] for tg in targets], [tg["labels"] for tg in targets], idxs,
                )  # fmt: skip
                losses[f"loss_s{t}_mask"] = w * loss_mask
            # the next stage starts from this stage's regressed boxes, without the added ground truths
            rois = [b[~g] for b, g in zip(refined, sampled["is_gt"], strict=True)]
        return losses

    # -- inference
    def forward_test(
        self, features: dict[str, Tensor], proposals: list[Tensor], shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        counts = [p.shape[0] for p in proposals]  # traced sizes (len() would be a constant in an export)
        rois = proposals
        logits_sum: Tensor | None = None
        for t, stage in enumerate(self.stage_list()):
            logits, deltas = stage.boxes(features, rois, shapes)
            logits_sum = logits if logits_sum is None else logits_sum + logits
            rois = decode_agnostic(self.coders[t], deltas, rois, shapes)  # after the last stage: the output boxes
        assert logits_sum is not None  # a cascade has at least one stage
        scores = (logits_sum / len(self.stages)).softmax(-1)
        results = []
        for boxes, s, shape in zip(rois, scores.split(counts), shapes, strict=True):
            results.append(self.detections(boxes, s, shape))
        if self.has_mask():
            final = [r["boxes"] for r in results]
            labels = [r["labels"] for r in results]
            merged: list[Tensor] = []
            for stage in self.stage_list():
                probs = maskrcnn_inference(stage.masks(features, final, shapes), labels)  # sigmoid, label's channel
                merged = probs if not merged else [a + b for a, b in zip(merged, probs, strict=True)]
            for r, m in zip(results, merged, strict=True):
                r["masks"] = m / len(self.stages)
        return results

    def detections(self, boxes: Tensor, scores: Tensor, shape: tuple[int, int]) -> dict[str, Tensor]:
        """One image: class-agnostic boxes [R, 4] and class probabilities [R, K+1] -> per-class NMS'd
        detections (score > score_thresh, boxes of at least 1e-2 pixels, at most detections_per_img)."""
        num_classes = scores.shape[1]
        boxes = boxes[:, None].expand(-1, num_classes - 1, 4)
        labels = torch.arange(1, num_classes, device=scores.device).expand(len(scores), -1)
        scores = scores[:, 1:]
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

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
            return [], self.forward_train(features, proposals, image_shapes, targets)
        return self.forward_test(features, proposals, image_shapes), {}


def build_stage(
    channels: int, num_classes: int, *, masks: bool, ej_head: bool, enriched: bool, refine: str, refine_convs: int,
    box_head: str, box_convs: int, representation_size: int, mask_channels: int,
) -> CascadeStage:  # fmt: skip
    """One stage's branches: Cascade Mask R-CNN's (7x7 box RoIs, 14x14 mask RoIs), or the EJ-Head's joint
    path (14x14 with `enriched`, else 7x7 for the box branch while the mask branch keeps its own 14x14
    pooler, as `safpn.build_ej_head`)."""
    predictor = AgnosticPredictor(representation_size, num_classes)
    mask_head = MaskRCNNHeads(channels, [mask_channels] * 4, 1) if masks else None
    mask_predictor = MaskRCNNPredictor(mask_channels, mask_channels, num_classes) if masks else None
    plain_mask_pool = MultiScaleRoIAlign(FPN_LEVELS, output_size=14, sampling_ratio=2) if masks else None
    if not ej_head:
        pool = MultiScaleRoIAlign(FPN_LEVELS, output_size=7, sampling_ratio=2)
        return CascadeStage(pool, TwoMLPHead(channels * 49, representation_size), predictor,
                            plain_mask_pool, mask_head, mask_predictor)  # fmt: skip
    joint = JointRoIPath(channels, 14 if enriched else 7, refine, refine_convs)
    if enriched:
        head: nn.Module = EnrichedBoxHead(channels, representation_size, box_head, box_convs)
        return CascadeStage(joint, head, predictor, joint if masks else None, mask_head, mask_predictor)
    return CascadeStage(joint, TwoMLPHead(channels * 49, representation_size), predictor,
                        plain_mask_pool, mask_head, mask_predictor)  # fmt: skip


@two_stage_keywords
def build_cascade(
    num_det_classes: int = 80,
    backbone: str = "resnet50",
    pretrained_backbone: bool | str = False,
    masks: bool = True,
    stage_ious: Sequence[float] = IOUS,
    stage_weights: Sequence[float] = STAGE_WEIGHTS,
    box_stds: Sequence[Sequence[float]] = BOX_STDS,
    box_loss_beta: float = 1.0,
    neck: str = "td",
    fuse: str = "concat",
    ej_head: bool = False,
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
    """Cascade Mask R-CNN R50-FPN (MMDetection's cascade_mask_rcnn_r50_fpn_1x) behind DESIGN.md §4.

    eval -> per image in its original frame: boxes [N, 4] xyxy, scores [N], labels [N] int64 1..K,
    masks [N, 1, H, W] float 0..1 (with `masks`), proposals [P, 4]. num_det_classes: without background.
    stage_ious / stage_weights / box_stds: one entry per stage (3 stages: 0.5 / 0.6 / 0.7, 1 / 0.5 / 0.25,
    MMDetection's stds; torchvision's BoxCoder weights are their inverses). box_loss_beta: the smooth L1
    beta of the box branches (MMDetection: 1.0; torchvision's Mask R-CNN uses 1/9). masks: false gives
    Cascade R-CNN (boxes only).
    neck: "td" (FPN) | "safpn" | "bu" | "buf" and fuse: "concat" | "add" as `safpn.build_safpn`; ej_head:
    every stage's heads become the EJ-Head (interleave, enriched, refine, refine_convs, box_head,
    box_convs, interleave_iou as `build_safpn`). Inferred for the cascade (the paper names no details):
    one joint path per stage; Interleaving trains stage t's mask branch on stage t's regressed boxes with
    IoU >= interleave_iou (0.5 at every stage).
    Differences from MMDetection: torchvision's RoIAlign with sampling_ratio 2 (MMDetection: 0, adaptive)
    and level assignment (the same canonical 224 / level 4 rule); class-specific masks over K+1 channels
    (MMDetection: K), +257 parameters per stage at 256 channels. Parameters (COCO, R50): 77,325,377 against
    77,324,606 counted from MMDetection's config (+771, tests/models/test_cascade.py); with SA-FPN 82.97M,
    with EJ-Head 82.64M, with both 88.28M; R101 96.32M.
    The other keywords are `rcnn.TwoStageOptions`'. Tiny configuration: `build_cascade(**cascade.TINY)`.
    """
    if neck not in NECKS:
        raise UserError(f"unknown neck {neck!r}; valid: {', '.join(NECKS)}")
    if fuse not in FUSES:
        raise UserError(f"unknown SA-FPN fusion {fuse!r}; valid: {', '.join(FUSES)}")
    if refine not in REFINES:
        raise UserError(f"unknown boundary refinement {refine!r}; valid: {', '.join(REFINES)}")
    if box_head not in BOX_HEADS:
        raise UserError(f"unknown enriched box head {box_head!r}; valid: {', '.join(BOX_HEADS)}")
    if int(num_det_classes) < 1:
        raise UserError(f"num_det_classes must be at least 1, got {num_det_classes}")
    if any(not 0.0 < float(u) < 1.0 for u in stage_ious):
        raise UserError(f"stage_ious must lie in (0, 1), got {list(stage_ious)}")
    if not 0.0 < interleave_iou <= 1.0:
        raise UserError(f"interleave_iou must be in (0, 1], got {interleave_iou}")
    o = options
    body = build_neck_backbone(neck, fuse, backbone, pretrained_backbone, o.fpn_channels, o.trainable_layers)
    num_classes = int(num_det_classes) + 1
    stages = [
        build_stage(
            o.fpn_channels,
            num_classes,
            masks=masks,
            ej_head=ej_head,
            enriched=enriched,
            refine=refine,
            refine_convs=refine_convs,
            box_head=box_head,
            box_convs=box_convs,
            representation_size=o.representation_size,
            mask_channels=o.mask_channels,
        )  # fmt: skip
        for _ in stage_ious
    ]
    roi_heads = CascadeRoIHeads(
        stages, ious=stage_ious, stage_weights=stage_weights, box_stds=box_stds, box_loss_beta=box_loss_beta,
        interleave=ej_head and interleave, interleave_iou=interleave_iou, **o.sampling(),
    )  # fmt: skip
    return TwoStageDetector(body, o.rpn(), roi_heads, **o.transform())
