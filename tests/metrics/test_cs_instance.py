"""`--metric cs-inst` equals cityscapesscripts' evalInstanceLevelSemanticLabeling run by hand on the same
predictions, on the synthetic city in the real Cityscapes layout; perfect masks score AP 1."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mtlcli.metrics.predictions import evaluate_predictions

pytest.importorskip("cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling")
from mtlcli.metrics.cs_instance import official_module  # noqa: E402 (the module with numpy 2.4's shims)

ev, _ = official_module()


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    from mtlcli.data.cityscapes import prepare_cityscapes
    from mtlcli.data.synthetic import generate_synthetic

    tmp = tmp_path_factory.mktemp("csinst")
    src = generate_synthetic(tmp / "city", train=0, val=3, size=(128, 256), quiet=True)
    prepare_cityscapes(src, tmp / "data", workers=1, splits=["val"], quiet=True)
    return src, tmp / "data"


def _predictions(data: Path, rng: np.random.Generator | None) -> list[dict]:
    inst = json.loads((data / "val" / "instances.json").read_text())
    out = []
    for a in inst["annotations"]:
        if a["iscrowd"]:
            continue
        seg = a["segmentation"]
        score = 1.0
        if rng is not None:
            if rng.random() < 0.2:
                continue
            m = mask_utils.decode(seg)
            m = np.roll(m, int(rng.integers(-2, 3)), axis=1)  # a little off
            seg = mask_utils.encode(np.asfortranarray(m))
            seg["counts"] = seg["counts"].decode("ascii")
            score = float(rng.random())
        out.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": score,
                    "segmentation": seg})  # fmt: skip
    return out


def _official(src: Path, data: Path, results: list[dict], tmp: Path) -> dict:
    from cityscapesscripts.helpers.labels import name2label

    meta = json.loads((data / "dataset.json").read_text())
    images = json.loads((data / "val" / "instances.json").read_text())["images"]
    tmp.mkdir()
    preds, gts = [], []
    for im in images:
        base = Path(im["file_name"]).name.replace("_leftImg8bit.png", "")
        lines = []
        for k, r in enumerate(r for r in results if r["image_id"] == im["id"]):
            Image.fromarray(mask_utils.decode(r["segmentation"]) * 255).save(tmp / f"m{base}{k}.png")
            lines.append(f"m{base}{k}.png {name2label[meta['det_classes'][r['category_id'] - 1]].id} {r['score']}\n")
        (tmp / f"{base}.txt").write_text("".join(lines))
        preds.append(str(tmp / f"{base}.txt"))
        city = base.split("_")[0]
        gts.append(str(src / "gtFine" / "val" / city / f"{base}_gtFine_instanceIds.png"))
    args = copy.copy(ev.args)
    args.predictionPath, args.gtInstancesFile = str(tmp.resolve()), str(tmp / "gt.json")
    args.JSONOutput, args.quiet = False, True
    here = os.getcwd()
    try:
        os.chdir(tmp)
        with contextlib.redirect_stdout(io.StringIO()):
            return ev.evaluateImgLists(preds, gts, args)["averages"]
    finally:
        os.chdir(here)


@pytest.mark.parametrize("seed", [None, 0])
def test_cs_inst_equals_the_official_script(city, tmp_path, seed):
    src, data = city
    results = _predictions(data, None if seed is None else np.random.default_rng(seed))
    (tmp_path / "detections.json").write_text(json.dumps(results))
    ours = evaluate_predictions(data, "val", tmp_path / "detections.json", ["cs-inst"], progress=False)
    theirs = _official(src, data, results, tmp_path / "official")
    d = ours["details"]["cs-inst"]
    assert ours["metrics"]["cs-inst"] == pytest.approx(theirs["allAp"], abs=1e-12)
    assert d["ap50"] == pytest.approx(theirs["allAp50%"], abs=1e-12)
    for c, ap in zip(d["classes"], d["class_ap"], strict=True):
        assert (ap != ap and theirs["classes"][c]["ap"] != theirs["classes"][c]["ap"]) or ap == pytest.approx(
            theirs["classes"][c]["ap"], abs=1e-12
        )
    if seed is None:
        assert ours["metrics"]["cs-inst"] == pytest.approx(1.0)
    else:
        assert 0 < ours["metrics"]["cs-inst"] < 1
