"""Journey: the wrong file where a checkpoint is expected — a TorchScript export, an ONNX model, a JSON file,
random bytes — given to `--checkpoint`, `--run` (as RUN/checkpoints/best.pt) or `--weights` ends in one line
naming what the file is and what to pass instead, exit 2, without torch's warning or `weights_only` text.
The files are made by the tools that make them for real (torch.jit, torch.onnx; onnxruntime opens the ONNX)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.viz.conftest import run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wrong_files")
    net = torch.nn.Linear(2, 2)
    out = {"torchscript": root / "model.torchscript.pt", "onnx": root / "model.onnx", "json": root / "model.json"}
    with warnings.catch_warnings():  # torch's deprecation notes about its own exporters
        warnings.simplefilter("ignore")
        torch.jit.script(net).save(str(out["torchscript"]))
        torch.onnx.export(net, (torch.zeros(1, 2),), str(out["onnx"]), dynamo=False)
        assert torch.jit.load(str(out["torchscript"]))(torch.zeros(1, 2)).shape == (1, 2)  # a real TorchScript file
    out["json"].write_text(json.dumps({"images": [], "note": "not a checkpoint"}))
    out["random"] = root / "random.pt"
    out["random"].write_bytes(b"\x01" + np.random.default_rng(0).bytes(4000))
    ort = pytest.importorskip("onnxruntime")
    assert ort.InferenceSession(str(out["onnx"])).get_inputs()  # a real ONNX model
    return out


KINDS = {
    "torchscript": "is a TorchScript export",
    "onnx": "is an ONNX model",
    "json": "is a JSON file",
    "random": "is a file of unknown content",
}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "weights_only" not in err and "Warning" not in err and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_checkpoint_option_names_the_file_kind(files, kind, tmp_path, capsys):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for argv in (
        ["eval", "--checkpoint", str(files[kind]), "--device", "cpu"],
        ["predict", str(image), "--checkpoint", str(files[kind]), "--out", str(tmp_path / "p"), "--device", "cpu"],
    ):
        assert run_cli(argv) == 2
        line = _one_line(capsys)
        assert KINDS[kind] in line and "RUN/checkpoints/best.pt" in line and str(files[kind]) in line


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_run_folder_with_an_export_as_best_pt(files, kind, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(files[kind], run / "checkpoints" / "best.pt")
    assert run_cli(["eval", "--run", str(run), "--device", "cpu"]) == 2
    line = _one_line(capsys)
    assert KINDS[kind] in line and "best.pt" in line


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_weights_option_names_the_file_kind(files, kind, synthetic_prepared, tmp_path, capsys):
    argv = ["train", "--recipe", "ivanet-tiny-synthetic", "--data", str(synthetic_prepared)]
    argv += ["--weights", str(files[kind]), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert run_cli(argv) == 2
    line = _one_line(capsys)
    assert KINDS[kind] in line and "--weights" in line and "best.pt" in line
