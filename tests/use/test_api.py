"""The Python API (`mtlcli.load_model`) and checkpoints that stand alone; the docs/use.md example runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.engine.checkpoint import load_checkpoint
from mtlcli.errors import UserError
from tests.use.conftest import write_image

CITYSCAPES_DET = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def test_checkpoints_carry_their_classes_and_best_holds_weights_only(ivanet_run):
    best = load_checkpoint(ivanet_run / "checkpoints" / "best.pt")
    last = load_checkpoint(ivanet_run / "checkpoints" / "last.pt")
    for state in (best, last):
        assert state["classes"]["det_classes"] == CITYSCAPES_DET
        assert len(state["classes"]["seg_classes"]) == 19 == len(state["classes"]["palette"])
        assert state["classes"]["cityscapes"] and state["recipe"]["model"]["name"] == "ivanet"
    assert set(best) == {"model", "recipe", "classes", "iteration", "best"}  # no optimiser state
    assert {"optimizer", "schedule", "scaler", "rng"} <= set(last)
    best_size = (ivanet_run / "checkpoints" / "best.pt").stat().st_size
    assert best_size < 0.5 * (ivanet_run / "checkpoints" / "last.pt").stat().st_size


def test_load_model_needs_no_dataset_and_takes_every_image_kind(ivanet_run, tmp_path):
    from mtlcli import load_model

    # a checkpoint copied away from its run, with the recipe's dataset nowhere: the classes still come along
    ckpt = tmp_path / "model.pt"
    shutil.copy(ivanet_run / "checkpoints" / "best.pt", ckpt)
    state = torch.load(ckpt, weights_only=True)
    state["recipe"]["data"]["root"] = str(tmp_path / "gone")
    torch.save(state, ckpt)
    model = load_model(ckpt)
    assert model.det_classes == CITYSCAPES_DET and not model.network.training

    png = write_image(tmp_path / "a.png", (50, 70))
    jpg = write_image(tmp_path / "b.jpg", (41, 33), mode="L")
    array = np.asarray(Image.open(png))
    kinds = [
        png,
        str(jpg),
        Image.open(png),
        array,
        torch.from_numpy(array.copy()).permute(2, 0, 1),
        torch.rand(3, 30, 40),
    ]
    results = model.predict(kinds, score_threshold=0.0, batch_size=4)
    assert [r.size for r in results] == [(50, 70), (41, 33), (50, 70), (50, 70), (50, 70), (30, 40)]
    for r in results:
        assert r.semantic.shape == r.size and r.semantic.dtype == torch.int64
        assert int(r.semantic.max()) < 19
        assert r.boxes.shape == (len(r), 4) and r.scores.shape == r.labels.shape == (len(r),)
        assert r.class_names == [CITYSCAPES_DET[k - 1] for k in r.labels.tolist()]
        if len(r):
            assert (r.boxes[:, 2] <= r.size[1]).all() and (r.boxes[:, 3] <= r.size[0]).all()
    # a path, a PIL image and an array of the same picture give the same answer; one image gives a Result
    single = model.predict(png, score_threshold=0.0)
    assert torch.equal(single.semantic, results[0].semantic) and torch.equal(results[2].semantic, results[3].semantic)
    assert torch.allclose(single.scores, results[3].scores)
    high = model.predict(png, score_threshold=0.9)
    assert (high.scores >= 0.9).all() and len(high) <= len(single)
    coco = single.to_coco(7, model.det_category_ids)
    assert all(c["image_id"] == 7 and c["category_name"] == CITYSCAPES_DET[c["category_id"] - 1] for c in coco)
    overlay = model.draw(png, single)
    assert overlay.dtype == torch.uint8 and overlay.shape[-1] == 70 and overlay.shape[-2] >= 50


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4, 5), np.uint8), "HxWx3"),
        (torch.zeros(2, 3, 4, 4), r"\[3, H, W\]"),
        (42, "cannot read an image"),
        ("nope.png", "does not exist"),
    ],
)
def test_bad_images_are_one_user_error(ivanet_model, bad, match):
    with pytest.raises(UserError, match=match):
        ivanet_model.predict(bad)


def test_load_model_errors(tmp_path):
    from mtlcli import load_model

    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nothing")
    with pytest.raises(UserError, match="no checkpoints"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="device"):
        load_model(tmp_path, device="tpu:0")


def test_docs_example_runs(ivanet_run, tmp_path, monkeypatch, capsys):
    """The Python block of docs/use.md, with the run and the image put where it expects them."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "use.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    code = code.replace("runs/ivanet-tiny-synthetic/exp1", str(ivanet_run))
    write_image(tmp_path / "street.png", (64, 128))
    exec(compile(code, "docs/use.md", "exec"), {})
    out = capsys.readouterr().out
    assert "semantic map (64, 128)" in out


