"""`mtl export`: the whole predict path of a trained model as ONNX or TorchScript, checked after writing.

The file is `mtlcli.models.endtoend.EndToEnd` traced: it takes the decoded image and returns the final
detections and maps, so that it runs without our Python (onnxruntime, any language):

    input   images   uint8 [B, H, W, 3] RGB 0..255 (NHWC: numpy/Pillow's layout), any H x W; B = 1
                     unless exported with --dynamic (single-stage families; the two-stage ones run one
                     image, as torchvision's own Mask R-CNN export does)
    inside  resize to the network size (F.interpolate bilinear, align_corners=False; two-stage: short
            side / long side cap), normalise, network, decoding, per-class NMS, boxes to input pixels,
            masks pasted into the image, semantic argmax after bilinear upsampling of the logits
    outputs boxes [N, 4] float32 xyxy input pixels · scores [N] float32 · labels [N] int64 1..K
            (index into det_classes + 1) · batch_index [N] int64 · masks [N, H, W] uint8 0/1 (mask
            models) · semantic [B, H, W] uint8 seg class indices (segmenting models)

A sidecar `FILE.json` states all of it (input dtype, range, layout; output formats; thresholds; classes)
and the parity check: after writing, the file is loaded (onnxruntime for ONNX, torch.jit.load for
TorchScript) and run on sample images; its final detections are matched to those of the PyTorch model's
own eval path (`model(images)`, what `mtl predict` runs): every detection found again with the same
label, box IoU >= 0.99 and score within 1e-3, and the semantic maps >= 99.9 % equal.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlcli.errors import UserError
from mtlcli.models.endtoend import OUTPUTS, EndToEnd, is_two_stage

# what the parity check accepts on final detections (after matching) and on the semantic map
MIN_IOU, SCORE_TOL, SEMANTIC_AGREEMENT, NMS_TOL = 0.99, 1e-3, 0.999, 1e-3
# a box a fraction of a pixel wide has an IoU that float noise swings anywhere: such a pair is the same box
# when every coordinate agrees within BOX_TOL pixels (an untrained detector gives many of them)
BOX_TOL = 0.01
DEFAULT_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}


class _Tuple(nn.Module):
    """EndToEnd with a fixed tuple of outputs (what tracing and ONNX need)."""

    def __init__(self, e2e: EndToEnd, names: list[str]) -> None:
        super().__init__()
        self.e2e, self.names = e2e, names

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.e2e(images)
        return tuple(out[n] for n in self.names)


def export_size(model: Any, size: tuple[int, int] | None) -> tuple[int, int]:
    """The network size (h, w) to export at: `size`, else the model's own (two-stage: test short side x
    long side cap)."""
    if size is None:
        if is_two_stage(model):
            return int(model.transform.test_min_size), int(model.transform.test_max_size)
        return tuple(int(v) for v in model.input_size)  # type: ignore[return-value]
    h, w = size
    if h < 16 or w < 16 or h > 8192 or w > 8192:
        raise UserError(f"--size {h}x{w} is out of range; give HxW between 16 and 8192 pixels")
    if hasattr(model, "default_boxes") and (h, w) != tuple(model.input_size):
        raise UserError(
            f"--size {h}x{w}: this model's default boxes are laid out for {model.input_size[0]}x"
            f"{model.input_size[1]}; export it at that size (drop --size)"
        )
    if is_two_stage(model) and h > w:
        raise UserError(f"--size {h}x{w}: two-stage models take SHORTxMAX (short side, long-side cap), SHORT <= MAX")
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


def sample_images(size: tuple[int, int], batch: int = 1, seed: int = 0) -> Tensor:
    """Deterministic smooth pictures uint8 [batch, H, W, 3] (coloured blobs: objects for the detectors,
    regions for the segmenters), at a size other than the network's so that the resize is exercised."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 6, 9, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    return (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def export_model(
    model: Any,
    fmt: str,
    out: Path,
    *,
    size: tuple[int, int] | None = None,
    dynamic: bool = False,
    nms: bool = True,
    score_thresh: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    card: dict[str, Any] | None = None,
    opset: int = 18,
) -> dict[str, Any]:
    """Write `model` (a family, eval mode) to `out` as "onnx" or "torchscript", check parity on final
    detections, write the sidecar `out.json`; returns the sidecar's content. A failed check is a
    UserError (the file is kept for inspection)."""
    if fmt not in DEFAULT_NAMES:
        raise UserError(f"--format {fmt!r}: choose onnx or torchscript")
    if opset < 17:
        raise UserError(f"opset {opset}: the end-to-end graph needs opset 17 or later")
    model = copy.deepcopy(model).cpu().eval()
    two_stage = is_two_stage(model)
    net_size = export_size(model, size)
    e2e = EndToEnd(model, net_size, score_thresh=score_thresh, nms_thresh=iou, max_det=max_det, nms=nms).eval()
    batch = 2 if dynamic and not two_stage else 1
    h, w = net_size if not two_stage else (net_size[0], net_size[0] * 3 // 2)
    sample = sample_images((h + 13, w - 7), batch)  # not the network size: the resize is in the check
    names = e2e.output_names()
    wrapper = _Tuple(e2e, names).eval()
    out = Path(out)
    from mtlcli.safety import atomic_path, clean_orphans

    for name in (out.name, sidecar_path(out).name):  # the temporary files of a killed export of the same file
        clean_orphans(out.parent, f".{name}.*.tmp")
    # The file and its sidecar are written under temporary names, checked, and renamed only when both are
    # complete (the file first): an export killed or out of disk leaves the earlier pair as it was.
    with atomic_path(sidecar_path(out)) as sidecar_tmp, atomic_path(out) as tmp:
        t0 = time.perf_counter()
        try:
            run = _write(wrapper, fmt, sample, tmp, names, dynamic and not two_stage, opset)
        except (RuntimeError, ValueError, IndexError) as exc:  # e.g. Ladder's skip connections at 17x33
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"--size {net_size[0]}x{net_size[1]}: {model.__class__.__name__} cannot run at this size "
                f"({first[:160]}) — give sides that are multiples of 32, or drop --size"
            ) from None
        info = sidecar(model, e2e, fmt, out, names, dynamic and not two_stage, card)
        if fmt == "onnx":  # the file describes itself (classes, input, outputs): no sidecar needed to run it
            _embed_metadata(tmp, info)
            run = _onnx_runner(tmp, names)
        seconds = time.perf_counter() - t0
        # the check: the PyTorch model's own eval path against the file, at the sample and another size
        checks = [sample, sample_images((h - 11, w + 17), batch, seed=1)]
        nms_thresh = e2e.nms_thresh if e2e.nms else None
        parity = merge_parity(
            [compare(reference_outputs(model, imgs, e2e), run(imgs.numpy()), nms_thresh) for imgs in checks]
        )
        info["parity"] = {**parity, "samples": [list(c.shape) for c in checks]}
        info["export_seconds"] = round(seconds, 2)
        sidecar_tmp.write_text(json.dumps(info, indent=2))
    if not parity["ok"]:
        raise UserError(
            f"the exported {fmt} model differs from PyTorch ({parity['summary']}) — {out} was kept for inspection"
        )
    return info


