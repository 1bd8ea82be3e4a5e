"""`mtl export`: every family's tiny configuration written as ONNX (one as TorchScript) and checked
against PyTorch by onnxruntime; the command on a trained run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mtlcli.errors import UserError
from mtlcli.export import compare, export_model, reference_outputs, sample_images
from mtlcli.models import build_model
from mtlcli.models.endtoend import EndToEnd
from tests.models.test_registry import TINY, _kwargs_for

ort = pytest.importorskip("onnxruntime")


# the five paper families (the Mask/Faster R-CNN references share the two-stage path of datnet and safpn)
FAMILIES = ["ivanet", "ladder_densenet", "imtl", "datnet", "safpn"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_exports_end_to_end_with_parity(name, tiny_export):
    """uint8 image of any size in; final boxes, scores, labels, masks and semantic map out, equal to the
    PyTorch model's own eval output (the parity check runs onnxruntime on the written file)."""
    assert name in TINY
    model, out, info = tiny_export(name)
    thresh = 1e-5 if name == "imtl" else None
    parity = info["parity"]
    assert parity["ok"], parity
    has_det, has_seg, has_masks = TINY[name][1:]
    assert set(info["outputs"]) == (
        ({"boxes", "scores", "labels", "batch_index"} if has_det else set())
        | ({"masks"} if has_masks else set())
        | ({"semantic"} if has_seg else set())
    )
    if has_det:
        d = parity["detections"]
        assert d["matched"] > 0 and d["unexplained"] == 0 and d["min_iou"] >= 0.99 and d["max_score_diff"] <= 1e-3
    if has_seg:
        assert parity["semantic_equal"] >= 0.999
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["input"]["dtype"] == "uint8" and sidecar["input"]["shape"][1:] == ["H", "W", 3]
    assert sidecar["outputs"] == info["outputs"] and "score_thresh" in sidecar["postprocess"]
    if name not in ("ivanet", "ladder_densenet"):
        return  # the check above ran onnxruntime at two sizes; tests/use/test_deploy.py runs the files again
    # onnxruntime alone, on an image of yet another size (and batch 3 where the batch is dynamic)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = 3 if name == "ivanet" else 1
    images = sample_images((45, 150), batch, seed=5)
    got = dict(zip(info["outputs"], session.run(None, {"images": images.numpy()}), strict=True))
    ref = reference_outputs(model, images, EndToEnd(model, score_thresh=thresh, max_det=20))
    check = compare(ref, got)
    if has_det:
        assert check["detections"]["unexplained"] == 0
        assert got["boxes"].dtype == np.float32 and got["labels"].dtype == np.int64
        assert (got["boxes"][:, 2] <= 150).all() and (got["boxes"][:, 3] <= 45).all()
        assert set(got["batch_index"].tolist()) <= set(range(batch))
    if has_masks:
        assert got["masks"].shape[1:] == (45, 150) and got["masks"].dtype == np.uint8
    if has_seg:
        assert got["semantic"].shape == (batch, 45, 150) and check["semantic_equal"] >= 0.999


def test_torchscript_export_runs_at_any_size(tmp_path):
    model = build_model("ladder_densenet", **_kwargs_for("ladder_densenet", 3, 4)).eval()
    out = tmp_path / "model.torchscript.pt"
    info = export_model(model, "torchscript", out)
    assert info["parity"]["ok"] and info["parity"]["semantic_equal"] == 1.0
    loaded = torch.jit.load(str(out))
    (sem,) = loaded(sample_images((37, 90)))
    assert sem.shape == (1, 37, 90) and sem.dtype == torch.uint8


def test_export_command_on_a_run(ivanet_run, tmp_path, capsys):
    from tests.viz.conftest import error_line, run_cli

    run = tmp_path / "run"
    shutil.copytree(ivanet_run, run)
    assert run_cli(["export", "--run", str(run), "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    out = run / "export" / "model.onnx"  # the default name, never the checkpoint's
    assert "parity with PyTorch" in printed and out.is_file() and str(out) in printed
    sidecar = json.loads(out.with_name("model.onnx.json").read_text())
    assert sidecar["classes"]["det_classes"][:2] == ["person", "rider"]
    assert sidecar["input"]["shape"] == [1, "H", "W", 3] and sidecar["preprocess"]["network_size"] == [128, 256]
    assert run_cli(["export", "--checkpoint", str(run / "checkpoints" / "best.pt"), "-f", "torchscript", "-q"]) == 0
    assert (run / "export" / "model.torchscript.pt").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # refusals are one line
    assert run_cli(["export", "--run", str(ivanet_run), "--format", "onnx", "--out", str(out)]) == 2
    assert "exists" in error_line(capsys)
    assert run_cli(["export", "--run", str(ivanet_run), "--format", "tflite", "--out", str(tmp_path / "m")]) == 2
    assert "onnx or torchscript" in error_line(capsys)
    assert (
        run_cli(
            [
                "export",
                "--run",
                str(ivanet_run),
                "--format",
                "onnx",
                "--size",
                "64x64",
                "--out",
                str(tmp_path / "s.onnx"),
            ]
        )
        == 2
    )
    assert "default boxes" in error_line(capsys)


def test_sizes_are_checked():
    model = build_model("ladder_densenet", **_kwargs_for("ladder_densenet", 3, 4)).eval()
    with pytest.raises(UserError, match="out of range"):
        export_model(model, "onnx", __import__("pathlib").Path("/nonexistent/x.onnx"), size=(8, 8))


def test_parity_matches_a_degenerate_box_by_its_coordinates():
    """A box 2e-4 px wide: float noise of 1e-4 px swings its IoU far below 0.99, yet it is the same box;
    a box 0.5 px away is not."""
    from mtlcli.export import match_detections

    ref = {
        "boxes": np.array([[126.342636, 4.891912, 126.342865, 53.0]], np.float32),
        "scores": np.array([0.825946], np.float32),
        "labels": np.array([3]),
        "batch_index": np.array([0]),
    }
    noisy = {**ref, "boxes": np.array([[126.342636, 4.892301, 126.342765, 53.0]], np.float32)}
    assert match_detections(ref, noisy)["matched"] == 1
    moved = {**ref, "boxes": ref["boxes"] + np.float32([0.5, 0, 0.5, 0])}
    assert match_detections(ref, moved)["matched"] == 0
