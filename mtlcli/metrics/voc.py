"""PASCAL VOC detection AP with the devkit's rules (VOCevaldet / py-faster-rcnn `voc_eval`).

Per class, all detections of the split are sorted by descending score. Each is matched to the
ground-truth box of its image and class with the highest IoU; IoU > 0.5 to a not-yet-matched box is a
true positive, to an already matched box a false positive (duplicate), to a difficult box neither; IoU
<= 0.5 is a false positive. Recall is over the non-difficult boxes.

- VOC2007 ("voc07"): AP = mean over recall thresholds 0, 0.1, ..., 1 of the best precision at recall >= t.
- VOC2010+ ("voc12"): AP = area under the precision envelope (monotone decreasing precision), summed
  where recall changes.

Boxes are xyxy in continuous pixel coordinates (a box covering columns 0..9 is [0, 10]); the devkit's
"+1" on 1-based inclusive coordinates gives the same widths, so the IoUs are identical. Difficult
objects are the ground-truth annotations with iscrowd = 1 in the prepared dataset. A class without any
non-difficult ground truth has no AP (None) and is left out of the mean.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07: bool) -> float:
    """AP from the cumulative recall / precision of the score-sorted detections (both [D], 0..1)."""
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = float(np.max(precision[recall >= t])) if np.any(recall >= t) else 0.0
            ap += p / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box [4] with M xyxy boxes [M, 4]."""
    iw = np.clip(np.minimum(gts[:, 2], box[2]) - np.maximum(gts[:, 0], box[0]), 0.0, None)
    ih = np.clip(np.minimum(gts[:, 3], box[3]) - np.maximum(gts[:, 1], box[1]), 0.0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]) - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


class VOCMetric:
    """Streaming VOC mAP@0.5 over COCO-format results against a prepared split's ground truth.

    Args:
        coco_gt: pycocotools COCO of the split (category ids 1..K, iscrowd = difficult).
        class_names: the K detection class names, id k + 1 for name k.
        use_07: the 11-point VOC2007 rule (True) or the VOC2010+ area rule (False).
        iou_threshold: the matching threshold (0.5 in VOC).
    """

    kind = "detection"

    def __init__(self, coco_gt: Any, class_names: Sequence[str], use_07: bool, iou_threshold: float = 0.5) -> None:
        self.class_names = list(class_names)
        self.use_07 = use_07
        self.iou_threshold = iou_threshold
        # ground truth per (image, class): boxes xyxy [M, 4] and difficult flags [M]
        self.gt: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.npos = np.zeros(len(self.class_names), dtype=np.int64)
        grouped: dict[tuple[int, int], list[tuple[list[float], bool]]] = defaultdict(list)
        for ann in coco_gt.dataset.get("annotations", []):
            x, y, w, h = ann["bbox"]
            grouped[(ann["image_id"], ann["category_id"])].append(([x, y, x + w, y + h], bool(ann.get("iscrowd", 0))))
        for key, items in grouped.items():
            boxes = np.array([b for b, _ in items], dtype=np.float64).reshape(-1, 4)
            difficult = np.array([d for _, d in items], dtype=bool)
            self.gt[key] = (boxes, difficult)
            if 1 <= key[1] <= len(self.class_names):
                self.npos[key[1] - 1] += int((~difficult).sum())
        self.results: list[dict[str, Any]] = []

    def update(self, results: list[dict[str, Any]]) -> None:
        """Add COCO results dicts ({image_id, category_id, bbox [x, y, w, h], score})."""
        self.results.extend(results)

    def sync(self) -> None:
        self.results = gather_results(self.results)

    def compute(self) -> dict[str, Any]:
        """{"value": mAP in 0..1, "details": per-class AP (None without ground truth), counts}."""
        by_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in self.results:
            by_class[int(r["category_id"])].append(r)
        aps: list[float] = []
        ndet: list[int] = []
        for k in range(len(self.class_names)):
            dets = by_class.get(k + 1, [])
            ndet.append(len(dets))
            aps.append(self._class_ap(k + 1, dets, int(self.npos[k])))
        valid = [a for a in aps if not math.isnan(a)]
        mean = float(np.mean(valid)) if valid else float("nan")
        return {
            "value": mean,
            "details": {
                "rule": "VOC2007 11-point" if self.use_07 else "VOC2010+ area",
                "iou_threshold": self.iou_threshold,
                "classes": self.class_names,
                "ap": [None if math.isnan(a) else a for a in aps],
                "num_gt": self.npos.tolist(),
                "num_detections": ndet,
                "map": None if math.isnan(mean) else mean,
            },
        }

    def _class_ap(self, category_id: int, dets: list[dict[str, Any]], npos: int) -> float:
        if npos == 0:
            return float("nan")
        # stable sort: ties keep the order the detections arrived in
        order = np.argsort(-np.array([d["score"] for d in dets], dtype=np.float64), kind="stable")
        tp = np.zeros(len(dets))
        fp = np.zeros(len(dets))
        matched: dict[int, np.ndarray] = {}
        for rank, i in enumerate(order):
            d = dets[i]
            x, y, w, h = d["bbox"]
            box = np.array([x, y, x + w, y + h], dtype=np.float64)
            gt_boxes, difficult = self.gt.get((int(d["image_id"]), category_id), (np.zeros((0, 4)), np.zeros(0, bool)))
            if len(gt_boxes) == 0:
                fp[rank] = 1
                continue
            ious = _iou(box, gt_boxes)
            j = int(np.argmax(ious))
            if ious[j] > self.iou_threshold:
                if difficult[j]:
                    continue
                used = matched.setdefault(int(d["image_id"]), np.zeros(len(gt_boxes), bool))
                if not used[j]:
                    tp[rank] = 1
                    used[j] = True
                else:
                    fp[rank] = 1
            else:
                fp[rank] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / float(npos)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        return voc_ap(recall, precision, self.use_07)


def gather_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' results lists concatenated (the list itself outside torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return results
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, results)
    return [r for part in parts for r in part]
