"""The prepared-dataset format (DESIGN.md §3) and the machinery every `mtl prepare` shares.

    DATA/dataset.json                 DatasetMeta
    DATA/<split>/instances.json       COCO instances (category ids 1..K in det_classes order, RLE masks,
                                      bbox = tight [x, y, w, h] as pycocotools' toBbox gives)
    DATA/<split>/semantic/<stem>.png  uint8 class indices, 255 = ignore (more than 255 seg classes:
                                      uint16, 65535 = ignore; dataset.json's "ignore_index" says which)
    DATA/<split>/dt/<stem>.png        uint8 distance-transform bins 0..K

An unlabelled split (test-server images: COCO test-dev, Cityscapes test, VOC2012 test) is listed in
dataset.json's "unlabelled": its instances.json holds the images and categories and no annotations, and
it has no semantic/dt PNGs; nothing scores or trains on it (`DatasetMeta.check_labelled`), while
`mtl eval --submit` (and PreparedDataset, for predictions) runs on it.

A reader turns its source into `ImageJob`s; `run_prepare` runs a per-image function over them in
parallel (that function writes the PNGs and returns an `ImageResult`), then assembles the COCO JSON per
split and writes `dataset.json` last — all in a staging folder beside --out, swapped in at the end
(`swap_in`): a reader sees the old dataset, then for a moment none, then the new one; never a mix. A
killed or failed prepare leaves the old dataset as it was. Two prepares into the same --out cannot run
at once (`mtlcli.engine.rundir.prepare_lock`, the run lock's rule, taken by `mtl prepare`). Images are
never copied and nothing in the source is ever written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# dataset.json's description (mtlcli.data.meta), re-exported for the readers and writers of the format
from mtlcli.data.meta import FORMAT_VERSION as FORMAT_VERSION
from mtlcli.data.meta import IGNORE_INDEX as IGNORE_INDEX
from mtlcli.data.meta import DatasetMeta as DatasetMeta
from mtlcli.errors import UserError

# More seg classes than a uint8 map can hold beside its ignore value: uint16 maps, this value = ignore.
WIDE_IGNORE_INDEX = 65535
MAX_SEG_CLASSES = WIDE_IGNORE_INDEX  # classes 0..65534
SYNTHETIC_MARKER = "mtl_synthetic.json"  # the root file of a generated source tree (mtlcli.data.synthetic.MARKER)


def label_dtype(num_seg_classes: int) -> tuple[type, int]:
    """(numpy dtype, ignore value) of the semantic maps of a dataset with `num_seg_classes` classes:
    uint8 / 255 up to 255 classes (0..254), uint16 / 65535 above — never a class equal to the ignore
    value (DESIGN.md §3). More than 65535 classes is a UserError."""
    if num_seg_classes <= IGNORE_INDEX:
        return np.uint8, IGNORE_INDEX
    if num_seg_classes <= MAX_SEG_CLASSES:
        return np.uint16, WIDE_IGNORE_INDEX
    raise UserError(
        f"{num_seg_classes} segmentation classes: label maps hold at most {MAX_SEG_CLASSES} — merge classes first"
    )


def instances_path(root: str | Path, split: str) -> Path:
    return Path(root) / split / "instances.json"


def semantic_path(root: str | Path, split: str, stem: str) -> Path:
    return Path(root) / split / "semantic" / f"{stem}.png"


def dt_path(root: str | Path, split: str, stem: str) -> Path:
    return Path(root) / split / "dt" / f"{stem}.png"


# ------------------------------------------------------------------------- per-image output names
# The one naming rule for the files mtl writes per image (`mtl predict` overlays/semantic/labelIds,
# `mtl eval --save-predictions`, `mtl viz predictions`) and that `mtl eval --predictions` reads back:
# a '/'-separated relative name without suffix; nested names (a Cityscapes `<city>/<stem>`, a COCO
# `subdir/name`) stay nested as folders, so the name is never flattened into `city_city_...`.


def image_stem(image: dict[str, Any]) -> str:
    """The name of a prepared image's label files and of its predictions: its `stem` (the file name
    without suffix, '/'-separated where the source nests it), else its file name's stem."""
    return str(image.get("stem") or Path(image["file_name"]).stem)


