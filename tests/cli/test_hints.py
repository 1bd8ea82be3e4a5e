"""Every hint `mtl` prints ("run X first", "next: X") works as printed, from a fresh directory (issue 18)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mtlcli.cli.main import main
from mtlcli.engine.checkpoint import load_checkpoint
from tests.data.test_coco import coco  # noqa: F401 (fixture: a COCO 2017 tree)
from tests.data.test_mot15 import mot  # noqa: F401 (fixture: a 2DMOT2015 tree)
from tests.data.test_voc import voc  # noqa: F401 (fixture: VOC2007 + VOC2012 + SBD trees)
from tests.engine.tiny_model import tiny_registered, train_losses, write_recipe  # noqa: F401 (fixture)

# drawing the default synthetic city (360 images of 256x512) takes minutes on a CPU: the test appends
# options that only make it smaller to the command it was told to run
SMALL_CITY = ["--train", "2", "--val", "1", "--size", "64", "128", "-j", "1"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _commands(text: str) -> list[list[str]]:
    """The `mtl ...` commands quoted in backticks, or after "next:", as argument lists without "mtl"."""
    found = re.findall(r"`(mtl [^`]+)`", text)
    found += [m.split("   (")[0] for m in re.findall(r"next: (mtl [^\n|]+)", text)]
    return [shlex.split(c)[1:] for c in found]


@pytest.fixture()
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MTL_DATA", raising=False)
    return tmp_path


def test_train_without_data_leads_to_a_trained_run(fresh: Path, capsys: pytest.CaptureFixture[str]):
    train = [
        "train",
        "--recipe",
        "ivanet-tiny-synthetic",
        "--out",
        "run",
        "-q",
        "--device",
        "cpu",
        "--set",
        "train.iterations=1",
        "--set",
        "train.batch_size=1",
        "--set",
        "eval.interval=1",
    ]
    code, out, err = _run(train, capsys)
    assert code == 2 and out == ""  # no "training ... into RUN" before the data is found
    assert len(err.strip().splitlines()) == 1
    hinted = _commands(err)
    assert [c[:2] for c in hinted] == [["prepare", "synthetic"], ["prepare", "cityscapes"]], err
    code, out, err = _run(hinted[0] + SMALL_CITY, capsys)
    assert code == 0, err
    nxt = _commands(out)
    assert nxt == [hinted[1]], out  # the synthetic city's own hint is the second step of train's
    code, out, err = _run(hinted[1] + ["-q"], capsys)
    assert code == 0, err
    assert (fresh / "data" / "synthetic" / "dataset.json").is_file()
    code, out, err = _run(train, capsys)
    assert code == 0, err
    evaluate = [c for c in _commands(out) if c[0] == "eval"]
    assert evaluate, out
    code, out, err = _run(evaluate[0] + ["-q", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "miou" in out and len(out.strip().splitlines()) == 1  # eval -q: one line

    # provenance: the run's recipe.toml header and the eval JSON name version, command line and commit
    import json
    import tomllib

    from mtlcli import __version__

    text = (fresh / "run" / "recipe.toml").read_text()
    assert text.startswith(f"# written by mtl {__version__} (git ")
    assert "# command: mtl train --recipe ivanet-tiny-synthetic --out run" in text
    assert tomllib.loads(text)["data"]["dataset"] == "synthetic"
    saved = sorted((fresh / "run" / "eval").glob("*.json"))
    assert saved, "eval --run keeps its results in RUN/eval/"
    prov = json.loads(saved[-1].read_text())["provenance"]
    assert prov["mtl_version"] == __version__ and prov["command"].startswith("mtl eval --run run")
    # --out F writes F only
    code, _, err = _run(evaluate[0] + ["-q", "--device", "cpu", "--out", "res.json"], capsys)
    assert code == 0, err
    assert (fresh / "res.json").is_file() and sorted((fresh / "run" / "eval").glob("*.json")) == saved


def test_synthetic_hint_avoids_preparing_inside_the_source(fresh: Path, capsys: pytest.CaptureFixture[str]):
    code, out, err = _run(["prepare", "synthetic", "--out", "data/synthetic", *SMALL_CITY], capsys)
    assert code == 0, err
    (nxt,) = _commands(out)
    assert "then train with --data" in out
    code, _, err = _run(nxt + ["-q"], capsys)
    assert code == 0, err


def test_voc_hint_uses_the_options_prepare_voc_takes(fresh: Path, capsys: pytest.CaptureFixture[str]):
    code, _, err = _run(["train", "--recipe", "ivanet512", "-q"], capsys)
    assert code == 2
    (cmd,) = _commands(err)
    assert cmd[:2] == ["prepare", "voc"] and "--voc2012" in cmd
    code, _, err = _run(cmd, capsys)  # no VOC here: the command parses and names the missing folder
    assert code == 2
    assert "No such option" not in err and "Missing" not in err and "Usage" not in err
    assert "VOC2012" in err and len(err.strip().splitlines()) == 1


def test_resume_without_out_names_it(fresh: Path, capsys: pytest.CaptureFixture[str]):
    code, _, err = _run(["train", "--recipe", "ivanet-tiny-synthetic", "--resume"], capsys)
    assert code == 2 and "--out RUN" in err


# the quickstart kept small: a 3-image city at 64x128 and two training iterations
QUICKSTART = [
    "quickstart",
    "--workdir",
    "qs",
    *SMALL_CITY,
    "--num-viz",
    "1",
    "--set",
    "train.iterations=2",
    "--set",
    "train.batch_size=1",
    "--set",
    "eval.interval=2",
    "--set",
    "model.input_size=[64,128]",
]
SHORT_TRAIN = ["--set", "train.iterations=1", "--set", "train.batch_size=1", "-q", "--device", "cpu"]


def test_quickstart_next_line_works_as_printed(fresh: Path, capsys: pytest.CaptureFixture[str]):
    code, out, err = _run(QUICKSTART, capsys)
    assert code == 0, err
    (line,) = [ln for ln in out.splitlines() if ln.startswith("next: ")]
    commands = [shlex.split(c) for c in line.removeprefix("next: ").split(" | ")]
    assert [c[:2] for c in commands] == [["mtl", "eval"], ["mtl", "viz"], ["mtl", "train"]], line
    run_dir = fresh / "qs" / "runs" / "ivanet-tiny-synthetic"
    code, out, err = _run(commands[0][1:] + ["-q"], capsys)
    assert code == 0, err
    assert "miou" in out
    code, out, err = _run(commands[1][1:], capsys)
    assert code == 0, err
    assert "wrote 1 prediction overlay(s)" in out
    code, out, err = _run(commands[2][1:] + SHORT_TRAIN, capsys)  # the hint's training, one iteration long
    assert code == 0, err
    assert (fresh / "runs" / "ivanet-tiny-synthetic" / "exp1" / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file()


@pytest.fixture()
def tiny_train(fresh: Path, synthetic_prepared: Path, tiny_registered: str) -> list[str]:
    """`mtl train` of the engine tests' tiny model (4 iterations) into ./run, as a user would type it."""
    return [
        "train",
        "--recipe",
        str(write_recipe(fresh)),
        "--data",
        str(synthetic_prepared),
        "--out",
        "run",
        "-q",
        "--device",
        "cpu",
        "--set",
        "train.iterations=4",
        "--set",
        "train.checkpoint_interval=2",
    ]


