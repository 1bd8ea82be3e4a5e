"""`mtl prepare folder`: class-index masks + a class list -> things and stuff; instances from connected
components, or from a COCO instances.json when given; bad masks skipped with their reason."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from mtlcli.cli.main import main
from mtlcli.data.prepared import DatasetMeta, encode_instance, read_label_png


def _mtl(args):
    try:
        return main(args) or 0
    except SystemExit as exc:
        return int(exc.code or 0)


def _folder(root, instances=False):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("grass\nsky\nsheep, thing\n# comment\nfence\n")
    mask = np.zeros((20, 30), np.uint8)
    mask[:5] = 1
    mask[10:14, 2:6] = 2  # two sheep, apart
    mask[10:14, 20:26] = 2
    mask[19, :] = 255
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(root / "images" / "a.jpg")
    Image.fromarray(mask).save(root / "masks" / "a.png")
    bad = mask.copy()
    bad[0, 0] = 7
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(root / "images" / "b.jpg")
    Image.fromarray(bad).save(root / "masks" / "b.png")
    if instances:
        m = mask == 2  # one annotated flock
        data = {
            "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
            "annotations": [{"id": 1, "image_id": 1, **encode_instance(m, 9, 0)}],
            "categories": [{"id": 9, "name": "sheep"}],
        }
        (root / "instances.json").write_text(json.dumps(data))
    return mask


def test_folder_with_connected_components(tmp_path, capsys):
    mask = _folder(tmp_path / "src")
    assert _mtl(["prepare", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "data"), "-j", "1"]) == 0
    out = capsys.readouterr().out
    assert "connected components" in out and "holds value 7" in out  # b.png skipped with its reason
    meta = DatasetMeta.load(tmp_path / "data")
    assert meta.seg_classes == ["grass", "sky", "sheep", "fence"] and meta.det_classes == ["sheep"]
    assert meta.thing_classes == ["sheep"]
    inst = json.loads((tmp_path / "data" / "train" / "instances.json").read_text())
    assert [im["stem"] for im in inst["images"]] == ["a"]
    assert sorted(int(mask_utils.area(a["segmentation"])) for a in inst["annotations"]) == [16, 24]
    assert (read_label_png(tmp_path / "data" / "train" / "semantic" / "a.png") == mask).all()


def test_folder_with_instances_json(tmp_path, capsys):
    _folder(tmp_path / "src", instances=True)
    assert _mtl(["prepare", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "data"), "-j", "1"]) == 0
    assert "connected components" not in capsys.readouterr().out
    inst = json.loads((tmp_path / "data" / "train" / "instances.json").read_text())
    assert [(a["category_id"], int(mask_utils.area(a["segmentation"]))) for a in inst["annotations"]] == [(1, 40)]


def test_folder_without_a_class_list_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "src" / "images").mkdir(parents=True)
    assert _mtl(["prepare", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "data")]) == 2
    assert "classes.txt" in capsys.readouterr().err
