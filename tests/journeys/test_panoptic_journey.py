"""The user journey of docs/panoptic.md, as typed: a COCO panoptic export with its own stuff classes ->
`mtl prepare coco-panoptic` -> `mtl train --recipe ivanet-custom` (tiny, a few iterations) -> `mtl predict
--panoptic` -> `mtl eval --metric pq`, whose PQ equals cityscapesscripts' evalPanopticSemanticLabeling on
the same files; `mtl eval --save-predictions` writes what `eval --predictions` scores alike."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from mtlcli.cli.main import main
from tests.data.test_coco_panoptic import write_custom_panoptic

official = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")

TINY = [
    "--set", "model.backbone=resnet18", "--set", "model.pretrained_backbone=false",
    "--set", "model.input_size=[64,128]", "--set", "model.width=32", "--set", "model.topdown_channels=16",
    "--set", "model.extra_channels=[32,32]", "--set", "model.seg_width=16", "--set", "model.seg_reduce=16",
    "--set", "data.augmentation=none", "--set", "train.iterations=6", "--set", "train.steps=[5]",
    "--set", "train.batch_size=2", "--set", "train.workers=0", "--set", "train.lr=0.001",
    "--set", "eval.interval=0", "--set", "train.checkpoint_interval=6", "--set", "eval.panoptic_stuff_area=16",
    "--set", "eval.panoptic_score=0.05",
]  # fmt: skip


def _mtl(args: list[str]) -> int:
    try:
        return main(args) or 0
    except SystemExit as exc:
        return int(exc.code or 0)


def test_coco_panoptic_export_to_pq_equal_to_the_official_script(tmp_path, capsys):
    tjs, tpngs, timages = write_custom_panoptic(tmp_path / "export" / "train", 6, size=(64, 128), seed=3)
    js, pngs, images = write_custom_panoptic(tmp_path / "export" / "val", 4, size=(64, 128), seed=4)
    data, run = tmp_path / "data", tmp_path / "run"
    args = ["prepare", "coco-panoptic", "--json", str(tjs), "--png-dir", str(tpngs), "--images", str(timages)]
    args += ["--val-json", str(js), "--val-png-dir", str(pngs), "--val-images", str(images), "--out", str(data)]
    assert _mtl(args + ["-q", "-j", "1"]) == 0
    assert _mtl(["train", "--recipe", "ivanet-custom", "--data", str(data), "--out", str(run), *TINY]) == 0

    pred = tmp_path / "pred"
    assert _mtl(["predict", str(images), "--run", str(run), "--out", str(pred), "--panoptic", "-q"]) == 0
    written = json.loads((pred / "panoptic.json").read_text())
    assert {c["name"] for c in written["categories"] if c["isthing"]} == {"robot", "box", "chair"}
    assert len(list((pred / "panoptic").glob("*.png"))) == 4

    saved, result = tmp_path / "saved", tmp_path / "pq.json"
    rc = _mtl(["eval", "--run", str(run), "--metric", "pq", "--save-predictions", str(saved), "--out", str(result)])
    assert rc == 0
    ours = json.loads(result.read_text())["details"]["pq"]
    # predict's panoptic maps (the fast path's class map) are the ones eval scores, image by image
    saved_pngs = sorted((saved / "panoptic").rglob("*.png"))  # nested as the prepared split names them
    assert len(saved_pngs) == 4
    for png in saved_pngs:
        ours_png = np.asarray(Image.open(pred / "panoptic" / png.name))
        assert (ours_png == np.asarray(Image.open(png))).all(), png.name
    # the official script on the same files: the prepared split's kept ground truth and the saved predictions
    gt_json = data / "val" / "panoptic.json"
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = official.evaluatePanoptic(
            str(gt_json), str(data / "val" / "panoptic"), str(saved / "panoptic.json"), str(saved / "panoptic"),
            str(tmp_path / "official.json"),
        )  # fmt: skip
    for group, key in (("All", "all"), ("Things", "things"), ("Stuff", "stuff")):
        for m in ("pq", "sq", "rq"):
            assert abs(ours[key][m] - theirs[group][m]) <= 1e-9, (group, m)
    for c in ours["classes"]:
        assert abs(c["pq"] - theirs["per_class"][c["id"]]["pq"]) <= 1e-9
    # what eval saved, eval --predictions scores with the same numbers
    rc = _mtl(["eval", "--predictions", str(saved), "--data", str(data), "--split", "val", "--metric", "pq"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "pq: panoptic quality per class" in out and "ceiling" in out
