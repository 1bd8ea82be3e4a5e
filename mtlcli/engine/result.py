"""What a model predicted for one image, as the engine and the Python API hand it out: `Result` and
`output_to_result` (a model's eval output -> Result). `mtlcli.api` re-exports both (STYLE.md 13: a type
shared by two layers lives in the lower one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


@dataclasses.dataclass
class Result:
    """One image's predictions (detections with score >= the threshold), on the CPU.

    boxes [N, 4] float32 xyxy pixels; scores [N]; labels [N] int64 1..K; class_names [N] str;
    masks [N, H, W] bool or None; semantic [H, W] int64 indices into `seg_classes` or None;
    size (H, W) of the image; source: the file it came from, if any.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    masks: torch.Tensor | None
    semantic: torch.Tensor | None
    size: tuple[int, int]
    seg_classes: list[str]
    source: str | None = None
    # (ids [H, W] int32 numpy, 0 = void; segments_info [{id, category_id, isthing, ...}]) from the
    # panoptic merge (mtlcli/ops/panoptic.py, docs/panoptic.md); None for a model with neither a
    # semantic map nor instance masks
    panoptic: tuple[np.ndarray, list[dict[str, Any]]] | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to_coco(
        self, image_id: int, category_ids: Sequence[int] | None = None, with_masks: bool = True
    ) -> list[dict[str, Any]]:
        """COCO results [{image_id, category_id, category_name, bbox [x, y, w, h], score, segmentation?}];
        `category_ids[k - 1]` is the id written for label k (default: k)."""
        rles = None
        if with_masks and self.masks is not None and len(self):
            from pycocotools import mask as mask_utils

            rles = mask_utils.encode(np.asfortranarray(self.masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
        out = []
        for k, ((x1, y1, x2, y2), score, label) in enumerate(
            zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), strict=True)
        ):
            cat = category_ids[label - 1] if category_ids is not None and 1 <= label <= len(category_ids) else label
            r = {
                "image_id": image_id,
                "category_id": int(cat),
                "category_name": self.class_names[k],
                # unrounded: what `mtl eval` scores, so that saved predictions score the same
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": score,
            }
            if rles is not None:
                r["segmentation"] = {
                    "size": [int(s) for s in rles[k]["size"]],
                    "counts": rles[k]["counts"].decode("ascii"),
                }
            out.append(r)
        return out


def output_to_result(
    output: dict[str, torch.Tensor],
    class_names: Sequence[str],
    seg_classes: Sequence[str],
    size: Sequence[int],  # (H, W)
    score_threshold: float,
    source: str | None = None,
) -> Result:
    """A model's eval output for one image (DESIGN.md §4) as a Result on the CPU."""
    if "boxes" in output:
        keep = output["scores"].detach() >= score_threshold
        boxes = output["boxes"].detach()[keep].float().cpu()
        scores = output["scores"].detach()[keep].float().cpu()
        labels = output["labels"].detach()[keep].long().cpu()
        masks = output["masks"].detach()[keep][:, 0].cpu() > 0.5 if "masks" in output else None
    else:
        boxes, scores, labels, masks = torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long), None
    names = [class_names[k - 1] if 1 <= k <= len(class_names) else f"class {k}" for k in labels.tolist()]
    semantic = output["sem_seg"].detach().argmax(0).cpu() if "sem_seg" in output else None
    return Result(boxes, scores, labels, names, masks, semantic, (size[0], size[1]), list(seg_classes), source)
