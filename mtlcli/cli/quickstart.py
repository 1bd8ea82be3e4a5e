"""`mtl quickstart`: the whole path on the embedded synthetic city, with nothing to download.

    WORKDIR/synthetic/     the synthetic city in the Cityscapes layout (`mtl prepare synthetic`)
    WORKDIR/data/          its prepared dataset (`mtl prepare cityscapes`)
    WORKDIR/viz/dataset/   ground-truth overlays of a few val images (`mtl viz dataset`)
    WORKDIR/runs/<recipe>/ the trained run (`mtl train`): recipe.toml, metrics.jsonl, checkpoints/,
                           eval/val.json (`mtl eval`), viz/predictions/*.png and plots/*.png (`mtl viz`)

A second run reuses what an earlier run with the same settings made (an interrupted training resumes
exactly where it stopped); different settings over an existing WORKDIR need --force.
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
    recipe: str | None = "ivanet-tiny-synthetic",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the synthetic city, prepare it, draw ground-truth overlays, then (unless
    `recipe` is None) train, evaluate and draw predictions and curves (`train_eval_viz`).

    Returns {"source", "data", "viz" (overlay PNG paths)} plus, after training, {"run", "metrics",
    "predictions", "plots"}."""
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

    if recipe is None:
        console.rule("[bold green]done")
        console.print(f"source   {src}\nprepared {data}\noverlays {viz_dir}")
        return {"source": src, "data": data, "viz": overlays}

    result = train_eval_viz(workdir, data, recipe, overrides or [], num_viz=num_viz, force=force, console=console)
    return {"source": src, "data": data, "viz": overlays, **result}


# The quickstart's promise on the synthetic validation split (README, issue #5).
GOALS = {"miou": 0.70, "voc07": 0.50}


def _run_state(run_dir: Path, marker: dict[str, Any], total: int) -> str:
    """'new' (nothing there), 'done' (same settings, trained to the end), 'resume' (same settings,
    interrupted) or 'other' (something else is in the folder)."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    try:
        if json.loads((run_dir / "quickstart.json").read_text()) != marker:
            return "other"
    except (OSError, json.JSONDecodeError):
        return "other"
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return "new"
    from mtlcli.engine.checkpoint import load_checkpoint

    iteration = int(load_checkpoint(last).get("iteration", 0))
    return "done" if iteration >= total else "resume"


def train_eval_viz(
    workdir: Path,
    data: Path,
    recipe_name: str,
    overrides: list[str],
    *,
    num_viz: int = 4,
    force: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train `recipe_name` on the prepared dataset, evaluate mIoU and VOC mAP@0.5 on its val split,
    draw prediction overlays and training curves. Returns {"run", "metrics", "predictions", "plots"}."""
    import shutil

    from mtlcli.cli.eval import print_results, run_eval
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.engine.checkpoint import load_for_eval
    from mtlcli.engine.train import train
    from mtlcli.recipes import load_recipe, recipe_name as name_of, total_iterations
    from mtlcli.viz.curves import plot_curves
    from mtlcli.viz.predictions import render_predictions

    console = console or Console()
    overrides = [f"data.root={data}", *overrides]
    recipe = load_recipe(recipe_name, overrides)
    run_dir = workdir / "runs" / name_of(recipe_name)
    marker = {"recipe": recipe_name, "overrides": overrides}
    total = total_iterations(recipe)

    console.rule(f"[bold]4. train {name_of(recipe_name)}")
    state = _run_state(run_dir, marker, total)
    if state == "other":
        if not force:
            raise UserError(f"{run_dir} holds another run; pass --force to train again, or choose another --workdir")
        shutil.rmtree(run_dir)
        state = "new"
    if state == "done":
        console.print(f"reusing the trained run {run_dir} ({total} iterations)")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "quickstart.json").write_text(json.dumps(marker))
        if state == "resume":
            console.print(f"resuming the interrupted run {run_dir}")
        train(recipe, run_dir, resume=state == "resume", device="cpu")

    console.rule("[bold]5. evaluate on the synthetic val split")
    result = run_eval(run=run_dir, checkpoint=None, predictions=None, data=data, split="val",
                      metric=list(GOALS), cityscapes_ids=False, out=None, save_predictions=None, force=False,
                      batch_size=None, device="cpu", workers=0, quiet=False)
    print_results(result)

    console.rule("[bold]6. predictions and curves")
    model, _, _ = load_for_eval(run=run_dir, device="cpu")
    dataset = PreparedDataset(data, "val", label_map=recipe["data"].get("label_map") or None)
    predictions = render_predictions(model, dataset, run_dir / "viz" / "predictions", num=num_viz, force=True)
    plots = plot_curves([run_dir], force=True)

    console.rule("[bold green]done")
    from rich.table import Table

    table = Table(title="quickstart result on the synthetic val split")
    for col in ("metric", "value", "goal", ""):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, goal in GOALS.items():
        value = result["metrics"].get(name)
        ok = value is not None and value >= goal
        table.add_row({"miou": "mIoU", "voc07": "mAP@0.5 (VOC07)"}[name], f"{value:.3f}" if value is not None else "—",
                      f">= {goal:.2f}", "[green]met" if ok else "[red]not met")
    console.print(table)
    console.print(f"run         {run_dir}\ncheckpoints {run_dir / 'checkpoints'}\n"
                  f"predictions {run_dir / 'viz' / 'predictions'} ({len(predictions)} PNGs)\n"
                  f"curves      {', '.join(str(p) for p in plots)}")
    console.print(f"next: mtl eval --run {run_dir}   |   mtl viz predictions --run {run_dir}   |   "
                  f"mtl train --recipe {name_of(recipe_name)} --data {data}")
    return {"run": run_dir, "metrics": result["metrics"], "predictions": predictions, "plots": plots}


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
        recipe: str = typer.Option("ivanet-tiny-synthetic", "--recipe", help="Recipe to train (a *-tiny-synthetic one)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="Recipe override KEY=VALUE (repeatable), e.g. train.iterations=100."),
        no_train: bool = typer.Option(False, "--no-train", help="Stop after the data steps."),
    ) -> None:
        """Synthetic city -> prepare -> train -> eval -> viz: the whole path on a CPU, nothing to download."""
        run_quickstart(workdir, train=train, val=val, size=size, seed=seed, workers=workers, num_viz=num_viz, force=force,
                       recipe=None if no_train else recipe, overrides=list(set_ or []))
