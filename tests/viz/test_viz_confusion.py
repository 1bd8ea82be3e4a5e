"""`mtl viz confusion`: the row-normalised segmentation confusion matrix of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlcli.data.prepared import read_label_png
from mtlcli.viz.confusion import DPI, confusion_figure, figure_size, normalise_rows
from tests.viz.conftest import error_line, run_cli


def test_rows_are_shares_of_the_ground_truth():
    counts = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    shares = normalise_rows(counts)
    assert np.allclose(shares[0], [0.8, 0.2, 0.0]) and np.allclose(shares[2], [0.25, 0.25, 0.5])
    assert np.isnan(shares[1]).all()  # a class absent from the ground truth has no row to normalise
    fig = confusion_figure(counts, ["road", "car", "sky"], iou=[0.8, None, 0.4])
    ax = fig.axes[0]
    drawn = ax.images[0].get_array()
    assert np.allclose(drawn.filled(np.nan)[[0, 2]], shares[[0, 2]]) and drawn.mask[1].all()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["road (80.0)", "car (—)", "sky (40.0)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["road", "car", "sky"]
    assert sorted(t.get_text() for t in ax.texts) == ["20", "25", "25", "50", "80"]  # percentages, zeros left blank


def test_cli_plots_the_split(
    seg_run: Path, synthetic_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "viz"
    assert run_cli(["viz", "confusion", "--run", str(seg_run), "--out", str(out), "-q"]) == 0
    png = out / "confusion_val.png"
    assert str(png) in capsys.readouterr().out.replace("\n", "")
    width, height = figure_size(19)
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (round(width * DPI), round(height * DPI))
    assert run_cli(["viz", "confusion", "--run", str(seg_run), "--out", str(out), "-q"]) == 2
    assert "already exists" in error_line(capsys)


def test_counts_cover_every_labelled_pixel(seg_run: Path, synthetic_prepared: Path, tmp_path: Path):
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.engine.evaluate import run_confusion
    from mtlcli.engine.loaded import load_run

    loaded = load_run(seg_run)
    ds = PreparedDataset(synthetic_prepared, "val")
    _, details = run_confusion(loaded.model, ds, tmp_path / "c.png", progress=False)
    labelled = sum(
        int((read_label_png(p) != 255).sum()) for p in (synthetic_prepared / "val" / "semantic").glob("*.png")
    )
    matrix = np.array(details["confusion"])
    assert matrix.shape == (19, 19) and matrix.sum() + sum(details["void_predictions"]) == labelled
    assert details["classes"][0] == "road"


def test_missing_run_and_split(seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run_cli(["viz", "confusion", "--run", str(tmp_path / "nope")]) == 2
    assert "does not exist" in error_line(capsys)
    assert run_cli(["viz", "confusion", "--run", str(seg_run), "--split", "test", "--out", str(tmp_path)]) == 2
    assert "test" in error_line(capsys)
