"""COCO 2017 -> the prepared format (DESIGN.md §3).

Source layout:

    SRC/annotations/instances_train2017.json   SRC/train2017/*.jpg
    SRC/annotations/instances_val2017.json     SRC/val2017/*.jpg

Each annotation file present (with its image folder) becomes a split, `train` or `val`. The 80
categories map to contiguous ids 1..80 in increasing COCO category id (det_classes in that order; the
original id of each image is kept as `coco_id`). Masks are decoded from polygons, uncompressed RLE
(crowd) or compressed RLE with pycocotools, and written back as compressed RLE with the tight bbox of
their pixels; an annotation without a segmentation falls back to its filled bbox. The semantic map paints
every annotation, crowd included, with its contiguous id in annotation-file order (later over earlier),
0 = background; distance-transform bins come from the non-crowd masks. Images without annotations are
kept (all background), as COCO evaluation counts them. `dataset.json` "source" is SRC; file names read
like `val2017/000000000139.jpg`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.data.prepared import (
    DatasetMeta,
    ImageJob,
    ImageResult,
    SkipImage,
    check_out_dir,
    dt_path,
    encode_instance,
    run_prepare,
    semantic_path,
)
from mtlcli.data.cityscapes import DT_PALETTE, save_indexed_png  # one PNG writer for every reader
from mtlcli.data.targets import box_mask, dt_bins
from mtlcli.data.voc import read_image_size, refuse_out_inside, voc_colormap
from mtlcli.errors import UserError

COCO_SPLITS = ("train", "val")
# the semantic PNGs carry the whole colour map; dataset.json lists the first 1 + K entries of it
PNG_PALETTE = voc_colormap(256)


def annotation_mask(segmentation: Any, bbox: Any, height: int, width: int) -> np.ndarray:
    """Bool mask [H, W] of one COCO annotation (what pycocotools' annToMask does, without a COCO object).

    segmentation: list of polygons [x0, y0, x1, y1, ...] in pixel coordinates, an uncompressed RLE
    {"size": [H, W], "counts": [ints]} or a compressed RLE {"size", "counts": str}. Empty or missing
    -> the filled bbox [x, y, w, h]."""
    from pycocotools import mask as mask_utils

    if not segmentation:
        x, y, w, h = (float(v) for v in bbox)
        return box_mask([x, y, x + w, y + h], (height, width))
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    mask = mask_utils.decode(rle).astype(bool)
    if mask.shape != (height, width):
        raise SkipImage(f"an RLE of size {list(mask.shape)} does not match the image ({height}x{width})")
    return mask


def prepare_coco_image(job: ImageJob, out: Path) -> ImageResult:
    """Per-image work (runs in a worker). payload: image (absolute path), height, width (from the JSON),
    coco_id, anns: [{"segmentation", "bbox", "category_id" (contiguous 1..K), "iscrowd"}] in file order."""
    p = job.payload
    h, w = read_image_size(p["image"])
    if (h, w) != (p["height"], p["width"]):
        raise SkipImage(f"the image is {h}x{w} but the annotation file says {p['height']}x{p['width']}")
    semantic = np.zeros((h, w), dtype=np.uint8)
    annotations: list[dict[str, Any]] = []
    dt_masks = []
    for a in p["anns"]:
        try:
            mask = annotation_mask(a.get("segmentation"), a.get("bbox", [0, 0, 0, 0]), h, w)
        except (TypeError, ValueError, KeyError) as exc:
            raise SkipImage(f"annotation {a.get('id')} has an unreadable segmentation ({exc})") from None
        if not mask.any():  # degenerate polygon: no pixel to learn from
            continue
        semantic[mask] = a["category_id"]  # annotation order: later ones paint over earlier ones
        crowd = int(bool(a.get("iscrowd", 0)))
        annotations.append(encode_instance(mask, a["category_id"], crowd))
        if not crowd:
            dt_masks.append(mask)
    save_indexed_png(semantic_path(out, job.split, job.stem), semantic, PNG_PALETTE)
    save_indexed_png(dt_path(out, job.split, job.stem), dt_bins(dt_masks, (h, w)), DT_PALETTE)
    return ImageResult(job.split, job.file_name, job.stem, height=h, width=w, annotations=annotations,
                       extra={"coco_id": p["coco_id"]})


def load_instances(path: Path) -> dict[str, Any]:
    """A COCO instances JSON, checked for the keys we use; UserError when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}) — download the COCO annotations again") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: not a COCO instances file — use annotations/instances_<split>2017.json")
    return data


