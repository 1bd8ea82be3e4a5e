"""mIoU / IoU / iIoU against cityscapesscripts' evalPixelLevelSemanticLabeling on tiny Cityscapes files."""

from __future__ import annotations

import copy
import glob
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.data.prepared import DatasetMeta, encode_instance
from mtlcli.errors import UserError
from mtlcli.metrics.predictions import evaluate_predictions
from mtlcli.metrics.segmentation import CITYSCAPES_AVG_CLASS_SIZE, SegmentationMetric

H, W = 40, 64
TRAIN_NAMES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
DET_NAMES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def _label_tables():
    from cityscapesscripts.helpers.labels import labels

    to_train = np.full(256, 255, np.uint8)
    for lab in labels:
        if lab.id >= 0 and lab.trainId not in (255, -1):
            to_train[lab.id] = lab.trainId
    return to_train


def _scene(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labelIds uint8, instanceIds int32, predicted labelIds uint8) of one image."""
    label = np.full((H, W), 7, np.uint8)  # road
    label[:12] = 23  # sky
    label[12:20, :30] = 11  # building
    label[12:20, 30:] = 21  # vegetation
    label[20:24, :] = 8  # sidewalk
    label[24:26, 10:50] = 0  # unlabeled (ignored in evaluation)
    label[36:, :8] = 4  # static (ignored)
    label[14:18, 40:42] = 17  # pole
    inst = label.astype(np.int32).copy()
    for k, (y0, y1, x0, x1) in enumerate([(26, 34, 4, 20), (27, 33, 24, 30)]):  # two cars
        label[y0:y1, x0:x1] = 26
        inst[y0:y1, x0:x1] = 26000 + k
    label[28:36, 34:37] = 24  # a person
    inst[28:36, 34:37] = 24000
    label[26:30, 44:52] = 26  # a group of cars (instanceIds < 1000): a crowd region
    inst[26:30, 44:52] = 26
    label[30:36, 54:60] = 33  # a bicycle
    inst[30:36, 54:60] = 33000

    if kind == "good":
        pred = label.copy()
        pred[label == 0] = 7  # predictions on ignored ground truth never count
        pred[26:34, 16:20] = 7  # part of car 0 missed
        pred[12:14, :] = 11  # building bleeds into sky
        pred[28:36, 34:35] = 0  # unlabeled predicted on a person: a false negative only
        pred[20:22, :6] = 29  # caravan (not evaluated) predicted on sidewalk
        pred[2:5, 2:5] = 22  # terrain, absent from the ground truth: IoU 0
    elif kind == "wrong":
        pred = np.full((H, W), 21, np.uint8)  # everything vegetation
        pred[label == 21] = 23  # ... except where vegetation is
    else:
        ids = np.array([0, 7, 8, 11, 17, 21, 22, 23, 24, 26, 33], np.uint8)
        pred = ids[rng.integers(0, len(ids), size=(H, W))]
    return label, inst, pred


@pytest.fixture
def cityscapes_files(tmp_path):
    """Cityscapes gtFine labelIds/instanceIds, predicted labelIds named <stem>.png, and the same ground
    truth as a prepared dataset (trainId semantic PNGs, RLE instances with groups as crowd)."""
    rng = np.random.default_rng(0)
    to_train = _label_tables()
    cs, pred_dir, prep = tmp_path / "cityscapes", tmp_path / "pred", tmp_path / "prepared"
    pred_dir.mkdir()
    images, anns = [], []
    for image_id, (city, kind) in enumerate([("aachen", "good"), ("bochum", "wrong"), ("cologne", "noise")], start=1):
        label, inst, pred = _scene(rng, kind)
        base = f"{city}_000000_000019"
        gt_dir = cs / "gtFine" / "val" / city
        gt_dir.mkdir(parents=True)
        Image.fromarray(label).save(gt_dir / f"{base}_gtFine_labelIds.png")
        Image.fromarray(inst.astype(np.uint16)).save(gt_dir / f"{base}_gtFine_instanceIds.png")
        stem = f"{base}_leftImg8bit"
        Image.fromarray(pred).save(pred_dir / f"{stem}.png")
        sem = prep / "val" / "semantic" / f"{stem}.png"
        sem.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_train[label]).save(sem)
        images.append(
            {"id": image_id, "file_name": f"leftImg8bit/val/{city}/{stem}.png", "height": H, "width": W, "stem": stem}
        )
        for value in np.unique(inst):
            cls = value // 1000 if value >= 1000 else value
            name = {
                24: "person",
                25: "rider",
                26: "car",
                27: "truck",
                28: "bus",
                31: "train",
                32: "motorcycle",
                33: "bicycle",
            }.get(cls)
            if name:
                a = encode_instance(inst == value, DET_NAMES.index(name) + 1, iscrowd=int(value < 1000))
                anns.append({"id": len(anns) + 1, "image_id": image_id, **a})
    DatasetMeta("cityscapes", str(cs), ["val"], DET_NAMES, TRAIN_NAMES, [[0, 0, 0]] * 19).save(prep)
    cats = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(DET_NAMES)]
    (prep / "val" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return cs, pred_dir, prep


def _official(cs, pred_dir, monkeypatch, inst_level=True):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    # cityscapesscripts 2.3 calls np.in1d, which numpy 2.4 removed; np.isin is its documented successor
    monkeypatch.setattr(
        np, "in1d", lambda a, b, invert=False: np.isin(np.asarray(a).ravel(), b, invert=invert), raising=False
    )
    args = copy.copy(ev.args)
    args.evalInstLevelScore = inst_level
    args.JSONOutput = False  # no side files
    args.quiet = True
    args.predictionPath = str(pred_dir)
    args.predictionWalk = None
    gts = sorted(glob.glob(str(cs / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    preds = [ev.getPrediction(args, gt) for gt in gts]
    return ev.evaluateImgLists(preds, gts, args)


def _same(ours, official):
    if official is None or (isinstance(official, float) and math.isnan(official)):
        return ours is None
    return ours is not None and abs(ours - official) < 1e-9


def test_miou_and_iiou_equal_official_script(cityscapes_files, monkeypatch):
    cs, pred_dir, prep = cityscapes_files
    official = _official(cs, pred_dir, monkeypatch)
    ours = evaluate_predictions(prep, "val", pred_dir, ["miou"], cityscapes_ids=True, progress=False)
    d = ours["details"]["miou"]
    for i, name in enumerate(TRAIN_NAMES):
        assert _same(d["iou"][i], official["classScores"][name]), (name, d["iou"][i], official["classScores"][name])
        assert _same(d["iiou"][i], official["classInstScores"][name]), (
            name,
            d["iiou"][i],
            official["classInstScores"][name],
        )
    assert abs(ours["metrics"]["miou"] - official["averageScoreClasses"]) < 1e-9
    assert abs(d["miiou"] - official["averageScoreInstClasses"]) < 1e-9
    # the fixture covers what the issue asks for: classes absent from both (NaN, left out of the mean),
    # a class predicted but never in the ground truth (IoU 0), an entirely wrong image
    assert d["iou"][TRAIN_NAMES.index("train")] is None and d["iou"][TRAIN_NAMES.index("bus")] is None
    assert d["iou"][TRAIN_NAMES.index("terrain")] == 0.0
    assert 0.0 < ours["metrics"]["miou"] < 1.0


def test_avg_class_sizes_are_the_official_table():
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    assert CITYSCAPES_AVG_CLASS_SIZE == ev.args.avgClassSize


def test_class_index_pngs_give_the_same_numbers(cityscapes_files, tmp_path):
    cs, pred_dir, prep = cityscapes_files
    to_train = _label_tables()
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    for p in pred_dir.glob("*.png"):
        Image.fromarray(to_train[np.array(Image.open(p))]).save(idx_dir / p.name)
    a = evaluate_predictions(prep, "val", pred_dir, ["miou"], cityscapes_ids=True, progress=False)
    b = evaluate_predictions(prep, "val", idx_dir, ["miou"], progress=False)
    assert a["details"]["miou"]["confusion"] == b["details"]["miou"]["confusion"]
    assert a["metrics"]["miou"] == b["metrics"]["miou"]


def test_hand_computed_confusion_and_accuracies():
    m = SegmentationMetric(["a", "b", "c"])
    gt = np.array([[0, 0, 1, 1], [2, 255, 1, 0]], np.uint8)
    pr = np.array([[0, 1, 1, 255], [0, 2, 1, 0]], np.uint8)
    m.update(pr, gt)
    m.update(torch.from_numpy(pr).long(), torch.from_numpy(gt).long())  # the torch path counts the same
    res = m.compute()["details"]
    assert res["confusion"] == [[4, 2, 0], [0, 4, 0], [2, 0, 0]]
    assert res["void_predictions"] == [0, 2, 0]
    # a: tp 4, fp 2, fn 2 -> 0.5;  b: tp 4, fp 2, fn 2 -> 0.5;  c: tp 0 -> 0
    assert res["iou"] == [0.5, 0.5, 0.0]
    assert res["pixel_accuracy"] == pytest.approx(8 / 14)
    assert res["accuracy"] == [pytest.approx(4 / 6), pytest.approx(4 / 6), 0.0]
    assert m.compute()["value"] == pytest.approx(1 / 3)
    # every counting path agrees: the uint8 histogram, wide integer maps (300 and -1 are void
    # predictions like 255), and the torch path used for maps on a GPU
    wide = pr.astype(np.int32)
    wide[0, 3], wide[1, 0] = 300, -1
    pr_void = pr.copy()
    pr_void[0, 3], pr_void[1, 0] = 255, 255
    a, b = SegmentationMetric(["a", "b", "c"]), SegmentationMetric(["a", "b", "c"])
    a.update(wide, gt)
    b.update(pr_void, gt)
    assert (a.matrix == b.matrix).all()
    tw, tg = torch.from_numpy(wide).long(), torch.from_numpy(gt).long()
    assert (a._bincount_torch(tw, tg) == a._bincount_numpy(wide, gt)).all()


def test_class_absent_everywhere_is_left_out_of_the_mean():
    m = SegmentationMetric(["a", "b", "c"])
    m.update(np.array([[0, 1]], np.uint8), np.array([[0, 1]], np.uint8))
    out = m.compute()
    assert out["details"]["iou"] == [1.0, 1.0, None]
    assert out["value"] == 1.0


def test_wrong_size_png_names_the_file(cityscapes_files):
    cs, pred_dir, prep = cityscapes_files
    victim = sorted(pred_dir.glob("*.png"))[1]
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(victim)
    with pytest.raises(UserError, match=victim.name):
        evaluate_predictions(prep, "val", pred_dir, ["miou"], cityscapes_ids=True, progress=False)


def test_missing_prediction_and_bad_values_are_user_errors(cityscapes_files):
    cs, pred_dir, prep = cityscapes_files
    files = sorted(pred_dir.glob("*.png"))
    with pytest.raises(UserError, match="outside the 19 classes"):  # labelIds read as class indices
        evaluate_predictions(prep, "val", pred_dir, ["miou"], progress=False)
    files[0].unlink()
    with pytest.raises(UserError, match=files[0].stem):
        evaluate_predictions(prep, "val", pred_dir, ["miou"], cityscapes_ids=True, progress=False)


def test_rle_runs_decode_like_pycocotools():
    from pycocotools import mask as mask_utils

    from mtlcli.metrics.predictions import rle_counts

    rng = np.random.default_rng(1)
    for shape in [(7, 5), (40, 64), (300, 500)]:
        m = np.zeros(shape, np.uint8)
        m[rng.random(shape) < 0.3] = 1
        m[: shape[0] // 2, : shape[1] // 3] = 1  # long runs too
        rle = mask_utils.encode(np.asfortranarray(m))
        runs = rle_counts({"counts": rle["counts"].decode("ascii")})
        assert runs.sum() == m.size
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
        assert np.array_equal(flat.reshape(shape[::-1]).T, m)


def test_joint_histogram_counts_every_pair_by_runs_or_by_sort():
    from mtlcli.metrics.segmentation import joint_histogram

    rng = np.random.default_rng(3)
    blocky = [np.kron(rng.integers(0, n, (6, 9)), np.ones((7, 11), dtype=np.int64)).astype(np.uint8) for n in (5, 40)]
    noisy = [rng.integers(0, 256, (40, 60)).astype(np.uint8) for _ in range(2)]
    lut = rng.integers(0, 256, 256).astype(np.uint8)
    for pred, target in (blocky, noisy):  # the run-length path and the np.unique path
        keys, counts = joint_histogram(pred, target)
        ref_keys, ref_counts = np.unique(target.astype(np.uint16) << 8 | pred, return_counts=True)
        assert np.array_equal(keys, ref_keys) and np.array_equal(counts, ref_counts) and counts.sum() == pred.size
        # a prediction LUT applied to the keys gives the histogram of the mapped pixels (keys may repeat)
        keys, counts = joint_histogram(pred, target, pred_lut=lut)
        mapped = np.zeros(1 << 16, dtype=np.int64)
        np.add.at(mapped, keys, counts)
        ref = np.bincount((target.astype(np.intp) << 8 | lut[pred]).ravel(), minlength=1 << 16)
        assert np.array_equal(mapped, ref)
