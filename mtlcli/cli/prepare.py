"""`mtl prepare {cityscapes,voc,coco,coco-panoptic,folder,mot15,synthetic}`: turn a dataset into the prepared format.

Each command parses, calls the reader's entry function in `mtlcli.data` and prints where the result
went, then a `next:` line with the command that trains on it (a shipped recipe whose splits the prepared
dataset has; printed with -q too); the readers show the progress bar and the summary table. Readers are
imported inside the commands so that `mtl --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mtlcli.cli.common import QUIET_HELP, quiet_output
from mtlcli.engine.rundir import prepare_lock

app = typer.Typer(
    help="Prepare a dataset (or draw the synthetic city) into mtl's prepared format.", no_args_is_help=True
)

WORKERS_HELP = "Processes preparing images in parallel (default: all cores)."
STRICT_HELP = "Stop at the first problem file instead of skipping it and listing it in the summary."
VERIFY_HELP = "Decode every image fully to find damage inside complete files (default: check headers and ends only)."
FORCE_HELP = "Write into --out even if it is not empty (files there may be overwritten)."
# the options every `mtl prepare DATASET` takes (one definition, as cli.common's RUN_OPTION)
WORKERS_OPTION = typer.Option(None, "--workers", "-j", min=1, help=WORKERS_HELP)
STRICT_OPTION = typer.Option(False, "--strict", help=STRICT_HELP)
FORCE_OPTION = typer.Option(False, "--force", help=FORCE_HELP)
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help=QUIET_HELP)


def _console():
    from rich.console import Console  # imported when printing: `mtl --help` and `mtl recipes list` stay quick

    return Console()


def default_out(name: str) -> Path:
    """$MTL_DATA/<name> (MTL_DATA defaults to ./data): where recipes look for a prepared dataset."""
    return Path(os.environ.get("MTL_DATA", "data")) / name


def _done(out: Path, summary: dict, quiet: bool = False) -> None:
    images = sum(s["images"] for s in summary["splits"].values())
    skipped = len(summary["skipped"])
    # with -q the summary table is not printed: the first reason stands in for it
    where = f"first: {summary['skipped'][0]['file']}: {summary['skipped'][0]['reason']}" if quiet and skipped else ""
    from rich.markup import escape

    note = f", {skipped} file(s) skipped ({escape(where) or 'listed above'})" if skipped else ""
    _console().print(f"[green]prepared[/] {summary['name']}: {images} images in {out}{note}")


def _print_train_hint(kind: str, out: Path) -> None:
    from mtlcli.hints import train_hint

    hint = train_hint(kind, out)
    if hint:
        _console().print(hint, soft_wrap=True, markup=False)  # one line however narrow the terminal


@app.command("coco-panoptic")
def coco_panoptic(
    json_file: Path = typer.Option(..., "--json", metavar="FILE", help="COCO panoptic JSON of the train split."),
    png_dir: Path = typer.Option(..., "--png-dir", metavar="DIR", help="Its panoptic PNGs."),
    images: Path = typer.Option(..., "--images", metavar="DIR", help="Its images (found by file_name, or below)."),
    val_json: Path | None = typer.Option(None, "--val-json", metavar="FILE", help="COCO panoptic JSON of val."),
    val_png_dir: Path | None = typer.Option(None, "--val-png-dir", metavar="DIR", help="Its panoptic PNGs."),
    val_images: Path | None = typer.Option(None, "--val-images", metavar="DIR", help="Its images."),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DATA", help="Prepared dataset folder [default: $MTL_DATA/custom-panoptic]."
    ),
    workers: int | None = WORKERS_OPTION,
    strict: bool = STRICT_OPTION,
    force: bool = FORCE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """COCO panoptic files (COCO 2017, CVAT / Label Studio exports, Cityscapes' createPanopticImgs): things
    and stuff, instances, semantic map, panoptic ground truth kept for PQ."""
    from mtlcli.data.coco_panoptic import PanopticSplit, prepare_coco_panoptic
    from mtlcli.errors import UserError

    splits = [PanopticSplit("train", json_file, png_dir, images)]
    if val_json is not None and val_png_dir is not None and val_images is not None:
        splits.append(PanopticSplit("val", val_json, val_png_dir, val_images))
    elif any(v is not None for v in (val_json, val_png_dir, val_images)):
        raise UserError("a val split needs all three of --val-json, --val-png-dir and --val-images")
    out = out or default_out("custom-panoptic")
    with quiet_output(quiet):
        summary = prepare_coco_panoptic(splits, out, workers=workers, strict=strict, force=force, quiet=quiet)
    _done(out, summary)
    _console().print(
        f"next: mtl train --recipe datnet-custom --data {out}   (or safpn-custom, ivanet-custom, imtl-custom)",
        soft_wrap=True,
        markup=False,
    )


@app.command("folder")
def folder(
    src: Path = typer.Argument(
        ..., help="Folder with images/, masks/ (class-index PNGs) and classes.txt or classes.json."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DATA", help="Prepared dataset folder [default: $MTL_DATA/folder]."
    ),
    workers: int | None = WORKERS_OPTION,
    strict: bool = STRICT_OPTION,
    force: bool = FORCE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Hand-made scene labels: class-index masks + a class list saying which are things (docs/panoptic.md);
    instances from an optional COCO instances.json, else from connected components."""
    from mtlcli.data.folder import prepare_folder

    out = out or default_out("folder")
    with quiet_output(quiet):
        summary = prepare_folder(src, out, workers=workers, strict=strict, force=force, quiet=quiet)
    _done(out, summary)
    if summary["instances_from"] == "connected components":
        _console().print(
            "instances: connected components of each thing class's pixels (no instances.json): "
            "touching objects of one class are one instance",
            soft_wrap=True,
            markup=False,
        )
    _console().print(f"next: mtl train --recipe datnet-custom --data {out}", soft_wrap=True, markup=False)


@app.command("cityscapes")
def cityscapes(
    src: Path = typer.Argument(..., help="Cityscapes root holding leftImg8bit/ and gtFine/ (or a synthetic city)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DATA", help="Prepared dataset folder [default: $MTL_DATA/cityscapes]."
    ),
    split: list[str] | None = typer.Option(
        None,
        "--split",
        help="Split to prepare; repeat for several [default: train, val, and test (unlabelled) where present].",
    ),
    workers: int | None = WORKERS_OPTION,
    strict: bool = STRICT_OPTION,
    force: bool = FORCE_OPTION,
    quiet: bool = QUIET_OPTION,
    verify: bool = typer.Option(False, "--verify", help=VERIFY_HELP),
) -> None:
    """Cityscapes (gtFine polygons or labelIds/instanceIds PNGs): boxes and masks, 19 trainIds, DT bins."""
    from mtlcli.data.cityscapes import prepare_cityscapes

    out = out or default_out("cityscapes")
    with quiet_output(quiet), prepare_lock(out):  # one prepare at a time into one --out
        summary = prepare_cityscapes(
            src, out, workers=workers, strict=strict, force=force, splits=split or None, verify=verify
        )
    _done(out, summary, quiet)
    from mtlcli.data.synthetic import MARKER

    _print_train_hint("synthetic" if (src / MARKER).is_file() else "cityscapes", out)


@app.command("voc")
def voc(
    voc2012: Path = typer.Option(..., "--voc2012", help="VOCdevkit/VOC2012 folder (or the VOCdevkit holding it)."),
    voc2007: Path | None = typer.Option(
        None, "--voc2007", help="VOCdevkit/VOC2007 folder, for 07+12 training and the VOC07 test split."
    ),
    sbd: Path | None = typer.Option(
        None, "--sbd", help="SBD benchmark_RELEASE/dataset folder, for train_aug and trainval07_aug12 (IvaNet)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DATA", help="Prepared dataset folder [default: $MTL_DATA/voc]."
    ),
    workers: int | None = WORKERS_OPTION,
    strict: bool = STRICT_OPTION,
    force: bool = FORCE_OPTION,
    quiet: bool = QUIET_OPTION,
    verify: bool = typer.Option(False, "--verify", help=VERIFY_HELP),
) -> None:
    """PASCAL VOC 2007/2012 (+ SBD): the papers' splits (trainval, trainval07_aug12, train_aug, test, val), DT bins."""
    from mtlcli.data.voc import prepare_voc

    out = out or default_out("voc")
    with quiet_output(quiet), prepare_lock(out):  # one prepare at a time into one --out
        summary = prepare_voc(
            out, voc2012=voc2012, voc2007=voc2007, sbd=sbd, workers=workers, strict=strict, force=force, verify=verify
        )
    _done(out, summary, quiet)
    _print_train_hint("voc", out)


@app.command("coco")
def coco(
    src: Path | None = typer.Argument(
        None,
        help="COCO 2017 root holding annotations/ and train2017/, val2017/ "
        "(or give your own files with --train-json/--train-images).",
    ),
    train_json: Path | None = typer.Option(
        None, "--train-json", help="A COCO-format annotation file for the train split."
    ),
    train_images: Path | None = typer.Option(None, "--train-images", help="Folder its file_names are relative to."),
    val_json: Path | None = typer.Option(None, "--val-json", help="A COCO-format annotation file for the val split."),
    val_images: Path | None = typer.Option(None, "--val-images", help="Folder its file_names are relative to."),
    image_info: list[Path] | None = typer.Option(
        None,
        "--image-info",
        metavar="FILE",
        help="A COCO image-info file (images + categories, e.g. annotations/image_info_test-dev2017.json): an "
        "unlabelled split for `mtl eval --submit`, named after it (test-dev); repeat for several.",
    ),
    image_info_images: Path | None = typer.Option(
        None,
        "--image-info-images",
        metavar="DIR",
        help="Folder of the image-info files' images [default: SRC/test2017].",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="DATA",
        help="Prepared dataset folder [default: $MTL_DATA/coco, or $MTL_DATA/custom for your own files].",
    ),
    workers: int | None = WORKERS_OPTION,
    strict: bool = STRICT_OPTION,
    force: bool = FORCE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """COCO 2017 or any COCO-format JSON: the dataset's own classes, boxes and masks, a painted semantic map,
    DT bins."""
    from mtlcli.data.coco import prepare_coco

    custom = any(v is not None for v in (train_json, train_images, val_json, val_images))
    out = out or default_out("custom" if custom else "coco")
    with quiet_output(quiet), prepare_lock(out):  # one prepare at a time into one --out
        summary = prepare_coco(
            src,
            out,
            workers=workers,
            strict=strict,
            force=force,
            train_json=train_json,
            train_images=train_images,
            val_json=val_json,
            val_images=val_images,
            image_info=image_info or None,
            image_info_images=image_info_images,
        )
    _done(out, summary, quiet)
    if custom:
        from mtlcli.data.prepared import DatasetMeta
        from mtlcli.hints import custom_train_hint

        has_val = "val" in DatasetMeta.load(out).splits
        _console().print(custom_train_hint(out, has_val), soft_wrap=True, markup=False)
    else:
        _print_train_hint("coco", out)


@app.command("mot15")
def mot15(
    src: Path = typer.Argument(..., help="2DMOT2015 root holding train/<sequence>/{img1,gt}."),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DATA", help="Prepared dataset folder [default: $MTL_DATA/mot15]."
    ),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", min=0.0, max=0.9, help="Last part of each sequence used for val."
    ),
    workers: int | None = WORKERS_OPTION,
    strict: bool = STRICT_OPTION,
    force: bool = FORCE_OPTION,
    quiet: bool = QUIET_OPTION,
    verify: bool = typer.Option(False, "--verify", help=VERIFY_HELP),
) -> None:
    """MOT15 pedestrians: boxes per frame, a time split per sequence, box-mask DT bins."""
    from mtlcli.data.mot15 import prepare_mot15

    out = out or default_out("mot15")
    with quiet_output(quiet), prepare_lock(out):  # one prepare at a time into one --out
        summary = prepare_mot15(
            src, out, val_fraction=val_fraction, workers=workers, strict=strict, force=force, verify=verify
        )
    _done(out, summary, quiet)
    _print_train_hint("mot15", out)


