"""The interdependent network's detector (papers/interdependent-mtl.txt, MODELS.md §6): rapid downsampling
of the segmentation decoder's multi-level features, trident blocks with shared weights (dilations 1, 2, 3),
a YOLOv2-coded head per branch, and the box coding, scale-aware target assignment and anchors it uses.
`mtlcli.models.imtl` builds the whole network around it; the layers both share (`conv_bn_act`,
`match_size`) live here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlcli.errors import UserError

BRANCH_DILATIONS = (1, 2, 3)
# Anchor (w, h) in pixels of the 768x384 network frame, sorted by area. Placeholders (inferred) shaped
# like Cityscapes pedestrians, riders and vehicles; `mtl anchors` computes the paper's k-means ones.
DEFAULT_ANCHORS = [[8, 18], [16, 36], [28, 20], [26, 62], [54, 40], [44, 104], [96, 70], [160, 130], [300, 190]]
DEFAULT_ANCHOR_FRAME = (384, 768)


def conv_bn_act(
    cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, act: str = "relu"
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "leaky":
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


def match_size(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear resize to `ref`'s size where odd input sizes make a x2 step miss by a pixel."""
    return (
        x
        if x.shape[-2:] == ref.shape[-2:]
        else F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)
    )


# ------------------------------------------------------------------------------------------ detector


class TridentBottleneck(nn.Module):
    """Residual bottleneck (1x1, 3x3, 1x1) whose weights are shared by every branch; only the 3x3's
    dilation differs. forward(x [B, c, h, w], dilation) -> [B, c, h, w]; leaky ReLU."""

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(channels, mid, 1, act="leaky")
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv_bn_act(mid, channels, 1, act="none")

    def forward(self, x: Tensor, dilation: int) -> Tensor:
        y = self.conv1(x)
        y = F.conv2d(y, self.conv2.weight, None, 1, dilation, dilation)
        y = F.leaky_relu(self.bn2(y), 0.1)
        return F.leaky_relu(x + self.conv3(y), 0.1)


