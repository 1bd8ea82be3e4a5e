"""`mtl anchors`: k-means anchors from a prepared split, printed and written where a recipe reads them."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from mtlcli.cli.main import main
from mtlcli.data.prepared import DatasetMeta
from mtlcli.errors import UserError


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code or 0


def hand_built(root: Path) -> Path:
    """A prepared dataset (dataset.json + train/instances.json) of 400x200 (W x H) images with three box
    shapes: 40x80 persons, 120x60 cars, one huge crowd box and one car on a 800x400 image."""
    DatasetMeta(
        name="hand",
        source=str(root),
        splits=["train"],
        det_classes=["person", "car"],
        seg_classes=["road"],
        palette=[[128, 64, 128]],
    ).save(root)
    images = [{"id": i, "file_name": f"img{i}.png", "height": 200, "width": 400} for i in range(1, 4)]
    images.append({"id": 4, "file_name": "big.png", "height": 400, "width": 800})
    anns = []

    def add(image_id, cat, w, h, crowd=0):
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": [5, 5, w, h],
                "area": w * h,
                "iscrowd": crowd,
                "segmentation": [],
            }
        )

    for i in range(1, 4):
        add(i, 1, 40, 80)
        add(i, 1, 40, 80)
        add(i, 2, 120, 60)
    add(1, 2, 390, 190, crowd=1)
    add(4, 2, 240, 120)  # twice the size on a twice larger image: the same shape in the network frame
    (root / "train").mkdir(parents=True)
    (root / "train" / "instances.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
            }
        )
    )
    return root


def test_known_shapes_in_the_network_frame(tmp_path, capsys):
    data = hand_built(tmp_path / "data")
    out = tmp_path / "anchors.json"
    assert run(["anchors", "--data", str(data), "--k", "2", "--input-size", "100x200", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # scaled by 0.5 (200x400 -> 100x200), crowd box left out, sorted by area
    assert result["anchors"] == [[20.0, 40.0], [60.0, 30.0]]
    assert result["input_size"] == [100, 200] and result["num_boxes"] == 10 and result["mean_iou"] == 1.0
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("anchors = "))
    assert tomllib.loads(line)["anchors"] == result["anchors"]

    from mtlcli.models.imtl_detector import load_anchors

    with pytest.raises(UserError, match="multiple of 3"):  # two anchors cannot feed three branches
        load_anchors(str(out), (100, 200))


def test_recipe_label_map_and_input_size(tmp_path):
    data = hand_built(tmp_path / "data")
    recipe = tmp_path / "cars.toml"
    recipe.write_text(
        '[model]\nname = "imtl"\ninput_size = [50, 100]\n'
        '[data]\ndataset = "hand"\n[data.label_map]\ndet = { car = "vehicle" }\nseg = { road = "road" }\n'
    )
    out = tmp_path / "a.json"
    assert run(["anchors", "--data", str(data), "--k", "1", "--recipe", str(recipe), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["anchors"] == [[30.0, 15.0]] and result["num_boxes"] == 4 and result["input_size"] == [50, 100]


def test_synthetic_split_deterministic_and_readable_by_the_model(synthetic_prepared, tmp_path):
    out = tmp_path / "anchors.json"
    args = ["anchors", "--data", str(synthetic_prepared), "--split", "train", "--k", "9", "--seed", "3"]
    assert run(args + ["--out", str(out)]) == 0
    first = json.loads(out.read_text())
    assert run(args + ["--out", str(out)]) == 2  # exists: never overwritten without --force
    assert run(args + ["--out", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["anchors"] == first["anchors"]
    areas = [w * h for w, h in first["anchors"]]
    assert areas == sorted(areas) and len(areas) == 9
    coco = json.loads((synthetic_prepared / "train" / "instances.json").read_text())
    assert first["num_boxes"] == sum(1 for a in coco["annotations"] if not a["iscrowd"])

    from mtlcli.models.imtl_detector import load_anchors

    anchors = load_anchors(str(out), (384, 768))
    assert [v for wh in anchors.tolist() for v in wh] == pytest.approx(
        [v for wh in first["anchors"] for v in wh], abs=1e-3
    )


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert run(["anchors", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    data = hand_built(tmp_path / "data")
    assert run(["anchors", "--data", str(data), "--k", "20"]) == 2
    assert "fewer than --k 20" in capsys.readouterr().err
    assert run(["anchors", "--data", str(data), "--split", "val"]) == 2
    assert "split 'val'" in capsys.readouterr().err
