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
from typing import TYPE_CHECKING, Any

import typer

from mtlcli.errors import UserError
from mtlcli.safety import atomic_write_text

if TYPE_CHECKING:
    from rich.console import Console


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
    recipe: str | list[str] | None = "ivanet-tiny-synthetic",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the synthetic city, prepare it, draw ground-truth overlays, then (unless
    `recipe` is None) train, evaluate and draw predictions and curves (`train_eval_viz`). A list of
    recipes is trained one after another and summed up in one `learning_table`.

    Returns {"source", "data", "viz" (overlay PNG paths)} plus, after training one recipe, what
    `train_eval_viz` returns, or after a list {"results": [one such dict per recipe]}."""
    from rich.console import Console

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
            raise UserError(
                f"{src} exists but was not made by a quickstart with these settings; pass --force to "
                f"draw it again, or choose another --workdir"
            )
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

    if isinstance(recipe, str):
        result = train_eval_viz(workdir, data, recipe, overrides or [], num_viz=num_viz, force=force, console=console)
        return {"source": src, "data": data, "viz": overlays, **result}
    results = [
        train_eval_viz(workdir, data, r, overrides or [], num_viz=num_viz, force=force, console=console) for r in recipe
    ]
    console.rule("[bold green]all recipes")
    console.print(learning_table(results))
    atomic_write_text(
        workdir / "learning.json",
        json.dumps([{k: r[k] for k in ("recipe", "family", "metrics", "floors", "timing")} for r in results], indent=1),
    )
    return {"source": src, "data": data, "viz": overlays, "results": results}


# Floors on the synthetic validation split, per model family (issue 15; the IvaNet one is the
# quickstart's promise of issue 5). A metric a family gives without a floor is shown without a goal.
FLOORS: dict[str, dict[str, float]] = {
    "ivanet": {"miou": 0.70, "voc07": 0.50, "pq": 0.50},  # PQ measured 0.627 (issue 28, 2026-12-08)
    "ssd300_vgg16": {"voc07": 0.50},
    "ladder_densenet": {"miou": 0.70},
    "imtl": {"miou": 0.65, "voc07": 0.45},
    "datnet": {"voc07": 0.50, "coco-segm": 0.25, "pq": 0.45},  # PQ measured 0.551
    "safpn": {"voc07": 0.50, "coco-segm": 0.25, "pq": 0.20},  # PQ measured 0.261 (things only: no semantic head)
    "cascade": {"voc07": 0.50, "coco-segm": 0.25, "pq": 0.22},  # measured 0.825 / 0.522 / PQ 0.291 (2026-12-08)
}
METRIC_LABELS = {
    "miou": "mIoU",
    "dt": "DT accuracy",
    "voc07": "mAP@0.5 (VOC07)",
    "coco-bbox": "box AP (COCO)",
    "coco-segm": "mask AP (COCO)",
    "pq": "PQ (panoptic)",
}
TINY_SUFFIX = "-tiny-synthetic"
FAMILY_LABELS = {
    "ivanet": "IvaNet",
    "ssd300_vgg16": "SSD300",
    "ladder_densenet": "LadderDenseNet",
    "imtl": "imtl",
    "datnet": "DATNet",
    "safpn": "SA-FPN",
    "cascade": "Cascade",
}


def floors_text() -> str:
    """FLOORS in one line (the --all help): "IvaNet mIoU 0.70 + mAP50 0.50; ..."."""
    return "; ".join(
        f"{FAMILY_LABELS.get(family, family)} "
        + " + ".join(f"{SHORT_LABELS.get(m, m)} {g:.2f}" for m, g in goals.items())
        for family, goals in FLOORS.items()
    )


def tiny_recipes() -> list[str]:
    """Every shipped `*-tiny-synthetic` recipe (what `mtl quickstart --all` trains): the families of
    FLOORS in its order, then any other in name order."""
    from mtlcli.recipes import available_recipes, load_recipe

    names = sorted(r for r in available_recipes() if r.endswith(TINY_SUFFIX))
    order = list(FLOORS)
    family = {n: load_recipe(n, check_model=False)["model"].get("name") for n in names}
    return sorted(names, key=lambda n: (order.index(family[n]) if family[n] in order else len(order), n))


def supported_metrics(output: dict[str, Any]) -> list[str]:
    """The quickstart's metrics for a model's eval output: mIoU for `sem_seg`, the DT-bin accuracy for
    `dt` (DATNet's auxiliary head), VOC07 mAP@0.5 for `boxes`, COCO box and mask AP where there are `masks`,
    PQ where there is a semantic map or masks."""
    names = []
    if "sem_seg" in output:
        names.append("miou")
    if "dt" in output:
        names.append("dt")
    if "boxes" in output:
        names.append("voc07")
    if "masks" in output:
        names += ["coco-bbox", "coco-segm"]
    if "sem_seg" in output or "masks" in output:
        names.append("pq")  # the panoptic merge of docs/panoptic.md against the city's things and stuff
    return names


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) and its finished children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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
    """Train `recipe_name` on the prepared dataset, evaluate on its val split the metrics its outputs
    support (`supported_metrics`), draw prediction overlays and training curves, print the goal table.
    Returns {"run", "recipe", "family", "metrics", "floors", "timing", "predictions", "plots"}; timing
    is {"iterations", "wall_s", "cpu_s"} of the training (summed over resumed parts)."""
    import shutil
    import time

    import torch
    from rich.console import Console

    from mtlcli.cli.eval import print_results, run_eval
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.engine.checkpoint import load_for_eval
    from mtlcli.engine.train import train
    from mtlcli.recipes import load_recipe, total_iterations
    from mtlcli.recipes import recipe_name as name_of
    from mtlcli.viz.curves import plot_curves
    from mtlcli.viz.predictions import render_predictions

    console = console or Console()
    overrides = [f"data.root={data}", *overrides]
    recipe = load_recipe(recipe_name, overrides)
    name = name_of(recipe_name)
    family = recipe["model"]["name"]
    run_dir = workdir / "runs" / name
    marker = {"recipe": recipe_name, "overrides": overrides}
    total = total_iterations(recipe)
    timing_file = run_dir / "timing.json"

    console.rule(f"[bold]4. train {name}")
    state = _run_state(run_dir, marker, total)
    if state == "other":
        if not force:
            raise UserError(f"{run_dir} holds another run; pass --force to train again, or choose another --workdir")
        shutil.rmtree(run_dir)
        state = "new"
    timing = {"iterations": total, "wall_s": 0.0, "cpu_s": 0.0}
    if state != "new":
        try:
            timing.update(json.loads(timing_file.read_text()))
        except (OSError, json.JSONDecodeError):
            pass
    if state == "done":
        console.print(f"reusing the trained run {run_dir} ({total} iterations)")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "quickstart.json", json.dumps(marker))
        if state == "resume":
            console.print(f"resuming the interrupted run {run_dir}")
        wall, cpu = time.perf_counter(), _cpu_seconds()
        try:
            train(recipe, run_dir, resume=state == "resume", device="cpu")
        finally:
            timing["wall_s"] += time.perf_counter() - wall
            timing["cpu_s"] += _cpu_seconds() - cpu
            atomic_write_text(timing_file, json.dumps(timing))

    console.rule("[bold]5. evaluate on the synthetic val split")
    model, _, _ = load_for_eval(run=run_dir, device="cpu")
    dataset = PreparedDataset(data, "val", label_map=recipe["data"].get("label_map") or None)
    with torch.inference_mode():  # one val image tells which outputs (and so which metrics) there are
        probe = model([dataset[0][0].as_subclass(torch.Tensor)])[0]
    metrics = supported_metrics(probe)
    result = run_eval(
        run=run_dir,
        checkpoint=None,
        predictions=None,
        data=data,
        split="val",
        metric=metrics,
        cityscapes_ids=False,
        out=None,
        save_predictions=None,
        force=False,
        batch_size=None,
        device="cpu",
        workers=0,
        quiet=False,
    )
    print_results(result)

    console.rule("[bold]6. predictions and curves")
    predictions = render_predictions(model, dataset, run_dir / "viz" / "predictions", num=num_viz, force=True)
    plots = plot_curves([run_dir], force=True)

    console.rule("[bold green]done")
    from rich.table import Table

    floors = FLOORS.get(family, {})
    table = Table(title=f"quickstart result on the synthetic val split: {name}")
    for col in ("metric", "value", "goal", ""):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for metric in metrics:
        value, goal = result["metrics"].get(metric), floors.get(metric)
        table.add_row(
            METRIC_LABELS[metric], _fmt(value), f">= {goal:.2f}" if goal is not None else "—", _verdict(value, goal)
        )
    console.print(table)
    console.print(
        f"trained {timing['iterations']} iterations in {timing['wall_s'] / 60:.1f} min wall, "
        f"{timing['cpu_s'] / 60:.1f} CPU min"
    )
    console.print(
        f"run         {run_dir}\ncheckpoints {run_dir / 'checkpoints'}\n"
        f"predictions {run_dir / 'viz' / 'predictions'} ({len(predictions)} PNGs)\n"
        f"curves      {', '.join(str(p) for p in plots)}"
    )
    from mtlcli.hints import quickstart_next

    console.print(quickstart_next(run_dir, name, data, workdir / "viz" / "predictions"), soft_wrap=True, markup=False)
    return {
        "run": run_dir,
        "recipe": name,
        "family": family,
        "metrics": result["metrics"],
        "floors": floors,
        "timing": timing,
        "predictions": predictions,
        "plots": plots,
    }


def _fmt(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "—"


def _verdict(value: float | None, goal: float | None) -> str:
    if goal is None:
        return ""
    return "[green]met" if value is not None and value >= goal else "[red]not met"


def met_all(result: dict[str, Any]) -> bool:
    """Every floor of the run's family reached."""
    return all((result["metrics"].get(m) or 0.0) >= g for m, g in result["floors"].items())


SHORT_LABELS = {
    "miou": "mIoU",
    "dt": "DT acc",
    "voc07": "mAP50",
    "coco-bbox": "boxAP",
    "coco-segm": "maskAP",
    "pq": "PQ",
}


def learning_table(results: list[dict[str, Any]]):
    """One rich Table for several quickstart results: recipe (without the common -tiny-synthetic), the
    iterations, wall / CPU minutes of the training, each metric (green where it meets its floor, red
    where it does not, plain without one) and whether every floor was met. Fits 80 columns."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="quickstart --all: the *-tiny-synthetic recipes on the synthetic val split",
        box=box.SIMPLE_HEAD,
        caption="wall / CPU: minutes of training; green: meets its floor, red: below it "
        "(floors: mtl quickstart --help)",
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("recipe", no_wrap=True)
    shown = [m for m in METRIC_LABELS if any(m in r["metrics"] for r in results)]  # metrics some model gives
    for col in ("iters", "wall", "CPU", *(SHORT_LABELS[m] for m in shown), "floors"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        cells = []
        for m in shown:
            value, goal = r["metrics"].get(m), r["floors"].get(m)
            style = "" if goal is None else ("green" if value is not None and value >= goal else "red")
            text = "—" if m not in r["metrics"] else _fmt(value)
            cells.append(f"[{style}]{text}[/]" if style else text)
        t = r["timing"]
        table.add_row(
            r["recipe"].removesuffix(TINY_SUFFIX),
            str(t["iterations"]),
            f"{t['wall_s'] / 60:.1f}",
            f"{t['cpu_s'] / 60:.1f}",
            *cells,
            "[green]met" if met_all(r) else "[red]not met",
        )
    return table


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
        workdir: Path = typer.Option(
            Path("mtl-quickstart"), "--workdir", help="Folder for everything the quickstart makes."
        ),
        train: int = typer.Option(300, "--train", min=1, help="Synthetic train images."),
        val: int = typer.Option(60, "--val", min=1, help="Synthetic val images."),
        size: tuple[int, int] = typer.Option(
            (256, 512),
            "--size",
            metavar="H W",
            show_default=False,
            help="Synthetic image height and width [default: 256 512].",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the synthetic city."),
        workers: int | None = typer.Option(
            None, "--workers", "-j", min=1, help="Processes for drawing and preparing (default: all cores)."
        ),
        num_viz: int = typer.Option(4, "--num-viz", min=1, help="Ground-truth overlays to draw."),
        force: bool = typer.Option(False, "--force", help="Redo steps whose output exists with other settings."),
        recipe: str | None = typer.Option(
            None, "--recipe", help="Recipe to train (a *-tiny-synthetic one; default ivanet-tiny-synthetic)."
        ),
        all_: bool = typer.Option(
            False,
            "--all",
            help="Train every *-tiny-synthetic recipe, one after another, and print one table. "
            f"Floors on the val split: {floors_text()}.",
        ),
        set_: list[str] | None = typer.Option(
            None, "--set", help="Recipe override KEY=VALUE (repeatable), e.g. train.iterations=100."
        ),
        no_train: bool = typer.Option(False, "--no-train", help="Stop after the data steps."),
    ) -> None:
        """Synthetic city -> prepare -> train -> eval -> viz: the whole path on a CPU, nothing to download."""
        if all_ and recipe:
            raise UserError("give either --recipe NAME or --all, not both")
        chosen: str | list[str] | None = tiny_recipes() if all_ else recipe or "ivanet-tiny-synthetic"
        run_quickstart(
            workdir,
            train=train,
            val=val,
            size=size,
            seed=seed,
            workers=workers,
            num_viz=num_viz,
            force=force,
            recipe=None if no_train else chosen,
            overrides=list(set_ or []),
        )