class Detector(nn.Module):
    """forward(up2_skip [B, c4, H/4, W/4], bottleneck [B, b, H/16, W/16], up1_skip [B, c8, H/8, W/8]) ->
    list over the three branches (dilations 1, 2, 3) of raw predictions [B, A, 5 + K, H/16, W/16]:
    tx, ty, tw, th, objectness, classes.

    Rapid downsampling (3x3/2 and 1x1 convs, no max pool) of the multi-level decoder features: the
    stride-4 map goes 3x3/2 -> 1x1 to stride 8, where (`levels` = 2) the stride-8 up-step + skip map is
    concatenated ("Multi-Level Features ... from both segmentation decoder and skip refinement stage",
    the PANet-like path of the paper's Figure 2), then 3x3/2 -> 1x1 to the bottleneck's stride 16;
    concat with the bottleneck, 1x1 entry, dropout, trident blocks. `levels` = 1 reads the stride-4 map
    only (the earlier form, 1.29M parameters fewer at full size).
    """

    def __init__(
        self,
        cin: int,
        bottleneck_channels: int,
        num_classes: int,
        anchors_per_branch: int = 3,
        width: int = 256,
        trident_width: int = 1024,
        trident_mid: int = 256,
        trident_blocks: int = 3,
        dropout: float = 0.5,
        levels: int = 2,
        cin8: int | None = None,
        shared_head: bool = False,
    ) -> None:
        super().__init__()
        if levels not in (1, 2):
            raise UserError(f"detector_levels must be 1 or 2, got {levels}")
        self.levels = levels
        extra = (cin if cin8 is None else cin8) if levels == 2 else 0
        self.down = nn.Sequential(
            conv_bn_act(cin, width, 3, stride=2, act="leaky"),
            conv_bn_act(width, width, 1, act="leaky"),
            conv_bn_act(width + extra, 2 * width, 3, stride=2, act="leaky"),
            conv_bn_act(2 * width, width, 1, act="leaky"),
        )
        self.dropout = nn.Dropout(dropout)
        self.entry = conv_bn_act(width + bottleneck_channels, trident_width, 1, act="leaky")
        self.trident = nn.ModuleList([TridentBottleneck(trident_width, trident_mid) for _ in range(trident_blocks)])
        n_heads = 1 if shared_head else len(BRANCH_DILATIONS)
        self.heads = nn.ModuleList(
            [nn.Conv2d(trident_width, anchors_per_branch * (5 + num_classes), 1) for _ in range(n_heads)]
        )
        self.anchors_per_branch, self.num_classes = anchors_per_branch, num_classes
        # RetinaNet's prior: objectness and class scores start at 0.01, so the focal loss over thousands
        # of negatives does not swamp the first steps
        with torch.no_grad():
            for head in self.heads:
                assert isinstance(head, nn.Conv2d) and head.bias is not None
                head.bias.view(anchors_per_branch, 5 + num_classes)[:, 4:] = -math.log(99.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 (torch's signature)
        # checkpoints from before per-branch heads hold one shared `head`: each branch starts from it,
        # which computes exactly what the shared head did
        for name in ("weight", "bias"):
            old = state_dict.pop(prefix + "head." + name, None)
            if old is not None:
                for k in range(len(self.heads)):
                    state_dict.setdefault(f"{prefix}heads.{k}.{name}", old.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, up2_skip: Tensor, bottleneck: Tensor, up1_skip: Tensor | None = None) -> list[Tensor]:
        x = self.down[1](self.down[0](up2_skip))
        if self.levels == 2:
            if up1_skip is None:
                raise ValueError("a two-level detector needs the stride-8 map")
            x = torch.cat([match_size(x, up1_skip), up1_skip], dim=1)
        x = match_size(self.down[3](self.down[2](x)), bottleneck)
        x = self.dropout(self.entry(torch.cat([x, bottleneck], dim=1)))  # dropout just before the trident
        outs = []
        for k, d in enumerate(BRANCH_DILATIONS):
            y = x
            for blk in self.trident:
                y = blk(y, d)
            b, _, h, w = y.shape
            head = self.heads[k % len(self.heads)]
            outs.append(head(y).view(b, self.anchors_per_branch, 5 + self.num_classes, h, w))
        return outs


# ------------------------------------------------------------------------------ box coding and targets


def decode_boxes(raw: Tensor, anchors: Tensor, stride: tuple[float, float]) -> Tensor:
    """YOLOv2 coding. raw [..., A, 4+, h, w] (tx, ty, tw, th first), anchors [A, 2] (w, h) in pixels,
    stride (sy, sx) -> boxes [..., A, h, w, 4] xyxy in the network frame: centre = (cell + sigmoid(t)) *
    stride, size = anchor * exp(t) (t clamped so exp cannot overflow)."""
    h, w = raw.shape[-2:]
    sy, sx = stride
    gy, gx = torch.meshgrid(torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij")
    cx = (raw[..., 0, :, :].sigmoid() + gx) * sx
    cy = (raw[..., 1, :, :].sigmoid() + gy) * sy
    aw = anchors[:, 0].view(-1, 1, 1).to(raw)
    ah = anchors[:, 1].view(-1, 1, 1).to(raw)
    bw = aw * raw[..., 2, :, :].clamp(max=math.log(1e4)).exp()
    bh = ah * raw[..., 3, :, :].clamp(max=math.log(1e4)).exp()
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)


def anchor_wh_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    """IoU of centred boxes: wh [N, 2], anchors [M, 2] -> [N, M] (the k-means distance of ops/kmeans)."""
    inter = torch.min(wh[:, None, 0], anchors[None, :, 0]) * torch.min(wh[:, None, 1], anchors[None, :, 1])
    return inter / (wh[:, None].prod(-1) + anchors[None].prod(-1) - inter)


def assign_targets(
    boxes: Tensor,
    labels: Tensor,
    anchors: Tensor,
    grid: tuple[int, int],
    stride: tuple[float, float],
    anchors_per_branch: int = 3,
) -> dict[str, Tensor]:
    """YOLOv2 assignment with scale-aware branches: each ground truth goes to the one anchor (of all
    3 x A, sorted small to large) whose shape fits it best, which fixes its branch (anchors 0..A-1 ->
    dilation 1, ...), in the grid cell holding its centre.

    boxes [N, 4] xyxy in the network frame, labels [N] 1..K, anchors [3A, 2] (w, h), grid (h, w),
    stride (sy, sx). Returns flat prediction indices over (branch, anchor, y, x) `index` [M], box targets
    `box` [M, 4] (tx, ty in 0..1 within the cell; tw, th = log(size / anchor)) and `labels` [M] 0..K-1.
    Two boxes claiming the same prediction: the first (in input order) keeps it.
    """
    h, w = grid
    sy, sx = stride
    if boxes.numel() == 0:
        empty = boxes.new_zeros((0,), dtype=torch.int64)
        return {"index": empty, "box": boxes.new_zeros((0, 4)), "labels": empty}
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2 / sx).clamp(0, w - 1e-4)
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2 / sy).clamp(0, h - 1e-4)
    best = anchor_wh_iou(wh, anchors.to(wh)).argmax(dim=1)
    gx, gy = cx.floor().long(), cy.floor().long()
    index = (best * h + gy) * w + gx
    seen: set[int] = set()
    keep = []
    for i, idx in enumerate(index.tolist()):
        if idx not in seen:
            seen.add(idx)
            keep.append(i)
    keep_t = torch.tensor(keep, dtype=torch.int64, device=boxes.device)
    a = anchors.to(wh)[best[keep_t]]
    box = torch.stack(
        [
            cx[keep_t] - gx[keep_t],
            cy[keep_t] - gy[keep_t],
            torch.log(wh[keep_t, 0] / a[:, 0]),
            torch.log(wh[keep_t, 1] / a[:, 1]),
        ],
        dim=1,
    )
    return {"index": index[keep_t], "box": box, "labels": labels[keep_t].long() - 1}


