"""PreparedDataset on a hand-built prepared dataset whose every pixel and box is known."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from mtlcli.data.dataset import PreparedDataset, collate
from mtlcli.data.prepared import (
    DatasetMeta,
    ImageJob,
    ImageResult,
    encode_instance,
    run_prepare,
    save_png,
    semantic_path,
)
from mtlcli.data.targets import dt_bins
from mtlcli.errors import UserError

DET = ["person", "car"]
SEG = ["road", "person", "car"]
PALETTE = [[0, 0, 255], [255, 0, 0], [0, 255, 0]]
IGNORE_RGB = [255, 255, 255]


def _rect(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def tiny_layout():
    """Ground truth of the two images: a.png (40x64: person, car, crowd person, ignore band) and b.png
    (24x32: road only, no semantic/dt PNG)."""
    shape = (40, 64)
    person = _rect(shape, (8, 28), (6, 18))  # xywh [6, 8, 12, 20]
    car = _rect(shape, (22, 38), (34, 60))  # xywh [34, 22, 26, 16]
    crowd = _rect(shape, (4, 10), (44, 56))  # a crowd of persons, xywh [44, 4, 12, 6]
    semantic = np.zeros(shape, dtype=np.uint8)
    semantic[person | crowd] = 1
    semantic[car] = 2
    semantic[0:3] = 255  # an unlabelled band at the top
    return {
        "a": {"shape": shape, "instances": [(person, 1, 0), (car, 2, 0), (crowd, 1, 1)], "semantic": semantic},
        "b": {"shape": (24, 32), "instances": [], "semantic": None},
    }


def _image_from_semantic(semantic: np.ndarray) -> np.ndarray:
    """RGB whose colour encodes the class: palette colour per class, white where ignored."""
    lut = np.array(PALETTE + [IGNORE_RGB] * (256 - len(PALETTE)), dtype=np.uint8)
    return lut[semantic]


def _prepare_one(job: ImageJob, out: Path) -> ImageResult:
    gt = job.payload
    h, w = gt["shape"]
    if gt["semantic"] is not None:
        save_png(out / job.split / "semantic" / f"{job.stem}.png", gt["semantic"])
        masks = [m for m, _, crowd in gt["instances"] if not crowd]
        save_png(out / job.split / "dt" / f"{job.stem}.png", dt_bins(masks, (h, w)))
    anns = [encode_instance(m, cat, crowd) for m, cat, crowd in gt["instances"]]
    return ImageResult(job.split, job.file_name, job.stem, height=h, width=w, annotations=anns)


def build_tiny_prepared(root: Path) -> Path:
    """Write a source folder and its prepared dataset (split "train") under root; return DATA."""
    src, data = root / "src", root / "data"
    layout = tiny_layout()
    jobs = []
    for stem, gt in layout.items():
        semantic = gt["semantic"] if gt["semantic"] is not None else np.zeros(gt["shape"], dtype=np.uint8)
        (src / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image_from_semantic(semantic)).save(src / "images" / f"{stem}.png")
        jobs.append(ImageJob("train", f"images/{stem}.png", stem, gt))
    meta = DatasetMeta(
        name="tiny", source=str(src), splits=["train"], det_classes=DET, seg_classes=SEG, palette=PALETTE
    )
    with contextlib.redirect_stdout(io.StringIO()):
        run_prepare(data, meta, jobs, _prepare_one, workers=1, quiet=True)
    return data


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return build_tiny_prepared(tmp_path)


def test_sample_matches_ground_truth_exactly(tiny: Path):
    ds = PreparedDataset(tiny, "train")
    assert len(ds) == 2 and ds.det_classes == DET and ds.seg_classes == SEG and ds.palette == PALETTE
    image, t = ds[0]
    gt = tiny_layout()["a"]

    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, 40, 64)
    expected_rgb = torch.from_numpy(_image_from_semantic(gt["semantic"])).permute(2, 0, 1).float() / 255
    assert torch.equal(image.as_subclass(torch.Tensor), expected_rgb)

    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and t["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert t["boxes"].canvas_size == (40, 64) and t["boxes"].dtype == torch.float32
    assert t["boxes"].tolist() == [[6, 8, 18, 28], [34, 22, 60, 38], [44, 4, 56, 10]]
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [1, 2, 1]
    assert t["iscrowd"].dtype == torch.int64 and t["iscrowd"].tolist() == [0, 0, 1]

    assert (
        isinstance(t["masks"], tv_tensors.Mask) and t["masks"].dtype == torch.uint8 and t["masks"].shape == (3, 40, 64)
    )
    for k, (mask, _, _) in enumerate(gt["instances"]):
        assert torch.equal(t["masks"][k].bool(), torch.from_numpy(mask))

    assert isinstance(t["semantic"], tv_tensors.Mask) and t["semantic"].dtype == torch.int64
    assert torch.equal(t["semantic"].as_subclass(torch.Tensor), torch.from_numpy(gt["semantic"]).long())
    expected_dt = dt_bins([gt["instances"][0][0], gt["instances"][1][0]], (40, 64))
    assert isinstance(t["dt"], tv_tensors.Mask) and t["dt"].dtype == torch.int64
    assert torch.equal(t["dt"].as_subclass(torch.Tensor), torch.from_numpy(expected_dt).long())
    assert t["dt"].max() == 3 and (t["dt"][torch.from_numpy(gt["instances"][2][0])] == 0).all()  # crowd has no dt

    assert t["image_id"] == 1 and t["stem"] == "a" and t["orig_size"] == (40, 64)


def test_image_without_objects_or_label_pngs(tiny: Path):
    image, t = PreparedDataset(tiny, "train")[1]
    assert image.shape == (3, 24, 32) and t["stem"] == "b" and t["orig_size"] == (24, 32)
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["iscrowd"].shape == (0,)
    assert t["masks"].shape == (0, 24, 32)
    assert (t["semantic"] == 255).all() and t["semantic"].shape == (24, 32)
    assert (t["dt"] == 0).all() and t["dt"].shape == (24, 32)


def test_label_map_merges_drops_and_ignores(tiny: Path):
    ds = PreparedDataset(
        tiny, "train", label_map={"det": {"car": "vehicle"}, "seg": {"person": "thing", "car": "thing"}}
    )
    assert ds.det_classes == ["vehicle"] and ds.seg_classes == ["thing"]
    assert ds.meta.det_classes == ["vehicle"] and ds.palette == [PALETTE[1]]
    _, t = ds[0]
    gt = tiny_layout()["a"]
    # persons (crowd included) are dropped; the car becomes class 1
    assert t["boxes"].tolist() == [[34, 22, 60, 38]] and t["labels"].tolist() == [1] and t["iscrowd"].tolist() == [0]
    assert t["masks"].shape == (1, 40, 64) and torch.equal(
        t["masks"][0].bool(), torch.from_numpy(gt["instances"][1][0])
    )
    sem = gt["semantic"]
    expected = np.where((sem == 1) | (sem == 2), 0, 255)
    assert torch.equal(t["semantic"].as_subclass(torch.Tensor), torch.from_numpy(expected).long())
    assert [c["name"] for c in ds.coco.loadCats(ds.coco.getCatIds())] == ["vehicle"]
    assert len(ds.coco.getAnnIds()) == 1 and ds.coco.loadAnns(ds.coco.getAnnIds())[0]["category_id"] == 1


def test_label_map_first_appearance_order(tiny: Path):
    ds = PreparedDataset(
        tiny, "train", label_map={"det": {"car": "b", "person": "a"}, "seg": {"car": "z", "road": "y"}}
    )
    assert ds.det_classes == ["b", "a"] and ds.seg_classes == ["z", "y"] and ds.palette == [PALETTE[2], PALETTE[0]]
    _, t = ds[0]
    assert t["labels"].tolist() == [2, 1, 2]
    sem = t["semantic"]
    assert (
        set(sem.unique().tolist()) == {0, 1, 255}
        and (sem[torch.from_numpy(tiny_layout()["a"]["semantic"] == 1)] == 255).all()
    )


def test_coco_eval_on_mapped_predictions(tiny: Path):
    from pycocotools.cocoeval import COCOeval

    ds = PreparedDataset(tiny, "train", label_map={"det": {"person": "thing", "car": "thing"}})
    dets = []
    for i in range(len(ds)):
        _, t = ds[i]
        for box, label, crowd in zip(t["boxes"].tolist(), t["labels"].tolist(), t["iscrowd"].tolist(), strict=True):
            if not crowd:
                x1, y1, x2, y2 = box
                dets.append(
                    {"image_id": t["image_id"], "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.9}
                )
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_user_errors(tiny: Path, tmp_path: Path):
    with pytest.raises(UserError, match="split 'val'"):
        PreparedDataset(tiny, "val")
    with pytest.raises(UserError, match="no such prepared dataset"):
        PreparedDataset(tmp_path / "nowhere", "train")
    with pytest.raises(UserError, match="'truck'.*person, car"):
        PreparedDataset(tiny, "train", label_map={"det": {"truck": "vehicle"}})
    with pytest.raises(UserError, match="only 'seg' and 'det'"):
        PreparedDataset(tiny, "train", label_map={"instances": {}})
    ds = PreparedDataset(tiny, "train")
    (tmp_path / "src" / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"a\.png: cannot read image"):
        ds[0]
    semantic_path(tiny, "train", "b").write_bytes(b"")
    with pytest.raises(UserError, match=r"b\.png: cannot read semantic"):
        ds[1]


def test_collate_keeps_lists(tiny: Path):
    ds = PreparedDataset(tiny, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and [tuple(im.shape) for im in images] == [(3, 40, 64), (3, 24, 32)]
    assert [t["stem"] for t in targets] == ["a", "b"] and targets[0]["boxes"].shape == (3, 4)
    assert collate([]) == ([], [])


def test_prepared_cityscapes_instances_agree_with_semantic(synthetic_prepared: Path):
    ds = PreparedDataset(synthetic_prepared, "val")
    assert len(ds) == 3 and ds.det_classes[:2] == ["person", "rider"] and len(ds.seg_classes) == 19
    for i in range(len(ds)):
        image, t = ds[i]
        assert t["boxes"].canvas_size == tuple(image.shape[-2:]) == t["orig_size"] == (64, 128)
        for box, label, crowd, mask in zip(t["boxes"], t["labels"], t["iscrowd"], t["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight extent, x2 exclusive
            if not crowd:
                under = t["semantic"][mask.bool()]
                assert (under == ds.seg_classes.index(ds.det_classes[label - 1])).float().mean() > 0.9
                assert (t["dt"][mask.bool()] > 0).all()


def test_dataset_and_pipelines_pickle(tiny: Path):
    import pickle

    from mtlcli.data.transforms import build_transforms

    for name in ("ssd", "cityscapes"):  # DataLoader workers started by spawn/forkserver pickle both
        ds = PreparedDataset(
            tiny, "train", transforms=build_transforms(name, train=True, min_size=32, crop_size=[24, 24])
        )
        clone = pickle.loads(pickle.dumps(ds))
        torch.manual_seed(0)
        image, t = clone[0]
        assert image.shape[-2:] == t["semantic"].shape and t["stem"] == "a"