def test_interrupted_train_resumes_as_printed(fresh: Path, tiny_train: list[str], capsys: pytest.CaptureFixture[str]):
    code, _, err = _run(tiny_train + ["--set", "model.fail_at=3", "--set", "model.failure=interrupt"], capsys)
    assert code == 130
    (resume,) = _commands(err)  # printed with -q too
    assert resume == ["train", "--resume", "--out", "run"], err
    # the same train command again names the same way on
    code, _, err = _run(tiny_train, capsys)
    assert code == 2 and _commands(err) == [resume], err
    code, _, err = _run(resume, capsys)  # the run's own recipe.toml: the injected interrupt comes at call 3 again,
    assert code == 0, err  # after the two iterations that were left
    assert load_checkpoint(fresh / "run" / "checkpoints" / "last.pt")["iteration"] == 4
    assert [r["iteration"] for r in train_losses(fresh / "run")] == [1, 2, 3, 4]


def test_finished_run_hints_lead_to_a_longer_run(
    fresh: Path, tiny_train: list[str], capsys: pytest.CaptureFixture[str]
):
    code, _, err = _run(tiny_train, capsys)
    assert code == 0, err
    code, _, err = _run(tiny_train, capsys)
    assert code == 2
    (resume,) = _commands(err)
    code, _, err = _run(resume, capsys)
    assert code == 2 and "already finished 4 of 4 iterations" in err
    (longer,) = _commands(err)
    assert longer == ["train", "--resume", "--out", "run", "--set", "train.iterations=8"], err
    code, _, err = _run(longer, capsys)
    assert code == 0, err
    assert load_checkpoint(fresh / "run" / "checkpoints" / "last.pt")["iteration"] == 8


