"""`mtl viz ...`: look at data and results as PNG overlays and plots.

    mtl viz dataset --data DATA [--split S] --out DIR [--num N] [--force]
    mtl viz predictions --run RUN | --checkpoint CKPT [--data DATA --split S | --images FILE|DIR ...] [--num N]
                        [--score-threshold T] [--out DIR]
    mtl viz curves --run RUN [--run RUN ...] [--out DIR]
    mtl viz confusion --run RUN [--data DATA --split S] [--out DIR]
    mtl viz features --run RUN (--layer NAME [--channel C | --class K] | --class K) [--steps S] [--no-jitter] ...
    mtl viz features --classifier densenet121 --weights FILE.pth --class K --out DIR
    mtl viz adversarial --run RUN --image FILE [--source-class K] [--target-class K] [--flip-rate F]
                        [--norm linf --eps E] [--steps S]

Outputs go to RUN/viz/ (curves to RUN/plots/) unless --out says otherwise; existing PNGs are only
replaced with --force.

Each command parses, calls a plain function in `mtlcli.viz` and prints where the files went; the
drawing code is imported inside the commands so that `mtl --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mtlcli.cli.common import CHECKPOINT_OPTION, DEVICE_OPTION, RUN_OPTION

if TYPE_CHECKING:
    from mtlcli.engine.panoptic import PanopticMaker

app = typer.Typer(
    help="Draw ground truth, predictions, training curves, confusion matrices, features and adversarial examples "
    "as PNGs.",
    no_args_is_help=True,
)


QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bar; only the final lines.")


@app.command("dataset")
def dataset(
    data: Path | None = typer.Option(None, "--data", help="Prepared dataset folder (the --out of `mtl prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Folder for the overlay PNGs."),
    split: str | None = typer.Option(None, "--split", help="Split to draw [default: the dataset's first split]."),
    num: int = typer.Option(8, "--num", "-n", help="Number of images, spread evenly over the split."),
    force: bool = typer.Option(False, "--force", help="Overwrite overlay PNGs already in --out."),
    quiet: bool = QUIET_OPTION,
    data_arg: Path | None = typer.Argument(None, hidden=True, help="Before 0.2: DATA as a positional argument."),
) -> None:
    """Ground-truth overlays: semantic map, boxes with class names and DT bins of N images."""
    from rich.console import Console

    from mtlcli.data.prepared import DatasetMeta
    from mtlcli.errors import UserError
    from mtlcli.safety import refuse_protected_output
    from mtlcli.viz.dataset import render_dataset

    if data is not None and data_arg is not None:
        raise UserError("give the dataset once, with --data DATA")
    data = data if data is not None else data_arg
    if data is None:
        raise UserError("say which prepared dataset to draw with --data DATA (the --out of `mtl prepare`)")
    refuse_protected_output(out, "--out")
    if split is None:
        splits = DatasetMeta.load(data).splits
        split = splits[0] if splits else "train"  # an empty list: PreparedDataset reports it
    paths = render_dataset(data, split, out, num=num, force=force, progress=not quiet)
    from rich.markup import escape

    Console().print(
        f"[green]wrote[/] {len(paths)} overlay(s) of {escape(str(data))}, split {escape(split)}, to {escape(str(out))}"
    )


# ------------------------------------------------------------------------------- model-based commands


def _device(name: str) -> str:
    from mtlcli.cli.common import resolve_device

    return resolve_device(name)


def _fraction(text: str, option: str) -> float:
    """A number written as 0.03 or 8/255."""
    from mtlcli.errors import UserError

    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{option} {text!r} is not a number; write e.g. 0.03 or 8/255") from None


def _check_labels(loaded, dataset, source) -> None:
    """Data of another label set than the checkpoint's is one line, not silent nonsense."""
    from mtlcli.engine.compat import check_label_set

    check_label_set(
        getattr(loaded.model, "trained_classes", None),
        loaded.recipe["model"],
        dataset,
        checkpoint=source,
        data=loaded.root,
        action="viz",
    )


def _class_index(value: str | None, names: list[str], option: str) -> int | None:
    """A class given as an index (0..C-1) or by name; None stays None."""
    from mtlcli.errors import UserError

    if value is None:
        return None
    if value.strip().lstrip("-").isdigit():
        return int(value)
    if value in names:
        return names.index(value)
    raise UserError(
        f"{option} {value!r} is neither a class index nor a class name; classes: "
        f"{', '.join(f'{i}={n}' for i, n in enumerate(names))}"
    )


