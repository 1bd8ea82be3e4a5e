"""DATNet (papers/datnet.txt): every variant in its tiny configuration, its pieces, full-size parameter counts."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtlcli.errors import UserError
from mtlcli.models import build_model, builder_arguments
from mtlcli.models.datnet import (
    TINY,
    DenseAuxHead,
    FeatureFusion,
    MultiScalePoolWithAttention,
    build_datnet,
    dense_focal_loss,
    logits_to_original,
)
from tests.models.training import short_run

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MASK_RCNN_LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
SEG_CLASSES = 3  # background + 2 object classes

# (builder keyword arguments, dense losses expected) — the Light/Heavy heads, the ablations of
# Tables 2, 3 and 5, and the configuration that is Mask R-CNN.
VARIANTS = {
    "light": (dict(head="light"), {"loss_dt", "loss_seg"}),
    "heavy": (dict(head="heavy"), {"loss_dt", "loss_seg"}),
    "heavy-sum2conv": (dict(head="heavy", fusion="sum2conv"), {"loss_dt", "loss_seg"}),
    "light-sum4conv": (dict(head="light", fusion="sum4conv"), {"loss_dt", "loss_seg"}),
    "aux-only-no-fusion": (dict(head="light", fusion="none"), {"loss_dt", "loss_seg"}),
    "table2-dt-only": (dict(head="standard", mspwa=False, seg_weight=0.0), {"loss_dt"}),
    "table2-seg-only": (dict(head="standard", mspwa=False, dt_weight=0.0), {"loss_seg"}),
    "table3-mspwa-2fc": (dict(head="standard", dt_weight=0.0, seg_weight=0.0), set()),
    "table3-4conv1fc": (dict(head="4conv1fc", mspwa=False, dt_weight=0.0, seg_weight=0.0), set()),
    "table3-res5-no-mspwa": (dict(head="light", mspwa=False, dt_weight=0.0, seg_weight=0.0), set()),
    "mask-rcnn": (dict(head="standard", mspwa=False, dt_weight=0.0, seg_weight=0.0), set()),
}


def tiny(**kw):
    torch.manual_seed(0)
    return build_datnet(num_det_classes=2, num_seg_classes=SEG_CLASSES, **{**TINY, **kw})


def scene(h: int = 96, w: int = 120, objects: bool = True):
    """An image with two rectangles (classes 1, 2) and targets in the prepared-dataset form: masks,
    semantic (0 background, class of the object inside), dt bins (1 rim, 2, 3 core)."""
    img = 0.1 * torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    rects = [(10, 12, 50, 60), (60, 30, 110, 80)] if objects else []
    masks = torch.zeros(len(rects), h, w, dtype=torch.uint8)
    semantic = torch.zeros(h, w, dtype=torch.int64)
    dt = torch.zeros(h, w, dtype=torch.int64)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = 1
        semantic[y0:y1, x0:x1] = i + 1
        dt[y0:y1, x0:x1] = 1
        dt[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4] = 2
        dt[y0 + 9 : y1 - 9, x0 + 9 : x1 - 9] = 3
        img[i, y0:y1, x0:x1] = 0.9
    semantic[-5:] = 255  # an unlabelled strip
    return img, {
        "boxes": torch.tensor(rects, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.arange(1, len(rects) + 1),
        "masks": masks,
        "iscrowd": torch.zeros(len(rects), dtype=torch.int64),
        "semantic": semantic,
        "dt": dt,
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_step_losses_and_gradients(variant):
    kw, dense = VARIANTS[variant]
    model = tiny(**kw).train()
    (img, tgt), (img2, tgt2) = scene(), scene(80, 100, objects=False)
    losses = model([img, img2], [tgt, tgt2])
    assert set(losses) == MASK_RCNN_LOSSES | dense
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    conv1 = model.backbone.body.conv1.weight.grad
    assert conv1 is not None and conv1.abs().sum() > 0
    for name in model.dense_heads:
        assert model.dense_heads[name].classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head", ["light", "heavy"])
def test_eval_outputs_in_original_frame(head):
    model = tiny(head=head, box_score_thresh=0.0).eval()
    images = [torch.rand(3, 90, 70), torch.rand(3, 50, 130)]
    with torch.no_grad():
        out = model(images)
    for o, img in zip(out, images, strict=True):
        h, w = img.shape[-2:]
        n = len(o["boxes"])
        assert n > 0 and o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["labels"].shape == (n,)
        assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()
        assert o["masks"].shape == (n, 1, h, w) and 0 <= o["masks"].min() and o["masks"].max() <= 1
        assert o["sem_seg"].shape == (SEG_CLASSES, h, w)
        torch.testing.assert_close(o["sem_seg"].sum(0), torch.ones(h, w))
        assert o["dt"].shape == (4, h, w)  # the DT head's bins, for `mtl eval --metric dt`
        torch.testing.assert_close(o["dt"].sum(0), torch.ones(h, w))
        assert o["proposals"].shape[1] == 4 and (o["proposals"][:, 2] <= w).all()


def test_without_semantic_head_there_is_no_sem_seg():
    model = tiny(seg_weight=0.0).eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 64, 64)])
    assert "sem_seg" not in out and "seg" not in model.dense_heads
    model = tiny(dt_weight=0.0).eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 64, 64)])
    assert "dt" not in out and "sem_seg" in out


@pytest.mark.parametrize("head", ["light", "heavy"])  # heavy: the shared res5 (batch norm) sees no positive RoI
def test_image_without_objects_trains_the_dense_heads_only_on_background(head):
    model = tiny(head=head).train()
    img, tgt = scene(objects=False)
    losses = model([img], [tgt])
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_mask"].item() == 0.0
    assert losses["loss_dt"] > 0 and losses["loss_seg"] > 0


def test_missing_dense_targets_name_the_switch():
    img, tgt = scene()
    del tgt["dt"]
    with pytest.raises(UserError, match="dt_weight = 0"):
        tiny().train()([img], [tgt])
    assert "loss_dt" not in tiny(dt_weight=0.0).train()([img], [tgt])


def test_mspwa_pools_all_levels_and_attention_lies_in_unit_interval():
    torch.manual_seed(0)
    c, k = 8, 7
    feats = OrderedDict((str(i), torch.randn(2, c, 64 // 2**i, 64 // 2**i)) for i in range(4))
    boxes = [torch.tensor([[4.0, 4, 40, 30], [0, 0, 255, 255]]), torch.tensor([[100.0, 80, 140, 200]])]
    pool = MultiScalePoolWithAttention(c, k, reduction=4)
    out = pool(feats, boxes, [(256, 256), (256, 256)])
    assert out.shape == (3, 4 * c, k, k)  # k x k x 4C
    weights = pool.attention.weights(pool.pool(feats, boxes))
    assert weights.shape == (3, 4 * c) and weights.min() >= 0 and weights.max() <= 1
    # every level contributes to every RoI, whatever its size (no FPN level assignment)
    for level in range(4):
        changed = OrderedDict(feats)
        changed[str(level)] = feats[str(level)] + 1.0
        diff = (pool(changed, boxes) - out).abs().sum(dim=(2, 3))
        assert (diff[:, level * c : (level + 1) * c] > 0).all()


def test_dense_head_gives_stride4_features_and_logits():
    head = DenseAuxHead(8, num_classes=4)
    levels = [torch.randn(1, 8, 32 // 2**i + (i == 4), 48 // 2**i + (i == 4)) for i in range(5)]  # P6 odd-sized
    feats, logits = head(levels)
    assert feats.shape == (1, 8, 32, 48) and logits.shape == (1, 4, 32, 48)
    assert sum(1 for m in head.modules() if isinstance(m, torch.nn.Conv2d)) == 10 + 2 + 1


def test_sum_fusion_adds_resized_dense_features():
    fusion = FeatureFusion(4, num_convs=0)
    feats = OrderedDict((str(i), torch.randn(1, 4, 16 // 2**i, 16 // 2**i)) for i in range(4))
    feats["pool"] = torch.randn(1, 4, 1, 1)
    f_dt, f_seg = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    out = fusion(feats, [f_dt, f_seg])
    torch.testing.assert_close(out["0"], feats["0"] + f_dt + f_seg)
    resize = lambda f: F.interpolate(f, size=(4, 4), mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(out["2"], feats["2"] + resize(f_dt) + resize(f_seg))
    torch.testing.assert_close(out["pool"], out["3"][:, :, ::2, ::2])
    assert len(list(FeatureFusion(4, num_convs=4).parameters())) == 8  # sum4conv: 4 shared convs


def test_dense_focal_loss_matches_the_paper_formula():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [0.0, 3.0, 0.0]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[[0, 2, 255]]])
    p = logits.softmax(1)[0, :, 0]  # [3 classes, 3 pixels]
    expected = (-0.2 * (1 - p[0, 0]) ** 2 * p[0, 0].log() - 1.0 * (1 - p[2, 1]) ** 2 * p[2, 1].log()) / 2
    torch.testing.assert_close(dense_focal_loss(logits, target), expected)
    # without a background class every pixel has weight 1
    expected_no_bg = (-((1 - p[0, 0]) ** 2) * p[0, 0].log() - (1 - p[2, 1]) ** 2 * p[2, 1].log()) / 2
    torch.testing.assert_close(dense_focal_loss(logits, target, background_index=-1), expected_no_bg)
    assert dense_focal_loss(logits, torch.full_like(target, 255)).item() == 0.0
    with pytest.raises(UserError, match="num_seg_classes"):
        dense_focal_loss(logits, torch.tensor([[[5, 0, 0]]]))


def test_logits_map_back_to_the_original_frame():
    """Class 1 wins in the left half of the resized image inside a padded batch; in the original frame
    (twice the size) the left half must still be class 1."""
    logits = torch.zeros(2, 16, 16)  # padded 64x64 batch at stride 4; the image occupies 40 x 48
    logits[1, :, :6] = 5.0  # columns 0..23 of the resized image
    out = logits_to_original(logits, size=(40, 48), original=(80, 96), stride=4)
    assert out.shape == (2, 80, 96)
    assert (out.argmax(0)[:, :44] == 1).all() and (out.argmax(0)[:, 52:] == 0).all()


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="head"):
        build_datnet(head="huge")
    with pytest.raises(UserError, match="fusion"):
        build_datnet(fusion="concat")
    with pytest.raises(UserError, match="has no argument"):
        build_model("datnet", heads="light")


@pytest.mark.parametrize(
    "kw,paper",
    [(dict(head="light"), 62.3e6), (dict(head="heavy"), 59.9e6),
     (dict(head="standard", mspwa=False, dt_weight=0.0, seg_weight=0.0), 44.4e6),
     # Table 7's ResNeXt-101 32x8d rows
     (dict(head="light", backbone="resnext101_32x8d"), 139.2e6),
     (dict(head="heavy", backbone="resnext101_32x8d"), 136.8e6),
     (dict(head="standard", mspwa=False, dt_weight=0.0, seg_weight=0.0, backbone="resnext101_32x8d"), 107.4e6)],
)  # fmt: skip
def test_full_configuration_parameter_counts(kw, paper):
    with torch.device("meta"):
        model = build_datnet(num_det_classes=80, num_seg_classes=81, **kw)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / paper - 1) < 0.01, f"{count / 1e6:.2f}M vs the paper's {paper / 1e6:.1f}M"


def test_heavy_mask_head_is_the_c4_predictor_with_14x14_masks():
    """Mask R-CNN's C4 predictor after the shared res5: deconv 2x2 stride 2 + ReLU, then a 1x1 conv."""
    model = tiny(head="heavy").eval()
    kinds = [type(m).__name__ for m in model.roi_heads.mask_predictor]
    assert kinds == ["ConvTranspose2d", "ReLU", "Conv2d"]
    deconv, last = model.roi_heads.mask_predictor[0], model.roi_heads.mask_predictor[2]
    assert deconv.kernel_size == (2, 2) and deconv.stride == (2, 2) and last.kernel_size == (1, 1)
    x = torch.rand(3, model.roi_heads.box_head.out_channels, 7, 7)
    assert tuple(model.roi_heads.mask_predictor(x).shape) == (3, 3, 14, 14)


