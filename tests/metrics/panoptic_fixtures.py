"""COCO panoptic fixtures in the real format (JSON with segments_info + RGB PNGs through rgb2id), laid
out as cityscapesscripts' `createPanopticImgs` writes them: Cityscapes label ids as category ids, stuff
segment id = label id, thing segment id = label id * 1000 + instance, crowd regions as one segment of
the label id with iscrowd = 1, void (ego vehicle, unlabelled) as id 0.

Predictions are the ground truth moved by a few pixels, with segments dropped, relabelled, split,
false segments added (some over void and crowd regions) and ids renumbered at random, so that every rule
of the official matching (IoU > 0.5, void and crowd ignoring, unmatched segments) is exercised."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mtlcli.metrics.panoptic import id2rgb

CATEGORIES = [
    {"id": 7, "name": "road", "isthing": 0, "supercategory": "flat", "color": [128, 64, 128]},
    {"id": 8, "name": "sidewalk", "isthing": 0, "supercategory": "flat", "color": [244, 35, 232]},
    {"id": 11, "name": "building", "isthing": 0, "supercategory": "construction", "color": [70, 70, 70]},
    {"id": 21, "name": "vegetation", "isthing": 0, "supercategory": "nature", "color": [107, 142, 35]},
    {"id": 23, "name": "sky", "isthing": 0, "supercategory": "sky", "color": [70, 130, 180]},
    {"id": 24, "name": "person", "isthing": 1, "supercategory": "human", "color": [220, 20, 60]},
    {"id": 26, "name": "car", "isthing": 1, "supercategory": "vehicle", "color": [0, 0, 142]},
    {"id": 33, "name": "bicycle", "isthing": 1, "supercategory": "vehicle", "color": [119, 11, 32]},
]
STUFF = [7, 8, 11, 21, 23]
THINGS = [24, 26, 33]


def make_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[dict]]:
    """One ground-truth scene: [H, W] uint32 ids and its segments_info (area counted, iscrowd set)."""
    ids = np.zeros((h, w), np.uint32)
    cuts = np.sort(rng.integers(h // 6, h - h // 6, 3))
    ids[: cuts[0]] = 23
    ids[cuts[0] : cuts[1]] = 11
    ids[cuts[1] : cuts[2]] = 8
    ids[cuts[2] :] = 7
    for _ in range(rng.integers(0, 3)):  # vegetation patches
        y, x = rng.integers(0, h // 2), rng.integers(0, w - 8)
        ids[y : y + rng.integers(4, h // 3), x : x + rng.integers(8, w // 3)] = 21
    if rng.random() < 0.3:  # a stuff class absent from some images
        ids[ids == 8] = 7
    thing_n = {c: 0 for c in THINGS}
    for _ in range(rng.integers(2, 9)):
        c = int(rng.choice(THINGS))
        bh, bw = rng.integers(h // 16 + 2, h // 3), rng.integers(w // 32 + 2, w // 5)
        y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
        yy, xx = np.ogrid[:bh, :bw]
        ellipse = ((yy - bh / 2) / (bh / 2)) ** 2 + ((xx - bw / 2) / (bw / 2)) ** 2 <= 1
        crowd = rng.random() < 0.15
        if crowd:
            sid = c
        else:
            thing_n[c] += 1
            sid = c * 1000 + thing_n[c]
        region = ids[y : y + bh, x : x + bw]
        region[ellipse] = sid
    ids[h - max(2, h // 12) :, w // 4 : 3 * w // 4] = 0  # ego vehicle
    ids[rng.random((h, w)) < 0.01] = 0  # unlabelled pixels
    segments = []
    values, counts = np.unique(ids, return_counts=True)
    for v, n in zip(values.tolist(), counts.tolist(), strict=True):
        if v == 0:
            continue
        cat = v // 1000 if v >= 1000 else v
        crowd = int(v < 1000 and cat in THINGS)
        segments.append({"id": v, "category_id": cat, "iscrowd": crowd, "area": n, "bbox": [0, 0, 0, 0]})
    return ids, segments


def perturb(rng: np.random.Generator, ids: np.ndarray, segments: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """A plausible prediction of a scene: [H, W] uint32 ids (0 = no prediction) and segments_info."""
    h, w = ids.shape
    dy, dx = rng.integers(-h // 20, h // 20 + 1), rng.integers(-w // 20, w // 20 + 1)
    src = np.roll(ids, (dy, dx), axis=(0, 1))
    cat_of = {s["id"]: s["category_id"] for s in segments}
    pred = np.zeros_like(ids)
    out_cat: dict[int, int] = {}
    next_label = 1
    for s in segments:
        r = rng.random()
        if r < 0.08:
            continue  # missed
        mask = src == s["id"]
        cat = cat_of[s["id"]]
        if r < 0.16:  # wrong class of the same kind
            cat = int(rng.choice(THINGS if cat in THINGS else STUFF))
        if r > 0.9 and mask.any():  # split in two halves
            cols = np.nonzero(mask.any(0))[0]
            mid = cols[len(cols) // 2]
            half = mask.copy()
            half[:, mid:] = False
            pred[half] = next_label
            out_cat[next_label] = cat
            next_label += 1
            mask = mask & ~half
        pred[mask] = next_label
        out_cat[next_label] = cat
        next_label += 1
    for _ in range(rng.integers(0, 4)):  # false segments, some over void or crowd
        bh, bw = rng.integers(2, h // 4), rng.integers(2, w // 6)
        y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
        pred[y : y + bh, x : x + bw] = next_label
        out_cat[next_label] = int(rng.choice(THINGS + STUFF))
        next_label += 1
    pred[rng.random((h, w)) < 0.005] = 0
    present = np.unique(pred)
    present = present[present > 0]
    new_ids = rng.choice(np.arange(1, 256**3), size=len(present), replace=False)
    lut = np.zeros(next_label, np.uint32)
    lut[present] = new_ids
    pred = lut[pred]
    infos = [{"id": int(n), "category_id": out_cat[int(o)]} for o, n in zip(present, new_ids, strict=True)]
    rng.shuffle(infos)
    return pred, infos


def write_pairs(root: Path, n: int, size: tuple[int, int] = (64, 128), seed: int = 0, unique: int | None = None):
    """Write gt.json + gt/ and pred.json + pred/ under `root` for `n` images (`unique` distinct scenes
    repeated under n names, to keep large sets quick to build). Returns the four paths."""
    rng = np.random.default_rng(seed)
    for d in ("gt", "pred"):
        (root / d).mkdir(parents=True, exist_ok=True)
    gt_anns, pred_anns, made = [], [], []
    for i in range(n):
        image_id = f"city_{i:06d}_000019"
        if unique is None or i < unique:
            ids, segs = make_scene(rng, *size)
            pred, infos = perturb(rng, ids, segs)
            gt_png, pred_png = root / "gt" / f"{image_id}_gtFine_panoptic.png", root / "pred" / f"{image_id}.png"
            Image.fromarray(id2rgb(ids)).save(gt_png)
            Image.fromarray(id2rgb(pred)).save(pred_png)
            made.append((segs, infos, gt_png, pred_png))
        else:
            segs, infos, gt_src, pred_src = made[i % unique]
            gt_png, pred_png = root / "gt" / f"{image_id}_gtFine_panoptic.png", root / "pred" / f"{image_id}.png"
            gt_png.write_bytes(gt_src.read_bytes())
            pred_png.write_bytes(pred_src.read_bytes())
        gt_anns.append({"image_id": image_id, "file_name": gt_png.name, "segments_info": segs})
        pred_anns.append({"image_id": image_id, "file_name": pred_png.name, "segments_info": infos})
    images = [{"id": a["image_id"], "file_name": a["image_id"] + "_leftImg8bit.png"} for a in gt_anns]
    gt_json, pred_json = root / "gt.json", root / "pred.json"
    gt_json.write_text(json.dumps({"images": images, "annotations": gt_anns, "categories": CATEGORIES}))
    pred_json.write_text(json.dumps({"annotations": pred_anns}))
    return gt_json, root / "gt", pred_json, root / "pred"