def _print_paths(what: str, paths: list[Path]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    console.print(f"[green]wrote[/] {len(paths)} {what}:")
    for p in paths:
        console.print(f"  {escape(str(p))}", soft_wrap=True)


FORCE_OPTION = typer.Option(False, "--force", help="Overwrite PNGs that already exist.")


@app.command("predictions")
def predictions(
    run: Path | None = RUN_OPTION,
    checkpoint: Path | None = CHECKPOINT_OPTION,
    data: Path | None = typer.Option(None, "--data", help="Prepared dataset [default: the recipe's]."),
    split: str | None = typer.Option(None, "--split", help="Split to draw [default: the recipe's val_split]."),
    images: list[Path] = typer.Option([], "--images", help="Image files or folders instead of a dataset (repeatable)."),
    num: int = typer.Option(8, "--num", "-n", help="Number of images (spread evenly over a split)."),
    score_threshold: float = typer.Option(0.3, "--score-threshold", help="Draw detections scoring at least this."),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DIR", help="Folder for the PNGs [default: RUN/viz/predictions]."
    ),
    force: bool = FORCE_OPTION,
    device: str = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
    panoptic: bool = typer.Option(False, "--panoptic", help="Add a panel of the panoptic merge (docs/panoptic.md)."),
) -> None:
    """Predictions over their images: semantic overlay, boxes with scores, masks; ground truth beside them."""
    from mtlcli.engine.loaded import load_run, output_dir
    from mtlcli.errors import UserError
    from mtlcli.viz.predictions import render_predictions

    loaded = load_run(run, checkpoint, data=data, device=_device(device))
    out = output_dir(out, loaded, "predictions")
    cls = loaded.classes
    if images:
        if split is not None:
            raise UserError("--split chooses dataset images; drop it when drawing --images")
        source: object = list(images)
    else:
        from mtlcli.data.dataset import PreparedDataset

        if loaded.root is None:
            raise UserError(
                "the run's prepared dataset is not here; give it with --data DATA, or draw --images FILE|DIR"
            )
        split = split or loaded.recipe.get("data", {}).get("val_split") or "val"
        source = PreparedDataset(loaded.root, split, label_map=loaded.recipe.get("data", {}).get("label_map") or None)
        _check_labels(loaded, source, run or checkpoint)
    paths = render_predictions(
        loaded.model,
        source,
        out,
        num=num,
        score_threshold=score_threshold,
        palette=cls.palette,
        seg_classes=cls.seg_classes,
        det_classes=cls.det_classes,
        force=force,
        device=loaded.device,
        progress=not quiet,
        panoptic=_panoptic_maker(loaded) if panoptic else None,
    )
    _print_paths("prediction overlay(s)", paths)


def _panoptic_maker(loaded: Any) -> PanopticMaker:
    from mtlcli.engine.panoptic import PanopticMaker, merge_settings

    card = getattr(loaded, "card", None) or {}
    cls = loaded.classes
    return PanopticMaker(
        cls.det_classes,
        cls.seg_classes,
        card.get("thing_classes"),
        card.get("panoptic_category_ids"),
        merge_settings(loaded.recipe),
    )


@app.command("curves")
def curves(
    run: list[Path] = typer.Option([], "--run", help="Run directory of `mtl train`; repeat to overlay several runs."),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DIR", help="Folder for the plots [default: the first RUN/plots]."
    ),
    force: bool = FORCE_OPTION,
    quiet: bool = QUIET_OPTION,
    runs_arg: list[Path] | None = typer.Argument(None, hidden=True, help="Before 0.2: RUN... as positional arguments."),
) -> None:
    """Loss terms, learning rate and evaluation metrics over iterations, from RUN/metrics.jsonl."""
    from mtlcli.errors import UserError
    from mtlcli.safety import refuse_protected_output
    from mtlcli.viz.curves import plot_curves

    runs = list(run) + list(runs_arg or [])
    if not runs:
        raise UserError("say which run to plot with --run RUN (repeat --run to overlay several)")
    refuse_protected_output(out if out is not None else Path(runs[0]) / "plots", "--out")
    _print_paths("plot(s)", plot_curves(runs, out, force=force))


