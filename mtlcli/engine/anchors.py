"""`anchors = "kmeans"` in a recipe's [model] table: the anchors are clustered from the training split
(k-means, 1 - IoU, as the interdependent multi-task paper takes its nine) when training starts, and the
run's recipe.toml records the numbers, so the run is evaluated and resumed with exactly those.

`compute_anchors` is also what `mtl anchors` prints (mtlcli.cli.anchors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlcli.errors import UserError

if TYPE_CHECKING:
    import numpy as np

KMEANS = "kmeans"
DEFAULT_INPUT_SIZE = (384, 768)  # (H, W) when neither the recipe nor --input-size gives one


def split_boxes(data: Path, split: str, label_map: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Non-crowd boxes of a prepared split as (wh [N, 2] in source pixels, image sizes [N, 2] as (H, W)).

    `label_map` is a recipe's [data.label_map]; its `det` table keeps only the listed classes.
    """
    import numpy as np

    from mtlcli.data.dataset import resolve_label_map
    from mtlcli.data.prepared import DatasetMeta, instances_path

    meta = DatasetMeta.load(data)
    meta.check_split(data, split)
    keep = set(resolve_label_map(meta, label_map).det_ids)
    path = instances_path(data, split)
    if not path.is_file():
        raise UserError(f"{path} is missing — prepare the dataset again with mtl prepare (`mtl prepare --help`)")
    try:
        coco = json.loads(path.read_text())
        sizes = {img["id"]: (img["height"], img["width"]) for img in coco["images"]}
        rows = [
            (a["bbox"][2], a["bbox"][3], *sizes[a["image_id"]])
            for a in coco["annotations"]
            if not a.get("iscrowd", 0) and a["category_id"] in keep
        ]
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError, IndexError) as exc:
        raise UserError(
            f"{path} is not a valid COCO instances file ({type(exc).__name__}: {exc}) — prepare the dataset again"
        ) from None
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
    arr = arr[(arr[:, 0] > 0) & (arr[:, 1] > 0)]
    return arr[:, :2], arr[:, 2:]


def compute_anchors(
    data: Path,
    split: str = "train",
    k: int = 9,
    *,
    seed: int = 0,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    label_map: dict | None = None,
) -> dict[str, Any]:
    """k-means anchors of a split in the network frame `input_size` (H, W).

    Returns {"anchors": [[w, h], ...] sorted by area, "input_size": [H, W], "k", "seed", "split",
    "num_boxes", "mean_iou"} (mean IoU of each box with its best anchor, 0..1).
    """
    import numpy as np

    from mtlcli.ops.kmeans import kmeans_anchors

    wh, sizes = split_boxes(data, split, label_map)
    if len(wh) < k:
        raise UserError(
            f"{data}/{split} has {len(wh)} usable boxes, fewer than --k {k}; use a smaller --k or a larger split"
        )
    h, w = input_size
    scaled = wh * np.stack([w / sizes[:, 1], h / sizes[:, 0]], axis=1)
    anchors, mean_iou = kmeans_anchors(scaled, k, seed=seed)
    return {
        "anchors": [[round(float(a), 2), round(float(b), 2)] for a, b in anchors],
        "input_size": [h, w],
        "k": k,
        "seed": seed,
        "split": split,
        "data": str(Path(data).resolve()),
        "num_boxes": int(len(wh)),
        "mean_iou": round(mean_iou, 4),
    }


def with_kmeans_anchors(recipe: dict, root: Path, *, k: int = 9, seed: int = 0) -> dict:
    """The recipe with `model.anchors = "kmeans"` replaced by [[w, h], ...] of the train split's boxes in
    the model's input frame (sorted by area); any other recipe unchanged. Deterministic for a given
    split and seed, so every process of a distributed run computes the same anchors."""
    model = recipe.get("model", {})
    if not isinstance(model.get("anchors"), str) or model["anchors"].lower() != KMEANS:
        return recipe
    size = model.get("input_size", DEFAULT_INPUT_SIZE)
    size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    data = recipe["data"]
    result = compute_anchors(
        root, data["train_split"], k, seed=seed, input_size=size, label_map=data.get("label_map") or None
    )
    return {**recipe, "model": {**model, "anchors": result["anchors"]}}
