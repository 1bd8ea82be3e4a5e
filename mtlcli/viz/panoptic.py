"""The panoptic overlay of `mtl viz predictions --panoptic` (docs/panoptic.md).

Stuff segments in their class colour; each thing segment in its class colour made lighter or darker by
its place among the segments, so that two touching cars read as two; segment borders in white; void
(id 0) shows the image. Drawn with torchvision's `draw_segmentation_masks` over the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mtlcli.viz.draw import enlarge, to_uint8


def segment_colors(
    segments: Sequence[dict[str, Any]], class_of: dict[int, int], palette: Sequence[Sequence[int]]
) -> list[tuple[int, int, int]]:
    """One RGB colour per segment of COCO segments_info (`class_of`: category id -> palette index)."""
    out: list[tuple[int, int, int]] = []
    for k, s in enumerate(segments):
        base = np.asarray(palette[class_of[s["category_id"]] % len(palette)], np.float64)
        if s.get("isthing", False) or s.get("score") is not None:
            shift = ((k * 7) % 5 - 2) * 0.18  # -0.36 .. 0.36: lighter or darker by place
            base = base + (255 - base) * shift if shift > 0 else base * (1 + shift)
        r, g, b = (int(v) for v in np.clip(base, 0, 255))
        out.append((r, g, b))
    return out


def draw_panoptic(
    image: torch.Tensor,
    ids: np.ndarray,
    segments: Sequence[dict[str, Any]],
    class_of: dict[int, int],
    palette: Sequence[Sequence[int]],
    alpha: float = 0.6,
    scale: int = 1,
) -> torch.Tensor:
    """uint8 [3, scale H, scale W]: the image [3, H, W] with its panoptic segmentation (ids [H, W], 0 = void;
    segments_info with category ids) blended with `alpha`, segment borders white."""
    from torchvision.utils import draw_segmentation_masks

    panel = enlarge(to_uint8(image), scale)
    ids_t = enlarge(torch.from_numpy(np.asarray(ids, np.int64)), scale)
    if not len(segments):
        return panel
    masks = torch.stack([ids_t == int(s["id"]) for s in segments])
    panel = draw_segmentation_masks(panel, masks, alpha=alpha, colors=segment_colors(segments, class_of, palette))
    border = torch.zeros_like(ids_t, dtype=torch.bool)
    border[:, 1:] |= ids_t[:, 1:] != ids_t[:, :-1]
    border[1:, :] |= ids_t[1:, :] != ids_t[:-1, :]
    return draw_segmentation_masks(panel, border[None], alpha=1.0, colors=[(255, 255, 255)])
