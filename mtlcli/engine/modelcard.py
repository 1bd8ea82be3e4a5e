"""What a checkpoint carries so that it stands alone: class names, palette, original category ids.

Every checkpoint `mtl train` writes holds, besides the weights and the resolved recipe,

    classes  {"dataset": name of the prepared dataset, "det_classes": [K names, label k = det_classes[k-1]],
              "seg_classes": [C names, sem_seg channel c], "palette": [[r, g, b] per seg class],
              "det_category_ids": [K original category ids of the source annotations (1..K when the
              dataset has none of its own)], "cityscapes": true when the seg classes are Cityscapes
              trainIds (label PNGs can then also be written as labelIds)}

so `mtl predict`, `mtl eval`, `mtl export` and `mtlcli.load_model` need no dataset folder. `best.pt`
keeps the weights alone (`weights_only_state`); `last.pt` keeps the whole training state for --resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the entries of a checkpoint that describe the model; the rest (optimizer, schedule, scaler, rng) is
# training state that only --resume needs
MODEL_KEYS = ("model", "recipe", "classes", "iteration", "best")


def model_card(dataset: Any) -> dict[str, Any]:
    """The `classes` entry for a model trained on `dataset` (a PreparedDataset, after its label map)."""
    meta = dataset.meta
    det = list(dataset.det_classes)
    source_ids = list(getattr(meta, "det_category_ids", None) or [])
    if dataset.label_map.det_ids != {k: k for k in range(1, len(meta.det_classes) + 1)} or len(source_ids) != len(det):
        source_ids = list(range(1, len(det) + 1))  # merged classes have no single original id
    return {
        "dataset": meta.name,
        "det_classes": det,
        "seg_classes": list(dataset.seg_classes),
        "palette": [list(map(int, c)) for c in dataset.palette],
        "det_category_ids": [int(i) for i in source_ids],
        "cityscapes": meta.name == "cityscapes",
        "thing_classes": list(getattr(meta, "thing_classes", None) or []),
        "panoptic_category_ids": panoptic_ids(meta),
    }


def panoptic_ids(meta: Any) -> list[int]:
    """Each seg class's panoptic category id (`mtlcli.data.panoptic.category_ids`)."""
    from mtlcli.data.panoptic import category_ids

    return category_ids(meta)


def weights_only_state(state: dict[str, Any]) -> dict[str, Any]:
    """The part of a full training checkpoint that inference needs (what best.pt holds)."""
    return {k: state[k] for k in MODEL_KEYS if k in state}


def card_of(state: dict[str, Any], recipe: dict[str, Any], root: Path | None) -> dict[str, Any]:
    """The `classes` of a checkpoint; for checkpoints written before they carried one, what the run's
    prepared dataset (or the Cityscapes table, or "class k" names) says."""
    card = state.get("classes")
    if isinstance(card, dict) and "det_classes" in card:
        return card
    from mtlcli.engine.loaded import class_info

    info = class_info(recipe, root)
    return {
        "dataset": recipe.get("data", {}).get("dataset", ""),
        "det_classes": list(info.det_classes),
        "seg_classes": list(info.seg_classes),
        "palette": [list(c) for c in info.palette],
        "det_category_ids": list(range(1, len(info.det_classes) + 1)),
        "cityscapes": bool(info.cityscapes),
    }
