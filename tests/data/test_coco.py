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
    return {
        "id": i,
        "image_id": image_id,
        "category_id": cat,
        "segmentation": seg,
        "iscrowd": crowd,
        "area": 0.0,
        "bbox": [0, 0, 1, 1],
    }


# category ids are not contiguous and not listed in id order
CATEGORIES = [
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]
PERSON_POLY = [[2, 2, 20, 2, 20, 20, 2, 20]]
CAR = rect(10, 25, 15, 40)
CROWD = rect(0, 12, 30, 48)


@pytest.fixture
def coco(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "coco"
    (src / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {
        "train": [(42, "000000000042.jpg"), (7, "000000000007.jpg")],
        "val": [(5, "000000000005.jpg"), (6, "000000000006.jpg")],
    }
    for split, ims in images.items():
        (src / f"{split}2017").mkdir()
        for _, name in ims:
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(src / f"{split}2017" / name)
    train_anns = [
        ann(1, 42, 1, PERSON_POLY),  # person polygon
        ann(2, 42, 3, compressed_rle(CAR)),  # car over the person where they overlap
        ann(3, 42, 90, uncompressed_rle(CROWD), crowd=1),  # crowd toothbrushes, painted last
        ann(4, 7, 3, compressed_rle(CAR)),  # same shapes, reversed order: person wins
        ann(5, 7, 1, PERSON_POLY),
    ]
    val_anns = [ann(6, 5, 3, [[0, 0, 10, 0, 10, 8, 0, 8]])]  # image 6 has no annotations at all
    for split, anns in (("train", train_anns), ("val", val_anns)):
        data = {
            "info": {},
            "licenses": [],
            "categories": CATEGORIES,
            "annotations": anns,
            "images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in images[split]],
        }
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
    assert (
        images["000000000042"]["file_name"] == "train2017/000000000042.jpg" and images["000000000042"]["coco_id"] == 42
    )
    anns = [a for a in prepared["annotations"] if a["image_id"] == images["000000000042"]["id"]]
    assert [(a["category_id"], a["iscrowd"]) for a in anns] == [(1, 0), (2, 0), (3, 1)]
    for a, orig_id in zip(anns, [1, 2, 3], strict=True):
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
    np.testing.assert_array_equal(
        read_label_png(out / "train" / "dt" / "000000000042.png"), np.digitize(d, [0, 0.2, 0.4], right=True)
    )

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
    assert (
        reasons["train2017/000000000007.jpg"].startswith("image file")
        and "missing" in reasons["train2017/000000000007.jpg"]
    )
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


# ------------------------------------------------------------------------- any COCO-format JSON (custom)


def custom_coco(
    tmp_path: Path, anns: list[dict], images: list[dict] | None = None, categories: list[dict] | None = None
) -> dict[str, Path]:
    """Images in sub-folders of tmp/images (two share the stem x), one annotation file tmp/ann/train.json."""
    rng = np.random.default_rng(1)
    img_dir = tmp_path / "images"
    images = (
        images
        if images is not None
        else [
            {"id": 101, "file_name": "a/x.jpg", "height": H, "width": W},
            {"id": 205, "file_name": "b/x.png", "height": H, "width": W},
        ]
    )
    for im in images:
        name = im.get("file_name")
        if isinstance(name, str) and not name.startswith(("/", "..")):
            (img_dir / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(img_dir / name)
    cats = (
        categories
        if categories is not None
        else [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 12, "name": "bird"}]
    )
    (tmp_path / "ann").mkdir(exist_ok=True)
    path = tmp_path / "ann" / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"json": path, "images": img_dir, "out": tmp_path / "out"}


def test_custom_json_keeps_its_classes_ids_and_relative_paths(tmp_path):
    c = custom_coco(tmp_path, [ann(1, 101, 12, PERSON_POLY), ann(2, 205, 3, compressed_rle(CAR))])
    summary = prepare_coco(None, c["out"], workers=1, train_json=c["json"], train_images=c["images"], quiet=True)
    meta = DatasetMeta.load(c["out"])
    assert meta.name == "custom" and meta.splits == ["train"]
    assert meta.det_classes == ["dog", "cat", "bird"] and meta.det_category_ids == [3, 7, 12]  # by original id
    assert meta.seg_classes == ["background", "dog", "cat", "bird"]
    prepared = json.loads((c["out"] / "train" / "instances.json").read_text())
    by_stem = {im["stem"]: im for im in prepared["images"]}
    assert set(by_stem) == {"a/x", "b/x"}  # the same file stem in two folders: two label files
    assert by_stem["a/x"]["coco_id"] == 101 and by_stem["b/x"]["coco_id"] == 205
    assert (Path(meta.source) / by_stem["a/x"]["file_name"]).is_file()
    sem_a = read_label_png(c["out"] / "train" / "semantic" / "a" / "x.png")
    sem_b = read_label_png(c["out"] / "train" / "semantic" / "b" / "x.png")
    assert set(np.unique(sem_a)) == {0, 3} and set(np.unique(sem_b)) == {0, 1}  # bird = 3, dog = 1
    assert summary["skipped"] == []


def test_custom_json_name_clash_is_refused_with_both_names(tmp_path):
    images = [
        {"id": 1, "file_name": "a/x.jpg", "height": H, "width": W},
        {"id": 2, "file_name": "a/x.png", "height": H, "width": W},
    ]
    c = custom_coco(tmp_path, [], images=images)
    with pytest.raises(UserError, match="a/x.jpg and a/x.png"):
        prepare_coco(None, c["out"], workers=1, train_json=c["json"], train_images=c["images"], quiet=True)


MALFORMED = {
    "short polygon": (ann(1, 101, 7, [[5, 5, 25]]), "polygon with 3 coordinates"),
    "string segmentation": (ann(1, 101, 7, "5 5 25 5 25 25"), "segmentation is a str"),
    "zero-width box": (
        {"id": 1, "image_id": 101, "category_id": 7, "bbox": [3, 3, 0, 5], "iscrowd": 0},
        "zero width or height",
    ),
}


@pytest.mark.parametrize("case", [*MALFORMED, "image without height", "category without name"])
def test_malformed_entries_are_skipped_with_a_reason_or_refused_under_strict(tmp_path, case):
    good = ann(9, 205, 3, compressed_rle(CAR))
    images, categories, anns = None, None, [good]
    if case in MALFORMED:
        bad, reason = MALFORMED[case]
        anns = [bad, good]
    elif case == "image without height":
        images = [
            {"id": 101, "file_name": "a/x.jpg", "width": W},
            {"id": 205, "file_name": "b/x.png", "height": H, "width": W},
        ]
        reason = "no valid height"
    else:
        categories = [{"id": 7}, {"id": 3, "name": "dog"}]
        anns = [ann(1, 101, 7, PERSON_POLY), good]
        reason = "category 7 has no name"
    c = custom_coco(tmp_path, anns, images=images, categories=categories)
    summary = prepare_coco(None, c["out"], workers=1, train_json=c["json"], train_images=c["images"], quiet=True)
    assert any(reason in s["reason"] for s in summary["skipped"]), summary["skipped"]
    prepared = json.loads((c["out"] / "train" / "instances.json").read_text())
    assert len(prepared["annotations"]) == 1  # the good annotation survives
    with pytest.raises(UserError, match="--strict"):
        prepare_coco(
            None,
            c["out"],
            workers=1,
            strict=True,
            force=True,
            train_json=c["json"],
            train_images=c["images"],
            quiet=True,
        )


def test_cli_prepare_custom_json(tmp_path, capsys):
    from mtlcli.cli.main import main

    c = custom_coco(tmp_path, [ann(1, 101, 12, PERSON_POLY)])
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "prepare",
                "coco",
                "--train-json",
                str(c["json"]),
                "--train-images",
                str(c["images"]),
                "--out",
                str(c["out"]),
                "--workers",
                "1",
            ]
        )
    assert exc.value.code == 0
    assert "ivanet-custom" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "coco", "--train-json", str(c["json"]), "--out", str(tmp_path / "o2")])
    assert exc.value.code == 2
    assert "--train-images" in capsys.readouterr().err
