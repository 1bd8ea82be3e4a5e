"""`mtl viz curves`: series read from metrics.jsonl and the figures drawn from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlcli.viz.curves import curve_figures, plot_curves, read_metrics, run_labels
from tests.viz.conftest import error_line, run_cli


def _write(run: Path, records: list[dict], tail: str = "") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return run


def _train(it: int, stage: str, a: float, b: float, lr: float) -> dict:
    return {
        "type": "train",
        "iteration": it,
        "stage": stage,
        "loss": a + b,
        "losses": {"loss_a": a, "loss_b": b},
        "lr": lr,
        "images_per_s": 10.0,
        "data_wait": 0.1,
        "memory_mb": 5.0,
    }


RUN_A = [
    _train(10, "one", 3.0, 1.0, 0.01),
    _train(20, "one", 2.0, 0.5, 0.01),
    {"type": "eval", "iteration": 20, "metrics": {"miou": 0.25, "voc07": 0.1}},
    _train(30, "two", 1.5, 0.25, 0.001),
    {"type": "eval", "iteration": 30, "metrics": {"miou": 0.5, "voc07": None}},
]
RUN_B = [_train(10, "train", 4.0, 2.0, 0.1), _train(20, "train", 3.0, 1.0, 0.05)]


def test_read_hand_written_metrics(tmp_path: Path):
    # an unfinished last line (the run is still writing) is skipped
    series = read_metrics(_write(tmp_path / "a", RUN_A, tail='{"type": "train", "itera'))
    assert series["train"]["loss"] == ([10.0, 20.0, 30.0], [4.0, 2.5, 1.75])
    assert series["train"]["loss_b"] == ([10.0, 20.0, 30.0], [1.0, 0.5, 0.25])
    assert series["train"]["lr"] == ([10.0, 20.0, 30.0], [0.01, 0.01, 0.001])
    assert series["eval"] == {"miou": ([20.0, 30.0], [0.25, 0.5]), "voc07": ([20.0], [0.1])}  # null values skipped
    assert series["stages"] == [(10.0, "one"), (30.0, "two")]


def test_figures_overlay_runs(tmp_path: Path):
    runs = [_write(tmp_path / "x" / "run", RUN_A), _write(tmp_path / "y" / "run", RUN_B)]
    labels = run_labels(runs)
    assert labels == ["x/run", "y/run"]  # same folder names: parents make them distinct
    figs = curve_figures([read_metrics(r) for r in runs], labels)
    assert set(figs) == {"losses", "lr", "metrics"}
    axes = {ax.get_title(): ax for ax in figs["losses"].axes if ax.get_visible() and ax.get_title()}
    assert list(axes) == ["loss", "loss_a", "loss_b"]
    solid = [ln for ln in axes["loss_a"].get_lines() if ln.get_linestyle() == "-"]
    assert [ln.get_label() for ln in solid] == labels
    assert np.array_equal(solid[0].get_xydata(), [[10, 3.0], [20, 2.0], [30, 1.5]])
    assert np.array_equal(solid[1].get_xydata(), [[10, 4.0], [20, 3.0]])
    dashed = [ln for ln in axes["loss_a"].get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_xdata()[0] == 30  # run A's stage change
    metric_axes = {ax.get_title(): ax for ax in figs["metrics"].axes if ax.get_title()}
    assert (
        set(metric_axes) == {"miou", "voc07"}
        and [ln.get_label() for ln in metric_axes["miou"].get_lines() if ln.get_linestyle() == "-"] == labels[:1]
    )  # only run A evaluated
    assert figs["lr"].axes[0].get_yscale() == "log"


def test_plot_curves_sizes_and_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = _write(tmp_path / "run", RUN_A)
    paths = plot_curves([run])
    assert [p.relative_to(run).as_posix() for p in paths] == ["plots/losses.png", "plots/lr.png", "plots/metrics.png"]
    sizes = {}
    for p in paths:
        with Image.open(p) as img:
            assert img.format == "PNG"
            sizes[p.name] = img.size
    # panels of 400 x 300 pixels, at most three per row
    assert sizes == {"losses.png": (1200, 300), "lr.png": (400, 300), "metrics.png": (800, 300)}
    assert run_cli(["viz", "curves", str(run)]) == 2
    assert "already exists" in error_line(capsys)
    out = tmp_path / "cmp"
    assert (
        run_cli(
            ["viz", "curves", "--run", str(run), "--run", str(_write(tmp_path / "other", RUN_B)), "--out", str(out)]
        )
        == 0
    )
    assert "wrote 3 plot(s)" in capsys.readouterr().out and len(list(out.glob("*.png"))) == 3


def test_curves_of_a_trained_run(seg_run: Path, tmp_path: Path):
    assert run_cli(["viz", "curves", "--run", str(seg_run), "--out", str(tmp_path)]) == 0
    series = read_metrics(seg_run)
    assert series["train"]["loss"][0] == [2.0, 4.0] and series["eval"]["miou"][0] == [2.0, 4.0]
    assert {"loss_seg", "loss_seg_aux", "lr"} <= set(series["train"])


def test_bad_runs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run_cli(["viz", "curves", str(tmp_path / "missing")]) == 2
    assert "does not exist" in error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert run_cli(["viz", "curves", str(tmp_path / "empty")]) == 2
    assert "no metrics.jsonl" in error_line(capsys)
    _write(tmp_path / "broken", RUN_B[:1])
    with (tmp_path / "broken" / "metrics.jsonl").open("a") as f:
        f.write("{oops\n" + json.dumps(RUN_B[1]) + "\n")
    assert run_cli(["viz", "curves", str(tmp_path / "broken")]) == 2
    assert "line 2 is not JSON" in error_line(capsys)
