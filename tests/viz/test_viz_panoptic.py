"""The panoptic overlay: a third panel in `mtl viz predictions --panoptic`, segments in class colours
with borders, two touching things of one class told apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.viz.conftest import run_cli


def test_draw_panoptic_colours_segments_and_borders():
    from mtlcli.viz.panoptic import draw_panoptic

    image = torch.zeros((3, 8, 12), dtype=torch.uint8)
    ids = np.zeros((8, 12), np.int64)
    ids[:, :4], ids[:, 4:8], ids[:, 8:] = 1, 2, 3  # two cars side by side, then road
    segs = [
        {"id": 1, "category_id": 5, "isthing": True},
        {"id": 2, "category_id": 5, "isthing": True},
        {"id": 3, "category_id": 1, "isthing": False},
    ]
    palette = [[128, 64, 128], [0, 0, 142]]
    out = draw_panoptic(image, ids, segs, {1: 0, 5: 1}, palette, alpha=1.0)
    assert out.shape == (3, 8, 12) and out.dtype == torch.uint8
    assert not torch.equal(out[:, 2, 1], out[:, 2, 5])  # the two cars differ
    assert out[:, 2, 10].tolist() == [128, 64, 128]  # road in its class colour
    assert out[:, 2, 4].tolist() == [255, 255, 255]  # a border


def test_viz_predictions_adds_a_panoptic_panel(det_run: Path, tmp_path: Path):
    plain, pan = tmp_path / "plain", tmp_path / "pan"
    args = ["viz", "predictions", "--run", str(det_run), "--num", "1", "--device", "cpu"]
    assert run_cli(args + ["--out", str(plain)]) == 0
    assert run_cli(args + ["--out", str(pan), "--panoptic"]) == 0
    a = np.asarray(Image.open(next(plain.glob("*.png"))))
    b = np.asarray(Image.open(next(pan.glob("*.png"))))
    assert b.shape[1] > a.shape[1] * 1.3  # one more panel


@pytest.mark.parametrize("flag", ["--panoptic"])
def test_predict_help_names_the_panoptic_output(flag, capsys):
    assert run_cli(["predict", "--help"]) == 0
    assert flag in capsys.readouterr().out
