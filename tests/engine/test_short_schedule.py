"""Short runs mean short schedules: `--set train.iterations=N` scales warm-up, milestones, stage
boundaries and eval / checkpoint periods by the recipe's N / iterations, says so in one line and writes
the result into RUN/recipe.toml; a schedule key set explicitly is kept as given; --resume keeps the
schedule the run has partly followed."""

from __future__ import annotations

import tomllib

import pytest

from mtlcli.engine.optim import LRSchedule
from mtlcli.recipes import load_recipe
from tests.engine.tiny_model import TINY_RECIPE, tiny_registered, train_losses, write_recipe  # noqa: F401
from tests.viz.conftest import run_cli


def test_a_short_safpn_run_drops_its_rate_and_ends_past_warm_up():
    notes: list[str] = []
    recipe = load_recipe("safpn-ejhead-tiny-synthetic", ["train.iterations=20"], notes=notes)
    train = recipe["train"]  # the recipe: 400 iterations, warm-up 50, x0.1 at 330, checkpoints every 200
    assert (train["iterations"], train["warmup_iters"], train["steps"], train["checkpoint_interval"]) == (
        20,
        2,
        [16],
        10,
    )
    schedule = LRSchedule(train)
    lr = train["lr"]
    assert schedule.lr_at(0) < lr and schedule.lr_at(2) == schedule.lr_at(15) == lr  # warm-up over by 2
    assert schedule.lr_at(19) == pytest.approx(lr * train["gamma"])  # the milestone at the same 82% of the run
    (note,) = notes
    assert note.startswith("schedule scaled x0.05 to train.iterations = 20 (recipe: 400): ")
    assert "train.steps [330] -> [16]" in note and "train.warmup_iters 50 -> 2" in note

    # the recipe's own length, or a key given with --set, is kept as it is
    notes.clear()
    assert load_recipe("safpn-ejhead-tiny-synthetic", ["train.iterations=400"], notes=notes)["train"]["steps"] == [330]
    assert notes == []
    kept = load_recipe(
        "safpn-ejhead-tiny-synthetic", ["train.iterations=20", "train.steps=[12]", "eval.interval=5"], notes=notes
    )
    assert kept["train"]["steps"] == [12] and kept["eval"]["interval"] == 5 and kept["train"]["warmup_iters"] == 2
    assert notes[-1].endswith("; kept as set: eval.interval, train.steps")


def test_staged_recipes_scale_stages_and_periods_together():
    notes: list[str] = []
    recipe = load_recipe("imtl-tiny-synthetic", ["train.iterations=20"], notes=notes)
    assert [s["iterations"] for s in recipe["train"]["stages"]] == [8, 2, 8, 2]
    assert recipe["train"]["checkpoint_interval"] == 5
    assert "stages 8/2/8/2" in notes[0]


@pytest.mark.usefixtures("tiny_registered")
def test_mtl_train_says_it_and_recipe_toml_holds_it(tmp_path, synthetic_prepared, capsys):
    text = TINY_RECIPE.replace("steps = [1000]", "steps = [60]\nwarmup_iters = 40").replace(
        "iterations = 8", "iterations = 80"
    )
    recipe = write_recipe(tmp_path, text.replace("checkpoint_interval = 4", "checkpoint_interval = 40"))
    out = tmp_path / "run"
    base = ["train", "--recipe", str(recipe), "--data", str(synthetic_prepared), "--out", str(out), "-q"]
    assert run_cli([*base, "--set", "train.iterations=8"]) == 0
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("schedule scaled")]
    assert printed == [
        "schedule scaled x0.1 to train.iterations = 8 (recipe: 80): train.warmup_iters 40 -> 4, "
        "train.steps [60] -> [6], train.checkpoint_interval 40 -> 4, eval.interval 1000 -> 100"
    ]
    saved = tomllib.loads((out / "recipe.toml").read_text())["train"]
    assert (saved["iterations"], saved["warmup_iters"], saved["steps"], saved["checkpoint_interval"]) == (8, 4, [6], 4)
    lrs = [r["lr"] for r in train_losses(out)]  # logged every iteration: the rate of iterations 0..7
    assert lrs[0] < lrs[4] == 0.05 and lrs[7] == pytest.approx(0.005)

    # --resume for longer keeps the milestones it has passed (recipe.toml's), and says nothing of scaling
    assert run_cli(["train", "--resume", "--out", str(out), "-q", "--set", "train.iterations=12"]) == 0
    assert "schedule scaled" not in capsys.readouterr().out
    saved = tomllib.loads((out / "recipe.toml").read_text())["train"]
    assert (saved["iterations"], saved["steps"], saved["warmup_iters"]) == (12, [6], 4)
    assert [r["lr"] for r in train_losses(out)][8:] == pytest.approx([0.005] * 4)
