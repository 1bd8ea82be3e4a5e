"""`mtl viz confusion`: the normalised semantic-segmentation confusion matrix of a run, with class names.

The counts come from `mtlcli.metrics.segmentation` through `evaluate(model, split, ["miou"])` (rows =
ground-truth classes, columns = predicted classes, pixels with ignore ground truth left out). Each row is
divided by its ground-truth pixel count, so cell (i, j) is the share of class i's pixels predicted as j
and the diagonal is the per-class recall; a class absent from the ground truth leaves an empty row. The
y labels carry each class's IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 100
CELL_FONT = 9  # points: a two-digit share fits a cell of `figure_inches(C) / C` and reads without zooming


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Counts [C, C] -> row shares in 0..1 (float64); rows without pixels become NaN."""
    m = np.asarray(matrix, dtype=np.float64)
    totals = m.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, m / np.where(totals > 0, totals, 1), np.nan)


def figure_inches(num_classes: int) -> float:
    """Height of the figure: grows with the class count so that names and numbers stay legible."""
    return max(5.0, 0.42 * num_classes + 3.0)


def figure_size(num_classes: int) -> tuple[float, float]:
    """(width, height) in inches: the square matrix and, beside it, the colour bar (no blank band above)."""
    side = figure_inches(num_classes)
    return side + 1.2, side


def confusion_figure(
    matrix: np.ndarray,
    class_names: Sequence[str],
    iou: Sequence[float | None] | None = None,
    title: str = "confusion (rows: ground truth, normalised)",
) -> Any:
    """A matplotlib Figure of the row-normalised `matrix` [C, C] (counts) labelled with `class_names`;
    cells show percentages when C <= 30. Size: `figure_size(C)` at `DPI`."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    C = matrix.shape[0]
    if matrix.shape != (C, C) or len(class_names) != C:
        raise ValueError(f"confusion matrix {matrix.shape} does not fit {len(class_names)} class names")
    shares = normalise_rows(matrix)
    fig = Figure(figsize=figure_size(C), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(shares), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="share of the ground-truth class")
    rows = list(class_names)
    if iou is not None:
        rows = [f"{n} ({'—' if v is None else f'{100 * v:.1f}'})" for n, v in zip(class_names, iou, strict=True)]
    ax.set_xticks(range(C), labels=list(class_names), rotation=90, fontsize=10)
    ax.set_yticks(range(C), labels=rows, fontsize=10)
    ax.set_xlabel("predicted class", fontsize=11)
    ax.set_ylabel("ground-truth class (IoU %)" if iou is not None else "ground-truth class", fontsize=11)
    ax.set_title(title, fontsize=12)
    if C <= 30:
        for i in range(C):
            for j in range(C):
                v = shares[i, j]
                if np.isfinite(v) and v >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{100 * v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=CELL_FONT,
                        color="white" if v > 0.5 else "black",
                    )
    return fig


def plot_confusion(
    matrix: np.ndarray,
    class_names: Sequence[str],
    out: str | Path,
    iou: Sequence[float | None] | None = None,
    title: str | None = None,
) -> Path:
    """Write `confusion_figure(...)` as a PNG at `out`; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = confusion_figure(matrix, class_names, iou, **({"title": title} if title else {}))
    from mtlcli.safety import atomic_save_figure

    atomic_save_figure(out, fig, dpi=DPI)
    return out
