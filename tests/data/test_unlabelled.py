"""Unlabelled splits at prepare time: COCO image-info files (their names, their problems as one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtlcli.data.coco import image_info_split
from tests.journeys.test_submit_journey import coco_tree, mtl


def test_image_info_files_name_their_split():
    assert image_info_split(Path("image_info_test-dev2017.json")) == "test-dev"
    assert image_info_split(Path("image_info_test2017.json")) == "test"
    assert image_info_split(Path("image_info_unlabeled2017.json")) == "unlabeled"
    assert image_info_split(Path("my_images.json")) == "my_images"


def _info(src: Path) -> Path:
    return src / "annotations" / "image_info_test-dev2017.json"


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda src: _info(src).write_text(json.dumps({**json.loads(_info(src).read_text()), "annotations": [{}]})),
         "holds annotations"),
        (lambda src: _info(src).write_text(json.dumps({"images": []})), "lacks a list of categories"),
        (lambda src: _info(src).write_text(json.dumps({**json.loads(_info(src).read_text()), "categories": [
            {"id": 1, "name": "person"}]})), "other categories"),
        (lambda src: (src / "test2017").rename(src / "test"), "test2017"),
    ],
)  # fmt: skip
def test_bad_image_info_is_one_line(tmp_path, capsys, damage, says):
    src = coco_tree(tmp_path / "coco")
    damage(src)
    code, _, err = mtl(
        capsys, "prepare", "coco", str(src), "--image-info", str(_info(src)), "--out", str(tmp_path / "o")
    )
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_image_info_alone_prepares_only_the_unlabelled_split(tmp_path, capsys):
    src = coco_tree(tmp_path / "coco")
    for split in ("train", "val"):
        (src / "annotations" / f"instances_{split}2017.json").unlink()
    out = tmp_path / "o"
    code, printed, err = mtl(capsys, "prepare", "coco", str(src), "--image-info", str(_info(src)), "--out", str(out))
    assert code == 0, err
    meta = json.loads((out / "dataset.json").read_text())
    assert (
        meta["splits"] == ["test-dev"] and meta["unlabelled"] == ["test-dev"] and meta["det_category_ids"] == [1, 3, 90]
    )
    assert "test-dev (unlabelled)" in printed