def test_diverged_run_resumes_with_a_lower_lr_as_printed(
    fresh: Path, tiny_train: list[str], capsys: pytest.CaptureFixture[str]
):
    code, _, err = _run(tiny_train + ["--set", "model.fail_at=3", "--set", "model.failure=nan"], capsys)
    assert code == 2 and "non-finite loss at iteration 3" in err
    (lower,) = _commands(err)
    assert lower == ["train", "--resume", "--out", "run", "--set", "train.lr=0.005"], err
    code, _, err = _run(lower, capsys)
    assert code == 0, err
    import tomllib

    assert tomllib.loads((fresh / "run" / "recipe.toml").read_text())["train"]["lr"] == 0.005
    assert load_checkpoint(fresh / "run" / "checkpoints" / "last.pt")["iteration"] == 4


def test_custom_coco_next_line_trains_as_printed(
    fresh: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    from tests.data.test_coco import CAR, PERSON_POLY, ann, compressed_rle, custom_coco

    c = custom_coco(Path("."), [ann(1, 101, 12, PERSON_POLY), ann(2, 205, 3, compressed_rle(CAR))])
    code, out, err = _run(
        ["prepare", "coco", "--train-json", str(c["json"]), "--train-images", str(c["images"]), "--out", "mine", "-q"],
        capsys,
    )
    assert code == 0, err
    (train,) = _commands(out)
    assert train[:5] == ["train", "--recipe", "ivanet-custom", "--data", "mine"] and "no val split" in out, out

    def offline(*args, **kwargs):
        raise URLError("no network in the test")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)  # never downloads; as on a machine offline
    code, _, err = _run(train + SHORT_TRAIN + ["--set", "train.workers=0"], capsys)  # one iteration
    assert code == 2 and "could not download the ImageNet weights" in err and "set it to false" in err, err
    assert not (fresh / "runs").exists()  # nothing left behind
    code, out, err = _run(
        train + SHORT_TRAIN + ["--set", "train.workers=0", "--set", "model.pretrained_backbone=false"], capsys
    )
    assert code == 0, err
    assert (fresh / "runs" / "ivanet-custom" / "exp1" / "checkpoints" / "last.pt").is_file()
    assert "no [eval] metrics" in out and _commands(out) == []  # no evaluation command that would fail


def test_train_names_an_eval_command_only_where_it_runs(synthetic_prepared: Path, tmp_path: Path):
    from mtlcli.hints import eval_hint
    from mtlcli.recipes import load_recipe
    from tests.data.test_dataset import build_tiny_prepared

    recipe = load_recipe("ivanet-tiny-synthetic", [f"data.root={synthetic_prepared}"])
    assert _commands(eval_hint("my run", recipe)) == [["eval", "--run", "my run"]]
    recipe["data"]["root"] = str(build_tiny_prepared(tmp_path))  # a train split only
    assert "has no val split" in eval_hint("my run", recipe) and _commands(eval_hint("my run", recipe)) == []
    recipe["eval"]["metrics"] = []
    assert "no [eval] metrics" in eval_hint("my run", recipe) and _commands(eval_hint("my run", recipe)) == []


# ------------------------------------------------------------------ `mtl prepare ...` ends with `next: mtl train`

NO_DOWNLOAD = ["--set", "model.pretrained_backbone=false"]  # the real recipes start from ImageNet weights


class _TrainingLoop(Exception):
    """Raised where `mtl train` would start iterating: every check of the command before it has passed."""


