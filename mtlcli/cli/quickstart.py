"""`mtl quickstart`: the whole path on the embedded synthetic city, with nothing to download.

    WORKDIR/synthetic/     the synthetic city in the Cityscapes layout (`mtl prepare synthetic`)
    WORKDIR/data/          its prepared dataset (`mtl prepare cityscapes`)
    WORKDIR/viz/dataset/   ground-truth overlays of a few val images (`mtl viz dataset`)

A second run reuses what an earlier run with the same settings made; different settings over an
existing WORKDIR need --force. (Training, evaluation and prediction overlays follow in later steps.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from mtlcli.errors import UserError


def _synthetic_params(train: int, val: int, size: tuple[int, int], seed: int) -> dict[str, Any]:
    return {"seed": seed, "train": train, "val": val, "size": [int(size[0]), int(size[1])]}


def _made_with(src: Path, params: dict[str, Any]) -> bool:
    """True when `src` holds a complete synthetic city drawn with exactly these parameters."""
    from mtlcli.data.synthetic import MARKER

    try:
        marker = json.loads((src / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(marker.get(k) == v for k, v in params.items())


def run_quickstart(
    workdir: Path,
    *,
    train: int = 300,
    val: int = 60,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    workers: int | None = None,
    num_viz: int = 4,
    force: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the synthetic city, prepare it and draw ground-truth overlays.

    Returns {"source", "data", "viz" (list of overlay PNG paths, [] when `mtl viz` is unavailable)}."""
    from mtlcli.data.cityscapes import prepare_cityscapes
    from mtlcli.data.prepared import DatasetMeta
    from mtlcli.data.synthetic import generate_synthetic

    console = console or Console()
    workdir = Path(workdir).expanduser().resolve()
    src, data, viz_dir = workdir / "synthetic", workdir / "data", workdir / "viz" / "dataset"
    params = _synthetic_params(train, val, size, seed)

    console.rule("[bold]1. synthetic city")
    fresh = not _made_with(src, params)
    if fresh:
        if src.is_dir() and any(src.iterdir()) and not force:
            raise UserError(f"{src} exists but was not made by a quickstart with these settings; pass --force to "
                            f"draw it again, or choose another --workdir")
        generate_synthetic(src, train=train, val=val, size=size, seed=seed, force=force, workers=workers)
    else:
        console.print(f"reusing {src} ({train} train + {val} val images of {size[0]}x{size[1]}, seed {seed})")

    console.rule("[bold]2. prepare")
    reuse_data = False
    if not fresh and (data / "dataset.json").is_file():
        try:
            reuse_data = DatasetMeta.load(data).source == str(src)
        except UserError:
            reuse_data = False
    if reuse_data:
        console.print(f"reusing the prepared dataset {data}")
    else:
        prepare_cityscapes(src, data, workers=workers, force=force or fresh and _only_ours(data))

    console.rule("[bold]3. ground-truth overlays")
    overlays: list[Path] = []
    try:
        from mtlcli.viz.dataset import render_dataset
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("mtlcli"):
            raise
        console.print("[yellow]skipped[/]: mtl viz is not available in this installation")
    else:
        existing = sorted(viz_dir.glob("*.png")) if viz_dir.is_dir() else []
        if existing and reuse_data and not force:
            overlays = existing
            console.print(f"reusing {len(existing)} overlays in {viz_dir}")
        else:
            overlays = render_dataset(data, "val" if val else "train", viz_dir, num=num_viz, force=True)
            console.print(f"{len(overlays)} overlays in {viz_dir}")

    console.rule("[bold green]done")
    console.print(f"source  {src}\nprepared {data}\noverlays {viz_dir}")
    console.print(f"next: mtl train --recipe ladderdensenet-tiny-synthetic --data {data}")
    return {"source": src, "data": data, "viz": overlays}


def _only_ours(data: Path) -> bool:
    """A prepared folder a quickstart made (dataset.json naming a source in the same workdir) may be
    rewritten when the city is drawn again; anything else in its place needs --force."""
    try:
        meta = json.loads((data / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("source") == str(data.parent / "synthetic")


def register(app: typer.Typer) -> None:
    @app.command("quickstart")
    def quickstart(
        workdir: Path = typer.Option(Path("mtl-quickstart"), "--workdir", help="Folder for everything the quickstart makes."),
        train: int = typer.Option(300, "--train", min=1, help="Synthetic train images."),
        val: int = typer.Option(60, "--val", min=1, help="Synthetic val images."),
        size: tuple[int, int] = typer.Option((256, 512), "--size", help="Synthetic image height and width (H W)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the synthetic city."),
        workers: Optional[int] = typer.Option(None, "--workers", "-j", min=1, help="Processes for drawing and preparing (default: all cores)."),
        num_viz: int = typer.Option(4, "--num-viz", min=1, help="Ground-truth overlays to draw."),
        force: bool = typer.Option(False, "--force", help="Redo steps whose output exists with other settings."),
    ) -> None:
        """Synthetic city -> prepared dataset -> overlays: the whole path, nothing to download."""
        run_quickstart(workdir, train=train, val=val, size=size, seed=seed, workers=workers, num_viz=num_viz, force=force)
