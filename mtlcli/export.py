"""`mtl export`: a trained model as ONNX or TorchScript, checked against PyTorch after writing.

The exported graph takes `images` float32 [B, 3, H, W], RGB in 0..1, already resized to the export size
(H, W) (default: the model's own input size); normalisation happens inside. It returns, by name:

    single-stage families (IvaNet, Ladder-DenseNet, interdependent MTL): every raw network output
        (e.g. cls_logits [B, A, K+1], bbox_regression [B, A, 4], seg_logits [B, C, h, w], det.0 ...), plus
        where the model has SSD heads:  boxes [B, A, 4] xyxy in pixels of the H x W input (decoded from
                                        the default boxes, clipped), scores [B, A, K] (softmax, no background)
        where the model segments:       semantic [B, H, W] int64 (argmax of the upsampled logits)
    two-stage families (DATNet, SA-FPN + EJ-Head): the feature pyramid and dense heads (`extract`): the
        RPN and RoI heads (proposal sampling, RoIAlign, per-class NMS) are data-dependent and stay in
        PyTorch: run them with `model.rpn` / `model.roi_heads` on these features.

Left to the caller: per-class NMS over boxes/scores (thresholds in the sidecar JSON), and scaling boxes
and the semantic map back to the original image size. A sidecar `FILE.json` lists inputs, outputs,
classes, postprocessing settings and the parity check: after writing, the file is loaded (onnxruntime
for ONNX, torch.jit.load for TorchScript) and its outputs compared with PyTorch's on a sample image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlcli.errors import UserError

# what the parity check accepts: |exported - pytorch| <= ATOL + RTOL * |pytorch|, elementwise
ATOL, RTOL = 1e-3, 1e-3


def _flatten(prefix: str, value: Any, out: dict[str, Tensor]) -> None:
    if torch.is_tensor(value):
        out[prefix] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}.{i}", v, out)


class ExportWrapper(nn.Module):
    """The exportable part of a model (module docstring) as `images -> tuple of tensors`; `names` holds
    the output names in order after one call on a sample (`trace_names`)."""

    mean: Tensor
    std: Tensor
    model: Any  # any family: the attributes read below (transform, extract, network, ...) are duck-typed

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.size = model, size
        self.two_stage = hasattr(model, "extract") and hasattr(model, "roi_heads")
        if self.two_stage:
            t = self.model.transform
            mean, std = t.image_mean, t.image_std
        else:
            mean, std = self.model.pixel_mean.flatten().tolist(), self.model.pixel_std.flatten().tolist()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.names: list[str] = []

    def named_outputs(self, images: Tensor) -> dict[str, Tensor]:
        x = (images - self.mean) / self.std
        out: dict[str, Tensor] = {}
        if self.two_stage:
            features, dense = self.model.extract(x)
            _flatten("features", dict(features), out)
            _flatten("dense", dense, out)
            return out
        raw = self.model.network(x)
        # auxiliary heads feed training losses only
        _flatten("", {k: v for k, v in raw.items() if not str(k).startswith("aux")}, out)
        h, w = self.size
        if "cls_logits" in out and "bbox_regression" in out and hasattr(self.model, "default_boxes"):
            from mtlcli.ops.multibox import BOX_CODER

            deltas = out["bbox_regression"]
            b, a = deltas.shape[0], deltas.shape[1]
            defaults = self.model.default_boxes.float()
            boxes = BOX_CODER.decode_single(deltas.reshape(-1, 4).float(), defaults.repeat(b, 1)).reshape(b, a, 4)
            boxes = torch.stack(
                [
                    boxes[..., 0].clamp(0, w),
                    boxes[..., 1].clamp(0, h),
                    boxes[..., 2].clamp(0, w),
                    boxes[..., 3].clamp(0, h),
                ],
                dim=-1,
            )
            out["boxes"] = boxes
            out["scores"] = out["cls_logits"].float().softmax(-1)[..., 1:]
        for key in ("seg_logits", "logits"):
            if key in out and out[key].ndim == 4:
                up = F.interpolate(out[key].float(), size=(h, w), mode="bilinear", align_corners=False)
                out["semantic"] = up.argmax(1)
                break
        return out

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.named_outputs(images)
        if not self.names:
            self.names = list(out)
        return tuple(out[n] for n in self.names)


def export_size(model: Any, size: tuple[int, int] | None) -> tuple[int, int]:
    """The (H, W) to export at: `size`, else the model's input size (two-stage: test short side x max size)."""
    if size is not None:
        h, w = size
    elif hasattr(model, "input_size"):
        h, w = model.input_size
    elif hasattr(model, "transform"):
        t = model.transform
        h, w = t.test_min_size, t.test_max_size
    else:  # pragma: no cover - every family has one of the two
        raise UserError("give the export size with --size HxW")
    if h < 16 or w < 16 or h > 8192 or w > 8192:
        raise UserError(f"--size {h}x{w} is out of range; give HxW between 16 and 8192 pixels")
    if hasattr(model, "default_boxes") and (h, w) != tuple(model.input_size):
        raise UserError(
            f"--size {h}x{w}: this model's default boxes are laid out for {model.input_size[0]}x"
            f"{model.input_size[1]}; export it at that size (drop --size)"
        )
    if hasattr(model, "transform") and (h % 32 or w % 32):
        raise UserError(f"--size {h}x{w}: two-stage models need sides that are multiples of 32")
    return int(h), int(w)


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise UserError(f"--size {text!r}: give HxW, e.g. --size 300x300 or --size 512x1024")
    return parts[0], parts[1]


