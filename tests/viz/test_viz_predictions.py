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
from mtlcli.viz.draw import class_colors
from mtlcli.viz.predictions import class_info, load_run, render_prediction, render_predictions
from tests.viz.conftest import error_line, run_cli


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.array(img.convert("RGB")).astype(int)


def test_cli_draws_ground_truth_beside_predictions(det_run: Path, synthetic_prepared: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "pred"
    assert run_cli(["viz", "predictions", "--run", str(det_run), "--num", "2", "--score-threshold", "0.0",
                    "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and "wrote 2 prediction overlay(s)" in printed
    assert all(p.name in printed.replace("\n", "") for p in pngs)
    ds = PreparedDataset(synthetic_prepared, "val")
    h, w = ds[0][0].shape[-2:]
    for p in pngs:
        a = _png(p)
        assert a.shape == (h, 2 * w, 3)  # ground truth | prediction
        assert np.abs(a[:, :w] - a[:, w:]).mean() > 1  # the untrained model does not reproduce the ground truth
    # existing overlays are kept unless --force
    assert run_cli(["viz", "predictions", "--run", str(det_run), "--num", "1", "--out", str(out)]) == 2
    line = error_line(capsys)
    assert "already exists" in line and "--force" in line
    before = pngs[0].stat().st_mtime_ns
    assert run_cli(["viz", "predictions", "--run", str(det_run), "--num", "1", "--out", str(out), "--force"]) == 0
    assert pngs[0].stat().st_mtime_ns >= before and sorted(out.glob("*.png")) == pngs


def test_plain_image_folder_and_default_output(seg_run: Path, synthetic_source: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]):
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
    assert _png(pngs[0]).shape == (size[1], size[0], 3)  # no ground truth: the prediction panel alone


def test_overlay_follows_the_prediction(seg_run: Path, synthetic_prepared: Path, tmp_path: Path):
    loaded = load_run(seg_run)
    ds = PreparedDataset(synthetic_prepared, "val")
    palette = loaded.classes.palette
    first = render_predictions(loaded.model, ds, tmp_path / "a", num=1, progress=False)[0]
    k = 13  # car: force this class everywhere by raising its logit
    handle = loaded.model.head.register_forward_hook(lambda m, i, o: o + 100.0 * (torch.arange(o.shape[1]) == k).view(1, -1, 1, 1))
    try:
        forced = render_predictions(loaded.model, ds, tmp_path / "b", num=1, progress=False)[0]
    finally:
        handle.remove()
    a, b = _png(first), _png(forced)
    w = a.shape[1] // 2
    assert np.array_equal(a[:, :w], b[:, :w])          # the ground-truth panel does not depend on the model
    assert np.abs(a[:, w:] - b[:, w:]).mean() > 5      # the prediction panel does
    image = (ds[0][0].numpy().transpose(1, 2, 0) * 255).round()
    expected = 0.5 * image + 0.5 * np.array(palette[k])  # alpha 0.5 blend of the class colour
    assert np.abs(b[:, w:] - expected).max() <= 1.5


def test_render_prediction_keeps_confident_boxes_and_draws_masks():
    image = torch.full((3, 60, 80), 0.4)
    masks = torch.zeros(2, 1, 60, 80)
    masks[0, 0, 20:40, 20:40] = 0.9
    masks[1, 0, 45:55, 60:70] = 0.9
    output = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [55.0, 42.0, 75.0, 58.0]]),
              "scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([2, 1]), "masks": masks}
    panel = render_prediction(image, output, ["person", "car"], palette=[], score_threshold=0.5)
    grey = [102, 102, 102]
    assert panel.shape == (3, 60, 80) and panel.dtype == torch.uint8
    assert panel[:, 45, 10].tolist() == list(class_colors(2)[1])   # left edge of the kept car box
    assert panel[:, 30, 30].tolist() != grey                       # its mask is blended in
    assert panel[:, 50, 65].tolist() == grey                       # the low-scoring detection is not drawn
    assert panel[:, 5, 75].tolist() == grey


def test_classes_and_palette_of_a_run(seg_run: Path, synthetic_prepared: Path):
    recipe = load_run(seg_run).recipe
    names, palette, _, _ = cityscapes_tables()
    from_data = class_info(recipe, synthetic_prepared)
    without_data = class_info(recipe, None)  # synthetic data is in the Cityscapes layout: the official colours
    for info in (from_data, without_data):
        assert info.seg_classes == names and info.palette == palette and info.cityscapes
        assert info.det_classes[0] == "person"
    merged = class_info({**recipe, "data": {**recipe["data"], "label_map": {"seg": {"road": "flat", "sidewalk": "flat"}}}},
                        synthetic_prepared)
    assert merged.seg_classes == ["flat"] and merged.palette == [palette[0]]
    generic = class_info({"model": {"num_seg_classes": 3, "num_det_classes": 2}, "data": {"dataset": "voc"}}, None)
    assert generic.seg_classes == ["class 0", "class 1", "class 2"] and generic.det_classes == ["class 1", "class 2"]
    assert len(generic.palette) == 3


def test_bad_input_is_one_line(seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run_cli(["viz", "predictions", "--run", str(tmp_path / "missing")]) == 2
    assert "does not exist" in error_line(capsys)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert run_cli(["viz", "predictions", "--run", str(seg_run), "--images", str(bad), "--out", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert "broken.png" in line and "cannot read image" in line
    assert run_cli(["viz", "predictions", "--run", str(seg_run), "--images", str(tmp_path / "nope.png"),
                    "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in error_line(capsys)
    assert run_cli(["viz", "predictions", "--run", str(seg_run), "--score-threshold", "2", "--out", str(tmp_path / "o")]) == 2
    assert "0..1" in error_line(capsys)
