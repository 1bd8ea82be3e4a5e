"""Targets derived from ground truth: instances from Cityscapes instance maps, trainIds from labelIds,
distance-transform bins (DESIGN.md §3). Pure numpy/scipy functions, shared by every reader."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage

IGNORE_INDEX = 255

# Cityscapes classes that have instances, in the det_classes order of the prepared format.
CITYSCAPES_DET_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


@lru_cache(maxsize=1)
def cityscapes_tables() -> tuple[list[str], list[list[int]], np.ndarray, dict[int, int]]:
    """(seg class names by trainId, palette, labelId -> trainId LUT [256] uint8, labelId -> det category 1..8).

    From cityscapesscripts' label table; trainIds 255 / -1 map to the ignore index.
    """
    from cityscapesscripts.helpers.labels import labels

    train = sorted((lab for lab in labels if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId)
    names = [lab.name for lab in train]
    palette = [list(lab.color) for lab in train]
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < 255:
            lut[lab.id] = lab.trainId
    det = {lab.id: CITYSCAPES_DET_CLASSES.index(lab.name) + 1 for lab in labels if lab.name in CITYSCAPES_DET_CLASSES}
    return names, palette, lut, det


def train_ids_from_label_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds [H, W] -> trainIds uint8 (255 = ignore)."""
    lut = cityscapes_tables()[2]
    if label_ids.min(initial=0) < 0 or label_ids.max(initial=0) > 255:
        raise ValueError(f"labelIds outside 0..255 (found {label_ids.min()}..{label_ids.max()})")
    return lut[label_ids.astype(np.intp)]


def instances_from_cityscapes(instance_ids: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
    """Decode a Cityscapes `*_gtFine_instanceIds.png` [H, W] (16-bit) into instances.

    Values >= 1000 are instances of labelId value // 1000; a value < 1000 that is the labelId of an
    instance class marks a group region (one crowd instance per class). Returns a list of
    (bool mask [H, W], det category 1..8, iscrowd) in increasing order of the pixel value.
    """
    det = cityscapes_tables()[3]
    out = []
    for value in np.unique(instance_ids):
        value = int(value)
        label_id = value // 1000 if value >= 1000 else value
        if label_id not in det:
            continue
        out.append((instance_ids == value, det[label_id], 0 if value >= 1000 else 1))
    return out


def _instance_distance(mask: np.ndarray) -> np.ndarray | None:
    """Normalised Euclidean distance of each mask pixel to the nearest background pixel, computed on the
    mask's bounding box grown by one pixel (the image border is not a boundary). None for empty masks."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, h)
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, w)
    crop = mask[y0:y1, x0:x1]
    if crop.all():  # no background anywhere in reach: the whole image is the instance
        dist = np.ones(crop.shape, dtype=np.float64)
    else:
        dist = ndimage.distance_transform_edt(crop)
        dist /= dist.max()
    full = np.zeros(mask.shape, dtype=np.float64)
    full[y0:y1, x0:x1] = dist
    return full


def dt_bins(
    masks: Iterable[np.ndarray], shape: tuple[int, int], thresholds: Sequence[float] = (0.2, 0.4)
) -> np.ndarray:
    """Distance-transform bins [H, W] uint8 from non-crowd instance masks (DESIGN.md §3).

    D_i = distance_transform_edt(M_i) / max, D = max_i D_i; bin 0 where D = 0, then 1 for
    0 < D <= t1, 2 for t1 < D <= t2, ..., len(thresholds) + 1 above the last threshold.
    """
    d = np.zeros(shape, dtype=np.float64)
    for m in masks:
        di = _instance_distance(np.asarray(m, dtype=bool))
        if di is not None:
            np.maximum(d, di, out=d)
    bins = np.zeros(shape, dtype=np.uint8)
    bins[d > 0] = 1
    for k, t in enumerate(thresholds, start=2):
        bins[d > t] = k
    return bins


def box_mask(box_xyxy: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """A filled box as an instance mask (for datasets with boxes only). Box in pixel xyxy, inclusive
    of x0/y0 and exclusive of x1/y1 after rounding."""
    h, w = shape
    x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
    m = np.zeros(shape, dtype=bool)
    m[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)] = True
    return m
