"""SA-FPN + EJ-Head (papers/safpn-ejhead.txt): every neck and head switch in the tiny configuration, the
neck's information flow, interleaving on a hand-built case, the baseline equivalence, recipes."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou, clip_boxes_to_image

from mtlcli.errors import UserError
from mtlcli.models import build_model
from mtlcli.models.rcnn import build_maskrcnn
from mtlcli.models.safpn import (
    TINY,
    BottomUpFPN,
    BoundaryRefinement,
    EJRoIHeads,
    ScaleAwareNeck,
    build_safpn,
    interleaved_mask_rois,
)
from tests.models.training import short_run

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}

# Table 3 (necks) and Tables 4-5 (head switches) in the tiny configuration.
VARIANTS = {
    "safpn-concat+ej": dict(),
    "safpn-add": dict(fuse="add", ej_head=False),
    "td": dict(neck="td", ej_head=False),
    "bu": dict(neck="bu", ej_head=False),
    "buf": dict(neck="buf", ej_head=False),
    "ej-int": dict(neck="td", enriched=False, refine="none"),
    "ej-ef": dict(neck="td", interleave=False, refine="none"),
    "ej-br": dict(neck="td", interleave=False, enriched=False),
    "ej-stacked": dict(neck="td", refine="stacked"),
    "ej-none": dict(neck="td", interleave=False, enriched=False, refine="none"),
}


def tiny(**kw):
    torch.manual_seed(0)
    return build_safpn(num_det_classes=2, **{**TINY, **kw})


def scene(h: int = 128, w: int = 160, objects: bool = True):
    """Two bright rectangles (classes 1, 2) plus a crowd region, with targets as PreparedDataset gives
    them. 128x160 is the tiny model's own scale, so the network frame is the image frame."""
    img = 0.1 * torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    rects = [(10, 12, 60, 70), (70, 40, 150, 110), (0, 0, 20, 10)] if objects else []
    masks = torch.zeros(len(rects), h, w, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = 1
        img[i % 3, y0:y1, x0:x1] = 0.9
    return tv_tensors.Image(img), {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(rects, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
        ),
        "labels": torch.tensor([1, 2, 1][: len(rects)]),
        "masks": tv_tensors.Mask(masks),
        "iscrowd": torch.tensor([0, 0, 1][: len(rects)]),
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_step_losses_and_gradients(variant):
    model = tiny(**VARIANTS[variant]).train()
    (img, tgt), (img2, tgt2) = scene(), scene(96, 120, objects=False)
    losses = model([img, img2], [tgt, tgt2])
    assert set(losses) == LOSSES
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] > 0 and losses["loss_classifier"] > 0
    sum(losses.values()).backward()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    # every trainable parameter of the neck and of the heads receives a gradient
    for name, p in list(model.backbone.fpn.named_parameters()) + list(model.roi_heads.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", ["safpn-concat+ej", "bu", "ej-br"])
def test_eval_outputs_in_original_frame(variant):
    model = tiny(**VARIANTS[variant], box_score_thresh=0.0).eval()
    images = [torch.rand(3, 90, 70), torch.rand(3, 50, 130)]
    with torch.no_grad():
        out = model(images)
    for o, img in zip(out, images, strict=True):
        h, w = img.shape[-2:]
        n = len(o["boxes"])
        assert n > 0 and o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["labels"].shape == (n,)
        assert o["labels"].dtype == torch.int64 and set(o["labels"].tolist()) <= {1, 2}
        assert (o["boxes"] >= 0).all() and (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()
        assert o["masks"].shape == (n, 1, h, w) and o["masks"].min() >= 0 and o["masks"].max() <= 1
        assert "sem_seg" not in o


@pytest.mark.parametrize("neck", ["td", "bu", "buf", "safpn"])
def test_every_neck_gives_the_fpn_pyramid(neck):
    model = tiny(neck=neck, ej_head=False)
    with torch.no_grad():
        feats = model.backbone(torch.rand(2, 3, 96, 160))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    expected = [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]  # strides 4, 8, 16, 32, 64 (ceil)
    assert [tuple(f.shape) for f in feats.values()] == [(2, TINY["fpn_channels"], *hw) for hw in expected]


def trunk_maps(seed: int = 0, c: int = 4):
    """C2..C5 of a 64x96 image at strides 4..32 with widths c, 2c, 4c, 8c."""
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((str(i), torch.randn(1, c * 2**i, 16 // 2**i, 24 // 2**i, generator=g)) for i in range(4))


def changed_levels(neck: torch.nn.Module, level: int) -> list[bool]:
    """Which output levels move when trunk level `level` changes."""
    x = trunk_maps()
    y = OrderedDict(x)
    y[str(level)] = x[str(level)] + 1.0
    with torch.no_grad():
        a, b = neck(x), neck(y)
    return [not torch.equal(a[k], b[k]) for k in ["0", "1", "2", "3"]]


def test_bottom_up_necks_fuse_the_neighbours_the_paper_names():
    torch.manual_seed(0)
    bu, buf = BottomUpFPN([4, 8, 16, 32], 8, fuse_deeper=False), BottomUpFPN([4, 8, 16, 32], 8, fuse_deeper=True)
    td = ScaleAwareNeck([4, 8, 16, 32], 8, neck="td")
    # BU-FPN: a level sees only itself and the shallower ones
    assert changed_levels(bu, 3) == [False, False, False, True]
    assert changed_levels(bu, 0) == [True, True, True, True]
    # BUF-FPN: also its deeper neighbour (C5 reaches N4 directly), and the bottom-up path carries it upward
    assert changed_levels(buf, 3) == [False, False, True, True]
    assert changed_levels(buf, 1) == [True, True, True, True]
    # TD-FPN: information flows downward only
    assert changed_levels(td, 0) == [True, False, False, False]
    assert changed_levels(td, 3) == [True, True, True, True]


def test_safpn_fuses_td_and_buf_by_concat_or_add():
    torch.manual_seed(0)
    x = trunk_maps()
    add = ScaleAwareNeck([4, 8, 16, 32], 8, neck="safpn", fuse="add")
    cat = ScaleAwareNeck([4, 8, 16, 32], 8, neck="safpn", fuse="concat")
    with torch.no_grad():
        out, td, bu = add(x), add.td(x), add.bu(x)
        for k in ["0", "1", "2", "3"]:
            torch.testing.assert_close(out[k], td[k] + bu[k])
        torch.testing.assert_close(out["pool"], out["3"][:, :, ::2, ::2])
        out, td, bu = cat(x), cat.td(x), cat.bu(x)
        for i, k in enumerate(["0", "1", "2", "3"]):
            torch.testing.assert_close(out[k], cat.reduce[i](torch.cat([td[k], bu[k]], dim=1)))
    assert cat.reduce[0].weight.shape == (8, 16, 1, 1) and add.reduce is None
    assert add.bu.fuse_deeper and cat.bu.fuse_deeper  # SA-FPN's bottom-up branch is BUF-FPN


def test_boundary_refinement_residual_and_stacked():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 14, 14)
    res, stacked = BoundaryRefinement(4, "residual"), BoundaryRefinement(4, "stacked")
    with torch.no_grad():
        torch.testing.assert_close(res(x), x + res.conv2(torch.relu(res.conv1(x))))
        torch.testing.assert_close(stacked(x), torch.relu(stacked.conv2(torch.relu(stacked.conv1(x)))))
        for block in (res, stacked):
            block.conv1.weight.zero_(), block.conv1.bias.zero_()
            block.conv2.weight.zero_(), block.conv2.bias.zero_()
        torch.testing.assert_close(res(x), x)  # the shortcut
        assert stacked(x).abs().sum() == 0


def test_interleaving_keeps_refined_boxes_above_the_iou_bar_only():
    """Hand-built: four RoIs, two ground truths, three classes (0 = background). What counts is the IoU
    of the box after the box branch's regression, not of the RoI."""
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    gts = torch.tensor([[10.0, 10, 50, 50], [100, 100, 140, 160]])
    rois = torch.tensor([
        [30.0, 30, 70, 70],    # a: assigned class 1, far from gt 0 (IoU 0.14), regressed onto it
        [12.0, 12, 52, 52],    # b: assigned class 2, on gt 0 (IoU 0.82), regressed far away
        [95.0, 98, 150, 150],  # c: background, predicted class 2, whose regression lands on gt 1
        [0.0, 100, 30, 130],   # d: background, nothing near
    ])  # fmt: skip
    targets_for = {  # RoI -> (class, box its regression of that class decodes to)
        0: (1, gts[0]), 1: (2, torch.tensor([150.0, 0, 190, 40])),
        2: (2, gts[1]), 3: (1, torch.tensor([0.0, 100, 30, 130]))
    }  # fmt: skip
    regression = torch.zeros(4, 3, 4)
    for i, (cls, box) in targets_for.items():
        regression[i, cls] = coder.encode_single(box[None], rois[i : i + 1])[0]
        regression[i, 3 - cls] = 5.0  # the other object class would land somewhere else
    labels = torch.tensor([1, 2, 0, 0])
    logits = torch.tensor([[0.0, 9, 0], [0, 0, 9], [9, 0, 1], [9, 1, 0]])  # c, d: background wins

    boxes, idxs = interleaved_mask_rois([rois], [labels], logits, regression.reshape(4, 12), [gts], coder, [(200, 200)])
    assert len(boxes) == 1 and boxes[0].shape == (2, 4)
    torch.testing.assert_close(boxes[0], gts, atol=1e-3, rtol=0)  # a and c, refined onto their ground truths
    assert idxs[0].tolist() == [0, 1]
    assert not boxes[0].requires_grad
    # the unrefined RoIs would have given b (IoU 0.82) and c, not a
    assert (box_iou(rois, gts).max(1).values >= 0.5).tolist() == [False, True, True, False]
    # a bar above every IoU keeps nothing; an image without ground truth gives nothing
    none, _ = interleaved_mask_rois([rois], [labels], logits, regression.reshape(4, 12), [gts[:0]], coder, [(200, 200)])
    assert none[0].shape == (0, 4)
    capped, _ = interleaved_mask_rois(
        [rois], [labels], logits, regression.reshape(4, 12), [gts], coder, [(200, 200)], max_per_image=1
    )
    assert capped[0].shape == (1, 4)


def mask_branch_boxes(model, monkeypatch) -> torch.Tensor:
    """The boxes the mask branch receives in one training step on `scene()` (network frame = image frame),
    with the box branch regressing every RoI 0.3 of its width to the right."""
    predictor = model.roi_heads.box_predictor.bbox_pred
    with torch.no_grad():
        predictor.weight.zero_()
        predictor.bias.zero_()
        predictor.bias[0::4] = 3.0  # dx = 3 / 10 (box coder weight 10)
    seen: list[torch.Tensor] = []
    original = model.roi_heads.mask_logits

    def spy(features, boxes, image_shapes):
        seen.append(boxes[0].detach().clone())
        return original(features, boxes, image_shapes)

    monkeypatch.setattr(model.roi_heads, "mask_logits", spy)
    img, tgt = scene()
    model.train()([img], [tgt])
    return seen[0]


def test_in_training_the_mask_branch_sees_only_interleaved_boxes(monkeypatch):
    gts = scene()[1]["boxes"][:2].as_subclass(torch.Tensor)  # the crowd box is not an object
    model = tiny()
    assert isinstance(model.roi_heads, EJRoIHeads) and model.roi_heads.mask_roi_pool is model.roi_heads.box_roi_pool
    boxes = mask_branch_boxes(model, monkeypatch)
    assert 0 < len(boxes) <= model.roi_heads.max_mask_rois
    iou = box_iou(boxes, gts)
    assert (iou.max(1).values >= 0.5).all()
    # they are the refined boxes: the ground truths (added to the RoIs) arrive shifted by 0.3 of their width
    assert (iou < 0.99).all()
    shifted = clip_boxes_to_image(gts + torch.tensor([0.3, 0.0, 0.3, 0.0]) * (gts[:, 2:3] - gts[:, 0:1]), (128, 160))
    assert (box_iou(boxes, shifted).max(0).values > 0.99).all()
    # Mask R-CNN (no interleaving) feeds the sampled RoIs themselves, the ground truths among them
    plain = mask_branch_boxes(tiny(interleave=False), monkeypatch)
    assert (box_iou(plain, gts).max(0).values > 0.999).all()


def test_images_without_objects():
    model = tiny().train()
    (img, tgt), (img2, tgt2) = scene(objects=False), scene(96, 120, objects=False)
    losses = model([img, img2], [tgt, tgt2])
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_mask"].item() == 0.0
    assert torch.isfinite(losses["loss_classifier"]) and losses["loss_classifier"] > 0
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.zeros(3, 60, 80)])
    n = len(out["boxes"])
    assert out["boxes"].shape == (n, 4) and out["masks"].shape == (n, 1, 60, 80)


def test_all_switches_off_is_mask_rcnn():
    """TD-FPN + the EJ-Head with no interleaving, 7x7 features and no refinement loads a Mask R-CNN
    checkpoint and gives its losses and detections exactly."""
    baseline = build_maskrcnn(num_det_classes=2, **TINY)
    model = tiny(neck="td", interleave=False, enriched=False, refine="none")
    model.load_state_dict(baseline.state_dict())  # strict: the same parameters under the same names
    img, tgt = scene()
    for m in (baseline, model):
        m.train()
    torch.manual_seed(3)
    a = baseline([img], [tgt])
    torch.manual_seed(3)
    b = model([img], [tgt])
    for k in LOSSES:
        torch.testing.assert_close(a[k], b[k])
    with torch.no_grad():
        oa, ob = baseline.eval()([img]), model.eval()([img])
    for k in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(oa[0][k], ob[0][k])


def test_switches_add_the_parameters_they_describe():
    def count(**kw):
        with torch.device("meta"):
            return sum(p.numel() for p in build_safpn(**kw).parameters())

    c = 256
    with torch.device("meta"):
        mask_rcnn = sum(p.numel() for p in build_maskrcnn().parameters())
    assert count(neck="td", ej_head=False) == mask_rcnn  # 44.4M
    conv3 = 9 * c * c + c
    # Int is free; EF's box branch adds one 3x3 stride-2 conv (two 3x3 convs in the "conv" form, nothing
    # when it only max-pools)
    assert count(neck="td", interleave=True, enriched=True, refine="none") == mask_rcnn + conv3
    assert count(neck="td", refine="none", box_head="conv", box_convs=2) == mask_rcnn + 2 * conv3
    assert count(neck="td", enriched=True, refine="none", box_head="pool") == mask_rcnn
    fc6_14 = (c * 14 * 14 - c * 7 * 7) * 1024  # fc6 on the flattened 14x14 map instead of 7x7
    assert count(neck="td", refine="none", box_head="flatten") == mask_rcnn + fc6_14
    assert count(neck="td", refine="residual") - mask_rcnn == 3 * conv3  # + BR: two 3x3 convs
    assert count(neck="td", refine="stacked") == count(neck="td", refine="residual")
    assert count(neck="td", refine="stacked", refine_convs=4) - mask_rcnn == 5 * conv3  # Table 5's deeper stack
    lateral = sum(cin * c + c for cin in (256, 512, 1024, 2048))
    bottom_up = lateral + 3 * conv3 + 4 * conv3  # laterals, three stride-2 convs, four output convs
    assert count(neck="buf", ej_head=False) == mask_rcnn - (lateral + 4 * conv3) + bottom_up  # replaces TD
    assert count(neck="safpn", fuse="add", ej_head=False) == mask_rcnn + bottom_up
    assert count(neck="safpn", ej_head=False) == mask_rcnn + bottom_up + 4 * (2 * c * c + c)


def test_box_branch_reads_the_14x14_joint_features():
    """Enriched Feature: the box branch's first learned layer sees the joint path's 14x14 RoI features
    (not a 7x7 max-pool of them), and its output changes when only the 14x14 detail inside a 2x2 cell
    changes (a max-pool to 7x7 first would be blind to it)."""
    model = tiny(neck="td").eval()
    head = model.roi_heads.box_head
    seen = []
    first = head.convs[0]
    first.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    img, _ = scene()
    with torch.no_grad():
        model([img])
    assert seen and seen[0] == (14, 14)
    assert head.convs[0].stride == (2, 2)
    x = torch.rand(2, TINY["fpn_channels"], 14, 14)
    y = x.clone()
    y[:, :, 0, 0], y[:, :, 0, 1] = x[:, :, 0, 1], x[:, :, 0, 0]  # swap two pixels of one 2x2 cell
    pooled = build_safpn(num_det_classes=2, **{**TINY, "box_head": "pool"}).roi_heads.box_head
    with torch.no_grad():
        torch.testing.assert_close(pooled(x), pooled(y))  # the old form cannot see it
        assert not torch.allclose(head(x), head(y))
        for form in ("conv", "flatten"):
            other = build_safpn(num_det_classes=2, **{**TINY, "box_head": form}).roi_heads.box_head
            assert not torch.allclose(other(x), other(y))


def test_deeper_plain_stacks_of_table5():
    torch.manual_seed(0)
    block = BoundaryRefinement(4, "stacked", convs=4)
    x = torch.randn(2, 4, 14, 14)
    with torch.no_grad():
        y = x
        for conv in (block.conv1, block.conv2, block.conv3, block.conv4):
            y = torch.relu(conv(y))
        torch.testing.assert_close(block(x), y)
    assert set(BoundaryRefinement(4, "residual").state_dict()) == {
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
    }


def test_bad_arguments_are_user_errors():
    for kw, word in [(dict(neck="bifpn"), "neck"), (dict(fuse="mul"), "fusion"), (dict(refine="deep"), "refinement"),
                     (dict(box_head="mlp"), "box head"), (dict(refine_convs=0), "refine_convs"),
                     (dict(box_convs=0), "box_convs"), (dict(num_det_classes=0), "num_det_classes"),
                     (dict(interleave_iou=1.5), "interleave_iou")]:  # fmt: skip
        with pytest.raises(UserError, match=word):
            build_safpn(**kw)
    with pytest.raises(UserError, match="has no argument"):
        build_model("safpn", necks="td")


def test_short_run_on_synthetic_data_lowers_the_loss(synthetic_prepared):
    from mtlcli.data.dataset import PreparedDataset, collate

    ds = PreparedDataset(synthetic_prepared, "train")
    images, targets = collate([ds[i] for i in range(2)])
    torch.manual_seed(0)
    model = build_safpn(num_det_classes=len(ds.det_classes), **{**TINY, "min_size": 64, "max_size": 128}).train()
    before, after = short_run(model, images, targets, 12, lr=0.01, measure=True)
    assert after < 0.8 * before, (before, after)


def test_shipped_recipes_load_and_build():
    from mtlcli.recipes import load_recipe

    names = sorted(p.stem for pattern in ("safpn*.toml", "ejhead*.toml") for p in RECIPES.glob(pattern))
    assert {"safpn-ejhead-r50-coco", "safpn-r50-coco", "ejhead-r50-coco", "safpn-ejhead-tiny-synthetic"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe["model"]["name"] == "safpn"
        kwargs = {k: v for k, v in recipe["model"].items() if k != "name"}
        with torch.device("meta"):
            model = build_model("safpn", **{"num_det_classes": 8, **kwargs, "pretrained_backbone": False})
        assert sum(p.numel() for p in model.parameters()) > 0
    full = load_recipe("safpn-ejhead-r50-coco")
    iters, steps = full["train"]["iterations"], full["train"]["steps"]
    assert full["train"]["lr"] == 0.02 and steps == [round(iters * 9 / 12), round(iters * 11 / 12)]
    assert full["model"]["min_size"] == 800 and full["model"]["max_size"] == 1333
