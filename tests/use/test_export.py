"""`mtl export`: every family's tiny configuration written as ONNX (one as TorchScript) and checked
against PyTorch by onnxruntime; the command on a trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtlcli.errors import UserError
from mtlcli.export import ATOL, RTOL, export_model
from mtlcli.models import build_model
from tests.models.test_registry import TINY, _kwargs_for

ort = pytest.importorskip("onnxruntime")


# the five paper families (the Mask/Faster R-CNN references share the two-stage path of datnet and safpn)
FAMILIES = ["ivanet", "ladder_densenet", "imtl", "datnet", "safpn"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_exports_to_onnx_with_parity(name, tmp_path):
    assert name in TINY
    torch.manual_seed(0)
    model = build_model(name, **_kwargs_for(name, 3, 4)).eval()
    out = tmp_path / f"{name}.onnx"
    info = export_model(model, "onnx", out, size=(64, 128), dynamic_batch=name == "ivanet")
    assert info["parity"]["ok"] and info["parity"]["max_abs_diff"] <= 1e-2
    assert json.loads(out.with_name(out.name + ".json").read_text())["outputs"] == info["outputs"]
    if name != "ivanet":
        return
    # the file runs on its own, at another batch size, and agrees with the PyTorch network there too
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    got = dict(zip(info["outputs"], session.run(list(info["outputs"]), {"images": x.numpy()}), strict=True))
    from mtlcli.export import ExportWrapper

    with torch.inference_mode():
        ref = ExportWrapper(model, (64, 128)).named_outputs(x)
    for key, value in ref.items():
        assert got[key].shape == tuple(value.shape)
        if value.is_floating_point():
            np.testing.assert_allclose(got[key], value.numpy(), atol=ATOL, rtol=RTOL)
    # SSD heads: decoded boxes in the input frame and class scores without background
    assert {"boxes", "scores", "semantic"} <= set(info["outputs"])
    assert info["outputs"]["scores"][-1] == 3 and info["outputs"]["semantic"] == [2, 64, 128]


def test_torchscript_export_matches(tmp_path):
    model = build_model("ladder_densenet", **_kwargs_for("ladder_densenet", 3, 4)).eval()
    out = tmp_path / "ladder.pt"
    info = export_model(model, "torchscript", out)
    assert info["parity"]["ok"] and info["parity"]["max_abs_diff"] == 0.0
    loaded = torch.jit.load(str(out))
    x = torch.rand(1, 3, 64, 128)
    sem = dict(zip(info["outputs"], loaded(x), strict=True))["semantic"]
    assert sem.shape == (1, 64, 128) and sem.dtype == torch.int64


def test_export_command_on_a_run(ivanet_run, tmp_path, capsys):
    from tests.viz.conftest import error_line, run_cli

    out = tmp_path / "model.onnx"
    assert run_cli(["export", "--run", str(ivanet_run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parity with PyTorch" in printed and out.is_file()
    sidecar = json.loads(out.with_name("model.onnx.json").read_text())
    assert sidecar["classes"]["det_classes"][:2] == ["person", "rider"]
    assert sidecar["input"]["shape"] == [1, 3, 128, 256]
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
