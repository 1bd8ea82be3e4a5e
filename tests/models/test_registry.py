"""One test over the whole registry (as torchvision's test_models_detection does): every registered
model in its tiny configuration trains one step on real prepared samples (one of them without
objects) and predicts in the DESIGN.md §4 format, in each image's original frame; and overfits two
images (the standard check that the targets reach the losses in the right frame and coding)."""

from __future__ import annotations

import math

import pytest
import torch

from mtlcli.data.dataset import PreparedDataset
from mtlcli.models import MODELS, build_model
from mtlcli.recipes import load_recipe

TWO_STAGE_TINY = {
    "backbone": "resnet18",
    "fpn_channels": 32,
    "representation_size": 64,
    "mask_channels": 32,
    "min_size": 64,
    "max_size": 128,
    "anchor_sizes": [8, 16, 32, 64, 128],
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
}

# name -> (tiny recipe or kwargs, has detection, has segmentation, has instance masks)
TINY = {
    "ivanet": ("ivanet-tiny-synthetic", True, True, False),
    "ssd300_vgg16": ("ssd300-tiny-synthetic", True, False, False),
    "ladder_densenet": ("ladderdensenet-tiny-synthetic", False, True, False),
    "imtl": ("imtl-tiny-synthetic", True, True, False),
    "datnet": ("datnet-tiny-synthetic", True, True, True),
    "safpn": ("safpn-ejhead-tiny-synthetic", True, False, True),
    "cascade": ("cascade-tiny-synthetic", True, False, True),
    "maskrcnn": (TWO_STAGE_TINY, True, False, True),
    "fasterrcnn": ({k: v for k, v in TWO_STAGE_TINY.items() if k != "mask_channels"}, True, False, False),
}


def test_every_registered_model_is_swept():
    assert set(MODELS) == set(TINY) == set(OVERFIT)


def _tiny_kwargs(spec: str | dict) -> dict:
    if isinstance(spec, str):
        recipe = load_recipe(spec)
        kwargs = {k: v for k, v in recipe["model"].items() if k != "name"}
    else:
        kwargs = dict(spec)
    return kwargs


def _kwargs_for(name: str, num_det: int, num_seg: int) -> dict:
    from mtlcli.models import builder_arguments

    kwargs = _tiny_kwargs(TINY[name][0])
    valid = builder_arguments(name)
    if "num_det_classes" in valid:
        kwargs["num_det_classes"] = num_det
    if "num_seg_classes" in valid:
        kwargs["num_seg_classes"] = num_seg
    if "input_size" in valid:
        kwargs["input_size"] = [64, 128]
    if "min_size" in valid:  # two-stage models see the 64x128 samples as they are
        kwargs["min_size"], kwargs["max_size"] = 64, 128
    return kwargs


@pytest.fixture(scope="module")
def samples(synthetic_prepared):
    ds = PreparedDataset(synthetic_prepared, "train")
    items = [ds[i] for i in range(len(ds))]
    with_objects = next((img, t) for img, t in items if len(t["boxes"]) > 0)
    empty_img = with_objects[0].clone()
    h, w = empty_img.shape[-2:]
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, h, w, dtype=torch.uint8),
        "iscrowd": torch.zeros(0, dtype=torch.int64),
        "semantic": torch.full((h, w), 255, dtype=torch.int64),
        "dt": torch.zeros(h, w, dtype=torch.int64),
    }
    return ds, [with_objects, (empty_img, empty)]


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_trains_and_predicts(name, samples):
    torch.manual_seed(0)
    ds, pairs = samples
    _, det, seg, masks = TINY[name]
    model = build_model(name, **_kwargs_for(name, len(ds.det_classes), len(ds.seg_classes)))

    model.train()
    images = [img.as_subclass(torch.Tensor) for img, _ in pairs]
    targets = [
        {k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for _, t in pairs
    ]
    losses = model(images, targets)
    assert losses and all(k.startswith("loss_") for k in losses)
    total = sum(losses.values())
    assert math.isfinite(total.item()), losses
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)

    model.eval()
    # a second image of another size: outputs come back in each image's own frame
    sizes = [tuple(images[0].shape[-2:]), (48, 80)]
    inputs = [images[0], torch.rand(3, *sizes[1])]
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, sizes, strict=True):
        if det:
            n = out["boxes"].shape[0]
            assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,) and out["labels"].shape == (n,)
            assert out["labels"].dtype == torch.int64
            if n:
                assert int(out["labels"].min()) >= 1 and int(out["labels"].max()) <= len(ds.det_classes)
                assert float(out["boxes"][:, 0::2].max()) <= w + 1e-3 and float(out["boxes"][:, 1::2].max()) <= h + 1e-3
                assert float(out["boxes"].min()) >= -1e-3
        else:
            assert "boxes" not in out
        if seg:
            assert out["sem_seg"].shape == (len(ds.seg_classes), h, w)
        if masks:
            assert out["masks"].shape[1:] == (1, h, w)
            if out["masks"].numel():
                assert 0.0 <= float(out["masks"].min()) and float(out["masks"].max()) <= 1.0


