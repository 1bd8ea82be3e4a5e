"""Detection pictures `mtl eval` saves into RUN/eval/ (the plots Ultralytics users look for), named after
the results JSON they belong to (<name> = `val` beside val.json, `val-2` beside val-2.json, ...):

    pr_<name>.png          precision-recall curve of every class with its AP (VOC matching: IoU > 0.5, one detection per
                           ground-truth box, difficult/crowd boxes neither count nor penalise), AP in the legend by
                           the rule of the metric `mtl eval` prints (VOC2007 11-point for voc07, else the VOC2010+
                           area), the all-class curve (micro average over every detection) in bold with the mAP
    f1_<name>.png          F1 against the score threshold, per class and for all classes, with the best
                           all-class threshold marked
    confusion_det_<name>.png  detection confusion matrix: detections with score >= 0.25 matched to ground-truth
                           boxes with IoU >= 0.45 regardless of class (greedy, highest IoU first; Ultralytics'
                           rule, inferred); unmatched ground truth lands in the "background" column (missed),
                           unmatched detections in the "background" row (false alarms); columns normalised

Inputs: the split's pycocotools COCO (category ids 1..K) and COCO results dicts ({image_id, category_id,
bbox [x, y, w, h], score}) as `mtl eval --save-predictions` writes them to detections.json.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.safety import atomic_save_figure

DPI = 100
CELL_FONT = 10  # the numbers in a confusion matrix's cells (points at DPI): readable without zooming


def _xyxy(bbox: Sequence[float]) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def _ground_truth(coco_gt: Any) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    grouped: dict[tuple[int, int], list[tuple[np.ndarray, bool]]] = defaultdict(list)
    for ann in coco_gt.dataset.get("annotations", []):
        grouped[(ann["image_id"], ann["category_id"])].append((_xyxy(ann["bbox"]), bool(ann.get("iscrowd", 0))))
    return {k: (np.stack([b for b, _ in v]), np.array([d for _, d in v], bool)) for k, v in grouped.items()}


def match_detections(
    coco_gt: Any, results: list[dict[str, Any]], num_classes: int, iou_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """Per class k (index k-1): {"scores" sorted high to low, "tp" 0/1 per detection (difficult matches
    dropped), "npos" (non-difficult ground-truth boxes)} with the VOC matching rule."""
    gt = _ground_truth(coco_gt)
    out = []
    for k in range(1, num_classes + 1):
        npos = int(sum((~d).sum() for (img, c), (_, d) in gt.items() if c == k))
        dets = sorted((r for r in results if int(r["category_id"]) == k), key=lambda r: -float(r["score"]))
        scores: list[float] = []
        tps: list[int] = []
        used: dict[Any, Any] = {}
        for d in dets:
            boxes, difficult = gt.get((int(d["image_id"]), k), (np.zeros((0, 4)), np.zeros(0, bool)))
            ious = _iou(_xyxy(d["bbox"]), boxes)
            hit = 0
            if len(ious) and ious.max() > iou_threshold:
                j = int(ious.argmax())
                if difficult[j]:
                    continue
                seen = used.setdefault(int(d["image_id"]), np.zeros(len(boxes), bool))
                if not seen[j]:
                    seen[j], hit = True, 1
            scores.append(float(d["score"]))
            tps.append(hit)
        out.append({"scores": np.array(scores), "tp": np.array(tps, dtype=np.float64), "npos": npos})
    return out


def pr_curve(scores: np.ndarray, tp: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) after each detection in score order."""
    order = np.argsort(-scores, kind="stable")
    ctp = np.cumsum(tp[order])
    precision = ctp / np.arange(1, len(ctp) + 1)
    recall = ctp / max(npos, 1)
    return recall, precision


def f1_curve(scores: np.ndarray, tp: np.ndarray, npos: int, thresholds: np.ndarray) -> np.ndarray:
    """F1 at each score threshold (detections with score >= t kept)."""
    f1 = np.zeros(len(thresholds))
    for i, t in enumerate(thresholds):
        keep = scores >= t
        n, hits = int(keep.sum()), float(tp[keep].sum())
        p = hits / n if n else 0.0
        r = hits / npos if npos else 0.0
        f1[i] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return f1


def confusion_matrix(
    coco_gt: Any, results: list[dict[str, Any]], num_classes: int, conf: float = 0.25, iou_threshold: float = 0.45
) -> np.ndarray:
    """[K+1, K+1] counts, rows = predicted class (last = background), columns = true class (last = background)."""
    K = num_classes
    m = np.zeros((K + 1, K + 1), dtype=np.int64)
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if float(r["score"]) >= conf and 1 <= int(r["category_id"]) <= K:
            by_image[int(r["image_id"])].append(r)
    gts: dict[int, list[tuple[np.ndarray, int]]] = defaultdict(list)
    for ann in coco_gt.dataset.get("annotations", []):
        if not ann.get("iscrowd", 0) and 1 <= int(ann["category_id"]) <= K:
            gts[int(ann["image_id"])].append((_xyxy(ann["bbox"]), int(ann["category_id"])))
    for image_id in set(by_image) | set(gts):
        dets, truths = by_image.get(image_id, []), gts.get(image_id, [])
        pairs = []
        for i, d in enumerate(dets):
            box = _xyxy(d["bbox"])
            for j, (g, _) in enumerate(truths):
                v = float(_iou(box, g[None])[0])
                if v >= iou_threshold:
                    pairs.append((v, i, j))
        used_d, used_g = set(), set()
        for _, i, j in sorted(pairs, reverse=True):
            if i not in used_d and j not in used_g:
                used_d.add(i)
                used_g.add(j)
                m[int(dets[i]["category_id"]) - 1, truths[j][1] - 1] += 1
        for j, (_, c) in enumerate(truths):
            if j not in used_g:
                m[K, c - 1] += 1
        for i, d in enumerate(dets):
            if i not in used_d:
                m[int(d["category_id"]) - 1, K] += 1
    return m


