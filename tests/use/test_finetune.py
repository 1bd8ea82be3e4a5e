"""Fine-tuning a 19-class (8 det) checkpoint on a custom 3-class COCO JSON with non-contiguous category
ids: matching tensors load, the heads are re-initialised and named, predictions carry the new names and
the original ids; class-count mismatches are one line naming both sides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mtlcli.engine.checkpoint import load_checkpoint
from mtlcli.engine.finetune import load_matching, read_state_dict
from mtlcli.errors import UserError
from tests.data.test_coco import CAR, PERSON_POLY, ann, compressed_rle, custom_coco
from tests.use.conftest import write_image
from tests.viz.conftest import error_line, run_cli

FAST = [
    "--set",
    "train.iterations=1",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.log_interval=1",
    "--set",
    "eval.metrics=[]",
    "--set",
    "eval.best_metric=",
    "--set",
    "data.dataset=custom",
    "-q",
]


@pytest.fixture(scope="module")
def custom_data(tmp_path_factory) -> Path:
    from mtlcli.data.coco import prepare_coco

    tmp = tmp_path_factory.mktemp("custom")
    c = custom_coco(
        tmp,
        [
            ann(1, 101, 12, PERSON_POLY),
            ann(2, 205, 3, compressed_rle(CAR)),
            ann(3, 205, 7, [[30, 2, 44, 2, 44, 12, 30, 12]]),
        ],
    )
    # a val split of its own images (training refuses evaluation images in its train split)
    val = json.loads(c["json"].read_text())
    val["images"] = [{"id": 300, "file_name": "c/y.png", "height": 32, "width": 48}]
    val["annotations"] = [ann(4, 300, 7, [[30, 2, 44, 2, 44, 12, 30, 12]])]
    write_image(c["images"] / "c" / "y.png", (32, 48), seed=3)
    val_json = c["json"].with_name("val.json")
    val_json.write_text(json.dumps(val))
    prepare_coco(
        None,
        c["out"],
        workers=1,
        train_json=c["json"],
        train_images=c["images"],
        val_json=val_json,
        val_images=c["images"],
        quiet=True,
    )
    return c["out"]


def test_load_matching_names_the_heads_it_reinitialises(ivanet_run):
    from mtlcli.models import build_model

    tensors, card = read_state_dict(ivanet_run / "checkpoints" / "best.pt")
    assert card["det_classes"][0] == "person"
    kwargs = {
        k: v
        for k, v in load_checkpoint(ivanet_run / "checkpoints" / "best.pt")["recipe"]["model"].items()
        if k != "name"
    }
    model = build_model("ivanet", **{**kwargs, "num_det_classes": 3, "num_seg_classes": 4})
    report = load_matching(model, tensors)
    assert report["reinitialised"] and all("head" in name for name in report["reinitialised"])
    assert (
        report["loaded"] + sum(1 for k, v in model.state_dict().items() if k in tensors and v.shape != tensors[k].shape)
        == report["total"]
    )
    own = model.state_dict()
    same = [k for k in own if k in tensors and own[k].shape == tensors[k].shape]
    assert same and all(torch.equal(own[k], tensors[k]) for k in same)


def test_finetune_19_classes_to_3_and_predict(ivanet_run, custom_data, tmp_path, capsys):
    run = tmp_path / "ft"
    assert (
        run_cli(
            [
                "train",
                "--recipe",
                "ivanet-tiny-synthetic",
                "--data",
                str(custom_data),
                "--out",
                str(run),
                "--weights",
                str(ivanet_run / "checkpoints" / "best.pt"),
                *FAST,
            ]
        )
        == 0
    )
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("weights from"))
    assert "classes 8 det / 19 seg -> 3 det / 4 seg" in line and "re-initialised (shape differs): " in line
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["classes"]["det_classes"] == ["dog", "cat", "bird"]
    assert state["classes"]["det_category_ids"] == [3, 7, 12]

    image = write_image(tmp_path / "img" / "p.png", (32, 48))
    out = tmp_path / "pred"
    assert (
        run_cli(
            [
                "predict",
                str(image),
                "--checkpoint",
                str(run / "checkpoints" / "last.pt"),
                "--out",
                str(out),
                "--score-threshold",
                "0",
                "--workers",
                "0",
                "-q",
            ]
        )
        == 0
    )
    images = json.loads((out / "images.json").read_text())
    assert images["categories"] == [{"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}, {"id": 12, "name": "bird"}]
    dets = json.loads((out / "detections.json").read_text())
    names = {c["id"]: c["name"] for c in images["categories"]}
    assert dets and all(names[d["category_id"]] == d["category_name"] for d in dets)  # original ids

    # eval --save-predictions writes the source's image and category ids; --predictions reads them back
    saved = tmp_path / "saved"
    assert (
        run_cli(
            [
                "eval",
                "--run",
                str(run),
                "--data",
                str(custom_data),
                "--metric",
                "coco-bbox",
                "--save-predictions",
                str(saved),
                "-q",
            ]
        )
        == 0
    )
    results = json.loads((saved / "detections.json").read_text())
    assert results and {r["image_id"] for r in results} <= {300} and {r["category_id"] for r in results} <= {3, 7, 12}
    capsys.readouterr()
    assert (
        run_cli(
            [
                "eval",
                "--predictions",
                str(saved),
                "--data",
                str(custom_data),
                "--metric",
                "coco-bbox",
                "--out",
                str(tmp_path / "again.json"),
                "-q",
            ]
        )
        == 0
    )
    first = json.loads(next((run / "eval").glob("*.json")).read_text())["metrics"]["coco-bbox"]
    again = json.loads((tmp_path / "again.json").read_text())["metrics"]["coco-bbox"]
    assert again == pytest.approx(first)


def test_class_count_mismatch_is_one_line(custom_data, capsys, tmp_path):
    assert (
        run_cli(
            [
                "train",
                "--recipe",
                "ivanet-tiny-synthetic",
                "--data",
                str(custom_data),
                "--out",
                str(tmp_path / "r"),
                "--set",
                "model.num_det_classes=8",
                *FAST,
            ]
        )
        == 2
    )
    line = error_line(capsys)
    assert "model.num_det_classes = 8" in line and "3 det classes (dog, cat, bird)" in line


def test_weights_that_fit_nothing_or_are_not_weights(custom_data, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    torch.save({"something.else": torch.zeros(3)}, junk)
    assert (
        run_cli(
            [
                "train",
                "--recipe",
                "ivanet-tiny-synthetic",
                "--data",
                str(custom_data),
                "--out",
                str(tmp_path / "r"),
                "--weights",
                str(junk),
                *FAST,
            ]
        )
        == 2
    )
    assert "fits no tensor" in error_line(capsys)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="cannot be read"):
        read_state_dict(text)
    shutil.rmtree(tmp_path / "r", ignore_errors=True)


def test_eval_on_data_with_another_class_count_is_one_line(ivanet_run, custom_data, capsys):
    assert run_cli(["eval", "--run", str(ivanet_run), "--data", str(custom_data), "--metric", "miou", "-q"]) == 2
    line = error_line(capsys)
    assert "the checkpoint's model.num_det_classes = 8" in line and "dog, cat, bird" in line
