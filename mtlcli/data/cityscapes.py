"""Cityscapes -> the prepared format (`mtl prepare cityscapes SRC --out DATA`, DESIGN.md §3).

Reads the official layout

    SRC/leftImg8bit/<split>/<city>/<prefix>_leftImg8bit.png
    SRC/gtFine/<split>/<city>/<prefix>_gtFine_labelIds.png        uint8 labelIds
    SRC/gtFine/<split>/<city>/<prefix>_gtFine_instanceIds.png     uint16, labelId * 1000 + k per instance
    SRC/gtFine/<split>/<city>/<prefix>_gtFine_polygons.json       used when the two PNGs are absent

and writes, per image, the 19-class trainId map, the distance-transform bins and COCO annotations
(RLE masks, tight boxes; group regions such as "cargroup" are iscrowd = 1). When only the polygon JSON
exists it is rasterised in memory with cityscapesscripts' `createLabelImage` / `createInstanceImage`,
which is what the official preparation scripts do. Nothing under SRC is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mtlcli.data.prepared import (
    DatasetMeta,
    ImageJob,
    ImageResult,
    SkipImage,
    check_out_dir,
    dt_path,
    encode_instance,
    read_label_png,
    run_prepare,
    save_png,
    semantic_path,
)
from mtlcli.data.targets import CITYSCAPES_DET_CLASSES, cityscapes_tables, dt_bins, instances_from_cityscapes, train_ids_from_label_ids
from mtlcli.errors import UserError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
POLYGON_SUFFIX = "_gtFine_polygons.json"
DEFAULT_SPLITS = ("train", "val")
LAYOUT = "leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_*"


def unknown_labels(annotation: dict[str, Any]) -> list[str]:
    """Labels of a polygon annotation that cityscapesscripts' label table does not know ("<name>group"
    is known when <name> is)."""
    from cityscapesscripts.helpers.labels import name2label

    bad = []
    for obj in annotation.get("objects", []):
        label = obj.get("label")
        if not isinstance(label, str):
            bad.append(repr(label))
        elif label not in name2label and not (label.endswith("group") and label[: -len("group")] in name2label):
            bad.append(label)
    return bad


def rasterise_polygons(annotation: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(labelIds uint8 [H, W], instanceIds uint16 [H, W]) from a `*_gtFine_polygons.json` dict, drawn
    by cityscapesscripts exactly as `json2labelImg` / `json2instanceImg` draw them (later objects over
    earlier ones). Raises ValueError for an unknown label (cityscapesscripts would exit the process)."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    bad = unknown_labels(annotation)
    if bad:
        raise ValueError(f"label {bad[0]!r} is not in the Cityscapes label table")
    ann = Annotation()
    ann.fromJsonText(json.dumps(annotation))
    label_ids = np.asarray(createLabelImage(ann, "ids"), dtype=np.uint8)
    # Pillow cannot save mode "I" as PNG and we need numpy anyway; instance ids fit 16 bits (33999 max)
    instance_ids = np.asarray(createInstanceImage(ann, "ids"), dtype=np.int32).astype(np.uint16)
    return label_ids, instance_ids


def _read_polygons(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        annotation = json.loads(path.read_text())
        if not isinstance(annotation, dict) or "imgHeight" not in annotation or "imgWidth" not in annotation:
            raise SkipImage(f"{path.name} lacks imgHeight/imgWidth — not a Cityscapes polygon file")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SkipImage(f"{path.name} is not valid JSON ({exc})") from None
    bad = unknown_labels(annotation)
    if bad:
        raise SkipImage(f"{path.name}: label {bad[0]!r} is not in the Cityscapes label table "
                        "(cityscapesscripts.helpers.labels); fix or delete that object")
    try:
        return rasterise_polygons(annotation)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SkipImage(f"{path.name}: malformed polygon ({type(exc).__name__}: {exc})") from None


def prepare_image(job: ImageJob, out: Path) -> ImageResult:
    """Prepare one Cityscapes image: write semantic/<stem>.png (trainIds) and dt/<stem>.png, return
    its COCO annotations. Per-file problems raise SkipImage (or OSError from Pillow for corrupt PNGs)."""
    root = Path(job.payload["root"])
    with Image.open(root / job.file_name) as img:
        width, height = img.size
        img.verify()  # checks every chunk's CRC without decoding: catches truncated or damaged images
    gt = job.payload["gt"]
    if "label_ids" in gt and "instance_ids" in gt:
        label_ids = read_label_png(root / gt["label_ids"])
        instance_ids = read_label_png(root / gt["instance_ids"])
        if label_ids.ndim != 2 or instance_ids.ndim != 2:
            raise SkipImage("labelIds/instanceIds PNG is not single-channel — expected the official gtFine files")
    else:
        label_ids, instance_ids = _read_polygons(root / gt["polygons"])
    for name, arr in (("labelIds", label_ids), ("instanceIds", instance_ids)):
        if arr.shape != (height, width):
            raise SkipImage(f"{name} is {arr.shape[0]}x{arr.shape[1]} but the image is {height}x{width}")

    semantic = train_ids_from_label_ids(label_ids)
    annotations, masks = [], []
    for mask, category, iscrowd in instances_from_cityscapes(instance_ids):
        annotations.append(encode_instance(mask, category, iscrowd))
        if not iscrowd:
            masks.append(mask)
    save_png(semantic_path(out, job.split, job.stem), semantic)
    save_png(dt_path(out, job.split, job.stem), dt_bins(masks, (height, width)))
    return ImageResult(job.split, job.file_name, job.stem, height, width, annotations, extra={"city": job.payload["city"]})


def find_images(src: Path, splits: Sequence[str] | None) -> tuple[list[str], list[ImageJob], list[ImageResult]]:
    """Scan SRC: (splits, jobs for images with ground truth, skipped results for the others).
    Layout problems (missing folders, no images at all) are UserErrors."""
    img_root, gt_root = src / "leftImg8bit", src / "gtFine"
    if not src.is_dir():
        raise UserError(f"{src}: no such folder — give the Cityscapes root that holds leftImg8bit/ and gtFine/")
    for folder in (img_root, gt_root):
        if not folder.is_dir():
            found = ", ".join(sorted(p.name for p in src.iterdir() if p.is_dir())[:8]) or "nothing"
            raise UserError(f"{src} has no {folder.name}/ folder (found: {found}) — SRC must be the Cityscapes root "
                            f"holding leftImg8bit/ and gtFine/ (layout {LAYOUT})")
    if splits is None:
        splits = [s for s in DEFAULT_SPLITS if (img_root / s).is_dir()]
        if not splits:
            found = ", ".join(sorted(p.name for p in img_root.iterdir() if p.is_dir())) or "nothing"
            raise UserError(f"{img_root} has no train/ or val/ folder (found: {found}) — expected {LAYOUT}")
    for split in splits:
        if not (img_root / split).is_dir():
            raise UserError(f"{img_root / split} does not exist — choose --split among the folders in {img_root}")
        if not (gt_root / split).is_dir():
            raise UserError(f"{gt_root / split} does not exist: split {split!r} has images but no gtFine annotations")

    jobs, skipped = [], []
    for split in splits:
        for path in sorted((img_root / split).glob("*/*.png")):
            city = path.parent.name
            rel = path.relative_to(src).as_posix()
            stem = path.stem
            if not path.name.endswith(IMAGE_SUFFIX):
                skipped.append(ImageResult(split, rel, stem, skipped=f"not a Cityscapes image name (<city>_<seq>_<frame>{IMAGE_SUFFIX})"))
                continue
            prefix = path.name[: -len(IMAGE_SUFFIX)]
            gt_dir = gt_root / split / city
            gt = {}
            for key, suffix in (("label_ids", LABEL_SUFFIX), ("instance_ids", INSTANCE_SUFFIX), ("polygons", POLYGON_SUFFIX)):
                if (gt_dir / (prefix + suffix)).is_file():
                    gt[key] = (gt_dir / (prefix + suffix)).relative_to(src).as_posix()
            if not ("polygons" in gt or ("label_ids" in gt and "instance_ids" in gt)):
                have = ", ".join(Path(v).name for v in gt.values()) or "nothing"
                skipped.append(ImageResult(split, rel, stem, skipped=f"no ground truth: expected {prefix}{POLYGON_SUFFIX} or "
                                           f"{prefix}{LABEL_SUFFIX} + {prefix}{INSTANCE_SUFFIX} in {gt_dir} (found {have})"))
                continue
            jobs.append(ImageJob(split, rel, stem, {"root": str(src), "gt": gt, "city": city}))
    if not jobs and not skipped:
        raise UserError(f"no images under {img_root}/{{{','.join(splits)}}}/<city>/ — expected {LAYOUT}")
    return list(splits), jobs, skipped


def cityscapes_meta(source: Path, splits: list[str]) -> DatasetMeta:
    names, palette, _, _ = cityscapes_tables()
    return DatasetMeta(name="cityscapes", source=str(source), splits=splits, det_classes=list(CITYSCAPES_DET_CLASSES),
                       seg_classes=names, palette=palette)


def prepare_cityscapes(
    src: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    strict: bool = False,
    force: bool = False,
    splits: Sequence[str] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Prepare a Cityscapes tree (or the synthetic city) into `out`; returns run_prepare's summary
    {"name", "splits": {split: {"images", "instances", "crowd", "skipped"}}, "skipped": [{"file", "reason"}]}.

    workers: processes (default: all cores). strict: stop with a UserError at the first problem file
    instead of skipping it. force: allow a non-empty `out`. splits: default train and val.
    """
    src = Path(src).expanduser().resolve()
    split_list, jobs, skipped = find_images(src, splits)
    if strict and skipped:
        first = skipped[0]
        raise UserError(f"{first.file_name}: {first.skipped} (--strict stops at the first problem; drop --strict to skip such files)")
    out = check_out_dir(out, force, source=src)
    return run_prepare(out, cityscapes_meta(src, split_list), jobs, prepare_image, workers=workers,
                       strict=strict, pre_skipped=skipped, quiet=quiet)
