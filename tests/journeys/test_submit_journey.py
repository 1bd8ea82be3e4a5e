"""Test servers end to end: prepare an unlabelled split in each dataset's real layout, train a tiny model a
few steps, `mtl eval --submit`, and read what was written with the servers' own tools — pycocotools'
loadRes on COCO's image-info file, cityscapesscripts' evaluations on labelled Cityscapes files, the VOC
devkit's conventions (palette PNGs, `<image> <score> <xmin> <ymin> <xmax> <ymax>` with 1-based pixels).

The model is the engine tests' tiny multi-task model (a whole-image box per class, scored by class
presence, and a semantic map) with a mask per box (the image's left half), so every server file is
exercised, instance masks included."""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.cli.main import main
from mtlcli.data.prepared import DatasetMeta
from mtlcli.models import MODELS
from tests.data.test_voc import voc  # noqa: F401 (fixture: VOC2007 + VOC2012 + SBD in the real layouts)
from tests.engine.tiny_model import TinyMultiTask, tiny_recipe

ENTRY = "tests.journeys.test_submit_journey:build_tiny_masks"


class TinyWithMasks(TinyMultiTask):
    """The tiny model, and for each box a mask: the left half of the image (scores 0..1)."""

    def postprocess(self, raw, original_sizes):  # type: ignore[no-untyped-def]
        out = super().postprocess(raw, original_sizes)
        for o, (h, w) in zip(out, original_sizes, strict=True):
            masks = torch.zeros(len(o["boxes"]), 1, h, w)
            masks[..., : max(w // 2, 1)] = 0.9
            o["masks"] = masks
        return out


def build_tiny_masks(num_det_classes: int = 2, num_seg_classes: int = 3, input_size: int = 32, width: int = 8):
    return TinyWithMasks(num_det_classes, num_seg_classes, input_size, width, 0.0)


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, "tiny_masks", ENTRY)


def train_tiny(tmp_path: Path, data: Path, det: int, seg: int, *overrides: str) -> Path:
    from mtlcli.engine.train import train

    recipe = tiny_recipe(
        tmp_path,
        data,
        "model.name=tiny_masks",
        f"model.num_det_classes={det}",
        f"model.num_seg_classes={seg}",
        "train.iterations=2",
        "train.batch_size=2",
        "train.checkpoint_interval=2",
        *overrides,
    )
    run = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        train(recipe, run, progress=False)
    return run


def mtl(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def eval_run(capsys: pytest.CaptureFixture, run: Path, split: str, *args: str) -> tuple[int, str, str]:
    """`mtl eval --run RUN --split SPLIT -q --device cpu ARGS...`."""
    return mtl(capsys, "eval", "--run", str(run), "--split", split, "-q", "--device", "cpu", *args)


def refuses_to_score(capsys, run: Path, split: str) -> None:
    code, _, err = eval_run(capsys, run, split, "-m", "miou")
    assert code == 2 and "unlabelled" in err and "--submit" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- COCO
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 3, "name": "car", "supercategory": "v"},
              {"id": 90, "name": "toothbrush", "supercategory": "indoor"}]  # fmt: skip


