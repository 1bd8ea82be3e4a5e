"""Journey: predict a split, evaluate what predict wrote, get the numbers of `mtl eval --run`.

Typed as a user types it, on the synthetic city with a tiny IvaNet trained for a few steps:

    mtl eval --run RUN --metric miou,voc07,voc12,coco-bbox,ar --out run.json
    mtl predict --run RUN --data DATA --split val --out P
    mtl eval --predictions P --data DATA --out pred.json           # every metric equal to 1e-9
    mtl predict SRC/leftImg8bit/val --run RUN --coco-json DATA/val/instances.json   # plain files, the JSON's ids
    (P with shuffled ids, shuffled detections and renamed label files)                # still the same numbers

The detection numbers are checked with pycocotools' COCOeval directly and mIoU with a numpy confusion matrix
of the PNGs, not with mtl's metrics alone. Partial, foreign and inconsistent predictions end in one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.viz.conftest import error_line, run_cli

METRICS = "miou,voc07,voc12,coco-bbox,ar"


@pytest.fixture(scope="module")
def reference(journey_run: Path, synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`mtl eval --run RUN` on every metric the model supports, and `mtl predict --data` of the split."""
    tmp = tmp_path_factory.mktemp("reference")
    run = journey_run
    assert run_cli(["eval", "--run", str(run), "-m", METRICS, "--out", str(tmp / "run.json"), "-q"]) == 0
    preds = tmp / "preds"
    argv = ["predict", "--run", str(run), "--data", str(synthetic_prepared), "--split", "val", "--out", str(preds)]
    assert run_cli(argv + ["-q", "--device", "cpu", "--workers", "0"]) == 0
    return {"metrics": json.loads((tmp / "run.json").read_text())["metrics"], "preds": preds}


def _eval_predictions(preds: Path, data: Path, out: Path) -> dict:
    code = run_cli(["eval", "--predictions", str(preds), "--data", str(data), "-m", METRICS, "--out", str(out), "-q"])
    assert code == 0
    return json.loads(out.read_text())["metrics"]


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b) == set(METRICS.split(","))
    for name in a:
        assert abs(a[name] - b[name]) <= 1e-9, (name, a[name], b[name])