def output_name(name: str | Path) -> str:
    """`name` (a stem, or a relative path without suffix) as an output name: '/'-separated, without
    empty, '.' or '..' parts (so that it stays inside the folder it is written in)."""
    parts = [p for p in str(name).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "image"


def output_path(folder: str | Path, name: str | Path, suffix: str = ".png") -> Path:
    """Where the output `name` (see `output_name`) of one image is written inside `folder`."""
    *dirs, last = output_name(name).split("/")
    return Path(folder).joinpath(*dirs, last + suffix)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically: fsynced, the user's umask, renamed into place (`mtlcli.safety`)."""
    from mtlcli.safety import atomic_write_text as write

    write(path, text)


def save_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 or uint16 label map as a lossless PNG (16-bit where the array is uint16)."""
    from mtlcli.safety import atomic_save_image

    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"label maps are uint8 or uint16, got {array.dtype}")
    atomic_save_image(path, np.ascontiguousarray(array))


def read_label_png(path: str | Path) -> np.ndarray:
    """A label PNG as a numpy array, keeping 16 bits where the file has them."""
    with Image.open(path) as img:
        return np.array(img)


def encode_instance(mask: np.ndarray, category_id: int, iscrowd: int = 0) -> dict[str, Any]:
    """One COCO annotation (without ids) for a boolean mask [H, W]: RLE, tight bbox, area."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = float(mask_utils.area(rle))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"category_id": int(category_id), "bbox": bbox, "area": area, "iscrowd": int(iscrowd), "segmentation": rle}


def prepare_unlabelled_image(job: ImageJob, out: Path) -> ImageResult:
    """The per-image work for an unlabelled split: the image's size from its header (a truncated file is
    skipped), no PNG written. payload: image (absolute path), optional height/width to check against
    (from an image-info file), extra (image fields kept in instances.json, e.g. coco_id), verify."""
    from mtlcli.data.integrity import check_image

    p = job.payload
    if not os.path.isfile(p["image"]):
        raise SkipImage(f"image file {p['image']} is missing")
    try:
        w, h = check_image(p["image"], p.get("verify", False))
    except (OSError, ValueError, SyntaxError) as exc:
        raise SkipImage(f"corrupt image {p['image']} ({exc})") from None
    if "height" in p and (h, w) != (p["height"], p["width"]):
        raise SkipImage(f"the image is {h}x{w} but the image-info file says {p['height']}x{p['width']}")
    return ImageResult(job.split, job.file_name, job.stem, height=h, width=w, extra=dict(p.get("extra", {})))


class SkipImage(Exception):
    """Raised by a per-image function: this image is skipped; the message is the reason."""


@dataclass
class ImageJob:
    """One image to prepare. `file_name` is relative to the source root; `payload` is the reader's."""

    split: str
    file_name: str
    stem: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageResult:
    split: str
    file_name: str
    stem: str
    height: int = 0
    width: int = 0
    annotations: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # reader-specific image fields (e.g. frame_id)
    # (what, why) of each annotation of a kept image that was left out (a NaN polygon vertex, an inverted
    # box): listed among the skipped entries of the summary as "<file>: <what>", refused under --strict
    dropped: list[tuple[str, str]] = field(default_factory=list)


def _is_run_dir(folder: Path) -> bool:
    """A run directory of `mtl train` (recipe.toml beside metrics.jsonl or checkpoints/)."""
    try:
        return (folder / "recipe.toml").is_file() and (
            (folder / "metrics.jsonl").is_file() or (folder / "checkpoints").is_dir()
        )
    except OSError:
        return False


def check_out_dir(out: str | Path, force: bool, source: str | Path | None = None, *, writes: str = "dataset") -> Path:
    """Refuse to write into a non-empty folder without --force, or anywhere inside the source; refuse,
    even with --force, a run directory or its checkpoints/, a folder inside a prepared dataset, a
    generated source tree (prepare) and any prepared dataset (`writes="source"`: the synthetic city)."""
    out = Path(out).resolve()
    if source is not None:
        src = Path(source).resolve()
        if out == src or src in out.parents:
            raise UserError(
                f"--out {out} lies inside the source {src}; choose a folder outside it (the source is never written)"
            )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another path")
    from mtlcli.safety import protected_owner, refuse_protected_output

    owner = protected_owner(out)
    # preparing again over a prepared dataset is fine; inside one, or into a run's checkpoints/, is not
    if owner is not None and (owner[1] != out or owner[0] != "prepared dataset"):
        refuse_protected_output(out, "--out")
    for folder in (out, *out.parents):
        if _is_run_dir(folder):
            raise UserError(
                f"--out {out} lies inside the run directory {folder} of `mtl train` (even with --force) — "
                "choose a folder outside it"
            )
    if writes == "source" and owner is not None:
        raise UserError(
            f"--out {out} is the prepared dataset {owner[1]}: the synthetic city is a source tree for "
            "`mtl prepare cityscapes`, never written into a prepared dataset (even with --force) — choose "
            "another folder"
        )
    if writes == "dataset" and (out / SYNTHETIC_MARKER).is_file():
        raise UserError(
            f"--out {out} holds a synthetic city (a source tree, {SYNTHETIC_MARKER}); prepare into another folder "
            "(even with --force)"
        )
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty; choose another folder or pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    from mtlcli.safety import clean_orphans

    for folder in (out, *(p for p in out.iterdir() if p.is_dir())):  # half-written JSON of a killed prepare
        clean_orphans(folder)
    return out


# Errors of the output side (disk full, read-only, quota, too many files): they would skip every image
# as "unreadable"; they stop the command instead, as one line.
WRITE_FAULTS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EMFILE, errno.ENFILE}


