"""Issue 30, causes 9 and 12 and the run / checkpoint items of its Noisy list: the command recorded in
RUN/recipe.toml, `--set` values, a checkpoint's recipe and contents, `--resume` over a half-written
metrics.jsonl, `mtl runs` over broken runs, float images and batch sizes in the API."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlcli.errors import UserError
from tests.safety.common import cli, one_line


def test_a_newline_in_an_argument_stays_in_the_comment(tmp_path: Path):
    from mtlcli.provenance import header, set_command
    from mtlcli.recipes import dump_toml, load_recipe

    hostile = 'runs/a\nextends = "ssd300-tiny-synthetic" #'
    set_command(["train", "--recipe", "ivanet-tiny-synthetic", "--out", hostile])
    try:
        text = header() + dump_toml(load_recipe("ivanet-tiny-synthetic", check_model=False))
    finally:
        set_command(None)
    lines = text.splitlines()
    assert lines[1].startswith("# command: mtl train") and not any(ln.startswith("extends") for ln in lines)
    assert "extends" not in tomllib.loads(text)  # the recipe --resume merges is the one that was run
    recorded = lines[1].removeprefix("# command: ")
    words = subprocess.run(["bash", "-c", f"printf '%s\\0' {recorded}"], capture_output=True, text=True).stdout
    assert words.split("\0")[:-1] == ["mtl", "train", "--recipe", "ivanet-tiny-synthetic", "--out", hostile]


@pytest.mark.parametrize(
    "item, why",
    [
        ("train.lr=0.001\n[model]\nname = 'ssd'", "newline"),
        ("train.lr=0.001 \n", None),  # a trailing newline is only whitespace
        ("train.lr=0.001\rx", "control character"),
        ("train.lr\n[model]=1", "control character"),
    ],
)
def test_set_takes_exactly_one_toml_value(item: str, why: str | None):
    from mtlcli.recipes import load_recipe

    if why is None:
        assert load_recipe("ivanet-tiny-synthetic", [item], check_model=False)["train"]["lr"] == 0.001
        return
    with pytest.raises(UserError, match=why):
        load_recipe("ivanet-tiny-synthetic", [item], check_model=False)


def _checkpoint(path: Path, model_name: str, **model_keys) -> Path:
    """A checkpoint as `mtl train` writes it, with the recipe's [model] changed (weights are not needed:
    the recipe is checked before the model is built)."""
    from mtlcli.recipes import load_recipe

    recipe = load_recipe(model_name, check_model=False)
    recipe["model"].update(model_keys)
    torch.save({"model": {}, "recipe": recipe, "iteration": 1}, path)
    return path


@pytest.mark.parametrize(
    "recipe, key, value",
    [
        ("ivanet-tiny-synthetic", "score_thresh", 7.0),
        ("ladderdensenet-tiny-synthetic", "growth_rate", -3),
        ("ladderdensenet-tiny-synthetic", "context_width", 10**9),
    ],
)
def test_the_recipe_inside_a_checkpoint_is_range_checked(tmp_path: Path, capsys, recipe, key, value):
    ckpt = _checkpoint(tmp_path / "edited.pt", recipe, **{key: value})
    for command in (["eval", "--checkpoint", ckpt, "-q"], ["export", "--checkpoint", ckpt, "-f", "onnx"]):
        assert cli(command) == 2
        err = one_line(capsys)
        assert f"checkpoint {ckpt}: model.{key} = {value!r} is out of range" in err


def test_a_checkpoint_whose_model_is_a_tensor(tmp_path: Path, capsys):
    path = tmp_path / "tensor.pt"
    torch.save({"model": torch.zeros(3), "recipe": {}}, path)
    assert cli(["predict", tmp_path, "--checkpoint", path]) == 2
    assert "is not an mtl checkpoint" in one_line(capsys)


def test_resume_drops_a_half_written_last_metrics_line(tmp_path: Path):
    from mtlcli.engine.train import MetricsLog

    lines = [json.dumps({"type": "train", "iteration": i, "loss": 1.0}) for i in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"type": "train", "itera')  # killed mid-line
    log = MetricsLog(tmp_path, True, resume_from=2)
    log.write({"type": "train", "iteration": 3, "loss": 0.5})
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3] and records[-1]["loss"] == 0.5


def test_mtl_runs_lists_broken_runs_and_the_others(tmp_path: Path, capsys, monkeypatch):
    from mtlcli.provenance import header, set_command
    from mtlcli.recipes import dump_toml, load_recipe

    monkeypatch.setenv("COLUMNS", "200")
    good = tmp_path / "runs" / "good"
    good.mkdir(parents=True)
    set_command(["train", "--recipe", "ivanet-tiny-synthetic"])
    recipe_text = header() + dump_toml(load_recipe("ivanet-tiny-synthetic", check_model=False))
    set_command(None)
    (good / "recipe.toml").write_text(recipe_text)
    (good / "metrics.jsonl").write_text(json.dumps({"type": "train", "iteration": 2, "loss": 1.0}) + "\n")
    broken = {
        "not-toml": ("[model\n", "{}\n"),
        "not-utf8": (b"\xff\xfe[model]", "{}\n"),
        "unbalanced-quote": ("# command: mtl train --recipe 'x\n" + recipe_text, "{}\n"),
        "record-a-list": (recipe_text, "[1, 2]\n"),
        "iteration-text": (recipe_text, json.dumps({"type": "train", "iteration": "x"}) + "\n"),
        "metrics-not-a-dict": (recipe_text, json.dumps({"type": "eval", "iteration": 1, "metrics": [1]}) + "\n"),
    }
    for name, (toml_text, metrics) in broken.items():
        run = tmp_path / "runs" / name
        run.mkdir()
        (run / "recipe.toml").write_bytes(toml_text if isinstance(toml_text, bytes) else toml_text.encode())
        (run / "metrics.jsonl").write_text(metrics)
    assert cli(["runs", tmp_path / "runs"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "good" in out and "2/" in out
    assert out.count("broken run ") == len(broken), out


def test_api_refuses_float_images_in_0_255_and_batch_size_0(tmp_path: Path):
    from mtlcli.api import Predictor, to_image_tensor

    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.float32)
    with pytest.raises(UserError, match="looks like 0..255: divide by 255"):
        to_image_tensor(image)
    with pytest.raises(UserError, match="0..1"):
        to_image_tensor(torch.from_numpy(image).permute(2, 0, 1))
    assert float(to_image_tensor(image / 255).max()) <= 1.0
    card = {"det_classes": ["a"], "seg_classes": ["b"], "palette": [[0, 0, 0]]}
    predictor = Predictor(torch.nn.Identity(), {"model": {"name": "x"}}, card, "cpu")
    with pytest.raises(UserError, match="batch_size must be a whole number >= 1, got 0"):
        predictor.predict([image / 255], batch_size=0)


def test_atomic_writes_keep_the_old_file_and_name_the_new_one(tmp_path: Path):
    import errno

    from mtlcli.safety import atomic_path, atomic_save, write_error_line

    target = tmp_path / "m.onnx"
    target.write_bytes(b"the earlier, good export")
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new one")
            raise OSError(errno.ENOSPC, "No space left on device")  # the disk fills up
    assert target.read_bytes() == b"the earlier, good export" and sorted(tmp_path.iterdir()) == [target]
    assert (
        write_error_line(info.value)
        == f"error: {target}: no space left on the device — free some space or write elsewhere"
    )

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_save(tmp_path / "dataset.json", full)
    assert str(tmp_path / "dataset.json") in write_error_line(info.value)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
def test_a_full_disk_while_logging_names_the_file(tmp_path: Path):
    from mtlcli.engine.train import MetricsLog
    from mtlcli.safety import write_error_line

    log = MetricsLog(tmp_path, True, resume_from=None)
    log.path = Path("/dev/full")  # every write: ENOSPC, without a file name from the OS
    with pytest.raises(OSError) as info:
        log.write({"type": "train", "iteration": 1})
    assert write_error_line(info.value).startswith("error: /dev/full: no space left on the device")
