"""`mtl runs`: the runs table (recipe, iterations, best metric, status) and side-by-side comparison."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from mtlcli.cli.main import main
from mtlcli.provenance import header, set_command
from mtlcli.recipes import dump_toml, load_recipe


def _run(root: Path, name: str, logged: int, evals: list[float], *, old: bool = True, lr: float = 0.01) -> Path:
    run = root / name
    run.mkdir(parents=True)
    recipe = load_recipe("ivanet-tiny-synthetic", ["train.iterations=10", f"train.lr={lr}"], check_model=False)
    set_command(["train", "--recipe", "ivanet-tiny-synthetic", "--out", str(run)])
    (run / "recipe.toml").write_text(header() + dump_toml(recipe))
    lines = [{"type": "train", "iteration": i, "loss": 1.0 / i, "images_per_s": 3.0} for i in range(1, logged + 1)]
    lines += [
        {"type": "eval", "iteration": 2 * (k + 1), "metrics": {"miou": v, "voc07": v / 2}} for k, v in enumerate(evals)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if old:
        os.utime(run / "metrics.jsonl", (1e9, 1e9))
    return run


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, " ".join(re.sub("[\u2500-\u257f]", " ", capsys.readouterr().out).split())  # no table borders


def test_table_lists_status_and_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # runs named as typed (runs/a ...), however long tmp_path is
    monkeypatch.setenv("COLUMNS", "120")  # every cell on one line (80 columns: the next test)
    _run(Path("runs"), "a", 10, [0.2, 0.5, 0.4])
    _run(Path("runs"), "nested/b", 6, [0.3])
    _run(Path("runs"), "c", 3, [], old=False)
    Path("runs", "not-a-run").mkdir()
    code, out = _cli(["runs", "runs"], capsys)
    assert code == 0
    assert "10/10" in out and "miou 50.00% @ 4" in out and "finished" in out  # a: best is not the last
    assert "6/10" in out and "interrupted" in out and "miou 30.00% @ 2" in out  # b
    assert "3/10" in out and "running" in out  # c: written just now
    assert out.count("ivanet-tiny-synthetic") == 3 and "not-a-run" not in out


def test_compare_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a = _run(tmp_path, "a", 10, [0.2, 0.5], lr=0.01)
    b = _run(tmp_path, "b", 10, [0.6], lr=0.02)
    code, out = _cli(["runs", "--run", str(a), "--run", str(b)], capsys)  # a run is --run RUN, as everywhere
    assert code == 0
    assert "miou (best) 50.00% 60.00%" in out and "train.lr 0.01 0.02" in out
    assert "model.name" not in out  # only the keys that differ
    assert _cli(["runs", "--compare", str(a), "-c", str(b)], capsys) == (0, out)  # the old spelling still works
    code, _ = _cli(["runs", "--run", str(tmp_path / "none")], capsys)
    assert code == 2
    code, _ = _cli(["runs", str(tmp_path), "--run", str(a)], capsys)
    assert code == 2  # list a folder or compare runs, not both


def test_table_names_runs_as_typed_and_fits_80_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    _run(Path("runs"), "ivanet-tiny-synthetic/exp1", 10, [0.2])  # the default layout runs/<recipe>/expN
    try:
        main(["runs"])
    except SystemExit:
        pass
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if "exp1" in line)
    assert "runs/ivanet-tiny-synthetic/exp1" in row and "10/10" in row and "finished" in row  # whole, on one line