def _run_one(fn: Callable[[ImageJob, Path], ImageResult], out: Path, job: ImageJob) -> ImageResult:
    try:
        return fn(job, out)
    except SkipImage as exc:
        return ImageResult(job.split, job.file_name, job.stem, skipped=str(exc))
    except OSError as exc:
        if exc.errno in WRITE_FAULTS:
            raise
        return ImageResult(job.split, job.file_name, job.stem, skipped=f"unreadable: {type(exc).__name__}: {exc}")
    except (ValueError, SyntaxError) as exc:  # PIL raises these for corrupt or truncated files
        return ImageResult(job.split, job.file_name, job.stem, skipped=f"unreadable: {type(exc).__name__}: {exc}")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def run_prepare(
    out: Path,
    meta: DatasetMeta,
    jobs: Iterable[ImageJob],
    fn: Callable[[ImageJob, Path], ImageResult],
    workers: int | None = None,
    strict: bool = False,
    pre_skipped: Iterable[ImageResult] = (),
    quiet: bool = False,
    eval_splits: Iterable[str] | None = None,
    excluded: Iterable[dict[str, str]] = (),
) -> dict[str, Any]:
    """Run `fn(job, out)` over all jobs (in parallel when workers > 1), write instances.json per split
    and dataset.json, print a summary table, and return the summary dict.

    `fn` must be a picklable module-level function (or functools.partial of one) that writes the
    semantic/dt PNGs of its image and returns an ImageResult with COCO annotations from
    `encode_instance`. `pre_skipped` carries files the reader already rejected (e.g. no ground truth).
    The summary and dataset.json get the train/evaluation overlap ("overlap", `mtlcli.data.overlap`;
    `eval_splits` defaults to the splits named val*/test*); `excluded` lists images a reader kept out of
    a training split on purpose ({"file", "split", "reason"}), shown under the summary.
    """
    jobs = list(jobs)
    results: list[ImageResult] = list(pre_skipped)
    workers = workers or default_workers()
    for job in jobs:  # every reader's label maps: uint16 where the classes need it (`label_dtype`)
        job.payload.setdefault("num_seg_classes", len(meta.seg_classes))
    meta.ignore_index = label_dtype(len(meta.seg_classes))[1]
    _check_swap(out, meta.splits)
    stage = staging_dir(out)
    if stage.exists():  # left by a killed prepare (this process holds the prepare lock)
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        summary = _build(stage, meta, jobs, fn, results, workers, strict, quiet, eval_splits, excluded)
        swap_in(stage, out, meta.splits)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if not quiet:
        print_summary(summary, meta)
    return summary


