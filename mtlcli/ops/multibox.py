"""SSD MultiBox maths as small typed functions: default boxes, matching, hard negative mining, the loss
and the decoding of detections. Shared by every SSD-style family (IvaNet, BlitzNet, SSD300, ...).

Conventions used throughout:
    default boxes  [A, 4] xyxy float, pixels of the network input frame (h, w), in the order of
                   torchvision's `DefaultBoxGenerator` (level by level, row-major cells, then the
                   width/height pairs of a cell) - the order `SSDHead` flattens its outputs in
    cls_logits     [B, A, C] with C = K + 1 classes, index 0 = background, 1..K = the dataset's labels
    box_deltas     [B, A, 4] offsets (dx, dy, dw, dh) of `BOX_CODER` relative to the default boxes
    targets        per image: boxes [N, 4] xyxy (network frame), labels [N] int64 1..K, optional
                   iscrowd [N] (crowd boxes are never positives; default boxes inside them are ignored)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, box_area, box_iou, clip_boxes_to_image

# SSD's variances (0.1, 0.1, 0.2, 0.2) written as torchvision's box-coder weights (their inverses).
BOX_CODER = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))

MATCHED_BACKGROUND = -1  # a default box that trains as background (a negative candidate)
MATCHED_IGNORE = -2  # a default box left out of the loss (covered by a crowd region)

# The standard SSD configurations: aspect ratios, box scales (fractions of the input side, one more
# than levels: the last one only sets the extra "sqrt(s_k s_k+1)" box of the last level) and steps.
SSD300_ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
SSD300_SCALES = [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05]
SSD300_STEPS = [8, 16, 32, 64, 100, 300]
SSD512_ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]]
SSD512_SCALES = [0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05]
SSD512_STEPS = [8, 16, 32, 64, 128, 256, 512]


def ssd_scales(
    num_levels: int, min_ratio: float = 0.2, max_ratio: float = 0.9, first_ratio: float = 0.1
) -> list[float]:
    """Box scales of the SSD paper's Caffe code for `num_levels` feature maps (`num_levels + 1` values).

    The first level gets `first_ratio`; levels 2..L are spaced from `min_ratio` to `max_ratio` with the
    step rounded down to whole percent, as Caffe SSD does; one more step closes the list. With the
    defaults and 6 levels this is SSD300's [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05].
    """
    if num_levels < 2:
        return [first_ratio, max_ratio]
    step = math.floor(round(100 * (max_ratio - min_ratio) / max(num_levels - 2, 1), 6)) / 100
    rest = [round(min_ratio + k * step, 6) for k in range(num_levels)]
    return [first_ratio] + rest


def default_boxes(
    input_size: tuple[int, int],
    grid_sizes: Sequence[tuple[int, int]],
    aspect_ratios: Sequence[Sequence[int]],
    scales: Sequence[float],
    steps: Sequence[int] | None = None,
    clip: bool = False,
) -> Tensor:
    """SSD default boxes [A, 4] xyxy in pixels of the network input (h, w), via torchvision's
    `DefaultBoxGenerator`. `grid_sizes` are the (h, w) of the feature maps, largest first; without
    `steps` the cell centres follow the grid sizes (needed for non-standard and rectangular inputs)."""
    gen = DefaultBoxGenerator(
        [list(r) for r in aspect_ratios], scales=list(scales), steps=None if steps is None else list(steps), clip=clip
    )
    h, w = input_size
    images = ImageList(torch.empty(1, 3, h, w), [(h, w)])
    maps = [torch.empty(1, 1, gh, gw) for gh, gw in grid_sizes]
    return gen(images, maps)[0]


def num_boxes_per_location(aspect_ratios: Sequence[Sequence[int]]) -> list[int]:
    """Default boxes per feature-map cell: two squares plus a pair per aspect ratio."""
    return [2 + 2 * len(r) for r in aspect_ratios]


def match_default_boxes(
    defaults: Tensor,
    gt_boxes: Tensor,
    iscrowd: Tensor | None = None,
    iou_threshold: float = 0.5,
    crowd_ioa_threshold: float = 0.5,
) -> Tensor:
    """SSD matching: every default box whose IoU with a (non-crowd) ground truth is >= `iou_threshold`
    is matched to its best one, and every ground truth also takes its own best default box.

    defaults [A, 4], gt_boxes [N, 4] xyxy in the same frame; iscrowd [N] (1 = crowd: never a positive).
    Returns [A] int64: the index into `gt_boxes` of the matched ground truth, `MATCHED_BACKGROUND` (-1),
    or `MATCHED_IGNORE` (-2) for an unmatched default box that lies mostly (intersection over its own
    area >= `crowd_ioa_threshold`) inside a crowd region, so that it is not trained as background.
    """
    matches = torch.full((defaults.shape[0],), MATCHED_BACKGROUND, dtype=torch.int64, device=defaults.device)
    if gt_boxes.numel() == 0:
        return matches
    crowd = (
        torch.zeros(gt_boxes.shape[0], dtype=torch.bool, device=gt_boxes.device) if iscrowd is None else iscrowd.bool()
    )
    real = torch.where(~crowd)[0]
    if real.numel() > 0:
        # SSDMatcher = threshold matching + the best default box of every ground truth.
        sub = det_utils.SSDMatcher(iou_threshold)(box_iou(gt_boxes[real].float(), defaults))
        positive = sub >= 0
        matches[positive] = real[sub[positive]]
    if crowd.any():
        crowd_boxes = gt_boxes[crowd].float()
        lt = torch.max(defaults[:, None, :2], crowd_boxes[None, :, :2])
        rb = torch.min(defaults[:, None, 2:], crowd_boxes[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)  # [A, Ncrowd]
        ioa = inter / box_area(defaults).clamp(min=1e-6)[:, None]
        covered = (ioa >= crowd_ioa_threshold).any(1) & (matches == MATCHED_BACKGROUND)
        matches[covered] = MATCHED_IGNORE
    return matches


def hard_negative_mask(cls_loss: Tensor, positive: Tensor, ignore: Tensor, neg_pos_ratio: int = 3) -> Tensor:
    """Hard negative mining: per image, the `neg_pos_ratio * num_positives` background default boxes
    with the highest classification loss.

    cls_loss, positive, ignore: [B, A] (loss per default box; masks of positives and ignored boxes).
    Returns a [B, A] bool mask of the selected negatives (never a positive or an ignored box). An image
    without positives contributes no negatives, as in SSD.
    """
    num_neg = neg_pos_ratio * positive.sum(1, keepdim=True)
    candidate = ~(positive | ignore)
    ranked = cls_loss.detach().masked_fill(~candidate, -math.inf)
    order = ranked.argsort(1, descending=True)
    rank = order.argsort(1)  # rank of every box in its image's descending order
    return (rank < num_neg) & candidate


def multibox_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    defaults: Tensor,
    targets: Sequence[dict[str, Tensor]],
    *,
    iou_threshold: float = 0.5,
    neg_pos_ratio: int = 3,
    box_coder: det_utils.BoxCoder = BOX_CODER,
) -> dict[str, Tensor]:
    """The SSD MultiBox loss: softmax cross-entropy over positives and mined hard negatives, plus
    smooth-L1 on the encoded offsets of the positives, both divided by the number of positives in the
    batch (at least 1).

    cls_logits [B, A, K + 1], box_deltas [B, A, 4], defaults [A, 4] xyxy (network frame);
    targets: boxes [N, 4] xyxy (same frame), labels [N] in 1..K, optional iscrowd [N].
    Returns {"loss_cls": scalar, "loss_box": scalar}.
    """
    cls_targets, box_targets, positive, ignore = [], [], [], []
    for target in targets:
        boxes = target.get("boxes", defaults.new_zeros((0, 4))).to(defaults)
        labels = target.get("labels", torch.zeros(0, dtype=torch.int64, device=defaults.device)).to(defaults.device)
        matches = match_default_boxes(defaults, boxes, target.get("iscrowd"), iou_threshold)
        pos = matches >= 0
        idx = matches.clamp(min=0)
        cls_t = torch.where(pos, labels[idx] if labels.numel() else torch.zeros_like(idx), torch.zeros_like(idx))
        box_t = box_coder.encode_single(boxes[idx], defaults) if boxes.numel() else torch.zeros_like(defaults)
        cls_targets.append(cls_t)
        box_targets.append(box_t)
        positive.append(pos)
        ignore.append(matches == MATCHED_IGNORE)
    cls_t, box_t = torch.stack(cls_targets), torch.stack(box_targets)
    pos, ign = torch.stack(positive), torch.stack(ignore)
    cls_logits, box_deltas = cls_logits.float(), box_deltas.float()  # fp32 losses under autocast

    num_classes = cls_logits.shape[-1]
    cls_loss = F.cross_entropy(cls_logits.reshape(-1, num_classes), cls_t.reshape(-1), reduction="none").view_as(cls_t)
    neg = hard_negative_mask(cls_loss, pos, ign, neg_pos_ratio)
    n = pos.sum().clamp(min=1).to(cls_loss.dtype)
    loss_cls = (cls_loss * (pos | neg)).sum() / n
    loss_box = F.smooth_l1_loss(box_deltas[pos], box_t[pos], reduction="sum") / n
    return {"loss_cls": loss_cls, "loss_box": loss_box}


def decode_detections(
    cls_logits: Tensor,
    box_deltas: Tensor,
    defaults: Tensor,
    image_size: tuple[int, int],
    *,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    topk_candidates: int = 400,
    detections_per_img: int = 200,
    box_coder: det_utils.BoxCoder = BOX_CODER,
) -> dict[str, Tensor]:
    """One image's detections from SSD outputs: softmax scores, per class the `topk_candidates` best
    boxes above `score_thresh`, class-wise NMS (`batched_nms`), the best `detections_per_img` kept.

    cls_logits [A, K + 1], box_deltas [A, 4], defaults [A, 4] xyxy; image_size (h, w) of the network
    frame. Returns boxes [N, 4] xyxy clipped to that frame, scores [N] in 0..1 (descending),
    labels [N] int64 in 1..K.
    """
    scores = cls_logits.float().softmax(-1)[:, 1:]  # [A, K]
    boxes = clip_boxes_to_image(box_coder.decode_single(box_deltas.float(), defaults.float()), image_size)
    k = min(topk_candidates, scores.shape[0])
    top_scores, top_idx = scores.topk(k, dim=0)  # [k, K]: the best default boxes of every class
    labels = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(top_idx)
    keep = top_scores > score_thresh
    top_scores, top_idx, labels = top_scores[keep], top_idx[keep], labels[keep]
    cand = boxes[top_idx]
    # Degenerate boxes (zero width after clipping) can never be a true detection.
    ok = (cand[:, 2] > cand[:, 0]) & (cand[:, 3] > cand[:, 1])
    cand, top_scores, labels = cand[ok], top_scores[ok], labels[ok]
    keep = batched_nms(cand, top_scores, labels, nms_thresh)[:detections_per_img]
    return {"boxes": cand[keep], "scores": top_scores[keep], "labels": labels[keep].to(torch.int64)}
