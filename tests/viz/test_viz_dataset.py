"""`mtl viz dataset` and the shared drawing helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.cli.main import main
from mtlcli.viz.dataset import render_dataset
from mtlcli.viz.draw import class_colors, colorize_dt, colorize_semantic, draw_boxes, dt_palette, overlay_semantic
from tests.data.test_dataset import IGNORE_RGB, PALETTE, build_tiny_prepared


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return build_tiny_prepared(tmp_path)


def test_colorize_semantic_and_dt():
    sem = torch.tensor([[0, 1, 2], [255, 7, -1]])
    rgb = colorize_semantic(sem, PALETTE, ignore_color=(9, 9, 9))
    assert rgb.dtype == torch.uint8 and rgb.shape == (3, 2, 3)
    assert rgb[:, 0].T.tolist() == PALETTE and rgb[:, 1].T.tolist() == [[9, 9, 9]] * 3  # ignore, unknown, negative
    dt = colorize_dt(torch.tensor([[0, 1, 2, 3]]), num_bins=3)
    assert dt[:, 0, 0].tolist() == [0, 0, 0] and [dt[:, 0, k].tolist() for k in (1, 2, 3)] == [list(c) for c in dt_palette(3)]
    assert len(set(map(tuple, dt[:, 0].T.tolist()))) == 4


def test_overlay_and_boxes_use_torchvision_drawing():
    image = torch.full((3, 20, 30), 100, dtype=torch.uint8)
    sem = torch.full((20, 30), 255)
    sem[:, :10] = 1
    out = overlay_semantic(image, sem, PALETTE, alpha=1.0)
    assert out[:, 5, 5].tolist() == PALETTE[1] and out[:, 5, 20].tolist() == [100, 100, 100]
    image = torch.full((3, 60, 80), 100, dtype=torch.uint8)
    boxed = draw_boxes(image, torch.tensor([[2.0, 3.0, 75.0, 55.0], [0, 0, 5, 5]]), [2, 1], ["person", "car"],
                       scores=[0.9, 0.5], iscrowd=[0, 1])
    assert boxed[:, 40, 2].tolist() == list(class_colors(2)[1])   # left edge of the car box, below its caption
    assert boxed[:, 40, 40].tolist() == [100, 100, 100]          # inside: untouched
    assert (boxed[:, 5:12, 4:30] != 100).any()                   # a caption was written
    assert torch.equal(draw_boxes(image, torch.zeros(0, 4), [], ["person"]), image)


def test_render_dataset_writes_overlays(tiny: Path, tmp_path: Path):
    paths = render_dataset(tiny, "train", tmp_path / "viz", num=5, progress=False)
    assert [p.name for p in paths] == ["a.png", "b.png"]  # num is capped at the split's size
    a = np.array(Image.open(paths[0]))
    b = np.array(Image.open(paths[1]))
    assert a.shape == (40, 128, 3) and b.shape == (24, 64, 3)
    left, right = a[:, :64].astype(int), a[:, 64:].astype(int)
    assert left[1, 30].tolist() == IGNORE_RGB                      # ignore band: the image shows through
    assert right[36, 2].tolist() == PALETTE[0]                     # dt bin 0: the image shows through
    assert np.abs(right[18, 12] - PALETTE[1]).max() > 30          # person centre: dt colour blended in
    person_colour = list(class_colors(2)[0])
    assert left[20, 6].tolist() == person_colour and right[20, 6].tolist() == person_colour  # box edge
    assert left[7, 44].tolist() != person_colour                   # crowd boxes are grey, not the class colour


def test_cli_on_synthetic_dataset(synthetic_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "viz"
    assert run(["viz", "dataset", "--data", str(synthetic_prepared), "--split", "val", "--out", str(out), "--num", "2"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and "wrote 2 overlay(s)" in capsys.readouterr().out
    for p in pngs:
        with Image.open(p) as im:
            assert im.size == (2 * 128, 64) and im.mode == "RGB"
    # the same files again: refused without --force, written with it
    assert run(["viz", "dataset", str(synthetic_prepared), "--split", "val", "--out", str(out), "--num", "2"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "already exists" in lines[0] and "--force" in lines[0]
    assert run(["viz", "dataset", str(synthetic_prepared), "--split", "val", "--out", str(out), "--num", "2", "--force"]) == 0


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing", "--split", "val"], "no such prepared dataset"),
    (["{data}", "--split", "nope"], "split 'nope' is not in"),
    (["{data}", "--split", "train", "--num", "0"], "--num must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args, message):
    argv = ["viz", "dataset", *[a.replace("{tmp}", str(tmp_path)).replace("{data}", str(tiny)) for a in args],
            "--out", str(tmp_path / "viz")]
    assert run(argv) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "viz").exists()
