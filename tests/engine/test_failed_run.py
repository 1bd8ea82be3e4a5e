"""A failed `mtl train` leaves no run behind: a fresh run that stops before its first checkpoint takes its
recipe.toml and metrics.jsonl and the folders it made (runs/<recipe>/expN, runs/<recipe>/) with it; a
run with a last.pt, and a user's own files, stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlcli.engine.checkpoint import load_checkpoint
from tests.engine.tiny_model import tiny_registered, write_recipe  # noqa: F401 (fixture)
from tests.viz.conftest import run_cli

pytestmark = pytest.mark.usefixtures("tiny_registered")


def _train(recipe: Path, data: Path, *extra: str) -> list[str]:
    return ["train", "--recipe", str(recipe), "--data", str(data), "-q", "--device", "cpu", *extra]


def test_a_run_failing_before_its_first_checkpoint_leaves_no_folder(tmp_path, synthetic_prepared, monkeypatch, capsys):
    recipe = write_recipe(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # fails in its first step (a loss weight the model does not return), after recipe.toml was written
    assert run_cli(_train(recipe, synthetic_prepared, "--set", "train.loss_weights.loss_foo=1")) == 2
    assert "loss_foo" in capsys.readouterr().err
    assert not (work / "runs").exists()
    # diverged at its first iteration: no checkpoint to resume, nothing left
    out = work / "mine" / "run"
    assert run_cli(_train(recipe, synthetic_prepared, "--out", str(out), "--set", "model.fail_at=1",
                          "--set", "model.failure=nan")) == 2  # fmt: skip
    assert "no checkpoint was written yet" in capsys.readouterr().err
    assert not (work / "mine").exists()

    # beside a run of the user's, and the user's own file in a run folder: both kept
    (work / "runs" / "tiny" / "exp1").mkdir(parents=True)
    (work / "runs" / "tiny" / "exp1" / "notes.txt").write_text("mine")
    assert run_cli(_train(recipe, synthetic_prepared, "--set", "train.loss_weights.loss_foo=1")) == 2
    assert sorted(p.relative_to(work).as_posix() for p in (work / "runs").rglob("*")) == [
        "runs/tiny",
        "runs/tiny/exp1",
        "runs/tiny/exp1/notes.txt",
    ]


def test_a_run_failing_after_a_checkpoint_is_kept_to_resume(tmp_path, synthetic_prepared, capsys):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    args = _train(
        recipe, synthetic_prepared, "--out", str(out), "--set", "model.fail_at=6", "--set", "model.failure=nan"
    )
    assert run_cli(args) == 2
    assert "last good checkpoint" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 4
    assert (out / "recipe.toml").is_file() and (out / "metrics.jsonl").is_file()
