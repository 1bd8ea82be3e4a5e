"""`mtl eval`: saved predictions and checkpoints in, tables and strict JSON out, exit 2 on bad input."""

from __future__ import annotations

import json
import math

import pytest

from mtlcli.cli.main import main
from tests.metrics.fixtures import hand_detections, make_detection_dataset


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def toy(tmp_path):
    root = make_detection_dataset(tmp_path / "data")
    path = tmp_path / "detections.json"
    path.write_text(json.dumps(hand_detections()))
    return root, path


def test_predictions_file_prints_tables_and_saves_strict_json(toy, tmp_path, capsys):
    root, path = toy
    out = tmp_path / "res.json"
    code = _run(
        [
            "eval",
            "--predictions",
            str(path),
            "--data",
            str(root),
            "--split",
            "val",
            "--metric",
            "voc07,voc12",
            "-m",
            "coco-bbox",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "voc07" in printed and "cat" in printed and "84.85" in printed  # 28/33 as a percentage
    assert printed.strip().splitlines()[-1] == f"saved {out}"  # where the results went, last
    saved = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert saved["metrics"]["voc07"] == pytest.approx(28 / 33 / 2)
    assert saved["details"]["voc12"]["ap"][2] is None  # the class without ground truth
    assert set(saved["metrics"]) == {"voc07", "voc12", "coco-bbox"}


def test_existing_out_needs_force(toy, tmp_path, capsys):
    root, path = toy
    out = tmp_path / "res.json"
    out.write_text("keep me")
    args = ["eval", "--predictions", str(path), "--data", str(root), "--metric", "voc12", "--out", str(out), "-q"]
    assert _run(args) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert _run(args + ["--force"]) == 0 and "voc12" in json.loads(out.read_text())["metrics"]


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda d: d + [{**d[0], "image_id": 42}], "image_id 42"),
        (lambda d: d + [{**d[0], "category_id": 0}], "category_id 0"),
        (lambda d: [], "no detections"),
    ],
)
def test_bad_predictions_exit_2_with_one_line(toy, capsys, edit, needle):
    root, path = toy
    path.write_text(json.dumps(edit(hand_detections())))
    assert _run(["eval", "--predictions", str(path), "--data", str(root), "--metric", "coco-bbox"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and str(path) in err and len(err.splitlines()) == 1


def test_usage_errors_exit_2(toy, capsys):
    root, path = toy
    assert _run(["eval", "--predictions", str(path)]) == 2  # no --data
    assert _run(["eval", "--predictions", str(path), "--data", str(root), "--metric", "map"]) == 2
    assert "valid metrics" in capsys.readouterr().err
    assert _run(["eval", "--predictions", str(path), "--data", str(root), "--split", "test"]) == 2
    assert "available splits" in capsys.readouterr().err


def test_checkpoint_is_evaluated_and_predictions_saved(synthetic_prepared, tmp_path, capsys):
    import torch

    from mtlcli.engine.checkpoint import save_checkpoint
    from mtlcli.models import build_model
    from mtlcli.recipes import load_recipe

    recipe = load_recipe("ladderdensenet-tiny-synthetic")
    recipe["data"]["root"] = str(synthetic_prepared)
    torch.manual_seed(0)
    model = build_model(recipe["model"]["name"], **{k: v for k, v in recipe["model"].items() if k != "name"})
    ckpt = tmp_path / "last.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "recipe": recipe, "iteration": 0})

    out, preds = tmp_path / "res.json", tmp_path / "preds"
    code = _run(
        ["eval", "--checkpoint", str(ckpt), "--out", str(out), "--save-predictions", str(preds), "--device", "cpu"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "miou: per class" in printed and printed.strip().endswith(f"saved {out}")
    saved = json.loads(out.read_text())
    assert saved["split"] == "val" and 0.0 <= saved["metrics"]["miou"] <= 1.0
    assert len(list((preds / "semantic").glob("*.png"))) == 3 == len(list((preds / "labelIds").glob("*.png")))
    # the saved PNGs evaluate to the same number through --predictions
    out2 = tmp_path / "res2.json"
    assert _run(["eval", "--predictions", str(preds), "--data", str(synthetic_prepared), "--out", str(out2), "-q"]) == 0
    again = json.loads(out2.read_text())["metrics"]["miou"]
    assert math.isclose(again, saved["metrics"]["miou"], abs_tol=1e-12)
    # and so do the labelIds with --cityscapes-ids
    out3 = tmp_path / "res3.json"
    assert (
        _run(
            [
                "eval",
                "--predictions",
                str(preds / "labelIds"),
                "--data",
                str(synthetic_prepared),
                "--cityscapes-ids",
                "--out",
                str(out3),
                "-q",
            ]
        )
        == 0
    )
    assert math.isclose(json.loads(out3.read_text())["metrics"]["miou"], saved["metrics"]["miou"], abs_tol=1e-12)


def test_empty_predictions_folder_and_wrong_size_png_exit_2(synthetic_prepared, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(["eval", "--predictions", str(empty), "--data", str(synthetic_prepared)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    preds = tmp_path / "preds"
    preds.mkdir()
    stems = sorted(p.stem for p in (synthetic_prepared / "val" / "semantic").glob("*.png"))
    for stem in stems:
        Image.fromarray(np.zeros((64, 128), np.uint8)).save(preds / f"{stem}.png")
    Image.fromarray(np.zeros((64, 100), np.uint8)).save(preds / f"{stems[1]}.png")
    assert _run(["eval", "--predictions", str(preds), "--data", str(synthetic_prepared), "--metric", "miou"]) == 2
    err = capsys.readouterr().err
    assert f"{stems[1]}.png is 100x64" in err and "original image size" in err


def test_saved_line_names_the_json_and_the_pictures(tmp_path):
    from mtlcli.cli.eval import saved_line

    run = tmp_path / "run" / "eval"
    assert (
        saved_line([run / "val.json", run / "pr_val.png", run / "f1_val.png"])
        == f"saved {run / 'val.json'}; pictures in {run}: pr_val.png, f1_val.png"
    )
    assert saved_line([]).startswith("not saved") and "--out" in saved_line([])


def test_a_new_evaluation_takes_the_first_name_free_of_json_and_pictures(tmp_path):
    from mtlcli.cli.eval import free_name

    assert free_name(tmp_path, "val") == "val"
    (tmp_path / "val.json").write_text("{}")
    assert free_name(tmp_path, "val") == "val-2"
    (tmp_path / "f1_val-2.png").write_bytes(b"")  # pictures whose JSON was removed are kept as well
    assert free_name(tmp_path, "val") == "val-3"
    assert free_name(tmp_path, "test") == "test"
