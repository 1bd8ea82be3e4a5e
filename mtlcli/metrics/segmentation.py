"""Semantic segmentation metrics that agree with cityscapesscripts' `evalPixelLevelSemanticLabeling`.

A confusion matrix is accumulated image by image with one `bincount` over `gt * (C + 1) + pred`.
Rows are ground-truth classes 0..C-1 (pixels whose ground truth is the ignore index 255 never enter);
columns are predicted classes 0..C-1 plus one "void" column C for pixels predicted as something that is
not an evaluated class (255, or a Cityscapes labelId whose trainId is 255). Void predictions count as
false negatives of the ground-truth class and as nobody's false positive — exactly what the official
script does with predictions of ignored labelIds.

IoU_c = TP / (TP + FP + FN); a class with TP + FP + FN = 0 (absent from both ground truth and prediction)
is NaN and left out of the mean, as the official script does. Cityscapes iIoU re-weights each ground-truth
instance's TP/FN pixels by (average instance size of its class / its own size), with the official table
of average sizes below.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from mtlcli.data.prepared import IGNORE_INDEX

# The official average instance sizes in pixels (cityscapesscripts evalPixelLevelSemanticLabeling.py,
# `args.avgClassSize`), used for the instance-weighted iIoU. A test checks them against the module.
CITYSCAPES_AVG_CLASS_SIZE: dict[str, float] = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}


def cityscapes_label_luts(seg_classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Look-up tables between Cityscapes labelIds and this dataset's class indices, matched by name.

    Returns (to_index [256] uint8: labelId -> class index, 255 where the labelId is not evaluated here;
    to_label_id [256] uint8: class index -> labelId, 0 ("unlabeled") for 255 and unknown names).
    """
    from cityscapesscripts.helpers.labels import labels

    index = {name: i for i, name in enumerate(seg_classes)}
    to_index = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    to_label_id = np.zeros(256, dtype=np.uint8)
    for label in labels:
        if label.id < 0 or label.trainId in (255, -1) or label.name not in index:
            continue
        to_index[label.id] = index[label.name]
        to_label_id[index[label.name]] = label.id
    return to_index, to_label_id


def cityscapes_label_ids() -> set[int]:
    """The labelIds a Cityscapes label PNG may hold (0..33)."""
    from cityscapesscripts.helpers.labels import labels

    return {label.id for label in labels if label.id >= 0}


