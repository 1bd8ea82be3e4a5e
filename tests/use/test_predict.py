"""`mtl predict` on images of several sizes and formats in nested folders, a glob, a corrupt file and a
short video; outputs, names and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlcli.viz.draw import MIN_HEIGHT, titled_geometry
from tests.use.conftest import write_image
from tests.viz.conftest import error_line, run_cli

av = pytest.importorskip("av")

SIZES = {"a/x.png": (60, 90), "b/x.jpg": (33, 47), "b/deep/c.bmp": (64, 128)}


def write_video(path: Path, frames: int = 5, size: tuple[int, int] = (48, 64)) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for i, (rel, size) in enumerate(SIZES.items()):
        write_image(root / rel, size, mode="L" if rel.endswith(".jpg") else "RGB", seed=i)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write_video(root / "clip.mp4")
    return root


def test_predict_folder_with_video(ivanet_run, sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        run_cli(
            [
                "predict",
                str(sources),
                "--run",
                str(ivanet_run),
                "--out",
                str(out),
                "--score-threshold",
                "0.05",
                "--workers",
                "1",
                "--batch-size",
                "2",
                "--save-masks",
                "-q",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "skipped" in printed and "broken.png" in printed and "images/s" in printed
    assert "predicted 3 images + 5 video frames" in printed

    images = json.loads((out / "images.json").read_text())
    assert sorted(Path(im["file_name"]).name for im in images["images"]) == ["c.bmp", "x.jpg", "x.png"]
    assert [c["name"] for c in images["categories"]][:3] == ["person", "rider", "car"]
    by_id = {im["id"]: im for im in images["images"]}
    for rel, (h, w) in SIZES.items():
        name = str(Path(rel).with_suffix(".png"))
        f, band = titled_geometry(h, MIN_HEIGHT)  # small images enlarged f times: a title above, a legend below
        overlay = Image.open(out / "overlays" / name)
        assert f > 1 and overlay.width >= f * w and overlay.height > band + f * h
        semantic = np.asarray(Image.open(out / "semantic" / name))
        assert semantic.shape == (h, w) and semantic.max() < 19
        label_ids = np.asarray(Image.open(out / "labelIds" / name))  # Cityscapes classes: labelIds as well
        assert label_ids.shape == (h, w) and label_ids.max() <= 33
    dets = json.loads((out / "detections.json").read_text())
    assert dets, "an untrained model at threshold 0.05 still answers"
    for d in dets:
        image = by_id[d["image_id"]]
        assert (
            d["file_name"] == image["file_name"]
            and d["category_name"] == images["categories"][d["category_id"] - 1]["name"]
        )
        x, y, bw, bh = d["bbox"]
        assert 0 <= x and x + bw <= image["width"] + 0.01 and y + bh <= image["height"] + 0.01 and d["score"] >= 0.05
        assert "segmentation" not in d  # IvaNet has no instance-mask head: --save-masks adds nothing

    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(5))
    with av.open(str(out / "clip.mp4")) as video:
        frames = list(video.decode(video=0))
    assert len(frames) == 5 and (frames[0].height, frames[0].width) == (48, 64)


def test_overlay_is_the_picture_viz_predictions_draws(ivanet_run, tmp_path, capsys, monkeypatch):
    """One code path: `mtl predict` draws a plain image exactly as `mtl viz predictions --images` does (enlarged
    to a readable size, titled with the threshold, a legend of the classes present, box classes included)."""
    import mtlcli.viz.draw as draw

    image = write_image(tmp_path / "in" / "sub" / "street.png", (64, 128))
    calls = []
    titled_picture = draw.titled_picture
    monkeypatch.setattr(
        draw,
        "titled_picture",
        lambda panels, titles, entries, caption=None: (
            calls.append((titles, entries)),
            titled_picture(panels, titles, entries, caption),
        )[1],
    )
    assert (
        run_cli(
            [
                "predict",
                str(tmp_path / "in"),
                "--run",
                str(ivanet_run),
                "--out",
                str(tmp_path / "p"),
                "--score-threshold",
                "0.05",
                "--workers",
                "0",
                "-q",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ((titles, entries),) = calls
    assert titles == ["prediction (score ≥ 0.05)"]  # the prediction alone: no ground truth panel for a user's image
    names = [e[0] for e in entries]
    dets = json.loads((tmp_path / "p" / "detections.json").read_text())
    assert dets and {f"{d['category_name']} (box)" for d in dets} <= set(names)  # every drawn box class
    assert any(filled for _, _, filled in entries) and not any(n.startswith("class ") for n in names)

    monkeypatch.setattr(draw, "titled_picture", titled_picture)
    assert (
        run_cli(
            [
                "viz",
                "predictions",
                "--run",
                str(ivanet_run),
                "--images",
                str(image),
                "--score-threshold",
                "0.05",
                "--out",
                str(tmp_path / "v"),
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    with (
        Image.open(tmp_path / "p" / "overlays" / "sub" / "street.png") as a,
        Image.open(tmp_path / "v" / "street.png") as b,
    ):
        assert a.size == b.size and a.height > 256  # 64 pixels high: enlarged 4x, with title and legend
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_globs_files_and_options(ivanet_run, sources, tmp_path, capsys):
    out = tmp_path / "out"
    pattern = str(sources / "**" / "*.png")
    assert (
        run_cli(
            [
                "predict",
                pattern,
                str(sources / "b" / "x.jpg"),
                "--run",
                str(ivanet_run),
                "--out",
                str(out),
                "--workers",
                "0",
                "--no-save-images",
                "-q",
            ]
        )
        == 0
    )
    assert "predicted 2 images" in capsys.readouterr().out  # a/x.png from the glob (broken.png skipped), x.jpg
    assert not (out / "overlays").exists() and (out / "semantic" / "a" / "x.png").is_file()
    assert (out / "semantic" / "x.png").is_file()  # a file given by name keeps its own name


@pytest.mark.parametrize(
    "argv, match",
    [
        (["nowhere/*.png"], "matches no image"),
        (["missing.jpg"], "does not exist"),
        (["{src}", "--run", "{run}", "--checkpoint", "{run}/checkpoints/best.pt"], "either"),
        (["{src}/a", "--out", "{src}"], "not empty"),
    ],
)
def test_bad_input_is_one_line(ivanet_run, sources, monkeypatch, tmp_path, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(src=sources, run=ivanet_run) for a in argv]
    if "--run" not in argv:
        argv += ["--run", str(ivanet_run)]
    assert run_cli(["predict", *argv, "-q"]) == 2
    assert match in error_line(capsys)