def sidecar_path(out: str | Path) -> Path:
    """The JSON file written beside an export: `FILE.json`."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def _write(wrapper: nn.Module, fmt: str, sample: Tensor, path: Path, names: list[str], dynamic: bool, opset: int):
    """Write the traced graph to `path`; returns a runner images -> {name: array} for TorchScript (ONNX:
    None, the caller opens the session once the metadata is in)."""
    if fmt == "onnx":
        _write_onnx(wrapper, sample, path, names, dynamic, opset)
        return None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notes
        traced = torch.jit.trace(wrapper, sample, check_trace=False, strict=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {n: v.numpy() for n, v in zip(names, loaded(torch.from_numpy(images)), strict=True)}

    return run


def _write_onnx(wrapper: nn.Module, sample: Tensor, out: Path, names: list[str], dynamic: bool, opset: int) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    axes: dict[str, dict[int, str]] = {"images": {1: "height", 2: "width"}}
    for n in names:
        axes[n] = {0: "batch", 1: "height", 2: "width"} if n == "semantic" else {0: "detections"}
    axes["masks"] = {0: "detections", 1: "height", 2: "width"}
    if dynamic:
        axes["images"][0] = "batch"
    else:
        axes["semantic"] = {1: "height", 2: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (sample,),
            str(out),
            input_names=["images"],
            output_names=names,
            dynamic_axes={k: v for k, v in axes.items() if k in names or k == "images"},
            opset_version=opset,
            dynamo=False,
        )
    wrapper.eval()  # the exporter hands modules back in training mode


def _embed_metadata(path: Path, info: dict[str, Any]) -> None:
    import onnx

    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = "mtl", json.dumps(info)
    onnx.save(graph, str(path))


def _onnx_runner(path: Path, names: list[str]):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("checking an ONNX export needs onnxruntime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        try:
            return dict(zip(names, session.run(names, {"images": images}), strict=True))
        except Exception as exc:  # onnxruntime's own error types (Fail, InvalidArgument, ...): one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"the exported ONNX file fails in onnxruntime on a {images.shape[1]}x{images.shape[2]} image "
                f"({first[:200]}) — {path} was kept for inspection; please report it with the model's recipe"
            ) from None

    return run


def reference_outputs(model: Any, images: Tensor, e2e: EndToEnd) -> dict[str, np.ndarray]:
    """The PyTorch model's own eval path (DESIGN.md §4, what `mtl predict` runs) on uint8 [B, H, W, 3]
    images, flattened like the exported outputs and with the export's thresholds."""
    model = copy.deepcopy(model)
    owner = model.roi_heads if is_two_stage(model) else model
    owner.score_thresh, owner.detections_per_img = e2e.score_thresh, e2e.max_det
    owner.nms_thresh = e2e.nms_thresh if e2e.nms else 1.0
    if is_two_stage(model):
        model.transform.test_min_size, model.transform.test_max_size = e2e.size
    else:
        model.input_size = e2e.size
    floats = [img.permute(2, 0, 1).float() / 255.0 for img in images]
    with torch.inference_mode():
        outputs = model(floats)
    flat: dict[str, list[np.ndarray]] = {k: [] for k in OUTPUTS}
    for i, o in enumerate(outputs):
        if "boxes" in o:
            flat["boxes"].append(o["boxes"].numpy())
            flat["scores"].append(o["scores"].numpy())
            flat["labels"].append(o["labels"].numpy())
            flat["batch_index"].append(np.full(len(o["labels"]), i, np.int64))
        if "masks" in o:
            flat["masks"].append((o["masks"][:, 0] > 0.5).numpy().astype(np.uint8))
        if "sem_seg" in o:
            flat["semantic"].append(o["sem_seg"].argmax(0).numpy()[None])
    return {k: np.concatenate(v) for k, v in flat.items() if v}


