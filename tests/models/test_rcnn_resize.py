"""The two-stage families' evaluation resize gives the same picture in eager PyTorch and in an exported
ONNX graph at every input size: torchvision's traced resize multiplies by a float32 reciprocal and made
127 rows where eager PyTorch makes 128 (141 x 185 at 128 / 256), so an export of a trained SA-FPN or
DATNet found other detections than `mtl predict` at such sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlcli.models.rcnn import RCNNTransform, eval_resize_size

ort = pytest.importorskip("onnxruntime")

SIZES = [(141, 185), (141, 186), (282, 370), (1410, 1850), (142, 185), (117, 209), (480, 640), (1024, 2048)]


@pytest.mark.parametrize("limits", [(128, 256), (800, 1333), (600, 1000)])
def test_size_is_eager_torchvisions(limits):
    lo, hi = limits
    for h, w in SIZES:
        scale = min(lo / min(h, w), hi / max(h, w))  # torchvision's eager arithmetic (float64)
        expected = [math.floor(h * scale), math.floor(w * scale)]
        got = [int(v) for v in eval_resize_size(torch.zeros(3, h, w), lo, hi)]
        assert got == expected, (h, w, limits)


def test_exported_resize_equals_eager(tmp_path):
    transform = RCNNTransform(128, 256, 128, 256).eval()

    class Resize(torch.nn.Module):
        def forward(self, x):
            return transform.resize(x[0])[0]

    path = tmp_path / "resize.onnx"
    sample = torch.rand(1, 3, 269, 377)
    torch.onnx.export(
        Resize(), sample, str(path), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {2: "h", 3: "w"}}, opset_version=18, dynamo=False,
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in SIZES[:6]:
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        eager = transform.resize(x[0])[0].numpy()
        (got,) = session.run(None, {"x": x.numpy()})
        assert got.shape == eager.shape, (h, w)
        assert np.abs(got - eager).max() < 1e-3  # onnxruntime samples in float32
