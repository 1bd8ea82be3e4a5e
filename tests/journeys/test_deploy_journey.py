"""Journey: train (the tiny IvaNet of the quickstart) -> `mtl export` -> a plain onnxruntime script.

The commands as a user types them; the outcome checked by onnxruntime running the docs/deploy.md example
in a Python without torch or mtlcli, against what `mtl predict --run RUN` wrote."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tests.use.conftest import ivanet_run, run_docs_example, same_detections  # noqa: F401 (fixture)
from tests.viz.conftest import run_cli


def test_train_export_and_run_without_torch(ivanet_run, tmp_path, capsys):  # noqa: F811
    from mtlcli.export import sample_images

    image = tmp_path / "street.png"
    Image.fromarray(sample_images((150, 260), 1, seed=7)[0].numpy()).save(image)
    onnx_file = tmp_path / "deploy" / "model.onnx"
    assert run_cli(["export", "--run", str(ivanet_run), "--format", "onnx", "--out", str(onnx_file)]) == 0
    assert "parity with PyTorch" in capsys.readouterr().out
    pred = tmp_path / "pred"
    assert (
        run_cli(["predict", str(image), "--run", str(ivanet_run), "--out", str(pred), "--score-threshold", "0.3", "-q"])
        == 0
    )
    expected = json.loads((pred / "detections.json").read_text())
    detections, semantic = run_docs_example(onnx_file, image, tmp_path / "plain")
    matched, unmatched = same_detections(expected, detections)
    assert unmatched == 0 and matched == len(expected)
    assert [d["category_id"] for d in detections] == [d["category_id"] for d in expected]
    png = np.asarray(Image.open(pred / "semantic" / "street.png"))
    assert semantic.shape == png.shape == (150, 260) and (semantic == png).mean() >= 0.999