def test_heavy_shares_res5_between_box_and_mask():
    model = tiny(head="heavy")
    assert model.roi_heads.mask_head is model.roi_heads.box_head.res5
    assert model.roi_heads.mask_roi_pool is model.roi_heads.box_roi_pool


def test_short_run_on_synthetic_data_lowers_the_loss(synthetic_prepared):
    from mtlcli.data.dataset import PreparedDataset, collate

    ds = PreparedDataset(synthetic_prepared, "train")
    images, targets = collate([ds[i] for i in range(2)])
    model = build_datnet(
        num_det_classes=len(ds.det_classes), num_seg_classes=len(ds.seg_classes), seg_background_index=-1,
        **{**TINY, "min_size": 64, "max_size": 128},
    ).train()  # fmt: skip
    before, after = short_run(model, images, targets, 12, lr=0.01, measure=True)
    assert after < 0.8 * before, (before, after)


def test_continuous_multi_scale_training_sizes():
    """min_size = "LO-HI" draws any short side in the range during training (DATNet's MST); evaluation
    keeps its own scale."""
    from mtlcli.models.rcnn import RCNNTransform

    t = RCNNTransform("400-1200", 1400, 800, 1333).train()
    torch.manual_seed(0)
    sizes = {t.torch_choice(t.min_size) for _ in range(200)}
    assert min(sizes) >= 400 and max(sizes) <= 1200 and len(sizes) > 100  # not a 9-value list
    img = torch.rand(3, 100, 120)
    torch.manual_seed(1)
    out, _ = t.resize(img, None)
    assert 400 <= min(out.shape[-2:]) <= 1200
    t.eval()
    assert min(t.resize(img, None)[0].shape[-2:]) == 800
    with pytest.raises(UserError, match="LO-HI"):
        RCNNTransform("400-x", 1400, 800, 1333)


