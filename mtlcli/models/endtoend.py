"""The whole predict path of any family as one traceable module: what `mtl export` writes to ONNX and
TorchScript (`mtlcli.export`), and what `Predictor` runs when it can.

    images  uint8 [B, H, W, 3] RGB, any H x W (the layout numpy/Pillow decode to)
      -> float 0..1, resized to the network size with F.interpolate(bilinear, align_corners=False),
         normalised (single-stage families); torchvision's GeneralizedRCNNTransform (two-stage: short
         side to test_min_size, long side <= test_max_size, padded to a multiple of 32)
      -> network -> decoding -> per-class NMS (torchvision `batched_nms`: ONNX NonMaxSuppression)
      -> outputs in the input's pixel frame:
         boxes [N, 4] float32 xyxy input pixels · scores [N] float32 (descending within an image)
         labels [N] int64 1..K · batch_index [N] int64 (which image of the batch)
         masks [N, H, W] uint8 0/1 (instance masks pasted into the image, probability > 0.5; mask models)
         semantic [B, H, W] uint8 (int64 above 255 classes): argmax of the logits upsampled bilinearly to
         H x W — the map `mtl eval` scores

Detections are those the model's own postprocess keeps (its score_thresh, NMS IoU and detections per
image, overridable): the same as `model(images)` in eval mode, flattened over the batch. Two-stage
families run their torchvision RPN / RoI heads as they are (batch 1, as torchvision's own ONNX export).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

OUTPUTS = ("boxes", "scores", "labels", "batch_index", "masks", "semantic")


def is_two_stage(model: Any) -> bool:
    return hasattr(model, "roi_heads") and hasattr(model, "transform")


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    score_thresh: float,
    nms_thresh: float | None,
    max_det: int,
    num_classes: int,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidates of a batch -> final detections, flattened over the batch.

    boxes [B, M, 4], scores [B, M], labels [B, M] int64 1..num_classes; `valid` [B, M] bool (e.g.
    non-degenerate).
    Keeps scores > score_thresh, per-image per-class NMS at `nms_thresh` (None: no NMS), at most
    `max_det` per image, best first. Returns (boxes [N, 4], scores [N], labels [N], batch_index [N]),
    ordered by image then descending score. Traceable (no Python loop over the batch or the boxes).
    """
    b, m = scores.shape
    batch = torch.arange(b, device=scores.device)[:, None].expand(b, m)
    keep = scores > score_thresh
    if valid is not None:
        keep = keep & valid
    boxes, scores, labels, batch = boxes[keep], scores[keep], labels[keep], batch[keep]
    if nms_thresh is not None and not torch.jit.is_tracing():
        # eager: image by image, the very calls of the families' own postprocess (the same order among
        # equal scores, so the same boxes survive NMS and max_det)
        orders = []
        for i in range(b):
            members = torch.nonzero(batch == i).flatten()
            orders.append(members[batched_nms(boxes[members], scores[members], labels[members], nms_thresh)][:max_det])
        order = torch.cat(orders)
        return boxes[order], scores[order], labels[order], batch[order]
    if nms_thresh is not None:
        # NMS per class, unrolled over the (static) classes, and per image: batched_nms's coordinate offset
        # only separates images, so a batch of one compares the very boxes eager PyTorch compares (an offset
        # per class shifts coordinates by thousands of pixels and rounds IoUs near the threshold differently)
        kept = []
        for c in range(1, num_classes + 1):
            members = torch.nonzero(labels == c).flatten()
            kept.append(members[batched_nms(boxes[members], scores[members], batch[members], nms_thresh)])
        order = torch.cat(kept)
        order = order[scores[order].argsort(descending=True)]
    else:
        order = scores.argsort(descending=True)
    boxes, scores, labels, batch = boxes[order], scores[order], labels[order], batch[order]
    # rank of each detection within its image (they are sorted by score): count earlier ones of that image
    onehot = F.one_hot(batch, b) if b > 1 else batch[:, None] * 0 + 1
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1
    keep = rank < max_det
    boxes, scores, labels, batch = boxes[keep], scores[keep], labels[keep], batch[keep]
    if b == 1:
        return boxes, scores, labels, batch
    # by image, then by descending score (scores lie in 0..1: one key orders both)
    order = torch.argsort(batch.to(scores.dtype) * 2 + (1 - scores))
    return boxes[order], scores[order], labels[order], batch[order]


