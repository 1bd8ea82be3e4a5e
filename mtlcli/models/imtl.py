"""Interdependent multi-task network: an AdapNet++-style segmenter whose decoder feeds a trident
YOLO-style detector (papers/interdependent-mtl.txt, MODELS.md §6).

    image -> encoder (full pre-activation ResNet-50, multiscale units, dilated block4, stride 16)
          -> bottleneck (eASPP, 256)
          -> decoder: up x2 (+ block2 skip) -> up x2 (+ block1 skip) -> classes -> up x4   (sem_seg)
                      aux2 (0.5) after the first up-step, aux1 (0.6) after the second (AdapNet++)
          -> detector: [up2, block1 skip] (stride 4) -> 3x3/2, 1x1 -> concat [up1, block2 skip] (stride 8)
                       -> 3x3/2, 1x1 -> stride 16, concat bottleneck -> 1x1 -> dropout
                       -> trident blocks (shared weights, dilations 1, 2, 3)
                       -> per branch 3 anchors x (4 + 1 + classes), YOLOv2 box coding  (boxes)

The detector, its box coding, target assignment and anchors are in `mtlcli.models.imtl_detector`.
Submodules are named `encoder`, `bottleneck`, `decoder`, `detector` so that the staged recipe can freeze
them by parameter-name pattern; loss terms are `loss_seg`, `loss_seg_aux1`, `loss_seg_aux2` (already
multiplied by W_seg) and `loss_det_box`, `loss_det_obj`, `loss_det_cls` (by W_det).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, sigmoid_focal_loss

from mtlcli.errors import UserError
from mtlcli.models.backbones import load_pretrained
from mtlcli.models.base import MultiTaskModel, boxes_to_original, semantic_to_original
from mtlcli.models.imtl_detector import (
    BRANCH_DILATIONS,
    Detector,
    assign_targets,
    conv_bn_act,
    decode_boxes,
    load_anchors,
    match_size,
)

IGNORE_INDEX = 255


# ------------------------------------------------------------------------------------------- encoder


class PreActBottleneck(nn.Module):
    """Full pre-activation bottleneck (He et al. 2016): BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1, + shortcut.

    A multiscale unit (AdapNet++) splits the 3x3 into two halves of the channels, one at `dilation`
    and one at `multiscale`, concatenated. `dropout` drops the residual branch's output before the sum
    (AdapNet++'s block4 unit). [B, cin, H, W] -> [B, 4 mid, H/stride, W/stride].
    """

    def __init__(
        self, cin: int, mid: int, stride: int = 1, dilation: int = 1, multiscale: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        cout = 4 * mid
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        if multiscale:
            half = mid // 2
            self.conv2 = nn.ModuleList(
                [
                    nn.Conv2d(mid, half, 3, stride, padding=dilation, dilation=dilation, bias=False),
                    nn.Conv2d(mid, mid - half, 3, stride, padding=multiscale, dilation=multiscale, bias=False),
                ]
            )
        else:
            self.conv2 = nn.ModuleList(
                [nn.Conv2d(mid, mid, 3, stride, padding=dilation, dilation=dilation, bias=False)]
            )
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, cout, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = self.shortcut(pre) if self.shortcut is not None else x
        y = F.relu(self.bn2(self.conv1(pre)))
        y = torch.cat([conv(y) for conv in self.conv2], dim=1)
        y = self.dropout(self.conv3(F.relu(self.bn3(y))))
        return y + shortcut


class Encoder(nn.Module):
    """Pre-activation ResNet-50 of AdapNet++: stem (7x7/2, max pool), block1 (stride 4), block2 (8, last
    unit multiscale), block3 (16, units 3.. multiscale), block4 (16, dilated; dropout on the residual
    branch of its third unit, as AdapNet++'s code, i.e. its last at the paper's depth), final BN-ReLU.
    forward [B, 3, H, W] -> (block1 [B, 4w, H/4, W/4], block2 [B, 8w, H/8, W/8], block4 [B, 32w, H/16, W/16]).
    `stem_norm`: BN-ReLU after the 7x7 conv (AdapNet++'s own stem); without it the stem is the full
    pre-activation ResNet's (conv, max pool: the first unit normalises), which ImageNet weights expect.
    """

    def __init__(
        self,
        width: int = 64,
        layers: Sequence[int] = (3, 4, 6, 3),
        multiscale: int = 2,
        block4_dilation: int = 2,
        dropout: float = 0.5,
        stem_norm: bool = False,
    ) -> None:
        super().__init__()
        norm = [nn.BatchNorm2d(width), nn.ReLU(inplace=True)] if stem_norm else []
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), *norm, nn.MaxPool2d(3, 2, 1))

        def block(
            cin: int,
            mid: int,
            n: int,
            stride: int,
            dilation: int,
            multi: set[int],
            drop: dict[int, float] | None = None,
        ) -> nn.Sequential:
            units = [
                PreActBottleneck(
                    cin if i == 0 else 4 * mid,
                    mid,
                    stride if i == 0 else 1,
                    dilation,
                    multiscale if i in multi else 0,
                    (drop or {}).get(i, 0.0),
                )
                for i in range(n)
            ]
            return nn.Sequential(*units)

        self.block1 = block(width, width, layers[0], 1, 1, set())
        self.block2 = block(4 * width, 2 * width, layers[1], 2, 1, {layers[1] - 1})
        self.block3 = block(8 * width, 4 * width, layers[2], 2, 1, set(range(2, layers[2])))
        self.block4 = block(
            16 * width, 8 * width, layers[3], 1, block4_dilation, set(), {min(2, layers[3] - 1): dropout}
        )
        self.post = nn.Sequential(nn.BatchNorm2d(32 * width), nn.ReLU(inplace=True))
        self.channels = (4 * width, 8 * width, 32 * width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s1 = self.block1(self.stem(x))
        s2 = self.block2(s1)
        return s1, s2, self.post(self.block4(self.block3(s2)))


class EASPP(nn.Module):
    """Efficient atrous spatial pyramid pooling (AdapNet++): a 1x1 branch, three cascades 1x1 (width/4)
    -> 3x3 atrous -> 3x3 atrous -> 1x1 (width) at `rates`, image pooling; concat -> 1x1 (width)."""

    def __init__(self, cin: int, width: int = 256, rates: Sequence[int] = (3, 6, 12)) -> None:
        super().__init__()
        q = max(width // 4, 1)
        self.branches = nn.ModuleList([conv_bn_act(cin, width, 1)])
        for r in rates:
            self.branches.append(
                nn.Sequential(
                    conv_bn_act(cin, q, 1),
                    conv_bn_act(q, q, 3, dilation=r),
                    conv_bn_act(q, q, 3, dilation=r),
                    conv_bn_act(q, width, 1),
                )
            )
        # no BN on the pooled 1x1 map: with one image per process it would see a single value per channel
        self.pool = nn.Sequential(nn.Conv2d(cin, width, 1), nn.ReLU(inplace=True))
        self.project = conv_bn_act(width * (len(rates) + 2), width, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def up_conv(cin: int, cout: int, factor: int) -> nn.ConvTranspose2d:
    """Learned upsampling by `factor` (transposed conv, kernel 2 factor), initialised to bilinear
    interpolation per channel so training starts from a smooth upsampling."""
    k = 2 * factor
    deconv = nn.ConvTranspose2d(cin, cout, k, stride=factor, padding=factor // 2, bias=False)
    center = (k - 1) / 2
    og = torch.arange(k, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    with torch.no_grad():
        deconv.weight.zero_()
        for i in range(min(cin, cout)):
            deconv.weight[i, i] = kernel
    return deconv


class Decoder(nn.Module):
    """AdapNet++ decoder. forward(bottleneck [B, w, H/16, W/16], block1, block2) ->
    {"up2_skip": [B, w + skip, H/4, W/4] and "up1_skip": [B, w + skip, H/8, W/8] (each up-step's
    output concatenated with its skip refinement: the detector's multi-level input),
    "aux1" [B, C, H/4, W/4], "aux2" [B, C, H/8, W/8], "logits" [B, C, H, W]}.
    The auxiliary heads sit where AdapNet++'s code puts them: aux1 (weight 0.6) on the second up-step
    (stride 4), aux2 (0.5) on the first (stride 8); they read the up-step after its BN-ReLU (inferred;
    the reference reads it before the ReLU)."""

    def __init__(
        self, cin: int, skip_channels: tuple[int, int], num_classes: int, width: int = 256, skip_width: int = 24
    ) -> None:
        super().__init__()
        self.up1 = nn.Sequential(up_conv(cin, width, 2), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.skip2 = conv_bn_act(skip_channels[1], skip_width, 1)
        self.fuse1 = nn.Sequential(conv_bn_act(width + skip_width, width, 3), conv_bn_act(width, width, 3))
        self.up2 = nn.Sequential(up_conv(width, width, 2), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.skip1 = conv_bn_act(skip_channels[0], skip_width, 1)
        self.fuse2 = nn.Sequential(conv_bn_act(width + skip_width, width, 3), conv_bn_act(width, width, 3))
        self.aux1 = nn.Conv2d(width, num_classes, 1)
        self.aux2 = nn.Conv2d(width, num_classes, 1)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.up3 = up_conv(num_classes, num_classes, 4)
        self.out_channels = width + skip_width

    def forward(self, x: Tensor, s1: Tensor, s2: Tensor) -> dict[str, Tensor]:
        u1 = self.up1(x)
        u1 = match_size(u1, s2)
        up1_skip = torch.cat([u1, self.skip2(s2)], dim=1)
        y = self.fuse1(up1_skip)
        u2 = match_size(self.up2(y), s1)
        up2_skip = torch.cat([u2, self.skip1(s1)], dim=1)
        logits = self.up3(self.classifier(self.fuse2(up2_skip)))
        return {
            "up2_skip": up2_skip,
            "up1_skip": up1_skip,
            "aux1": self.aux1(u2),
            "aux2": self.aux2(u1),
            "logits": logits,
        }


# ---------------------------------------------------------------------------------------------- model


class InterdependentMTL(MultiTaskModel):
    """DESIGN.md §4 contract.

    forward(images: list[Tensor[3, H, W] float 0..1], targets: boxes [N, 4] xyxy, labels [N] 1..K,
            semantic [H, W] int64 (255 = ignore), optional iscrowd [N])
    train -> {loss_seg, loss_seg_aux1, loss_seg_aux2 (x W_seg), loss_det_box, loss_det_obj, loss_det_cls (x W_det)}
    eval  -> [{"boxes" [N, 4] xyxy, "scores" [N], "labels" [N] 1..K, "sem_seg" [C, H, W]}] in the original frame
    `network(batch [B, 3, h, w])` -> {"logits" [B, C, h, w], "aux1" [B, C, h/4, w/4], "aux2" [B, C, h/8, w/8],
    "det": three tensors [B, A, 5 + K, h/16, w/16]}.
    """

    anchors: Tensor

    def __init__(
        self,
        encoder: Encoder,
        bottleneck: EASPP,
        decoder: Decoder,
        detector: Detector,
        anchors: Tensor,
        input_size: tuple[int, int],
        seg_weight: float = 40.0,
        det_weight: float = 1.0,
        aux_weights: tuple[float, float] = (0.6, 0.5),
        score_thresh: float = 0.01,
        nms_thresh: float = 0.55,
        detections_per_img: int = 100,
        ignore_iou: float = 0.6,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__(input_size)
        self.encoder, self.bottleneck, self.decoder, self.detector = encoder, bottleneck, decoder, detector
        self.register_buffer("anchors", anchors.float().view(len(BRANCH_DILATIONS), -1, 2), persistent=False)
        self.seg_weight, self.det_weight, self.aux_weights = seg_weight, det_weight, tuple(aux_weights)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.ignore_iou, self.focal_alpha, self.focal_gamma = ignore_iou, focal_alpha, focal_gamma

    def network(self, batch: Tensor) -> dict[str, Any]:
        s1, s2, s4 = self.encoder(batch)
        b = self.bottleneck(s4)
        seg = self.decoder(b, s1, s2)
        det = self.detector(seg.pop("up2_skip"), b, seg.pop("up1_skip"))
        return {**seg, "det": det}

    def _strides(self, det: list[Tensor]) -> tuple[float, float]:
        h, w = det[0].shape[-2:]
        return self.input_size[0] / h, self.input_size[1] / w

    # ------------------------------------------------------------------------------------------ loss
    def loss(self, raw: dict[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        semantic = torch.stack([t["semantic"] for t in targets]).long()
        w1, w2 = self.aux_weights
        losses = {
            "loss_seg": self.seg_weight * _seg_ce(raw["logits"], semantic),
            "loss_seg_aux1": self.seg_weight * w1 * _seg_ce(raw["aux1"], semantic),
            "loss_seg_aux2": self.seg_weight * w2 * _seg_ce(raw["aux2"], semantic),
        }
        det = {k: self.det_weight * v for k, v in self.detection_loss(raw["det"], targets).items()}
        return {**losses, **det}

    def detection_loss(self, det: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Focal loss on objectness (all predictions but the ignored) and classes (positives), smooth L1
        on the YOLOv2 offsets of positives; each summed and divided by the positives of the batch."""
        stride = self._strides(det)
        h, w = det[0].shape[-2:]
        pred = torch.stack(det, dim=1)  # [B, 3, A, 5+K, h, w]
        B, K = pred.shape[0], pred.shape[3] - 5
        pred = pred.permute(0, 1, 2, 4, 5, 3).reshape(B, -1, 5 + K)  # [B, P, 5+K], P over (branch, anchor, y, x)
        anchors = self.anchors.reshape(-1, 2)
        obj_t = torch.zeros(pred.shape[:2], device=pred.device)
        valid = torch.ones_like(obj_t, dtype=torch.bool)
        pos_pred, pos_box, pos_cls = [], [], []
        with torch.no_grad():
            boxes_all = decode_boxes(torch.stack(det, 1).flatten(1, 2).detach(), anchors, stride).reshape(B, -1, 4)
        for i, t in enumerate(targets):
            boxes = t.get("boxes", pred.new_zeros((0, 4))).float()
            labels = t.get("labels", torch.zeros(len(boxes), dtype=torch.int64, device=pred.device))
            crowd = t.get("iscrowd", torch.zeros(len(boxes), dtype=torch.int64, device=pred.device)).bool()
            if len(boxes):
                # predictions already overlapping an object (crowd regions included) are not negatives
                valid[i] = box_iou(boxes_all[i], boxes).max(dim=1).values <= self.ignore_iou
            a = assign_targets(boxes[~crowd], labels[~crowd], anchors, (h, w), stride, self.anchors.shape[1])
            obj_t[i, a["index"]] = 1.0
            valid[i, a["index"]] = True
            pos_pred.append(pred[i, a["index"]])
            pos_box.append(a["box"])
            pos_cls.append(a["labels"])
        num_pos = max(float(obj_t.sum()), 1.0)
        loss_obj = (
            sigmoid_focal_loss(pred[..., 4][valid], obj_t[valid], self.focal_alpha, self.focal_gamma, "sum") / num_pos
        )
        p = torch.cat(pos_pred)
        box_t = torch.cat(pos_box)
        cls_t = F.one_hot(torch.cat(pos_cls), K).to(p)
        loss_box = (
            F.smooth_l1_loss(p[:, :2].sigmoid(), box_t[:, :2], reduction="sum", beta=1 / 9)
            + F.smooth_l1_loss(p[:, 2:4], box_t[:, 2:], reduction="sum", beta=1 / 9)
        ) / num_pos
        loss_cls = sigmoid_focal_loss(p[:, 5:], cls_t, self.focal_alpha, self.focal_gamma, "sum") / num_pos
        return {"loss_det_box": loss_box, "loss_det_obj": loss_obj, "loss_det_cls": loss_cls}

    # ----------------------------------------------------------------------------------- postprocess
    def postprocess(self, raw: dict[str, Any], original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        det = raw["det"]
        stride = self._strides(det)
        stacked = torch.stack(det, 1).flatten(1, 2)  # [B, 3A, 5+K, h, w]
        boxes_all = decode_boxes(stacked, self.anchors.reshape(-1, 2), stride).reshape(stacked.shape[0], -1, 4)
        logits = stacked.permute(0, 1, 3, 4, 2).reshape(stacked.shape[0], -1, stacked.shape[2])
        h, w = self.input_size
        out = []
        for i, size in enumerate(original_sizes):
            scores = logits[i, :, 4:5].sigmoid() * logits[i, :, 5:].sigmoid()  # [P, K]
            flat = scores.flatten()
            keep = torch.nonzero(flat > self.score_thresh).squeeze(1)
            keep = keep[flat[keep].topk(min(1000, len(keep))).indices]
            idx, cls = keep // scores.shape[1], keep % scores.shape[1]
            boxes = boxes_all[i, idx]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            sel = batched_nms(boxes, flat[keep], cls, self.nms_thresh)[: self.detections_per_img]
            out.append(
                {
                    "boxes": boxes_to_original(boxes[sel], (h, w), size),
                    "scores": flat[keep][sel],
                    "labels": cls[sel] + 1,
                    "sem_seg": semantic_to_original(raw["logits"][i], size),
                }
            )
        return out


def _seg_ce(logits: Tensor, semantic: Tensor) -> Tensor:
    """CE (ignore 255) of logits [B, C, h, w] bilinearly resized to the labels [B, H, W]; zero with a graph
    when no pixel is labelled."""
    if logits.shape[-2:] != semantic.shape[-2:]:
        logits = F.interpolate(logits, size=semantic.shape[-2:], mode="bilinear", align_corners=False)
    if not (semantic != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, semantic, ignore_index=IGNORE_INDEX)


# -------------------------------------------------------------------------------------------- builder


def timm_resnetv2_to_encoder(state: dict[str, Tensor], encoder: Encoder) -> dict[str, Tensor]:
    """timm `resnetv2_50` state-dict keys -> `Encoder` keys (a full pre-activation ResNet-50 both).

        stem.conv                          -> stem.0
        stages.{s}.blocks.{i}.norm{1,2,3}  -> block{s+1}.{i}.bn{1,2,3}   (BN + ReLU in both)
        stages.{s}.blocks.{i}.conv{1,3}    -> block{s+1}.{i}.conv{1,3}
        stages.{s}.blocks.{i}.conv2        -> block{s+1}.{i}.conv2.0 (.1): a multiscale unit's two halves
                                              are the first and last output channels of the 3x3 kernel,
                                              as AdapNet++'s split_conv2d takes them
        stages.{s}.blocks.{i}.downsample.conv -> block{s+1}.{i}.shortcut
        norm                               -> post.0 (the final BN-ReLU); head.* is dropped
    Stage 4's stride 2 becomes block4's dilation (the weights do not depend on it). Keys already in
    this encoder's own names (optionally prefixed "encoder.") pass through.
    """
    if not any(k.startswith("stages.") for k in state):
        return {k.removeprefix("encoder."): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "stem" and parts[1] == "conv":
            out["stem.0." + ".".join(parts[2:])] = value
        elif parts[0] == "norm":
            out["post.0." + ".".join(parts[1:])] = value
        elif parts[0] == "stages" and parts[2] == "blocks":
            stage, unit, layer, rest = int(parts[1]), int(parts[3]), parts[4], parts[5:]
            prefix = f"block{stage + 1}.{unit}."
            if layer.startswith("norm"):
                out[prefix + "bn" + layer[4:] + "." + ".".join(rest)] = value
            elif layer in ("conv1", "conv3"):
                out[prefix + layer + "." + ".".join(rest)] = value
            elif layer == "downsample":
                out[prefix + "shortcut." + ".".join(rest[1:])] = value
            elif layer == "conv2":
                blocks: Any = getattr(encoder, f"block{stage + 1}", None)
                halves = len(blocks[unit].conv2) if blocks is not None and unit < len(blocks) else 1
                if halves == 1:
                    out[prefix + "conv2.0.weight"] = value
                else:
                    first = blocks[unit].conv2[0].out_channels
                    out[prefix + "conv2.0.weight"], out[prefix + "conv2.1.weight"] = value[:first], value[first:]
    return out


def load_encoder_weights(encoder: Encoder, pretrained: bool | str) -> None:
    """ImageNet weights for the pre-activation encoder (the paper starts from them).

    pretrained: false; a local state dict (`.pth` or `.safetensors`) of timm's `resnetv2_50` (mapped by
    `timm_resnetv2_to_encoder`) or of this encoder (`encoder.*` keys or bare); or true: timm's
    `resnetv2_50` ImageNet weights through timm (`pip install timm`; its download cache, so offline
    once fetched). Shape mismatches (another width or depth) are an error.
    """
    if pretrained is True or str(pretrained).lower() == "true":
        try:
            import timm
        except ImportError:
            raise UserError(
                "pretrained_backbone = true takes timm's resnetv2_50 ImageNet weights: `pip install timm`, "
                'or pass pretrained_backbone="/path/to/resnetv2_50.pth" (its state dict) or false'
            ) from None
        try:
            state = timm.create_model("resnetv2_50", pretrained=True).state_dict()
        except Exception as exc:  # no network and no cache
            raise UserError(
                f"could not get timm's resnetv2_50 ImageNet weights ({type(exc).__name__}: {exc}); without "
                'network, pass pretrained_backbone="/path/to/resnetv2_50.pth" or set it to false'
            ) from None
        mapped = timm_resnetv2_to_encoder(state, encoder)
        own = encoder.state_dict()
        bad = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise UserError(
                f"timm's resnetv2_50 does not fit this encoder (e.g. {bad[0]}) — use width 64, layers 3,4,6,3"
            )
        encoder.load_state_dict({**own, **mapped})
        return
    load_pretrained(encoder, pretrained, None, rename=lambda state: timm_resnetv2_to_encoder(state, encoder))


INITS = ("he", "torch")


def he_init(module: nn.Module, *, keep_bilinear: bool = False) -> None:
    """He initialisation (He et al. 2015, "Delving deep into rectifiers"): every conv, transposed conv
    and linear weight drawn from N(0, 2 / fan_in), biases zero — except the detector heads' focal-loss
    prior (their objectness / class biases stay at -log 99) — and batch norms at weight 1, bias 0.
    `keep_bilinear`: the decoder's transposed convs keep their bilinear start (`up_conv`) instead."""
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if keep_bilinear and isinstance(m, nn.ConvTranspose2d):
                continue
            # fan_in of a transposed conv is in_channels / groups x k x k along dim 0 of its weight
            mode: Literal["fan_in", "fan_out"] = "fan_out" if isinstance(m, nn.ConvTranspose2d) else "fan_in"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None and ".heads." not in f".{name}.":
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_imtl(
    num_det_classes: int = 3,
    num_seg_classes: int = 11,
    input_size: int | Sequence[int] = (384, 768),
    anchors: Any = None,
    pretrained_backbone: bool | str = False,
    width: int = 64,
    layers: Sequence[int] = (3, 4, 6, 3),
    multiscale_dilation: int = 2,
    block4_dilation: int = 2,
    aspp_width: int = 256,
    aspp_rates: Sequence[int] = (3, 6, 12),
    decoder_width: int = 256,
    skip_width: int = 24,
    det_width: int = 256,
    trident_width: int = 1024,
    trident_mid: int = 256,
    trident_blocks: int = 3,
    dropout: float = 0.5,
    detector_levels: int = 2,
    shared_head: bool = False,
    stem_norm: bool = False,
    seg_weight: float = 40.0,
    det_weight: float = 1.0,
    aux_weights: Sequence[float] = (0.6, 0.5),
    score_thresh: float = 0.01,
    nms_thresh: float = 0.55,
    detections_per_img: int = 100,
    ignore_iou: float = 0.6,
    init: str = "he",
    bilinear_upsampling: bool = False,
) -> InterdependentMTL:
    """The interdependent multi-task network with the paper's defaults (37.41M parameters at full size;
    the paper reports 37.9M, -1.3%).

    input_size (H, W): 384x768 in the paper; multiples of 16. anchors: see `load_anchors` (9 anchors,
    three per trident branch, smallest to dilation 1). pretrained_backbone: see `load_encoder_weights`
    (timm's `resnetv2_50` ImageNet state dict, or this encoder's own). detector_levels: 2 = the
    detector reads both decoder levels (stride 4 and 8, each up-step + skip refinement, the paper's
    "Multi-Level Features"), 1 = stride 4 only. stem_norm: AdapNet++'s BN-ReLU after the stem conv
    (false: the pre-activation ResNet's stem, which its ImageNet weights expect). shared_head: one
    output conv for the three branches (true) or one per branch (false, the default, inferred: the paper
    shares the trident blocks' weights and gives each branch its own 3 x (4 + 1 + K) output; with a shared
    conv only the dilation tells the branches apart, and a box the small-object branch must score is a
    negative of the large-object one: VOC07 mAP@0.5 0.19 shared against 0.24 per branch in one
    600-iteration run of imtl-tiny-synthetic).
    Tiny configuration: width=8, layers=(1, 2, 3, 1), aspp_width=32, decoder_width=32, skip_width=8,
    det_width=32, trident_width=64, trident_mid=16, trident_blocks=1.
    From AdapNet++'s public code (the paper defers to it): aux1 (0.6) on the stride-4 up-step, aux2 (0.5)
    on the stride-8 one; dropout inside block4 (on the residual branch of its third unit) and just
    before the trident block. Inferred (MODELS.md §6 leaves them open): block4 dilation 2; multiscale
    halves at dilation 1 and 2; deconvolutions with BN-ReLU; auxiliary heads after
    the up-steps' ReLU; the stride-8 level joins the rapid downsampling by concatenation before its
    second 3x3/2 conv; detector widths 256/512, a 1x1 entry to 1024 and 3 stacked trident bottlenecks
    (1024 -> 256 -> 1024; the paper's count is unknown: 3 lands within 1.5% of its 37.9M and below half
    of deeplabv3_resnet50 + retinanet_resnet50_fpn, 73.7M, its stated aim); an output conv per
    branch; ignore IoU 0.6 for objectness negatives; focal alpha 0.25, gamma 2; smooth L1 box loss.
    seg_weight: W_seg (the paper gives a range, 30-50; 40, its middle, is inferred), det_weight: W_det = 1.
    init: "he" (the paper: "He initialization ... for initializing rest of the network", i.e. every
    layer outside the ImageNet encoder: `he_init`, transposed convs included) or "torch" (PyTorch's
    default layer init, with the transposed convs' bilinear start: the earlier behaviour). Inferred: with
    `pretrained_backbone` off the encoder is He-initialised too (nothing else is given for it);
    `bilinear_upsampling = true` starts the decoder's transposed convs as bilinear upsampling instead
    (the earlier, inferred choice).
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if len(size) != 2 or min(size) < 16:
        raise UserError(f"input_size must be (H, W) of at least 16 pixels, got {input_size!r}")
    if num_det_classes < 1 or num_seg_classes < 1:
        raise UserError("num_det_classes and num_seg_classes must be at least 1")
    if len(layers) != 4 or min(layers) < 1:
        raise UserError(f"layers needs four block depths of at least 1, got {list(layers)}")
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    anchor_t = load_anchors(anchors, size)
    encoder = Encoder(width, layers, multiscale_dilation, block4_dilation, dropout, stem_norm)
    if init == "he":
        he_init(encoder)  # replaced below where ImageNet weights load
    load_encoder_weights(encoder, pretrained_backbone)
    bottleneck = EASPP(encoder.channels[2], aspp_width, aspp_rates)
    decoder = Decoder(aspp_width, encoder.channels[:2], num_seg_classes, decoder_width, skip_width)
    detector = Detector(
        decoder.out_channels,
        aspp_width,
        num_det_classes,
        len(anchor_t) // len(BRANCH_DILATIONS),
        det_width,
        trident_width,
        trident_mid,
        trident_blocks,
        dropout,
        detector_levels,
        decoder.out_channels,
        shared_head,
    )
    if init == "he":
        for part in (bottleneck, decoder, detector):
            he_init(part, keep_bilinear=bilinear_upsampling)
    return InterdependentMTL(
        encoder,
        bottleneck,
        decoder,
        detector,
        anchor_t,
        size,
        seg_weight,
        det_weight,
        (aux_weights[0], aux_weights[1]),
        score_thresh,
        nms_thresh,
        detections_per_img,
        ignore_iou,
    )
