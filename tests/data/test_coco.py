"""`prepare_coco` on a tiny COCO 2017 tree: polygons, compressed and uncompressed (crowd) RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from mtlcli.data.coco import prepare_coco
from mtlcli.data.prepared import DatasetMeta, read_label_png
from mtlcli.errors import UserError

H, W = 32, 48


def rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def compressed_rle(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(m: np.ndarray) -> dict:
    """COCO's crowd format: run lengths over the column-major pixels, starting with a zero run."""
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def ann(i: int, image_id: int, cat: int, seg, crowd: int = 0) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "segmentation": seg, "iscrowd": crowd,
            "area": 0.0, "bbox": [0, 0, 1, 1]}


# category ids are not contiguous and not listed in id order
CATEGORIES = [{"id": 90, "name": "toothbrush", "supercategory": "indoor"},
              {"id": 1, "name": "person", "supercategory": "person"},
              {"id": 3, "name": "car", "supercategory": "vehicle"}]
PERSON_POLY = [[2, 2, 20, 2, 20, 20, 2, 20]]
CAR = rect(10, 25, 15, 40)
CROWD = rect(0, 12, 30, 48)


@pytest.fixture
def coco(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "coco"
    (src / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": [(42, "000000000042.jpg"), (7, "000000000007.jpg")], "val": [(5, "000000000005.jpg"), (6, "000000000006.jpg")]}
    for split, ims in images.items():
        (src / f"{split}2017").mkdir()
        for _, name in ims:
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(src / f"{split}2017" / name)
    train_anns = [
        ann(1, 42, 1, PERSON_POLY),                      # person polygon
        ann(2, 42, 3, compressed_rle(CAR)),              # car over the person where they overlap
        ann(3, 42, 90, uncompressed_rle(CROWD), crowd=1),  # crowd toothbrushes, painted last
        ann(4, 7, 3, compressed_rle(CAR)),               # same shapes, reversed order: person wins
        ann(5, 7, 1, PERSON_POLY),
    ]
    val_anns = [ann(6, 5, 3, [[0, 0, 10, 0, 10, 8, 0, 8]])]  # image 6 has no annotations at all
    for split, anns in (("train", train_anns), ("val", val_anns)):
        data = {"info": {}, "licenses": [], "categories": CATEGORIES, "annotations": anns,
                "images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in images[split]]}
        (src / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return {"src": src, "out": tmp_path / "out"}


def test_contiguous_ids_rle_and_painting_order(coco):
    src, out = coco["src"], coco["out"]
    summary = prepare_coco(src, out, workers=1)
    meta = DatasetMeta.load(out)
    assert meta.splits == ["train", "val"] and Path(meta.source) == src.resolve()
    assert meta.det_classes == ["person", "car", "toothbrush"]  # in COCO category id order
    assert meta.seg_classes == ["background", "person", "car", "toothbrush"] and len(meta.palette) == 4
    assert summary["splits"]["train"]["crowd"] == 1

    ref = COCO(str(src / "annotations" / "instances_train2017.json"))  # the official decoder as reference
    prepared = json.loads((out / "train" / "instances.json").read_text())
    assert [c["id"] for c in prepared["categories"]] == [1, 2, 3]
    images = {im["stem"]: im for im in prepared["images"]}
    assert images["000000000042"]["file_name"] == "train2017/000000000042.jpg" and images["000000000042"]["coco_id"] == 42
    anns = [a for a in prepared["annotations"] if a["image_id"] == images["000000000042"]["id"]]
    assert [(a["category_id"], a["iscrowd"]) for a in anns] == [(1, 0), (2, 0), (3, 1)]
    for a, orig_id in zip(anns, [1, 2, 3]):
        expected = ref.annToMask(ref.anns[orig_id])
        np.testing.assert_array_equal(mask_utils.decode(a["segmentation"]), expected)
        ys, xs = np.nonzero(expected)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]  # tight extent
        assert a["area"] == expected.sum()

    person, car, crowd = (ref.annToMask(ref.anns[i]).astype(bool) for i in (1, 2, 3))
    assert (person & car).any() and (car & crowd).any()
    sem = read_label_png(out / "train" / "semantic" / "000000000042.png")
    expected = np.zeros((H, W), np.uint8)
    expected[person], expected[car], expected[crowd] = 1, 2, 3
    np.testing.assert_array_equal(sem, expected)
    sem7 = read_label_png(out / "train" / "semantic" / "000000000007.png")
    assert (sem7[person & car] == 1).all()  # annotation order, not class id, decides the overlap

    # DT bins from the non-crowd masks only, against a direct scipy computation
    d = np.zeros((H, W))
    for m in (person, car):
        e = ndimage.distance_transform_edt(m)
        d = np.maximum(d, e / e.max())
    np.testing.assert_array_equal(read_label_png(out / "train" / "dt" / "000000000042.png"),
                                  np.digitize(d, [0, 0.2, 0.4], right=True))

    val = json.loads((out / "val" / "instances.json").read_text())
    assert sorted(im["stem"] for im in val["images"]) == ["000000000005", "000000000006"]  # empty image kept
    assert (read_label_png(out / "val" / "semantic" / "000000000006.png") == 0).all()


def test_per_file_problems_skipped_or_strict(coco):
    src, out = coco["src"], coco["out"]
    (src / "val2017" / "000000000005.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (src / "train2017" / "000000000007.jpg").unlink()
    summary = prepare_coco(src, out, workers=2)
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert reasons["val2017/000000000005.jpg"].startswith("corrupt image")
    assert reasons["train2017/000000000007.jpg"].startswith("image file") and "missing" in reasons["train2017/000000000007.jpg"]
    assert summary["splits"]["train"]["images"] == 1 and summary["splits"]["val"]["images"] == 1
    with pytest.raises(UserError, match="--strict"):
        prepare_coco(src, out, workers=1, strict=True, force=True)


@pytest.mark.parametrize("case", ["missing", "misnamed", "no_images", "bad_json", "bad_category", "out_not_empty"])
def test_bad_input_is_one_user_error(coco, case):
    src, out = coco["src"], coco["out"]
    if case == "missing":
        src = src / "nope"
        match = "no such folder"
    elif case == "misnamed":
        (src / "annotations").rename(src / "annotation")
        match = "no annotations/instances_train2017.json"
    elif case == "no_images":
        (src / "val2017").rename(src / "val")
        match = "val2017 is missing"
    elif case == "bad_json":
        (src / "annotations" / "instances_val2017.json").write_text("{not json")
        match = "not valid JSON"
    elif case == "bad_category":
        path = src / "annotations" / "instances_val2017.json"
        data = json.loads(path.read_text())
        data["annotations"][0]["category_id"] = 2
        path.write_text(json.dumps(data))
        match = "category_id 2"
    else:
        out.mkdir()
        (out / "x").write_text("keep")
        match = "not empty"
    with pytest.raises(UserError, match=match):
        prepare_coco(src, out, workers=1)
    if case != "out_not_empty":
        assert not out.exists()


def test_cli_prepare_coco(coco, capsys):
    pytest.importorskip("mtlcli.cli.prepare")
    from mtlcli.cli.main import main

    (coco["src"] / "annotations").rename(coco["src"] / "annotation")
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "coco", str(coco["src"]), "--out", str(coco["out"])])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "instances_train2017.json" in err and "\n" not in err