def semantic_map(logits: Tensor, size: Any) -> Tensor:
    """Segmentation logits [B, C, h, w] -> class map [B, H, W] (argmax after bilinear upsampling to
    `size`, align_corners=False: the order `mtl eval` scores), uint8 when C <= 256 else int64."""
    # max(1).indices is argmax(1) (both the first maximum) at a third of its time on the CPU
    up = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False).max(1).indices
    return up.to(torch.uint8) if logits.shape[1] <= 256 else up


class EndToEnd(nn.Module):
    """`images` uint8 [B, H, W, 3] -> dict of the module docstring's outputs (keys the model has).

    model: a family in eval mode. size: the network input (h, w) of single-stage families (default: the
    model's own); two-stage families take (test_min_size, test_max_size). score_thresh / nms_thresh /
    max_det: None keeps the model's own; nms=False leaves out NMS (every candidate above the threshold).
    """

    model: Any  # any family: the attributes read below are duck-typed
    mean: Tensor
    std: Tensor
    size: tuple[int, int]

    def __init__(
        self,
        model: Any,
        size: tuple[int, int] | None = None,
        *,
        score_thresh: float | None = None,
        nms_thresh: float | None = None,
        max_det: int | None = None,
        nms: bool = True,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.two_stage = is_two_stage(model)
        self.nms = nms
        owner = model.roi_heads if self.two_stage else model
        self.score_thresh = float(score_thresh if score_thresh is not None else getattr(owner, "score_thresh", 0.0))
        self.nms_thresh = float(nms_thresh if nms_thresh is not None else getattr(owner, "nms_thresh", 0.5))
        self.max_det = int(max_det if max_det is not None else getattr(owner, "detections_per_img", 100))
        if self.two_stage:
            t = model.transform
            self.size = (int(size[0]), int(size[1])) if size is not None else (t.test_min_size, t.test_max_size)
        else:
            self.size = (int(size[0]), int(size[1])) if size is not None else tuple(model.input_size)
            self.register_buffer("mean", model.pixel_mean.detach().clone().float(), persistent=False)
            self.register_buffer("std", model.pixel_std.detach().clone().float(), persistent=False)

    def output_names(self) -> list[str]:
        """The outputs this model's graph has, in `OUTPUTS` order (known without running it)."""
        m = self.model
        det = ["boxes", "scores", "labels", "batch_index"]
        if self.two_stage:
            seg = getattr(m, "output_sem_seg", False) and "seg" in getattr(m, "dense_heads", {})
            return det + (["masks"] if m.has_masks else []) + (["semantic"] if seg else [])
        has_det = (hasattr(m, "default_boxes") and getattr(m, "det_head", None) is not None) or hasattr(m, "anchors")
        has_seg = getattr(m, "seg_head", None) is not None or not hasattr(m, "default_boxes")
        return (det if has_det else []) + (["semantic"] if has_seg else [])

    # ----------------------------------------------------------------------------------------- steps
    def settings(self) -> dict[str, float | int | bool | None]:
        return {
            "score_thresh": self.score_thresh,
            "nms_thresh": self.nms_thresh if self.nms else None,
            "max_det": self.max_det,
            "nms": self.nms,
        }

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.run(images.permute(0, 3, 1, 2).float() / 255.0)

    def run(self, x: Tensor) -> dict[str, Tensor]:
        """The same on float images [B, 3, H, W] RGB 0..1 (what `Predictor` feeds)."""
        if self.two_stage:
            return self._two_stage(x)
        size = x.shape[-2:]
        batch = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        batch = (batch - self.mean) / self.std
        raw = self.model.network(batch)
        out: dict[str, Tensor] = {}
        cand = self._candidates(raw)
        if cand is not None:
            boxes, scores, labels, valid, num_classes = cand
            boxes, scores, labels, index = select_detections(
                boxes,
                scores,
                labels,
                score_thresh=self.score_thresh,
                nms_thresh=self.nms_thresh if self.nms else None,
                max_det=self.max_det,
                num_classes=num_classes,
                valid=valid,
            )
            hw = torch._shape_as_tensor(x)[2:].to(boxes)  # traced as a Shape op: any input size
            limit = torch.stack([hw[1], hw[0], hw[1], hw[0]])
            net = torch.tensor([self.size[1], self.size[0], self.size[1], self.size[0]], dtype=boxes.dtype).to(boxes)
            boxes = boxes * (limit / net)
            out.update(boxes=torch.min(boxes.clamp(min=0), limit), scores=scores, labels=labels, batch_index=index)
        logits = raw.get("seg_logits", raw.get("logits")) if isinstance(raw, dict) else None
        if logits is not None and logits.ndim == 4:
            out["semantic"] = semantic_map(logits, size)
        return out

    def _candidates(self, raw: dict) -> tuple[Tensor, Tensor, Tensor, Tensor | None, int] | None:
        """Per image candidate boxes [B, M, 4] (network frame, clipped), scores [B, M], labels [B, M]
        1..K and a validity mask, as the family's postprocess chooses them before its NMS."""
        m = self.model
        h, w = self.size
        if "cls_logits" in raw and hasattr(m, "default_boxes"):  # SSD heads (mtlcli.ops.multibox)
            from mtlcli.ops.multibox import BOX_CODER

            deltas = raw["bbox_regression"].float()
            b, a = deltas.shape[:2]
            boxes = BOX_CODER.decode_single(deltas.reshape(-1, 4), m.default_boxes.float().repeat(b, 1))
            boxes = _clip(boxes.reshape(b, a, 4), h, w)
            scores = raw["cls_logits"].float().softmax(-1)[..., 1:]  # [B, A, K]
            k = min(getattr(m, "topk_candidates", a), a)
            top, idx = scores.topk(k, dim=1)  # [B, k, K]: the best default boxes of every class
            num_classes = scores.shape[2]
            labels = torch.arange(1, num_classes + 1, device=scores.device).expand_as(idx)
            cand = torch.gather(boxes, 1, idx.reshape(b, -1, 1).expand(b, k * num_classes, 4))
            valid = (cand[..., 2] > cand[..., 0]) & (cand[..., 3] > cand[..., 1])
            return cand, top.reshape(b, -1), labels.reshape(b, -1), valid, num_classes
        if "det" in raw and hasattr(m, "anchors"):  # YOLO-style trident heads (mtlcli.models.imtl)
            from mtlcli.models.imtl_detector import decode_boxes

            det = raw["det"]
            stride = (h / det[0].shape[-2], w / det[0].shape[-1])
            stacked = torch.stack(det, 1).flatten(1, 2)  # [B, 3A, 5+K, h', w']
            b = stacked.shape[0]
            boxes = decode_boxes(stacked, m.anchors.reshape(-1, 2), stride).reshape(b, -1, 4)
            logits = stacked.permute(0, 1, 3, 4, 2).reshape(b, -1, stacked.shape[2])
            scores = logits[..., 4:5].sigmoid() * logits[..., 5:].sigmoid()  # [B, P, K]
            num_classes = scores.shape[2]
            flat = scores.flatten(1)
            top, keep = flat.topk(min(1000, flat.shape[1]), dim=1)
            idx = torch.div(keep, num_classes, rounding_mode="floor")
            cand = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))
            return _clip(cand, h, w), top, keep % num_classes + 1, None, num_classes
        return None

    def _two_stage(self, x: Tensor) -> dict[str, Tensor]:
        m = self.model
        t, heads = m.transform, m.roi_heads
        saved = (t.test_min_size, t.test_max_size, heads.score_thresh, heads.nms_thresh, heads.detections_per_img)
        t.test_min_size, t.test_max_size = int(self.size[0]), int(self.size[1])
        heads.score_thresh, heads.detections_per_img = self.score_thresh, self.max_det
        heads.nms_thresh = self.nms_thresh if self.nms else 1.0
        try:
            # one image, as torchvision's own ONNX export; its size stays symbolic (no int()), so the graph
            # takes any input size
            batch, _ = m.transform([x[0]])
            sizes = [(x.shape[-2], x.shape[-1])]
            raw = m.network(batch)
            det = dict(raw["detections"][0])
            (result,) = m.transform.postprocess([det], batch.image_sizes, sizes)
        finally:
            t.test_min_size, t.test_max_size, heads.score_thresh, heads.nms_thresh, heads.detections_per_img = saved
        out = {
            "boxes": result["boxes"],
            "scores": result["scores"],
            "labels": result["labels"],
            "batch_index": torch.zeros_like(result["labels"]),
        }
        if "masks" in result:
            out["masks"] = (result["masks"][:, 0] > 0.5).to(torch.uint8)
        seg = raw["dense"].get("seg") if getattr(m, "output_sem_seg", False) else None
        if seg is not None:
            from mtlcli.models.datnet import logits_to_original

            out["semantic"] = semantic_map_from(logits_to_original(seg[0], batch.image_sizes[0], sizes[0]))
        return out


