"""`[eval] resolution = [H, W]`: score at the paper's resolution instead of the source images'.

The Ladder-DenseNet paper resizes "all training and evaluation images" of Cityscapes to 1024x448 and
scores there; the interdependent MTL paper works at 768x384. With a resolution set, the evaluation split
is resized (image bilinear, label maps and instance masks nearest at pixel centres, boxes scaled) before
the model sees it, so the segmentation metrics compare predictions and labels at H x W; detections are
mapped back to the source frame by `evaluate` (they meet the COCO ground truth there). [0, 0] (the
default) scores at the source resolution.
"""

from __future__ import annotations

from typing import Any

from mtlcli.data.transforms import Pipeline, Resize


def eval_transforms(recipe: dict[str, Any]) -> Pipeline | None:
    """The evaluation-time transform of a recipe: a resize to `eval.resolution`, or None (source frame)."""
    size = recipe.get("eval", {}).get("resolution") or [0, 0]
    h, w = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        return None
    return Pipeline(f"eval-{h}x{w}", [Resize((h, w), antialias=True)])
