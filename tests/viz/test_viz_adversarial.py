"""`mtl viz adversarial`: an iterative attack on the segmentation that stays within its budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.viz.adversarial import attack
from mtlcli.viz.predictions import load_run, read_image_file
from tests.viz.conftest import error_line, run_cli


@pytest.fixture(scope="module")
def model(seg_run: Path) -> torch.nn.Module:
    return load_run(seg_run).model


@pytest.fixture(scope="module")
def image_file(synthetic_source: Path) -> Path:
    return sorted((synthetic_source / "leftImg8bit" / "val").rglob("*.png"))[0]


def test_untargeted_attack_changes_classes_within_the_budget(model: torch.nn.Module, image_file: Path):
    image = read_image_file(image_file)
    eps = 4 / 255
    result = attack(model, image, eps=eps, steps=4)
    r = result["perturbation"]
    assert result["linf"] <= eps + 1e-6 and r.abs().max() <= eps + 1e-6
    assert result["l2"] == pytest.approx(float(r.norm()), rel=1e-5) and result["l2"] > 0
    assert torch.allclose(result["adversarial"], image + r, atol=1e-6)
    assert 0.0 <= result["adversarial"].min() and result["adversarial"].max() <= 1.0
    with torch.no_grad():
        clean = model([image])[0]["sem_seg"].argmax(0)
        fooled = model([result["adversarial"]])[0]["sem_seg"].argmax(0)
    assert torch.equal(result["before"], clean) and torch.equal(result["after"], fooled)
    assert result["changed"] == pytest.approx(float((fooled != clean).float().mean()))
    assert result["changed"] > 0  # at least some pixels change class


def test_targeted_attack_moves_pixels_to_the_target(model: torch.nn.Module, image_file: Path):
    image = read_image_file(image_file)
    with torch.no_grad():
        k = int(model([image])[0]["sem_seg"].mean((1, 2)).topk(2).indices[1])  # the runner-up class
    result = attack(model, image, eps=8 / 255, steps=4, target_class=k)
    share_before = float((result["before"] == k).float().mean())
    assert result["on_target"] > share_before and result["linf"] <= 8 / 255 + 1e-6


def test_cli_panels_and_numbers(seg_run: Path, image_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "adv"
    assert run_cli(["viz", "adversarial", "--run", str(seg_run), "--image", str(image_file), "--eps", "0.02",
                    "--steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.replace("\n", "")
    assert "L2 " in printed and "Linf " in printed and "(budget 0.0200)" in printed and "% of pixels changed class" in printed
    panels = out / f"adversarial_{image_file.stem}.png"
    alone = out / f"adversarial_{image_file.stem}_image.png"
    with Image.open(image_file) as src:
        w, h = src.size
        original = np.array(src.convert("RGB")).astype(int)
    with Image.open(panels) as img:
        assert img.format == "PNG" and img.size == (5 * w, h)  # original | perturbation | adversarial | before | after
        strip = np.array(img).astype(int)
    assert np.array_equal(strip[:, :w], original)
    with Image.open(alone) as img:
        adv = np.array(img).astype(int)
    assert np.abs(adv - original).max() <= round(0.02 * 255) + 1  # the saved image respects the budget too
    assert np.array_equal(strip[:, 2 * w:3 * w], adv)
    assert run_cli(["viz", "adversarial", "--run", str(seg_run), "--image", str(image_file), "--out", str(out)]) == 2
    assert "already exists" in error_line(capsys)


def test_bad_input_is_one_line(seg_run: Path, image_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    text = tmp_path / "photo.jpg"
    text.write_text("hello")
    base = ["viz", "adversarial", "--run", str(seg_run), "--out", str(tmp_path)]
    assert run_cli(base + ["--image", str(text)]) == 2
    assert "cannot read image" in error_line(capsys)
    assert run_cli(base + ["--image", str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in error_line(capsys)
    assert run_cli(base + ["--image", str(image_file), "--eps", "0"]) == 2
    assert "--eps must be positive" in error_line(capsys)
    assert run_cli(base + ["--image", str(image_file), "--target-class", "40"]) == 2
    assert "out of range" in error_line(capsys)
    assert run_cli(["viz", "adversarial", "--run", str(tmp_path / "none"), "--image", str(image_file)]) == 2
    assert "does not exist" in error_line(capsys)


def test_a_detection_only_model_is_refused():
    from mtlcli.errors import UserError

    class BoxesOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 1)

        def forward(self, images):
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
                    for _ in images]

    with pytest.raises(UserError, match="no sem_seg output"):
        attack(BoxesOnly(), torch.rand(3, 8, 8))