def split_outputs(out: dict[str, Tensor], batch: int) -> list[dict[str, Tensor]]:
    """EndToEnd's flattened outputs -> one dict per image (boxes, scores, labels, masks, semantic [H, W])."""
    per_image: list[dict[str, Tensor]] = [{} for _ in range(batch)]
    if "batch_index" in out:
        for i, d in enumerate(per_image):
            keep = out["batch_index"] == i
            for key in ("boxes", "scores", "labels", "masks"):
                if key in out:
                    d[key] = out[key][keep]
    if "semantic" in out:
        for d, sem in zip(per_image, out["semantic"], strict=True):
            d["semantic"] = sem
    return per_image


def semantic_map_from(scores: Tensor) -> Tensor:
    """Scores or logits [C, H, W] already in the image frame -> class map [1, H, W] (uint8 when C <= 256)."""
    up = scores.argmax(0)[None]
    return up.to(torch.uint8) if scores.shape[0] <= 256 else up


def _clip(boxes: Tensor, h: int, w: int) -> Tensor:
    limit = boxes.new_tensor([w, h, w, h])
    return torch.min(boxes.clamp(min=0), limit)


def override_settings(
    model: Any, *, nms_thresh: float | None = None, size: tuple[int, int] | None = None
) -> contextlib.AbstractContextManager:
    """A context in which `model` runs with another NMS IoU and/or network input size (single-stage:
    `input_size` (h, w), refused for SSD default boxes laid out for one size; two-stage: (short side,
    long-side cap)), given back afterwards."""
    owner = model.roi_heads if is_two_stage(model) else model
    saved: list[tuple[object, str, object]] = []
    if nms_thresh is not None and hasattr(owner, "nms_thresh"):
        saved.append((owner, "nms_thresh", float(nms_thresh)))
    if size is not None:
        if is_two_stage(model):
            saved += [
                (model.transform, "test_min_size", int(size[0])),
                (model.transform, "test_max_size", int(size[1])),
            ]
        else:
            if hasattr(model, "default_boxes") and tuple(size) != tuple(model.input_size):
                from mtlcli.errors import UserError

                h, w = model.input_size
                raise UserError(f"size {size[0]}x{size[1]}: this model's default boxes are laid out for {h}x{w}")
            saved.append((model, "input_size", (int(size[0]), int(size[1]))))

    @contextlib.contextmanager
    def scope() -> Any:
        old = [(obj, key, getattr(obj, key)) for obj, key, _ in saved]
        try:
            for obj, key, value in saved:
                setattr(obj, key, value)
            yield model
        finally:
            for obj, key, value in old:
                setattr(obj, key, value)

    return scope()
