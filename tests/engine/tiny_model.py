"""A tiny multi-task model that follows the DESIGN.md §4 contract, and a tiny prepared dataset.

Used by the engine tests: a few hundred parameters, 32x32 network input, so a training iteration
takes milliseconds on one CPU core. It has no BatchNorm, so a 2-process DDP run on the same global
batch matches a single-process run without SyncBatchNorm.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mtlcli.data.prepared import DatasetMeta, encode_instance, save_png, semantic_path
from mtlcli.models.base import MultiTaskModel, semantic_to_original

REGISTRY_NAME = "tiny_test"
REGISTRY_ENTRY = "tests.engine.tiny_model:build_tiny"


class TinyMultiTask(MultiTaskModel):
    """backbone (two 3x3 convs) -> seg head (per-pixel classes) + det head (which classes are present).

    Train: {"loss_det": BCE of image-level class presence, "loss_seg": CE over non-ignored pixels}.
    Eval: per image a whole-image box per class scored by presence, and sem_seg [C, H, W] scores.
    """

    def __init__(self, num_det_classes: int, num_seg_classes: int, input_size: int, width: int, dropout: float):
        super().__init__(input_size)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
        )
        self.dropout = nn.Dropout2d(dropout)
        self.seg_head = nn.Conv2d(width, num_seg_classes, 1)
        self.det_head = nn.Linear(width, num_det_classes)

    def network(self, batch: Tensor) -> dict[str, Tensor]:
        f = self.dropout(self.backbone(batch))
        return {"seg": self.seg_head(f), "cls": self.det_head(f.mean((2, 3)))}

    def loss(self, raw: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        seg = F.interpolate(raw["seg"], size=self.input_size, mode="bilinear", align_corners=False)
        semantic = torch.stack([t["semantic"].as_subclass(Tensor) for t in targets])
        # Sum / count rather than mean: an all-ignore image must not make the loss NaN.
        ce = F.cross_entropy(seg, semantic, ignore_index=255, reduction="sum")
        loss_seg = ce / (semantic != 255).sum().clamp(min=1)
        present = torch.zeros_like(raw["cls"])
        for i, t in enumerate(targets):
            labels = t["labels"][t["iscrowd"] == 0] if "iscrowd" in t else t["labels"]
            present[i, labels - 1] = 1.0
        loss_det = F.binary_cross_entropy_with_logits(raw["cls"], present)
        return {"loss_det": loss_det, "loss_seg": loss_seg}

    def postprocess(self, raw: dict[str, Tensor], original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        out = []
        scores = raw["cls"].sigmoid()
        for i, (h, w) in enumerate(original_sizes):
            k = scores.shape[1]
            out.append({
                "boxes": torch.tensor([[0.0, 0.0, w, h]]).repeat(k, 1),
                "scores": scores[i],
                "labels": torch.arange(1, k + 1),
                "sem_seg": semantic_to_original(raw["seg"][i], (h, w)),
            })
        return out


def build_tiny(num_det_classes: int = 2, num_seg_classes: int = 3, input_size: int = 32, width: int = 8,
               dropout: float = 0.0) -> TinyMultiTask:
    return TinyMultiTask(num_det_classes, num_seg_classes, input_size, width, dropout)


def make_prepared(root: Path, n_train: int = 8, n_val: int = 2, size: tuple[int, int] = (32, 48), seed: int = 0) -> Path:
    """A prepared dataset (DESIGN.md §3) of flat-colour scenes: sky/road halves and one box object.

    Classes: det ["car", "person"]; seg ["road", "sky", "car"] (person pixels are ignore = 255).
    Images are PNGs under root/source; the rest follows the prepared format exactly.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    source = root / "source"
    meta = DatasetMeta(name="tiny", source=str(source.resolve()), splits=["train", "val"],
                       det_classes=["car", "person"], seg_classes=["road", "sky", "car"],
                       palette=[[128, 64, 128], [70, 130, 180], [0, 0, 142]])
    for split, n in (("train", n_train), ("val", n_val)):
        images, annotations = [], []
        for i in range(n):
            stem = f"{split}_{i:03d}"
            sem = np.zeros((h, w), np.uint8)
            sem[: h // 2] = 1
            img = np.zeros((h, w, 3), np.uint8)
            img[: h // 2] = (70, 130, 180)
            img[h // 2:] = (128, 64, 128)
            cls = int(rng.integers(1, 3))
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            mask = np.zeros((h, w), bool)
            mask[y0:y0 + h // 3, x0:x0 + w // 4] = True
            img[mask] = (0, 0, 142) if cls == 1 else (220, 20, 60)
            sem[mask] = 2 if cls == 1 else 255
            img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
            (source / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(source / split / f"{stem}.png")
            save_png(semantic_path(root, split, stem), sem)
            images.append({"id": i + 1, "file_name": f"{split}/{stem}.png", "height": h, "width": w, "stem": stem})
            annotations.append({"id": i + 1, "image_id": i + 1, **encode_instance(mask, cls)})
        categories = [{"id": k + 1, "name": c} for k, c in enumerate(meta.det_classes)]
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "instances.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    meta.save(root)
    return root
