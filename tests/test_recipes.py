"""Recipes: extends, defaults, typed --set overrides, rejection of bad recipes, `mtl recipes list|show`."""

from __future__ import annotations

import tomllib

import pytest

from mtlcli.cli.main import main
from mtlcli.errors import UserError
from mtlcli.recipes import RECIPES_DIR, available_recipes, dump_toml, load_recipe, total_iterations
from tests.engine.tiny_model import TINY_RECIPE, tiny_registered, write_recipe  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("tiny_registered")


def test_defaults_are_filled_and_the_model_table_kept_as_written(tmp_path):
    r = load_recipe(write_recipe(tmp_path))
    assert r["model"] == {"name": "tiny_test"}
    assert r["train"]["lr"] == 0.05 and r["train"]["accumulate"] == 1 and r["train"]["amp"] == "none"
    assert r["data"]["train_split"] == "train" and r["eval"]["interval"] == 1000


def test_extends_merges_table_by_table_and_paths_are_relative_to_the_child(tmp_path):
    write_recipe(tmp_path, TINY_RECIPE, "base.toml")
    (tmp_path / "sub").mkdir()
    child = write_recipe(
        tmp_path / "sub", 'extends = "../base.toml"\n[model]\nwidth = 4\n[train]\nlr = 0.2\n', "child.toml"
    )
    r = load_recipe(child)
    assert r["model"] == {"name": "tiny_test", "width": 4}
    assert r["train"]["lr"] == 0.2 and r["train"]["iterations"] == 8  # overridden / inherited
    assert "extends" not in r


def valid_base_recipes() -> list[str]:
    """Shipped recipes that load and extend nothing (what another recipe may extend)."""
    out = []
    for name in available_recipes():
        text = (RECIPES_DIR / f"{name}.toml").read_text()
        if "extends" not in tomllib.loads(text):
            out.append(name)
    return out


def test_extends_by_shipped_recipe_name(tmp_path):
    name = valid_base_recipes()[0]
    child = write_recipe(tmp_path, f'extends = "{name}"\n[train]\niterations = 7\n', "child.toml")
    r = load_recipe(child)
    assert r["train"]["iterations"] == 7
    assert r["model"]["name"] == load_recipe(name)["model"]["name"]


def test_only_one_level_of_extends(tmp_path):
    write_recipe(tmp_path, TINY_RECIPE, "a.toml")
    write_recipe(tmp_path, 'extends = "a.toml"\n', "b.toml")
    c = write_recipe(tmp_path, 'extends = "b.toml"\n', "c.toml")
    with pytest.raises(UserError, match="only one level of extends"):
        load_recipe(c)


def test_overrides_are_parsed_to_the_type_of_their_key(tmp_path):
    r = load_recipe(
        write_recipe(tmp_path),
        [
            "train.lr=1",
            "train.steps=[100, 200]",
            "train.amp=bf16",
            "eval.metrics=miou,voc07",
            "model.width=4",
            "train.loss_weights.loss_seg=0.5",
            "data.flip=false",
            "data.scale_range=[0.5, 2]",
        ],
    )
    assert r["train"]["lr"] == 1.0 and isinstance(r["train"]["lr"], float)
    assert r["train"]["steps"] == [100, 200]
    assert r["train"]["amp"] == "bf16"
    assert r["eval"]["metrics"] == ["miou", "voc07"]
    assert r["model"]["width"] == 4
    assert r["train"]["loss_weights"] == {"loss_seg": 0.5}
    assert r["data"]["flip"] is False and r["data"]["scale_range"] == [0.5, 2.0]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "unknown key train.lrr; valid: optimizer, lr,"),
        ("train.lr=fast", "train.lr must be a number, got 'fast'"),
        ("train.optimizer=rmsprop", "train.optimizer = 'rmsprop'; valid: sgd, adam, adamw"),
        ("train.batch_size=2.5", "train.batch_size must be an integer"),
        ("eval.metrics=miou,map", "unknown metric(s) map in eval.metrics; valid: miou, dt, voc07"),
        ("model.depth=3", "model 'tiny_test' has no argument 'depth'; valid: dropout, fail_at"),
        ("model.width=wide", "model.width must be an integer"),
        ("nothing", "expected section.key=value"),
        ("solver.lr=1", "key must be one of model.*, data.*, train.*, eval.*"),
        ("eval.best_metric=voc07", "eval.best_metric 'voc07' is not among eval.metrics"),
        ("train.stages=[]", "stages cannot be set from the command line"),
    ],
)
def test_bad_overrides_are_rejected_with_the_valid_choices(tmp_path, override, message):
    with pytest.raises(UserError) as info:
        load_recipe(write_recipe(tmp_path), [override])
    assert message in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (TINY_RECIPE + "\n[solver]\nlr = 1\n", "unknown section(s) solver"),
        (
            TINY_RECIPE.replace("iterations = 8", "iterations = 8\nepochs = 3"),
            "unknown key(s) train.epochs; valid [train] keys:",
        ),
        (TINY_RECIPE.replace('name = "tiny_test"', 'name = "yolo"'), "unknown model 'yolo'; valid models:"),
        (TINY_RECIPE.replace('dataset = "synthetic"', ""), "data.dataset is not set"),
        (TINY_RECIPE.replace("lr = 0.05", 'lr = "0.05"'), "train.lr must be a number"),
        (
            TINY_RECIPE + "\n[[train.stages]]\niterations = 5\nlr = 0.1\nfrozen = []\n",
            "unknown key(s) frozen in train.stages[0]; valid: name, iterations, lr, loss_weights, freeze",
        ),
        (TINY_RECIPE + "\n[data.label_map]\nseg = { road = 1 }\n", "data.label_map.seg is invalid"),
        ("[model\nname=", "is not valid TOML"),
        (TINY_RECIPE.replace("steps = [1000]", "steps = [1000, 10]"), "train.steps must be increasing"),
    ],
)
def test_bad_recipe_files_are_rejected(tmp_path, text, message):
    with pytest.raises(UserError) as info:
        load_recipe(write_recipe(tmp_path, text))
    assert message in str(info.value)