def _build(
    out: Path,
    meta: DatasetMeta,
    jobs: list[ImageJob],
    fn: Callable[[ImageJob, Path], ImageResult],
    results: list[ImageResult],
    workers: int,
    strict: bool,
    quiet: bool,
    eval_splits: Iterable[str] | None,
    excluded: Iterable[dict[str, str]],
) -> dict[str, Any]:
    """run_prepare's work, into the staging folder `out`."""
    from functools import partial

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from mtlcli.data.overlap import overlap_report

    run = partial(_run_one, fn, out)
    columns = [
        TextColumn("[bold]prepare[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task(meta.name, total=len(jobs))
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for res in pool.map(run, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 4) or 1))):
                    results.append(res)
                    progress.advance(task)
        else:
            for job in jobs:
                results.append(run(job))
                progress.advance(task)

    skipped = [r for r in results if r.skipped]
    skipped += [
        ImageResult(r.split, f"{r.file_name}: {what}", r.stem, skipped=why)
        for r in results
        if not r.skipped
        for what, why in r.dropped
    ]
    if strict and skipped:
        first = skipped[0]
        raise UserError(
            f"{first.file_name}: {first.skipped} (--strict stops at the first problem; drop --strict to skip such "
            "files)"
        )

    summary: dict[str, Any] = {
        "name": meta.name,
        "splits": {},
        "skipped": [{"file": r.file_name, "reason": r.skipped} for r in skipped],
        "excluded": list(excluded),
    }
    split_images: dict[str, list[dict[str, Any]]] = {}
    has_seg = bool(meta.seg_classes)
    categories = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(meta.det_classes)]
    for split in meta.splits:
        good = sorted((r for r in results if r.split == split and not r.skipped), key=lambda r: r.file_name)
        images: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        per_class = {n: 0 for n in meta.det_classes}
        crowd = 0
        for image_id, r in enumerate(good, start=1):
            images.append(
                {
                    "id": image_id,
                    "file_name": r.file_name,
                    "height": r.height,
                    "width": r.width,
                    "stem": r.stem,
                    **r.extra,
                    # prepare wrote its semantic label file: a reader refuses the split when it is gone
                    **({"semantic": True} if has_seg and semantic_path(out, split, r.stem).is_file() else {}),
                }
            )
            for a in r.annotations:
                anns.append({"id": len(anns) + 1, "image_id": image_id, **a})
                if a["iscrowd"]:
                    crowd += 1
                else:
                    per_class[meta.det_classes[a["category_id"] - 1]] += 1
        coco = {
            "info": {"description": f"{meta.name} {split} prepared by mtl"},
            "images": images,
            "annotations": anns,
            "categories": categories,
        }
        atomic_write_text(instances_path(out, split), json.dumps(coco))
        split_images[split] = images
        summary["splits"][split] = {
            "images": len(images),
            "instances": per_class,
            "crowd": crowd,
            "skipped": sum(1 for r in skipped if r.split == split),
        }
    meta.overlap = summary["overlap"] = overlap_report(split_images, eval_splits)
    meta.save(out)
    return summary


# ------------------------------------------------------------------------------ build beside, swap in


