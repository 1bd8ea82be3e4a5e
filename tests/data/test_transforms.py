"""Augmentation pipelines keep image, boxes, masks, semantic and dt maps aligned.

The fixture's image colour encodes the class of each pixel (tests/data/test_dataset.py), so after any
geometric augmentation the pixels under the semantic map and under each instance mask must still have
their class's colour, and each box must still be the extent of its mask.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from mtlcli.data.dataset import PreparedDataset
from mtlcli.data.transforms import IMAGE_FILL, OPTIONS, DropBoxesOutsideCrop, Pipeline, SanitizeBoxes, build_transforms
from mtlcli.errors import UserError
from tests.data.test_dataset import IGNORE_RGB, PALETTE, build_tiny_prepared

COLOURS = torch.tensor(PALETTE, dtype=torch.float32) / 255


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_prepared(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def sample(tiny):
    return PreparedDataset(tiny, "train")[0]


def _interior(region: torch.Tensor) -> torch.Tensor:
    """Pixels of a bool map [H, W] whose 4 neighbours are in it too (away from resampling blur)."""
    r = region.clone()
    r[1:] &= region[:-1]
    r[:-1] &= region[1:]
    r[:, 1:] &= region[:, :-1]
    r[:, :-1] &= region[:, 1:]
    r[0] = r[-1] = False
    r[:, 0] = r[:, -1] = False
    return r


def _colour_ok(image: torch.Tensor, where: torch.Tensor, rgb: torch.Tensor, tol: float = 0.08) -> bool:
    px = image[:, where].T  # [P, 3]
    return bool(((px - rgb).abs().max(dim=1).values < tol).float().mean() > 0.97) if px.numel() else True


def assert_aligned(image: torch.Tensor, t: dict) -> None:
    image = image.as_subclass(torch.Tensor)
    h, w = image.shape[-2:]
    sem, dt = t["semantic"], t["dt"]
    assert type(sem) is tv_tensors.Mask and type(dt) is tv_tensors.Mask
    assert sem.dtype == torch.int64 and dt.dtype == torch.int64 and sem.shape == dt.shape == (h, w)
    assert set(sem.unique().tolist()) <= {0, 1, 2, 255}
    for c, rgb in enumerate(COLOURS):
        # two pixels in from each edge: SSD's crop can blow a 12-pixel window up 5x, and bilinear blends
        # the colours of neighbouring source pixels over ~2 output pixels there
        assert _colour_ok(image, _interior(_interior(sem == c)), rgb), f"pixels of class {c} lost their colour"
    # pixels showing the padding colour are ignore in the semantic map and background in dt
    fill = torch.tensor(IMAGE_FILL)
    padded = _interior((image - fill[:, None, None]).abs().max(dim=0).values < 0.01)
    assert (sem[padded] == 255).all() and (dt[padded] == 0).all()
    white = _interior((image - torch.tensor(IGNORE_RGB)[:, None, None] / 255).abs().max(dim=0).values < 0.01)
    assert (sem[white] == 255).all(), "the unlabelled band lost its ignore label"

    boxes, masks, labels, crowd = t["boxes"], t["masks"], t["labels"], t["iscrowd"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.canvas_size == (h, w)
    assert len(boxes) == len(masks) == len(labels) == len(crowd) and masks.shape[-2:] == (h, w)
    for box, mask, label in zip(boxes, masks, labels, strict=True):
        assert mask.any(), "a kept box lost its mask"
        assert _colour_ok(image, _interior(_interior(mask.bool())), COLOURS[label]), "mask moved away from its object"
        ys, xs = torch.nonzero(mask, as_tuple=True)
        extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert (box - extent).abs().max() <= 1.5, f"box {box.tolist()} is not its mask's extent {extent.tolist()}"
    # dt stays a dense target even where a box was dropped: it must lie on objects (person/car pixels)
    assert ((sem[dt > 0] == 1) | (sem[dt > 0] == 2)).all(), "dt bins off the objects"
    assert t["image_id"] == 1 and t["stem"] == "a" and t["orig_size"] == (40, 64)


def test_none_and_eval_are_identity(sample):
    image, t = sample
    for tf in (
        build_transforms("none", train=True),
        build_transforms("ssd", train=False, min_size=300),
        build_transforms("cityscapes", train=False, crop_size=[8, 8]),
    ):
        out_image, out_t = tf(image, t)
        assert out_image is image and out_t is t


def test_flip_moves_known_boxes_exactly(sample):
    image, t = sample
    tf = build_transforms("cityscapes", train=True, flip=True)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, o = tf(image, t)
        if torch.equal(out_image, image):
            seen.add("kept")
            assert o["boxes"].tolist() == t["boxes"].tolist()
            assert torch.equal(o["semantic"], t["semantic"])
        else:
            seen.add("flipped")
            assert torch.equal(out_image, image.flip(-1))
            assert o["boxes"].tolist() == [[46, 8, 58, 28], [4, 22, 30, 38], [8, 4, 20, 10]]  # x -> 64 - x
            assert torch.equal(o["masks"], t["masks"].flip(-1))
            assert torch.equal(o["semantic"], t["semantic"].flip(-1)) and torch.equal(o["dt"], t["dt"].flip(-1))
        assert o["labels"].tolist() == [1, 2, 1] and o["iscrowd"].tolist() == [0, 0, 1]
    assert seen == {"kept", "flipped"}


def test_crop_drops_boxes_whose_centre_leaves(sample):
    image, t = sample
    # columns 16..47 stay: the person (x 6..18, centre 12) and the crowd (x 44..56, centre 50) are cut
    # but their centres left, so they go; the car (x 34..60, centre 47) stays, clipped
    tf = Pipeline("test", [v2.SetClampingMode(None), v2.CenterCrop((40, 32)), DropBoxesOutsideCrop(), SanitizeBoxes()])
    out_image, o = tf(image, t)
    assert out_image.shape == (3, 40, 32)
    assert o["boxes"].tolist() == [[18, 22, 32, 38]] and o["labels"].tolist() == [2] and o["iscrowd"].tolist() == [0]
    assert o["masks"].shape == (1, 40, 32) and torch.equal(o["masks"][0], t["masks"][1][:, 16:48])
    assert torch.equal(o["semantic"], t["semantic"][:, 16:48]) and o["boxes"].clamping_mode == "soft"
    assert_aligned(out_image, o)


def test_cityscapes_pipeline_stays_aligned(sample):
    image, t = sample
    tf = build_transforms(
        "cityscapes", train=True, min_size=48, max_size=96, scale_range=[0.75, 1.5], crop_size=[40, 56], flip=True
    )
    dropped = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, o = tf(image, t)
        assert out_image.shape == (3, 40, 56)
        assert_aligned(out_image, o)
        dropped += len(o["boxes"]) < 3
    assert dropped  # some crops do cut objects away


def test_crop_larger_than_image_pads_with_ignore(sample):
    image, t = sample
    tf = build_transforms("cityscapes", train=True, crop_size=[60, 80], flip=False)
    torch.manual_seed(0)
    out_image, o = tf(image, t)
    assert out_image.shape == (3, 60, 80) and o["boxes"].shape == (3, 4)
    assert (o["semantic"] == 255).sum() == 60 * 80 - 40 * 64 + (t["semantic"] == 255).sum()
    assert (o["dt"] > 0).sum() == (t["dt"] > 0).sum()
    assert_aligned(out_image, o)


def test_ssd_pipeline_stays_aligned(sample):
    image, t = sample
    tf = build_transforms("ssd", train=True, min_size=64, zoom_out=2.0, photometric=False)
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, o = tf(image, t)
        assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
        assert_aligned(out_image, o)


def test_ssd_photometric_changes_colours_only(sample):
    image, t = sample
    tf = build_transforms("ssd", train=True, zoom_out=1.0, iou_crop=False, flip=False)
    changed = False
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, o = tf(image, t)
        assert out_image.shape == image.shape and 0 <= out_image.min() and out_image.max() <= 1
        assert torch.equal(o["boxes"], t["boxes"]) and torch.equal(o["semantic"], t["semantic"])
        changed |= not torch.allclose(out_image, image)
    assert changed


def test_image_without_boxes(tiny):
    image, t = PreparedDataset(tiny, "train")[1]
    for name in ("ssd", "cityscapes"):
        torch.manual_seed(0)
        out_image, o = build_transforms(name, train=True, min_size=32, crop_size=[16, 16])(image, t)
        assert o["boxes"].shape == (0, 4) and o["masks"].shape == (0, *out_image.shape[-2:])


def test_options_are_validated():
    with pytest.raises(UserError, match="unknown augmentation 'autoaugment'; choose one of: none, ssd, cityscapes"):
        build_transforms("autoaugment", train=True)
    with pytest.raises(UserError, match="unknown augmentation option.*crop; valid options: min_size"):
        build_transforms("cityscapes", train=True, crop=[1, 2])
    with pytest.raises(UserError, match="data.crop_size"):
        build_transforms("cityscapes", train=True, crop_size=[0, 32])
    with pytest.raises(UserError, match="data.scale_range"):
        build_transforms("cityscapes", train=True, scale_range=[2.0, 1.0])
    with pytest.raises(UserError, match="data.flip must be true or false"):
        build_transforms("ssd", train=True, flip="yes")
    # the whole [data] table can be passed through
    tf = build_transforms(
        "cityscapes",
        train=True,
        dataset="cityscapes",
        root="",
        train_split="train",
        val_split="val",
        augmentation="cityscapes",
        label_map={},
        **OPTIONS,
    )
    assert "Sanitize" in repr(tf)


@pytest.mark.parametrize(
    "name, options",
    [
        ("cityscapes", dict(min_size=48, max_size=160, scale_range=[0.5, 2.0], crop_size=[48, 64])),
        ("ssd", dict(min_size=96)),
    ],
)
def test_pipelines_on_prepared_cityscapes(synthetic_prepared: Path, name: str, options: dict):
    ds = PreparedDataset(synthetic_prepared, "train", transforms=build_transforms(name, train=True, **options))
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, t = ds[i]
        h, w = image.shape[-2:]
        assert t["semantic"].shape == t["dt"].shape == t["masks"].shape[-2:] == (h, w) == t["boxes"].canvas_size
        assert 0 <= image.min() and image.max() <= 1 and t["orig_size"] == (64, 128)
        for box, label, crowd, mask in zip(t["boxes"], t["labels"], t["iscrowd"], t["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert len(ys), "a kept box lost its mask"
            extent = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            # the mask lies in its box; thin parts of real masks may vanish when downsampled, the box stays
            assert (extent[0, :2] >= box[:2] - 1).all() and (extent[0, 2:] <= box[2:] + 1).all()
            if not crowd:
                under = t["semantic"][mask.bool()]
                assert (under == ds.seg_classes.index(ds.det_classes[label - 1])).float().mean() > 0.8


def test_color_jitter_changes_colours_not_geometry():
    """color_jitter (DATNet's "random color jitter") changes the pixels, never the boxes or the size."""
    from torchvision import tv_tensors

    from mtlcli.data.transforms import build_transforms

    torch.manual_seed(0)
    img = tv_tensors.Image(torch.rand(3, 40, 60))
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor([[5.0, 5.0, 30.0, 25.0]]), format="XYXY", canvas_size=(40, 60)),
        "labels": torch.tensor([1]),
    }
    jitter = build_transforms("cityscapes", True, flip=False, color_jitter=0.4)
    out, t = jitter(img, dict(target))
    assert out.shape == img.shape and torch.equal(t["boxes"], target["boxes"])
    assert not torch.allclose(out, img, atol=1e-2)
    plain, _ = build_transforms("cityscapes", True, flip=False)(img, dict(target))
    torch.testing.assert_close(plain, img, atol=1 / 255, rtol=0)


