"""`mtl viz dataset` and the shared drawing helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.cli.main import main
from mtlcli.data.dataset import PreparedDataset
from mtlcli.viz.dataset import TITLES, ground_truth_legend, render_dataset, sample_caption
from mtlcli.viz.draw import (
    CROWD_COLOR,
    MIN_HEIGHT,
    class_colors,
    colorize_dt,
    colorize_semantic,
    draw_boxes,
    dt_palette,
    font_size_for,
    legend,
    overlay_semantic,
    titled_geometry,
    titled_row,
)
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
    assert dt[:, 0, 0].tolist() == [0, 0, 0] and [dt[:, 0, k].tolist() for k in (1, 2, 3)] == [
        list(c) for c in dt_palette(3)
    ]
    assert len(set(map(tuple, dt[:, 0].T.tolist()))) == 4


def test_overlay_and_boxes_use_torchvision_drawing():
    image = torch.full((3, 20, 30), 100, dtype=torch.uint8)
    sem = torch.full((20, 30), 255)
    sem[:, :10] = 1
    out = overlay_semantic(image, sem, PALETTE, alpha=1.0)
    assert out[:, 5, 5].tolist() == PALETTE[1] and out[:, 5, 20].tolist() == [100, 100, 100]
    image = torch.full((3, 60, 80), 100, dtype=torch.uint8)
    boxed = draw_boxes(
        image,
        torch.tensor([[2.0, 3.0, 75.0, 55.0], [0, 0, 5, 5]]),
        [2, 1],
        ["person", "car"],
        scores=[0.9, 0.5],
        iscrowd=[0, 1],
    )
    assert boxed[:, 40, 2].tolist() == list(class_colors(2)[1])  # left edge of the car box, below its caption
    assert boxed[:, 40, 40].tolist() == [100, 100, 100]  # inside: untouched
    assert (boxed[:, 5:12, 4:30] != 100).any()  # a caption was written
    assert torch.equal(draw_boxes(image, torch.zeros(0, 4), [], ["person"]), image)


def test_render_dataset_writes_overlays(tiny: Path, tmp_path: Path):
    paths = render_dataset(tiny, "train", tmp_path / "viz", num=5, progress=False)
    assert [p.name for p in paths] == ["a.png", "b.png"]  # num is capped at the split's size
    a = np.array(Image.open(paths[0])).astype(int)
    f, band = titled_geometry(40, MIN_HEIGHT)  # the 40x64 image is enlarged f times for readable text
    assert f == 7 and a.shape[1] == 2 * f * 64 + 4 and a.shape[0] > band + f * 40 + band  # titles, caption, legend

    def left(y: int, x: int) -> list[int]:  # the middle of source pixel (y, x) in a panel
        return a[band + y * f + f // 2, x * f + f // 2].tolist()

    def right(y: int, x: int) -> list[int]:
        return a[band + y * f + f // 2, f * 64 + 4 + x * f + f // 2].tolist()

    assert left(1, 30) == IGNORE_RGB  # ignore band: the image shows through
    assert right(36, 2) == PALETTE[0]  # dt bin 0: the image shows through
    assert np.abs(np.array(right(18, 12)) - PALETTE[1]).max() > 30  # person centre: dt colour blended in
    person_colour = list(class_colors(2)[0])
    edge = band + 20 * f
    assert (
        a[edge, 6 * f].tolist() == person_colour and a[edge, f * 64 + 4 + 6 * f].tolist() == person_colour
    )  # box edge
    assert a[band + 7 * f, 44 * f].tolist() == list(CROWD_COLOR)  # crowd boxes are grey, not the class colour


def test_overlay_titles_caption_and_legend_name_what_is_drawn(tiny: Path, tmp_path: Path):
    """The picture's title band, caption line and legend are exactly those of the expected texts and entries."""
    ds = PreparedDataset(tiny, "train")
    image, target = ds[0]
    entries = ground_truth_legend(target, ds.det_classes, ds.seg_classes, ds.palette, ds.meta.dt_thresholds)
    box = class_colors(2)
    assert entries == [
        ("road", PALETTE[0], True),
        ("person", PALETTE[1], True),
        ("car", PALETTE[2], True),
        ("person (box)", box[0], False),
        ("car (box)", box[1], False),
        ("crowd region (box)", CROWD_COLOR, False),
        *zip(["DT ≤ 0.2 (boundary)", "DT 0.2–0.4", "DT > 0.4 (centre)"], dt_palette(3), [True] * 3, strict=True),
    ]
    caption = sample_caption("train", "a", target)
    assert caption == "train/a: 2 objects, 1 crowd region"

    a, b = (np.array(Image.open(p)) for p in render_dataset(tiny, "train", tmp_path / "viz", progress=False))
    f, band = titled_geometry(40, MIN_HEIGHT)
    blank = torch.zeros(3, 40 * f, 64 * f, dtype=torch.uint8)
    reference = titled_row([blank, blank], list(TITLES), caption, min_height=MIN_HEIGHT).permute(1, 2, 0).numpy()
    below = band + 40 * f  # the caption line starts under the panels
    assert TITLES == ("semantic map and boxes", "distance transform and boxes")
    assert (
        np.array_equal(a[:band], reference[:band])
        and (a[:band, : 64 * f] < 100).any()
        and (a[:band, 64 * f :] < 100).any()
    )
    assert np.array_equal(a[below : band + below], reference[below:])  # the caption line
    drawn_legend = legend(entries, a.shape[1], font_size_for(40 * f)).permute(1, 2, 0).numpy()
    assert np.array_equal(a[band + below :], drawn_legend)
    for _, colour, filled in entries:  # every swatch is in the legend, in its colour
        if filled:
            assert (a[band + below :] == colour).all(-1).any()

    # an image without labels: titles and a caption that says so, no legend
    assert sample_caption("train", "b", ds[1][1]) == "train/b: 0 objects, no semantic labels"
    fb, band_b = titled_geometry(24, MIN_HEIGHT)
    assert b.shape[0] == 2 * band_b + 24 * fb


def test_cli_on_synthetic_dataset(synthetic_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "viz"
    assert (
        run(["viz", "dataset", "--data", str(synthetic_prepared), "--split", "val", "--out", str(out), "--num", "2"])
        == 0
    )
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and "wrote 2 overlay(s)" in capsys.readouterr().out
    for p in pngs:
        with Image.open(p) as im:  # 64x128 images enlarged 4x: two titled panels, a caption, a legend
            f, band = titled_geometry(64, MIN_HEIGHT)
            assert f == 4 and im.size[0] == 2 * f * 128 + 4 and im.size[1] > 2 * band + f * 64 and im.mode == "RGB"
    # the same files again: refused without --force, written with it
    assert run(["viz", "dataset", str(synthetic_prepared), "--split", "val", "--out", str(out), "--num", "2"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "already exists" in lines[0] and "--force" in lines[0]
    assert (
        run(["viz", "dataset", str(synthetic_prepared), "--split", "val", "--out", str(out), "--num", "2", "--force"])
        == 0
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing", "--split", "val"], "no such prepared dataset"),
        (["{data}", "--split", "nope"], "split 'nope' is not in"),
        (["{data}", "--split", "train", "--num", "0"], "--num must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args, message
):
    argv = [
        "viz",
        "dataset",
        *[a.replace("{tmp}", str(tmp_path)).replace("{data}", str(tiny)) for a in args],
        "--out",
        str(tmp_path / "viz"),
    ]
    assert run(argv) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "viz").exists()
