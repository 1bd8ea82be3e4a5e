"""`prepare_voc` on a tiny VOC2007 + VOC2012 + SBD tree built in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from mtlcli.data.prepared import DatasetMeta, read_label_png
from mtlcli.data.targets import box_mask, dt_bins
from mtlcli.data.voc import VOC_CLASSES, box_dt_bins, prepare_voc, voc_colormap
from mtlcli.errors import UserError
from tests.engine.tiny_model import tiny_registered  # noqa: F401 (fixture)

H, W = 32, 48


def write_jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path, quality=90)


def write_xml(path: Path, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> None:
    """VOC XML as the devkit writes it: 1-based inclusive bndbox, <difficult>, <part>s ignored."""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
        f"<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part></object>"
        for n, b, d in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><folder>VOC</folder><filename>{path.stem}.jpg</filename><size><width>{W}</width>"
        f"<height>{H}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
    )


def write_palette_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette([c for rgb in voc_colormap(256) for c in rgb])
    img.save(path)


def write_sbd_mat(path: Path, label: np.ndarray) -> None:
    """SBD cls/<name>.mat: a 1x1 struct GTcls {Boundaries: 20x1 cell of sparse, Segmentation, CategoriesPresent}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for i in range(20):
        boundaries[i, 0] = scipy.sparse.csc_matrix((H, W), dtype=np.float64)
    present = np.unique(label[(label > 0) & (label < 255)]).astype(np.uint8)
    scipy.io.savemat(
        path,
        {"GTcls": {"Boundaries": boundaries, "Segmentation": label.astype(np.uint8), "CategoriesPresent": present}},
    )