def _nan_to_none(values: Iterable[float]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    # a plain Python sum in index order, as the official getScoreAverage does, for bit-level agreement
    return float(sum(valid.tolist()) / len(valid)) if len(valid) else float("nan")


class SegmentationMetric:
    """Streaming confusion matrix, IoU / mIoU, pixel and mean class accuracy, optional Cityscapes iIoU.

    Args:
        class_names: the C evaluated class names (index = class value in the maps).
        ignore_index: ground-truth value left out of every count (255).
        instance_sizes: class index -> average instance size in pixels for the classes that get an
            instance-weighted iIoU (see `cityscapes_instance_sizes`); None for no iIoU.
    """

    kind = "semantic"

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_index: int = IGNORE_INDEX,
        instance_sizes: dict[int, float] | None = None,
    ) -> None:
        self.class_names = list(class_names)
        self.num_classes = C = len(self.class_names)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((C, C + 1), dtype=np.int64)  # column C: void predictions
        self.instance_sizes = dict(instance_sizes or {})
        self.inst_tp = np.zeros(C, dtype=np.float64)  # weighted TP / FN per class for iIoU
        self.inst_fn = np.zeros(C, dtype=np.float64)
        self.images = 0
        # uint8 maps are counted as a joint histogram of raw (gt, pred) value pairs, which is then
        # folded onto the matrix: value -> row (ground truth; C = not counted) and column (C = void)
        # (more than 256 classes: only 16-bit maps hold them, which the bincount path counts)
        rows = np.full(256, C, dtype=np.intp)
        rows[: min(C, 256)] = np.arange(min(C, 256))
        if 0 <= ignore_index < min(C, 256):
            rows[ignore_index] = C
        cols = np.full(256, C, dtype=np.intp)
        cols[: min(C, 256)] = np.arange(min(C, 256))
        self._fold = (rows[:, None] * (C + 1) + cols[None, :]).ravel()

    def reset(self) -> None:
        self.matrix[:] = 0
        self.inst_tp[:] = 0
        self.inst_fn[:] = 0
        self.images = 0

    def update(
        self,
        pred: np.ndarray | torch.Tensor,
        target: np.ndarray | torch.Tensor,
        instances: tuple[Any, ...] | None = None,
        histogram: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Add one image.

        Args:
            pred: [H, W] predicted class indices (0..C-1; any other value is a void prediction).
            target: [H, W] ground-truth class indices, `ignore_index` where unlabelled.
            instances: for iIoU, (masks [N, H, W] bool/uint8, classes [N] class indices[, boxes [N, 4]
                xyxy pixels enclosing each mask]) of the image's non-crowd ground-truth instances; the
                optional boxes only make it faster. Ignored when no class of the metric has a size.
            histogram: `joint_histogram(pred, target)` when the caller has it already (computed in a
                worker thread); the maps are then used for iIoU only.
        """
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in size")
        C = self.num_classes
        if histogram is None:
            p8, t8 = _as_uint8(pred), _as_uint8(target)
            if p8 is not None and t8 is not None:
                histogram = joint_histogram(p8, t8)
        if histogram is not None:
            keys, n = histogram
            counts = np.bincount(self._fold[keys], weights=n, minlength=(C + 1) ** 2)
            counts = np.rint(counts).astype(np.int64)  # float64 sums of integer counts < 2**53 are exact
        elif isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            counts = self._bincount_torch(torch.as_tensor(pred), torch.as_tensor(target))
        else:
            counts = self._bincount_numpy(np.asarray(pred), np.asarray(target))
        self.matrix += counts.reshape(C + 1, C + 1)[:C]
        self.images += 1
        if instances is not None and self.instance_sizes:
            self._update_instances(pred, *instances)

    def _bincount_numpy(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        C = self.num_classes
        t = target.astype(np.int64, copy=False)
        rows = np.where((t >= 0) & (t < C) & (t != self.ignore_index), t, C)
        p = pred.astype(np.int64, copy=False)
        cols = np.where((p >= 0) & (p < C), p, C)
        rows *= C + 1
        rows += cols
        return np.bincount(rows.ravel(), minlength=(C + 1) ** 2)

    def _bincount_torch(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        C = self.num_classes
        device = pred.device if isinstance(pred, torch.Tensor) else target.device
        t = target.to(device=device, dtype=torch.int64)
        p = pred.to(device=device, dtype=torch.int64)
        rows = torch.where((t >= 0) & (t < C) & (t != self.ignore_index), t, C)
        cols = torch.where((p >= 0) & (p < C), p, C)
        return torch.bincount((rows * (C + 1) + cols).view(-1), minlength=(C + 1) ** 2).cpu().numpy()

    def _update_instances(self, pred: Any, masks: Any, classes: Any, boxes: Any = None) -> None:
        # Count inside each instance's box: the rest of its mask is empty.
        torch_mode = isinstance(pred, torch.Tensor)
        masks = torch.as_tensor(masks).to(pred.device) if torch_mode else np.asarray(masks)
        classes_l = [int(c) for c in (classes.tolist() if hasattr(classes, "tolist") else classes)]
        H, W = pred.shape[-2:]
        tps, sizes = [], []
        for k, c in enumerate(classes_l):
            if boxes is not None:
                x0, y0, x1, y1 = (int(v) for v in (boxes[k].tolist() if hasattr(boxes[k], "tolist") else boxes[k]))
                x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 1, W), min(y1 + 1, H)  # +1: loose is safe
            else:
                x0, y0, x1, y1 = 0, 0, W, H
            mask = masks[k, y0:y1, x0:x1]
            mask = mask.bool() if torch_mode else mask.astype(bool, copy=False)
            sizes.append(int(mask.sum()))
            tps.append(int((pred[y0:y1, x0:x1][mask] == c).sum()))
        self.add_instances(classes_l, tps, sizes)

    def add_instances(self, classes: Sequence[int], tp: Sequence[int], sizes: Sequence[int]) -> None:
        """Add ground-truth instances for iIoU: class index, pixels predicted as that class, size.

        As the official script: tp and fn = size - tp are weighted by avgClassSize / size and summed per
        class over all instances; classes without an average size are skipped."""
        for c, t, n in zip(classes, tp, sizes, strict=True):
            if c not in self.instance_sizes or n == 0:
                continue
            weight = self.instance_sizes[c] / float(n)
            self.inst_tp[c] += float(t) * weight
            self.inst_fn[c] += float(n - t) * weight

    def sync(self) -> None:
        """Sum the counts over all ranks when running under torch.distributed."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        for name in ("matrix", "inst_tp", "inst_fn"):
            t = torch.from_numpy(getattr(self, name).copy())
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.all_reduce(t)
            setattr(self, name, t.cpu().numpy())
        n = torch.tensor([self.images])
        dist.all_reduce(n.cuda() if dist.get_backend() == "nccl" else n)
        self.images = int(n.item())

    def compute(self) -> dict[str, Any]:
        """{"value": mIoU in 0..1, "details": per-class IoU / iIoU / accuracy (None = undefined), confusion}."""
        C = self.num_classes
        m = self.matrix
        tp = np.diag(m[:, :C]).astype(np.float64)
        gt_pixels = m.sum(1).astype(np.float64)  # every pixel of the class, void predictions included
        fn = gt_pixels - tp
        fp = m[:, :C].sum(0).astype(np.float64) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = tp / (tp + fp + fn)
            acc = tp / gt_pixels
            iiou = np.full(C, np.nan)
            for c in self.instance_sizes:
                denom = self.inst_tp[c] + fp[c] + self.inst_fn[c]
                if denom > 0:
                    iiou[c] = self.inst_tp[c] / denom
        total = m.sum()
        miou = _nanmean(iou)
        details: dict[str, Any] = {
            "classes": self.class_names,
            "iou": _nan_to_none(iou),
            "accuracy": _nan_to_none(acc),
            "miou": None if math.isnan(miou) else miou,
            "pixel_accuracy": float(tp.sum() / total) if total else None,
            "mean_accuracy": None if math.isnan(_nanmean(acc)) else _nanmean(acc),
            "pixels": int(total),
            "images": self.images,
            "confusion": m[:, :C].tolist(),
            "void_predictions": m[:, C].tolist(),
        }
        if self.instance_sizes:
            miiou = _nanmean(iiou[sorted(self.instance_sizes)])
            details["iiou"] = _nan_to_none(iiou)
            details["miiou"] = None if math.isnan(miiou) else miiou
        return {"value": miou, "details": details}


class DTMetric(SegmentationMetric):
    """DATNet's distance-transform head scored against the prepared `dt/` bins (DESIGN.md §3): the bins
    0 (off every object), 1 (DT <= t1, the boundary) .. K+1 (the centre) are the classes of a confusion
    matrix. Headline: pixel accuracy ("DT accuracy"); the details carry each bin's IoU and their mIoU."""

    def __init__(self, thresholds: Sequence[float] = (0.2, 0.4)) -> None:
        t = [f"{float(v):g}" for v in thresholds]
        names = ["background"] + (
            [f"DT <= {t[0]}"] + [f"DT {a}-{b}" for a, b in pairwise(t)] + [f"DT > {t[-1]}"] if t else ["DT > 0"]
        )
        super().__init__(names, IGNORE_INDEX)

    def compute(self) -> dict[str, Any]:
        res = super().compute()
        acc = res["details"]["pixel_accuracy"]
        return {"value": float("nan") if acc is None else acc, "details": res["details"]}


def _as_uint8(a: np.ndarray | torch.Tensor) -> np.ndarray | None:
    """A CPU map as a uint8 numpy array when its values allow it without change, else None."""
    if isinstance(a, torch.Tensor):
        if a.device.type != "cpu":
            return None
        a = a.numpy()
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind in "iu" and a.size and a.min() >= 0 and a.max() <= 255:
        return a.astype(np.uint8)
    return None


def joint_histogram(
    pred: np.ndarray, target: np.ndarray, pred_lut: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The raw value pairs of two uint8 maps [H, W] and their pixel counts, as (keys [K] = target << 8 |
    pred, counts [K] int64); distinct and sorted unless `pred_lut` is given.

    Label maps are piecewise constant, so the pairs are counted by runs: the positions where either map
    changes along the rows (two vectorised uint8 comparisons), then one weighted bincount
    over the runs only, several times fewer operations than counting every pixel (the official
    script's C loop, numpy's bincount, which widens every key to intp, or np.unique's sort). Maps with
    more runs than a quarter of their pixels (noise) are counted by np.unique instead.

    `pred_lut` [256] uint8, when given, maps the raw predicted values (e.g. Cityscapes labelIds to class
    indices) on the keys after counting instead of on every pixel before: the same histogram, with
    keys that may then repeat (`SegmentationMetric.update` sums them)."""
    t, p = np.ascontiguousarray(target).ravel(), np.ascontiguousarray(pred).ravel()
    changed = t[1:] != t[:-1]
    changed |= p[1:] != p[:-1]
    edges = np.flatnonzero(changed)
    if 4 * edges.size < t.size:
        starts = np.empty(edges.size + 1, dtype=np.intp)
        starts[0] = 0
        np.add(edges, 1, out=starts[1:])
        lengths = np.diff(starts, append=t.size)
        run_keys = t[starts].astype(np.intp) << 8 | p[starts]
        counts = np.bincount(run_keys, weights=lengths, minlength=1 << 16)
        keys = np.flatnonzero(counts).astype(np.uint16)
        n = np.rint(counts[keys]).astype(np.int64)  # float64 sums of integer counts < 2**53 are exact
    else:
        key = t.astype(np.uint16)
        key <<= 8
        key |= p
        keys, n = np.unique(key, return_counts=True)
    if pred_lut is not None:
        keys = (keys & 0xFF00) | np.asarray(pred_lut, dtype=np.uint16)[keys & 0xFF]
    return keys, n


def cityscapes_instance_sizes(seg_classes: Sequence[str], det_classes: Sequence[str]) -> dict[int, float] | None:
    """Class index -> official average instance size, when the dataset's detection classes are all
    Cityscapes instance classes (Cityscapes, or the synthetic set in its layout); None otherwise."""
    if not det_classes or any(name not in CITYSCAPES_AVG_CLASS_SIZE for name in det_classes):
        return None
    from cityscapesscripts.helpers.labels import name2label

    index = {name: i for i, name in enumerate(seg_classes)}
    sizes = {
        index[name]: CITYSCAPES_AVG_CLASS_SIZE[name]
        for name in det_classes
        if name in index and not name2label[name].ignoreInEval
    }
    return sizes or None