# -------------------------------------------------------------------------------------------- anchors


def load_anchors(anchors: Any, input_size: tuple[int, int]) -> Tensor:
    """Anchors as [9, 2] (w, h) in the network frame `input_size` (H, W).

    anchors: None (DEFAULT_ANCHORS, inferred, scaled from 768x384); "kmeans" (the paper's: `mtl train`
    clusters the train split's boxes before building and writes them into the run's recipe.toml; a model
    built outside training, e.g. by a benchmark, gets the placeholders); a list of [w, h] pairs already in the
    network frame, or the path of a JSON file written by `mtl anchors` ({"anchors": [[w, h], ...],
    "input_size": [H, W]}; rescaled when its frame differs). Sorted by area: three per branch.
    """
    frame = tuple(input_size)
    if anchors is None or anchors == "" or (isinstance(anchors, str) and anchors.lower() == "kmeans"):
        values, frame = DEFAULT_ANCHORS, DEFAULT_ANCHOR_FRAME
    elif isinstance(anchors, (str, Path)):
        path = Path(anchors).expanduser()
        if not path.is_file():
            raise UserError(
                f"anchors file {path} does not exist — compute it with `mtl anchors --data DATA --out {path}`"
            )
        try:
            data = json.loads(path.read_text())
            values, frame = data["anchors"], tuple(data.get("input_size", input_size))
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            raise UserError(
                f"{path} is not an anchors file written by `mtl anchors` ({exc}) — compute it again"
            ) from None
    else:
        values = anchors
    try:
        t = torch.tensor(values, dtype=torch.float32, device="cpu")  # also under a meta-device build
    except (TypeError, ValueError):
        raise UserError(f"anchors must be a list of [w, h] pairs, got {values!r}") from None
    if t.ndim != 2 or t.shape[1] != 2 or len(t) % len(BRANCH_DILATIONS) or not bool((t > 0).all()):
        raise UserError(f"anchors must be a multiple of 3 positive [w, h] pairs (three branches), got {values!r}")
    t = t * torch.tensor([input_size[1] / frame[1], input_size[0] / frame[0]], device="cpu")
    return t[torch.argsort(t.prod(1), stable=True)]