@app.command("synthetic")
def synthetic(
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        metavar="DIR",
        help="Folder for the synthetic Cityscapes tree (a source, not a prepared dataset).",
    ),
    train: int = typer.Option(300, "--train", min=0, help="Number of train images."),
    val: int = typer.Option(60, "--val", min=0, help="Number of val images."),
    size: tuple[int, int] = typer.Option(
        (256, 512),
        "--size",
        metavar="H W",
        show_default=False,
        help="Image height and width in pixels [default: 256 512].",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed and size give the same images."),
    workers: int | None = typer.Option(
        None, "--workers", "-j", min=1, help="Processes drawing images (default: all cores)."
    ),
    panoptic: bool = typer.Option(
        True,
        "--panoptic/--no-panoptic",
        help="Also write Cityscapes' panoptic ground truth (gtFine/cityscapes_panoptic_<split>.json + PNGs, "
        "by cityscapesscripts' createPanopticImgs).",
    ),
    force: bool = FORCE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Draw a synthetic street-scene dataset in the real Cityscapes layout, to prepare like Cityscapes."""
    from mtlcli.data.synthetic import generate_synthetic
    from mtlcli.hints import after_synthetic

    with quiet_output(quiet), prepare_lock(out):  # one prepare at a time into one --out
        root = generate_synthetic(
            out, train=train, val=val, size=size, seed=seed, force=force, workers=workers, panoptic=panoptic
        )
    _console().print(
        f"[green]synthetic city[/]: {train} train + {val} val images of {size[0]}x{size[1]} in {root}\n"
        f"next: {after_synthetic(out, default_out('synthetic'))}"
    )