def coco_jobs(src: Path, split: str, data: dict[str, Any], cat_map: dict[int, int], path: Path) -> list[ImageJob]:
    """One ImageJob per image of a split, carrying its annotations (file order) with contiguous ids."""
    per_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    image_ids = {im["id"] for im in data["images"]}
    for a in data["annotations"]:
        if a.get("category_id") not in cat_map:
            raise UserError(f"{path}: annotation {a.get('id')} has category_id {a.get('category_id')}, which is not in "
                            f"its categories — the file is damaged; download it again")
        if a.get("image_id") not in image_ids:
            raise UserError(f"{path}: annotation {a.get('id')} refers to image_id {a.get('image_id')}, which is not in "
                            f"its images — the file is damaged; download it again")
        per_image[a["image_id"]].append({"id": a.get("id"), "segmentation": a.get("segmentation"), "bbox": a.get("bbox"),
                                         "category_id": cat_map[a["category_id"]], "iscrowd": a.get("iscrowd", 0)})
    jobs = []
    for im in data["images"]:
        file_name = f"{split}2017/{im['file_name']}"
        payload = {"image": str(src / file_name), "height": int(im["height"]), "width": int(im["width"]),
                   "coco_id": im["id"], "anns": per_image.get(im["id"], [])}
        jobs.append(ImageJob(split, file_name, Path(im["file_name"]).stem, payload))
    return jobs


def prepare_coco(src: str | Path, out: str | Path, *, workers: int | None = None, strict: bool = False, force: bool = False) -> dict:
    """Write the prepared COCO dataset (module docstring) to `out`; returns run_prepare's summary."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise UserError(f"{src}: no such folder — give the COCO root holding annotations/ and train2017/, val2017/")
    src = src.resolve()
    ann_dir = src / "annotations"
    found = [s for s in COCO_SPLITS if (ann_dir / f"instances_{s}2017.json").is_file()]
    if not found:
        raise UserError(f"{src} has no annotations/instances_train2017.json or annotations/instances_val2017.json — "
                        f"give the COCO root (extract annotations_trainval2017.zip into it)")
    for s in found:
        if not (src / f"{s}2017").is_dir():
            raise UserError(f"{src / f'{s}2017'} is missing but annotations/instances_{s}2017.json is there — "
                            f"extract {s}2017.zip into {src}")

    jobs: list[ImageJob] = []
    categories = None
    for s in found:
        path = ann_dir / f"instances_{s}2017.json"
        data = load_instances(path)
        cats = sorted(((c["id"], c["name"]) for c in data["categories"]), key=lambda c: c[0])
        if categories is None:
            categories = cats
        elif cats != categories:
            raise UserError(f"{path} has other categories than instances_{found[0]}2017.json — use one COCO release")
        cat_map = {cid: i + 1 for i, (cid, _) in enumerate(cats)}
        jobs += coco_jobs(src, s, data, cat_map, path)
        del data  # the train file is large; keep only what the jobs carry

    refuse_out_inside(out, [src])
    out = check_out_dir(out, force)
    names = [n for _, n in categories]
    meta = DatasetMeta(name="coco", source=str(src), splits=list(found), det_classes=names,
                       seg_classes=["background", *names], palette=voc_colormap(len(names) + 1))
    return run_prepare(out, meta, jobs, prepare_coco_image, workers=workers, strict=strict)
