"""`mtl viz features`: activation maximisation raises the chosen activation; filters as a grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mtlcli.viz.features import class_objective, filter_grid, first_conv, layer_objective, maximize_activation
from mtlcli.viz.predictions import load_run
from tests.viz.conftest import error_line, run_cli


@pytest.fixture(scope="module")
def model(seg_run: Path) -> torch.nn.Module:
    return load_run(seg_run).model


@pytest.mark.parametrize("perturb", [True, False], ids=["jitter-scale-rotate-blur", "plain"])
def test_ascent_raises_a_channel(model: torch.nn.Module, perturb: bool):
    objective = layer_objective(model, "context", channel=2)
    result = maximize_activation(objective, model.input_size, steps=8, jitter=4 if perturb else 0, scale=perturb,
                                 rotate=perturb, blur=perturb)
    assert result["after"] > result["before"] + 0.1 * abs(result["before"])
    image = result["image"]
    assert image.shape == (3, *model.input_size) and 0.0 <= image.min() and image.max() <= 1.0
    with torch.no_grad():  # "before"/"after" are the objective itself on the start and end images
        assert objective(image) == pytest.approx(result["after"], rel=1e-4, abs=1e-5)


def test_ascent_raises_a_class_score(model: torch.nn.Module):
    result = maximize_activation(class_objective(model, 13), model.input_size, steps=6, seed=1)
    assert result["after"] > result["before"]
    with torch.no_grad():
        # the optimised image makes class 13 more likely than the noise it started from
        scores = model([result["image"]])[0]["sem_seg"]
    assert scores[13].log().mean() == pytest.approx(result["after"], rel=1e-4)


def test_filter_grid_layout():
    weight = torch.randn(10, 3, 3, 3)
    grid = filter_grid(weight)  # 3x3 filters enlarged 10x to 30 px, 8 per row, 2 px gaps
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 * 32 + 2, 8 * 32 + 2)
    cell = grid[:, 2:32, 2:32]
    assert cell.min() == 0 and cell.max() == 255  # each filter stretched to the full range on its own
    assert grid[:, 0].eq(255).all()  # white gap
    name, conv = first_conv(torch.nn.Sequential(torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(3, 8, 3)))
    assert name == "1" and conv.in_channels == 3  # the convolution that sees the image


def test_cli_writes_image_and_filters(seg_run: Path, model: torch.nn.Module, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "f"
    assert run_cli(["viz", "features", "--run", str(seg_run), "--layer", "head", "--class", "car", "--steps", "3",
                    "--no-jitter", "--no-blur", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer head class car" in printed
    image = out / "features_head_class_car.png"
    name, conv = first_conv(model)
    filters = out / f"filters_{name}.png"
    h, w = model.input_size
    with Image.open(image) as img:
        assert img.format == "PNG" and img.size == (w, h)
    with Image.open(filters) as img:
        assert img.size == tuple(filter_grid(conv.weight).shape[:0:-1])
    assert run_cli(["viz", "features", "--run", str(seg_run), "--layer", "head", "--class", "13", "--steps", "1",
                    "--out", str(out)]) == 2
    assert "already exists" in error_line(capsys)
    assert run_cli(["viz", "features", "--run", str(seg_run), "--list-layers"]) == 0
    assert {"trunk", "context", "head"} <= set(capsys.readouterr().out.split())


def test_bad_layer_channel_and_class(seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    base = ["viz", "features", "--run", str(seg_run), "--steps", "1", "--out", str(tmp_path)]
    assert run_cli(base + ["--layer", "contxt"]) == 2
    line = error_line(capsys)
    assert "no layer 'contxt'" in line and "did you mean context" in line and "valid layers: trunk" in line
    assert run_cli(base + ["--layer", "context", "--channel", "999"]) == 2
    assert "channels 0..15" in error_line(capsys)
    assert run_cli(base + ["--class", "unicorn"]) == 2
    assert "0=road" in error_line(capsys)
    assert run_cli(base + ["--layer", "context", "--class", "car"]) == 2  # 16 channels, 19 classes
    assert "not one per class" in error_line(capsys)
    assert run_cli(base) == 2
    assert "--layer NAME" in error_line(capsys)
    assert run_cli(["viz", "features", "--run", str(tmp_path / "none"), "--layer", "head"]) == 2
    assert "does not exist" in error_line(capsys)