def coco_tree(root: Path) -> Path:
    """COCO 2017's layout: instances_{train,val}2017.json, and image_info_test-dev2017.json (images and
    categories, no annotations, as COCO ships it) for images in test2017/."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    ids = {"train": [42, 7], "val": [5, 6], "test-dev": [139, 285, 632]}
    for split, image_ids in ids.items():
        folder = root / ("test2017" if split == "test-dev" else f"{split}2017")
        folder.mkdir()
        images = []
        for i in image_ids:
            name = f"{i:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(folder / name)
            images.append({"id": i, "file_name": name, "height": 24, "width": 40, "license": 1})
        data = {"info": {"year": 2017}, "licenses": [], "images": images, "categories": CATEGORIES}
        if split == "test-dev":
            (root / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(data))
            continue
        # a person over the whole image (the tiny model's box: a perfect match), a car and a toothbrush
        # in a corner (poor matches): a score that depends on every id being mapped back right
        boxes = {1: [0, 0, 40, 24], 3: [2, 2, 10, 8], 90: [20, 12, 12, 8]}
        data["annotations"] = [
            {"id": 10 * i + c, "image_id": i, "category_id": c, "bbox": b, "area": float(b[2] * b[3]), "iscrowd": 0,
             "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3], b[0], b[1] + b[3]]]}
            for i in image_ids for c, b in boxes.items()
        ]  # fmt: skip
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


def test_coco_test_dev_submission_reads_back_through_pycocotools(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    src = coco_tree(tmp_path / "coco")
    data = tmp_path / "data"
    info = src / "annotations" / "image_info_test-dev2017.json"
    code, _, err = mtl(capsys, "prepare", "coco", str(src), "--image-info", str(info), "--out", str(data), "-q")
    assert code == 0, err
    meta = DatasetMeta.load(data)
    assert meta.splits == ["train", "val", "test-dev"] and meta.unlabelled == ["test-dev"]
    test_dev = json.loads((data / "test-dev" / "instances.json").read_text())
    assert test_dev["annotations"] == [] and len(test_dev["categories"]) == 3
    assert sorted(im["coco_id"] for im in test_dev["images"]) == [139, 285, 632]
    assert not (data / "test-dev" / "semantic").exists()

    run = train_tiny(tmp_path, data, 3, 4)
    refuses_to_score(capsys, run, "test-dev")
    code, _, err = mtl(capsys, "eval", "--predictions", str(tmp_path), "--data", str(data), "--split", "test-dev")
    assert code == 2 and "unlabelled" in err
    from mtlcli.engine.data import build_datasets
    from mtlcli.errors import UserError

    for key in ("train_split", "val_split"):  # nothing trains or selects a checkpoint on it either
        recipe = tiny_recipe(
            tmp_path, data, "model.name=tiny_masks", f"data.{key}=test-dev", "eval.metrics=['coco-bbox']"
        )
        with pytest.raises(UserError, match="unlabelled"):
            build_datasets(recipe, data)

    sub = tmp_path / "sub"
    code, out, err = eval_run(capsys, run, "test-dev", "--submit", str(sub), "--submit-name", "tiny")
    assert code == 0, err
    assert "upload" in out
    for bad, says in (
        (["--submit", str(sub)], "not empty"),  # nothing the user had is replaced without --force
        (["--submit", str(data / "sub")], "prepared dataset"),  # an output is never inside an input
        (["--submit", str(tmp_path / "x"), "--submit-name", "a_b"], "--submit-name"),
        (["--submit", str(tmp_path / "x"), "-m", "coco-bbox"], "--submit"),
    ):
        code, _, err = eval_run(capsys, run, "test-dev", *bad)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, bad
    gt = COCO(str(info))  # the image-info file as downloaded: images and categories only
    for kind in ("bbox", "segm"):
        name = "detections_test-dev2017_tiny_results"
        with zipfile.ZipFile(sub / kind / f"{name}.zip") as z:
            assert z.namelist() == [f"{name}.json"]  # the JSON alone at the root of the zip
            results = json.loads(z.read(f"{name}.json"))
        assert results == json.loads((sub / kind / f"{name}.json").read_text())
        assert all(("segmentation" in r) == (kind == "segm") for r in results)  # (loadRes adds one to bbox results)
        dt = gt.loadRes(results)  # asserts every image id is one of the image-info file's
        assert {a["image_id"] for a in dt.dataset["annotations"]} == {139, 285, 632}
        assert {a["category_id"] for a in dt.dataset["annotations"]} == {1, 3, 90}  # the source's ids
        if kind == "segm":  # the mask is the left half of each 24x40 image
            assert all(dt.annToMask(a)[:, :20].all() and not dt.annToMask(a)[:, 20:].any() for a in results[:3])
        else:
            assert all(r["bbox"] == [0.0, 0.0, 40.0, 24.0] for r in results)

    # on val, the same files score with COCOeval on instances_val2017.json as mtl eval scores the run
    val_sub = tmp_path / "val_sub"
    assert eval_run(capsys, run, "val", "--submit", str(val_sub))[0] == 0
    assert eval_run(capsys, run, "val", "-m", "coco-bbox,coco-segm", "--out", str(tmp_path / "val.json"))[0] == 0
    ours = json.loads((tmp_path / "val.json").read_text())["metrics"]
    val_gt = COCO(str(src / "annotations" / "instances_val2017.json"))
    for kind in ("bbox", "segm"):
        results = val_gt.loadRes(str(val_sub / kind / "detections_val2017_mtl_results.json"))
        ev = COCOeval(val_gt, results, kind)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate(), ev.accumulate(), ev.summarize()
        assert ours[f"coco-{kind}"] > 0.01 and ev.stats[0] == pytest.approx(ours[f"coco-{kind}"], abs=1e-3), kind


# ------------------------------------------------------------------------------------------ Cityscapes
def test_cityscapes_test_submission_is_what_cityscapesscripts_reads(synthetic_source, tmp_path, capsys, monkeypatch):
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as inst
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as pixel
    from cityscapesscripts.helpers.labels import labels

    src = tmp_path / "cityscapes"
    shutil.copytree(synthetic_source, src)
    # leftImg8bit/test as Cityscapes ships it (gtFine/test holds placeholders, never read)
    for k, image in enumerate(sorted((src / "leftImg8bit" / "val").glob("*/*.png"))):
        target = src / "leftImg8bit" / "test" / "berlin" / f"berlin_{k:06d}_000019_leftImg8bit.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    data = tmp_path / "data"
    assert mtl(capsys, "prepare", "cityscapes", str(src), "--out", str(data), "-q", "-j", "1")[0] == 0
    meta = DatasetMeta.load(data)
    assert meta.splits == ["train", "val", "test"] and meta.unlabelled == ["test"]
    test = json.loads((data / "test" / "instances.json").read_text())
    assert len(test["images"]) == 3 and test["annotations"] == [] and test["images"][0]["city"] == "berlin"
    only = tmp_path / "only_test"  # leftImg8bit_trainvaltest.zip's test images alone: no gtFine needed
    shutil.copytree(src / "leftImg8bit" / "test", only / "leftImg8bit" / "test")
    assert (
        mtl(capsys, "prepare", "cityscapes", str(only), "--split", "test", "--out", str(tmp_path / "d2"), "-q")[0] == 0
    )
    assert DatasetMeta.load(tmp_path / "d2").unlabelled == ["test"]

    run = train_tiny(tmp_path, data, 8, 19)
    refuses_to_score(capsys, run, "test")
    sub = tmp_path / "sub"
    code, _, err = mtl(
        capsys, "eval", "--run", str(run), "--split", "test", "--submit", str(sub), "-q", "--device", "cpu"
    )
    assert code == 0, err
    pngs = sorted(p.name for p in (sub / "pixel").glob("*.png"))
    assert pngs == [f"berlin_{k:06d}_000019_leftImg8bit_labelIds.png" for k in range(3)]
    train_label_ids = {lab.id for lab in labels if lab.trainId not in (255, -1) and lab.id >= 0}
    for p in (sub / "pixel").glob("*.png"):
        values = set(np.unique(np.array(Image.open(p))).tolist())
        assert Image.open(p).size == (128, 64) and values <= train_label_ids | {0}
    with zipfile.ZipFile(sub / "pixel.zip") as z:
        assert sorted(z.namelist()) == pngs

    # val: cityscapesscripts' own evaluations read the files against the source's gtFine
    val_sub = tmp_path / "val_sub"
    assert eval_run(capsys, run, "val", "--submit", str(val_sub))[0] == 0
    assert eval_run(capsys, run, "val", "-m", "miou", "--out", str(tmp_path / "val.json"))[0] == 0
    ours = json.loads((tmp_path / "val.json").read_text())["metrics"]["miou"]
    monkeypatch.setattr(np, "in1d", lambda a, b, invert=False: np.isin(np.asarray(a).ravel(), b, invert=invert),
                        raising=False)  # fmt: skip
    args = copy.copy(pixel.args)
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    args.predictionPath, args.predictionWalk = str(val_sub / "pixel"), None
    gts = sorted(glob.glob(str(src / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    official = pixel.evaluateImgLists([pixel.getPrediction(args, gt) for gt in gts], gts, args)
    assert official["averageScoreClasses"] == pytest.approx(ours, abs=1e-9)

    args = copy.copy(inst.args)
    args.JSONOutput, args.quiet, args.gtInstancesFile = False, True, str(tmp_path / "gtInstances.json")
    args.predictionPath, args.predictionWalk = str((val_sub / "instance").resolve()), None
    inst.setInstanceLabels(args)
    gts = sorted(glob.glob(str(src / "gtFine" / "val" / "*" / "*_gtFine_instanceIds.png")))
    # the script's JSON writer fails on numpy 2 integers, and it writes matches.json into the working folder
    monkeypatch.setattr(inst, "writeDict2JSON", lambda d, f: Path(f).write_text(
        json.dumps(d, default=lambda o: int(o) if isinstance(o, np.integer) else o.__dict__)))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    preds = [inst.getPrediction(gt, args) for gt in gts]
    for pred in preds:
        info = inst.readPredInfo(pred, args)  # relative paths inside the folder, labelId, confidence
        assert info and {v["labelID"] for v in info.values()} == {24, 25, 26, 27, 28, 31, 32, 33}
        mask = np.array(Image.open(next(iter(info))))
        assert mask.shape == (64, 128) and mask[:, :64].all() and not mask[:, 64:].any()
    with contextlib.redirect_stdout(io.StringIO()):
        result = inst.evaluateImgLists(preds, gts, args)
    assert 0.0 <= result["averages"]["allAp"] <= 1.0


# ----------------------------------------------------------------------------------------- PASCAL VOC
def test_voc2012_test_submission_in_the_devkit_layout(voc, tmp_path, capsys):  # noqa: F811
    v12 = voc["voc2012"]
    rng = np.random.default_rng(1)
    for n in ("2008_100001", "2008_100002", "2008_100003"):  # VOC2012test.tar: images and the test lists
        Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(v12 / "JPEGImages" / f"{n}.jpg")
    (v12 / "ImageSets" / "Main" / "test.txt").write_text("2008_100001\n2008_100002\n")
    (v12 / "ImageSets" / "Segmentation" / "test.txt").write_text("2008_100002\n2008_100003\n")
    data = tmp_path / "data"
    args = ["prepare", "voc", "--voc2012", str(v12), "--voc2007", str(voc["voc2007"]), "--out", str(data), "-q"]
    assert mtl(capsys, *args, "-j", "1")[0] == 0
    meta = DatasetMeta.load(data)
    assert "test2012" in meta.splits and meta.unlabelled == ["test2012"]
    sets = {
        im["stem"]: im["voc_sets"] for im in json.loads((data / "test2012" / "instances.json").read_text())["images"]
    }
    assert sets == {"2008_100001": ["main"], "2008_100002": ["main", "segmentation"], "2008_100003": ["segmentation"]}

    run = train_tiny(tmp_path, data, 20, 21, "data.train_split=train", "data.val_split=val")
    refuses_to_score(capsys, run, "test2012")
    sub = tmp_path / "sub"
    code, _, err = mtl(
        capsys, "eval", "--run", str(run), "--split", "test2012", "--submit", str(sub), "-q", "--device", "cpu"
    )
    assert code == 0, err
    seg = sub / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert sorted(p.name for p in seg.iterdir()) == ["2008_100002.png", "2008_100003.png"]
    from mtlcli.data.voc import voc_colormap

    for p in seg.iterdir():
        with Image.open(p) as img:  # what the devkit's imread gives: palette indices 0..20, VOC colours
            assert img.mode == "P" and img.size == (44, 30)
            assert np.array(img).max() <= 20
            assert np.array(img.getpalette()[: 21 * 3]).reshape(21, 3).tolist() == voc_colormap(21)
    main_dir = sub / "results" / "VOC2012" / "Main"
    from mtlcli.data.voc import VOC_CLASSES

    assert sorted(p.name for p in main_dir.iterdir()) == sorted(f"comp4_det_test_{c}.txt" for c in VOC_CLASSES)
    for c in VOC_CLASSES:
        lines = (main_dir / f"comp4_det_test_{c}.txt").read_text().splitlines()
        # VOCevaldet's textread('%s %f %f %f %f %f'); the whole-image box of a 44x30 image in the devkit's
        # 1-based inclusive pixels is 1 1 44 30, as its XMLs write it
        assert sorted(line.split()[0] for line in lines) == ["2008_100001", "2008_100002"]
        for line in lines:
            image, score, *box = line.split()
            assert 0.0 <= float(score) <= 1.0 and [float(v) for v in box] == [1.0, 1.0, 44.0, 30.0]
    with tarfile.open(sub / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "results/VOC2012/Main/comp4_det_test_car.txt" in names
    assert "results/VOC2012/Segmentation/comp6_test_cls/2008_100003.png" in names

    # VOC2007 test (labelled, boxes only): the detection files under VOC2007, no segmentation set
    sub07 = tmp_path / "sub07"
    assert eval_run(capsys, run, "test", "--submit", str(sub07))[0] == 0
    assert not (sub07 / "results" / "VOC2007" / "Segmentation").exists()
    lines = (sub07 / "results" / "VOC2007" / "Main" / "comp4_det_test_horse.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["000002"] and lines[0].split()[2:] == ["1.0", "1.0", "48.0", "32.0"]


def test_cityscapes_files_of_the_ground_truth_score_perfectly(
    synthetic_prepared, synthetic_source, tmp_path, monkeypatch
):
    """The writer fed the val ground truth itself (trainIds, instance masks): cityscapesscripts reads the
    files back to IoU 1 for every class present and AP 1 — labelIds, label ids, paths and masks all right."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as inst
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as pixel

    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.metrics.submit import open_submission

    ds = PreparedDataset(synthetic_prepared, "val")
    out = tmp_path / "sub"
    writer = open_submission(out, ds.meta, "val", ds.coco.dataset["images"], "gt")
    for i in range(len(ds)):
        _, t = ds[i]
        keep = t["iscrowd"] == 0
        semantic = t["semantic"].as_subclass(torch.Tensor).clone()
        semantic[semantic == 255] = 0  # void in the ground truth: not scored
        output = {
            "boxes": t["boxes"].as_subclass(torch.Tensor)[keep],
            "labels": t["labels"][keep],
            "scores": torch.ones(int(keep.sum())),
            "masks": t["masks"].as_subclass(torch.Tensor)[keep][:, None].float(),
            "sem_seg": torch.nn.functional.one_hot(semantic, 19).permute(2, 0, 1).float(),
        }
        writer.add(int(t["image_id"]), output)
    writer.close()

    monkeypatch.setattr(np, "in1d", lambda a, b, invert=False: np.isin(np.asarray(a).ravel(), b, invert=invert),
                        raising=False)  # fmt: skip
    args = copy.copy(pixel.args)
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    args.predictionPath, args.predictionWalk = str(out / "pixel"), None
    gts = sorted(glob.glob(str(synthetic_source / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    official = pixel.evaluateImgLists([pixel.getPrediction(args, gt) for gt in gts], gts, args)
    present = [v for v in official["classScores"].values() if v == v]
    assert present and all(v == pytest.approx(1.0) for v in present)

    monkeypatch.setattr(inst, "writeDict2JSON", lambda d, f: Path(f).write_text(
        json.dumps(d, default=lambda o: int(o) if isinstance(o, np.integer) else o.__dict__)))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    args = copy.copy(inst.args)
    args.JSONOutput, args.quiet, args.gtInstancesFile = False, True, str(tmp_path / "gtInstances.json")
    args.predictionPath, args.predictionWalk = str((out / "instance").resolve()), None
    gts = sorted(glob.glob(str(synthetic_source / "gtFine" / "val" / "*" / "*_gtFine_instanceIds.png")))
    with contextlib.redirect_stdout(io.StringIO()):
        result = inst.evaluateImgLists([inst.getPrediction(gt, args) for gt in gts], gts, args)
    assert result["averages"]["allAp"] == pytest.approx(1.0)


def ground_truth_outputs(ds) -> list[tuple[int, dict]]:  # type: ignore[no-untyped-def]
    """(image id, the split's non-crowd ground truth as a model output with score 1) per image."""
    pairs = []
    for i in range(len(ds)):
        _, t = ds[i]
        keep = t["iscrowd"] == 0
        output = {
            "boxes": t["boxes"].as_subclass(torch.Tensor)[keep],
            "labels": t["labels"][keep],
            "scores": torch.ones(int(keep.sum())),
            "masks": t["masks"].as_subclass(torch.Tensor)[keep][:, None].float(),
        }
        pairs.append((int(t["image_id"]), output))
    return pairs


def test_coco_and_voc_files_of_the_ground_truth_read_back_exactly(tmp_path, voc, capsys):  # noqa: F811
    """COCO: the val ground truth written as results scores AP 1 (bbox and segm) in COCOeval against the
    source's instances_val2017.json — its own image and category ids. VOC: a ground-truth box is written
    as its XML's bndbox, the devkit's 1-based inclusive pixels."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.metrics.predictions import source_id_maps
    from mtlcli.metrics.submit import open_submission

    src = coco_tree(tmp_path / "coco")
    data = tmp_path / "coco_data"
    assert mtl(capsys, "prepare", "coco", str(src), "--out", str(data), "-q", "-j", "1")[0] == 0
    ds = PreparedDataset(data, "val")
    images = ds.coco.dataset["images"]
    writer = open_submission(tmp_path / "c", ds.meta, "val", images, "gt", id_maps=source_id_maps(ds.meta, images))
    for image_id, output in ground_truth_outputs(ds):
        writer.add(image_id, output)
    writer.close()
    gt = COCO(str(src / "annotations" / "instances_val2017.json"))
    for kind in ("bbox", "segm"):
        ev = COCOeval(gt, gt.loadRes(str(tmp_path / "c" / kind / "detections_val2017_gt_results.json")), kind)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate(), ev.accumulate(), ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0), kind

    out = tmp_path / "voc_data"
    args = ["--voc2012", str(voc["voc2012"]), "--voc2007", str(voc["voc2007"]), "--out", str(out), "-q", "-j", "1"]
    assert mtl(capsys, "prepare", "voc", *args)[0] == 0
    ds = PreparedDataset(out, "trainval")
    writer = open_submission(tmp_path / "v", ds.meta, "trainval", ds.coco.dataset["images"], "gt", semantic=False)
    for image_id, output in ground_truth_outputs(ds):
        writer.add(image_id, output)
    writer.close()
    lines = (tmp_path / "v" / "results" / "VOC2012" / "Main" / "comp4_det_trainval_dog.txt").read_text().splitlines()
    assert lines == ["2008_000001 1.000000 5.0 3.0 20.0 30.0"]  # Annotations/2008_000001.xml: dog (5, 3, 20, 30)