def _cocoeval_ap(data: Path, detections: list[dict]) -> float:
    """Box AP@[.5:.95] straight from pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data / "val" / "instances.json"))
        dt = gt.loadRes([{k: d[k] for k in ("image_id", "category_id", "bbox", "score")} for d in detections])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def _miou_numpy(data: Path, preds: Path, names: dict[int, str]) -> float:
    """mIoU over the classes present, from the PNGs with a plain numpy confusion matrix."""
    meta = json.loads((data / "dataset.json").read_text())
    k = len(meta["seg_classes"])
    conf = np.zeros((k, k), np.int64)
    images = json.loads((data / "val" / "instances.json").read_text())["images"]
    for im in images:
        gt = np.array(Image.open(data / "val" / "semantic" / f"{im['stem']}.png"))
        pred = np.array(Image.open(preds / "semantic" / f"{names[im['id']]}.png"))
        keep = gt != 255
        conf += np.bincount(gt[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    present = conf.sum(1) > 0
    return float((inter[present] / union[present]).mean())


def test_predict_split_then_eval_predictions_equals_eval_run(reference, synthetic_prepared, tmp_path):
    preds = reference["preds"]
    got = _eval_predictions(preds, synthetic_prepared, tmp_path / "pred.json")
    _same(got, reference["metrics"])
    # what predict wrote is keyed to the split's own ids and file names
    truth = json.loads((synthetic_prepared / "val" / "instances.json").read_text())["images"]
    listed = json.loads((preds / "images.json").read_text())["images"]
    assert [(im["id"], im["file_name"]) for im in listed] == [(im["id"], im["file_name"]) for im in truth]
    detections = json.loads((preds / "detections.json").read_text())
    files = {im["id"]: im["file_name"] for im in truth}
    assert detections and all(d["file_name"] == files[d["image_id"]] for d in detections)
    # the outside tools agree
    assert abs(_cocoeval_ap(synthetic_prepared, detections) - got["coco-bbox"]) <= 1e-9
    names = {im["id"]: im["name"] for im in listed}
    assert abs(_miou_numpy(synthetic_prepared, preds, names) - reference["metrics"]["miou"]) <= 1e-9


def test_shuffled_ids_and_renamed_files_score_the_same(reference, synthetic_prepared, tmp_path, capsys):
    preds = tmp_path / "shuffled"
    shutil.copytree(reference["preds"], preds)
    shutil.rmtree(preds / "labelIds")
    listed = json.loads((preds / "images.json").read_text())
    detections = json.loads((preds / "detections.json").read_text())
    ids = [im["id"] for im in listed["images"]]
    new = dict(zip(ids, [ids[-1], *ids[:-1]], strict=True))  # every id now names another image's file
    random.Random(0).shuffle(listed["images"])
    random.Random(1).shuffle(detections)
    for k, im in enumerate(listed["images"]):
        renamed = f"renamed/picture_{k}"
        (preds / "semantic" / "renamed").mkdir(exist_ok=True)
        (preds / "semantic" / f"{im['name']}.png").rename(preds / "semantic" / f"{renamed}.png")
        im["id"], im["name"] = new[im["id"]], renamed
    for d in detections:
        d["image_id"] = new[d["image_id"]]
    (preds / "images.json").write_text(json.dumps(listed))
    (preds / "detections.json").write_text(json.dumps(detections))
    capsys.readouterr()
    got = _eval_predictions(preds, synthetic_prepared, tmp_path / "shuffled.json")
    _same(got, reference["metrics"])
    assert "matched by file name" in capsys.readouterr().err  # said, not silent


def test_plain_files_with_coco_json_score_the_same(
    journey_run, reference, synthetic_prepared, synthetic_source, tmp_path
):
    preds = tmp_path / "plain"
    instances = synthetic_prepared / "val" / "instances.json"
    folder = synthetic_source / "leftImg8bit" / "val"
    argv = ["predict", str(folder), "--run", str(journey_run), "--coco-json", str(instances), "--out", str(preds), "-q"]
    assert run_cli(argv + ["--device", "cpu", "--workers", "0"]) == 0
    # plain files keep their folders in their output names: semantic/<city>/<file stem>.png
    assert sorted(p.relative_to(preds / "semantic").parent.name for p in (preds / "semantic").rglob("*.png")) == [
        "oberdorf",
        "oberdorf",
        "weissbach",
    ]
    detections = json.loads((preds / "detections.json").read_text())
    truth = {im["id"]: im["file_name"] for im in json.loads(instances.read_text())["images"]}
    assert all(truth[d["image_id"]] == d["file_name"] for d in detections)  # the JSON's ids and names
    got = _eval_predictions(preds, synthetic_prepared, tmp_path / "plain.json")
    _same(got, reference["metrics"])
    assert abs(_cocoeval_ap(synthetic_prepared, detections) - got["coco-bbox"]) <= 1e-9


def _edit(preds: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(preds, copy)
    listed = json.loads((copy / "images.json").read_text())
    detections = json.loads((copy / "detections.json").read_text())
    change(copy, listed, detections)
    (copy / "images.json").write_text(json.dumps(listed))
    (copy / "detections.json").write_text(json.dumps(detections))
    return copy


def _drop_last(copy: Path, listed: dict, detections: list) -> None:
    gone = listed["images"].pop()
    detections[:] = [d for d in detections if d["image_id"] != gone["id"]]
    for sub in ("semantic", "labelIds"):
        (copy / sub / f"{gone['name']}.png").unlink()


def _foreign_image(copy: Path, listed: dict, detections: list) -> None:
    listed["images"][0]["file_name"] = "leftImg8bit/train/elsewhere/elsewhere_000000_000019_leftImg8bit.png"
    for d in detections:
        if d["image_id"] == listed["images"][0]["id"]:
            d["file_name"] = listed["images"][0]["file_name"]


def _wrong_file_name(copy: Path, listed: dict, detections: list) -> None:
    first = next(d for d in detections if d["image_id"] == listed["images"][0]["id"])
    first["file_name"] = listed["images"][1]["file_name"]


@pytest.mark.parametrize(
    "change, needles",
    [
        (_drop_last, ["covers 2 of the 3 images", "1 not predicted", "weissbach_000000_000019_leftImg8bit.png"]),
        (_foreign_image, ["names 1 image(s) that split 'val'", "elsewhere_000000_000019"]),
        (_wrong_file_name, ["do not belong together", "oberdorf_000001_000019"]),
    ],
)
def test_partial_foreign_or_inconsistent_predictions_are_refused(
    reference, synthetic_prepared, tmp_path, capsys, change, needles
):
    preds = _edit(reference["preds"], tmp_path, change)
    capsys.readouterr()
    code = run_cli(["eval", "--predictions", str(preds), "--data", str(synthetic_prepared), "-m", METRICS, "-q"])
    assert code == 2
    line = error_line(capsys)
    assert all(n in line for n in needles), line