def label_map(value: int, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    lab = np.zeros((H, W), np.uint8)
    lab[y0:y1, x0:x1] = value
    lab[y0, x0:x1] = 255  # VOC's boundary band
    return lab


LABELS = {
    "2008_000001": label_map(12, (4, 2, 20, 30)),  # dog
    "2008_000002": label_map(15, (0, 0, 10, 10)),  # person
    "2008_000004": label_map(7, (10, 10, 40, 30)),  # car (PNG)
    "2008_000005": label_map(8, (1, 1, 5, 5)),
}
MATS = {
    "2008_000003": label_map(3, (5, 5, 25, 25)),  # bird
    "2008_000004": label_map(9, (0, 0, 48, 32)),  # a different label: the PNG must win
    "2008_000005": label_map(8, (1, 1, 5, 5)),
    "2008_000007": label_map(2, (2, 2, 8, 8)),
}


@pytest.fixture
def voc(tmp_path: Path) -> dict[str, Path]:
    """VOC2007 + VOC2012 + SBD in the real layouts. VOC2012 re-ships two VOC2007 images, as the real
    VOC2012 does under `2007_*` names: 2007_000009 (a copy of VOC2007 trainval 000009) is in VOC2012 seg
    val, 2007_000002 (a copy of VOC2007 test 000002) in VOC2012 Main trainval."""
    root = tmp_path / "src"
    v12 = root / "VOCdevkit" / "VOC2012"
    v07 = root / "VOCdevkit" / "VOC2007"
    sbd = root / "benchmark_RELEASE" / "dataset"
    names12 = ["2008_000001", "2008_000002", "2008_000003", "2008_000004", "2008_000005", "2008_000006"]
    for i, n in enumerate(names12):
        write_jpeg(v12 / "JPEGImages" / f"{n}.jpg", i)
        write_xml(v12 / "Annotations" / f"{n}.xml", [("car", (3, 3, 10, 12), 0)])
    write_xml(
        v12 / "Annotations" / "2008_000001.xml",
        [("dog", (5, 3, 20, 30), 0), ("person", (1, 1, 48, 32), 1), ("cat", (30, 20, 40, 28), 0)],
    )
    # a small box listed before the large box it lies on: the painted map must still show it
    write_xml(v12 / "Annotations" / "2008_000006.xml", [("cat", (11, 11, 20, 20), 0), ("car", (4, 4, 40, 30), 0)])
    for n, lab in LABELS.items():
        write_palette_png(v12 / "SegmentationClass" / f"{n}.png", lab)
    for i, n in enumerate(["000001", "000002", "000009"]):
        write_jpeg(v07 / "JPEGImages" / f"{n}.jpg", 10 + i)
        write_xml(v07 / "Annotations" / f"{n}.xml", [("horse", (2, 2, 30, 20), 0)])
    for n in ("000002", "000009"):  # byte-identical copies under VOC2012's 2007_ names
        (v12 / "JPEGImages" / f"2007_{n}.jpg").write_bytes((v07 / "JPEGImages" / f"{n}.jpg").read_bytes())
        write_xml(v12 / "Annotations" / f"2007_{n}.xml", [("horse", (2, 2, 30, 20), 0)])
    write_palette_png(v12 / "SegmentationClass" / "2007_000009.png", label_map(13, (1, 1, 29, 19)))
    (v12 / "ImageSets" / "Main").mkdir(parents=True)
    (v12 / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(["2007_000002", "2007_000009", *names12]) + "\n")
    (v12 / "ImageSets" / "Segmentation").mkdir(parents=True)
    (v12 / "ImageSets" / "Segmentation" / "train.txt").write_text("2008_000001\n2008_000004\n")
    (v12 / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000009\n2008_000002\n2008_000005\n")
    (v07 / "ImageSets" / "Main").mkdir(parents=True)
    (v07 / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000009\n")
    (v07 / "ImageSets" / "Main" / "test.txt").write_text("000002\n")
    for n, lab in MATS.items():
        write_sbd_mat(sbd / "cls" / f"{n}.mat", lab)
        write_jpeg(sbd / "img" / f"{n}.jpg", 20)
    (sbd / "train.txt").write_text("2008_000003\n2008_000005\n2008_000007\n")
    (sbd / "val.txt").write_text("2008_000004\n")
    return {"root": root, "voc2012": v12, "voc2007": v07, "sbd": sbd, "out": tmp_path / "out"}


def load_split(out: Path, split: str) -> dict:
    return json.loads((out / split / "instances.json").read_text())


def anns_by_stem(coco: dict) -> dict[str, list[dict]]:
    ids = {im["id"]: im["stem"] for im in coco["images"]}
    out: dict[str, list[dict]] = {s: [] for s in ids.values()}
    for a in coco["annotations"]:
        out[ids[a["image_id"]]].append(a)
    return out


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_splits_boxes_difficult_and_labels(voc):
    before = tree_state(voc["root"])
    summary = prepare_voc(voc["out"], voc2012=voc["voc2012"], voc2007=voc["voc2007"], sbd=voc["sbd"].parent, workers=1)
    out = voc["out"]
    assert tree_state(voc["root"]) == before  # the source is never written

    meta = DatasetMeta.load(out)
    assert meta.splits == ["trainval", "test", "train", "val", "train_aug", "trainval07_aug12"]
    assert meta.det_classes == VOC_CLASSES and meta.seg_classes[0] == "background" and len(meta.seg_classes) == 21
    assert meta.palette[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]] and meta.palette[20] == [0, 64, 128]
    assert Path(meta.source) == voc["root"].resolve()  # common parent of VOCdevkit and benchmark_RELEASE

    trainval = load_split(out, "trainval")
    stems = [im["stem"] for im in trainval["images"]]
    # VOC07 + VOC12 Main trainval, less 2007_000002 (a copy of the VOC07 test image 000002) and less
    # 2007_000009 (a copy of the VOC07 trainval image 000009: one copy stays)
    assert sorted(stems) == [
        "000001",
        "000009",
        "2008_000001",
        "2008_000002",
        "2008_000003",
        "2008_000004",
        "2008_000005",
        "2008_000006",
    ]
    files = {im["stem"]: im["file_name"] for im in trainval["images"]}
    assert files["000001"] == "VOCdevkit/VOC2007/JPEGImages/000001.jpg"
    assert all((Path(meta.source) / f).is_file() for f in files.values())
    assert {im["stem"]: (im["height"], im["width"]) for im in trainval["images"]}["000001"] == (H, W)

    anns = anns_by_stem(trainval)["2008_000001"]
    cats = [meta.det_classes[a["category_id"] - 1] for a in anns]
    assert cats == ["dog", "person", "cat"]
    # XML 1-based inclusive (5, 3, 20, 30) -> x = 4, y = 2, w = 20 - 5 + 1, h = 30 - 3 + 1
    assert anns[0]["bbox"] == [4.0, 2.0, 16.0, 28.0] and anns[0]["area"] == 16 * 28 and anns[0]["iscrowd"] == 0
    assert anns[1]["bbox"] == [0.0, 0.0, 48.0, 32.0] and anns[1]["iscrowd"] == 1  # difficult -> crowd
    decoded = mask_utils.decode(anns[0]["segmentation"])
    assert decoded[2:30, 4:20].all() and decoded.sum() == 16 * 28  # the filled box is the instance mask
    assert summary["splits"]["trainval"]["crowd"] == 1

    # DT bins: a direct scipy computation over the non-difficult boxes (dog, cat), normalised per box
    d = np.zeros((H, W))
    for x0, y0, x1, y1 in [(4, 2, 20, 30), (29, 19, 40, 28)]:
        m = np.zeros((H, W), bool)
        m[y0:y1, x0:x1] = True
        e = ndimage.distance_transform_edt(m)
        d = np.maximum(d, e / e.max())
    expected = np.digitize(d, [0, 0.2, 0.4], right=True).astype(np.uint8)
    np.testing.assert_array_equal(read_label_png(out / "trainval" / "dt" / "2008_000001.png"), expected)

    # test = VOC2007 test only, no semantic maps
    assert [im["stem"] for im in load_split(out, "test")["images"]] == ["000002"]
    assert not (out / "test" / "semantic").exists()

    # train_aug = (SBD train ∪ SBD val ∪ seg train) − seg val; 000005 is in seg val, so it is excluded
    aug = load_split(out, "train_aug")
    assert sorted(im["stem"] for im in aug["images"]) == ["2008_000001", "2008_000003", "2008_000004", "2008_000007"]
    aug_files = {im["stem"]: im["file_name"] for im in aug["images"]}
    assert aug_files["2008_000007"] == "benchmark_RELEASE/dataset/img/2008_000007.jpg"  # only SBD has it
    assert aug_files["2008_000003"] == "VOCdevkit/VOC2012/JPEGImages/2008_000003.jpg"

    def sem(split, stem):
        return read_label_png(out / split / "semantic" / f"{stem}.png")

    np.testing.assert_array_equal(sem("train_aug", "2008_000004"), LABELS["2008_000004"])  # PNG over .mat
    np.testing.assert_array_equal(sem("train_aug", "2008_000003"), MATS["2008_000003"])
    np.testing.assert_array_equal(sem("train_aug", "2008_000001"), LABELS["2008_000001"])  # 255 kept
    assert [a["bbox"] for a in anns_by_stem(aug)["2008_000003"]] == [[2.0, 2.0, 8.0, 10.0]]  # boxes from VOC2012 XML

    # seg val: PNG labels; its labels never reach a training split (trainval's maps are painted from boxes)
    assert sorted(im["stem"] for im in load_split(out, "val")["images"]) == [
        "2007_000009",
        "2008_000002",
        "2008_000005",
    ]
    np.testing.assert_array_equal(sem("val", "2008_000005"), LABELS["2008_000005"])
    assert not (sem("trainval", "2008_000005") == 255).any()
    assert sorted(im["stem"] for im in load_split(out, "train")["images"]) == ["2008_000001", "2008_000004"]


def test_voc2012_alone_accepts_vocdevkit(voc):
    prepare_voc(voc["out"], voc2012=voc["voc2012"].parent, workers=1)
    meta = DatasetMeta.load(voc["out"])
    assert meta.splits == ["trainval", "train", "val"]
    assert Path(meta.source) == voc["voc2012"].parent.resolve()
    coco = load_split(voc["out"], "trainval")
    assert coco["images"][0]["file_name"] == "VOC2012/JPEGImages/2007_000002.jpg"  # no VOC2007 given: no copy to find
    # trainval's semantic maps are painted from the boxes, for every image
    stems = {im["stem"] for im in coco["images"]}
    assert {p.stem for p in (voc["out"] / "trainval" / "semantic").glob("*.png")} == stems
    assert DatasetMeta.load(voc["out"]).overlap == {
        "trainval": {"val": {"images": 3, "example": "VOC2012/JPEGImages/2007_000009.jpg"}},
        "train": {"val": {"images": 0}},
    }


def test_per_file_problems_are_skipped_and_listed_or_stop_with_strict(voc):
    v12 = voc["voc2012"]
    (v12 / "Annotations" / "2008_000006.xml").unlink()  # no ground truth
    (v12 / "JPEGImages" / "2008_000002.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")  # corrupt JPEG
    (voc["sbd"] / "cls" / "2008_000003.mat").write_bytes(b"not a mat file")  # unreadable .mat
    summary = prepare_voc(voc["out"], voc2012=v12, sbd=voc["sbd"], workers=2)
    reasons = {(s["file"], s["reason"].split(" ")[0]) for s in summary["skipped"]}
    assert ("VOCdevkit/VOC2012/JPEGImages/2008_000006.jpg", "no") in reasons
    assert ("VOCdevkit/VOC2012/JPEGImages/2008_000002.jpg", "corrupt") in reasons
    assert ("VOCdevkit/VOC2012/JPEGImages/2008_000003.jpg", "unreadable") in reasons
    assert "2008_000003" not in {im["stem"] for im in load_split(voc["out"], "train_aug")["images"]}
    assert summary["splits"]["val"]["images"] == 2

    with pytest.raises(UserError, match="--strict"):
        prepare_voc(voc["out"], voc2012=v12, sbd=voc["sbd"], workers=1, strict=True, force=True)


@pytest.mark.parametrize("case", ["missing", "misnamed", "no_seg_list", "bad_sbd", "out_not_empty", "out_inside"])
def test_bad_input_is_one_user_error(voc, case):
    kw = {"voc2012": voc["voc2012"], "workers": 1}
    out = voc["out"]
    if case == "missing":
        kw["voc2012"] = voc["root"] / "nope"
        match = "no such folder"
    elif case == "misnamed":
        (voc["voc2012"] / "JPEGImages").rename(voc["voc2012"] / "images")
        match = "not a VOC2012 folder"
    elif case == "no_seg_list":
        (voc["voc2012"] / "ImageSets" / "Segmentation" / "val.txt").unlink()
        match = "val.txt is missing"
    elif case == "bad_sbd":
        kw["sbd"] = voc["voc2012"]
        match = "not an SBD folder"
    elif case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("user data")
        match = "not empty.*--force"
    else:
        out = voc["voc2012"] / "prepared"
        match = "inside the source"
    with pytest.raises(UserError, match=match):
        prepare_voc(out, **kw)
    if case == "out_not_empty":
        assert (out / "keep.txt").read_text() == "user data"
    if case == "out_inside":
        assert not out.exists()


def test_cli_prepare_voc(voc, capsys):
    pytest.importorskip("mtlcli.cli.prepare")
    from mtlcli.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["prepare", "voc", "--voc2012", str(voc["root"] / "nope"), "--out", str(voc["out"])])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --voc2012") and "\n" not in err and "Traceback" not in err


def test_box_dt_bins_equals_edt_of_filled_boxes():
    """The closed-form box DT gives exactly targets.dt_bins of the box masks, border-touching and
    fractional boxes included."""
    rng = np.random.default_rng(3)
    shape = (H, W)
    cases = [[[0, 0, W, H]], [[0, 5, 20, H]], [[-3, -2, 60, 12.4]], [[40, 30, 50, 40]], [[10.5, 3.5, 30.49, 27.51]]]
    for _ in range(30):
        x0, y0 = rng.uniform(-5, W), rng.uniform(-5, H)
        cases.append([[x0, y0, x0 + rng.uniform(0, 30), y0 + rng.uniform(0, 20)] for _ in range(rng.integers(1, 4))])
    for boxes in cases:
        expected = dt_bins([box_mask(b, shape) for b in boxes], shape)
        np.testing.assert_array_equal(box_dt_bins(boxes, shape), expected, err_msg=str(boxes))


def test_prepared_voc_reads_back_through_prepared_dataset(voc):
    from mtlcli.data.dataset import PreparedDataset

    prepare_voc(voc["out"], voc2012=voc["voc2012"], sbd=voc["sbd"], workers=1)
    ds = PreparedDataset(voc["out"], "train_aug")
    index = [ds.image_info(i)["stem"] for i in range(len(ds))].index("2008_000004")
    image, target = ds[index]
    assert tuple(image.shape) == (3, H, W)
    # XML (3, 3, 10, 12) 1-based inclusive -> xyxy (2, 2, 10, 12): pixels 2..9 x 2..11
    assert target["boxes"].tolist() == [[2.0, 2.0, 10.0, 12.0]] and target["labels"].tolist() == [
        VOC_CLASSES.index("car") + 1
    ]
    assert int(target["masks"][0].sum()) == 8 * 10
    np.testing.assert_array_equal(target["semantic"].numpy(), LABELS["2008_000004"])


# --------------------------------------------------------------------------- the papers' splits, overlap


def prepare_all(voc, **kw) -> dict:
    return prepare_voc(voc["out"], voc2012=voc["voc2012"], voc2007=voc["voc2007"], sbd=voc["sbd"], workers=1, **kw)


def test_ivanet_split_is_voc07_trainval_plus_train_aug_without_evaluation_images(voc):
    summary = prepare_all(voc)
    out = voc["out"]
    paper = load_split(out, "trainval07_aug12")
    # VOC07 trainval {000001, 000009} + train_aug {2008_000001, 2008_000003, 2008_000004, 2008_000007};
    # 000009 is kept out (VOC2012 seg val holds a copy of it), 2008_000007 has no XML (no boxes)
    assert sorted(im["stem"] for im in paper["images"]) == ["000001", "2008_000001", "2008_000003", "2008_000004"]
    assert {
        "split": "trainval07_aug12",
        "file": "VOCdevkit/VOC2007/JPEGImages/000009.jpg",
        "reason": "same image as VOCdevkit/VOC2012/JPEGImages/2007_000009.jpg of the evaluation split val",
    } in summary["excluded"]
    assert {
        "split": "trainval",
        "file": "VOCdevkit/VOC2012/JPEGImages/2007_000002.jpg",
        "reason": "same image as VOCdevkit/VOC2007/JPEGImages/000002.jpg of the evaluation split test",
    } in summary["excluded"]
    assert {
        "split": "trainval",
        "file": "VOCdevkit/VOC2012/JPEGImages/2007_000009.jpg",
        "reason": "same image as VOCdevkit/VOC2007/JPEGImages/000009.jpg, kept once in this split",
    } in summary["excluded"]
    assert len(summary["excluded"]) == 3
    assert summary["voc2007_copies"] == {"bytes": 2, "name": 0, "unmatched": 0, "removed": 3}
    assert [s["file"] for s in summary["skipped"]] == ["benchmark_RELEASE/dataset/img/2008_000007.jpg"]
    # boxes from the XMLs (VOC07's and VOC12's), pixel labels where they exist (train_aug), none for VOC07
    anns = anns_by_stem(paper)
    assert [a["bbox"] for a in anns["000001"]] == [[1.0, 1.0, 29.0, 19.0]]
    assert [a["bbox"] for a in anns["2008_000003"]] == [[2.0, 2.0, 8.0, 10.0]]
    np.testing.assert_array_equal(
        read_label_png(out / "trainval07_aug12" / "semantic" / "2008_000004.png"), LABELS["2008_000004"]
    )
    np.testing.assert_array_equal(
        read_label_png(out / "trainval07_aug12" / "semantic" / "2008_000003.png"), MATS["2008_000003"]
    )
    assert not (out / "trainval07_aug12" / "semantic" / "000001.png").exists()
    # the copy is one image for the overlap: instances.json says which file it duplicates
    val = {im["stem"]: im for im in load_split(out, "val")["images"]}
    assert (
        val["2007_000009"]["same_as"] == "VOCdevkit/VOC2007/JPEGImages/000009.jpg"
        and "same_as" not in val["2008_000002"]
    )


def test_overlap_of_every_train_and_evaluation_split_is_reported(voc, capsys):
    summary = prepare_all(voc)
    expected = {
        # DATNet's VOC07+12 trainval contains VOC12 seg val (2008_000002, 2008_000005, 2007_000009): it is
        # evaluated on VOC07 test only
        "trainval": {
            "test": {"images": 0},
            "val": {"images": 3, "example": "VOCdevkit/VOC2012/JPEGImages/2007_000009.jpg"},
        },
        "train": {"test": {"images": 0}, "val": {"images": 0}},
        "train_aug": {"test": {"images": 0}, "val": {"images": 0}},
        "trainval07_aug12": {"test": {"images": 0}, "val": {"images": 0}},
    }
    assert summary["overlap"] == expected
    assert json.loads((voc["out"] / "dataset.json").read_text())["overlap"] == expected
    assert DatasetMeta.load(voc["out"]).overlap == expected
    printed = capsys.readouterr().out
    assert "train/eval overlap" in printed and "trainval07_aug12 │    0 │   0" in printed
    assert "trainval shares 3 image(s) with val" in printed


def reencode(path: Path, size: tuple[int, int] | None = None) -> None:
    """Write the JPEG again at another quality (other bytes, the same picture), or at another size."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        img = img.resize(size[::-1]) if size else img
    before = path.read_bytes()
    img.save(path, quality=60)
    assert path.read_bytes() != before


def training_identities(out: Path, split: str) -> set[str]:
    return {im.get("same_as") or im["file_name"] for im in load_split(out, split)["images"]}


def test_reencoded_2007_copies_are_matched_by_name_and_keep_voc07_test_out_of_training(voc, capsys):
    """VOC2012's `2007_*` files need not be byte-identical to VOC2007's: matched by the name mapping
    (2007_NNNNNN <-> NNNNNN) with a pixel-size check, every VOC07 test image stays out of every training
    split and a VOC07 trainval image trains once; a `2007_*` file of another size is not a copy."""
    v12, v07 = voc["voc2012"] / "JPEGImages", voc["voc2007"]
    for n in ("000002", "000009"):
        reencode(v12 / f"2007_{n}.jpg")
    write_jpeg(v07 / "JPEGImages" / "000003.jpg", 33)  # VOC07 test 000003 and a VOC12 file of another size
    write_xml(v07 / "Annotations" / "000003.xml", [("horse", (2, 2, 30, 20), 0)])
    (v07 / "ImageSets" / "Main" / "test.txt").write_text("000002\n000003\n")
    Image.new("RGB", (W + 8, H)).save(v12 / "2007_000003.jpg")
    write_xml(voc["voc2012"] / "Annotations" / "2007_000003.xml", [("cow", (2, 2, 9, 9), 0)])
    main = voc["voc2012"] / "ImageSets" / "Main" / "trainval.txt"
    main.write_text(main.read_text() + "2007_000003\n")

    summary = prepare_all(voc)
    out = voc["out"]
    assert summary["voc2007_copies"] == {"bytes": 0, "name": 2, "unmatched": 1, "removed": 3}
    test_files = {im["file_name"] for im in load_split(out, "test")["images"]}
    assert test_files == {"VOCdevkit/VOC2007/JPEGImages/000002.jpg", "VOCdevkit/VOC2007/JPEGImages/000003.jpg"}
    for split in ("trainval", "train", "train_aug", "trainval07_aug12"):
        assert not training_identities(out, split) & test_files, split
    stems = sorted(im["stem"] for im in load_split(out, "trainval")["images"])
    assert "2007_000002" not in stems and stems.count("000009") + stems.count("2007_000009") == 1
    assert "2007_000003" in stems  # another picture under a VOC2007 name: kept, not a copy
    val = {im["stem"]: im for im in load_split(out, "val")["images"]}
    assert val["2007_000009"]["same_as"] == "VOCdevkit/VOC2007/JPEGImages/000009.jpg"
    assert summary["overlap"]["trainval07_aug12"] == {"test": {"images": 0}, "val": {"images": 0}}
    printed = capsys.readouterr()
    assert "0 by bytes, 2 by name" in " ".join(printed.out.split()) and "warning" not in printed.err


def test_voc07_and_voc12_prepare_that_removes_nothing_warns(voc, capsys):
    for n in ("000002", "000009"):  # no copy recognisable: other pixel sizes
        reencode(voc["voc2012"] / "JPEGImages" / f"2007_{n}.jpg", size=(H + 4, W))
    summary = prepare_all(voc)
    assert summary["voc2007_copies"]["removed"] == 0
    assert "warning: no image was removed from a training split" in " ".join(capsys.readouterr().err.split())


def test_overlap_counts_byte_identical_copies_and_shared_files():
    from mtlcli.data.overlap import overlap_report

    images = {
        "train": [
            {"file_name": "a.jpg"},
            {"file_name": "VOC2012/2007_1.jpg", "same_as": "VOC2007/1.jpg"},
            {"file_name": "b.jpg"},
        ],
        "val": [{"file_name": "b.jpg"}, {"file_name": "c.jpg"}],
        "test": [{"file_name": "VOC2007/1.jpg"}, {"file_name": "d.jpg"}],
    }
    assert overlap_report(images) == {
        "train": {"val": {"images": 1, "example": "b.jpg"}, "test": {"images": 1, "example": "VOC2007/1.jpg"}}
    }


def test_trainval_semantic_target_is_painted_from_the_boxes(voc):
    """DATNet on VOC uses no extra annotation: trainval's semantic map comes from its XML boxes, larger
    boxes first, difficult ones as ignore — never from the VOC12/SBD pixel labels."""
    prepare_all(voc)

    def sem(stem):
        return read_label_png(voc["out"] / "trainval" / "semantic" / f"{stem}.png")

    def idx(name):
        return VOC_CLASSES.index(name) + 1

    # 2008_000001: dog (5, 3, 20, 30), a difficult person over the whole image, cat (30, 20, 40, 28)
    expected = np.full((H, W), 255, np.uint8)  # the difficult person is the largest box: painted first
    expected[2:30, 4:20] = idx("dog")
    expected[19:28, 29:40] = idx("cat")
    np.testing.assert_array_equal(sem("2008_000001"), expected)
    # 2008_000006: a cat listed before the car box it lies on stays visible
    expected = np.zeros((H, W), np.uint8)
    expected[3:30, 3:40] = idx("car")
    expected[10:20, 10:20] = idx("cat")
    np.testing.assert_array_equal(sem("2008_000006"), expected)
    # 2008_000004 has a pixel label (PNG and .mat): trainval still paints its box
    expected = np.zeros((H, W), np.uint8)
    expected[2:12, 2:10] = idx("car")
    np.testing.assert_array_equal(sem("2008_000004"), expected)
    # a VOC07 image gets its box-painted map too
    expected = np.zeros((H, W), np.uint8)
    expected[1:20, 1:30] = idx("horse")
    np.testing.assert_array_equal(sem("000001"), expected)


VOC_RECIPES = [
    "ivanet300",
    "ivanet300-det",
    "ivanet300-seg",
    "ivanet300-noltd",
    "ivanet512",
    "ivanet512-det",
    "ivanet512-seg",
    "ivanet512-noltd",
    "blitznet300",
    "datnet-light-r50-voc",
    "maskrcnn-r50-voc",
    "fasterrcnn-r50-voc",
]


def test_every_voc_recipe_uses_the_papers_splits_without_overlap(voc):
    from types import SimpleNamespace

    from mtlcli.data.overlap import check_no_overlap
    from mtlcli.recipes import available_recipes, load_recipe

    shipped = [n for n in available_recipes() if load_recipe(n)["data"]["dataset"] == "voc"]
    assert sorted(shipped) == sorted(VOC_RECIPES)
    prepare_all(voc)
    meta = DatasetMeta.load(voc["out"])
    for name in VOC_RECIPES:
        recipe = load_recipe(name)
        data = recipe["data"]
        assert not data["allow_overlap"], name
        evals = [s for s in (data["val_split"], data["test_split"]) if s]
        assert all(s in meta.splits for s in [data["train_split"], *evals]), name
        if name.startswith(("ivanet", "blitznet")):
            # VOC07 trainval + VOC12 train_aug (the segmentation-only variant: train_aug), tested on
            # VOC07 test and VOC12 seg val; best.pt on seg val, which it never trains on
            assert data["train_split"] == ("train_aug" if name.endswith("-seg") else "trainval07_aug12"), name
            assert (
                data["val_split"] == "val" and data["test_split"] in ("test", "") and recipe["eval"]["best_metric"]
            ), name
        else:  # DATNet / Mask R-CNN / Faster R-CNN: VOC07+12 trainval -> VOC07 test
            assert (data["train_split"], data["val_split"]) == ("trainval", "test"), name
        counts = check_no_overlap(recipe, SimpleNamespace(root=voc["out"], split=data["train_split"]))
        assert counts == {s: 0 for s in evals}, name


def test_train_refuses_a_train_split_that_shares_evaluation_images(voc, tmp_path, tiny_registered, capsys):
    from mtlcli.cli.main import main
    from mtlcli.engine.train import train
    from tests.engine.tiny_model import tiny_recipe

    prepare_all(voc)
    common = [
        "data.dataset=voc",
        "train.iterations=1",
        "train.batch_size=2",
        "model.num_det_classes=20",
        "model.num_seg_classes=21",
        "eval.metrics=voc07",
        "eval.batch_size=2",
    ]
    recipe = tiny_recipe(tmp_path, voc["out"], *common, "data.train_split=trainval", "data.val_split=val")
    with pytest.raises(
        UserError,
        match=r"data.train_split 'trainval' shares 3 image\(s\) with data.val_split 'val' .*"
        r"e.g. VOCdevkit/VOC2012/JPEGImages/2007_000009.jpg.*--set data.allow_overlap=true",
    ):
        train(recipe, tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused" / "checkpoints").exists()
    # the VOC07 test copy was kept out of trainval: trainval -> test is allowed
    recipe = tiny_recipe(tmp_path, voc["out"], *common, "data.train_split=trainval", "data.val_split=test")
    assert train(recipe, tmp_path / "datnet", progress=False)["iteration"] == 1
    # a test_split is checked like the val_split
    recipe = tiny_recipe(
        tmp_path, voc["out"], *common, "data.train_split=trainval", "data.val_split=test", "data.test_split=val"
    )
    with pytest.raises(UserError, match=r"shares 3 image\(s\) with data.test_split 'val'"):
        train(recipe, tmp_path / "refused2", progress=False)
    # a deliberate overlap
    recipe = tiny_recipe(
        tmp_path, voc["out"], *common, "data.train_split=trainval", "data.val_split=val", "data.allow_overlap=true"
    )
    assert train(recipe, tmp_path / "allowed", progress=False)["iteration"] == 1
    # the paper's IvaNet protocol trains
    recipe = tiny_recipe(
        tmp_path, voc["out"], *common, "data.train_split=trainval07_aug12", "data.val_split=val", "data.test_split=test"
    )
    assert train(recipe, tmp_path / "ivanet", progress=False)["iteration"] == 1

    # `mtl train`: one line on stderr, exit status 2
    sets = [a for item in [*common, "data.train_split=trainval", "data.val_split=val"] for a in ("--set", item)]
    args = [
        "train",
        "--recipe",
        str(tmp_path / "tiny.toml"),
        "--data",
        str(voc["out"]),
        "--out",
        str(tmp_path / "cli"),
        "--quiet",
        *sets,
    ]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.train_split 'trainval' shares 3 image(s)") and "\n" not in err


def test_a_missing_test_split_is_named(voc, tmp_path, tiny_registered):
    from mtlcli.engine.train import train
    from tests.engine.tiny_model import tiny_recipe

    prepare_voc(voc["out"], voc2012=voc["voc2012"], workers=1)  # no VOC2007: no test split
    recipe = tiny_recipe(tmp_path, voc["out"], "data.dataset=voc", "data.train_split=train", "data.test_split=test")
    with pytest.raises(UserError, match=r"data.test_split 'test' is not a split of .* --set data.test_split=''"):
        train(recipe, tmp_path / "run", progress=False)
