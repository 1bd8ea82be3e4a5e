"""Panoptic segmentation from a model's instances and semantic map (docs/panoptic.md).

The merge is Panoptic FPN's (Kirillov et al. 2019, §4; detectron2 `combine_semantic_and_instance_outputs`):

1. things: instances in decreasing score, those below `score_threshold` dropped; an instance whose mask
   lies for more than `overlap_threshold` of its area on pixels already taken is dropped, otherwise it
   takes its free pixels;
2. stuff: every stuff class of the semantic map takes its free pixels when they number at least
   `stuff_area`; thing-class pixels of the semantic map that no instance took stay void (0).

For families without an instance-mask head (IvaNet, the interdependent network: boxes + semantic map) a
thing's mask is the semantic map's pixels of the box's class inside the box (inferred: the papers define
no panoptic output). Masks of mask families are their `masks` thresholded at 0.5.

Segment ids are 1, 2, ... in the order taken; 0 = void. Classes are semantic class indices (the
`sem_seg` channels); a detection label k (1..K) is the seg class of the same name (`det_to_seg`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def rgb2id(color: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """[H, W, 3+] (or [3+, H, W] with `channels_first`) uint8 -> [H, W] uint32 segment ids
    (R + 256 G + 65536 B)."""
    r, g, b = (color[k] for k in range(3)) if channels_first else (color[..., k] for k in range(3))
    ids = b.astype(np.uint32)
    ids <<= 8
    ids |= g
    ids <<= 8
    ids |= r
    return ids


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """[H, W] integer ids (< 2^24) -> [H, W, 3] uint8, the inverse of `rgb2id`."""
    ids = np.asarray(ids, dtype=np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def det_to_seg(det_classes: Sequence[str], seg_classes: Sequence[str]) -> dict[int, int]:
    """Detection label k (1..K) -> the index of the semantic class of the same name."""
    seg = {n: i for i, n in enumerate(seg_classes)}
    return {k: seg[n] for k, n in enumerate(det_classes, start=1) if n in seg}


def thing_indices(
    seg_classes: Sequence[str], det_classes: Sequence[str], thing_classes: Sequence[str] | None = None
) -> set[int]:
    """Seg class indices that are things: the dataset's `thing_classes` where it records them, else the
    seg classes that are also detection classes (inferred for data prepared without them)."""
    names = set(thing_classes) if thing_classes else set(det_classes)
    return {i for i, n in enumerate(seg_classes) if n in names}


@torch.no_grad()
def merge_panoptic(
    semantic: torch.Tensor | None,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
    *,
    label_to_class: dict[int, int],
    thing_classes: set[int],
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
    stuff_area: int = 4096,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """One image's panoptic segmentation.

    semantic [H, W] int64 class indices (or None: things only); boxes [N, 4] xyxy pixels; scores [N];
    labels [N] int64 1..K; masks [N, H, W] bool / float 0..1 or None (box-only families: the box's class
    inside the box). Returns (ids [H, W] int32, 0 = void; segments [{id, class (seg index), isthing,
    score (things), inferred (True where the mask came from box + semantic map), area}]).
    Detections whose label has no seg class are skipped.
    """
    if semantic is not None:
        (H, W), device = semantic.shape[-2:], semantic.device
    elif masks is not None:
        (H, W), device = masks.shape[-2:], masks.device
    else:
        raise ValueError("a panoptic merge needs instance masks or a semantic map")
    ids = torch.zeros((H, W), dtype=torch.int32, device=device)
    segments: list[dict[str, Any]] = []
    order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True).tolist()
    score_list, label_list = scores.tolist(), labels.tolist()
    box_list = boxes.detach().float().cpu().tolist()
    for k in order:
        if score_list[k] < score_threshold:
            break
        cls = label_to_class.get(int(label_list[k]))
        if cls is None:
            continue
        if masks is not None:
            mask = masks[k] > 0.5 if masks[k].is_floating_point() else masks[k].bool()
            inferred = False
        else:
            assert semantic is not None  # masks is None here, so the check above kept a semantic map
            x1, y1, x2, y2 = box_list[k]
            c0, r0 = max(int(x1), 0), max(int(y1), 0)
            c1, r1 = min(math.ceil(x2), W), min(math.ceil(y2), H)
            mask = torch.zeros((H, W), dtype=torch.bool, device=device)
            if c1 > c0 and r1 > r0:
                mask[r0:r1, c0:c1] = semantic[r0:r1, c0:c1] == cls
            inferred = True
        area = int(mask.sum())
        if area == 0:
            continue
        taken = mask & (ids > 0)
        overlap = int(taken.sum())
        if overlap / area > overlap_threshold:
            continue
        if overlap:
            mask = mask & (ids == 0)
        sid = len(segments) + 1
        ids[mask] = sid
        segments.append(
            {
                "id": sid,
                "class": cls,
                "isthing": True,
                "score": float(score_list[k]),
                "inferred": inferred,
                "area": area - overlap,
            }
        )
    if semantic is not None:
        free = ids == 0
        for cls in torch.unique(semantic).tolist():
            if cls in thing_classes or cls == ignore_index or cls < 0:
                continue
            mask = (semantic == cls) & free
            area = int(mask.sum())
            if area < stuff_area or area == 0:
                continue
            sid = len(segments) + 1
            ids[mask] = sid
            segments.append({"id": sid, "class": int(cls), "isthing": False, "inferred": False, "area": area})
    return ids, segments
