"""`mtl viz ...`: look at data and results as PNG overlays and plots.

    mtl viz dataset DATA [--split S] --out DIR [--num N] [--force]
    mtl viz predictions --run RUN | --checkpoint CKPT [--data DATA --split S | --images FILE|DIR ...] [--num N]
                        [--score-threshold T] [--out DIR]
    mtl viz curves RUN [RUN ...] [--out DIR]
    mtl viz confusion --run RUN [--data DATA --split S] [--out DIR]
    mtl viz features --run RUN (--layer NAME [--channel C | --class K] | --class K) [--steps S] [--no-jitter] ...
    mtl viz adversarial --run RUN --image FILE [--target-class K] [--eps E] [--steps S]

Outputs go to RUN/viz/ (curves to RUN/plots/) unless --out says otherwise; existing PNGs are only
replaced with --force.

Each command parses, calls a plain function in `mtlcli.viz` and prints where the files went; the
drawing code is imported inside the commands so that `mtl --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Draw ground truth, predictions, training curves, confusion matrices, features and adversarial examples as PNGs.", no_args_is_help=True)


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
    from mtlcli.safety import refuse_protected_output
    from mtlcli.viz.dataset import render_dataset

    refuse_protected_output(out, "--out")
    if split is None:
        splits = DatasetMeta.load(data).splits
        split = splits[0] if splits else "train"  # an empty list: PreparedDataset reports it
    paths = render_dataset(data, split, out, num=num, force=force)
    from rich.markup import escape

    Console().print(f"[green]wrote[/] {len(paths)} overlay(s) of {escape(str(data))}, split {escape(split)}, to {escape(str(out))}")


# ------------------------------------------------------------------------------- model-based commands


def _device(name: str) -> str:
    """--device auto | cpu | cuda | cuda:N, checked (`resolve_device`): a bad name is one line, not a crash."""
    from mtlcli.engine.distributed import resolve_device

    return str(resolve_device(None if name == "auto" else name))


def _check_labels(loaded, dataset, source) -> None:
    """Data of another label set than the checkpoint's is one line, not silent nonsense."""
    from mtlcli.engine.compat import check_label_set

    check_label_set(getattr(loaded.model, "trained_classes", None), loaded.recipe["model"], dataset,
                    checkpoint=source, data=loaded.root, action="viz")


def _class_index(value: Optional[str], names: list[str], option: str) -> Optional[int]:
    """A class given as an index (0..C-1) or by name; None stays None."""
    from mtlcli.errors import UserError

    if value is None:
        return None
    if value.strip().lstrip("-").isdigit():
        return int(value)
    if value in names:
        return names.index(value)
    raise UserError(f"{option} {value!r} is neither a class index nor a class name; classes: "
                    f"{', '.join(f'{i}={n}' for i, n in enumerate(names))}")


