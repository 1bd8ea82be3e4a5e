"""benchmarks/smoke_recipes.py on one full-size recipe per family, at a reduced input size: the synthetic
city in the recipe's dataset format (Cityscapes, COCO, VOC, MOT15 layouts prepared by the real
`mtl prepare` code), two training iterations at batch 1 with the recipe's augmentation and schedule,
and its [eval] metrics on the 2-image evaluation split."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "smoke_recipes.py"
FAMILIES = [
    "ivanet300",  # IvaNet, VOC layout (VOC07 + VOC12 + SBD)
    "ssd300-mot15",  # SSD300, MOT15 layout
    "ladderdensenet-cityscapes",  # Ladder-DenseNet, Cityscapes layout, [eval] resolution
    "imtl-cityscapes",  # interdependent MTL: four stages, k-means anchors
    "datnet-light-r50-coco",  # DATNet, COCO layout
    "safpn-ejhead-r50-coco",  # SA-FPN + EJ-Head
    "cascade-r50-coco",  # Cascade Mask R-CNN
]


def _script():
    spec = importlib.util.spec_from_file_location("smoke_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    module = _script()
    roots = module.make_datasets(tmp_path_factory.mktemp("smoke") / "data", size=(64, 128))
    return module, roots


def test_every_format_is_prepared_with_the_splits_the_recipes_name(smoke):
    _, roots = smoke
    splits = {name: json.loads((root / "dataset.json").read_text())["splits"] for name, root in roots.items()}
    assert {"trainval", "test", "val", "trainval07_aug12"} <= set(splits["voc"])
    assert set(splits["coco"]) == set(splits["mot15"]) == set(splits["cityscapes"]) == {"train", "val"}
    coco = json.loads((roots["coco"] / "dataset.json").read_text())
    assert len(coco["det_classes"]) == 80  # the COCO categories, not the city's 8
    for name in ("coco", "voc", "mot15"):
        for split in ("val", "test") if name == "voc" else ("val",):
            images = json.loads((roots[name] / split / "instances.json").read_text())["images"]
            assert len(images) == 2, (name, split)


@pytest.mark.parametrize("recipe", FAMILIES)
def test_family_representative_trains_and_evaluates(smoke, recipe, tmp_path):
    module, roots = smoke
    row = module.smoke_recipe(recipe, roots, tmp_path / "run", iterations=2, reduced=(64, 128))
    assert row["ok"], row.get("traceback", row.get("error"))
    assert set(row["expected"]) <= set(row["metrics"]) and row["expected"]
    assert all(math.isfinite(v) for v in row["metrics"].values())
    assert row["s_per_iter"] > 0 and row["peak_rss_mb"] > 0
    assert f"`{recipe}`" in module.markdown([row])