def test_shipped_two_stage_recipes_build():
    """Every DATNet / baseline recipe loads (schema, one level of extends) and builds its model."""
    from mtlcli.recipes import load_recipe

    names = sorted(
        p.stem for pattern in ("datnet*.toml", "maskrcnn*.toml", "fasterrcnn*.toml") for p in RECIPES.glob(pattern)
    )
    assert {
        "datnet-light-r50-coco",
        "datnet-heavy-r50-coco-mst",
        "datnet-light-r50-voc",
        "maskrcnn-r50-coco",
        "fasterrcnn-r50-voc",
        "datnet-tiny-synthetic",
        "datnet-t5-heavy-sum4conv-r50-coco",
        "datnet-light-x101-coco",
        "datnet-heavy-x101-coco",
        "maskrcnn-x101-coco",
    } <= set(names)
    for name in names:
        recipe = load_recipe(name)
        kwargs = {k: v for k, v in recipe["model"].items() if k != "name"}
        counts = {"num_det_classes": 8, "num_seg_classes": 19}  # what the engine fills in from the dataset
        counts = {k: v for k, v in counts.items() if k in builder_arguments(recipe["model"]["name"])}
        kwargs = {**counts, **kwargs, "pretrained_backbone": False}
        with torch.device("meta"):
            model = build_model(recipe["model"]["name"], **kwargs)
        assert sum(p.numel() for p in model.parameters()) > 0