@app.command("confusion")
def confusion(
    run: Path | None = RUN_OPTION,
    checkpoint: Path | None = CHECKPOINT_OPTION,
    data: Path | None = typer.Option(None, "--data", help="Prepared dataset [default: the recipe's]."),
    split: str | None = typer.Option(None, "--split", help="Split to evaluate [default: the recipe's val_split]."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR", help="Folder for the PNG [default: RUN/viz]."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per forward pass."),
    force: bool = FORCE_OPTION,
    device: str = DEVICE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """The normalised segmentation confusion matrix of a split, with class names and per-class IoU."""
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.engine.evaluate import run_confusion
    from mtlcli.engine.loaded import load_run, output_dir
    from mtlcli.errors import UserError

    saved = _saved_predictions(run, checkpoint, data, split)
    if saved is not None:  # `mtl eval --run RUN` kept its predictions: no need to run the model again
        from mtlcli.metrics.predictions import evaluate_predictions
        from mtlcli.viz.confusion import plot_confusion
        from mtlcli.viz.predictions import check_free

        pred_dir, root, split = saved
        target = (out if out is not None else Path(run) / "viz") / f"confusion_{split}.png"  # type: ignore[arg-type]
        check_free([target], force)
        result = evaluate_predictions(root, split, pred_dir, ["miou"], progress=not quiet)
        details = result["details"]["miou"]
        miou = 100 * result["metrics"]["miou"]
        title = f"{split}: mIoU {miou:.1f}% over {details['images']} images (cells: % of the row)"
        path = plot_confusion(details["confusion"], details["classes"], target, details["iou"], title)
        _print_paths(
            f"confusion matrix (mIoU {100 * (details['miou'] or 0.0):.1f}%, from the predictions saved in {pred_dir})",
            [path],
        )
        return
    loaded = load_run(run, checkpoint, data=data, device=_device(device))
    if loaded.root is None:
        raise UserError("the run's prepared dataset is not here; give it with --data DATA")
    split = split or loaded.recipe.get("data", {}).get("val_split") or "val"
    dataset = PreparedDataset(loaded.root, split, label_map=loaded.recipe.get("data", {}).get("label_map") or None)
    _check_labels(loaded, dataset, run or checkpoint)
    target = output_dir(out, loaded) / f"confusion_{split}.png"
    path, details = run_confusion(
        loaded.model, dataset, target, device=loaded.device, batch_size=batch_size, force=force, progress=not quiet
    )
    _print_paths(f"confusion matrix (mIoU {100 * (details['miou'] or 0.0):.1f}%)", [path])


def _saved_predictions(
    run: Path | None, checkpoint: Path | None, data: Path | None, split: str | None
) -> tuple[Path, Path, str] | None:
    """(predictions folder, prepared dataset, split) when `mtl eval --run RUN` saved semantic predictions of
    the split that are newer than the run's checkpoints; None otherwise (then the model runs)."""
    import tomllib

    from mtlcli.recipes import data_root

    if run is None or checkpoint is not None or data is not None or not (run / "recipe.toml").is_file():
        return None
    try:
        recipe = tomllib.loads((run / "recipe.toml").read_text())
    except (tomllib.TOMLDecodeError, OSError):
        return None
    split = split or recipe.get("data", {}).get("val_split") or "val"
    pred_dir = run / "eval" / f"predictions-{split}"
    ckpts = [p.stat().st_mtime for p in (run / "checkpoints").glob("*.pt")] if (run / "checkpoints").is_dir() else []
    if not (pred_dir / "semantic").is_dir() or (ckpts and pred_dir.stat().st_mtime < max(ckpts)):
        return None
    try:
        root = data_root({"data": {"root": "", "dataset": "", **recipe.get("data", {})}})
    except (KeyError, TypeError):
        return None
    return (pred_dir, root, split) if (root / "dataset.json").is_file() else None


@app.command("features")
def features(
    run: Path | None = RUN_OPTION,
    checkpoint: Path | None = CHECKPOINT_OPTION,
    classifier: str | None = typer.Option(
        None,
        "--classifier",
        help="A torchvision classification network (e.g. densenet121) instead of a run; needs --weights.",
    ),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        help="The --classifier's state dict (.pth), e.g. torchvision's densenet121-a639ec97.pth or a fine-tuned copy.",
    ),
    layer: str | None = typer.Option(
        None, "--layer", help="Module name (see --list-layers) whose activation to maximise."
    ),
    channel: int | None = typer.Option(None, "--channel", min=0, help="One channel (feature map) of --layer."),
    seg_class: str | None = typer.Option(
        None,
        "--class",
        help="A class (index or name): its sem_seg score or classifier logit, or that channel of --layer.",
    ),
    size: int | None = typer.Option(
        None,
        "--size",
        min=8,
        help="Side of the square image to optimise [default: the model's input size; 224 for a classifier].",
    ),
    steps: int = typer.Option(100, "--steps", min=1, help="Gradient-ascent steps."),
    lr: float = typer.Option(0.05, "--lr", help="Step size (the gradient is normalised to mean magnitude 1)."),
    jitter: bool = typer.Option(True, "--jitter/--no-jitter", help="Shift the image up to 4 px between steps."),
    scale: bool = typer.Option(True, "--scale/--no-scale", help="Rescale by 0.95..1.05 between steps."),
    rotate: bool = typer.Option(True, "--rotate/--no-rotate", help="Rotate by -5..5 degrees between steps."),
    blur: bool = typer.Option(True, "--blur/--no-blur", help="Gaussian blur every 4th step."),
    seed: int = typer.Option(0, "--seed", help="Seed of the start noise and the perturbations."),
    list_layers: bool = typer.Option(False, "--list-layers", help="Print every layer name and stop."),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DIR", help="Folder for the PNGs [default: RUN/viz/features]."
    ),
    force: bool = FORCE_OPTION,
    device: str = DEVICE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Activation maximisation of a layer, channel or class, and the first-layer filters as a grid."""
    from rich.console import Console

    from mtlcli.engine.loaded import load_run, output_dir
    from mtlcli.errors import UserError
    from mtlcli.viz.features import layer_names, load_classifier, render_features

    if classifier is not None:
        if run is not None or checkpoint is not None:
            raise UserError("give --run/--checkpoint (our models) or --classifier NAME --weights FILE, not both")
        if weights is None:
            raise UserError(
                f"--classifier {classifier} needs --weights FILE (its .pth state dict; nothing is downloaded)"
            )
        side = size or 224
        model = load_classifier(classifier, weights, input_size=(side, side), device=_device(device))
        names: list[str] = list(model.class_names or [])
        if out is None and not list_layers:
            raise UserError("a --classifier has no run directory; say where the PNGs go with --out DIR")
        target = out
        num_classes = None
    else:
        if weights is not None:
            raise UserError("--weights goes with --classifier NAME; a run's weights come from its checkpoint")
        loaded = load_run(run, checkpoint, device=_device(device))
        model = loaded.model  # type: ignore[assignment]  # render_features takes our models and classifiers
        names = loaded.classes.seg_classes
        target = None if list_layers else output_dir(out, loaded, "features")
        num_classes = len(names) or None
    if list_layers:
        for name in layer_names(model):
            print(name)
        return
    if target is None:  # unreachable: a classifier without --out and a run's default are handled above
        raise UserError("say where the PNGs go with --out DIR")
    k = _class_index(seg_class, names, "--class")
    result = render_features(
        model,
        target,
        layer=layer,
        channel=channel,
        seg_class=k,
        class_name=names[k] if k is not None and 0 <= k < len(names) else None,
        size=(size, size) if size else None,
        steps=steps,
        lr=lr,
        jitter=4 if jitter else 0,
        scale=scale,
        rotate=rotate,
        blur=blur,
        seed=seed,
        num_classes=num_classes,
        force=force,
        progress=not quiet,
    )
    Console().print(f"{result['unit']}: {result['titles'][1].splitlines()[0]}")
    _print_paths("image(s)", [result["image"], result["raw"]] + ([result["filters"]] if result["filters"] else []))
    if result["filters"] is None:
        Console().print(f"kept the existing filter grid {result['filters_path']} (pass --force to redraw it)")


@app.command("adversarial")
def adversarial(
    run: Path | None = RUN_OPTION,
    checkpoint: Path | None = CHECKPOINT_OPTION,
    image: Path = typer.Option(..., "--image", help="The image file to attack."),
    norm: str = typer.Option(
        "l2",
        "--norm",
        metavar="l2|linf",
        help="l2: the smallest L2 perturbation that flips the chosen pixels "
        "(the paper's problem); linf: a fixed per-value budget --eps.",
    ),
    target_class: str | None = typer.Option(
        None, "--target-class", help="Flip pixels to this class (index or name) [default: to any other class]."
    ),
    source_class: str | None = typer.Option(
        None, "--source-class", help="L2: flip only the pixels predicted as this class [default: every pixel]."
    ),
    flip_rate: float = typer.Option(
        0.95, "--flip-rate", min=0.0, max=1.0, help="L2: the share of the chosen pixels that must flip."
    ),
    refine_steps: int = typer.Option(
        20, "--refine-steps", min=0, help="L2: steps that shrink ||r||2 after the first flip."
    ),
    eps: str | None = typer.Option(
        None,
        "--eps",
        metavar="EPS",
        help="Linf: the largest change of any pixel "
        "value, in 0..1 units, as a number or a fraction (0.03, 8/255) [default: 8/255].",
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="L2: most steps until the flip [default: 100]; Linf: steps [default: 10]."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DIR", help="Folder for the PNGs [default: RUN/viz/adversarial]."
    ),
    force: bool = FORCE_OPTION,
    device: str = DEVICE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Adversarial example of the segmentation: original, perturbation, adversarial image, both predictions."""
    from rich.console import Console

    from mtlcli.engine.loaded import load_run, output_dir
    from mtlcli.errors import UserError
    from mtlcli.viz.adversarial import NORMS, render_adversarial
    from mtlcli.viz.predictions import read_image_file

    norm = norm.lower()
    if norm not in NORMS:
        raise UserError(f"--norm {norm!r} is not one of {', '.join(NORMS)}")
    if norm == "l2" and eps is not None:
        raise UserError(
            "--eps is the budget of the Linf attack; add --norm linf (the default L2 attack finds its own size)"
        )
    if norm == "linf" and source_class is not None:
        raise UserError("--source-class belongs to the L2 attack; drop it or use --norm l2")
    read_image_file(image)  # an unreadable image fails before the model is built
    loaded = load_run(run, checkpoint, device=_device(device))
    names = loaded.classes.seg_classes
    k = _class_index(target_class, names, "--target-class")
    options: dict[str, Any] = (
        {}
        if norm == "linf"
        else {
            "flip_rate": flip_rate,
            "refine_steps": refine_steps,
            "source_class": _class_index(source_class, names, "--source-class"),
        }
    )
    budget = _fraction(eps, "--eps") if eps is not None else 8 / 255
    result = render_adversarial(
        loaded.model,
        image,
        output_dir(out, loaded, "adversarial"),
        loaded.classes.palette,
        norm=norm,
        eps=budget,
        steps=steps,
        target_class=k,
        class_names=names,
        force=force,
        device=loaded.device,
        progress=not quiet,
        **options,
    )
    console = Console()
    if norm == "l2":
        chosen = f"pixels of {names[options['source_class']]}" if options["source_class"] is not None else "pixels"
        line = (
            f"||r||2 {result['l2']:.4f} (||r||inf {result['linf']:.4f}); flipped {100 * result['flip_rate']:.1f}% "
            f"of {result['chosen']} {chosen} (goal {100 * flip_rate:.0f}%) in {result['steps']} steps"
        )
        line += f", first flip after {result['first_flip']}" if result["first_flip"] is not None else ""
        console.print(line)
        if not result["flipped"]:
            console.print(
                f"[yellow]not flipped[/]: the goal was not reached within --steps {result['steps']}; "
                "raise --steps or lower --flip-rate"
            )
    else:
        line = (
            f"perturbation L2 {result['l2']:.4f}, Linf {result['linf']:.4f} (budget {budget:.4f}); "
            f"{100 * result['changed']:.1f}% of pixels changed class"
        )
        if result["on_target"] is not None:
            line += f", {100 * result['on_target']:.1f}% now predicted as class {k}"
        console.print(line)
    _print_paths("image(s)", [result["path"], result["image_path"]])