def match_detections(
    ref: dict[str, np.ndarray], got: dict[str, np.ndarray], nms_thresh: float | None = None
) -> dict[str, Any]:
    """Greedy one-to-one matching, best reference score first, within the same image and label, box IoU
    >= MIN_IOU (or every coordinate within BOX_TOL pixels, for degenerate boxes) and score within SCORE_TOL.
    Returns counts, the smallest matched IoU, the largest score difference, the worst mask IoU, and
    `unexplained`: unmatched detections that neither tie with the last one kept in their image (max_det or
    the threshold cutting through equal scores) nor overlap a better box of their class by an IoU within
    NMS_TOL of the NMS threshold (`nms_borderline`: float noise decides such a suppression)."""
    from torchvision.ops import box_iou

    n_ref, n_got = len(ref.get("scores", ())), len(got.get("scores", ()))
    used_ref, used_got = np.zeros(n_ref, bool), np.zeros(n_got, bool)
    min_iou, max_score, mask_ious = 1.0, 0.0, []
    if n_ref and n_got:
        iou = box_iou(torch.from_numpy(ref["boxes"]).float(), torch.from_numpy(got["boxes"]).float()).numpy()
        same = (ref["labels"][:, None] == got["labels"][None]) & (
            ref["batch_index"][:, None] == got["batch_index"][None]
        )
        iou = np.where(same, iou, -1.0)
        close = same & (np.abs(ref["boxes"][:, None, :] - got["boxes"][None]).max(-1) <= BOX_TOL)
        iou = np.where(close, np.maximum(iou, 1.0), iou)  # the same box, however thin
        for i in np.argsort(-ref["scores"], kind="stable"):
            row = np.where(used_got, -1.0, iou[i])
            cand = np.flatnonzero(row >= MIN_IOU)
            if not len(cand):
                continue
            j = cand[np.argmin(np.abs(got["scores"][cand] - ref["scores"][i]))]  # ties: the closest score
            diff = abs(float(got["scores"][j] - ref["scores"][i]))
            if diff > SCORE_TOL:
                continue
            used_ref[i], used_got[j] = True, True
            min_iou, max_score = min(min_iou, float(row[j])), max(max_score, diff)
            if "masks" in ref and "masks" in got:
                a, b = ref["masks"][i].astype(bool), got["masks"][j].astype(bool)
                union = (a | b).sum()
                mask_ious.append(float((a & b).sum() / union) if union else 1.0)
    unexplained = borderline = 0
    for side, used in ((ref, used_ref), (got, used_got)):
        own = box_iou(torch.from_numpy(side["boxes"]).float(), torch.from_numpy(side["boxes"]).float()).numpy()
        for i in np.flatnonzero(~used):
            in_image = side["batch_index"] == side["batch_index"][i]
            if side["scores"][i] <= side["scores"][in_image].min() + SCORE_TOL:
                continue  # at the cut
            rivals = in_image & (side["labels"] == side["labels"][i]) & (side["scores"] >= side["scores"][i])
            rivals[i] = False
            if nms_thresh is not None and (np.abs(own[i, rivals] - nms_thresh) <= NMS_TOL).any():
                borderline += 1  # kept here, suppressed there: an IoU within NMS_TOL of the NMS threshold
                continue
            unexplained += 1
    return {
        "reference": n_ref,
        "exported": n_got,
        "matched": int(used_ref.sum()),
        "unexplained": unexplained,
        "nms_borderline": borderline,
        "min_iou": round(min_iou, 6),
        "max_score_diff": float(f"{max_score:.3g}"),
        "mask_iou_min": round(min(mask_ious), 6) if mask_ious else None,
    }


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], nms_thresh: float | None = None) -> dict[str, Any]:
    """Parity of final outputs: detections matched (`match_detections`), semantic maps' equal share."""
    result: dict[str, Any] = {}
    if "scores" in ref or "scores" in got:
        result["detections"] = match_detections(ref, got, nms_thresh)
    if "semantic" in ref:
        a, b = ref["semantic"], got.get("semantic")
        result["semantic_equal"] = float((a == b).mean()) if b is not None and b.shape == a.shape else 0.0
    return result