def test_deferred_color_jitter_on_the_device_equals_the_loader_one(synthetic_prepared):
    """In the training loader (compact samples) the jitter's factors are drawn per sample and applied by
    `to_device` after the float conversion: the same pixels (to uint8 rounding) as a jitter applied in
    the loader, the same draws, and nothing of it reaches the model's targets."""
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.data.transforms import build_transforms
    from mtlcli.engine.data import to_device

    aug = build_transforms("cityscapes", True, flip=False, min_size=48, crop_size=[40, 72], color_jitter=0.4)
    here = PreparedDataset(synthetic_prepared, "train", transforms=aug, compact=False)
    deferred = PreparedDataset(synthetic_prepared, "train", transforms=aug, compact=True)
    for i in range(3):
        torch.manual_seed(i)
        img, t = here[i]
        torch.manual_seed(i)
        raw, td = deferred[i]
        assert raw.dtype == torch.uint8 and td["color_jitter"].shape == (7,) and "color_jitter" not in t
        (out,), (moved,) = to_device([raw], [td], torch.device("cpu"))
        assert "color_jitter" not in moved and torch.equal(moved["boxes"], t["boxes"])
        torch.testing.assert_close(out, img.as_subclass(torch.Tensor), atol=1.01 / 255, rtol=0)
        assert not torch.allclose(out, raw.float() / 255, atol=2 / 255)  # the jitter did happen
