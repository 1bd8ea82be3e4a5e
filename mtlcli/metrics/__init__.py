"""Evaluation metrics that agree with the official tools, streaming over images.

    miou       semantic segmentation: confusion matrix, IoU / mIoU, accuracies, Cityscapes iIoU
    dt         DATNet's distance-transform head: pixel accuracy of the DT bins (and their IoU / mIoU)
    voc07      VOC mAP@0.5, 11-point rule          voc12      VOC mAP@0.5, area rule (2010+)
    coco-bbox  COCO box AP@[.5:.95] (COCOeval)     coco-segm  COCO mask AP@[.5:.95] (COCOeval)
    ar         class-agnostic proposal recall AR@100 / AR@1000 (COCOeval, useCats = 0)
    pq         panoptic quality PQ / SQ / RQ (all, things, stuff, per class), as cityscapesscripts'
               evalPanopticSemanticLabeling (metrics/panoptic.py); `update(gt_ids, gt_segments, ids, segments)`
    cs-inst    Cityscapes instance AP / AP50 through cityscapesscripts' evalInstanceLevelSemanticLabeling

Every metric has `kind` ("semantic": `update(pred, target, instances)`; "detection": `update(results)`
with COCO results dicts), `sync()` (gather across torch.distributed ranks) and `compute() -> {"value":
headline float, "details": JSON-ready dict}`.
"""

from __future__ import annotations

import math
from typing import Any

from mtlcli.errors import UserError

METRIC_NAMES = ("miou", "dt", "voc07", "voc12", "coco-bbox", "coco-segm", "ar", "pq", "cs-inst")
SEMANTIC_METRICS = ("miou", "dt")
DETECTION_METRICS = ("voc07", "voc12", "coco-bbox", "coco-segm", "ar", "cs-inst")
MASK_METRICS = ("coco-segm", "cs-inst")  # detection metrics that score instance masks
PANOPTIC_METRICS = ("pq",)


def check_metric_names(names: list[str]) -> list[str]:
    """Split comma-separated names, drop repeats, reject unknown ones with the list of valid names."""
    out: list[str] = []
    for entry in names:
        for name in (n.strip().lower() for n in str(entry).split(",")):
            if not name:
                continue
            if name not in METRIC_NAMES:
                raise UserError(f"unknown metric {name!r}; valid metrics: {', '.join(METRIC_NAMES)}")
            if name not in out:
                out.append(name)
    return out


def build_metric(name: str, dataset: Any) -> Any:
    """The metric `name` for a dataset with `.meta` (DatasetMeta) and `.coco` (pycocotools COCO of the
    split) — a PreparedDataset or `mtlcli.metrics.predictions.GroundTruth`."""
    from mtlcli.metrics.coco import COCOMetric, ProposalRecall
    from mtlcli.metrics.segmentation import DTMetric, SegmentationMetric, cityscapes_instance_sizes
    from mtlcli.metrics.voc import VOCMetric

    meta = dataset.meta
    if name == "pq":
        from mtlcli.data.panoptic import PanopticTruth
        from mtlcli.metrics.panoptic import PanopticMetric

        return PanopticMetric(PanopticTruth(dataset.root, dataset.split, meta).categories)
    if name == "miou":
        if not meta.seg_classes:
            raise UserError(
                f"dataset {meta.name!r} has no segmentation classes; miou cannot be computed — choose a detection "
                "metric"
            )
        sizes = cityscapes_instance_sizes(meta.seg_classes, meta.det_classes)
        return SegmentationMetric(meta.seg_classes, meta.ignore_index, instance_sizes=sizes)
    if name == "dt":
        if not meta.det_classes:
            raise UserError(
                f"dataset {meta.name!r} has no objects, so no distance-transform bins; dt cannot be computed"
            )
        return DTMetric(meta.dt_thresholds)
    if name in DETECTION_METRICS and not meta.det_classes:
        raise UserError(f"dataset {meta.name!r} has no detection classes; {name} cannot be computed — use miou")
    if name in ("voc07", "voc12"):
        return VOCMetric(dataset.coco, meta.det_classes, use_07=(name == "voc07"))
    if name == "coco-bbox":
        return COCOMetric(dataset.coco, meta.det_classes, "bbox")
    if name == "coco-segm":
        return COCOMetric(dataset.coco, meta.det_classes, "segm")
    if name == "ar":
        return ProposalRecall(dataset.coco)
    if name == "cs-inst":
        from mtlcli.metrics.cs_instance import CityscapesInstanceMetric

        return CityscapesInstanceMetric(dataset)
    raise UserError(f"unknown metric {name!r}; valid metrics: {', '.join(METRIC_NAMES)}")


def jsonable(value: Any) -> Any:
    """A copy with NaN / inf floats as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
