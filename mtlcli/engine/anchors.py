"""`anchors = "kmeans"` in a recipe's [model] table: the anchors are clustered from the training split
(k-means, 1 - IoU, as the interdependent multi-task paper takes its nine) when training starts, and the
run's recipe.toml records the numbers, so the run is evaluated and resumed with exactly those."""

from __future__ import annotations

from pathlib import Path

KMEANS = "kmeans"


def with_kmeans_anchors(recipe: dict, root: Path, *, k: int = 9, seed: int = 0) -> dict:
    """The recipe with `model.anchors = "kmeans"` replaced by [[w, h], ...] of the train split's boxes in
    the model's input frame (sorted by area); any other recipe unchanged. Deterministic for a given
    split and seed, so every process of a distributed run computes the same anchors."""
    model = recipe.get("model", {})
    if not isinstance(model.get("anchors"), str) or model["anchors"].lower() != KMEANS:
        return recipe
    from mtlcli.cli.anchors import DEFAULT_INPUT_SIZE, compute_anchors

    size = model.get("input_size", DEFAULT_INPUT_SIZE)
    size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    data = recipe["data"]
    result = compute_anchors(
        root, data["train_split"], k, seed=seed, input_size=size, label_map=data.get("label_map") or None
    )
    return {**recipe, "model": {**model, "anchors": result["anchors"]}}
