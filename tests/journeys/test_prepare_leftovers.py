"""Journey: nothing dropped unnamed between the source and training.

`mtl prepare` on sources in their real formats with one bad annotation each — a NaN vertex in a Cityscapes
polygon (as Python's json writes it), an inverted VOC box (xmin > xmax), a negative-width MOT15 gt.txt row —
keeps the rest of the image, names the annotation in the summary, and refuses it under `--strict` (exit 2,
one line). A prepared split that lost a semantic label PNG is refused at `mtl train` start in one line. The
prepared files are read back with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest

from tests.data.test_mot15 import make_sequence
from tests.data.test_voc import voc, write_xml  # noqa: F401 (voc: the VOC2007 + VOC2012 + SBD fixture)
from tests.viz.conftest import error_line, run_cli


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the summary's table rows on one line each, as a wide terminal shows


def _coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_nan_polygon_vertex_is_named_or_refused(tmp_path, capsys):
    from mtlcli.data.cityscapes import CITYSCAPES_DET_CLASSES as DET_CLASSES
    from mtlcli.data.synthetic import generate_synthetic

    src = generate_synthetic(tmp_path / "city", train=2, val=1, size=(32, 64), seed=0, quiet=True)
    polygons = sorted((src / "gtFine" / "train").rglob("*_gtFine_polygons.json"))[0]
    annotation = json.loads(polygons.read_text())
    k = next(i for i, o in enumerate(annotation["objects"]) if o["label"] in DET_CLASSES)
    annotation["objects"][k]["polygon"][1][0] = math.nan
    polygons.write_text(json.dumps(annotation))  # Python's json writes the vertex as NaN
    assert "NaN" in polygons.read_text()

    out = tmp_path / "prepared"
    assert run_cli(["prepare", "cityscapes", str(src), "--out", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if polygons.name in x)
    assert f"object {k} ({annotation['objects'][k]['label']})" in line and "nan" in line.lower()
    # the image stays, with every other instance of the file; no annotation holds a non-finite box
    coco = _coco(out / "train" / "instances.json")
    image = next(im for im in coco.dataset["images"] if polygons.name.startswith(im["stem"].rsplit("_", 1)[0]))
    others = [o for i, o in enumerate(annotation["objects"]) if i != k and o["label"] in DET_CLASSES]
    assert len(coco.getAnnIds(imgIds=[image["id"]], iscrowd=False)) == len(others)
    assert all(math.isfinite(v) for a in coco.dataset["annotations"] for v in a["bbox"])

    argv = ["prepare", "cityscapes", str(src), "--out", str(tmp_path / "strict"), "--workers", "1", "--strict"]
    assert run_cli(argv) == 2
    line = error_line(capsys)
    assert polygons.name in line and "--strict" in line


def test_inverted_voc_box_is_named_or_refused(voc, capsys):  # noqa: F811 (the fixture)
    v12 = voc["voc2012"]
    xml = v12 / "Annotations" / "2008_000002.xml"
    write_xml(xml, [("car", (3, 3, 10, 12), 0), ("dog", (30, 5, 10, 20), 0)])  # xmin 30 > xmax 10
    out = voc["out"]
    assert run_cli(["prepare", "voc", "--voc2012", str(v12), "--out", str(out), "--workers", "1"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "2008_000002.xml" in x)
    assert "object 1 (dog)" in line and "inverted (xmin 30 > xmax 10)" in line
    coco = _coco(out / "trainval" / "instances.json")
    image = next(im for im in coco.dataset["images"] if im["stem"] == "2008_000002")
    names = [coco.cats[a["category_id"]]["name"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))]
    assert names == ["car"]  # the good box of the file is kept

    argv = ["prepare", "voc", "--voc2012", str(v12), "--out", str(out), "--force", "--workers", "1", "--strict"]
    assert run_cli(argv) == 2
    assert "inverted" in error_line(capsys)


def test_negative_width_mot15_box_is_named_or_refused(tmp_path, capsys):
    src = tmp_path / "2DMOT2015"
    rows = [f"{f},1,3,4,10,12,1,-1,-1,-1" for f in range(1, 6)] + ["2,2,20,8,-8,16,1,-1,-1,-1"]
    make_sequence(src, "SEQ-A", 5, rows)
    out = tmp_path / "prepared"
    assert run_cli(["prepare", "mot15", str(src), "--out", str(out), "--workers", "1"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "gt.txt line 6" in x)
    assert "(frame 2)" in line and "negative width -8" in line
    coco = _coco(out / "train" / "instances.json")
    frame2 = next(im for im in coco.dataset["images"] if im["frame_id"] == 2)
    assert len(coco.getAnnIds(imgIds=[frame2["id"]])) == 1  # the good box of frame 2 is kept

    argv = ["prepare", "mot15", str(src), "--out", str(tmp_path / "strict"), "--workers", "1", "--strict"]
    assert run_cli(argv) == 2
    assert "negative width" in error_line(capsys)


def test_train_refuses_a_split_that_lost_a_label_file(synthetic_prepared, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_prepared, data)
    lost = sorted((data / "train" / "semantic").glob("*.png"))[1]
    lost.unlink()
    argv = ["train", "--recipe", "ivanet-tiny-synthetic", "--data", str(data), "--out", str(tmp_path / "run")]
    assert run_cli(argv + ["--set", "train.iterations=1", "--device", "cpu"]) == 2
    line = error_line(capsys)
    assert str(lost) in line and "1 of the 6 images" in line and "prepare the dataset again" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
