"""Model selection off the reported numbers (issue 27): best.pt is selected on the recipe's selection
split — a held-out split apart from val_split when the recipe reports best.pt — and, in a staged recipe,
only within the last stage; `mtl eval --run` scores the recipe's reported checkpoint and says which."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mtlcli.engine.checkpoint import find_run_checkpoint, load_checkpoint
from mtlcli.engine.train import train
from mtlcli.recipes import load_recipe
from tests.engine.tiny_model import TINY_RECIPE, tiny_registered, write_recipe  # noqa: F401
from tests.viz.conftest import run_cli

pytestmark = pytest.mark.usefixtures("tiny_registered")


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_a_staged_run_keeps_best_from_its_last_stage_only(tmp_path, synthetic_prepared):
    # stage b freezes what the segmentation reads (as imtl's stage 3): its mIoU cannot move, so the old
    # rule (the first of equal scores) kept stage a's checkpoint, whose detector stage b went on to train
    text = TINY_RECIPE.replace("iterations = 8\n", "") + (
        '\n[[train.stages]]\nname = "a"\niterations = 2\nlr = 0.05\n'
        '\n[[train.stages]]\nname = "b"\niterations = 2\nlr = 0.05\nfreeze = ["backbone.*", "seg_head.*"]\n'
    )
    sets = [f"data.root={synthetic_prepared}", "eval.metrics=miou", "eval.interval=1"]
    recipe = load_recipe(write_recipe(tmp_path, text, "staged.toml"), sets)
    run = tmp_path / "run"
    result = train(recipe, run, progress=False)
    assert [r["iteration"] for r in _records(run, "eval")] == [1, 2, 3, 4]  # monitored throughout
    scores = [r["metrics"]["miou"] for r in _records(run, "eval")]
    assert scores[1] == scores[2] == scores[3]  # stage b leaves the segmentation as it was
    assert result["best"]["iteration"] == 3  # the first evaluation after stage b's weights moved
    assert load_checkpoint(run / "checkpoints" / "best.pt")["iteration"] == result["best"]["iteration"]


def test_best_reported_is_selected_on_a_held_out_split_and_eval_says_which_file(
    tmp_path, synthetic_prepared, capsys, monkeypatch
):
    data = tmp_path / "data"
    shutil.copytree(synthetic_prepared, data)
    shutil.copytree(data / "val", data / "heldout")  # a held-out split: images the train split does not have
    meta = json.loads((data / "dataset.json").read_text())
    meta["splits"] = [*meta["splits"], "heldout"]
    (data / "dataset.json").write_text(json.dumps(meta))
    recipe = write_recipe(tmp_path)
    sets = ["eval.metrics=miou", "eval.interval=2", "train.iterations=4"]
    out = tmp_path / "best-run"
    argv = ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(out), "-q"]
    assert (
        run_cli(
            [*argv, *[a for s in [*sets, "eval.checkpoint=best", "eval.select_split=heldout"] for a in ("--set", s)]]
        )
        == 0
    )
    select = _records(out, "select")
    assert [(r["split"], r["iteration"]) for r in select] == [("heldout", 2), ("heldout", 4)]
    best = load_checkpoint(out / "checkpoints" / "best.pt")["best"]
    assert best["split"] == "heldout" and best["value"] == max(r["metrics"]["miou"] for r in select)
    assert find_run_checkpoint(out) == out / "checkpoints" / "best.pt"
    capsys.readouterr()
    assert run_cli(["eval", "--run", str(out)]) == 0
    assert (
        f'scored {out / "checkpoints" / "best.pt"} (the run reports [eval] checkpoint = "best")'
        in capsys.readouterr().out
    )

    last = tmp_path / "last-run"  # the default: the model at the end of the schedule, best.pt beside it
    argv = ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(last), "-q"]
    assert run_cli([*argv, *[a for s in sets for a in ("--set", s)]]) == 0
    assert (last / "checkpoints" / "best.pt").is_file() and find_run_checkpoint(
        last
    ) == last / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert run_cli(["eval", "--run", str(last)]) == 0
    assert (
        f'scored {last / "checkpoints" / "last.pt"} (the run reports [eval] checkpoint = "last")'
        in capsys.readouterr().out
    )