def test_unknown_recipe_name_lists_the_recipes():
    with pytest.raises(UserError) as info:
        load_recipe("no-such-recipe")
    assert "unknown recipe 'no-such-recipe'; valid recipes:" in str(info.value)
    assert all(name in str(info.value) for name in available_recipes())


def test_dump_toml_round_trips_stages_label_map_and_loss_weights(tmp_path):
    text = (
        TINY_RECIPE
        + """
[data.label_map]
seg = { road = "road", car = "vehicle", "traffic light" = "object" }
det = { car = "vehicle" }

[[train.stages]]
name = "seg"
iterations = 3
lr = 0.001
loss_weights = { loss_det = 0.0 }
freeze = ["det_head.*"]

[[train.stages]]
iterations = 2
lr = 0.0001
"""
    )
    r = load_recipe(write_recipe(tmp_path, text), ["train.loss_weights.loss_seg=2.0"])
    again = tomllib.loads(dump_toml(r))
    assert again == r
    assert [s["name"] for s in r["train"]["stages"]] == ["seg", "stage2"]
    assert total_iterations(r) == 5


@pytest.mark.parametrize("name", available_recipes())
def test_every_shipped_recipe_is_valid(name):
    r = load_recipe(name)  # checks [model] against the registered builder
    assert total_iterations(r) >= 1


def test_cli_show_prints_the_resolved_recipe(capsys):
    name = valid_base_recipes()[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["recipes", "show", name, "--set", "train.iterations=12"])
    assert exit_info.value.code == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["train"]["iterations"] == 12
    assert shown == load_recipe(name, ["train.iterations=12"])


def test_cli_list_shows_every_recipe_with_model_and_dataset(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exit_info:
        main(["recipes", "list"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in available_recipes():
        row = next(line for line in out.splitlines() if f" {name} " in line)
        try:
            r = load_recipe(name, check_model=False)
        except UserError:
            assert "invalid:" in row
            continue
        assert r["model"]["name"] in row and r["data"]["dataset"] in row and str(total_iterations(r)) in row


def test_cli_unknown_recipe_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["recipes", "show", "no-such-recipe"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown recipe 'no-such-recipe'") and "\n" not in err


def test_pretrained_backbone_may_be_a_local_weights_file():
    # offline users point pretrained_backbone at a torchvision .pth instead of true (download)
    recipe = load_recipe("ivanet300", ['model.pretrained_backbone="/weights/resnet50.pth"'])
    assert recipe["model"]["pretrained_backbone"] == "/weights/resnet50.pth"
    with pytest.raises(UserError, match="pretrained_backbone"):
        load_recipe("ivanet300", ["model.pretrained_backbone=3"])


# ------------------------------------------------------------------------------ model selection (issue 27)


def _own_tables(name: str) -> dict:
    """A shipped recipe's tables as its file (and the recipe it extends) write them, before defaults."""
    from mtlcli.recipes import find_recipe, merge, read_toml

    path = find_recipe(name)
    raw = read_toml(path)
    base = raw.pop("extends", None)
    return merge(read_toml(find_recipe(base, relative_to=path.parent)), raw) if base else raw


def _is_paper_recipe(name: str) -> bool:
    return not name.endswith(("-tiny-synthetic", "-custom"))


def test_every_paper_recipe_names_its_reported_checkpoint_and_none_selects_on_a_test_split():
    from mtlcli.recipes import selection_split

    names = available_recipes()
    assert sum(map(_is_paper_recipe, names)) >= 40  # whatever recipes/ holds, new ones included
    for name in names:
        recipe = load_recipe(name)
        ev, data = recipe["eval"], recipe["data"]
        if _is_paper_recipe(name):
            assert _own_tables(name).get("eval", {}).get("checkpoint") in ("last", "best"), name
        split = selection_split(recipe)
        assert not split.lower().startswith("test"), (name, split)
        if ev["checkpoint"] == "best":  # a reported best.pt is picked on a held-out split, not the reported one
            assert split and split not in (data["val_split"], data["test_split"]), name


def test_selection_on_a_test_split_or_reporting_a_best_picked_on_the_reported_split_is_refused(tmp_path):
    path = write_recipe(tmp_path)
    for sets, says in (
        (["eval.metrics=miou", "data.val_split=test"], "best.pt would be selected on 'test', a test split"),
        (["eval.metrics=miou", "eval.select_split=test-dev"], "a test split"),
        (["eval.metrics=miou", "eval.checkpoint=best"], "selected on 'val', the split it is reported on"),
        (["eval.checkpoint=best"], "selected on no split"),
    ):
        with pytest.raises(UserError, match=says):
            load_recipe(path, sets)
    assert load_recipe(path, ["eval.metrics=miou", "data.val_split=test", "eval.select_split=none"])
    held_out = load_recipe(path, ["eval.metrics=miou", "eval.checkpoint=best", "eval.select_split=minival"])
    assert held_out["eval"]["select_split"] == "minival"