def test_result_with_masks_to_coco_and_overlay():
    """Mask models: RLE per detection in the image frame, the original category id, masks drawn."""
    from pycocotools import mask as mask_utils

    from mtlcli.api import output_to_result
    from mtlcli.engine.predict import render_result

    h, w = 20, 30
    masks = torch.zeros(2, 1, h, w)
    masks[0, 0, 2:8, 3:9] = 0.9
    masks[1, 0, 10:15, 20:28] = 0.2  # below 0.5: an empty mask
    output = {
        "boxes": torch.tensor([[3.0, 2, 9, 8], [20, 10, 28, 15]]),
        "scores": torch.tensor([0.8, 0.5]),
        "labels": torch.tensor([2, 1]),
        "masks": masks,
        "sem_seg": torch.rand(3, h, w),
    }
    result = output_to_result(output, ["cat", "dog"], ["bg", "cat", "dog"], (h, w), score_threshold=0.6)
    assert len(result) == 1 and result.class_names == ["dog"] and result.masks.shape == (1, h, w)
    (coco,) = result.to_coco(5, category_ids=[17, 42])
    assert coco["category_id"] == 42 and coco["bbox"] == [3.0, 2.0, 6.0, 6.0]
    assert mask_utils.decode(coco["segmentation"]).sum() == 36
    panel = render_result(torch.zeros(3, h, w), result, ["cat", "dog"], [[0, 0, 0], [255, 0, 0], [0, 255, 0]])
    assert panel.shape[1] > h and panel[:, 4, 5].sum() > 0  # a legend below; the mask is drawn


def test_result_api_as_users_of_the_anchors_expect(ivanet_model, tmp_path):
    """to_json / save / plot / numpy / cpu / to_coco with the dataset's ids; stream=True; every layout."""
    import inspect
    import json
    import types

    from mtlcli import load_model

    assert inspect.signature(load_model).parameters["device"].default == "auto"
    png = write_image(tmp_path / "a.png", (50, 70))
    array = np.asarray(Image.open(png))
    r = ivanet_model.predict(png, score_threshold=0.0, max_det=5)
    assert 0 < len(r) <= 5
    data = json.loads(r.to_json())
    assert data["size"] == [50, 70] and len(data["detections"]) == len(r)
    assert data["detections"][0]["class_name"] == r.class_names[0] and sum(data["semantic"]["classes"].values()) == 3500
    picture = r.plot()
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] == 70 and picture.shape[0] > 50  # the legend below the image
    r.save(tmp_path / "out" / "r.json")
    r.save(tmp_path / "out" / "r.png")
    assert json.loads((tmp_path / "out" / "r.json").read_text())["size"] == [50, 70]
    assert np.asarray(Image.open(tmp_path / "out" / "r.png")).shape == picture.shape
    n = r.numpy()
    assert isinstance(n.boxes, np.ndarray) and n.semantic.dtype == np.int64 and isinstance(n.cpu().boxes, torch.Tensor)
    ids = r.to_coco(1)
    assert [c["category_id"] for c in ids] == [ivanet_model.det_category_ids[k - 1] for k in r.labels.tolist()]
    # the same picture in every layout gives the same semantic map
    layouts = [
        array,  # HWC uint8
        array.astype(np.float32) / 255,  # HWC float 0..1
        torch.from_numpy(array.copy()),  # HWC tensor
        torch.from_numpy(array.copy()).permute(2, 0, 1),  # CHW tensor
        np.concatenate([array, np.full((50, 70, 1), 255, np.uint8)], axis=2),  # RGBA
    ]
    stream = ivanet_model.predict(iter(layouts), stream=True, batch_size=2)
    assert isinstance(stream, types.GeneratorType)
    for got in stream:
        assert torch.equal(got.semantic, r.semantic)
    grey = ivanet_model.predict(np.asarray(Image.open(png).convert("L")))
    assert grey.size == (50, 70)
    # knobs: classes by name or label, iou, max_det
    only = ivanet_model.predict(png, score_threshold=0.0, classes=["car"])
    assert set(only.class_names) <= {"car"}
    with pytest.raises(UserError, match="unknown class 'cat'"):
        ivanet_model.predict(png, classes=["cat"])
    loose = ivanet_model.predict(png, score_threshold=0.0, iou=0.99)
    assert len(loose) >= len(ivanet_model.predict(png, score_threshold=0.0))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((4, 4, 3), 2.0, np.float32), "0..1"),
        (np.zeros((4, 4, 3), bool), "uint8 or float"),
        (torch.zeros(3, 4, 4, dtype=torch.int32), "uint8 or float"),
    ],
)
def test_bad_layouts_are_one_line(ivanet_model, bad, match):
    with pytest.raises(UserError, match=match):
        ivanet_model.predict(bad)