def merge_parity(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several samples' parity in one: totals, worst values, ok and a one-line summary."""
    out: dict[str, Any] = {}
    words, ok = [], True
    dets = [p["detections"] for p in parts if "detections" in p]
    if dets:
        keys = ("reference", "exported", "matched", "unexplained", "nms_borderline")
        d = {k: sum(x[k] for x in dets) for k in keys}
        d["min_iou"] = min(x["min_iou"] for x in dets)
        d["max_score_diff"] = max(x["max_score_diff"] for x in dets)
        masks = [x["mask_iou_min"] for x in dets if x["mask_iou_min"] is not None]
        d["mask_iou_min"] = min(masks) if masks else None
        out["detections"] = d
        ok &= d["unexplained"] == 0
        words.append(
            f"{d['matched']}/{d['reference']} detections matched ({d['exported']} exported), "
            f"min IoU {d['min_iou']:.4f}, max score diff {d['max_score_diff']:.2g}"
            + (f", {d['nms_borderline']} at an NMS borderline" if d["nms_borderline"] else "")
        )
    sems = [p["semantic_equal"] for p in parts if "semantic_equal" in p]
    if sems:
        out["semantic_equal"] = min(sems)
        ok &= out["semantic_equal"] >= SEMANTIC_AGREEMENT
        words.append(f"semantic maps {100 * out['semantic_equal']:.3f}% equal")
    out["ok"] = bool(ok)
    out["summary"] = "; ".join(words)
    out["criteria"] = {
        "min_iou": MIN_IOU,
        "score_tol": SCORE_TOL,
        "semantic_agreement": SEMANTIC_AGREEMENT,
        "nms_iou_tol": NMS_TOL,
    }
    return out


def sidecar(
    model: Any, e2e: EndToEnd, fmt: str, out: Path, names: list[str], dynamic: bool, card: dict | None
) -> dict[str, Any]:
    """What a caller needs to run the file without our code (the module docstring, as data)."""
    two_stage = e2e.two_stage
    sem_dtype = "uint8"
    meaning = {
        "boxes": ["N", 4, "float32", "xyxy in input pixels (0..W, 0..H), per image best score first"],
        "scores": ["N", "float32", "class confidence 0..1"],
        "labels": ["N", "int64", "1..K: det_classes[label - 1]"],
        "batch_index": ["N", "int64", "image of the batch the detection belongs to"],
        "masks": ["N", "H", "W", "uint8", "instance mask (1 inside: probability > 0.5), pasted into the input"],
        "semantic": ["B", "H", "W", sem_dtype, "seg class index: seg_classes[value] (argmax of upsampled logits)"],
    }
    if two_stage:
        resize = (
            f"short side to {e2e.size[0]}, long side at most {e2e.size[1]} (bilinear, torchvision's "
            "GeneralizedRCNNTransform), padded to a multiple of 32"
        )
    else:
        resize = f"to {e2e.size[0]}x{e2e.size[1]} with F.interpolate(bilinear, align_corners=False, no antialias)"
    return {
        "format": fmt,
        "file": str(out),
        "model": model.__class__.__name__,
        "input": {
            "name": "images",
            "shape": ["B" if dynamic else 1, "H", "W", 3],
            "dtype": "uint8",
            "layout": "NHWC (batch, height, width, RGB)",
            "range": "0..255 RGB (not BGR), any H x W; the graph resizes and normalises",
            "batch": "any" if dynamic else 1,
        },
        "preprocess": {
            "inside the graph": True,
            "resize": resize,
            "network_size": list(e2e.size),
            "normalise": "(x / 255 - mean) / std, ImageNet mean and std",
        },
        "outputs": {n: meaning[n] for n in names},
        "postprocess": {**e2e.settings(), "nms_kind": "per image and class (torchvision batched_nms)"},
        "classes": card or {},
        "opset": 18 if fmt == "onnx" else None,
        "notes": (
            "two-stage: one image per run; the RoIAlign level of each pyramid map is fixed at export "
            "(torchvision infers it per image from the resized height: the same unless padding to a multiple "
            "of 32 adds over 41% of it, which only tiny test sizes reach)"
            if two_stage
            else "the whole batch shares one H x W"
        ),
    }