def staging_dir(out: Path) -> Path:
    """Where a prepare builds the new dataset: beside --out (same file system, so the swap is renames)."""
    return out.parent / f".{out.name}.mtl-new"


def _old_splits(out: Path) -> list[str]:
    """The splits of the prepared dataset now in `out` (none when it holds none)."""
    try:
        data = json.loads((out / "dataset.json").read_text())
        return [str(s) for s in data["splits"]] if {"det_classes", "seg_classes"} <= set(data) else []
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _check_swap(out: Path, splits: Iterable[str]) -> None:
    """Before any work: a split folder in --out that is not one of the old prepared dataset's would be
    replaced by the swap — refused, it may be the user's own."""
    old = set(_old_splits(out))
    for split in splits:
        if (out / split).exists() and split not in old:
            raise UserError(
                f"--out {out}: {out / split} exists and is not part of a prepared dataset; prepare into "
                "another folder (it is never replaced, even with --force)"
            )


def swap_in(stage: Path, out: Path, splits: Iterable[str]) -> None:
    """Replace the prepared dataset in `out` by the complete one in `stage`: dataset.json goes first (the
    old dataset stops being one), the old split folders are moved aside, the new ones moved in, and the
    new dataset.json comes last. Files of the user's own in `out` are kept."""
    out.mkdir(parents=True, exist_ok=True)
    trash = out.parent / f".{out.name}.mtl-old"
    if trash.exists():
        shutil.rmtree(trash)
    trash.mkdir()
    old = _old_splits(out)
    if (out / "dataset.json").exists():
        os.replace(out / "dataset.json", trash / "dataset.json")
    for split in dict.fromkeys([*old, *splits]):
        if (out / split).exists():
            os.replace(out / split, trash / split)
    for split in splits:
        os.replace(stage / split, out / split)
    os.replace(stage / "dataset.json", out / "dataset.json")
    from mtlcli.safety import _fsync_dir

    _fsync_dir(out)
    shutil.rmtree(trash, ignore_errors=True)


def print_summary(summary: dict[str, Any], meta: DatasetMeta) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=f"prepared {meta.name}")
    table.add_column("class")
    for split in meta.splits:
        table.add_column(f"{split} (unlabelled)" if split in meta.unlabelled else split, justify="right")
    table.add_row("[bold]images", *[str(summary["splits"][s]["images"]) for s in meta.splits])

    def counts(key: str, name: str | None = None) -> list[str]:  # "—" where a split has no labels to count
        cells = [summary["splits"][s][key] for s in meta.splits]
        cells = [c[name] if name is not None else c for c in cells]
        return ["—" if s in meta.unlabelled else str(c) for s, c in zip(meta.splits, cells, strict=True)]

    for name in meta.det_classes:
        table.add_row(name, *counts("instances", name))
    table.add_row("[italic]crowd regions", *counts("crowd"))
    table.add_row("[italic]files skipped", *[str(summary["splits"][s]["skipped"]) for s in meta.splits])
    console.print(table)
    if summary["skipped"]:
        skipped = Table(title="skipped files")
        skipped.add_column("file")
        skipped.add_column("reason")
        for row in summary["skipped"][:50]:  # as written: a reason's [..] is text, not rich markup
            skipped.add_row(escape(row["file"]), escape(row["reason"]))
        if len(summary["skipped"]) > 50:
            skipped.add_row("...", f"{len(summary['skipped']) - 50} more")
        console.print(skipped)
    if summary.get("excluded"):
        excluded = Table(title="kept out of training splits on purpose")
        for col in ("split", "file", "reason"):
            excluded.add_column(col)
        for row in summary["excluded"][:50]:
            excluded.add_row(row["split"], row["file"], row["reason"])
        if len(summary["excluded"]) > 50:
            excluded.add_row("...", f"{len(summary['excluded']) - 50} more", "")
        console.print(excluded)
    from mtlcli.data.overlap import print_overlap

    print_overlap(summary.get("overlap", {}), console)
