"""Fault injection: the commands walked with the bad inputs and faults of a careless user (issue 17).

Every case ends in exit status 0 with the data intact, or exit status 2 with one line on stderr — never
a traceback, never a user's file lost. Read-only and full file systems are simulated with monkeypatched
OSErrors (tests cannot mount a tmpfs); names too long and paths through a file are real.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcli.cli.main import main
from mtlcli.engine.checkpoint import load_checkpoint
from mtlcli.engine.rundir import LOCK_NAME
from tests.engine.tiny_model import tiny_registered, write_recipe  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("tiny_registered")


def cli(args: list[str]) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def flat(printed: str) -> str:
    """Console output with its line wrapping undone: the summary line wraps wherever the path of a
    temporary folder (longer under pytest-xdist, or with a long TMPDIR) pushes it past 80 columns."""
    return " ".join(printed.split())


def train_args(recipe: Path, data: Path, out: Path, *extra: str) -> list:
    return [
        "train",
        "--recipe",
        recipe,
        "--data",
        data,
        "--out",
        out,
        "--quiet",
        "--device",
        "cpu",
        "--set",
        "train.iterations=2",
        *extra,
    ]


@pytest.fixture
def run(tmp_path, synthetic_prepared):
    """A 2-iteration run of the tiny model on the synthetic dataset (with miou for eval)."""
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    assert cli(train_args(recipe, synthetic_prepared, out, "--set", "eval.metrics=miou")) == 0
    return out


def copy_dataset(src: Path, dst: Path, source: Path | None = None) -> Path:
    shutil.copytree(src, dst)
    if source is not None:
        meta = json.loads((dst / "dataset.json").read_text())
        meta["source"] = str(source)
        (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


# ------------------------------------------------------------------------------ ground truth is safe


def test_predictions_and_overlays_never_overwrite_the_ground_truth(run, synthetic_prepared, tmp_path, capsys):
    data = copy_dataset(synthetic_prepared, tmp_path / "data")
    before = {p: p.read_bytes() for p in (data / "val" / "semantic").iterdir()}
    link = tmp_path / "looks-innocent"
    link.symlink_to(data / "val")
    cases = [
        ["eval", "--run", run, "--data", data, "--save-predictions", data / "val", "--force", "-q"],
        ["eval", "--run", run, "--data", data, "--save-predictions", link, "--force", "-q"],
        ["eval", "--run", run, "--data", data, "--out", data / "val" / "results.json", "--force", "-q"],
        ["eval", "--run", run, "--data", data, "--out", run / "checkpoints" / "r.json", "-q"],
        ["viz", "dataset", data, "--out", data / "val" / "semantic", "--force"],
        ["viz", "predictions", "--run", run, "--data", data, "--out", data / "val", "--force", "--device", "cpu"],
        ["viz", "confusion", "--run", run, "--data", data, "--out", run / "checkpoints", "--force", "-q"],
        ["viz", "curves", run, "--out", data, "--force"],
        ["train", "--recipe", write_recipe(tmp_path), "--data", data, "--out", data / "runs" / "x", "--quiet"],
        ["prepare", "synthetic", "--out", data / "val" / "city", "--train", "1", "--val", "0", "--force"],
        ["anchors", "--data", data, "--split", "train", "--k", "2", "--input-size", "64x64", "--out", data / "a.json"],
    ]
    for args in cases:
        assert cli(args) == 2, args
        err = one_line(capsys)
        assert "only `mtl prepare` writes" in err or "only `mtl train` writes" in err, err
    assert {p: p.read_bytes() for p in (data / "val" / "semantic").iterdir()} == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # beside the data, the same commands work
    assert cli(["eval", "--run", run, "--data", data, "--save-predictions", tmp_path / "preds", "-q"]) == 0
    assert cli(["viz", "dataset", data, "--out", tmp_path / "overlays", "--num", "1"]) == 0


# ---------------------------------------------------------------------------------------- the runs


def test_a_live_run_is_locked_against_a_second_train_and_force(tmp_path, synthetic_prepared, capsys):
    import subprocess
    import sys

    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    assert cli(train_args(recipe, synthetic_prepared, out)) == 0
    assert not (out / LOCK_NAME).exists()  # released on exit
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "now"}))
        before = (out / "metrics.jsonl").read_text()
        for extra in (["--force"], ["--resume", "--set", "train.iterations=4"]):
            capsys.readouterr()
            assert cli(train_args(recipe, synthetic_prepared, out) + extra) == 2
            assert f"process {sleeper.pid}" in one_line(capsys)
        assert (out / "metrics.jsonl").read_text() == before and (out / "checkpoints" / "last.pt").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder died without releasing: the stale lock is taken over
    assert cli(train_args(recipe, synthetic_prepared, out, "--resume", "--set", "train.iterations=3")) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 3 and not (out / LOCK_NAME).exists()


def test_force_removes_only_what_the_run_wrote_and_orphans_go_umask_kept(tmp_path, synthetic_prepared, capsys):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert cli(train_args(recipe, synthetic_prepared, out)) == 0
        assert (out / "checkpoints" / "last.pt").stat().st_mode & 0o777 == 0o644
        assert (out / "recipe.toml").stat().st_mode & 0o777 == 0o644
        (out / "checkpoints" / "notes.txt").write_text("mine")
        (out / "checkpoints" / ".last.pt.killed.tmp").write_bytes(b"half a checkpoint")
        assert cli(train_args(recipe, synthetic_prepared, out, "--force")) == 0
    finally:
        os.umask(old)
    assert (out / "checkpoints" / "notes.txt").read_text() == "mine"
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert "kept 1 file(s)" in capsys.readouterr().out
    (out / "checkpoints" / ".last.pt.killed2.tmp").write_bytes(b"half")
    assert cli(train_args(recipe, synthetic_prepared, out, "--resume", "--set", "train.iterations=3")) == 0
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_set_iterations_on_a_staged_recipe_scales_the_stages_and_recipe_toml_says_so(tmp_path, synthetic_prepared):
    text = (
        Path(write_recipe(tmp_path)).read_text().replace("iterations = 8\n", "")
        + '\n[[train.stages]]\nname = "a"\niterations = 40\nlr = 0.01\n'
        + '\n[[train.stages]]\nname = "b"\niterations = 120\nlr = 0.001\n'
    )
    recipe = write_recipe(tmp_path, text, "staged.toml")
    out = tmp_path / "run"
    assert (
        cli(
            [
                "train",
                "--recipe",
                recipe,
                "--data",
                synthetic_prepared,
                "--out",
                out,
                "--quiet",
                "--set",
                "train.iterations=4",
            ]
        )
        == 0
    )
    saved = tomllib.loads((out / "recipe.toml").read_text())
    assert [s["iterations"] for s in saved["train"]["stages"]] == [1, 3] and saved["train"]["iterations"] == 4
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 4


def test_resume_and_eval_check_the_label_set_and_the_model(run, tmp_path, synthetic_prepared, capsys):
    # data prepared for another label set: same counts, other names
    other = copy_dataset(synthetic_prepared, tmp_path / "other")
    meta = json.loads((other / "dataset.json").read_text())
    meta["seg_classes"][0] = "tarmac"
    (other / "dataset.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert cli(["eval", "--run", run, "--data", other, "-q", "--device", "cpu"]) == 2
    err = one_line(capsys)
    assert "trained on 19 (road," in err and "has 19 (tarmac," in err
    assert cli(["viz", "confusion", "--run", run, "--data", other, "--out", tmp_path / "v", "-q"]) == 2
    assert "tarmac" in one_line(capsys)
    assert cli(["train", "--out", run, "--resume", "--data", other, "--quiet", "--set", "train.iterations=3"]) == 2
    assert "--resume:" in one_line(capsys)
    # another model shape on resume, and another model
    assert (
        cli(["train", "--out", run, "--resume", "--quiet", "--set", "train.iterations=3", "--set", "model.width=4"])
        == 2
    )
    err = one_line(capsys)
    assert "model.width is unset (the builder's default)" in err and "but 4 now" in err
    # a checkpoint whose recipe says another class count than its weights
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["recipe"]["model"]["num_seg_classes"] = 5
    torch.save(state, tmp_path / "edited.pt")
    assert cli(["eval", "--checkpoint", tmp_path / "edited.pt", "--data", synthetic_prepared, "-q"]) == 2
    assert "does not fit the model its recipe builds" in one_line(capsys)
    # the right data still evaluates
    assert cli(["eval", "--run", run, "-q"]) == 0


# ------------------------------------------------------------------------------------ prepare-time


def _cityscapes_copy(synthetic_source: Path, dst: Path) -> tuple[Path, Path]:
    shutil.copytree(synthetic_source, dst)
    image = sorted((dst / "leftImg8bit" / "train").glob("*/*.png"))[0]
    return dst, image


def test_8bit_instance_ids_are_skipped_with_the_reason_or_refused_strictly(synthetic_source, tmp_path, capsys):
    src, image = _cityscapes_copy(synthetic_source, tmp_path / "src")
    prefix = image.name.replace("_leftImg8bit.png", "")
    gt = src / "gtFine" / "train" / image.parent.name
    (gt / f"{prefix}_gtFine_polygons.json").unlink()  # read the PNGs
    inst = np.array(Image.open(gt / f"{prefix}_gtFine_instanceIds.png"))
    Image.fromarray((inst % 256).astype(np.uint8)).save(gt / f"{prefix}_gtFine_instanceIds.png")
    assert cli(["prepare", "cityscapes", src, "--out", tmp_path / "out", "-j", "1"]) == 0
    printed = flat(capsys.readouterr().out)
    assert "1 file(s) skipped" in printed and "8-bit" in printed
    assert cli(["prepare", "cityscapes", src, "--out", tmp_path / "strict", "-j", "1", "--strict"]) == 2
    assert "8-bit PNG" in one_line(capsys)


def test_corrupt_images_skipped_at_prepare_and_named_once_in_training(
    synthetic_source, synthetic_prepared, tmp_path, capsys
):
    src, image = _cityscapes_copy(synthetic_source, tmp_path / "src")
    # cut short: the cheap check sees it
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    assert cli(["prepare", "cityscapes", src, "--out", tmp_path / "cut", "-j", "1"]) == 0
    assert "truncated" in capsys.readouterr().out
    # damaged inside a complete file: passes the cheap check, --verify finds it
    broken = bytearray(data)
    idat = broken.find(b"IDAT")
    broken[idat + 20 : idat + 60] = bytes(40)
    image.write_bytes(bytes(broken))
    assert cli(["prepare", "cityscapes", src, "--out", tmp_path / "cheap", "-j", "1"]) == 0
    assert "files skipped" in flat(capsys.readouterr().out)
    assert json.loads((tmp_path / "cheap" / "train" / "instances.json").read_text())["images"]
    assert cli(["prepare", "cityscapes", src, "--out", tmp_path / "verified", "-j", "1", "--verify"]) == 0
    out = flat(capsys.readouterr().out)
    assert "1 file(s) skipped" in out
    # training over the dataset that kept it: the file is named once, training finishes
    recipe = write_recipe(tmp_path)
    assert cli(train_args(recipe, tmp_path / "cheap", tmp_path / "run", "--set", "train.iterations=4")) == 0
    err = capsys.readouterr().err
    assert err.count(f"skipping unreadable leftImg8bit/train/{image.parent.name}/{image.name}") == 1
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 4


# ------------------------------------------------------------------------------- one line per fault


def test_bad_devices_amp_and_sizes_are_one_line(run, tmp_path, synthetic_prepared, capsys):
    recipe = write_recipe(tmp_path)
    cases = [
        (["eval", "--run", run, "--device", "gpu", "-q"], "unknown device 'gpu'"),
        (["eval", "--run", run, "--device", "cuda:7", "-q"], "cuda"),
        (["eval", "--run", run, "--device", "meta", "-q"], "unknown device"),
        (["viz", "predictions", "--run", run, "--device", "tpu"], "unknown device"),
        (["viz", "confusion", "--run", run, "--device", "cuda:x"], "unknown device"),
        (["benchmark", "--recipe", recipe, "--device", "gpu"], "unknown device"),
        (["benchmark", "--recipe", recipe, "--device", "cpu", "--amp", "bf16"], "--amp bf16 needs a CUDA device"),
        (
            ["train", "--recipe", recipe, "--data", synthetic_prepared, "--out", tmp_path / "r", "--device", "gpu"],
            "unknown device",
        ),
    ]
    for size in ("[64]", "[0, 0]", "[100000, 100000]"):
        cases.append(
            (
                train_args(recipe, synthetic_prepared, tmp_path / "s", "--set", f"model.input_size={size}"),
                "model.input_size",
            )
        )
        cases.append((["benchmark", "--recipe", recipe, "--set", f"model.input_size={size}"], "model.input_size"))
    cases.append((["benchmark", "--recipe", recipe, "--batch", "100000000", "--size", "4096x4096"], "--batch"))
    for args, words in cases:
        capsys.readouterr()
        assert cli(args) == 2, args
        assert words in one_line(capsys), args


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_write_faults_in_train_eval_and_prepare_are_one_line(
    code, run, tmp_path, synthetic_source, synthetic_prepared, capsys, monkeypatch
):
    import mtlcli.safety as safety

    real = safety.os.replace

    def failing(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    recipe = write_recipe(tmp_path)
    monkeypatch.setattr(safety.os, "replace", failing)
    capsys.readouterr()
    assert cli(train_args(recipe, synthetic_prepared, tmp_path / "new")) == 2
    one_line(capsys)
    assert cli(["eval", "--run", run, "-q", "--out", tmp_path / "r.json"]) == 2
    one_line(capsys)
    monkeypatch.setattr(safety.os, "replace", real)

    # a full disk while prepare writes label PNGs stops it (it must not skip every image as unreadable)
    import mtlcli.data.cityscapes as cityscapes

    def full(path, *a, **k):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(cityscapes, "save_indexed_png", full)
    if code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
        assert cli(["prepare", "cityscapes", synthetic_source, "--out", tmp_path / "p", "-j", "1"]) == 2
        one_line(capsys)


def test_real_path_faults_are_one_line(run, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        ["eval", "--run", run, "-q", "--out", a_file / "sub" / "r.json"],  # not a directory
        ["eval", "--run", run, "-q", "--out", tmp_path / ("n" * 300 + ".json")],  # name too long
        ["eval", "--run", run, "-q", "--save-predictions", a_file / "preds"],
        ["viz", "dataset", run, "--out", a_file / "x"],
    ]
    for args in cases:
        assert cli(args) == 2, args
        one_line(capsys)


def test_a_train_that_fails_before_writing_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """No data: the default runs/<recipe>/expN and a fresh --out (with the parents made for it) are gone again;
    folders that were there before stay, even empty."""
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path)
    before = {"tiny.toml"}
    for step in ("fresh", "with a runs/ folder of the user's"):
        for out in ([], ["--out", "a/b/run"], ["--out", "mine"]):
            assert (
                cli(["train", "--recipe", recipe, "--data", tmp_path / "nowhere", "-q", "--device", "cpu", *out]) == 2
            )
            assert "no prepared dataset" in one_line(capsys)
            assert {p.name for p in tmp_path.iterdir()} == before, (step, out)
        for folder in ("runs", "mine"):
            (tmp_path / folder).mkdir(exist_ok=True)
            before.add(folder)
    assert not any((tmp_path / "runs").iterdir()) and not any((tmp_path / "mine").iterdir())
