"""VOC AP against the devkit's rule and hand-computed values; COCO AP / AR against a direct COCOeval run."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from mtlcli.errors import UserError
from mtlcli.metrics.predictions import GroundTruth, evaluate_predictions
from mtlcli.metrics.voc import VOCMetric
from tests.metrics.fixtures import CLASSES, hand_detections, make_detection_dataset


def devkit_voc_ap(gt_json: dict, dets: list[dict], category_id: int, use_07: bool) -> float:
    """py-faster-rcnn `voc_eval` on 1-based inclusive boxes (xmin = x + 1, xmax = x + w), as the devkit
    reads VOC XML and result files, kept literal to serve as the reference."""
    recs = {}
    for a in gt_json["annotations"]:
        if a["category_id"] != category_id:
            continue
        x, y, w, h = a["bbox"]
        recs.setdefault(a["image_id"], []).append(([x + 1, y + 1, x + w, y + h], bool(a["iscrowd"])))
    class_recs, npos = {}, 0
    for image_id, objs in recs.items():
        bbox = np.array([o[0] for o in objs])
        difficult = np.array([o[1] for o in objs]).astype(bool)
        npos += int(sum(~difficult))
        class_recs[image_id] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(objs)}
    mine = [d for d in dets if d["category_id"] == category_id]
    confidence = np.array([d["score"] for d in mine])
    BB = np.array(
        [[d["bbox"][0] + 1, d["bbox"][1] + 1, d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]] for d in mine]
    ).reshape(-1, 4)
    ids = [d["image_id"] for d in mine]
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    ids = [ids[x] for x in sorted_ind]
    nd = len(ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs.get(ids[d], {"bbox": np.zeros((0, 4)), "difficult": np.zeros(0, bool), "det": []})
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > 0.5:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@pytest.fixture
def toy(tmp_path):
    root = make_detection_dataset(tmp_path / "data")
    dets = hand_detections()
    path = tmp_path / "detections.json"
    path.write_text(json.dumps(dets))
    return root, path, dets


@pytest.mark.parametrize("use_07", [True, False])
def test_voc_ap_equals_devkit_rule_and_hand_values(toy, use_07):
    root, path, dets = toy
    name = "voc07" if use_07 else "voc12"
    res = evaluate_predictions(root, "val", path, [name], progress=False)
    d = res["details"][name]
    gt_json = json.loads((root / "val" / "instances.json").read_text())
    # cat: TP, duplicate (FP), difficult (ignored), TP, FP over 2 non-difficult cats
    hand = 28 / 33 if use_07 else 0.5 + 0.5 * 2 / 3
    assert d["ap"][0] == pytest.approx(hand, abs=1e-12)
    assert d["ap"][0] == pytest.approx(devkit_voc_ap(gt_json, dets, 1, use_07), abs=1e-12)
    assert d["ap"][1] == 0.0 == devkit_voc_ap(gt_json, dets, 2, use_07)  # dog: ground truth, no detections
    assert d["ap"][2] is None  # bird: no ground truth -> no AP, not in the mean
    assert d["num_gt"] == [2, 1, 0]
    assert res["metrics"][name] == pytest.approx(hand / 2, abs=1e-12)


def test_voc_without_any_detection_is_zero(tmp_path):
    gt = GroundTruth.load(make_detection_dataset(tmp_path), "val")
    m = VOCMetric(gt.coco, CLASSES, use_07=False)
    out = m.compute()
    assert out["value"] == 0.0 and out["details"]["ap"] == [0.0, 0.0, None]


def _direct_cocoeval(root, det_path, iou_type, use_cats=True, max_dets=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "val" / "instances.json"))
        E = COCOeval(gt, gt.loadRes(str(det_path)), iou_type)
        E.params.useCats = int(use_cats)
        if max_dets:
            E.params.maxDets = max_dets
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_numbers_equal_direct_cocoeval(toy, iou_type):
    root, path, _ = toy
    name = f"coco-{iou_type}"
    res = evaluate_predictions(root, "val", path, [name], progress=False)
    stats = _direct_cocoeval(root, path, iou_type)
    ours = res["details"][name]["stats"]
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    for k, v in zip(keys, stats, strict=True):
        assert ours[k] == (None if v < 0 else pytest.approx(v, abs=1e-12)), k
    assert res["metrics"][name] == pytest.approx(stats[0], abs=1e-12)
    assert 0 < stats[0] < 1  # a non-trivial case
    assert res["details"][name]["classes"] == CLASSES


def test_proposal_recall_equals_cocoeval_without_categories(toy):
    root, path, _ = toy
    res = evaluate_predictions(root, "val", path, ["ar"], progress=False)
    # with maxDets [1, 100, 1000] COCOeval.summarize itself reports AR@100, AR@1000 and by size @1000
    stats = _direct_cocoeval(root, path, "bbox", use_cats=False, max_dets=[1, 100, 1000])
    s = res["details"]["ar"]["stats"]
    assert s["AR@100"] == pytest.approx(stats[7], abs=1e-12)
    assert s["AR@1000"] == pytest.approx(stats[8], abs=1e-12)
    for k, v in zip(("ARs@1000", "ARm@1000", "ARl@1000"), stats[9:12], strict=True):
        assert s[k] == (None if v < 0 else pytest.approx(v, abs=1e-12)), k
    assert res["metrics"]["ar"] == s["AR@100"] > 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: [], "holds no detections"),
        (lambda d: d + [{**d[0], "image_id": 99}], "image_id 99"),
        (lambda d: d + [{**d[0], "category_id": 4}], "category_id 4 is out of range"),
        (lambda d: d + [{**d[0], "bbox": [1, 2, -3, 4]}], "bbox"),
        (lambda d: [{k: v for k, v in r.items() if k != "segmentation"} for r in d], "has no segmentation"),
    ],
)
def test_bad_results_are_user_errors(toy, change, message):
    root, path, dets = toy
    path.write_text(json.dumps(change(dets)))
    with pytest.raises(UserError, match=message):
        evaluate_predictions(root, "val", path, ["coco-segm"], progress=False)
