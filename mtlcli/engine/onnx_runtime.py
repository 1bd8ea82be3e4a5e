"""An exported model (`mtl export --format onnx`) run by onnxruntime: what `load_model("model.onnx")` and
`mtl predict --model model.onnx` use. No torch is needed for the run itself (numpy in, numpy out); the
classes come from the file's own metadata (`mtl` key, written by `mtl export`) or its sidecar JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.errors import UserError


def read_sidecar(path: Path) -> dict[str, Any]:
    """The export's description: the ONNX file's `mtl` metadata, else FILE.json beside it."""
    side = path.with_name(path.name + ".json")
    try:
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if "mtl" in meta:
            return json.loads(meta["mtl"])
    except Exception:  # noqa: BLE001 - not an ONNX file onnx can read: the session says why below
        pass
    if side.is_file():
        return json.loads(side.read_text())
    raise UserError(f"{path} carries no mtl description and {side.name} is missing — export it with `mtl export`")


class OnnxModel:
    """One ONNX session: `run(image uint8 [H, W, 3] or [B, H, W, 3]) -> {name: array}` as the sidecar states."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("running an ONNX model needs onnxruntime: pip install onnxruntime") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path} does not exist — give an .onnx file written by `mtl export`")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{self.path} is not a model onnxruntime can load ({first[:200]})") from None
        self.info = read_sidecar(self.path)
        self.names = [o.name for o in self.session.get_outputs()]
        self.batch = self.info.get("input", {}).get("batch", 1)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim == 3:
            images = images[None]
        return dict(zip(self.names, self.session.run(self.names, {"images": images}), strict=True))

    def per_image(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One image uint8 [H, W, 3] -> its outputs without the batch axis (semantic [H, W])."""
        out = self.run(image)
        if "semantic" in out:
            out["semantic"] = out["semantic"][0]
        out.pop("batch_index", None)
        return out
