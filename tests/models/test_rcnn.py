"""Two-stage baselines (Faster / Mask R-CNN) and the adapter to the DESIGN.md §4 contract, tiny configuration."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision import tv_tensors

from mtlcli.errors import UserError
from mtlcli.models import build_model
from mtlcli.models.rcnn import TINY, boxes_to_masks, build_fasterrcnn, build_maskrcnn

RPN_ROI_LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def scene(h: int = 96, w: int = 120, crowd: bool = True):
    """One image with two coloured rectangles (classes 1 and 2) and optionally a crowd region, with
    targets as PreparedDataset gives them (tv_tensors, uint8 masks, iscrowd)."""
    g = torch.Generator().manual_seed(0)
    img = 0.1 * torch.rand(3, h, w, generator=g)
    boxes = [[10, 12, 50, 60], [60, 30, 110, 80]] + ([[0, 0, 20, 10]] if crowd else [])
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = 1
        img[i % 3, y0:y1, x0:x1] = 0.9
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY", canvas_size=(h, w)),
        "labels": torch.tensor([1, 2, 1][: len(boxes)]),
        "masks": tv_tensors.Mask(masks),
        "iscrowd": torch.tensor([0, 0, 1][: len(boxes)]),
    }
    return tv_tensors.Image(img), target


def empty(h: int = 80, w: int = 100):
    return torch.rand(3, h, w), {
        "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, h, w, dtype=torch.uint8), "iscrowd": torch.zeros(0, dtype=torch.int64),
    }  # fmt: skip


def tiny(builder=build_maskrcnn, **kw):
    torch.manual_seed(0)
    return builder(num_det_classes=2, **{**TINY, **kw})


@pytest.mark.parametrize("builder,masks", [(build_maskrcnn, True), (build_fasterrcnn, False)])
def test_train_step_losses_and_backbone_gradients(builder, masks):
    model = tiny(builder).train()
    (img, tgt), (img2, tgt2) = scene(), empty()
    losses = model([img, img2], [tgt, tgt2])
    assert set(losses) == RPN_ROI_LOSSES | ({"loss_mask"} if masks else set())
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    conv1 = model.backbone.body.conv1.weight.grad
    assert conv1 is not None and conv1.abs().sum() > 0


@pytest.mark.parametrize("builder,masks", [(build_maskrcnn, True), (build_fasterrcnn, False)])
def test_eval_outputs_in_original_frame(builder, masks):
    model = tiny(builder, box_score_thresh=0.0).eval()
    images = [torch.rand(3, 90, 70), torch.rand(3, 50, 130)]
    with torch.no_grad():
        out = model(images)
    for o, img in zip(out, images, strict=True):
        h, w = img.shape[-2:]
        n = len(o["boxes"])
        assert n > 0 and o["boxes"].shape == (n, 4) and o["scores"].shape == (n,)
        assert o["labels"].dtype == torch.int64 and set(o["labels"].tolist()) <= {1, 2}
        assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all() and (o["boxes"] >= 0).all()
        assert (o["proposals"][:, 2] <= w).all() and (o["proposals"][:, 3] <= h).all()
        assert o["proposals"].shape == (TINY["rpn_post_nms_top_n_test"], 4)
        if masks:
            assert o["masks"].shape == (n, 1, h, w)
            assert o["masks"].min() >= 0 and o["masks"].max() <= 1
        else:
            assert "masks" not in o


def test_training_on_images_without_objects_or_only_crowd():
    model = tiny().train()
    (img, tgt), (img2, tgt2) = scene(), empty()
    only_crowd = {k: v[2:] for k, v in tgt.items()}  # the crowd region alone
    losses = model([img2, img], [tgt2, only_crowd])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_mask"].item() == 0.0  # nothing to regress


def test_crowd_and_degenerate_boxes_are_not_matched():
    model = tiny().train()
    img, tgt = scene()
    tgt["boxes"] = torch.cat([tgt["boxes"], torch.tensor([[30.0, 30, 30, 50]])])  # zero width
    tgt["labels"] = torch.cat([tgt["labels"], torch.tensor([2])])
    tgt["masks"] = torch.cat([tgt["masks"], torch.zeros(1, 96, 120, dtype=torch.uint8)])
    tgt["iscrowd"] = torch.cat([tgt["iscrowd"], torch.tensor([0])])
    batch, targets, sizes = model.preprocess([img], [tgt])
    assert sizes == [(96, 120)]
    scale = batch.image_sizes[0][0] / 96
    assert targets[0]["labels"].tolist() == [1, 2]
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[10.0, 12, 50, 60], [60, 30, 110, 80]]) * scale)
    assert targets[0]["masks"].shape == (2, *batch.image_sizes[0])


def test_mask_head_without_masks_needs_boxes_as_masks():
    img, tgt = scene(crowd=False)
    del tgt["masks"]
    with pytest.raises(UserError, match="boxes_as_masks"):
        tiny().train()([img], [tgt])
    losses = tiny(boxes_as_masks=True).train()([img], [tgt])
    assert torch.isfinite(losses["loss_mask"])
    # Faster R-CNN never needs masks
    assert "loss_mask" not in tiny(build_fasterrcnn).train()([img], [tgt])


def test_boxes_to_masks_fills_pixels_inside_the_box():
    masks = boxes_to_masks(torch.tensor([[1.0, 2.0, 4.0, 3.0]]), (5, 6))
    expected = torch.zeros(1, 5, 6, dtype=torch.uint8)
    expected[0, 2:3, 1:4] = 1  # pixel centres 1.5..3.5 in x, 2.5 in y
    assert torch.equal(masks, expected)


def test_multiscale_training_evaluates_at_the_test_scale():
    model = tiny(min_size=(64, 96), max_size=400, test_min_size=80, test_max_size=400)
    img = torch.rand(3, 50, 100)
    model.eval()
    batch, _, _ = model.preprocess([img])
    assert batch.image_sizes[0] == (80, 160)
    model.train()
    seen = {model.preprocess([img], [empty(50, 100)[1]])[0].image_sizes[0][0] for _ in range(20)}
    assert seen == {64, 96}


def test_registry_and_bad_backbone():
    model = build_model("fasterrcnn", num_det_classes=3, **TINY)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    with pytest.raises(UserError, match="backbone"):
        build_maskrcnn(backbone="vgg16")
    with pytest.raises(UserError, match="num_det_classes"):
        build_maskrcnn(num_det_classes=0)


def test_full_maskrcnn_matches_torchvision_parameter_count():
    """The R50-FPN baseline has the paper's 44.4M parameters (within 10%), the same as torchvision's."""
    with torch.device("meta"):
        ours = build_maskrcnn(num_det_classes=80)
        theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    assert abs(count / 44.4e6 - 1) < 0.10


def test_local_imagenet_weights_load_into_a_frozen_trunk(tmp_path):
    torch.manual_seed(1)
    weights = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    model = tiny(pretrained_backbone=str(path))
    body = model.backbone.body
    torch.testing.assert_close(body.layer3[0].conv1.weight, weights["layer3.0.conv1.weight"])
    torch.testing.assert_close(body.bn1.running_var, weights["bn1.running_var"])
    assert isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)
    # as torchvision's detection builders: stem and layer1 frozen, layer2..4 trained
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad
    with pytest.raises(UserError, match="does not exist"):
        tiny(pretrained_backbone=str(tmp_path / "missing.pth"))


def test_same_weights_give_torchvisions_maskrcnn_outputs():
    """The adapter changes nothing in inference: torchvision's MaskRCNN class assembled from copies of
    our modules returns the same boxes, scores, labels and masks as our model (which adds proposals)."""
    import copy

    from torchvision.models.detection import MaskRCNN

    ours = tiny(box_score_thresh=0.0).eval()
    rh = copy.deepcopy(ours.roi_heads)
    theirs = MaskRCNN(
        copy.deepcopy(ours.backbone), num_classes=None, min_size=TINY["min_size"], max_size=TINY["max_size"],
        rpn_anchor_generator=copy.deepcopy(ours.rpn.anchor_generator), rpn_head=copy.deepcopy(ours.rpn.head),
        rpn_pre_nms_top_n_test=TINY["rpn_pre_nms_top_n_test"], rpn_post_nms_top_n_test=TINY["rpn_post_nms_top_n_test"],
        box_roi_pool=rh.box_roi_pool, box_head=rh.box_head, box_predictor=rh.box_predictor, box_score_thresh=0.0,
        mask_roi_pool=rh.mask_roi_pool, mask_head=rh.mask_head, mask_predictor=rh.mask_predictor,
    ).eval()  # fmt: skip
    images = [torch.rand(3, 90, 70), torch.rand(3, 50, 130)]
    with torch.no_grad():
        mine, ref = ours(images), theirs(images)
    for a, b in zip(mine, ref, strict=True):
        assert set(a) == set(b) | {"proposals"}
        for key in b:
            torch.testing.assert_close(a[key], b[key])
