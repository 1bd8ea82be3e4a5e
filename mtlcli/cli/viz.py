"""`mtl viz ...`: look at data and results as PNG overlays and plots.

    mtl viz dataset DATA [--split S] --out DIR [--num N] [--force]

Each command parses, calls a plain function in `mtlcli.viz` and prints where the files went; the
drawing code is imported inside the commands so that `mtl --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Draw ground truth, predictions and training curves as PNGs.", no_args_is_help=True)


@app.command("dataset")
def dataset(
    data: Path = typer.Argument(..., help="Prepared dataset folder (the --out of `mtl prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the overlay PNGs."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to draw [default: the dataset's first split]."),
    num: int = typer.Option(8, "--num", "-n", help="Number of images, spread evenly over the split."),
    force: bool = typer.Option(False, "--force", help="Overwrite overlay PNGs already in --out."),
) -> None:
    """Ground-truth overlays: semantic map, boxes with class names and DT bins of N images."""
    from rich.console import Console

    from mtlcli.data.prepared import DatasetMeta
    from mtlcli.viz.dataset import render_dataset

    if split is None:
        splits = DatasetMeta.load(data).splits
        split = splits[0] if splits else "train"  # an empty list: PreparedDataset reports it
    paths = render_dataset(data, split, out, num=num, force=force)
    from rich.markup import escape

    Console().print(f"[green]wrote[/] {len(paths)} overlay(s) of {escape(str(data))}, split {escape(split)}, to {escape(str(out))}")