# name -> (Adam steps, learning rate, output stride of the semantic map, semantic IoU to reach) for the
# tiny configuration to overfit two images (the last fifth of the steps at a tenth of the rate). Chosen
# so that every family meets its criteria with three initial seeds (0, 1, 2; the test runs seed 0) and
# with one and two torch threads, not at the edge: the previous, shorter counts passed seed 0 on two
# threads but missed one or two of the eleven boxes with another seed or one thread (SSD300 at 80
# steps, Mask R-CNN at 80, SA-FPN at 70, DATNet at 75), which is what another CPU's kernels give too.
# Two semantic bars are lower, where the output cannot reach 0.9: IvaNet predicts at stride 8 and levels
# off at 0.80-0.92 on these images (eleven objects in 64x128); DATNet's semantic map is its auxiliary
# head (focal loss at weight 0.25, stride 4): 0.86-0.89.
OVERFIT = {
    "ivanet": (60, 2e-3, 8, 0.75),
    "ssd300_vgg16": (100, 3e-3, 1, 0.9),
    "ladder_densenet": (120, 1e-2, 4, 0.9),
    "imtl": (80, 5e-3, 1, 0.9),
    "datnet": (100, 2e-3, 4, 0.8),
    "safpn": (100, 2e-3, 1, 0.9),
    "cascade": (100, 2e-3, 1, 0.9),
    "maskrcnn": (100, 2e-3, 1, 0.9),
    "fasterrcnn": (90, 2e-3, 1, 0.9),
}
# What this check guards is the target pipeline (matching, box coding, RoI sampling, mask and dense
# targets), so the families overfit with their ImageNet-style trunk frozen (randomly initialised; BN
# statistics still follow the images) and everything after it trained: necks, top-down modules, extra
# layers and heads. The trunk's backward pass made the check two to three times slower and adds nothing
# to what it checks. The two-stage families also sample 32 RoIs per image (their tiny recipes: 64):
# torchvision's single-threaded CPU RoIAlign backward is what their steps spend most on.
FROZEN_TRUNK = {
    "ivanet": "body.0.trunk",
    "ssd300_vgg16": "body.features",
    "datnet": "backbone.body",
    "safpn": "backbone.body",
    "cascade": "backbone.body",
    "maskrcnn": "backbone.body",
    "fasterrcnn": "backbone.body",
}
OVERFIT_ROIS = 32
# Near-perfect agreement after the short run (issue 15): the semantic map (frequency-weighted IoU, on the
# grid of the stride the model predicts at), and every box the model's target coding holds found by a
# detection of its class at IoU >= 0.5 among the top-2N scores (N boxes: a short run keeps a few
# duplicates near the top, which class-wise NMS at 0.5 does not remove).
BOX_IOU = 0.5


def semantic_iou(scores: torch.Tensor, target: torch.Tensor, stride: int = 1) -> float:
    """Frequency-weighted IoU of the argmax of `scores` [C, H, W] against `target` [H, W] (255 ignored):
    the IoU of each labelled class weighted by its share of the labelled pixels. With `stride` > 1, on
    the grid the model predicts at: each stride x stride cell takes its majority class, in the prediction
    and in the target (which the per-pixel loss drives a cell's prediction towards)."""
    pred = scores.argmax(0)
    if stride > 1:
        import torch.nn.functional as F

        C = scores.shape[0]
        labelled = target != 255
        onehot_t = F.one_hot(target.clamp(max=C - 1).long(), C).permute(2, 0, 1).float() * labelled
        onehot_p = F.one_hot(pred, C).permute(2, 0, 1).float() * labelled
        pooled_t, pooled_p = F.avg_pool2d(onehot_t[None], stride)[0], F.avg_pool2d(onehot_p[None], stride)[0]
        cell_labelled = pooled_t.sum(0) > 0
        target = torch.where(cell_labelled, pooled_t.argmax(0), torch.full_like(pooled_t[0], 255, dtype=torch.int64))
        pred = pooled_p.argmax(0)
    labelled = target != 255
    total = 0.0
    for c in target[labelled].unique():
        p, t = (pred == c) & labelled, target == c
        total += float((p & t).sum() / (p | t).sum()) * float(t.sum() / labelled.sum())
    return total


