"""The training data path: only the targets a loss reads are decoded, masks decode over their columns
only, compact samples carry the same pixels as uint8, and the fused SSD crop keeps v2's contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.transforms import v2

from mtlcli.data.dataset import PreparedDataset, check_targets, decode_rle_into, loss_targets
from mtlcli.data.transforms import build_transforms, iou_crop_params
from mtlcli.errors import UserError
from tests.data.test_dataset import build_tiny_prepared


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_prepared(tmp_path_factory.mktemp("tiny"))


def test_rle_decode_matches_pycocotools():
    rng = np.random.default_rng(0)
    for trial in range(150):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if trial % 5 == 0:  # one blob, the usual instance
            mask[:] = 0
            mask[h // 4 : h // 2 + 1, w // 3 : w // 2 + 1] = 1
        if trial % 11 == 0:
            mask[:] = trial % 2
        rle = mask_utils.encode(np.asfortranarray(mask))
        out = np.zeros((h, w), dtype=np.uint8)
        decode_rle_into(rle["counts"], out)
        assert (out == mask_utils.decode(rle)).all(), trial


def test_targets_decide_what_is_decoded(tiny):
    full = PreparedDataset(tiny, "train")
    seg_only = PreparedDataset(tiny, "train", targets=["semantic"])
    boxes_only = PreparedDataset(tiny, "train", targets=[])
    image, t = full[0]
    _, s = seg_only[0]
    _, b = boxes_only[0]
    assert {"masks", "semantic", "dt"} <= set(t)
    assert "masks" not in s and "dt" not in s and torch.equal(s["semantic"], t["semantic"])
    assert not {"masks", "semantic", "dt"} & set(b)
    for key in ("boxes", "labels", "iscrowd"):  # always there: they cost nothing
        assert torch.equal(b[key], t[key])
    with pytest.raises(UserError, match="unknown target"):
        check_targets(["mask"])


def test_compact_samples_hold_the_same_pixels_as_uint8(tiny):
    tf = build_transforms("cityscapes", True, crop_size=[24, 32], scale_range=[0.8, 1.5], min_size=40)
    plain = PreparedDataset(tiny, "train", transforms=tf)
    compact = PreparedDataset(tiny, "train", transforms=tf, compact=True)
    for seed in range(3):
        torch.manual_seed(seed)
        image, t = plain[0]
        torch.manual_seed(seed)
        image8, t8 = compact[0]
        assert (
            image.dtype == torch.float32 and image8.dtype == torch.uint8 and image8.shape == image.shape == (3, 24, 32)
        )
        assert torch.allclose(image8.float() / 255, image, atol=1 / 255 + 1e-6)
        assert t8["semantic"].dtype == torch.uint8 and t["semantic"].dtype == torch.int64
        assert torch.equal(t8["semantic"].long(), t["semantic"]) and torch.equal(t8["dt"].long(), t["dt"])
        assert torch.equal(t8["boxes"], t["boxes"])


def test_iou_crop_params_keep_v2_contract():
    torch.manual_seed(0)
    iou = v2.RandomIoUCrop()
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[10.0, 10, 60, 50], [100, 20, 140, 90], [5, 70, 30, 95]]), format="XYXY", canvas_size=(100, 160)
    )
    crops = 0
    for _ in range(30):
        p = iou_crop_params(iou, boxes)
        if not p:  # the "keep the image" option
            continue
        crops += 1
        top, left, h, w = p["top"], p["left"], p["height"], p["width"]
        assert 0 <= top and 0 <= left and top + h <= 100 and left + w <= 160 and 0.5 <= w / h <= 2.0
        assert 0.3 * 100 - 1 <= h and 0.3 * 160 - 1 <= w
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (left < cx) & (cx < left + w) & (top < cy) & (cy < top + h)
        assert torch.equal(p["is_within_crop_area"], inside) and inside.any()
    assert crops > 12


def test_ssd_geometry_keeps_every_box_inside_its_output(tiny):
    tf = build_transforms("ssd", True, min_size=48, zoom_out=3.0)
    ds = PreparedDataset(tiny, "train", transforms=tf, compact=True)
    for seed in range(12):
        torch.manual_seed(seed)
        image, t = ds[0]
        assert image.shape == (3, 48, 48) and image.dtype == torch.uint8
        boxes = t["boxes"]
        assert boxes.canvas_size == (48, 48) and len(boxes) == len(t["labels"]) == len(t["masks"])
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 48).all()


def _tiny_model(name: str, **overrides):
    from mtlcli.models import build_from_recipe
    from mtlcli.recipes import load_recipe

    table = {**load_recipe(name)["model"], **overrides}
    try:
        with torch.device("meta"):  # no weights needed to read the heads
            return build_from_recipe(table, load_weights=False)
    except RuntimeError:  # a builder that computes with real tensors (anchors)
        return build_from_recipe(table, load_weights=False)


@pytest.mark.parametrize(
    "recipe, overrides, expected",
    [
        ("ladderdensenet-tiny-synthetic", {}, {"semantic"}),
        ("imtl-tiny-synthetic", {}, {"semantic"}),
        ("ivanet-tiny-synthetic", {}, {"semantic"}),
        ("ivanet-tiny-synthetic", {"seg_head": False}, set()),
        ("safpn-ejhead-tiny-synthetic", {}, {"masks"}),
        ("safpn-ejhead-tiny-synthetic", {"boxes_as_masks": True}, set()),
        ("datnet-tiny-synthetic", {}, {"masks", "dt", "semantic"}),
        ("datnet-tiny-synthetic", {"seg_weight": 0.0}, {"masks", "dt"}),
    ],
)
def test_loss_targets_follow_the_heads(recipe, overrides, expected):
    assert loss_targets(_tiny_model(recipe, **overrides)) == expected
