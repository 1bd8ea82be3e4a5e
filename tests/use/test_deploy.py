"""A model that leaves Python whole: the exported file run by onnxruntime gives `mtl predict`'s outputs —
through `load_model("model.onnx")`, `mtl predict --model`, and the numpy + Pillow + onnxruntime example of
docs/deploy.md in a Python that cannot import torch or mtlcli."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.use.conftest import TINY_CARD, run_docs_example, same_detections, write_image

pytest.importorskip("onnxruntime")


def _torch_predictor(model):
    """The PyTorch model with the export's settings (at most 20 detections per image)."""
    import copy

    from mtlcli.api import Predictor
    from mtlcli.models.endtoend import is_two_stage

    model = copy.deepcopy(model)
    (model.roi_heads if is_two_stage(model) else model).detections_per_img = 20
    return Predictor(model, {"model": {"name": "tiny"}}, TINY_CARD, "cpu")


def _smooth_image(path, size=(77, 101), seed=3):
    from mtlcli.export import sample_images

    Image.fromarray(sample_images(size, 1, seed)[0].numpy()).save(path)
    return path


@pytest.mark.parametrize("name", ["datnet", "safpn"])
def test_torch_free_example_reproduces_predict(name, tiny_export, tmp_path):
    """The docs example on the tiny DATNet and SA-FPN: the same detections (category, box IoU >= 0.99,
    score within 1e-3) as `mtl predict`'s detections.json, and DATNet's semantic PNG >= 99.9% equal."""
    from mtlcli.engine.predict import PredictOptions, predict_sources

    model, onnx_file, _ = tiny_export(name)
    image = _smooth_image(tmp_path / "street.png")
    opts = PredictOptions(score_threshold=0.3, batch_size=1, workers=0, save_images=False, progress=False)
    predict_sources(_torch_predictor(model), [image], tmp_path / "pred", opts)
    expected = json.loads((tmp_path / "pred" / "detections.json").read_text())
    detections, semantic = run_docs_example(onnx_file, image, tmp_path / "plain")
    matched, unmatched = same_detections(expected, detections)
    assert unmatched == 0 and matched == len(expected) and matched > 0, (matched, unmatched)
    assert [d["category_id"] for d in detections] == [d["category_id"] for d in expected]
    if name == "datnet":
        png = np.asarray(Image.open(tmp_path / "pred" / "semantic" / "street.png"))
        assert semantic.shape == png.shape == (77, 101) and (semantic == png).mean() >= 0.999
    else:
        assert semantic is None


def test_load_model_onnx_gives_the_torch_results(tiny_export, tmp_path, capsys):
    """`load_model("x.onnx")` and `mtl predict --model x.onnx`: the same Results / files as the PyTorch model."""
    from mtlcli import load_model
    from mtlcli.api import OnnxPredictor
    from tests.viz.conftest import run_cli

    model, onnx_file, _ = tiny_export("ivanet")
    onnx_model = load_model(onnx_file)
    assert isinstance(onnx_model, OnnxPredictor) and onnx_model.det_classes == TINY_CARD["det_classes"]
    torch_model = _torch_predictor(model)
    images = [_smooth_image(tmp_path / "a.png"), write_image(tmp_path / "b.jpg", (40, 90), mode="L")]
    for a, b in zip(
        torch_model.predict(images, score_threshold=0.05), onnx_model.predict(images, score_threshold=0.05), strict=True
    ):
        assert len(a) == len(b) > 0 and a.size == b.size
        assert torch.allclose(a.boxes, b.boxes, atol=1e-2) and torch.allclose(a.scores, b.scores, atol=1e-3)
        assert a.class_names == b.class_names and (a.semantic == b.semantic).float().mean() >= 0.999
        assert b.to_coco(1)[0]["category_id"] in TINY_CARD["det_category_ids"]  # the dataset's own ids
    out = tmp_path / "pred"
    assert run_cli(["predict", str(images[0]), "--model", str(onnx_file), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    got = json.loads((out / "detections.json").read_text())
    expected = [r for r in torch_model.predict(images[0]).to_coco(1)]
    matched, unmatched = same_detections(expected, got)
    assert unmatched == 0 and matched == len(expected)
    sem = Image.open(out / "semantic" / "a.png")
    assert sem.mode == "P" and sem.getpalette()[:3] == TINY_CARD["palette"][0]  # viewable, indices unchanged
