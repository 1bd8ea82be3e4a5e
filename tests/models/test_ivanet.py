"""IvaNet, its Table 1 variants, BlitzNet-style full top-down and SSD300-VGG16 behind the DESIGN.md §4
contract: tiny configurations for training/eval behaviour, full-size builds for box counts and sizes."""

from __future__ import annotations

import pytest
import torch

from mtlcli.errors import UserError
from mtlcli.models import build_model
from mtlcli.models.ivanet import build_ivanet, build_ssd300_vgg16, pyramid_sizes

TINY = dict(
    backbone="resnet18",
    input_size=(64, 128),
    width=32,
    topdown_channels=16,
    extra_channels=(16, 32),
    seg_width=32,
    seg_reduce=16,
    num_det_classes=3,
    num_seg_classes=5,
)
# name -> builder arguments of the Table 1 ablations and the BlitzNet comparison
VARIANTS = {
    "ivanet": {},
    "ivanet_no": {"topdown": "none"},
    "ivanet_det": {"seg_head": False},
    "ivanet_seg": {"det_head": False},
    "blitznet": {"topdown": "full"},
}


def tiny(variant: str = "ivanet", **kw):
    torch.manual_seed(0)
    return build_ivanet(**{**TINY, **VARIANTS[variant], **kw})


def scene(h: int = 80, w: int = 120, seed: int = 0):
    """An image with two coloured rectangles (classes 1 and 3) on a background, its boxes and semantic
    map (0 background, the rectangles' seg class = det class)."""
    g = torch.Generator().manual_seed(seed)
    image = 0.1 * torch.rand(3, h, w, generator=g)
    semantic = torch.zeros(h, w, dtype=torch.int64)
    boxes = torch.tensor([[10.0, 15.0, 50.0, 60.0], [70.0, 20.0, 110.0, 45.0]])
    labels = torch.tensor([1, 3])
    for (x1, y1, x2, y2), c in zip(boxes.int().tolist(), labels.tolist(), strict=True):
        image[c - 1, y1:y2, x1:x2] = 0.9
        semantic[y1:y2, x1:x2] = c
    return image, {"boxes": boxes, "labels": labels, "semantic": semantic, "iscrowd": torch.zeros(2, dtype=torch.int64)}


def empty_scene(h: int = 70, w: int = 90):
    return torch.rand(3, h, w), {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "semantic": torch.zeros(h, w, dtype=torch.int64),
        "iscrowd": torch.zeros(0, dtype=torch.int64),
    }


