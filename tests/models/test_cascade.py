"""Cascade Mask R-CNN (mtlcli/models/cascade.py): MMDetection's stage configuration and parameter count,
the stage-to-stage flow, test-time merging of scores and masks, EJ-Head / SA-FPN plug-ins, recipes."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision import tv_tensors

from mtlcli.errors import UserError
from mtlcli.models import build_model
from mtlcli.models.cascade import TINY, CascadeRoIHeads, build_cascade
from mtlcli.recipes import load_recipe
from tests.models.training import short_run


def tiny(**kw):
    torch.manual_seed(0)
    return build_cascade(num_det_classes=2, **{**TINY, **kw})


def scene(h: int = 128, w: int = 160, objects: bool = True):
    """Two bright rectangles (classes 1, 2) and a crowd region, as PreparedDataset gives them."""
    img = 0.1 * torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    rects = [(10, 12, 60, 70), (70, 40, 150, 110), (0, 0, 20, 10)] if objects else []
    masks = torch.zeros(len(rects), h, w, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = 1
        img[i % 3, y0:y1, x0:x1] = 0.9
    return tv_tensors.Image(img), {
        "boxes": torch.tensor(rects, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([1, 2, 1][: len(rects)]),
        "masks": masks,
        "iscrowd": torch.tensor([0, 0, 1][: len(rects)]),
    }


def mmdetection_cascade_mask_rcnn_r50_fpn_params(num_classes: int = 80) -> int:
    """The parameter count of MMDetection's configs/_base_/models/cascade_mask_rcnn_r50_fpn.py, counted
    layer by layer from that config (not from our model): ResNet-50 without its fc (torchvision's, the
    same network as MMDetection's style='pytorch' ResNet), FPN (four 1x1 laterals, four 3x3 outputs, P6 by
    max-pool), RPNHead (3x3 conv, sigmoid objectness for 3 anchors, 12 deltas), three Shared2FCBBoxHead
    (fc 256*7*7 -> 1024 -> 1024, K+1 logits, 4 class-agnostic deltas) and three FCNMaskHead (four 3x3
    convs, 2x2 deconv, 1x1 conv to K masks)."""
    with torch.device("meta"):
        trunk = torchvision.models.resnet50()
    resnet = sum(p.numel() for n, p in trunk.named_parameters() if not n.startswith("fc."))

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout

    fpn = sum(conv(c, 256, 1) for c in (256, 512, 1024, 2048)) + 4 * conv(256, 256, 3)
    rpn = conv(256, 256, 3) + conv(256, 3, 1) + conv(256, 12, 1)
    box = (
        (256 * 7 * 7 * 1024 + 1024)
        + (1024 * 1024 + 1024)
        + (1024 * (num_classes + 1) + num_classes + 1)
        + (1024 * 4 + 4)
    )
    mask = 4 * conv(256, 256, 3) + (256 * 256 * 2 * 2 + 256) + conv(256, num_classes, 1)
    return resnet + fpn + rpn + 3 * (box + mask)


def count(**kw) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_cascade(**kw).parameters())


def test_full_size_parameter_count_against_mmdetection():
    ours, mmdet = count(), mmdetection_cascade_mask_rcnn_r50_fpn_params()
    assert mmdet == 77_324_606
    # the one difference: our mask predictors have K+1 channels (a background mask, as torchvision's), theirs K
    assert ours - mmdet == 3 * (256 + 1)
    # the plug-ins add what they add to Mask R-CNN, once per stage for the EJ-Head
    conv3 = 9 * 256 * 256 + 256
    assert count(ej_head=True) - ours == 3 * 3 * conv3  # per stage: BR's two convs + the strided box conv
    with torch.device("meta"):
        from mtlcli.models.safpn import build_safpn

        safpn_neck = sum(p.numel() for p in build_safpn(ej_head=False).parameters()) - sum(
            p.numel() for p in build_safpn(ej_head=False, neck="td").parameters()
        )
    assert count(neck="safpn") - ours == safpn_neck


def test_stages_as_mmdetection_configures_them():
    heads = tiny().roi_heads
    assert isinstance(heads, CascadeRoIHeads) and len(heads.stages) == 3
    assert heads.ious == [0.5, 0.6, 0.7] and heads.stage_weights == [1.0, 0.5, 0.25]
    weights = [c.weights for c in heads.coders]
    for w, stds in zip(
        weights, [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)], strict=True
    ):
        assert w == pytest.approx(tuple(1 / s for s in stds))
    for stage in heads.stages:
        assert stage.predictor.bbox_pred.out_features == 4  # class-agnostic regression
        assert stage.predictor.cls_score.out_features == 3
        assert stage.mask_head is not None  # a mask head per stage
    assert len({id(s.mask_head) for s in heads.stages}) == 3
    for kw, word in [(dict(stage_ious=[0.5, 1.2, 0.7]), "stage_ious"), (dict(stage_weights=[1, 0.5]), "as many"),
                     (dict(neck="bifpn"), "neck"), (dict(box_stds=[[0.1, 0.1, 0.2]] * 3), "box_stds")]:  # fmt: skip
        with pytest.raises(UserError, match=word):
            build_cascade(**kw)


@pytest.mark.parametrize("kw", [{}, {"ej_head": True, "neck": "safpn"}, {"masks": False}])
def test_train_step_losses_every_stage_and_gradients(kw):
    model = tiny(**kw).train()
    (img, tgt), (img2, tgt2) = scene(), scene(96, 120, objects=False)
    losses = model([img, img2], [tgt, tgt2])
    per_stage = ("classifier", "box_reg", "mask") if kw.get("masks", True) else ("classifier", "box_reg")
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"} | {
        f"loss_s{t}_{n}" for t in range(3) for n in per_stage
    }
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.roi_heads.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_each_stage_starts_from_the_previous_stages_boxes_without_added_ground_truths(monkeypatch):
    """Stage 0 regresses every RoI 0.3 of its width to the right; stage 1 then samples from exactly those
    boxes (the ground truths stage 0 had added are not among them; stage 1 adds them again itself)."""
    model = tiny().train()
    heads = model.roi_heads
    with torch.no_grad():
        heads.stages[0].predictor.bbox_pred.weight.zero_()
        heads.stages[0].predictor.bbox_pred.bias.copy_(torch.tensor([3.0, 0, 0, 0]))  # dx 0.3 at weight 10
    calls = []
    original = heads.sample

    def spy(t, proposals, targets):
        out = original(t, proposals, targets)
        calls.append((t, [p.clone() for p in proposals], {k: [v.clone() for v in vs] for k, vs in out.items()}))
        return out

    monkeypatch.setattr(heads, "sample", spy)
    img, tgt = scene()
    model([img], [tgt])
    (_, _, s0), (_, given1, _), _ = calls
    rois0, is_gt0 = s0["rois"][0], s0["is_gt"][0]
    assert is_gt0.sum() == 2  # both non-crowd ground truths were added and sampled as positives
    shifted = rois0[~is_gt0].clone()
    shifted[:, 0::2] += 0.3 * (rois0[~is_gt0, 2:3] - rois0[~is_gt0, 0:1])
    shifted[:, 0::2] = shifted[:, 0::2].clamp(0, 160)
    torch.testing.assert_close(given1[0], shifted, atol=1e-3, rtol=0)


def test_test_time_score_is_the_softmax_of_the_mean_logits_and_masks_the_mean_of_the_stages():
    model = tiny(box_score_thresh=0.0).eval()
    biases = [torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, -1.0, 3.0]), torch.tensor([0.5, 0.0, 0.0])]
    mask_logits = [2.0, -1.0, 0.5]
    with torch.no_grad():
        for stage, b, m in zip(model.roi_heads.stages, biases, mask_logits, strict=True):
            stage.predictor.cls_score.weight.zero_()
            stage.predictor.cls_score.bias.copy_(b)
            stage.mask_predictor.mask_fcn_logits.weight.zero_()
            stage.mask_predictor.mask_fcn_logits.bias.fill_(m)
        (out,) = model([scene()[0]])
    expected = torch.stack(biases).mean(0).softmax(0)
    assert len(out["scores"]) > 0
    for label, score in zip(out["labels"].tolist(), out["scores"].tolist(), strict=True):
        assert score == pytest.approx(float(expected[label]), abs=1e-5)
    # mean of the three stages' mask probabilities, not the last stage's alone
    mean_prob = sum(1 / (1 + math.exp(-m)) for m in mask_logits) / 3
    box = out["boxes"][0].round().int().tolist()
    inside = out["masks"][0, 0, box[1] + 2 : box[3] - 2, box[0] + 2 : box[2] - 2]
    assert inside.numel() > 0
    torch.testing.assert_close(inside, torch.full_like(inside, mean_prob), atol=1e-4, rtol=0)


def test_ej_head_shares_one_joint_path_per_stage_and_interleaves(monkeypatch):
    model = tiny(ej_head=True).train()
    stages = model.roi_heads.stages
    assert all(s.mask_pool is s.box_pool for s in stages) and len({id(s.box_pool) for s in stages}) == 3
    seen = []
    for t, stage in enumerate(stages):
        original = stage.masks

        def spy(features, boxes, shapes, original=original, t=t):
            seen.append((t, boxes[0].detach().clone()))
            return original(features, boxes, shapes)

        monkeypatch.setattr(stage, "masks", spy)
    img, tgt = scene()
    model([img], [tgt])
    gts = tgt["boxes"][:2]
    assert [t for t, _ in seen] == [0, 1, 2]
    for _, boxes in seen:  # the stage's own regressed boxes that overlap a ground truth by IoU >= 0.5
        assert len(boxes) > 0 and (torchvision.ops.box_iou(boxes, gts).max(1).values >= 0.5).all()


def test_images_without_objects_and_eval_in_the_original_frame():
    model = tiny().train()
    losses = model([scene(objects=False)[0]], [scene(objects=False)[1]])
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        outs = model([torch.rand(3, 90, 70), torch.rand(3, 50, 130)])
    for o, (h, w) in zip(outs, [(90, 70), (50, 130)], strict=True):
        n = len(o["boxes"])
        assert o["masks"].shape == (n, 1, h, w) and o["labels"].dtype == torch.int64
        if n:
            assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()


def test_short_run_on_synthetic_data_lowers_the_loss(synthetic_prepared):
    from mtlcli.data.dataset import PreparedDataset, collate

    ds = PreparedDataset(synthetic_prepared, "train")
    images, targets = collate([ds[i] for i in range(2)])
    torch.manual_seed(0)
    model = build_cascade(num_det_classes=len(ds.det_classes), **{**TINY, "min_size": 64, "max_size": 128})
    before, after = short_run(model, images, targets, 12, lr=0.01, measure=True)
    assert after < 0.8 * before, (before, after)


CASCADE = {  # recipe -> (neck, ej_head, parameters at 80 classes)
    "cascade-r50-coco": ("td", False, 77_325_377),
    "cascade-safpn-r50-coco": ("safpn", False, None),
    "cascade-ejhead-r50-coco": ("td", True, None),
    "cascade-safpn-ejhead-r50-coco": ("safpn", True, None),
}


def test_cascade_and_r101_baseline_recipes_build():
    counts = {}
    for name, (neck, ej, params) in CASCADE.items():
        recipe = load_recipe(name)
        model_cfg = {k: v for k, v in recipe["model"].items() if k != "name"}
        assert recipe["model"]["name"] == "cascade" and model_cfg["neck"] == neck and model_cfg["ej_head"] == ej
        with torch.device("meta"):
            model = build_model("cascade", **{**model_cfg, "pretrained_backbone": False})
        counts[name] = sum(p.numel() for p in model.parameters())
        if params is not None:
            assert counts[name] == params
        assert recipe["train"] == load_recipe("safpn-ejhead-r50-coco")["train"]  # the paper's 1x schedule
    assert counts["cascade-safpn-ejhead-r50-coco"] > counts["cascade-safpn-r50-coco"] > counts["cascade-r50-coco"]
    r101 = load_recipe("safpn-t2-maskrcnn-r101-coco")
    assert r101["model"]["backbone"] == "resnet101" and r101["model"]["neck"] == "td" and not r101["model"]["ej_head"]
    assert r101["train"] == load_recipe("safpn-ejhead-r101-coco")["train"]
    tiny_recipe = load_recipe("cascade-tiny-synthetic")
    assert tiny_recipe["model"]["name"] == "cascade" and tiny_recipe["model"]["backbone"] == "resnet18"
