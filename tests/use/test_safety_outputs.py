"""Issue 30, causes 1-5 on `mtl predict` and `mtl export` (and their Noisy items): an output is never an
input, videos and JSON lines are renamed into place only when complete, EXIF and 16-bit images are
predicted as read everywhere, a bomb or an unreadable input is named, all-unreadable inputs end with
exit 2, a 0-frame video is listed; an export that fails keeps the earlier file and sidecar, and an
existing sidecar is not replaced without --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.safety.common import bomb_png, cli, exif_rotated, grey16, one_line
from tests.use.test_predict import write_video

av = pytest.importorskip("av")


def test_predict_never_writes_over_its_inputs(ivanet_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "clip.mp4", frames=2)
    before = (folder / "clip.mp4").read_bytes()
    # --out equal to the input folder: clip.mp4 would be replaced by the annotated video
    assert cli(["predict", folder, "--run", ivanet_run, "--workers", "0", "--out", folder, "--force", "-q"]) == 2
    assert "would overwrite the input" in one_line(capsys)
    # clip.avi beside clip.mp4: the output of clip.avi is named clip.mp4
    write_video(folder / "clip.avi", frames=2)
    out = tmp_path / "out"
    assert (
        cli(
            [
                "predict",
                folder / "clip.avi",
                folder / "clip.mp4",
                "--run",
                ivanet_run,
                "--workers",
                "0",
                "--out",
                folder,
                "--force",
            ]
        )
        == 2
    )
    assert "would overwrite the input" in one_line(capsys)
    assert (folder / "clip.mp4").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == [
        "clip.avi",
        "clip.mp4",
    ]
    assert (
        cli(["predict", folder, "--run", ivanet_run, "--workers", "0", "--out", out, "-q"]) == 0
    )  # elsewhere: both predicted
    assert {p.name for p in out.iterdir()} >= {"clip.mp4", "clip.jsonl", "clip-2.mp4", "clip-2.jsonl"}


def test_a_video_interrupted_leaves_nothing_under_its_final_name(ivanet_run, tmp_path, monkeypatch):
    from mtlcli import load_model
    from mtlcli.engine.predict import PredictOptions, predict_sources

    write_video(tmp_path / "clip.mp4", frames=6)
    model = load_model(ivanet_run)
    real, calls = model.raw, []

    def dies_on_the_second_batch(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process stops halfway through the video
        return real(images)

    monkeypatch.setattr(model, "raw", dies_on_the_second_batch)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_sources(model, [tmp_path / "clip.mp4"], out, PredictOptions(batch_size=2, workers=0, progress=False))
    assert list(out.rglob("*")) == []  # no clip.mp4 / clip.jsonl piece, no temporary file left either


def test_predict_reads_images_as_every_reader_does(ivanet_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    exif_rotated(folder / "phone.jpg", 40, 64, orientation=6)
    grey16(folder / "deep.png", 32, 48)
    bomb_png(folder / "bomb.png")
    out = tmp_path / "out"
    assert cli(["predict", folder, "--run", ivanet_run, "--workers", "0", "--out", out, "-q"]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "bomb.png" in printed and "decompression bomb" in printed
    sizes = {
        Path(im["file_name"]).name: (im["height"], im["width"])
        for im in json.loads((out / "images.json").read_text())["images"]
    }
    assert sizes == {"phone.jpg": (64, 40), "deep.png": (32, 48)}  # upright, as prepare records it


def test_every_input_unreadable_is_exit_2_and_a_0_frame_video_is_listed(ivanet_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    bomb_png(folder / "bomb.png")
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    with av.open(str(folder / "empty.avi"), "w") as container:  # a video stream without a frame
        stream = container.add_stream("mpeg4", rate=5)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        container.start_encoding()
    with av.open(str(folder / "damaged.mkv"), "w") as container:  # a header, then the end of the file
        stream = container.add_stream("mpeg4", rate=5)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        container.start_encoding()
    assert cli(["predict", folder, "--run", ivanet_run, "--workers", "0", "--out", tmp_path / "out", "-q"]) == 2
    captured = capsys.readouterr()
    assert "nothing was predicted: all 4 input(s) were skipped" in captured.err
    assert "empty.avi: the video has no frame" in captured.out and "damaged.mkv: " in captured.out, captured.out
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_export_keeps_the_earlier_file_and_sidecar(ivanet_run, tmp_path, capsys, monkeypatch):
    import errno

    import torch

    out = tmp_path / "m.pt"
    assert cli(["export", "--run", ivanet_run, "-f", "torchscript", "--out", out, "-q"]) == 0
    capsys.readouterr()
    model, sidecar = out.read_bytes(), (tmp_path / "m.pt.json").read_bytes()
    assert json.loads(sidecar)["parity"]["ok"] is True
    real = torch.jit.ScriptModule.save

    def disk_fills(self, path, *args, **kwargs):
        real(self, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # what got out before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.jit.ScriptModule, "save", disk_fills)
    assert cli(["export", "--run", ivanet_run, "-f", "torchscript", "--out", out, "--force", "-q"]) == 2
    assert f"{out}: no space left" in one_line(capsys)
    assert out.read_bytes() == model and (tmp_path / "m.pt.json").read_bytes() == sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.json"]
    # a sidecar alone is not replaced without --force either
    out.unlink()
    assert cli(["export", "--run", ivanet_run, "-f", "torchscript", "--out", out, "-q"]) == 2
    assert "m.pt.json exists" in one_line(capsys)
    assert (tmp_path / "m.pt.json").read_bytes() == sidecar


def test_export_at_a_size_the_model_cannot_run(tmp_path):
    from mtlcli.errors import UserError
    from mtlcli.export import export_model
    from mtlcli.models import build_model
    from tests.use.test_export import _kwargs_for

    model = build_model("ladder_densenet", **_kwargs_for("ladder_densenet", 3, 4)).eval()
    with pytest.raises(UserError, match="--size 17x33: LadderDenseNet cannot run at this size"):
        export_model(model, "onnx", tmp_path / "l.onnx", size=(17, 33))
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_whose_class_names_do_not_match_its_outputs(ivanet_run, tmp_path, capsys):
    import torch

    from mtlcli.engine.checkpoint import find_run_checkpoint

    state = torch.load(find_run_checkpoint(ivanet_run), weights_only=True)
    state["classes"]["det_classes"] = state["classes"]["det_classes"][:-1]  # one name short
    torch.save(state, tmp_path / "edited.pt")
    (tmp_path / "in").mkdir()
    grey16(tmp_path / "in" / "a.png")
    for command in (["predict", tmp_path / "in", "--out", tmp_path / "out"], ["export", "-f", "onnx"]):
        assert cli([*command, "--checkpoint", tmp_path / "edited.pt"]) == 2
        assert "names 7 detection classes but its model has 8 detection outputs" in one_line(capsys)
    assert not (tmp_path / "out").exists()