def expected_losses(variant: str) -> set[str]:
    keys = set()
    if VARIANTS[variant].get("det_head", True):
        keys |= {"loss_det_cls", "loss_det_box"}
    if VARIANTS[variant].get("seg_head", True):
        keys.add("loss_seg")
    return keys


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_step_finite_losses_and_backbone_gradients(variant):
    model = tiny(variant).train()
    image, target = scene()
    losses = model([image, scene(seed=1)[0]], [target, target])
    assert set(losses) == expected_losses(variant)
    assert all(v.ndim == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    trunk = model.body[0].trunk
    for param in (trunk.conv1.weight, trunk.layer1[0].conv1.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_outputs_in_the_original_frame(variant):
    model = tiny(variant).eval()
    sizes = [(80, 120), (50, 70)]
    with torch.no_grad():
        out = model([torch.rand(3, h, w) for h, w in sizes])
    assert len(out) == 2
    for result, (h, w) in zip(out, sizes, strict=True):
        if VARIANTS[variant].get("det_head", True):
            n = result["boxes"].shape[0]
            assert 0 < n <= 200  # an untrained model scores everything near 1/(K+1) > 0.01
            assert result["boxes"].shape == (n, 4) and result["scores"].shape == (n,)
            assert result["labels"].dtype == torch.int64 and result["labels"].min() >= 1 and result["labels"].max() <= 3
            b = result["boxes"]
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            assert ((result["scores"] >= 0.01) & (result["scores"] <= 1)).all()
        else:
            assert "boxes" not in result
        if VARIANTS[variant].get("seg_head", True):
            assert result["sem_seg"].shape == (5, h, w)
            torch.testing.assert_close(result["sem_seg"].sum(0), torch.ones(h, w))
        else:
            assert "sem_seg" not in result


@pytest.mark.parametrize("variant", ["ivanet", "ivanet_det"])
def test_an_image_without_objects_trains_and_predicts(variant):
    model = tiny(variant).train()
    image, target = empty_scene()
    losses = model([image], [target])
    assert set(losses) == expected_losses(variant)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()  # no positives: zero detection loss, but the graph is intact
    model.eval()
    with torch.no_grad():
        (result,) = model([image])
    assert result["boxes"].shape[1] == 4 and len(result["scores"]) == len(result["labels"])


def test_unlabelled_pixels_and_crowd_boxes_do_not_train():
    model = tiny().train()
    image, target = scene()
    target = dict(target, semantic=torch.full_like(target["semantic"], 255), iscrowd=torch.tensor([1, 1]))
    losses = model([image], [target])
    # everything crowd: no positives; everything ignored: no segmentation loss (and no NaN)
    assert losses["loss_seg"].item() == 0 and losses["loss_det_box"].item() == 0 and losses["loss_det_cls"].item() == 0


def test_pyramid_levels_and_default_box_counts_of_the_full_size_models():
    assert pyramid_sizes((300, 300)) == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert pyramid_sizes((512, 512)) == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert pyramid_sizes((128, 256))[-3:] == [(2, 4), (1, 2), (1, 1)]
    assert build_ivanet(input_size=300).default_boxes.shape == (8732, 4)
    assert build_ivanet(input_size=512, seg_head=False).default_boxes.shape == (24564, 4)
    assert build_ssd300_vgg16().default_boxes.shape == (8732, 4)


def test_full_size_ivanet300_forward_shapes_and_parameter_counts():
    torch.manual_seed(0)
    joint = build_ivanet().eval()
    det, seg = build_ivanet(seg_head=False), build_ivanet(det_head=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the two heads share one body: joint = det-only + seg-only - body; ResNet-50 trunk ~23.5M inside
    assert count(joint) == count(det) + count(seg) - count(joint.body)
    assert 23e6 < count(joint.body[0].trunk) < 24e6 and 35e6 < count(joint) < 50e6
    batch = torch.zeros(1, 3, 300, 300)
    with torch.no_grad():
        raw = joint.network(batch)
        levels = joint.body(batch)
    assert [tuple(f.shape[1:]) for f in levels] == [(384, s, s) for s in (38, 19, 10, 5, 3, 1)]
    assert raw["cls_logits"].shape == (1, 8732, 21) and raw["bbox_regression"].shape == (1, 8732, 4)
    assert raw["seg_logits"].shape == (1, 21, 38, 38)


def test_ssd300_vgg16_trains_and_predicts_pedestrians():
    torch.manual_seed(0)
    model = build_model("ssd300_vgg16", num_det_classes=1).train()
    image = torch.rand(3, 120, 160)
    target = {"boxes": torch.tensor([[20.0, 10.0, 50.0, 100.0]]), "labels": torch.tensor([1])}
    losses = model([image], [target])
    assert set(losses) == {"loss_det_cls", "loss_det_box"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.body.features[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (result,) = model([image])
    assert set(result) == {"boxes", "scores", "labels"} and (result["labels"] == 1).all()
    assert (result["boxes"][:, 2] <= 160).all() and (result["boxes"][:, 3] <= 120).all()


def test_pretrained_backbone_from_a_local_file(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = tiny(pretrained_backbone=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.body[0].trunk.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    with pytest.raises(UserError, match="does not exist"):
        tiny(pretrained_backbone=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"topdown": "dense"}, "topdown must be one of"),
        ({"det_head": False, "seg_head": False}, "needs a detection head"),
        ({"backbone": "vgg11"}, "unknown IvaNet backbone"),
        ({"box_scales": [0.1, 0.5]}, "5 pyramid levels: .* box_scales 6 values"),
        ({"input_size": [16, 16]}, "input_size"),
    ],
)
def test_bad_configurations_are_user_errors(kw, message):
    with pytest.raises(UserError, match=message):
        tiny(**kw)


def test_loss_falls_on_the_synthetic_city(synthetic_prepared):
    """A few dozen Adam steps of the tiny model on the prepared synthetic dataset (6 images, 64x128)."""
    from mtlcli.data.dataset import PreparedDataset

    ds = PreparedDataset(synthetic_prepared, "train")
    samples = [ds[i] for i in range(len(ds))]
    images = [s[0] for s in samples]
    targets = [s[1] for s in samples]
    torch.manual_seed(0)
    model = build_ivanet(
        **{**TINY, "num_det_classes": len(ds.det_classes), "num_seg_classes": len(ds.seg_classes)}
    ).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        losses = model(images, targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first = {k: sum(h[k] for h in history[:3]) / 3 for k in history[0]}
    last = {k: sum(h[k] for h in history[-3:]) / 3 for k in history[0]}
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert sum(last.values()) < 0.6 * sum(first.values())
    assert last["loss_seg"] < 0.7 * first["loss_seg"] and last["loss_det_cls"] < 0.7 * first["loss_det_cls"]


def test_the_tiny_synthetic_recipe_builds_for_rectangular_street_scenes():
    from mtlcli.recipes import load_recipe

    model_cfg = dict(load_recipe("ivanet-tiny-synthetic")["model"])
    name = model_cfg.pop("name")
    torch.manual_seed(0)
    model = build_model(name, num_det_classes=8, num_seg_classes=19, **model_cfg).eval()
    assert model.input_size == (128, 256)
    with torch.no_grad():
        (result,) = model([torch.rand(3, 256, 512)])
    assert result["sem_seg"].shape == (19, 256, 512)
    assert (result["boxes"][:, 2] <= 512).all() and (result["boxes"][:, 3] <= 256).all()


def test_tiny_ssd300_keeps_the_default_boxes_with_narrow_convs():
    torch.manual_seed(0)
    model = build_ssd300_vgg16(num_det_classes=2, width_divisor=8).eval()
    assert model.default_boxes.shape == (8732, 4)  # SSD300's, as at full width
    assert model.body.scale_weight.shape == (64,)
    assert max(m.out_channels for m in model.body.modules() if isinstance(m, torch.nn.Conv2d)) == 128
    with torch.no_grad():
        (out,) = model([torch.rand(3, 90, 160)])
    assert out["boxes"].shape[1] == 4 and (out["boxes"][:, 2] <= 160 + 1e-3).all()
    for kw, message in [
        ({"width_divisor": 3}, "width_divisor"),
        ({"width_divisor": 8, "pretrained_backbone": True}, "full VGG16"),
    ]:
        with pytest.raises(UserError, match=message):
            build_ssd300_vgg16(**kw)
