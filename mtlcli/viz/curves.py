"""`mtl viz curves`: training curves from `RUN/metrics.jsonl`, several runs overlaid.

metrics.jsonl holds one JSON object per line, as `mtlcli.engine.train.MetricsLog` writes them:
    {"type": "train", "iteration": 20, "stage": "train", "loss": 2.1, "losses": {"loss_seg": 2.1}, "lr": 0.01, ...}
    {"type": "eval", "iteration": 100, "metrics": {"miou": 0.41, "voc07": 0.12}}
Three figures, x = iteration, one line per run in a fixed colour (the same run has the same colour in
every figure, so an ablation reads across them), dashed verticals where a run's stage changes:
    losses.png   one panel per loss term plus the total
    lr.png       learning rate (log scale)
    metrics.png  one panel per evaluation metric (only when some run evaluated)
Each figure is a grid of at most `COLUMNS` panels of `PANEL_INCHES` at `DPI`, so a figure with n panels
is min(n, 3) * 400 pixels wide and ceil(n / 3) * 300 pixels high.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtlcli.errors import UserError

COLUMNS = 3
PANEL_INCHES = (4.0, 3.0)
DPI = 100


def read_metrics(run: str | Path) -> dict[str, Any]:
    """Series of one run: {"train": {name: ([iterations], [values])} for "loss", each loss term and "lr";
    "eval": {metric: ([iterations], [values])}; "stages": [(iteration, stage name)] where a stage starts}.

    A missing file or a line that is not a JSON object is a UserError naming the line; an unfinished
    last line (a run still writing) is skipped.
    """
    run = Path(run)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not run.exists():
        raise UserError(f"run directory {run} does not exist — give the --out folder of an `mtl train` run")
    if not path.is_file():
        raise UserError(f"{run} has no metrics.jsonl — is it a run directory of `mtl train`?")
    text = path.read_text()
    lines = text.splitlines()
    train: dict[str, tuple[list[float], list[float]]] = {}
    evals: dict[str, tuple[list[float], list[float]]] = {}
    stages: list[tuple[float, str]] = []

    def add(table: dict, name: str, it: float, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs, ys = table.setdefault(name, ([], []))
            xs.append(it)
            ys.append(float(value))

    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if n == len(lines) and not text.endswith("\n"):
                continue
            raise UserError(f"{path} line {n} is not JSON — the file is damaged; remove that line") from None
        if not isinstance(record, dict) or not isinstance(record.get("iteration"), (int, float)):
            raise UserError(f"{path} line {n} has no iteration — is this a metrics.jsonl of `mtl train`?")
        it = float(record["iteration"])
        if record.get("type") == "eval":
            for name, value in (record.get("metrics") or {}).items():
                add(evals, name, it, value)
        elif record.get("type", "train") == "train":
            add(train, "loss", it, record.get("loss"))
            for name, value in (record.get("losses") or {}).items():
                add(train, name, it, value)
            add(train, "lr", it, record.get("lr"))
            stage = record.get("stage")
            if stage is not None and (not stages or stages[-1][1] != stage):
                stages.append((it, str(stage)))
    if not train and not evals:
        raise UserError(f"{path} has no logged steps yet — train longer than log_interval iterations")
    return {"train": train, "eval": evals, "stages": stages}


def run_labels(runs: Sequence[Path]) -> list[str]:
    """Short legend names: the run folder names, with parent folders added until they are distinct."""
    runs = [Path(r).resolve() for r in runs]
    depth = 1
    while True:
        labels = ["/".join(r.parts[-depth:]) for r in runs]
        if len(set(labels)) == len(labels) or depth >= max(len(r.parts) for r in runs):
            return labels
        depth += 1


def _grid(names: list[str], title: str):
    from matplotlib.figure import Figure

    cols = min(COLUMNS, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, dict(zip(names, axes[: len(names)], strict=True))  # the grid's spare cells stay hidden


def curve_figures(series: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """matplotlib Figures {"losses", "lr", "metrics"} for the `read_metrics` series of several runs
    (a figure is left out when no run has its data)."""
    import matplotlib

    colors = [matplotlib.colormaps["tab10"](i % 10) for i in range(len(series))]
    loss_names = sorted({k for s in series for k in s["train"] if k != "lr"}, key=lambda k: (k != "loss", k))
    metric_names = sorted({k for s in series for k in s["eval"]})
    figures: dict[str, Any] = {}
    groups = [
        ("losses", "train", loss_names, "loss terms"),
        ("lr", "train", ["lr"] if any("lr" in s["train"] for s in series) else [], "learning rate"),
        ("metrics", "eval", metric_names, "evaluation"),
    ]
    for fig_name, kind, names, title in groups:
        if not names:
            continue
        fig, axes = _grid(names, title)
        for name, ax in axes.items():
            for s, label, color in zip(series, labels, colors, strict=True):
                if name not in s[kind]:
                    continue
                xs, ys = s[kind][name]
                ax.plot(
                    xs,
                    ys,
                    color=color,
                    label=label,
                    marker="o" if kind == "eval" else None,
                    markersize=3,
                    linewidth=1.2,
                )
                for it, _stage in s["stages"][1:]:
                    ax.axvline(it, color=color, linestyle="--", linewidth=0.8, alpha=0.6)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("iteration")
            ax.grid(True, alpha=0.3)
            if name == "lr":
                ax.set_yscale("log")
            if len(series) > 1:
                ax.legend(fontsize=7)
        figures[fig_name] = fig
    return figures


def plot_curves(runs: Sequence[str | Path], out: str | Path | None = None, *, force: bool = False) -> list[Path]:
    """Write losses.png, lr.png and (when any run evaluated) metrics.png for `runs` into `out`
    (default: the first run's `plots/` folder); returns the paths. Existing PNGs need `force`."""
    if not runs:
        raise UserError("give at least one run directory")
    dirs = [Path(r) for r in runs]
    series = [read_metrics(r) for r in dirs]
    folder = Path(out) if out is not None else dirs[0] / "plots"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} exists and is not a folder; choose another path")
    figures = curve_figures(series, run_labels(dirs))
    paths = [folder / f"{name}.png" for name in figures]
    existing = [p for p in paths if p.exists()]
    if existing and not force:  # (no torch import for this check: `mtl viz curves` stays quick to start)
        raise UserError(f"{existing[0]} already exists; choose another --out or pass --force to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    from mtlcli.safety import atomic_save_figure

    for fig, path in zip(figures.values(), paths, strict=True):
        atomic_save_figure(path, fig, dpi=DPI)
    return paths