def picture_names(name: str) -> list[str]:
    """The file names `plot_detection` writes for results called `name` (the stem of their JSON)."""
    return [f"pr_{name}.png", f"f1_{name}.png", f"confusion_det_{name}.png"]


def plot_detection(
    coco_gt: Any,
    results: list[dict[str, Any]],
    class_names: Sequence[str],
    out_dir: str | Path,
    split: str,
    use_07: bool = False,
    name: str | None = None,
) -> list[Path]:
    """Write pr_<name>.png, f1_<name>.png and confusion_det_<name>.png (`picture_names`; name defaults to
    the split, which the titles name) into `out_dir`; returns the paths. `use_07`: the PR legend's AP by the
    VOC2007 11-point rule (as `mtl eval --metric voc07`), else VOC2010+."""
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pr_path, f1_path, confusion_path = (out_dir / n for n in picture_names(name or split))
    K = len(class_names)
    matched = match_detections(coco_gt, results, K)
    all_scores = np.concatenate([m["scores"] for m in matched]) if K else np.zeros(0)
    all_tp = np.concatenate([m["tp"] for m in matched]) if K else np.zeros(0)
    all_npos = int(sum(m["npos"] for m in matched))
    from mtlcli.metrics.voc import voc_ap
    from mtlcli.viz.draw import class_colors

    colors = [tuple(c / 255 for c in col) for col in class_colors(K)]
    paths = []

    fig = Figure(figsize=(7.5, 5.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    aps = []
    for k, m in enumerate(matched):
        if m["npos"] == 0:
            continue
        r, p = pr_curve(m["scores"], m["tp"], m["npos"])
        aps.append(voc_ap(r, p, use_07=use_07) if len(r) else 0.0)  # the rule of the table `mtl eval` prints
        ax.plot(
            np.r_[0, r],
            np.r_[1, p] if len(p) else [1],
            color=colors[k],
            linewidth=1.5,
            label=f"{class_names[k]} {aps[-1]:.3f}",
        )
    if all_npos:
        r, p = pr_curve(all_scores, all_tp, all_npos)
        ax.plot(np.r_[0, r], np.r_[1, p], color="black", linewidth=3, label=f"all classes, mAP {np.mean(aps):.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.set_title(f"{split}: precision-recall per class (IoU > 0.5)", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        fontsize=9,
        title="AP, " + ("VOC2007 11-point" if use_07 else "VOC2010+ area"),
    )
    paths.append(pr_path)
    atomic_save_figure(paths[-1], fig, dpi=DPI)

    thresholds = np.linspace(0, 1, 101)
    fig = Figure(figsize=(7.5, 5.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for k, m in enumerate(matched):
        if m["npos"]:
            ax.plot(
                thresholds,
                f1_curve(m["scores"], m["tp"], m["npos"], thresholds),
                color=colors[k],
                linewidth=1,
                label=class_names[k],
            )
    if all_npos:
        f1 = f1_curve(all_scores, all_tp, all_npos, thresholds)
        best = int(f1.argmax())
        ax.plot(
            thresholds,
            f1,
            color="black",
            linewidth=3,
            label=f"all classes: F1 {f1[best]:.2f} at {thresholds[best]:.2f}",
        )
        ax.axvline(thresholds[best], color="black", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="F1")
    ax.set_title(f"{split}: F1 against the score threshold", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, title="class")
    paths.append(f1_path)
    atomic_save_figure(paths[-1], fig, dpi=DPI)

    cm = confusion_matrix(coco_gt, results, K)
    names = list(class_names) + ["background"]
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = cm / np.where(cm.sum(0, keepdims=True) > 0, cm.sum(0, keepdims=True), 1)
    side = max(5.0, 0.45 * (K + 1) + 3.0)
    fig = Figure(figsize=(side + 1, side), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.where(cm.sum(0, keepdims=True) > 0, shares, np.nan), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="share of the true class (column)")
    ax.set_xticks(range(K + 1), labels=names, rotation=90, fontsize=10)
    ax.set_yticks(range(K + 1), labels=names, fontsize=10)
    ax.set_xlabel("true class", fontsize=11)
    ax.set_ylabel("predicted class", fontsize=11)
    ax.set_title(f"{split}: detection confusion (score ≥ 0.25, IoU ≥ 0.45; cells: counts)", fontsize=12)
    if K + 1 <= 30:
        for i in range(K + 1):
            for j in range(K + 1):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=CELL_FONT,
                        color="white" if shares[i, j] > 0.5 else "black",
                    )
    paths.append(confusion_path)
    atomic_save_figure(paths[-1], fig, dpi=DPI)
    return paths
