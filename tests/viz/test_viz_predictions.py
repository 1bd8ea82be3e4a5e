"""`mtl viz predictions`: overlays of a trained model's outputs, with and without ground truth."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.data.dataset import PreparedDataset
from mtlcli.data.targets import cityscapes_tables
from mtlcli.engine.loaded import class_info, load_run
from mtlcli.viz.draw import caption_slots, class_colors, titled_geometry
from mtlcli.viz.predictions import legend_entries, render_prediction, render_predictions
from tests.viz.conftest import error_line, run_cli


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.array(img.convert("RGB")).astype(int)


def test_cli_draws_ground_truth_beside_predictions(
    det_run: Path, synthetic_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "pred"
    assert (
        run_cli(
            [
                "viz",
                "predictions",
                "--run",
                str(det_run),
                "--num",
                "2",
                "--score-threshold",
                "0.0",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and "wrote 2 prediction overlay(s)" in printed
    assert all(p.name in printed.replace("\n", "") for p in pngs)
    ds = PreparedDataset(synthetic_prepared, "val")
    h, w = ds[0][0].shape[-2:]
    f, band = titled_geometry(h, 256)  # 64-pixel images are enlarged to 256 for readable captions
    for p in pngs:
        a = _png(p)
        assert a.shape[1] == 2 * f * w + 4 and a.shape[0] > band + f * h  # ground truth | prediction, legend below
        gt, pred = a[band : band + f * h, : f * w], a[band : band + f * h, f * w + 4 :]
        assert np.abs(gt - pred).mean() > 1  # the untrained model does not reproduce the ground truth
        assert (a[:band] < 100).any() and (a[band + f * h :] < 100).any()  # titles above, legend below
    # existing overlays are kept unless --force
    assert run_cli(["viz", "predictions", "--run", str(det_run), "--num", "1", "--out", str(out)]) == 2
    line = error_line(capsys)
    assert "already exists" in line and "--force" in line
    before = pngs[0].stat().st_mtime_ns
    assert run_cli(["viz", "predictions", "--run", str(det_run), "--num", "1", "--out", str(out), "--force"]) == 0
    assert pngs[0].stat().st_mtime_ns >= before and sorted(out.glob("*.png")) == pngs


def test_plain_image_folder_and_default_output(
    seg_run: Path, synthetic_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    folder = tmp_path / "images"
    folder.mkdir()
    sources = sorted((synthetic_source / "leftImg8bit" / "val").rglob("*.png"))[:2]
    for k, src in enumerate(sources):
        shutil.copy(src, folder / f"img{k}.png")
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    assert run_cli(["viz", "predictions", "--run", str(run), "--images", str(folder)]) == 0
    pngs = sorted((run / "viz" / "predictions").glob("*.png"))
    assert [p.name for p in pngs] == ["img0.png", "img1.png"]
    with Image.open(sources[0]) as src:
        size = src.size
    f, band = titled_geometry(size[1], 256)
    a = _png(pngs[0])
    assert a.shape[1] == f * size[0] and a.shape[0] > band + f * size[1]  # no ground truth: the prediction alone


def test_overlay_follows_the_prediction(seg_run: Path, synthetic_prepared: Path, tmp_path: Path):
    loaded = load_run(seg_run)
    ds = PreparedDataset(synthetic_prepared, "val")
    palette = loaded.classes.palette
    first = render_predictions(loaded.model, ds, tmp_path / "a", num=1, progress=False)[0]
    k = 13  # car: force this class everywhere by raising its logit
    handle = loaded.model.head.register_forward_hook(
        lambda m, i, o: o + 100.0 * (torch.arange(o.shape[1]) == k).view(1, -1, 1, 1)
    )
    try:
        forced = render_predictions(loaded.model, ds, tmp_path / "b", num=1, progress=False)[0]
    finally:
        handle.remove()
    a, b = _png(first), _png(forced)
    h, w = ds[0][0].shape[-2:]
    f, band = titled_geometry(h, 256)
    rows, fw = slice(band, band + f * h), f * w
    assert np.array_equal(a[rows, :fw], b[rows, :fw])  # the ground truth does not depend on the model
    assert np.abs(a[rows, fw + 4 : 2 * fw + 4] - b[rows, fw + 4 : 2 * fw + 4]).mean() > 5  # the prediction does
    image = (ds[0][0].numpy().transpose(1, 2, 0) * 255).round().repeat(f, 0).repeat(f, 1)
    expected = 0.5 * image + 0.5 * np.array(palette[k])  # alpha 0.5 blend of the class colour
    assert np.abs(b[rows, fw + 4 : 2 * fw + 4] - expected).max() <= 1.5


def test_render_prediction_keeps_confident_boxes_and_draws_masks():
    image = torch.full((3, 60, 80), 0.4)
    masks = torch.zeros(2, 1, 60, 80)
    masks[0, 0, 20:40, 20:40] = 0.9
    masks[1, 0, 45:55, 60:70] = 0.9
    output = {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [55.0, 42.0, 75.0, 58.0]]),
        "scores": torch.tensor([0.9, 0.1]),
        "labels": torch.tensor([2, 1]),
        "masks": masks,
    }
    panel = render_prediction(image, output, ["person", "car"], palette=[], score_threshold=0.5)
    grey = [102, 102, 102]
    assert panel.shape == (3, 60, 80) and panel.dtype == torch.uint8
    assert panel[:, 45, 10].tolist() == list(class_colors(2)[1])  # left edge of the kept car box
    assert panel[:, 30, 30].tolist() != grey  # its mask is blended in
    assert panel[:, 50, 65].tolist() == grey  # the low-scoring detection is not drawn
    assert panel[:, 5, 75].tolist() == grey


def test_classes_and_palette_of_a_run(seg_run: Path, synthetic_prepared: Path):
    recipe = load_run(seg_run).recipe
    names, palette, _, _ = cityscapes_tables()
    from_data = class_info(recipe, synthetic_prepared)
    without_data = class_info(recipe, None)  # synthetic data is in the Cityscapes layout: the official colours
    for info in (from_data, without_data):
        assert info.seg_classes == names and info.palette == palette and info.cityscapes
        assert info.det_classes[0] == "person"
    merged = class_info(
        {**recipe, "data": {**recipe["data"], "label_map": {"seg": {"road": "flat", "sidewalk": "flat"}}}},
        synthetic_prepared,
    )
    assert merged.seg_classes == ["flat"] and merged.palette == [palette[0]]
    generic = class_info({"model": {"num_seg_classes": 3, "num_det_classes": 2}, "data": {"dataset": "voc"}}, None)
    assert generic.seg_classes == ["class 0", "class 1", "class 2"] and generic.det_classes == ["class 1", "class 2"]
    assert len(generic.palette) == 3


def test_bad_input_is_one_line(seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run_cli(["viz", "predictions", "--run", str(tmp_path / "missing")]) == 2
    assert "does not exist" in error_line(capsys)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert (
        run_cli(["viz", "predictions", "--run", str(seg_run), "--images", str(bad), "--out", str(tmp_path / "o")]) == 2
    )
    line = error_line(capsys)
    assert "broken.png" in line and "cannot read image" in line
    assert (
        run_cli(
            [
                "viz",
                "predictions",
                "--run",
                str(seg_run),
                "--images",
                str(tmp_path / "nope.png"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "does not exist" in error_line(capsys)
    assert (
        run_cli(["viz", "predictions", "--run", str(seg_run), "--score-threshold", "2", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "0..1" in error_line(capsys)


def test_captions_never_hide_each_other():
    boxes = torch.tensor([[10.0, 30.0, 60.0, 70.0]] * 4)  # four detections of one object
    slots = caption_slots(boxes, [40.0] * 4, order=[2, 0, 1, 3], h=100, w=100, th=12)
    assert list(slots) == [2, 0, 1]  # above, inside, below; the fourth finds no free place and is dropped
    assert [r[1] for r in slots.values()] == [18.0, 30.0, 70.0]
    rects = list(slots.values())
    for i, r in enumerate(rects):
        for q in rects[i + 1 :]:
            assert r[2] <= q[0] or q[2] <= r[0] or r[3] <= q[1] or q[3] <= r[1]
    edge = caption_slots(torch.tensor([[90.0, 0.0, 99.0, 10.0]]), [40.0], [0], h=100, w=100, th=12)
    assert edge[0][0] == 60.0 and edge[0][1] == 0.0  # kept inside the picture


def test_legend_names_the_classes_present():
    sem = torch.tensor([[0, 0], [2, 255]])
    entries = legend_entries(
        [sem],
        [torch.tensor([1])],
        ["road", "sidewalk", "building"],
        ["person", "car"],
        [[1, 1, 1], [2, 2, 2], [3, 3, 3]],
    )
    assert [(n, filled) for n, _, filled in entries] == [("road", True), ("building", True), ("person (box)", False)]