def test_res5_head_starts_from_the_trunks_layer4(tmp_path):
    """Table 3's res5 rows: with MSPwA (pooled width 4 x FPN channels = layer4's input) and without it
    (FPN width) the res5 head is the same ImageNet layer4; only the convs reading the RoI features (the
    first block's conv1 and downsample conv) differ, by their input width."""
    import torchvision

    torch.manual_seed(1)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, tmp_path / "r18.pth")
    kw = {**TINY, "fpn_channels": 64, "res5_planes": 512, "pretrained_backbone": str(tmp_path / "r18.pth")}
    model = build_datnet(num_det_classes=2, num_seg_classes=SEG_CLASSES, **kw)
    res5 = model.roi_heads.box_head.res5
    torch.testing.assert_close(res5[0].conv1.weight, weights["layer4.0.conv1.weight"])
    assert res5 is not model.backbone.body.layer4  # its own weights, not shared with the trunk
    plain = build_datnet(
        num_det_classes=2, num_seg_classes=SEG_CLASSES, **{**kw, "mspwa": False}
    ).roi_heads.box_head.res5
    assert plain[0].conv1.in_channels == 64 and plain[0].downsample[0].in_channels == 64
    a, b = res5.state_dict(), plain.state_dict()
    assert a.keys() == b.keys()
    differ = {k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])}
    assert differ == {"0.conv1.weight", "0.downsample.0.weight"}
    for k in a.keys() - differ:  # the same ImageNet weights and frozen statistics, in both
        torch.testing.assert_close(a[k], weights[f"layer4.{k}"])
    assert type(plain[0].bn1) is type(res5[0].bn1)  # the trunk's (frozen) norm, not a fresh trainable BN
