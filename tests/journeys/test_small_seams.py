"""Journeys through the small seams between commands, each typed as a user types it:

- a dataset source given to `mtl train --data` suggests a `mtl prepare` that works as printed;
- a mistyped recipe name suggests the close ones; a bad `--set` value blames the `--set`;
- `mtl benchmark --run RUN` measures the run's own model;
- `mtl eval --save-predictions DIR` also draws the PR / F1 / confusion pictures;
- `mtl viz predictions` keeps nested image names nested (no `city_city_...`);
- "predicted 1 image".
Outside tools check the outcome: PIL opens the pictures, torch counts the parameters, pycocotools reads the
prepared dataset."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.viz.conftest import error_line, run_cli


def test_raw_source_to_train_suggests_a_prepare_that_works(synthetic_source, tmp_path, capsys, monkeypatch):
    src = tmp_path / "city"
    shutil.copytree(synthetic_source, src)
    monkeypatch.chdir(tmp_path)
    assert run_cli(["train", "--recipe", "ivanet-tiny-synthetic", "--data", str(src), "--device", "cpu"]) == 2
    line = error_line(capsys)
    command = line.split("`")[1]
    assert command.startswith("mtl prepare cityscapes") and f"--out {tmp_path / 'city-prepared'}" in command
    argv = shlex.split(command)[1:] + ["--workers", "1"]
    assert run_cli(argv) == 0  # prepare accepts the --out it was given
    from pycocotools.coco import COCO

    assert len(COCO(str(tmp_path / "city-prepared" / "train" / "instances.json")).imgs) == 6


def test_close_recipe_names_and_set_errors_name_their_cause(synthetic_prepared, capsys):
    base = ["train", "--data", str(synthetic_prepared), "--device", "cpu"]
    assert run_cli(base + ["--recipe", "ivanet-tiny-synthetc"]) == 2
    line = error_line(capsys)
    assert "did you mean ivanet-tiny-synthetic" in line and "blitznet300" not in line
    assert run_cli(base + ["--recipe", "ivanet-tiny-synthetic", "--set", "train.iterations=abc"]) == 2
    line = error_line(capsys)
    assert line.startswith("error: --set 'train.iterations=abc'") and "integer" in line and ".toml" not in line


def test_benchmark_run_measures_the_trained_model(journey_run, tmp_path, capsys):
    import torch

    out = tmp_path / "bench.json"
    argv = ["benchmark", "--run", str(journey_run), "--iterations", "1", "--warmup", "0", "--device", "cpu"]
    assert run_cli(argv + ["--out", str(out), "-q"]) == 0
    (row,) = json.loads(out.read_text())["results"]
    state = torch.load(journey_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    params = sum(v.numel() for k, v in state["model"].items() if "running_" not in k and "num_batches" not in k)
    assert row["name"] == str(journey_run) and row["params"] == params
    assert tuple(row["size"]) == tuple(state["recipe"]["model"]["input_size"])


def test_save_predictions_draws_the_pictures_and_one_image_is_singular(
    journey_run, synthetic_prepared, tmp_path, capsys
):
    preds = tmp_path / "preds"
    argv = ["eval", "--run", str(journey_run), "--save-predictions", str(preds), "-m", "voc07,miou"]
    assert run_cli(argv + ["--out", str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    assert f"pictures in {preds / 'plots'}" in capsys.readouterr().out
    for name in ("pr_val.png", "f1_val.png", "confusion_det_val.png"):
        with Image.open(preds / "plots" / name) as img:
            assert img.format == "PNG" and min(img.size) > 100
    # what --save-predictions wrote is read back as written
    again = tmp_path / "again.json"
    argv = ["eval", "--predictions", str(preds), "--data", str(synthetic_prepared), "-m", "voc07,miou"]
    assert run_cli(argv + ["--out", str(again), "-q"]) == 0
    first = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert json.loads(again.read_text())["metrics"] == pytest.approx(first, abs=1e-9)

    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(image)
    argv = ["predict", str(image), "--run", str(journey_run), "--out", str(tmp_path / "p"), "--device", "cpu"]
    assert run_cli(argv + ["-q", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "predicted 1 image in" in printed and "predicted 1 images" not in printed


def test_viz_predictions_keeps_nested_names(journey_run, synthetic_prepared, tmp_path, capsys):
    # a prepared split whose image names are nested, as `mtl prepare coco` writes `<folder>/<name>` stems
    data = tmp_path / "data"
    shutil.copytree(synthetic_prepared, data)
    path = data / "val" / "instances.json"
    coco = json.loads(path.read_text())
    for im in coco["images"]:
        nested = f"{im['city']}/{im['stem']}"
        for sub in ("semantic", "dt"):
            (data / "val" / sub / im["city"]).mkdir(exist_ok=True)
            (data / "val" / sub / f"{im['stem']}.png").rename(data / "val" / sub / f"{nested}.png")
        im["stem"] = nested
    path.write_text(json.dumps(coco))
    out = tmp_path / "viz"
    argv = ["viz", "predictions", "--run", str(journey_run), "--data", str(data), "-n", "3", "--out", str(out)]
    assert run_cli(argv + ["--device", "cpu", "-q"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(f"{im['stem']}.png" for im in coco["images"])
    assert not any(Path(w).name.startswith(f"{Path(w).parent.name}_{Path(w).parent.name}") for w in written)
    for w in written:
        with Image.open(out / w) as img:
            assert img.format == "PNG"