def _reaches_training_loop(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run `mtl ARGV` up to its first batch (datasets, splits, overlap, classes, anchors, model, weights)."""

    def loop(*args, **kwargs):
        raise _TrainingLoop

    monkeypatch.setattr("mtlcli.engine.train.make_loader", loop)
    try:
        main(argv)
    except _TrainingLoop:
        return
    except SystemExit as exc:
        pytest.fail(f"`mtl {shlex.join(argv)}` stopped with status {exc.code}: {capsys.readouterr().err}")
    pytest.fail(f"`mtl {shlex.join(argv)}` never reached the training loop")


def _next_train(out: str) -> list[str]:
    (line,) = [ln for ln in out.splitlines() if ln.startswith("next: ")]
    (cmd,) = _commands(line)
    return cmd


def test_prepare_synthetic_city_next_line_trains_as_printed(fresh: Path, capsys: pytest.CaptureFixture[str]):
    code, _, err = _run(["prepare", "synthetic", "--out", "city", *SMALL_CITY], capsys)
    assert code == 0, err
    code, out, err = _run(["prepare", "cityscapes", "city", "--out", "my data", "-q", "-j", "1"], capsys)
    assert code == 0, err
    train = _next_train(out)  # printed with -q as well
    assert train == ["train", "--recipe", "ivanet-tiny-synthetic", "--data", "my data"], out
    code, out, err = _run(train + SHORT_TRAIN, capsys)  # one iteration of it
    assert code == 0, err
    assert (fresh / "runs" / "ivanet-tiny-synthetic" / "exp1" / "checkpoints" / "last.pt").is_file()


def test_prepare_cityscapes_next_line_reaches_training(
    fresh: Path, synthetic_source: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    import shutil

    from mtlcli.data.synthetic import MARKER

    shutil.copytree(synthetic_source, "cityscapes", ignore=shutil.ignore_patterns(MARKER))  # as a real Cityscapes tree
    code, out, err = _run(["prepare", "cityscapes", "cityscapes", "--out", "data/cs", "-j", "1"], capsys)
    assert code == 0, err
    train = _next_train(out)
    assert train == ["train", "--recipe", "imtl-cityscapes", "--data", "data/cs"], out
    _reaches_training_loop(train + NO_DOWNLOAD + ["-q", "--device", "cpu", "--out", "run"], monkeypatch, capsys)
    code, out, _ = _run(
        ["prepare", "cityscapes", "cityscapes", "--out", "val-only", "--split", "val", "-j", "1"], capsys
    )
    assert code == 0 and "next:" not in out  # nothing to train on: no train command


@pytest.mark.parametrize(
    "sources, recipe, sets",
    [
        (["voc2012", "voc2007", "sbd"], "ivanet300", []),
        (["voc2012", "voc2007"], "maskrcnn-r50-voc", []),
        (["voc2012", "sbd"], "ivanet300", ["--set", "data.train_split=train_aug", "--set", "data.test_split="]),
        (["voc2012"], "ivanet300", ["--set", "data.train_split=train", "--set", "data.test_split="]),
    ],
)
def test_prepare_voc_next_line_reaches_training(
    fresh: Path,
    voc: dict[str, Path],
    sources: list[str],
    recipe: str,
    sets: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    options = [a for s in sources for a in (f"--{s}", str(voc[s]))]
    code, out, err = _run(["prepare", "voc", *options, "--out", "data/voc", "-q", "-j", "1"], capsys)
    assert code == 0, err
    train = _next_train(out)
    assert train == ["train", "--recipe", recipe, "--data", "data/voc", *sets], out
    _reaches_training_loop(train + NO_DOWNLOAD + ["-q", "--device", "cpu", "--out", "run"], monkeypatch, capsys)


def test_prepare_coco_and_mot15_next_lines_reach_training(
    fresh: Path,
    coco: dict[str, Path],
    mot: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    # the COCO tree holds 3 of COCO's 80 categories: the recipe's class counts follow it
    few = ["--set", "model.num_det_classes=3", "--set", "model.num_seg_classes=4"]
    for argv, recipe, extra in (
        (["coco", str(coco["src"])], "ivanet300-coco", few),
        (["mot15", str(mot["src"])], "ssd300-mot15", []),
    ):
        code, out, err = _run(["prepare", *argv, "--out", f"data/{argv[0]}", "-q", "-j", "1"], capsys)
        assert code == 0, err
        train = _next_train(out)
        assert train == ["train", "--recipe", recipe, "--data", f"data/{argv[0]}"], out
        _reaches_training_loop(
            train + NO_DOWNLOAD + extra + ["-q", "--device", "cpu", "--out", f"run-{argv[0]}"], monkeypatch, capsys
        )
