"""Issue 30, causes 6, 7, 8 and 11 and the prepare items of its Noisy list: a re-prepare killed halfway
leaves the old dataset (never a mix), two prepares into one --out, write guards, label maps of any class
count, COCO entries that cannot be used, JSON nested too deep, `prepare -q`."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.safety.common import cli, coco_dataset, flat, one_line


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_killed_re_prepare_leaves_the_old_dataset(synthetic_source, synthetic_prepared, tmp_path, monkeypatch):
    import mtlcli.data.cityscapes as cityscapes
    from mtlcli.data.dataset import PreparedDataset

    out = tmp_path / "data"
    shutil.copytree(synthetic_prepared, out)
    for png in out.glob("*/semantic/*.png"):  # the "old" dataset: other label maps than a prepare writes now
        Image.fromarray(np.zeros_like(np.asarray(Image.open(png)))).save(png)
    before = _snapshot(out)
    real, calls = cityscapes.prepare_image, []

    def killed_after_two(job, stage):
        calls.append(stage)
        if len(calls) > 2:
            raise KeyboardInterrupt  # Ctrl-C / a kill halfway through the images
        return real(job, stage)

    monkeypatch.setattr(cityscapes, "prepare_image", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        cityscapes.prepare_cityscapes(synthetic_source, out, workers=1, force=True, quiet=True)
    assert calls[0] != out and calls[0].parent == out.parent  # built beside --out, not in it
    assert _snapshot(out) == before  # the old dataset, every byte
    assert not (tmp_path / ".data.mtl-new").exists()
    # a kill -9 leaves the staging folder: the next prepare removes it and swaps the new dataset in
    (tmp_path / ".data.mtl-new" / "train").mkdir(parents=True)
    monkeypatch.setattr(cityscapes, "prepare_image", real)
    cityscapes.prepare_cityscapes(synthetic_source, out, workers=1, force=True, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert _snapshot(out) == _snapshot(synthetic_prepared)
    assert len(PreparedDataset(out, "train")) == 6


def test_a_second_prepare_into_the_same_out_is_refused(synthetic_source, tmp_path, capsys):
    out = tmp_path / "data"
    lock = tmp_path / ".data.mtl.lock"  # what a running prepare holds (the run lock's rule)
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}))
    assert cli(["prepare", "cityscapes", synthetic_source, "--out", out, "-j", "1", "-q"]) == 2
    err = one_line(capsys)
    assert f"cannot prepare into {out}" in err and f"process {os.getppid()}" in err and "preparing" in err
    assert not out.exists()
    lock.write_text(json.dumps({"pid": 2**22 + 7, "host": socket.gethostname(), "started": "then"}))  # dead: stale
    assert cli(["prepare", "cityscapes", synthetic_source, "--out", out, "-j", "1", "-q"]) == 0
    assert not lock.exists() and (out / "dataset.json").is_file()


def test_write_guards(synthetic_source, synthetic_prepared, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.toml").write_text('[model]\nname = "x"\n')
    (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    for out in (run / "checkpoints", run):
        assert cli(["prepare", "cityscapes", synthetic_source, "--out", out, "--force", "-q"]) == 2
        assert "even with --force" in one_line(capsys)
    assert sorted(p.name for p in run.rglob("*")) == ["best.pt", "checkpoints", "recipe.toml"]
    data = tmp_path / "data"
    shutil.copytree(synthetic_prepared, data)
    before = _snapshot(data)
    assert cli(["prepare", "synthetic", "--out", data, "--force", "--train", "1", "--val", "0", "-q"]) == 2
    assert "is the prepared dataset" in one_line(capsys)
    assert _snapshot(data) == before
    source = tmp_path / "city"
    shutil.copytree(synthetic_source, source)
    (source / "img").mkdir()
    Image.new("RGB", (8, 8)).save(source / "img" / "a.png")
    ann = coco_dataset(
        tmp_path / "coco", [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}], [], [{"id": 1, "name": "t"}]
    )
    args = ["prepare", "coco", "--train-json", ann, "--train-images", source / "img", "--out", source, "--force"]
    assert cli(args) == 2
    assert "synthetic city" in one_line(capsys)


def _other(num_categories: int) -> int:
    return num_categories if num_categories != 255 else 1  # the last category, or another than 255


def _wide_coco(root: Path, num_categories: int) -> Path:
    """One 20x30 image: category 255 paints rows 0..9, `_other(num_categories)` rows 10..19."""
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (30, 20), (90, 90, 90)).save(root / "img" / "a.png")
    cats = [{"id": k, "name": f"c{k}"} for k in range(1, num_categories + 1)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 255, "bbox": [0, 0, 30, 10], "segmentation": [], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": _other(num_categories), "bbox": [0, 10, 30, 10], "iscrowd": 0},
    ]
    return coco_dataset(root, [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}], anns, cats)


@pytest.mark.parametrize("num_categories", [255, 300])
def test_label_maps_hold_any_class_count(tmp_path, capsys, num_categories):
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.engine.data import refuse_wide_semantic
    from mtlcli.errors import UserError
    from mtlcli.metrics.segmentation import SegmentationMetric

    ann = _wide_coco(tmp_path / "src", num_categories)
    out = tmp_path / "data"
    assert cli(["prepare", "coco", "--train-json", ann, "--train-images", tmp_path / "src" / "img", "--out", out]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert len(meta["seg_classes"]) == num_categories + 1 and meta["ignore_index"] == 65535
    png = next((out / "train" / "semantic").glob("*.png"))
    stored = np.asarray(Image.open(png))
    assert stored.dtype == np.uint16  # read by PIL, the outside reader
    other = _other(num_categories)
    assert (stored[:10] == 255).all() and (stored[10:] == other).all()
    ds = PreparedDataset(out, "train", targets=("semantic",))
    semantic = ds.decode(0)["semantic"]
    assert int(semantic[0, 0]) == 255 and int(semantic[-1, -1]) == other
    metric = SegmentationMetric(ds.seg_classes, ds.meta.ignore_index)
    metric.update(semantic.clone(), semantic)
    assert metric.matrix[255, 255] == 300 and np.trace(metric.matrix) == 600  # class 255 is counted, none ignored
    with pytest.raises(UserError, match="at most 255"):
        refuse_wide_semantic(ds, frozenset({"semantic"}))
    refuse_wide_semantic(ds, frozenset({"masks"}))  # a detection-only loss trains on it
    mapped = PreparedDataset(out, "train", targets=("semantic",), label_map={"seg": {"c255": "x", f"c{other}": "y"}})
    m = mapped.decode(0)["semantic"]
    assert mapped.meta.ignore_index == 255 and int(m[0, 0]) == 0 and int(m[-1, -1]) == 1


def test_unusable_coco_entries_listed_and_deep_json_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    Image.new("RGB", (30, 20)).save(src / "img" / "a.png")
    box = {"segmentation": [], "iscrowd": 0, "category_id": 1, "image_id": 1}
    anns = [
        {**box, "id": 1, "bbox": [2, 2, 5, 5]},
        {**box, "id": 2, "bbox": [40, 30, 5, 5]},  # wholly outside the 30x20 image
        {**box, "id": [3], "bbox": [2, 2, 5, 5]},  # an id that is a list
        {**box, "id": 4, "image_id": {"x": 1}, "bbox": [2, 2, 5, 5]},
    ]
    ann = coco_dataset(
        src, [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}], anns, [{"id": 1, "name": "t"}]
    )
    args = ["prepare", "coco", "--train-json", ann, "--train-images", src / "img"]
    assert cli([*args, "--out", tmp_path / "d1"]) == 0
    printed = flat(capsys.readouterr().out)
    assert "lies wholly outside its 30x20 image" in printed and printed.count("an id that is a list or an object") == 2
    assert cli([*args, "--out", tmp_path / "d2", "-q"]) == 0  # -q: no table, the first skipped entry named
    printed = flat(capsys.readouterr().out)
    assert "3 file(s) skipped (first:" in printed and "listed above" not in printed
    ann.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + ', "annotations": [], "categories": []}')
    assert cli([*args, "--out", tmp_path / "d3"]) == 2
    assert "is not valid JSON" in one_line(capsys)
