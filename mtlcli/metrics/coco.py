"""COCO box / mask AP and AR, and class-agnostic proposal recall, through pycocotools' `COCOeval`.

Nothing here re-implements the matching: results go through `COCO.loadRes` and `COCOeval.evaluate /
accumulate / summarize` exactly as a direct run would. Only the read-out is ours: the 12 summary numbers
by name, per-class AP (mean of `eval["precision"]` over IoU thresholds and recall points at area "all",
100 detections, as Detectron2 reports it), and proposal AR at 100 / 1000 detections, read from
`eval["recall"]` the way `COCOeval.summarize` reads it (summarize itself assumes three maxDets).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtlcli.metrics.voc import gather_results

COCO_STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _none_if_missing(v: float) -> float | None:
    # COCOeval writes -1 where a number is undefined (no ground truth in that area range)
    return None if v < 0 else float(v)


def load_results(coco_gt: Any, results: list[dict[str, Any]]) -> Any:
    """A pycocotools COCO of detections; an empty list gives an empty result set (AP 0, not an error)."""
    from pycocotools.coco import COCO

    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(copy.deepcopy(results))  # loadRes writes ids/areas into the dicts
    empty = COCO()
    empty.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def run_cocoeval(
    coco_gt: Any,
    results: list[dict[str, Any]],
    iou_type: str,
    *,
    use_cats: bool = True,
    max_dets: Sequence[int] | None = None,
    summarize: bool = True,
) -> Any:
    """Run COCOeval quietly (its progress prints are swallowed) and return the evaluated object."""
    from pycocotools.cocoeval import COCOeval

    coco_dt = load_results(coco_gt, results)
    E = COCOeval(coco_gt, coco_dt, iou_type)
    E.params.useCats = int(use_cats)
    if max_dets is not None:
        E.params.maxDets = list(max_dets)
    with contextlib.redirect_stdout(io.StringIO()):
        E.evaluate()
        E.accumulate()
        if summarize:
            E.summarize()
    return E


def mean_recall(E: Any, area: str = "all", max_det: int = 100) -> float:
    """Recall averaged over IoU thresholds (and categories) for one area range and maxDets, as
    COCOeval.summarize computes it; -1 when undefined."""
    p = E.params
    a = p.areaRngLbl.index(area)
    m = p.maxDets.index(max_det)
    s = E.eval["recall"][:, :, a, m]
    s = s[s > -1]
    return float(np.mean(s)) if s.size else -1.0


class COCOMetric:
    """Streaming COCO AP@[.5:.95] for boxes ("bbox") or masks ("segm").

    Results are COCO dicts {image_id, category_id, bbox [x, y, w, h] pixels, score, segmentation (RLE,
    for "segm")}; `coco_gt` is the split's pycocotools COCO with category ids 1..K.
    """

    kind = "detection"

    def __init__(self, coco_gt: Any, class_names: Sequence[str], iou_type: str = "bbox") -> None:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type is 'bbox' or 'segm', got {iou_type!r}")
        self.coco_gt = coco_gt
        self.class_names = list(class_names)
        self.iou_type = iou_type
        self.results: list[dict[str, Any]] = []

    def update(self, results: list[dict[str, Any]]) -> None:
        self.results.extend(results)

    def sync(self) -> None:
        self.results = gather_results(self.results)

    def compute(self) -> dict[str, Any]:
        """{"value": AP@[.5:.95] in 0..1, "details": the 12 COCO numbers and per-class AP}."""
        E = run_cocoeval(self.coco_gt, self.results, self.iou_type)
        stats = {name: _none_if_missing(v) for name, v in zip(COCO_STATS, E.stats, strict=True)}
        precision = E.eval["precision"]  # [T, R, K, A, M]
        per_class = []
        for k in range(len(E.params.catIds)):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_class.append(float(np.mean(p)) if p.size else None)
        names = {c["id"]: c["name"] for c in self.coco_gt.dataset["categories"]}
        return {
            "value": max(float(E.stats[0]), 0.0),
            "details": {
                "iou_type": self.iou_type,
                "stats": stats,
                "classes": [names.get(c, str(c)) for c in E.params.catIds],
                "ap": per_class,
                "num_detections": len(self.results),
            },
        }


class ProposalRecall:
    """Class-agnostic proposal recall AR@100 / AR@1000, overall and by object size, via COCOeval with
    useCats = 0 and maxDets [100, 1000]. Results as for COCOMetric (category_id is not used)."""

    kind = "detection"
    max_dets = (100, 1000)

    def __init__(self, coco_gt: Any) -> None:
        self.coco_gt = coco_gt
        self.results: list[dict[str, Any]] = []

    def update(self, results: list[dict[str, Any]]) -> None:
        self.results.extend(results)

    def sync(self) -> None:
        self.results = gather_results(self.results)

    def compute(self) -> dict[str, Any]:
        """{"value": AR@100 in 0..1, "details": AR at 100 / 1000 for all, small, medium, large objects}."""
        # COCO loadRes needs a valid category id even when categories are not used
        first_cat = self.coco_gt.dataset["categories"][0]["id"] if self.coco_gt.dataset["categories"] else 1
        results = [{**r, "category_id": r.get("category_id", first_cat)} for r in self.results]
        E = run_cocoeval(self.coco_gt, results, "bbox", use_cats=False, max_dets=self.max_dets, summarize=False)
        stats: dict[str, float | None] = {}
        for m in self.max_dets:
            stats[f"AR@{m}"] = _none_if_missing(mean_recall(E, "all", m))
            for area, short in (("small", "s"), ("medium", "m"), ("large", "l")):
                stats[f"AR{short}@{m}"] = _none_if_missing(mean_recall(E, area, m))
        return {"value": stats["AR@100"] or 0.0, "details": {"stats": stats, "num_proposals": len(self.results)}}
