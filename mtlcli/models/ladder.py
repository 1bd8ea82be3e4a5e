"""Ladder-style DenseNet for semantic segmentation and the two baselines of its Table 1
(papers/ladder-densenet-and-ssd.txt, MODELS.md §3).

    images -> DenseNet features: DB1 (stride 4), DB2 (8), DB3 (16), DB4 (32)
    ladder     : context(DB4) -> up(+DB3) -> up(+DB2) -> up(+DB1) -> 1x1 logits at stride 4
    densenet32x: 1x1 logits straight from DB4 at stride 32
    dilated8x  : DB3, DB4 dilated (stride 8) -> context -> up(+DB1) -> 1x1 logits at stride 4

A ladder up-step blends the bilinearly upsampled coarse map with a 1x1-projected skip by a single
BN-ReLU-3x3 convolution. Training: cross-entropy (ignore 255) on the logits upsampled to the input size,
0.7 main + 0.3 auxiliary on the context output (the authors' code). Segmentation only: eval outputs
carry `sem_seg` and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import DenseNet, DenseNet121_Weights, DenseNet169_Weights

from mtlcli.errors import UserError
from mtlcli.models.backbones import load_pretrained
from mtlcli.models.base import MultiTaskModel, semantic_to_original

IGNORE_INDEX = 255
VARIANTS = ("ladder", "densenet32x", "dilated8x")

# (growth_rate, block_config, num_init_features, ImageNet weights)
_DENSENETS: dict[str, tuple[int, tuple[int, int, int, int], int, Any]] = {
    "densenet121": (32, (6, 12, 24, 16), 64, DenseNet121_Weights.IMAGENET1K_V1),
    "densenet169": (32, (6, 12, 32, 32), 64, DenseNet169_Weights.IMAGENET1K_V1),
}


def bn_relu_conv(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    """Pre-activation convolution as DenseNet uses it: BN -> ReLU -> conv (no bias)."""
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
    )


class ContextBlock(nn.Module):
    """BN-ReLU-1x1 (width) then BN-ReLU-3x3 (out): enlarges the receptive field on the deepest block."""

    def __init__(self, cin: int, width: int = 512, out: int = 128) -> None:
        super().__init__()
        self.reduce = bn_relu_conv(cin, width, 1)
        self.conv = bn_relu_conv(width, out, 3)
        self.out_channels = out

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.reduce(x))


class LadderUp(nn.Module):
    """One ladder step: bilinear upsampling of the coarse map to the skip's size, BN-ReLU-1x1 projection
    of the skip, concatenation, and a single BN-ReLU-3x3 blend. [B, c, h, w] + [B, s, 2h, 2w] -> [B, out, 2h, 2w]."""

    def __init__(self, coarse_channels: int, skip_channels: int, skip_width: int = 128, out: int = 128) -> None:
        super().__init__()
        self.skip = bn_relu_conv(skip_channels, skip_width, 1)
        self.blend = bn_relu_conv(coarse_channels + skip_width, out, 3)
        self.out_channels = out

    def forward(self, coarse: Tensor, skip: Tensor) -> Tensor:
        up = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.blend(torch.cat([up, self.skip(skip)], dim=1))


class DenseNetTrunk(nn.Module):
    """torchvision DenseNet `features` without norm5, returning the four dense-block outputs.

    With `dilated=True` the pooling of transitions 2 and 3 is removed and the 3x3 convolutions of DB3 and
    DB4 get dilation 2 and 4, so DB3 and DB4 stay at stride 8 with the receptive field of the original.
    forward: [B, 3, H, W] -> [DB1 (H/4), DB2 (H/8), DB3 (H/16 or H/8), DB4 (H/32 or H/8)].
    """

    def __init__(self, features: Any, dilated: bool = False) -> None:  # torchvision's DenseNet `features`
        super().__init__()
        self.stem = nn.Sequential(features.conv0, features.norm0, features.relu0, features.pool0)
        self.blocks = nn.ModuleList(
            [features.denseblock1, features.denseblock2, features.denseblock3, features.denseblock4]
        )
        self.transitions = nn.ModuleList([features.transition1, features.transition2, features.transition3])
        if dilated:
            for transition in self.transitions[1:]:
                transition.pool = nn.Identity()
            for block, rate in ((self.blocks[2], 2), (self.blocks[3], 4)):
                layer: Any
                for layer in block.children():
                    layer.conv2.dilation = (rate, rate)
                    layer.conv2.padding = (rate, rate)
        self.channels = [self._block_out(b) for b in self.blocks]

    @staticmethod
    def _block_out(block: nn.Module) -> int:
        layers: list[Any] = list(block.children())
        return layers[0].norm1.num_features + len(layers) * layers[0].conv2.out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            outs.append(x)
            if i < 3:
                x = self.transitions[i](x)
        return outs


class LadderDenseNet(MultiTaskModel):
    """Segmentation-only model of DESIGN.md §4.

    forward(images: list[Tensor[3, H, W] float 0..1], targets with `semantic` [H, W] int64, 255 = ignore)
    train -> {"loss_seg": 0.7 * CE(main), "loss_seg_aux": 0.3 * CE(context)} (no aux for densenet32x)
    eval  -> [{"sem_seg": [C, H, W] softmax scores in the original frame}]
    `network(batch [B, 3, h, w])` -> {"logits": [B, C, h/s, w/s], "aux": [B, C, h/sa, w/sa]} with
    s = `output_stride` (4, or 32 for densenet32x) and sa = `aux_stride` (32 ladder, 8 dilated8x).
    """

    def __init__(
        self,
        trunk: DenseNetTrunk,
        num_seg_classes: int,
        variant: str,
        input_size: tuple[int, int],
        context_width: int = 512,
        context_out: int = 128,
        skip_width: int = 128,
        up_width: int = 128,
        aux_weight: float = 0.3,
    ) -> None:
        super().__init__(input_size)
        self.variant = variant
        self.trunk = trunk
        self.aux_weight = aux_weight
        ch = trunk.channels
        self.context: nn.Module | None = None
        self.ups = nn.ModuleList()
        self.aux_head: nn.Module | None = None
        if variant == "densenet32x":
            head_in = ch[3]
            self.output_stride, self.aux_stride = 32, None
        else:
            self.context = ContextBlock(ch[3], context_width, context_out)
            skips = [ch[2], ch[1], ch[0]] if variant == "ladder" else [ch[0]]
            c = context_out
            for s in skips:
                self.ups.append(LadderUp(c, s, skip_width, up_width))
                c = up_width
            head_in = c
            self.aux_head = bn_relu_conv(context_out, num_seg_classes, 1)
            self.output_stride, self.aux_stride = 4, (32 if variant == "ladder" else 8)
        self.head = bn_relu_conv(head_in, num_seg_classes, 1)

    def network(self, batch: Tensor) -> dict[str, Tensor]:
        db1, db2, db3, db4 = self.trunk(batch)
        if self.context is None or self.aux_head is None:
            return {"logits": self.head(db4)}
        x = ctx = self.context(db4)
        skips = [db3, db2, db1] if self.variant == "ladder" else [db1]
        for up, skip in zip(self.ups, skips, strict=True):
            x = up(x, skip)
        return {"logits": self.head(x), "aux": self.aux_head(ctx)}

    def loss(self, raw: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        semantic = torch.stack([t["semantic"] for t in targets]).long()
        if "aux" not in raw:
            return {"loss_seg": seg_cross_entropy(raw["logits"], semantic)}
        return {
            "loss_seg": (1.0 - self.aux_weight) * seg_cross_entropy(raw["logits"], semantic),
            "loss_seg_aux": self.aux_weight * seg_cross_entropy(raw["aux"], semantic),
        }

    def postprocess(self, raw: dict[str, Tensor], original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        return [
            {"sem_seg": semantic_to_original(logits, size)}
            for logits, size in zip(raw["logits"], original_sizes, strict=True)
        ]


def seg_cross_entropy(logits: Tensor, semantic: Tensor) -> Tensor:
    """Cross-entropy of logits [B, C, h, w] upsampled bilinearly to the target's size [B, H, W] (255 =
    ignore), averaged over labelled pixels; a batch without labelled pixels gives a zero that still
    carries a graph (mean over nothing would be NaN)."""
    logits = F.interpolate(logits, size=semantic.shape[-2:], mode="bilinear", align_corners=False)
    if not (semantic != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, semantic, ignore_index=IGNORE_INDEX)


# torchvision's published DenseNet files name dense-layer parameters "norm.1"/"conv.2"; the modules
# call them "norm1"/"conv2" (torchvision's own densenet121() renames them the same way on load).
_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _rename_old_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        m = _OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def build_ladder_densenet(
    num_seg_classes: int = 19,
    variant: str = "ladder",
    backbone: str = "densenet121",
    pretrained_backbone: bool | str = False,
    input_size: int | Sequence[int] = (448, 1024),
    aux_weight: float = 0.3,
    growth_rate: int | None = None,
    block_config: Sequence[int] | None = None,
    num_init_features: int | None = None,
    context_width: int = 512,
    context_out: int = 128,
    skip_width: int = 128,
    up_width: int = 128,
    memory_efficient: bool = False,
) -> LadderDenseNet:
    """Ladder-style DenseNet (`variant="ladder"`, LadderDenseNet 4x) or a Table 1 baseline
    (`"densenet32x"`, `"dilated8x"` = Dilated 8x DenseNet 4x).

    input_size: (H, W) the network sees (the paper: 1024x448 images, i.e. (448, 1024)); multiples of 32
    keep every skip exactly twice its coarser neighbour. backbone: "densenet121" | "densenet169";
    growth_rate / block_config / num_init_features override its shape (the tiny configuration, e.g.
    8, (2, 2, 2, 2), 16), which rules out ImageNet weights. pretrained_backbone: False, True
    (torchvision ImageNet weights) or a local .pth path. aux_weight: weight of the auxiliary loss on the
    context output, the main loss getting 1 - aux_weight (0.3 / 0.7 from the authors' code).
    Widths (context 1x1 512, context 3x3 128, skip 1x1 128, blend 3x3 128) follow MODELS.md §3;
    the dilation rates 2 and 4 of dilated8x and the BN-ReLU-1x1 classifier are inferred.
    memory_efficient: torchvision's checkpointed dense layers (less training memory, slower).
    """
    if variant not in VARIANTS:
        raise UserError(f"unknown ladder_densenet variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if backbone not in _DENSENETS:
        raise UserError(f"unknown ladder_densenet backbone {backbone!r}; valid: {', '.join(_DENSENETS)}")
    if num_seg_classes < 1:
        raise UserError(f"num_seg_classes must be at least 1, got {num_seg_classes}")
    growth, blocks, init, weights = _DENSENETS[backbone]
    custom = growth_rate is not None or block_config is not None or num_init_features is not None
    if custom and pretrained_backbone not in (False, None, ""):
        raise UserError(
            "pretrained_backbone needs the standard backbone shape — drop growth_rate/block_config/num_init_features"
        )
    if block_config is not None and len(block_config) != 4:
        raise UserError(f"block_config needs four dense blocks, got {list(block_config)}")
    net = DenseNet(
        growth_rate=growth_rate or growth,
        block_config=tuple(block_config or blocks),
        num_init_features=num_init_features or init,
        memory_efficient=memory_efficient,
    )
    load_pretrained(net, pretrained_backbone, weights, rename=_rename_old_keys)
    trunk = DenseNetTrunk(net.features, dilated=variant == "dilated8x")
    size = (input_size, input_size) if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))
    return LadderDenseNet(
        trunk,
        num_seg_classes,
        variant,
        size,
        context_width=context_width,
        context_out=context_out,
        skip_width=skip_width,
        up_width=up_width,
        aux_weight=aux_weight,
    )
