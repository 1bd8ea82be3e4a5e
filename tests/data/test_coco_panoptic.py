"""`mtl prepare coco-panoptic`: a custom COCO panoptic export with its own stuff classes, and Cityscapes'
panoptic files (the synthetic city's, written by cityscapesscripts' createPanopticImgs) read through the
same path and equal to what `prepare cityscapes` makes from the same ground truth; the panoptic ground truth
`mtl eval --metric pq` derives for the prepared city equals those files by the official evaluation."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mtlcli.data.coco_panoptic import PanopticSplit, prepare_coco_panoptic
from mtlcli.data.prepared import DatasetMeta, read_label_png
from mtlcli.ops.panoptic import id2rgb
from tests.metrics.panoptic_fixtures import make_scene

# a user's own label set: ids and names that are no other dataset's
OWN = {7: (101, "floor"), 8: (102, "rug"), 11: (103, "wall"), 21: (104, "plant"), 23: (105, "ceiling")}
OWN_THINGS = {24: (201, "robot"), 26: (202, "box"), 33: (203, "chair")}


def write_custom_panoptic(root: Path, n: int, size=(48, 96), seed=0) -> tuple[Path, Path, Path]:
    """images/*.jpg, panoptic/*.png and panoptic.json as a CVAT / Label Studio export writes them."""
    rng = np.random.default_rng(seed)
    table = {**OWN, **OWN_THINGS}
    (root / "images").mkdir(parents=True)
    (root / "panoptic").mkdir()
    images, anns = [], []
    for i in range(n):
        ids, segs = make_scene(rng, *size)
        # renumber: own category ids, segment ids as an exporter gives them (1, 2, ...)
        out = np.zeros_like(ids)
        infos = []
        for k, s in enumerate(segs, start=1):
            out[ids == s["id"]] = k
            infos.append({**s, "id": k, "category_id": table[s["category_id"]][0]})
        colour = (np.asarray(id2rgb(out), np.int16) * 37 % 255).astype(np.uint8)
        Image.fromarray(colour).save(root / "images" / f"frame{i}.jpg", quality=95)
        Image.fromarray(id2rgb(out)).save(root / "panoptic" / f"frame{i}.png")
        images.append({"id": 500 + i, "file_name": f"frame{i}.jpg", "height": size[0], "width": size[1]})
        anns.append({"image_id": 500 + i, "file_name": f"frame{i}.png", "segments_info": infos})
    cats = [{"id": cid, "name": name, "isthing": 0} for cid, name in OWN.values()]
    cats += [{"id": cid, "name": name, "isthing": 1} for cid, name in OWN_THINGS.values()]
    (root / "panoptic.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root / "panoptic.json", root / "panoptic", root / "images"


def test_custom_panoptic_export_becomes_things_and_stuff(tmp_path):
    js, pngs, images = write_custom_panoptic(tmp_path / "src", 4)
    out = tmp_path / "data"
    prepare_coco_panoptic([PanopticSplit("train", js, pngs, images)], out, workers=1, quiet=True)
    meta = DatasetMeta.load(out)
    assert meta.seg_classes == ["floor", "rug", "wall", "plant", "ceiling", "robot", "box", "chair"]
    assert meta.det_classes == meta.thing_classes == ["robot", "box", "chair"]
    assert meta.panoptic_category_ids == [101, 102, 103, 104, 105, 201, 202, 203]
    assert meta.det_category_ids == [201, 202, 203]
    src = json.loads(js.read_text())
    inst = json.loads((out / "train" / "instances.json").read_text())
    kept = json.loads((out / "train" / "panoptic.json").read_text())
    by_name = {im["file_name"]: im for im in inst["images"]}
    for ann in src["annotations"]:
        im = by_name[ann["file_name"].replace(".png", ".jpg")]
        ids = np.asarray(Image.open(pngs / ann["file_name"]), np.uint32)
        ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
        semantic = read_label_png(out / "train" / "semantic" / f"{im['stem']}.png")
        expect = np.full(ids.shape, 255, np.uint8)
        things = []
        for s in ann["segments_info"]:
            cls = meta.panoptic_category_ids.index(s["category_id"])
            expect[ids == s["id"]] = cls
            if s["category_id"] >= 200:
                things.append((s["category_id"] - 200, s["iscrowd"], int((ids == s["id"]).sum())))
        assert (semantic == expect).all()  # stuff and things by class, void = ignore
        mine = [a for a in inst["annotations"] if a["image_id"] == im["id"]]
        got = sorted((a["category_id"], a["iscrowd"], int(mask_utils.area(a["segmentation"]))) for a in mine)
        assert got == sorted(things)
        # the panoptic ground truth is the source's, under the prepared image id
        entry = next(a for a in kept["annotations"] if a["image_id"] == im["id"])
        assert entry["segments_info"] == ann["segments_info"]
        assert (out / "train" / "panoptic" / entry["file_name"]).read_bytes() == (pngs / ann["file_name"]).read_bytes()
    assert {c["id"]: c["isthing"] for c in kept["categories"]} == {c["id"]: c["isthing"] for c in src["categories"]}


def test_cityscapes_panoptic_equals_prepare_cityscapes(tmp_path, synthetic_source, synthetic_prepared):
    """The synthetic city's own Cityscapes panoptic files (createPanopticImgs' output, written by the
    generator), prepared by coco-panoptic, give the same semantic maps and the same instances (mask, class,
    crowd) as `prepare cityscapes` on its polygons' PNGs."""
    gt = synthetic_source / "gtFine"
    split = PanopticSplit(
        "train",
        gt / "cityscapes_panoptic_val.json",
        gt / "cityscapes_panoptic_val",
        synthetic_source / "leftImg8bit" / "val",
    )
    ours = tmp_path / "ours"
    summary = prepare_coco_panoptic([split], ours, workers=1, quiet=True)
    assert summary["skipped"] == []
    meta_ref, meta = DatasetMeta.load(synthetic_prepared), DatasetMeta.load(ours)
    assert meta.seg_classes == meta_ref.seg_classes and meta.det_classes == meta_ref.det_classes

    def by_base(root: Path, split: str):
        data = json.loads((root / split / "instances.json").read_text())
        out = {}
        for im in data["images"]:
            anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
            out[Path(im["file_name"]).name] = (
                read_label_png(root / split / "semantic" / f"{im['stem']}.png"),
                sorted((a["category_id"], a["iscrowd"], a["segmentation"]["counts"]) for a in anns),
            )
        return out

    a, b = by_base(synthetic_prepared, "val"), by_base(ours, "train")
    assert a.keys() == b.keys() and len(a) == 3
    for name in a:
        assert (a[name][0] == b[name][0]).all(), name
        assert a[name][1] == b[name][1], name


def test_derived_panoptic_ground_truth_equals_the_synthetic_citys_files(tmp_path, synthetic_source, synthetic_prepared):
    """The panoptic ground truth `mtl eval --metric pq` scores the synthetic city against (derived from its
    prepared instances + semantic maps: PanopticTruth) is the generator's createPanopticImgs files: the
    official evaluatePanoptic of ours against them gives PQ = SQ = RQ = 1 for all, things and stuff."""
    official = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")
    from pycocotools import mask as mask_utils

    from mtlcli.data.panoptic import PanopticTruth
    from mtlcli.data.prepared import semantic_path
    from mtlcli.metrics.predictions import GroundTruth

    gt = GroundTruth.load(synthetic_prepared, "val")
    truth = PanopticTruth(gt.root, "val", gt.meta)
    assert not truth.kept  # `prepare cityscapes` keeps no panoptic files: eval derives them
    (tmp_path / "ours").mkdir()
    anns = []
    for img in gt.images():  # what evaluate_panoptic_files / PanopticStep hand PanopticTruth

        def derive(img=img):
            sem = read_label_png(semantic_path(gt.root, "val", img["stem"]))
            objs = gt.coco.imgToAnns.get(img["id"], [])
            masks = [mask_utils.decode(gt.coco.annToRLE(a)).astype(bool) for a in objs]
            return sem, masks, [a["category_id"] for a in objs], [a.get("iscrowd", 0) for a in objs]

        ids, segments = truth.get(img["stem"], derive)
        image_id = Path(img["file_name"]).name.replace("_leftImg8bit.png", "")  # the official image id
        Image.fromarray(id2rgb(ids)).save(tmp_path / "ours" / f"{image_id}.png")
        anns.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments})
    theirs_json = synthetic_source / "gtFine" / "cityscapes_panoptic_val.json"
    theirs = json.loads(theirs_json.read_text())
    assert [c["id"] for c in truth.categories] == [c["id"] for c in theirs["categories"]]  # labelIds
    (tmp_path / "ours.json").write_text(json.dumps({"annotations": anns, "categories": truth.categories}))
    with contextlib.redirect_stdout(io.StringIO()):
        res = official.evaluatePanoptic(
            str(theirs_json), str(synthetic_source / "gtFine" / "cityscapes_panoptic_val"), str(tmp_path / "ours.json"),
            str(tmp_path / "ours"), str(tmp_path / "res.json"),
        )  # fmt: skip
    for group in ("All", "Things", "Stuff"):
        assert res[group]["n"] > 0 and res[group]["pq"] == res[group]["sq"] == res[group]["rq"] == 1.0, group
    assert len(anns) == len(theirs["annotations"]) == 3
    for a, b in zip(sorted(anns, key=lambda a: a["image_id"]), theirs["annotations"], strict=True):
        assert a["image_id"] == b["image_id"] and len(a["segments_info"]) == len(b["segments_info"])
        assert sorted(s["iscrowd"] for s in a["segments_info"]) == sorted(s["iscrowd"] for s in b["segments_info"])
