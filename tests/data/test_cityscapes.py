"""Cityscapes preparation: exact boxes and crowd flags from hand-drawn polygons, trainIds, DT bins,
polygons-only and PNG-only sources, every bad input, and a source that is never written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from mtlcli.data.cityscapes import _dt_bins_crop, encode_crop, prepare_cityscapes, rasterise_polygons
from mtlcli.data.prepared import DatasetMeta, encode_instance, read_label_png
from mtlcli.data.targets import cityscapes_tables, instances_from_cityscapes
from mtlcli.errors import UserError

H, W = 40, 60


def write_image(
    root: Path,
    split: str,
    city: str,
    prefix: str,
    objects: list[dict],
    *,
    polygons: bool = True,
    pngs: bool = False,
    size: tuple[int, int] = (H, W),
) -> None:
    """One image in the real layout: a leftImg8bit PNG plus its polygon JSON and/or the PNGs the
    official json2labelImg / json2instanceImg make from it."""
    h, w = size
    img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(img_dir / f"{prefix}_leftImg8bit.png")
    annotation = {"imgHeight": h, "imgWidth": w, "objects": objects}
    if polygons:
        (gt_dir / f"{prefix}_gtFine_polygons.json").write_text(json.dumps(annotation))
    if pngs:
        label_ids, instance_ids = rasterise_polygons(annotation)
        Image.fromarray(label_ids).save(gt_dir / f"{prefix}_gtFine_labelIds.png")
        Image.fromarray(instance_ids).save(gt_dir / f"{prefix}_gtFine_instanceIds.png")


def box(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


SCENE = [
    {"label": "road", "polygon": box(0, 20, 59, 39)},
    {"label": "sky", "polygon": box(0, 0, 59, 9)},
    {"label": "person", "polygon": box(40, 5, 44, 30)},  # 24000, right part hidden by the car below
    {"label": "car", "polygon": box(10, 15, 29, 24)},  # 26000
    {"label": "car", "polygon": box(42, 22, 55, 33)},  # 26001, covers the person's lower right
    {"label": "persongroup", "polygon": box(2, 2, 6, 12)},  # crowd region, labelId 24
    {"label": "license plate", "polygon": box(12, 20, 14, 21)},  # id -1: not drawn at all
]


def read_split(root: Path, split: str) -> dict:
    return json.loads((root / split / "instances.json").read_text())


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("source", ["polygons", "pngs"])
def test_exact_boxes_crowd_and_train_ids(tmp_path: Path, source: str) -> None:
    src = tmp_path / "src"
    write_image(src, "train", "town", "town_000000_000019", SCENE, polygons=source == "polygons", pngs=source == "pngs")
    write_image(
        src, "val", "town", "town_000001_000019", SCENE[:2], polygons=source == "polygons", pngs=source == "pngs"
    )
    summary = prepare_cityscapes(src, tmp_path / "out", workers=1, quiet=True)
    assert summary["splits"]["train"]["instances"]["car"] == 2 and summary["splits"]["train"]["crowd"] == 1

    coco = read_split(tmp_path / "out", "train")
    assert [c["name"] for c in coco["categories"]][:3] == ["person", "rider", "car"]
    anns = sorted(coco["annotations"], key=lambda a: (a["iscrowd"], a["category_id"], a["bbox"]))
    # PIL fills polygons inclusively: box(10, 15, 29, 24) covers columns 10..29 and rows 15..24
    assert [(a["category_id"], a["bbox"], a["iscrowd"]) for a in anns] == [
        (1, [40.0, 5.0, 5.0, 26.0], 0),  # person: still 26 rows tall; its visible columns are 40..44
        (3, [10.0, 15.0, 20.0, 10.0], 0),
        (3, [42.0, 22.0, 14.0, 12.0], 0),
        (1, [2.0, 2.0, 5.0, 11.0], 1),  # persongroup -> crowd
    ]
    person = next(a for a in anns if a["category_id"] == 1 and not a["iscrowd"])
    assert person["area"] == 5 * 26 - 3 * 9  # rows 22..30 of columns 42..44 are behind the second car
    image = coco["images"][0]
    assert (image["height"], image["width"], image["file_name"]) == (
        H,
        W,
        "leftImg8bit/train/town/town_000000_000019_leftImg8bit.png",
    )

    semantic = read_label_png(tmp_path / "out" / "train" / "semantic" / "town_000000_000019_leftImg8bit.png")
    assert semantic.dtype == np.uint8 and semantic.shape == (H, W)
    assert semantic[35, 5] == 0 and semantic[3, 30] == 10  # road, sky
    assert semantic[18, 20] == 13 and semantic[10, 42] == 11  # car, person
    assert semantic[5, 4] == 11  # a group region is still its class in the semantic map
    assert semantic[20, 13] == 13  # the license plate (id -1) is not drawn: the car shows through
    assert semantic[14, 30] == 255  # nothing drawn: unlabeled -> ignore

    meta = DatasetMeta.load(tmp_path / "out")
    names, palette, _, _ = cityscapes_tables()
    assert meta.name == "cityscapes" and meta.splits == ["train", "val"] and meta.source == str(src.resolve())
    assert meta.seg_classes == names and len(names) == 19 and meta.palette == palette
    assert meta.det_classes == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def test_matches_official_pngs_and_direct_dt(synthetic_source: Path, synthetic_prepared: Path) -> None:
    """Every prepared image agrees with the official PNGs: trainIds of labelIds, one annotation per
    instance value (as encode_instance makes it from the full mask) and DT bins computed directly."""
    _, _, lut, _ = cityscapes_tables()
    for split in ("train", "val"):
        coco = read_split(synthetic_prepared, split)
        assert len(coco["images"]) == {"train": 6, "val": 3}[split]
        for image in coco["images"]:
            prefix = Path(image["file_name"]).name[: -len("_leftImg8bit.png")]
            gt = synthetic_source / "gtFine" / split / prefix.split("_")[0]
            label_ids = read_label_png(gt / f"{prefix}_gtFine_labelIds.png")
            instance_ids = read_label_png(gt / f"{prefix}_gtFine_instanceIds.png")
            semantic = read_label_png(synthetic_prepared / split / "semantic" / f"{image['stem']}.png")
            assert np.array_equal(semantic, lut[label_ids])

            anns = [
                {k: a[k] for k in ("category_id", "bbox", "area", "iscrowd", "segmentation")}
                for a in coco["annotations"]
                if a["image_id"] == image["id"]
            ]
            expected = [encode_instance(m, c, z) for m, c, z in instances_from_cityscapes(instance_ids)]
            assert anns == expected

            # DESIGN §3 directly: D_i = edt(M_i) on the full image, normalised, max over instances
            d = np.zeros(label_ids.shape)
            for a in anns:
                if not a["iscrowd"]:
                    m = mask_utils.decode(a["segmentation"]).astype(bool)
                    di = ndimage.distance_transform_edt(np.pad(m, 1, constant_values=True))[1:-1, 1:-1] * m
                    d = np.maximum(d, di / di.max())
            bins = (d > 0).astype(np.uint8) + (d > 0.2) + (d > 0.4)
            dt = read_label_png(synthetic_prepared / split / "dt" / f"{image['stem']}.png")
            assert np.array_equal(dt, bins)
            assert set(np.unique(dt)) <= {0, 1, 2, 3}


def test_polygons_only_and_pngs_only_agree(synthetic_source: Path, synthetic_prepared: Path, tmp_path: Path) -> None:
    only_json, only_png = tmp_path / "json", tmp_path / "png"
    shutil.copytree(synthetic_source, only_json, ignore=shutil.ignore_patterns("*_labelIds.png", "*_instanceIds.png"))
    shutil.copytree(synthetic_source, only_png, ignore=shutil.ignore_patterns("*_polygons.json"))
    prepare_cityscapes(only_json, tmp_path / "a", workers=1, quiet=True)
    prepare_cityscapes(only_png, tmp_path / "b", workers=2, quiet=True)  # the process pool path too
    for split in ("train", "val"):
        ref = read_split(synthetic_prepared, split)
        assert read_split(tmp_path / "a", split)["annotations"] == ref["annotations"]
        assert read_split(tmp_path / "b", split)["annotations"] == ref["annotations"]
        for kind in ("semantic", "dt"):
            for png in sorted((synthetic_prepared / split / kind).glob("*.png")):
                for other in (tmp_path / "a", tmp_path / "b"):
                    assert np.array_equal(read_label_png(png), read_label_png(other / split / kind / png.name))


def test_encode_crop_equals_encode_instance() -> None:
    rng = np.random.default_rng(0)
    for shape, (y0, y1, x0, x1) in [((30, 40), (0, 30, 5, 9)), ((30, 40), (3, 12, 0, 40)), ((7, 5), (0, 7, 0, 5))]:
        crop = rng.random((y1 - y0, x1 - x0)) < 0.6
        crop[:, 0] = True  # full columns: runs continue from one column into the next
        full = np.zeros(shape, dtype=bool)
        full[y0:y1, x0:x1] = crop
        assert encode_crop(crop, (y0, x0), shape, 3, 0) == encode_instance(full, 3, 0)


def test_source_is_never_written(synthetic_source: Path, tmp_path: Path) -> None:
    before = tree_digest(synthetic_source)
    prepare_cityscapes(synthetic_source, tmp_path / "out", workers=1, quiet=True)
    with pytest.raises(UserError, match="inside the source"):
        prepare_cityscapes(synthetic_source, synthetic_source / "prepared", workers=1, quiet=True)
    assert tree_digest(synthetic_source) == before


def test_existing_out_needs_force(synthetic_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty.*--force"):
        prepare_cityscapes(synthetic_source, out, workers=1, quiet=True)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "dataset.json").exists()
    prepare_cityscapes(synthetic_source, out, workers=1, quiet=True, force=True)
    assert (out / "dataset.json").is_file()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda src: (src / "gtFine").mkdir(parents=True), "no leftImg8bit/ folder"),
        (lambda src: (src / "leftImg8bit" / "train").mkdir(parents=True), "no gtFine/ folder"),
        (
            lambda src: [(src / d / "training").mkdir(parents=True) for d in ("leftImg8bit", "gtFine")],
            r"no train/ or val/ folder \(found: training\)",
        ),
        (
            lambda src: [(src / "leftImg8bit" / "train").mkdir(parents=True), (src / "gtFine").mkdir()],
            "has images but no gtFine",
        ),
        (
            lambda src: [(src / d / "train" / "town").mkdir(parents=True) for d in ("leftImg8bit", "gtFine")],
            "no images under",
        ),
        (lambda src: None, "no such folder"),
    ],
)
def test_layout_errors(tmp_path: Path, make, message: str) -> None:
    src = tmp_path / "src"
    make(src)
    with pytest.raises(UserError, match=message):
        prepare_cityscapes(src, tmp_path / "out", workers=1, quiet=True)
    assert not (tmp_path / "out").exists()  # nothing created for a source that cannot be read


def test_unknown_split_is_an_error(synthetic_source: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="test does not exist"):
        prepare_cityscapes(synthetic_source, tmp_path / "out", splits=["test"], quiet=True)


def _bad_tree(src: Path) -> None:
    write_image(src, "train", "town", "town_000000_000019", SCENE)
    write_image(
        src, "train", "town", "town_000001_000019", SCENE + [{"label": "spaceship", "polygon": box(1, 1, 5, 5)}]
    )
    write_image(src, "train", "town", "town_000002_000019", SCENE, polygons=False, pngs=True)
    inst = src / "gtFine/train/town/town_000002_000019_gtFine_instanceIds.png"
    inst.write_bytes(inst.read_bytes()[:60])  # truncated PNG
    write_image(src, "train", "town", "town_000003_000019", SCENE, polygons=False)  # no ground truth at all
    write_image(src, "train", "town", "town_000004_000019", SCENE)
    img = src / "leftImg8bit/train/town/town_000004_000019_leftImg8bit.png"
    img.write_bytes(img.read_bytes()[:-30])  # truncated image
    write_image(src, "train", "town", "town_000005_000019", SCENE, size=(20, 30))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
        src / "leftImg8bit/train/town/town_000005_000019_leftImg8bit.png"
    )
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(src / "leftImg8bit/train/town/holiday.png")


def test_bad_files_are_skipped_and_listed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _bad_tree(src)
    summary = prepare_cityscapes(src, tmp_path / "out", workers=1, quiet=True)
    reasons = {Path(r["file"]).name: r["reason"] for r in summary["skipped"]}
    assert set(reasons) == {f"town_00000{i}_000019_leftImg8bit.png" for i in range(1, 6)} | {"holiday.png"}
    assert "'spaceship' is not in the Cityscapes label table" in reasons["town_000001_000019_leftImg8bit.png"]
    assert "unreadable" in reasons["town_000002_000019_leftImg8bit.png"]
    assert "no ground truth" in reasons["town_000003_000019_leftImg8bit.png"]
    assert "unreadable" in reasons["town_000004_000019_leftImg8bit.png"]
    assert "ground truth is 20x30 but the image is 40x60" in reasons["town_000005_000019_leftImg8bit.png"]
    assert "not a Cityscapes image name" in reasons["holiday.png"]
    coco = read_split(tmp_path / "out", "train")
    assert [i["stem"] for i in coco["images"]] == ["town_000000_000019_leftImg8bit"]
    assert summary["splits"]["train"] == {
        "images": 1,
        "instances": summary["splits"]["train"]["instances"],
        "crowd": 1,
        "skipped": 6,
    }


def test_strict_stops_at_a_bad_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_image(src, "train", "town", "town_000000_000019", SCENE)
    write_image(
        src, "train", "town", "town_000001_000019", SCENE + [{"label": "spaceship", "polygon": box(1, 1, 5, 5)}]
    )
    with pytest.raises(UserError, match="spaceship.*--strict"):
        prepare_cityscapes(src, tmp_path / "out", workers=1, strict=True, quiet=True)
    write_image(src, "train", "town", "town_000002_000019", SCENE, polygons=False)
    with pytest.raises(UserError, match="no ground truth"):  # found while scanning, before any work
        prepare_cityscapes(src, tmp_path / "out2", workers=1, strict=True, quiet=True)
    assert not (tmp_path / "out2").exists()


def random_scene(rng: np.random.Generator, h: int, w: int, n: int) -> list[dict]:
    """n objects of random classes (stuff, instances, groups, a never-drawn license plate, deleted
    ones) with random fractional polygons that overlap and cross the image border."""
    names = [
        "road",
        "building",
        "pole",
        "person",
        "rider",
        "car",
        "bicycle",
        "cargroup",
        "persongroup",
        "license plate",
        "caravan",
    ]
    objects = []
    for _ in range(n):
        cx, cy = rng.uniform(-5, w + 5), rng.uniform(-5, h + 5)
        k = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radius = rng.uniform(0.5, min(h, w) / 3, k)
        polygon = [
            [round(float(cx + r * np.cos(a)), 2), round(float(cy + r * np.sin(a)), 2)]
            for a, r in zip(angles, radius, strict=True)
        ]
        obj = {"label": str(rng.choice(names)), "polygon": polygon}
        if rng.random() < 0.05:
            obj["deleted"] = 1
        objects.append(obj)
    return objects


@pytest.mark.parametrize("scene", ["random", "many"])
def test_drawn_polygons_agree_with_official_pngs(tmp_path: Path, scene: str) -> None:
    """Polygons are drawn by mtl's own single pass; the PNGs by cityscapesscripts' json2labelImg /
    json2instanceImg functions. Both sources must give identical annotations, trainIds and DT bins, also
    for fractional polygons crossing the border and for more than 255 instance objects."""
    rng = np.random.default_rng(3)
    if scene == "random":
        images = [random_scene(rng, H, W, 40) for _ in range(4)]
    else:  # 300 persons on a grid, partly hidden by cars drawn later
        persons = [
            {"label": "person", "polygon": box(x, y, x + 2, y + 2)} for y in range(0, 40, 4) for x in range(0, 120, 4)
        ]
        images = [
            [{"label": "road", "polygon": box(0, 0, 127, 39)}]
            + persons
            + [{"label": "car", "polygon": box(10, 5, 30, 20)}]
        ]
    size = (H, W) if scene == "random" else (40, 128)
    for i, objects in enumerate(images):
        write_image(tmp_path / "json", "train", "town", f"town_{i:06d}_000019", objects, size=size)
        write_image(
            tmp_path / "png", "train", "town", f"town_{i:06d}_000019", objects, polygons=False, pngs=True, size=size
        )
    a = prepare_cityscapes(tmp_path / "json", tmp_path / "a", workers=1, quiet=True)
    b = prepare_cityscapes(tmp_path / "png", tmp_path / "b", workers=1, quiet=True)
    assert a["splits"] == b["splits"] and not a["skipped"]
    if scene == "many":
        assert a["splits"]["train"]["instances"]["person"] > 255
    assert read_split(tmp_path / "a", "train")["annotations"] == read_split(tmp_path / "b", "train")["annotations"]
    for kind in ("semantic", "dt"):
        for png in sorted((tmp_path / "b" / "train" / kind).glob("*.png")):
            assert np.array_equal(read_label_png(tmp_path / "a" / "train" / kind / png.name), read_label_png(png))


def reference_dt_bins(crop: np.ndarray) -> np.ndarray:
    """DESIGN §3 in floats: edt, normalised by its maximum, bins at 0, 0.2, 0.4."""
    d = ndimage.distance_transform_edt(crop)
    d = d / d.max() if d.max() > 0 else d
    return ((d > 0).astype(np.uint8) + (d > 0.2) + (d > 0.4)).astype(np.uint8)


def test_dt_bins_are_the_float_rule_exactly() -> None:
    """Integer thresholds on squared distances reproduce the float comparisons, ties included: in a
    9x9 square (inside a one-pixel ring) the maximum distance is 5, so distances 1 and 2 are exactly
    0.2 and 0.4 of it and stay in the lower bin."""
    square = np.zeros((11, 11), dtype=bool)
    square[1:-1, 1:-1] = True
    bins = _dt_bins_crop(square, (0.2, 0.4))
    assert np.array_equal(bins, reference_dt_bins(square))
    assert bins[1, 5] == 1 and bins[2, 5] == 2 and bins[3, 5] == 3 and bins[0, 5] == 0
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = rng.integers(3, 40, size=2)
        crop = ndimage.binary_opening(rng.random((h, w)) < rng.uniform(0.5, 0.95))
        crop[0], crop[:, 0] = False, False  # the grown region's ring has background on two sides
        if crop.any():
            assert np.array_equal(_dt_bins_crop(crop, (0.2, 0.4)), reference_dt_bins(crop))
    assert np.array_equal(_dt_bins_crop(np.ones((4, 6), dtype=bool), (0.2, 0.4)), np.full((4, 6), 3))  # the whole image


def test_complete_images_with_trailing_bytes_are_kept(tmp_path: Path) -> None:
    """Images are checked by header and closing IEND chunk: bytes a tool appended after IEND are
    harmless, a file cut short anywhere (even inside IEND) is skipped as unreadable."""
    src = tmp_path / "src"
    write_image(src, "train", "town", "town_000000_000019", SCENE)
    write_image(src, "train", "town", "town_000001_000019", SCENE)
    images = src / "leftImg8bit" / "train" / "town"
    with open(images / "town_000000_000019_leftImg8bit.png", "ab") as f:
        f.write(b"\0" * 100)
    cut = images / "town_000001_000019_leftImg8bit.png"
    cut.write_bytes(cut.read_bytes()[:-4])  # only the IEND chunk's CRC is missing
    summary = prepare_cityscapes(src, tmp_path / "out", workers=1, quiet=True)
    assert summary["splits"]["train"]["images"] == 1
    assert [Path(r["file"]).name for r in summary["skipped"]] == ["town_000001_000019_leftImg8bit.png"]
    assert "unreadable" in summary["skipped"][0]["reason"] and "truncated" in summary["skipped"][0]["reason"]


def test_packed_label_pngs_read_back_unchanged(tmp_path: Path) -> None:
    from mtlcli.data.cityscapes import DT_PALETTE, save_indexed_png

    bins = np.random.default_rng(0).integers(0, 4, size=(9, 13)).astype(np.uint8)
    save_indexed_png(tmp_path / "dt.png", bins, DT_PALETTE, bits=2)
    with Image.open(tmp_path / "dt.png") as img:
        assert img.mode == "P" and img.getpalette()[:12] == sum(DT_PALETTE, [])
    assert np.array_equal(read_label_png(tmp_path / "dt.png"), bins)
    with pytest.raises(ValueError, match="2-bit PNG holds values below 4"):
        save_indexed_png(tmp_path / "bad.png", bins + 1, DT_PALETTE, bits=2)


@pytest.mark.parametrize(
    "objects, reason",
    [
        ({"label": "car"}, "'objects' must be a list"),
        (["car"], "'objects' must be a list"),
        ([{"label": "car", "polygon": [[3, 3]]}], "malformed polygon"),
        ([{"label": "car"}], "malformed polygon"),
        ([{"label": "car", "polygon": [["a", 1], [2, 2], [3, 1]]}], "malformed polygon"),
    ],
)
def test_malformed_polygon_files_are_skipped(tmp_path: Path, objects, reason: str) -> None:
    src = tmp_path / "src"
    write_image(src, "train", "town", "town_000000_000019", SCENE)
    gt = src / "gtFine" / "train" / "town" / "town_000001_000019_gtFine_polygons.json"
    write_image(src, "train", "town", "town_000001_000019", SCENE)
    gt.write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": objects}))
    summary = prepare_cityscapes(src, tmp_path / "out", workers=1, quiet=True)
    assert summary["splits"]["train"]["images"] == 1
    assert len(summary["skipped"]) == 1 and reason in summary["skipped"][0]["reason"]
