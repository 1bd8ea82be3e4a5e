"""`mtl viz adversarial`: the paper's smallest-L2 attack flips the chosen pixels; the Linf attack stays within its
budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.engine.loaded import load_run
from mtlcli.viz.adversarial import attack
from mtlcli.viz.draw import MIN_HEIGHT, titled_geometry
from mtlcli.viz.predictions import read_image_file
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
    result = attack(model, image, norm="linf", eps=eps, steps=4)
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
    result = attack(model, image, norm="linf", eps=8 / 255, steps=4, target_class=k)
    share_before = float((result["before"] == k).float().mean())
    assert result["on_target"] > share_before and result["linf"] <= 8 / 255 + 1e-6


def test_cli_panels_and_numbers(seg_run: Path, image_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "adv"
    assert (
        run_cli(
            [
                "viz",
                "adversarial",
                "--run",
                str(seg_run),
                "--image",
                str(image_file),
                "--norm",
                "linf",
                "--eps",
                "5.1/255",
                "--steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.replace("\n", "")
    assert (
        "L2 " in printed
        and "Linf " in printed
        and "(budget 0.0200)" in printed
        and "% of pixels changed class" in printed
    )
    panels = out / f"adversarial_{image_file.stem}_linf.png"
    alone = out / f"adversarial_{image_file.stem}_linf_image.png"
    with Image.open(image_file) as src:
        w, h = src.size
        original = np.array(src.convert("RGB")).astype(int)
    with Image.open(panels) as img:
        assert img.format == "PNG"
        strip = np.array(img.convert("RGB")).astype(int)
    # two rows of titled panels, each 64-pixel-high panel enlarged f times to a readable size:
    #   original | perturbation | adversarial image       (titles above)
    #   before   | changed class | after                   (titles above, the numbers' caption line below)
    # then the legend of the predicted classes
    f, band = titled_geometry(h, MIN_HEIGHT)
    assert f == 4 and strip.shape[1] == 3 * f * w + 2 * 4
    row = band + f * h
    assert strip.shape[0] > 2 * row + band  # a caption line and a legend under the second row
    big = original.repeat(f, 0).repeat(f, 1)
    assert np.array_equal(strip[band:row, : f * w], big)
    with Image.open(alone) as img:
        adv = np.array(img).astype(int)
    assert np.abs(adv - original).max() <= round(0.02 * 255) + 1  # the saved image respects the budget too
    x2 = 2 * (f * w + 4)
    assert np.array_equal(strip[band:row, x2 : x2 + f * w], adv.repeat(f, 0).repeat(f, 1))
    for top in (0, row):  # titles are written above both rows
        assert (strip[top : top + band] < 128).any()
    assert (strip[2 * row :] < 128).any()  # the caption and the legend
    # the middle of the second row marks the pixels whose class changed, red on light grey
    middle = strip[row + band : 2 * row, f * w + 4 : 2 * f * w + 4].reshape(-1, 3)
    assert {tuple(c) for c in np.unique(middle, axis=0)} <= {(220, 40, 40), (235, 235, 235)}
    assert (
        run_cli(
            [
                "viz",
                "adversarial",
                "--run",
                str(seg_run),
                "--image",
                str(image_file),
                "--norm",
                "linf",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "already exists" in error_line(capsys)


def test_bad_input_is_one_line(seg_run: Path, image_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    text = tmp_path / "photo.jpg"
    text.write_text("hello")
    base = ["viz", "adversarial", "--run", str(seg_run), "--out", str(tmp_path)]
    assert run_cli(base + ["--image", str(text)]) == 2
    assert "cannot read image" in error_line(capsys)
    assert run_cli(base + ["--image", str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in error_line(capsys)
    assert run_cli(base + ["--image", str(image_file), "--norm", "linf", "--eps", "0"]) == 2
    assert "--eps must be positive" in error_line(capsys)
    assert run_cli(base + ["--image", str(image_file), "--norm", "linf", "--eps", "8/0"]) == 2
    assert "write e.g. 0.03 or 8/255" in error_line(capsys)
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
            return [
                {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
                for _ in images
            ]

    with pytest.raises(UserError, match="no sem_seg output"):
        attack(BoxesOnly(), torch.rand(3, 8, 8))


# ------------------------------------------------------------------ the paper's problem: min ||r||2 s.t. f(x + r) != y


def test_l2_attack_flips_the_chosen_share_and_reports_it(model: torch.nn.Module, image_file: Path):
    image = read_image_file(image_file)
    result = attack(model, image, flip_rate=0.4, steps=60, refine_steps=3)
    assert result["norm"] == "l2" and result["flipped"] and result["first_flip"] is not None
    assert result["steps"] == result["first_flip"] + 3  # search until the flip, then refine
    adv = result["adversarial"]
    assert 0.0 <= adv.min() and adv.max() <= 1.0
    assert result["l2"] == pytest.approx(float((adv - image).norm()), rel=1e-5) and result["l2"] > 0
    with torch.no_grad():
        clean = model([image])[0]["sem_seg"].argmax(0)
        fooled = model([adv])[0]["sem_seg"].argmax(0)
    share = float((fooled != clean).float().mean())  # checked on the returned image itself
    assert share >= 0.4 and result["flip_rate"] == pytest.approx(share)


def test_l2_refinement_never_grows_the_norm(model: torch.nn.Module, image_file: Path):
    image = read_image_file(image_file)
    first = attack(model, image, flip_rate=0.3, steps=60, refine_steps=0)
    refined = attack(model, image, flip_rate=0.3, steps=60, refine_steps=4)
    assert first["flipped"] and refined["flipped"] and first["first_flip"] == refined["first_flip"]
    assert refined["l2"] <= first["l2"] + 1e-6 and refined["flip_rate"] >= 0.3


def test_l2_attack_on_one_class_only_counts_its_pixels(model: torch.nn.Module, image_file: Path):
    image = read_image_file(image_file)
    with torch.no_grad():
        clean = model([image])[0]["sem_seg"].argmax(0)
    k = int(clean.flatten().mode().values)
    result = attack(model, image, source_class=k, flip_rate=0.5, steps=60, refine_steps=0)
    chosen = clean == k
    assert result["chosen"] == int(chosen.sum()) and result["flipped"]
    assert result["flip_rate"] == pytest.approx(float((result["after"][chosen] != k).float().mean()))


def test_l2_attack_that_does_not_reach_the_goal_says_so(model: torch.nn.Module, image_file: Path):
    result = attack(model, read_image_file(image_file), flip_rate=1.0, steps=1)
    assert not result["flipped"] and result["first_flip"] is None and result["steps"] == 1


def test_cli_default_is_the_l2_problem(
    seg_run: Path, image_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from mtlcli.viz.adversarial import panel_titles

    out = tmp_path / "adv"
    assert (
        run_cli(
            [
                "viz",
                "adversarial",
                "--run",
                str(seg_run),
                "--image",
                str(image_file),
                "--flip-rate",
                "0.3",
                "--refine-steps",
                "2",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    printed = " ".join(capsys.readouterr().out.split())
    assert "||r||2 " in printed and "flipped " in printed and "(goal 30%)" in printed and " steps" in printed
    assert (out / f"adversarial_{image_file.stem}.png").is_file()
    result = attack(load_run(seg_run).model, read_image_file(image_file), flip_rate=1.0, steps=2, target_class=0)
    titles, caption = panel_titles(result, ["road"])
    assert titles[0] == "original" and titles[-1] == "prediction after (target road)"
    assert f"‖r‖₂ = {result['l2']:.3f}" in caption and f"‖r‖∞ = {result['linf']:.4f}" in caption
    assert "NOT flipped" in caption and "2 steps" in caption
    assert (
        run_cli(
            [
                "viz",
                "adversarial",
                "--run",
                str(seg_run),
                "--image",
                str(image_file),
                "--eps",
                "0.1",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--norm linf" in error_line(capsys)