def held_boxes(name: str, model: torch.nn.Module, target: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which non-crowd ground-truth boxes the family's target coding can train as a positive, [N] bool.

    Two-stage models: every box (the RPN matches each to its best anchors, RoIs are sampled around it).
    SSD-style models (IvaNet, SSD300): the boxes that SSD matching gives at least one default box (two
    boxes whose only good default box is the same one: the later takes it). The interdependent network:
    the boxes YOLO assignment keeps (one object per anchor and cell of the stride-16 grid)."""
    from mtlcli.models.base import resize_target

    keep = target["iscrowd"] == 0
    boxes, labels = target["boxes"][keep].float(), target["labels"][keep]
    if name in ("ivanet", "ssd300_vgg16", "imtl"):
        frame = resize_target({"boxes": boxes}, tuple(target["semantic"].shape[-2:]), tuple(model.input_size))["boxes"]
    if name in ("ivanet", "ssd300_vgg16"):
        from mtlcli.ops.multibox import match_default_boxes

        matched = match_default_boxes(model.default_boxes, frame)
        return torch.isin(torch.arange(len(boxes)), matched[matched >= 0])
    if name == "imtl":
        from mtlcli.models.imtl_detector import assign_targets

        h, w = model.input_size[0] // 16, model.input_size[1] // 16
        anchors = model.anchors.reshape(-1, 2)
        # each box's own slot (anchor, cell); assign_targets keeps the first box claiming a slot
        slots = [
            int(
                assign_targets(
                    frame[i : i + 1], labels[i : i + 1], anchors, (h, w), (16.0, 16.0), model.anchors.shape[1]
                )["index"]
            )
            for i in range(len(boxes))
        ]
        return torch.tensor([slot not in slots[:i] for i, slot in enumerate(slots)])
    return torch.ones(len(boxes), dtype=torch.bool)


def boxes_found(output: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N] bool over the non-crowd ground-truth boxes: a detection of the same class covers the box at
    IoU >= 0.5 among the top-2N scores."""
    from torchvision.ops import box_iou

    keep = target["iscrowd"] == 0
    boxes, labels = target["boxes"][keep], target["labels"][keep]
    top = output["scores"].argsort(descending=True)[: 2 * len(boxes)]
    if len(top) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    iou = box_iou(boxes, output["boxes"][top]) * (labels[:, None] == output["labels"][top][None])
    return iou.max(dim=1).values >= BOX_IOU


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_overfits_two_images(name, samples):
    """A short Adam run on two images makes the outputs on those images agree with their targets: the
    semantic map (frequency-weighted IoU >= 0.9 at the model's output stride, see OVERFIT) and the boxes (every box
    the target coding holds found at IoU >= 0.5 by the top scores). A broken target pipeline (frame,
    box coding, label offset, matching) fails this."""
    from tests.models.training import short_run

    ds, _ = samples
    pairs = [(img, t) for img, t in (ds[i] for i in range(len(ds))) if len(t["boxes"]) > 0][:2]
    images = [img.as_subclass(torch.Tensor) for img, _ in pairs]
    targets = [
        {k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for _, t in pairs
    ]
    _, det, seg, _ = TINY[name]
    steps, lr, stride, semantic_floor = OVERFIT[name]
    torch.manual_seed(0)
    kwargs = _kwargs_for(name, len(ds.det_classes), len(ds.seg_classes))
    if "box_batch_size_per_image" in kwargs:
        kwargs["box_batch_size_per_image"] = OVERFIT_ROIS
    model = build_model(name, **kwargs)
    if name in FROZEN_TRUNK:
        model.get_submodule(FROZEN_TRUNK[name]).requires_grad_(False)
    before, after = short_run(model, images, targets, steps, lr=lr, optimizer="adam", anneal=True)
    assert after < 0.8 * before, (before, after)
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out, target in zip(outputs, targets, strict=True):
        if seg:
            iou = semantic_iou(out["sem_seg"], target["semantic"], stride)
            assert iou >= semantic_floor, f"semantic IoU {iou:.3f}"
        if det:
            held, found = held_boxes(name, model, target), boxes_found(out, target)
            assert held.sum() >= 0.75 * len(held), f"the coding holds only {int(held.sum())} of {len(held)} boxes"
            missed = (held & ~found).nonzero().flatten().tolist()
            assert not missed, f"boxes {missed} of {len(held)} not found ({int(held.sum())} held by the coding)"
