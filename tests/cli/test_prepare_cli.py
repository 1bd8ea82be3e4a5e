"""`mtl prepare ...` from the command line: success paths, exit status 2 with one line for bad input."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from mtlcli.cli.main import main


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_synthetic_then_cityscapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "city", tmp_path / "data"
    assert (
        run(
            [
                "prepare",
                "synthetic",
                "--out",
                str(src),
                "--train",
                "2",
                "--val",
                "1",
                "--size",
                "48",
                "96",
                "--seed",
                "5",
                "-j",
                "1",
            ]
        )
        == 0
    )
    marker = json.loads((src / "mtl_synthetic.json").read_text())
    assert marker["size"] == [48, 96] and marker["seed"] == 5
    assert run(["prepare", "cityscapes", str(src), "--out", str(out), "--workers", "1", "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "crowd regions" in printed and "1 images in" in printed  # the summary table and the last line
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["splits"] == ["val"] and meta["name"] == "cityscapes"
    assert len(json.loads((out / "val" / "instances.json").read_text())["images"]) == 1


def test_next_line_names_a_recipe_the_splits_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], synthetic_source: Path
) -> None:
    out = tmp_path / "train only"
    assert (
        run(["prepare", "cityscapes", str(synthetic_source), "--out", str(out), "--split", "train", "-j", "1", "-q"])
        == 0
    )
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("next: ")]
    command, note = line.removeprefix("next: ").split("   (")
    assert shlex.split(command) == [
        "mtl",
        "train",
        "--recipe",
        "ivanet-tiny-synthetic",
        "--data",
        str(out),
        "--set",
        "eval.metrics=[]",
        "--set",
        "eval.best_metric=",
    ]
    assert "no val split, so no evaluation" in note  # the recipe evaluates on val, which was not prepared


def test_default_out_is_mtl_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_source: Path) -> None:
    monkeypatch.setenv("MTL_DATA", str(tmp_path / "datasets"))
    assert run(["prepare", "cityscapes", str(synthetic_source), "-j", "1"]) == 0
    assert (tmp_path / "datasets" / "cityscapes" / "dataset.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prepare", "cityscapes", "{tmp}/missing", "--out", "{tmp}/out"], "no such folder"),
        (["prepare", "cityscapes", "{tmp}", "--out", "{tmp}/out"], "no leftImg8bit/ folder"),
        (["prepare", "synthetic", "--out", "{tmp}/s", "--train", "0", "--val", "0"], "at least one image"),
        (["prepare", "synthetic", "--out", "{tmp}/s", "--size", "8", "16"], "too small"),
        (["prepare", "coco", "{tmp}/missing", "--out", "{tmp}/out"], "missing"),
        (["prepare", "mot15", "{tmp}/missing", "--out", "{tmp}/out"], "missing"),
        (["prepare", "voc", "--voc2012", "{tmp}/missing", "--out", "{tmp}/out"], "missing"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_non_empty_out_and_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], synthetic_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert run(["prepare", "cityscapes", str(synthetic_source), "--out", str(out), "-j", "1"]) == 2
    assert "pass --force" in error_lines(capsys)[0]
    assert run(["prepare", "synthetic", "--out", str(out)]) == 2
    assert "not empty" in error_lines(capsys)[0]
    assert (out / "keep.txt").read_text() == "x"

    # an image without ground truth: skipped and listed, or exit 2 under --strict
    bad = tmp_path / "bad"
    shutil.copytree(synthetic_source, bad)
    image = next(bad.glob("leftImg8bit/train/*/*.png"))
    shutil.copy(image, image.parent / "town_000000_000019_leftImg8bit.png")
    monkeypatch.setenv("COLUMNS", "250")  # keep rich from wrapping the lines checked below
    assert run(["prepare", "cityscapes", str(bad), "--out", str(tmp_path / "o1"), "-j", "1"]) == 0
    captured = capsys.readouterr()
    assert "no ground truth" in captured.out and "1 file(s) skipped" in captured.out
    assert run(["prepare", "cityscapes", str(bad), "--out", str(tmp_path / "o2"), "-j", "1", "--strict"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "no ground truth" in lines[0] and "--strict" in lines[0]


def test_help_lists_every_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["prepare", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("cityscapes", "voc", "coco", "mot15", "synthetic"):
        assert name in text


def test_nothing_prepared_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], synthetic_source: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(synthetic_source, src, ignore=shutil.ignore_patterns("*_gtFine_*"))
    assert run(["prepare", "cityscapes", str(src), "--out", str(tmp_path / "o"), "-j", "1"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "none of the 9 images could be prepared" in lines[0]


def test_quickstart_makes_and_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "qs"
    argv = [
        "quickstart",
        "--workdir",
        str(work),
        "--train",
        "2",
        "--val",
        "1",
        "--size",
        "48",
        "96",
        "-j",
        "1",
        "--num-viz",
        "1",
        "--no-train",
    ]
    assert run(argv) == 0
    assert json.loads((work / "data" / "dataset.json").read_text())["source"] == str((work / "synthetic").resolve())
    stamp = (work / "data" / "val" / "instances.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run(argv) == 0
    assert "reusing the prepared dataset" in capsys.readouterr().out
    assert (work / "data" / "val" / "instances.json").stat().st_mtime_ns == stamp

    other = [a if a != "2" else "3" for a in argv]  # other settings over the same workdir
    assert run(other) == 2
    assert "--force" in error_lines(capsys)[0]
    assert run(other + ["--force"]) == 0
    assert len(json.loads((work / "data" / "train" / "instances.json").read_text())["images"]) == 3
