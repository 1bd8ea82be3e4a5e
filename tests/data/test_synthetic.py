"""The synthetic city: Cityscapes layout, labels consistent with the polygons, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mtlcli.data.synthetic import generate_synthetic


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_is_cityscapes(synthetic_source: Path) -> None:
    images = sorted((synthetic_source / "leftImg8bit").glob("*/*/*_leftImg8bit.png"))
    assert len(images) == 9
    assert {p.parts[-3] for p in images} == {"train", "val"}
    assert len({p.parts[-2] for p in images if p.parts[-3] == "train"}) > 1  # several cities per split
    for img in images:
        prefix = img.name[: -len("_leftImg8bit.png")]
        city, seq, frame = prefix.rsplit("_", 2)
        assert len(seq) == 6 and len(frame) == 6 and city == img.parent.name
        gt = synthetic_source / "gtFine" / img.parts[-3] / city
        rgb = np.array(Image.open(img))
        assert rgb.shape == (64, 128, 3) and rgb.dtype == np.uint8
        labels = Image.open(gt / f"{prefix}_gtFine_labelIds.png")
        instances = Image.open(gt / f"{prefix}_gtFine_instanceIds.png")
        assert labels.mode == "L" and instances.mode.startswith("I;16")
        poly = json.loads((gt / f"{prefix}_gtFine_polygons.json").read_text())
        assert (poly["imgHeight"], poly["imgWidth"]) == (64, 128)


def test_labels_match_polygons_and_classes(synthetic_source: Path) -> None:
    from cityscapesscripts.helpers.labels import name2label

    seen: set[int] = set()
    for js in sorted(synthetic_source.glob("gtFine/*/*/*_polygons.json")):
        poly = json.loads(js.read_text())
        label_ids = np.array(Image.open(str(js).replace("_polygons.json", "_labelIds.png")))
        instance_ids = np.array(Image.open(str(js).replace("_polygons.json", "_instanceIds.png"))).astype(np.int64)
        seen |= set(np.unique(label_ids).tolist())
        # instance ids agree with label ids: class part of an instance equals the pixel's labelId
        inst = instance_ids >= 1000
        assert np.array_equal(instance_ids[inst] // 1000, label_ids[inst].astype(np.int64))
        assert np.array_equal(instance_ids[~inst], label_ids[~inst].astype(np.int64))
        for obj in poly["objects"]:
            name = obj["label"].removesuffix("group")
            assert name in name2label
            xs, ys = zip(*obj["polygon"], strict=True)
            assert min(xs) >= 0 and max(xs) <= 127 and min(ys) >= 0 and max(ys) <= 63
    names = {"road", "sidewalk", "building", "vegetation", "sky", "pole", "traffic sign", "car", "person"}
    assert {name2label[n].id for n in names} <= seen


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a", train=2, val=1, size=(48, 96), seed=3, quiet=True)
    b = generate_synthetic(tmp_path / "b", train=2, val=1, size=(48, 96), seed=3, quiet=True)
    c = generate_synthetic(tmp_path / "c", train=2, val=1, size=(48, 96), seed=4, quiet=True)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_groups_become_crowd_regions(synthetic_prepared: Path, synthetic_source: Path) -> None:
    groups = sum(
        1
        for js in synthetic_source.glob("gtFine/*/*/*_polygons.json")
        for o in json.loads(js.read_text())["objects"]
        if o["label"] in ("cargroup", "persongroup")
    )
    crowd = sum(
        a["iscrowd"]
        for split in ("train", "val")
        for a in json.loads((synthetic_prepared / split / "instances.json").read_text())["annotations"]
    )
    assert groups > 0
    assert 0 < crowd <= groups  # one crowd region per class per image; a group may be fully hidden
