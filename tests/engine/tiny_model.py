"""A tiny multi-task model that follows the DESIGN.md §4 contract, and the recipe the engine tests use.

Used by the engine tests: a few hundred parameters, 32x32 network input, so a training iteration
takes milliseconds on one CPU core. It has no BatchNorm, so a 2-process DDP run on the same global
batch matches a single-process run without SyncBatchNorm.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlcli.models import MODELS
from mtlcli.models.base import MultiTaskModel, semantic_to_original
from mtlcli.recipes import load_recipe

REGISTRY_NAME = "tiny_test"
REGISTRY_ENTRY = "tests.engine.tiny_model:build_tiny"


class TinyMultiTask(MultiTaskModel):
    """backbone (two 3x3 convs) -> seg head (per-pixel classes) + det head (which classes are present).

    Train: {"loss_det": BCE of image-level class presence, "loss_seg": CE over non-ignored pixels}.
    Eval: per image a whole-image box per class scored by presence, and sem_seg [C, H, W] scores.
    """

    def __init__(
        self,
        num_det_classes: int,
        num_seg_classes: int,
        input_size: int,
        width: int,
        dropout: float,
        fail_at: int = 0,
        failure: str = "",
    ):
        super().__init__(input_size)
        # Failure injection for the engine tests: on the fail_at-th training forward (1-based), "nan"
        # returns a NaN loss, "interrupt" raises KeyboardInterrupt (Ctrl-C), "oom" raises OutOfMemoryError.
        self.fail_at, self.failure, self.calls = fail_at, failure, 0
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
        )
        self.dropout = nn.Dropout2d(dropout)
        self.seg_head = nn.Conv2d(width, num_seg_classes, 1)
        self.det_head = nn.Linear(width, num_det_classes)

    def network(self, batch: Tensor) -> dict[str, Tensor]:
        f = self.dropout(self.backbone(batch))
        return {"seg": self.seg_head(f), "cls": self.det_head(f.mean((2, 3)))}

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training:
            self.calls += 1
            if self.calls == self.fail_at and self.failure == "interrupt":
                raise KeyboardInterrupt
            if self.calls == self.fail_at and self.failure == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out = super().forward(images, targets)
        if self.training and self.calls == self.fail_at and self.failure == "nan":
            out["loss_det"] = out["loss_det"] * float("nan")
        return out

    def loss(self, raw: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        seg = F.interpolate(raw["seg"], size=self.input_size, mode="bilinear", align_corners=False)
        semantic = torch.stack([t["semantic"].as_subclass(Tensor) for t in targets])
        # Per-image mean over labelled pixels (an all-ignore image gives 0, not NaN), then the mean over
        # images: so the loss of a batch is the mean of its halves' losses, as accumulation and DDP assume.
        ce = F.cross_entropy(seg, semantic, ignore_index=255, reduction="none").sum((1, 2))
        loss_seg = (ce / (semantic != 255).sum((1, 2)).clamp(min=1)).mean()
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
            out.append(
                {
                    "boxes": torch.tensor([[0.0, 0.0, w, h]]).repeat(k, 1),
                    "scores": scores[i],
                    "labels": torch.arange(1, k + 1),
                    "sem_seg": semantic_to_original(raw["seg"][i], (h, w)),
                }
            )
        return out


def build_tiny(
    num_det_classes: int = 2,
    num_seg_classes: int = 3,
    input_size: int = 32,
    width: int = 8,
    dropout: float = 0.0,
    fail_at: int = 0,
    failure: str = "",
) -> TinyMultiTask:
    return TinyMultiTask(num_det_classes, num_seg_classes, input_size, width, dropout, fail_at, failure)


TINY_RECIPE = """
[model]
name = "tiny_test"

[data]
dataset = "synthetic"

[train]
optimizer = "sgd"
lr = 0.05
momentum = 0.9
weight_decay = 0.0001
schedule = "multistep"
steps = [1000]
iterations = 8
batch_size = 4
workers = 0
log_interval = 1
checkpoint_interval = 4

[eval]
metrics = []
"""


@pytest.fixture
def tiny_registered(monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny model in the registry for one test (name "tiny_test")."""
    monkeypatch.setitem(MODELS, REGISTRY_NAME, REGISTRY_ENTRY)
    return REGISTRY_NAME


def write_recipe(folder: Path, text: str = TINY_RECIPE, name: str = "tiny.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def tiny_recipe(folder: Path, data_root: Path, *overrides: str) -> dict:
    """The tiny recipe read through the real loader, pointed at `data_root`, with `--set` overrides."""
    return load_recipe(write_recipe(folder), [f"data.root={data_root}", *overrides])


def train_losses(run_dir: Path) -> list[dict]:
    """The logged training steps of a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "train"]
