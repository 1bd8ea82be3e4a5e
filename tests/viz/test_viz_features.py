"""`mtl viz features`: activation maximisation raises the chosen activation; filters as a grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.engine.loaded import load_run
from mtlcli.viz.features import class_objective, filter_grid, first_conv, layer_objective, maximize_activation
from tests.viz.conftest import error_line, run_cli


@pytest.fixture(scope="module")
def model(seg_run: Path) -> torch.nn.Module:
    return load_run(seg_run).model


@pytest.mark.parametrize("perturb", [True, False], ids=["jitter-scale-rotate-blur", "plain"])
def test_ascent_raises_a_channel(model: torch.nn.Module, perturb: bool):
    objective = layer_objective(model, "context", channel=2)
    result = maximize_activation(
        objective,
        model.input_size,
        steps=24 if perturb else 8,
        jitter=4 if perturb else 0,
        scale=perturb,
        rotate=perturb,
        blur=perturb,
    )
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


def test_cli_writes_image_and_filters(
    seg_run: Path, model: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "f"
    assert (
        run_cli(
            [
                "viz",
                "features",
                "--run",
                str(seg_run),
                "--layer",
                "head",
                "--class",
                "car",
                "--steps",
                "3",
                "--no-jitter",
                "--no-blur",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "layer head class car" in printed
    image = out / "features_head_class_car_image.png"
    titled = out / "features_head_class_car.png"
    name, conv = first_conv(model)
    filters = out / f"filters_{name}.png"
    h, w = model.input_size
    with Image.open(image) as img:
        assert img.format == "PNG" and img.size == (w, h)  # an input the model could take
    with Image.open(titled) as img:  # enlarged to at least 256 pixels, under a title, above the numbers
        big = np.array(img.convert("RGB"))
    f = -(-256 // h)
    band = (big.shape[0] - f * h) // 3  # one title line, two caption lines
    x0 = (big.shape[1] - f * w) // 2  # centred when the caption is wider than the image
    assert big.shape[1] >= f * w and band >= 13
    with Image.open(image) as img:
        enlarged = np.array(img.convert("RGB")).repeat(f, 0).repeat(f, 1)
    assert np.array_equal(big[band : band + f * h, x0 : x0 + f * w], enlarged)
    assert (big[:band] < 128).any() and (big[band + f * h :] < 128).any()
    grid = filter_grid(conv.weight)
    with Image.open(filters) as img:
        assert img.size[0] >= grid.shape[-1] * max(1, -(-128 // grid.shape[-2])) and img.size[1] > grid.shape[-2]
    assert (
        run_cli(
            [
                "viz",
                "features",
                "--run",
                str(seg_run),
                "--layer",
                "head",
                "--class",
                "13",
                "--steps",
                "1",
                "--out",
                str(out),
            ]
        )
        == 2
    )
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


def test_render_features_names_the_unit_and_numbers(model: torch.nn.Module, tmp_path: Path):
    from mtlcli.viz.features import render_features

    result = render_features(model, tmp_path, layer="context", channel=2, steps=2, progress=False)
    title, caption, filters_title = result["titles"]
    assert title.endswith("layer context channel 2") and "(noise) ->" in caption and "2 steps" in caption
    assert f"{result['after']:.3g}" in caption and "filters 3x3" in filters_title or "filters" in filters_title


# ---------------------------------------------------------------- a torchvision classifier (the paper's DenseNet-121)


@pytest.fixture(scope="module")
def densenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised DenseNet-121 state dict under torchvision's published (old-style) key names."""
    import re

    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.densenet121(weights=None).state_dict()
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
    assert any(".norm.1." in k for k in old)
    path = tmp_path_factory.mktemp("weights") / "densenet121-random.pth"
    torch.save(old, path)
    return path


def test_classifier_class_score_rises(densenet_file: Path):
    from mtlcli.viz.features import ClassifierAdapter, load_classifier

    model = load_classifier("densenet121", densenet_file, input_size=(48, 48))
    assert isinstance(model, ClassifierAdapter) and model.class_names[444] == "bicycle-built-for-two"
    assert "features.denseblock1" in dict(model.named_modules())  # torchvision's layer names
    result = maximize_activation(
        class_objective(model, 444), (48, 48), steps=3, jitter=0, scale=False, rotate=False, blur=False
    )
    with torch.no_grad():
        logits = model([result["image"]])[0]["logits"]
    assert logits.shape == (1000,) and float(logits[444]) == pytest.approx(result["after"], rel=1e-4, abs=1e-4)
    assert result["after"] > result["before"]


def test_cli_classifier_path(densenet_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "cls"
    base = [
        "viz",
        "features",
        "--classifier",
        "densenet121",
        "--weights",
        str(densenet_file),
        "--size",
        "48",
        "--steps",
        "1",
        "-q",
        "--out",
        str(out),
    ]
    assert run_cli(base + ["--class", "bicycle-built-for-two"]) == 0
    printed = capsys.readouterr().out
    assert "classifier class bicycle-built-for-two: class score (logit)" in printed
    with Image.open(out / "features_class_bicycle-built-for-two_image.png") as img:
        assert img.size == (48, 48)
    assert (out / "filters_features.conv0.png").is_file()
    assert run_cli(base + ["--layer", "features.denseblock2", "--channel", "5"]) == 0
    assert (out / "features_features.denseblock2_c5.png").is_file()


def test_classifier_bad_input(densenet_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    base = ["viz", "features", "--steps", "1", "--out", str(tmp_path), "--class", "1"]
    assert run_cli(base + ["--classifier", "densenet121"]) == 2
    assert "needs --weights" in error_line(capsys)
    assert run_cli(base + ["--classifier", "densenet12", "--weights", str(densenet_file)]) == 2
    assert "did you mean densenet121" in error_line(capsys)
    assert run_cli(base + ["--classifier", "resnet18", "--weights", str(densenet_file)]) == 2
    assert "not a whole resnet18" in error_line(capsys)
    assert run_cli(base + ["--classifier", "densenet121", "--weights", str(tmp_path / "nope.pth")]) == 2
    assert "does not exist" in error_line(capsys)
