"""What every model shares: the three named steps of the DESIGN.md §4 contract.

    model(images: list[Tensor[3, H, W] float 0..1], targets: list[dict] | None = None)
    train mode -> dict[str, Tensor] of scalar losses named loss_*, already weighted
    eval mode  -> list[dict] per image in its original pixel frame: boxes [N, 4] xyxy float,
                  scores [N], labels [N] int64 (1..K), optional masks [N, 1, H, W] float 0..1,
                  optional sem_seg [C, H, W] float scores

`MultiTaskModel.forward` is `preprocess -> network -> loss | postprocess`. Benchmarks time
`network(batch)` alone against the whole `forward`; evaluation never builds losses.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MultiTaskModel(nn.Module):
    """Base class for the single-stage families (fixed input size, resize + normalise inside).

    Subclasses implement `network(batch) -> raw`, `loss(raw, targets) -> dict` and
    `postprocess(raw, original_sizes) -> list[dict]`; two-stage families may override `forward`.
    """

    input_size: tuple[int, int]  # (H, W) the network sees
    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(self, input_size: int | tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else (input_size[0], input_size[1])
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[Tensor, list[dict[str, Tensor]] | None, list[tuple[int, int]]]:
        """Resize every image to `input_size`, normalise, stack; scale targets into that frame.

        Returns (batch [B, 3, h, w], targets in the network frame or None, original (H, W) sizes).
        """
        sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        h, w = self.input_size
        batch = torch.stack(
            [
                F.interpolate(img[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
                if tuple(img.shape[-2:]) != (h, w)
                else img.float()
                for img in images
            ]
        )
        batch = (batch - self.pixel_mean) / self.pixel_std
        if targets is not None:
            targets = [resize_target(t, size, (h, w)) for t, size in zip(targets, sizes, strict=True)]
        return batch, targets, sizes

    def network(self, batch: Tensor) -> Any:
        raise NotImplementedError

    def loss(self, raw: Any, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        raise NotImplementedError

    def postprocess(self, raw: Any, original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        raise NotImplementedError

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        batch, targets, sizes = self.preprocess(images, targets)
        raw = self.network(batch)
        if self.training and targets is not None:
            return self.loss(raw, targets)
        return self.postprocess(raw, sizes)


def resize_target(target: dict[str, Tensor], size: tuple[int, int], new_size: tuple[int, int]) -> dict[str, Tensor]:
    """Scale a target dict from an image of `size` (H, W) to `new_size`: boxes scaled, dense maps
    (semantic, dt) by nearest neighbour, instance masks by nearest neighbour."""
    if tuple(size) == tuple(new_size):
        return dict(target)
    (h, w), (nh, nw) = size, new_size
    out = dict(target)
    if "boxes" in target:
        scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32, device=target["boxes"].device)
        out["boxes"] = target["boxes"].float() * scale
    for key in ("semantic", "dt"):
        if key in target:
            out[key] = F.interpolate(target[key][None, None].float(), size=new_size, mode="nearest")[0, 0].long()
    if "masks" in target and target["masks"].numel() > 0:
        out["masks"] = F.interpolate(target["masks"][None].float(), size=new_size, mode="nearest")[0].to(torch.uint8)
    elif "masks" in target:
        out["masks"] = target["masks"].new_zeros((0, nh, nw))
    return out


def semantic_to_original(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Segmentation logits [C, h, w] -> softmax scores [C, H, W] in the original frame."""
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0].softmax(0)


def boxes_to_original(boxes: Tensor, net_size: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Boxes [N, 4] xyxy in the network frame (h, w) -> the original frame (H, W), clipped."""
    (h, w), (H, W) = net_size, size
    scale = boxes.new_tensor([W / w, H / h, W / w, H / h])
    out = boxes * scale
    out[:, 0::2] = out[:, 0::2].clamp(0, W)
    out[:, 1::2] = out[:, 1::2].clamp(0, H)
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run a block with `model` in eval mode, then give it back the mode it had (train or eval)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
