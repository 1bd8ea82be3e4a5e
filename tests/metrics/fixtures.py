"""A tiny prepared detection dataset (DESIGN.md §3 layout) and hand-placed detections for metric tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtlcli.data.prepared import DatasetMeta, encode_instance

CLASSES = ["cat", "dog", "bird"]  # "bird" never appears in the ground truth
SIZE = (200, 240)  # H, W


def _box_mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros(SIZE, bool)
    m[y : y + h, x : x + w] = True
    return m


# image_id -> [(category_id, x, y, w, h, iscrowd)]: small, medium and large objects, a difficult cat
GROUND_TRUTH = {
    1: [(1, 10, 10, 20, 20, 0), (1, 100, 40, 40, 40, 1), (2, 60, 120, 110, 70, 0)],
    2: [(1, 50, 50, 100, 100, 0)],
    3: [],
}


def make_detection_dataset(root: Path) -> Path:
    """Write dataset.json and val/instances.json (RLE masks, tight bboxes) under `root`."""
    images, anns = [], []
    for image_id, objects in GROUND_TRUTH.items():
        images.append(
            {
                "id": image_id,
                "file_name": f"img{image_id}.jpg",
                "height": SIZE[0],
                "width": SIZE[1],
                "stem": f"img{image_id}",
            }
        )
        for cat, x, y, w, h, crowd in objects:
            anns.append(
                {"id": len(anns) + 1, "image_id": image_id, **encode_instance(_box_mask(x, y, w, h), cat, crowd)}
            )
    DatasetMeta("toy", str(root / "src"), ["val"], CLASSES, ["background", "cat", "dog"], [[0, 0, 0]] * 3).save(root)
    cats = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(CLASSES)]
    (root / "val").mkdir(parents=True, exist_ok=True)
    (root / "val" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return root


def detection(
    image_id: int, cat: int, x: float, y: float, w: float, h: float, score: float, masks: bool = True
) -> dict:
    r = {"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "score": score}
    if masks:
        seg = encode_instance(_box_mask(int(x), int(y), int(w), int(h)), cat)["segmentation"]
        r["segmentation"] = seg
    return r


def hand_detections(masks: bool = True) -> list[dict]:
    """Cat: a hit, a duplicate, a detection on the difficult cat, a hit in image 2, a miss; no dog
    detection; a bird detection (a class without ground truth); a slightly shifted extra cat box."""
    return [
        detection(1, 1, 10, 10, 20, 20, 0.9, masks),  # TP
        detection(1, 1, 11, 10, 20, 20, 0.8, masks),  # duplicate of the first: FP
        detection(1, 1, 100, 40, 40, 40, 0.7, masks),  # the difficult cat: neither
        detection(2, 1, 52, 48, 100, 100, 0.6, masks),  # TP
        detection(3, 1, 5, 5, 30, 30, 0.5, masks),  # nothing there: FP
        detection(3, 3, 20, 20, 30, 30, 0.4, masks),  # bird, no ground truth anywhere
    ]