def _print_paths(what: str, paths: list[Path]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    console.print(f"[green]wrote[/] {len(paths)} {what}:")
    for p in paths:
        console.print(f"  {escape(str(p))}", soft_wrap=True)


RUN_OPTION = typer.Option(None, "--run", help="Run directory of `mtl train` (uses best.pt, else last.pt).")
CHECKPOINT_OPTION = typer.Option(None, "--checkpoint", help="A checkpoint file written by `mtl train`.")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ...")
FORCE_OPTION = typer.Option(False, "--force", help="Overwrite PNGs that already exist.")


@app.command("predictions")
def predictions(
    run: Optional[Path] = RUN_OPTION,
    checkpoint: Optional[Path] = CHECKPOINT_OPTION,
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset [default: the recipe's]."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to draw [default: the recipe's val_split]."),
    images: list[Path] = typer.Option([], "--images", help="Image files or folders instead of a dataset (repeatable)."),
    num: int = typer.Option(8, "--num", "-n", help="Number of images (spread evenly over a split)."),
    score_threshold: float = typer.Option(0.3, "--score-threshold", help="Draw detections scoring at least this."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the PNGs [default: RUN/viz/predictions]."),
    force: bool = FORCE_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Predictions over their images: semantic overlay, boxes with scores, masks; ground truth beside them."""
    from mtlcli.errors import UserError
    from mtlcli.viz.predictions import load_run, output_dir, render_predictions

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
            raise UserError("the run's prepared dataset is not here; give it with --data DATA, or draw --images FILE|DIR")
        split = split or loaded.recipe.get("data", {}).get("val_split") or "val"
        source = PreparedDataset(loaded.root, split, label_map=loaded.recipe.get("data", {}).get("label_map") or None)
        _check_labels(loaded, source, run or checkpoint)
    paths = render_predictions(loaded.model, source, out, num=num, score_threshold=score_threshold, palette=cls.palette,
                               seg_classes=cls.seg_classes, det_classes=cls.det_classes, force=force,
                               device=loaded.device)
    _print_paths("prediction overlay(s)", paths)


@app.command("curves")
def curves(
    runs: list[Path] = typer.Argument(..., help="Run directories (several are overlaid)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the plots [default: the first RUN/plots]."),
    force: bool = FORCE_OPTION,
) -> None:
    """Loss terms, learning rate and evaluation metrics over iterations, from RUN/metrics.jsonl."""
    from mtlcli.safety import refuse_protected_output
    from mtlcli.viz.curves import plot_curves

    refuse_protected_output(out if out is not None else Path(runs[0]) / "plots", "--out")
    _print_paths("plot(s)", plot_curves(runs, out, force=force))


@app.command("confusion")
def confusion(
    run: Optional[Path] = RUN_OPTION,
    checkpoint: Optional[Path] = CHECKPOINT_OPTION,
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset [default: the recipe's]."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate [default: the recipe's val_split]."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the PNG [default: RUN/viz]."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per forward pass."),
    force: bool = FORCE_OPTION,
    device: str = DEVICE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """The normalised segmentation confusion matrix of a split, with class names and per-class IoU."""
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.errors import UserError
    from mtlcli.viz.confusion import run_confusion
    from mtlcli.viz.predictions import load_run, output_dir

    loaded = load_run(run, checkpoint, data=data, device=_device(device))
    if loaded.root is None:
        raise UserError("the run's prepared dataset is not here; give it with --data DATA")
    split = split or loaded.recipe.get("data", {}).get("val_split") or "val"
    dataset = PreparedDataset(loaded.root, split, label_map=loaded.recipe.get("data", {}).get("label_map") or None)
    _check_labels(loaded, dataset, run or checkpoint)
    target = output_dir(out, loaded) / f"confusion_{split}.png"
    path, details = run_confusion(loaded.model, dataset, target, device=loaded.device, batch_size=batch_size,
                                  force=force, progress=not quiet)
    _print_paths(f"confusion matrix (mIoU {100 * (details['miou'] or 0.0):.1f}%)", [path])


@app.command("features")
def features(
    run: Optional[Path] = RUN_OPTION,
    checkpoint: Optional[Path] = CHECKPOINT_OPTION,
    layer: Optional[str] = typer.Option(None, "--layer", help="Module name (see --list-layers) whose activation to maximise."),
    channel: Optional[int] = typer.Option(None, "--channel", min=0, help="One channel (feature map) of --layer."),
    seg_class: Optional[str] = typer.Option(None, "--class",
                                            help="A segmentation class (index or name): its sem_seg score, or that channel of --layer."),
    steps: int = typer.Option(100, "--steps", min=1, help="Gradient-ascent steps."),
    lr: float = typer.Option(0.05, "--lr", help="Step size (the gradient is normalised to mean magnitude 1)."),
    jitter: bool = typer.Option(True, "--jitter/--no-jitter", help="Shift the image up to 4 px between steps."),
    scale: bool = typer.Option(True, "--scale/--no-scale", help="Rescale by 0.95..1.05 between steps."),
    rotate: bool = typer.Option(True, "--rotate/--no-rotate", help="Rotate by -5..5 degrees between steps."),
    blur: bool = typer.Option(True, "--blur/--no-blur", help="Gaussian blur every 4th step."),
    seed: int = typer.Option(0, "--seed", help="Seed of the start noise and the perturbations."),
    list_layers: bool = typer.Option(False, "--list-layers", help="Print every layer name and stop."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the PNGs [default: RUN/viz/features]."),
    force: bool = FORCE_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Activation maximisation of a layer, channel or class, and the first-layer filters as a grid."""
    from rich.console import Console

    from mtlcli.viz.features import layer_names, render_features
    from mtlcli.viz.predictions import load_run, output_dir

    loaded = load_run(run, checkpoint, device=_device(device))
    if list_layers:
        for name in layer_names(loaded.model):
            print(name)
        return
    names = loaded.classes.seg_classes
    k = _class_index(seg_class, names, "--class")
    result = render_features(loaded.model, output_dir(out, loaded, "features"), layer=layer, channel=channel, seg_class=k,
                             class_name=names[k] if k is not None and 0 <= k < len(names) else None, steps=steps, lr=lr,
                             jitter=4 if jitter else 0, scale=scale, rotate=rotate, blur=blur, seed=seed,
                             num_classes=len(names) or None, force=force)
    Console().print(f"{result['unit']}: mean activation {result['before']:.4g} (noise) -> {result['after']:.4g}")
    _print_paths("image(s)", [result["image"]] + ([result["filters"]] if result["filters"] else []))
    if result["filters"] is None:
        Console().print(f"kept the existing filter grid {result['filters_path']} (pass --force to redraw it)")


@app.command("adversarial")
def adversarial(
    run: Optional[Path] = RUN_OPTION,
    checkpoint: Optional[Path] = CHECKPOINT_OPTION,
    image: Path = typer.Option(..., "--image", help="The image file to attack."),
    target_class: Optional[str] = typer.Option(None, "--target-class",
                                               help="Push every pixel towards this class (index or name) [default: away from its own]."),
    eps: float = typer.Option(8 / 255, "--eps", help="Budget: the largest change of any pixel value, in 0..1 units."),
    steps: int = typer.Option(10, "--steps", min=1, help="Gradient steps."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the PNGs [default: RUN/viz/adversarial]."),
    force: bool = FORCE_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """An iterative gradient attack on the segmentation: original, perturbation, adversarial, predictions."""
    from rich.console import Console

    from mtlcli.viz.adversarial import render_adversarial
    from mtlcli.viz.predictions import load_run, output_dir, read_image_file

    read_image_file(image)  # an unreadable image fails before the model is built
    loaded = load_run(run, checkpoint, device=_device(device))
    k = _class_index(target_class, loaded.classes.seg_classes, "--target-class")
    result = render_adversarial(loaded.model, image, output_dir(out, loaded, "adversarial"), loaded.classes.palette,
                                eps=eps, steps=steps, target_class=k, force=force, device=loaded.device)
    line = (f"perturbation L2 {result['l2']:.4f}, Linf {result['linf']:.4f} (budget {eps:.4f}); "
            f"{100 * result['changed']:.1f}% of pixels changed class")
    if result["on_target"] is not None:
        line += f", {100 * result['on_target']:.1f}% now predicted as class {k}"
    Console().print(line)
    _print_paths("image(s)", [result["path"], result["image_path"]])
