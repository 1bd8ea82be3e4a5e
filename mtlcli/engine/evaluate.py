"""Run a model over a prepared split and compute metrics (docs/interfaces.md, "Evaluation").

The model (DESIGN.md §4 contract, eval mode) sees batches of original-size images and answers in each
image's original pixel frame, so its outputs meet the ground truth directly:
- `sem_seg` [C, H, W] scores -> argmax -> confusion matrix (and Cityscapes iIoU from the target's
  instance masks where the dataset has Cityscapes classes);
- `dt` [K, H, W] distance-transform bin scores (DATNet) -> argmax -> confusion matrix against `dt/`;
- `boxes` / `scores` / `labels` (+ `masks`) -> COCO results with the dataset's image ids -> VOC / COCO;
- `proposals` [P, 4] xyxy (+ `proposal_scores` [P]) where a model has them, else its boxes -> AR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlcli.errors import UserError
from mtlcli.metrics import METRIC_NAMES, PANOPTIC_METRICS, SEMANTIC_METRICS, build_metric, check_metric_names
from mtlcli.metrics.predictions import PredictionWriter, det_to_seg_index, output_to_results
from mtlcli.models.base import eval_mode


def _proposal_results(output: dict[str, torch.Tensor], image_id: int) -> list[dict[str, Any]]:
    if "proposals" not in output:
        return output_to_results(output, image_id, with_masks=False)
    boxes = output["proposals"].detach().float().cpu().reshape(-1, 4)
    scores = output.get("proposal_scores")
    scores = scores.detach().float().cpu().reshape(-1) if scores is not None else torch.linspace(1.0, 0.0, len(boxes))
    return [
        {"image_id": image_id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
        for (x1, y1, x2, y2), s in zip(boxes.tolist(), scores.tolist(), strict=True)
    ]


def _to_original_frame(output: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """Boxes / masks / proposals scaled from the (possibly resized) input frame of the sample to its
    source image, where the COCO ground truth lives; `sem_seg` stays in the frame of `target["semantic"]`.
    Without a resizing transform (what `mtl eval` uses) this changes nothing."""
    orig = tuple(int(v) for v in target.get("orig_size", ()))
    frame = tuple(target["semantic"].shape[-2:]) if "semantic" in target else orig
    if not orig or frame == orig:
        return output
    (h, w), (H, W) = frame, orig
    out = dict(output)
    for key in ("boxes", "proposals"):
        if key in out:
            out[key] = out[key] * out[key].new_tensor([W / w, H / h, W / w, H / h])
    if "masks" in out and out["masks"].numel():
        out["masks"] = torch.nn.functional.interpolate(
            out["masks"].float(), size=(H, W), mode="bilinear", align_corners=False
        )
    return out


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_outputs(output: dict[str, Any], names: list[str], model: nn.Module) -> None:
    needs = {"miou": "sem_seg", "dt": "dt", "coco-segm": "masks", "cs-inst": "masks"}
    for name in names:
        if name == "pq":
            if "sem_seg" not in output and "masks" not in output:
                raise UserError(
                    f"{type(model).__name__} gives neither a semantic map nor instance masks, which pq needs; "
                    "choose metrics the model supports"
                )
            continue
        key = needs.get(name, "boxes")
        if name == "ar" and "proposals" in output:
            continue
        if key not in output:
            raise UserError(
                f"{type(model).__name__} gives no {key!r} output, which metric {name} needs; "
                f"choose metrics the model supports (it gives {', '.join(sorted(output)) or 'nothing'})"
            )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Any,
    metrics: list[str],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    progress: bool = True,
    save_predictions: str | Path | None = None,
    force: bool = False,
    workers: int = 0,
    panoptic_settings: dict[str, Any] | None = None,
    save_panoptic: bool | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on every image of `dataset` (a PreparedDataset without resizing transforms).

    Returns {"metrics": {name: headline float in 0..1}, "details": {name: JSON-ready dict}} with the
    headlines of docs/interfaces.md: miou, voc07 / voc12 (mAP@0.5), coco-bbox / coco-segm (AP@[.5:.95]),
    ar (AR@100). `save_predictions` writes detections.json, semantic/ and (Cityscapes classes)
    labelIds/ PNGs there, and panoptic.json + panoptic/ PNGs (mtlcli.engine.panoptic) for a model with a
    semantic map or masks when `save_panoptic` (default: when pq is computed); `panoptic_settings` are
    the recipe's [eval] panoptic_* keys. Under
    torch.distributed each rank evaluates its part and the counts and
    detections are gathered before computing.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from mtlcli.data.dataset import collate

    names = check_metric_names(metrics)
    if not names:
        raise UserError(f"no metric to compute; name at least one of {', '.join(METRIC_NAMES)}")
    if len(dataset) == 0:
        raise UserError("the split has no images; nothing to evaluate")
    built = {name: build_metric(name, dataset) for name in names}
    sem = [m for n, m in built.items() if n == "miou"]
    dt_metric = built.get("dt")
    det = {n: m for n, m in built.items() if n not in SEMANTIC_METRICS + PANOPTIC_METRICS}
    needs_masks = "coco-segm" in det or "cs-inst" in det
    class_index = det_to_seg_index(dataset.meta)
    need_instances = any(m.instance_sizes for m in sem)
    rank, world = _dist_info()
    if save_predictions and world > 1:
        raise UserError("--save-predictions works in one process; run `mtl eval` without torchrun to save predictions")
    writer = None
    if save_predictions:
        from mtlcli.metrics.predictions import source_id_maps

        identity = getattr(getattr(dataset, "label_map", None), "det_ids", None)
        identity = identity is None or identity == {k: k for k in range(1, len(dataset.det_classes) + 1)}
        maps = source_id_maps(dataset.meta, dataset.coco.dataset["images"], identity)
        writer = PredictionWriter(save_predictions, dataset.meta, force=force, id_maps=maps)
    panoptic = None
    save_panoptic = ("pq" in built if save_panoptic is None else save_panoptic) and writer is not None
    if "pq" in built or save_panoptic:
        from mtlcli.engine.panoptic import PanopticStep, merge_settings

        settings = merge_settings({"eval": panoptic_settings or {}})
        save_to = Path(save_predictions) if save_panoptic and save_predictions is not None else None
        panoptic = PanopticStep(dataset, built.get("pq"), save_to, settings)
    # under torch.distributed each rank takes every world-th image; sync() below gathers the counts
    part = dataset if world == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), world))

    model.to(device)
    loader = torch.utils.data.DataLoader(
        part, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate
    )
    columns = [
        TextColumn("[bold]eval[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    checked = False
    any_det = False
    with eval_mode(model):
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task("eval", total=len(part))
            for images, targets in loader:
                outputs = model([img.to(device) for img in images])
                for output, target in zip(outputs, targets, strict=True):
                    if not checked:
                        _check_outputs(output, names, model)
                        checked = True
                    image_id = int(target["image_id"])
                    output = _to_original_frame(output, target)
                    semantic = None
                    if "sem_seg" in output and (sem or writer):
                        gt = torch.as_tensor(target["semantic"])
                        pred = output["sem_seg"].argmax(0)
                        if tuple(pred.shape) != tuple(gt.shape):
                            raise ValueError(
                                f"sem_seg of image {target.get('stem')} is {tuple(pred.shape)}, its ground truth "
                                f"{tuple(gt.shape)}: models must answer in the original frame"
                            )
                        pred = pred.to(torch.uint8) if pred.max() < 255 else pred
                        instances = None
                        if need_instances:
                            keep = [
                                k
                                for k, (lab, crowd) in enumerate(
                                    zip(target["labels"].tolist(), target["iscrowd"].tolist(), strict=True)
                                )
                                if not crowd and lab in class_index
                            ]
                            instances = (
                                target["masks"][keep],
                                [class_index[target["labels"][k].item()] for k in keep],
                                target["boxes"][keep].as_subclass(torch.Tensor).floor(),
                            )
                        for m in sem:
                            m.update(pred, gt.to(pred.device), instances)
                        semantic = pred.cpu().numpy()
                    if dt_metric is not None:
                        gt_dt = torch.as_tensor(target["dt"])
                        dt_metric.update(output["dt"].argmax(0).to(torch.uint8).cpu(), gt_dt.to(torch.uint8).cpu())
                    results = []
                    if "boxes" in output and (det or writer):
                        any_det = True
                        results = output_to_results(output, image_id, with_masks=needs_masks or writer is not None)
                        for name, m in det.items():
                            if name != "ar":
                                m.update(results)
                    if "ar" in det:
                        det["ar"].update(_proposal_results(output, image_id))
                    if writer is not None:
                        writer.add(str(target["stem"]), semantic, results, dataset.coco.imgs.get(image_id))
                    if panoptic is not None and ("sem_seg" in output or "masks" in output):
                        sem_pred = output["sem_seg"].argmax(0) if "sem_seg" in output else None
                        panoptic(output, sem_pred, target)
                bar.advance(task, len(images))
    if writer is not None:
        writer.close(write_detections=any_det)
    if panoptic is not None:
        panoptic.close()

    out: dict[str, Any] = {"metrics": {}, "details": {}}
    for name, m in built.items():
        m.sync()
        res = m.compute()
        out["metrics"][name] = float(res["value"])  # NaN only when nothing could be measured
        out["details"][name] = res["details"]
    return out


def run_confusion(
    model: Any,
    dataset: Any,
    out: str | Path,
    *,
    device: str = "cpu",
    batch_size: int = 4,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """`mtl viz confusion` without saved predictions: evaluate `model` on `dataset` (a PreparedDataset
    without transforms) with the miou metric and plot its confusion matrix at `out`; returns (path, the
    miou details: classes, iou, confusion, ...)."""
    from mtlcli.viz.confusion import plot_confusion
    from mtlcli.viz.predictions import check_free

    out = Path(out)
    check_free([out], force)
    result = evaluate(model, dataset, ["miou"], device=device, batch_size=batch_size, progress=progress)
    details = result["details"]["miou"]
    if not details.get("pixels"):
        raise UserError(
            f"split {dataset.split!r} has no labelled pixels — a confusion matrix needs semantic ground truth"
        )
    miou = result["metrics"]["miou"]
    title = f"{dataset.split}: mIoU {100 * miou:.1f}% over {details['images']} images (cells: % of the row)"
    return plot_confusion(np.asarray(details["confusion"]), details["classes"], out, details["iou"], title), details
