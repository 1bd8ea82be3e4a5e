"""Detection pictures of `mtl eval` (PR per class, F1 vs threshold, detection confusion) and `viz confusion`
reusing the predictions `mtl eval` saved."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mtlcli.data.dataset import _quiet_coco
from mtlcli.viz.detection import confusion_matrix, f1_curve, match_detections, picture_names, plot_detection
from tests.viz.conftest import run_cli


def _gt():
    anns = [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 10, 20, 20], "iscrowd": 0, "area": 400},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "iscrowd": 0, "area": 100},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0, "area": 100},
    ]
    return _quiet_coco(
        {
            "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
            "annotations": anns,
        }
    )


RESULTS = [
    {"image_id": 1, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.9},  # the car: true positive
    {"image_id": 1, "category_id": 2, "bbox": [11, 10, 20, 20], "score": 0.8},  # a duplicate: false positive
    {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.6},  # the person of image 1
    {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.7},  # image 2's person called a car
    {"image_id": 2, "category_id": 1, "bbox": [80, 80, 10, 10], "score": 0.1},  # nothing there, low score
]


def test_matching_f1_and_confusion():
    person, car = match_detections(_gt(), RESULTS, 2)
    assert car["npos"] == 1 and car["tp"].tolist() == [1, 0, 0] and person["tp"].tolist() == [1, 0]
    f1 = f1_curve(car["scores"], car["tp"], car["npos"], np.array([0.0, 0.85, 0.95]))
    assert f1.tolist() == pytest.approx([0.5, 1.0, 0.0])  # 1 of 3 kept is right / only the true one / none
    m = confusion_matrix(_gt(), RESULTS, 2)  # rows predicted (person, car, background), columns true
    assert m.tolist() == [
        [1, 0, 0],  # person -> person
        [1, 1, 1],  # car on image 2's person; the car; the duplicate is a false alarm
        [0, 0, 0],
    ]  # no ground truth missed (the 0.1 detection is below 0.25)


def test_pictures_have_titles_axes_and_legends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k))[1])
    paths = plot_detection(_gt(), RESULTS, ["person", "car"], tmp_path, "val")
    assert [p.name for p in paths] == ["pr_val.png", "f1_val.png", "confusion_det_val.png"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    pr, f1, cm = (f.axes[0] for f in figures)
    assert "precision-recall" in pr.get_title() and pr.get_xlabel() == "recall"
    assert [t.get_text() for t in pr.get_legend().get_texts()] == [
        "person 0.500",
        "car 1.000",
        "all classes, mAP 0.750",
    ]
    assert pr.get_legend().get_title().get_text() == "AP, VOC2010+ area"
    assert f1.get_xlabel() == "score threshold" and any(
        t.get_text().startswith("all classes: F1") for t in f1.get_legend().get_texts()
    )
    assert [t.get_text() for t in cm.get_xticklabels()] == ["person", "car", "background"]
    assert "detection confusion" in cm.get_title()


def test_eval_saves_pictures_and_viz_confusion_reuses_predictions(
    det_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run = tmp_path / "run"
    shutil.copytree(det_run, run, ignore=shutil.ignore_patterns("eval"))
    assert run_cli(["eval", "--run", str(run), "-q", "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r"val: miou [\d.]+%  voc07 [\d.]+%", line)  # eval -q: one line
    first = ["pr_val.png", "f1_val.png", "confusion_det_val.png"]
    for name in first + ["val.json"]:
        assert (run / "eval" / name).is_file()
    assert [Path(p).name for p in json.loads((run / "eval" / "val.json").read_text())["plots"]] == first
    before = {name: (run / "eval" / name).read_bytes() for name in first}
    miou = json.loads((run / "eval" / "val.json").read_text())["metrics"]["miou"]

    # a second evaluation keeps the first's JSON and pictures: its own are numbered as its JSON
    assert run_cli(["eval", "--run", str(run), "--device", "cpu", "--metric", "voc12"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    second = ["pr_val-2.png", "f1_val-2.png", "confusion_det_val-2.png"]
    assert last == f"saved {run / 'eval' / 'val-2.json'}; pictures in {run / 'eval'}: {', '.join(second)}"
    assert [Path(p).name for p in json.loads((run / "eval" / "val-2.json").read_text())["plots"]] == second
    assert {name: (run / "eval" / name).read_bytes() for name in first} == before
    assert all((run / "eval" / name).stat().st_size > 1000 for name in second)

    # --out F writes F only: no third JSON, no third set of pictures
    listing = sorted(p.name for p in (run / "eval").iterdir())
    assert run_cli(["eval", "--run", str(run), "-q", "--device", "cpu", "--out", str(tmp_path / "res.json")]) == 0
    assert (tmp_path / "res.json").is_file() and sorted(p.name for p in (run / "eval").iterdir()) == listing
    capsys.readouterr()

    # the predictions `mtl eval --run` keeps are still there for `viz confusion` to reuse
    assert run_cli(["viz", "confusion", "--run", str(run), "--out", str(tmp_path / "cf"), "--device", "cpu"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "from the predictions saved in" in printed and f"mIoU {100 * miou:.1f}%" in printed
    assert (tmp_path / "cf" / "confusion_val.png").is_file()


def test_picture_names_follow_the_json_name(tmp_path: Path):
    paths = plot_detection(_gt(), RESULTS, ["person", "car"], tmp_path, "val", name="val-3")
    assert (
        [p.name for p in paths] == picture_names("val-3") == ["pr_val-3.png", "f1_val-3.png", "confusion_det_val-3.png"]
    )