def export_model(
    model: nn.Module,
    fmt: str,
    out: Path,
    *,
    size: tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    card: dict[str, Any] | None = None,
    opset: int = 18,
) -> dict[str, Any]:
    """Write `model` (eval mode, CPU) to `out` as "onnx" or "torchscript", check parity, write the sidecar
    `out.json`; returns the sidecar's content."""
    if fmt not in ("onnx", "torchscript"):
        raise UserError(f"--format {fmt!r}: choose onnx or torchscript")
    model = model.cpu().eval()
    h, w = export_size(model, size)
    wrapper = ExportWrapper(model, (h, w)).eval()
    sample = torch.rand(2 if dynamic_batch else 1, 3, h, w, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            reference = wrapper.named_outputs(sample)
    except (RuntimeError, ValueError, IndexError) as exc:  # e.g. Ladder's skip connections at 17x33
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"--size {h}x{w}: {model.__class__.__name__} cannot run at this size ({first[:160]}) — give sides "
            "that are multiples of 32, or drop --size to export at the model's own input size"
        ) from None
    wrapper.names = list(reference)
    out = Path(out)
    from mtlcli.safety import atomic_path, clean_orphans

    for name in (out.name, sidecar_path(out).name):  # the temporary files of a killed export of the same file
        clean_orphans(out.parent, f".{name}.*.tmp")

    # The file and its sidecar are written under temporary names, checked, and renamed only when both are
    # complete (the file first): an export killed or out of disk leaves the earlier pair as it was.
    with atomic_path(sidecar_path(out)) as sidecar_tmp, atomic_path(out) as tmp:
        t0 = time.perf_counter()
        if fmt == "onnx":
            _write_onnx(wrapper, sample, tmp, dynamic_batch, opset)
            exported = _run_onnx(tmp, sample, wrapper.names)
        else:
            import warnings

            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TorchScript's deprecation and shape-as-constant notes
                traced = torch.jit.trace(wrapper, sample, check_trace=False, strict=False)
                traced.save(str(tmp))
                loaded = torch.jit.load(str(tmp))
                exported = dict(zip(wrapper.names, loaded(sample), strict=True))
        seconds = time.perf_counter() - t0
        parity = compare(reference, exported)
        info = {
            "format": fmt,
            "file": str(out),
            "model": model.__class__.__name__,
            "input": {
                "name": "images",
                "shape": ["B" if dynamic_batch else 1, 3, h, w],
                "dtype": "float32",
                "range": "RGB 0..1, resized to H x W; normalisation is inside",
            },
            "outputs": {n: list(reference[n].shape) for n in wrapper.names},
            "classes": card or {},
            "postprocess": postprocess_note(model, wrapper),
            "parity": {
                **parity,
                "atol": ATOL,
                "rtol": RTOL,
                "sample": f"uniform noise [{sample.shape[0]}, 3, {h}, {w}]",
            },
            "export_seconds": round(seconds, 2),
        }
        sidecar_tmp.write_text(json.dumps(info, indent=2))
    if not parity["ok"]:
        raise UserError(
            f"the exported {fmt} model differs from PyTorch by up to {parity['max_abs_diff']:.3g} on output "
            f"{parity['worst']!r} (tolerance {ATOL} + {RTOL} x |value|) — {out} was kept for inspection"
        )
    return info


def sidecar_path(out: str | Path) -> Path:
    """The JSON file written beside an export: `FILE.json`."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def _write_onnx(wrapper: ExportWrapper, sample: Tensor, out: Path, dynamic_batch: bool, opset: int) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    import warnings

    axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in wrapper.names}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (sample,),
            str(out),
            input_names=["images"],
            output_names=wrapper.names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def _run_onnx(path: Path, sample: Tensor, names: list[str]) -> dict[str, Tensor]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("checking an ONNX export needs onnxruntime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    values = session.run(names, {"images": sample.numpy()})
    return {n: torch.from_numpy(v) for n, v in zip(names, values, strict=True)}


def compare(reference: dict[str, Tensor], exported: dict[str, Tensor]) -> dict[str, Any]:
    """Elementwise parity of every output: max |a - b|, and ok when within ATOL + RTOL * |ref|
    (integer outputs such as `semantic` as the share of equal elements, ok above 99.9 %)."""
    worst, max_diff, ok, agree = "", 0.0, True, 1.0
    per_output = {}
    for name, ref in reference.items():
        got = exported[name].to(ref.device)
        if tuple(got.shape) != tuple(ref.shape):
            return {"ok": False, "max_abs_diff": float("inf"), "worst": name, "outputs": {name: "shape differs"}}
        if not ref.is_floating_point():
            share = float((got == ref).float().mean()) if ref.numel() else 1.0
            per_output[name] = {"equal": share}
            agree = min(agree, share)
            ok &= share >= 0.999
            continue
        diff = (got.float() - ref.float()).abs()
        d = float(diff.max()) if diff.numel() else 0.0
        per_output[name] = {"max_abs_diff": d}
        ok &= bool((diff <= ATOL + RTOL * ref.float().abs()).all())
        if d >= max_diff:
            worst, max_diff = name, d
    return {"ok": bool(ok), "max_abs_diff": max_diff, "worst": worst, "integer_agreement": agree, "outputs": per_output}


def postprocess_note(model: nn.Module, wrapper: ExportWrapper) -> dict[str, Any]:
    note: dict[str, Any] = {}
    for key in ("score_thresh", "nms_thresh", "detections_per_img"):
        if hasattr(model, key):
            note[key] = getattr(model, key)
    if wrapper.two_stage:
        note["steps"] = (
            "RPN + RoI heads (torchvision RegionProposalNetwork / RoIHeads) on the exported features, "
            "then boxes scaled to the original image"
        )
    else:
        note["steps"] = (
            "per-class NMS over boxes/scores above score_thresh (keep detections_per_img), then boxes "
            "scaled from H x W to the original image; resize `semantic` with nearest neighbour"
        )
    return note
