"""COCO-format data -> the prepared format (DESIGN.md §3): COCO 2017, or any COCO-format JSON.

Source layouts:

    SRC/annotations/instances_train2017.json   SRC/train2017/*.jpg      (mtl prepare coco SRC)
    SRC/annotations/instances_val2017.json     SRC/val2017/*.jpg

    --train-json F --train-images DIR [--val-json F --val-images DIR]    (any COCO-format files; the
                                                file_names are relative to the image folders)

    --image-info SRC/annotations/image_info_test-dev2017.json [--image-info-images SRC/test2017]

Each annotation file present (with its image folder) becomes a split, `train` or `val`. An image-info
file (COCO's format for the test-server images: images and categories, no annotations) becomes an
unlabelled split named after it (`image_info_test-dev2017.json` -> `test-dev`): its instances.json keeps
the images (with their `coco_id`) and the categories, no annotations and no PNGs, and dataset.json lists
it under "unlabelled" (`mtl eval --submit` writes the server's files for it; nothing scores on it). The dataset's
own categories map to contiguous ids 1..K in increasing original category id (det_classes in that
order, their original ids kept in dataset.json's `det_category_ids`; the original id of each image is
kept as `coco_id`), so saved results map back to the source ids. Label PNGs are named after the image's
path below its folder (`a/x.jpg` -> semantic/a/x.png), so two images never share one. Malformed entries
(a polygon with fewer than 6 or an odd number of coordinates, a segmentation that is neither polygons nor
RLE, an image without height/width, a category without a name, a box of zero width) are left out with
their reason in the summary, or stop the run under --strict. Masks are decoded from polygons, uncompressed RLE
(crowd) or compressed RLE with pycocotools, and written back as compressed RLE with the tight bbox of
their pixels; an annotation without a segmentation falls back to its filled bbox. The semantic map paints
every annotation, crowd included, with its contiguous id in annotation-file order (later over earlier),
0 = background; distance-transform bins come from the non-crowd masks. Images without annotations are
kept (all background), as COCO evaluation counts them. `dataset.json` "source" is SRC (for custom files,
the deepest folder holding every image folder); file names read like `val2017/000000000139.jpg`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.data.cityscapes import DT_PALETTE, save_indexed_png  # one PNG writer for every reader
from mtlcli.data.prepared import (
    DatasetMeta,
    ImageJob,
    ImageResult,
    SkipImage,
    check_out_dir,
    dt_path,
    encode_instance,
    label_dtype,
    prepare_unlabelled_image,
    run_prepare,
    save_png,
    semantic_path,
)
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
    coco_id, anns: [{"segmentation", "bbox", "category_id" (contiguous 1..K), "iscrowd"}] in file order;
    unlabelled (an image-info split: the size is checked, nothing is written)."""
    p = job.payload
    if p.get("unlabelled"):
        return prepare_unlabelled_image(job, out)
    h, w = read_image_size(p["image"])
    if (h, w) != (p["height"], p["width"]):
        turned = (w, h) == (p["height"], p["width"])
        why = (
            " (its EXIF orientation turns it: mtl reads images upright, as Detectron2 does — give the upright "
            "size and annotations, or remove the orientation tag)"
            if turned
            else ""
        )
        raise SkipImage(f"the image is {h}x{w} but the annotation file says {p['height']}x{p['width']}{why}")
    dtype, _ = label_dtype(p.get("num_seg_classes", 0))  # uint16 above 255 classes: no class is the ignore value
    semantic: np.ndarray = np.zeros((h, w), dtype=dtype)
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
    if semantic.dtype == np.uint8:
        save_indexed_png(semantic_path(out, job.split, job.stem), semantic, PNG_PALETTE)
    else:
        save_png(semantic_path(out, job.split, job.stem), semantic)  # 16-bit greyscale
    save_indexed_png(dt_path(out, job.split, job.stem), dt_bins(dt_masks, (h, w)), DT_PALETTE)
    return ImageResult(
        job.split, job.file_name, job.stem, height=h, width=w, annotations=annotations, extra={"coco_id": p["coco_id"]}
    )


def load_instances(path: Path) -> dict[str, Any]:
    """A COCO instances JSON, checked for the keys we use; UserError when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}) — give a COCO instances file (download it again)") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise UserError(
            f"{path} lacks {', '.join(missing)}: not a COCO instances file — give one with images, "
            "annotations and categories (e.g. annotations/instances_<split>2017.json)"
        )
    bad = [k for k in ("images", "annotations", "categories") if not isinstance(data[k], list)]
    if bad:
        raise UserError(f"{path}: {bad[0]} must be a list — the file is not in COCO format")
    return data


def load_image_info(path: Path) -> dict[str, Any]:
    """A COCO image-info JSON (images + categories, e.g. annotations/image_info_test-dev2017.json), with an
    empty `annotations` list added; UserError when it is not one, or when it holds annotations."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}) — give a COCO image-info file (download it again)") from None
    missing = [k for k in ("images", "categories") if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        raise UserError(
            f"{path} lacks a list of {', '.join(missing)}: not a COCO image-info file — give one with images and "
            "categories (e.g. annotations/image_info_test-dev2017.json)"
        )
    if data.get("annotations"):
        raise UserError(
            f"{path} holds annotations: it is a labelled file — give it with --val-json (or as instances_val2017.json)"
        )
    return {**data, "annotations": []}


def image_info_split(path: Path) -> str:
    """The split an image-info file becomes: `image_info_test-dev2017.json` -> `test-dev`."""
    m = re.fullmatch(r"image_info_(.+?)(?:20\d\d)?\.json", Path(path).name)
    return m.group(1) if m else Path(path).stem


# ------------------------------------------------------------------------------------ checking entries


def _hashable(v: Any) -> bool:
    """A JSON id usable as a key (a list or an object is not)."""
    return not isinstance(v, (list, dict))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def category_problem(c: Any) -> str | None:
    """Why a `categories` entry cannot be used, or None."""
    if not isinstance(c, dict):
        return f"category entry {c!r} is not an object"
    if not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
        return f"category {c.get('name', '?')!r} has no integer id"
    if not isinstance(c.get("name"), str) or not c["name"].strip():
        return f"category {c['id']} has no name"
    return None


def image_problem(im: Any) -> str | None:
    """Why an `images` entry cannot be used, or None."""
    if not isinstance(im, dict):
        return f"image entry {im!r} is not an object"
    name = im.get("file_name")
    if not isinstance(name, str) or not name:
        return f"image {im.get('id')!r} has no file_name"
    if Path(name).is_absolute() or ".." in Path(name).parts:
        return f"image {im.get('id')!r}: file_name {name!r} leaves the image folder"
    if "id" not in im or isinstance(im["id"], (dict, list, float)):
        return f"image {name} has no id"
    for key in ("height", "width"):
        if not isinstance(im.get(key), int) or isinstance(im.get(key), bool) or im[key] < 1:
            return f"image {name} has no valid {key} ({im.get(key)!r})"
    return None


def annotation_problem(a: Any, height: int, width: int) -> str | None:
    """Why an `annotations` entry cannot be used, or None (checked before any decoding)."""
    if not isinstance(a, dict):
        return f"annotation entry {a!r} is not an object"
    where = f"annotation {a.get('id')!r}"
    bbox = a.get("bbox")
    if bbox is not None:
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            return f"{where}: bbox {bbox!r} is not [x, y, w, h]"
        if bbox[2] <= 0 or bbox[3] <= 0:
            return f"{where}: bbox {bbox!r} has zero width or height"
        if bbox[0] >= width or bbox[1] >= height or bbox[0] + bbox[2] <= 0 or bbox[1] + bbox[3] <= 0:
            return f"{where}: bbox {bbox!r} lies wholly outside its {width}x{height} image"
    seg = a.get("segmentation")
    if seg is None or seg == []:
        if bbox is None:
            return f"{where} has neither a segmentation nor a bbox"
        return None
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or not all(_number(v) for v in poly):
                return f"{where}: segmentation {str(seg)[:40]} is not a list of polygons [x0, y0, x1, y1, ...]"
            if len(poly) < 6 or len(poly) % 2:
                return f"{where}: a polygon with {len(poly)} coordinates (a polygon needs an even number, at least 6)"
        xs = [v for poly in seg for v in poly[0::2]]
        ys = [v for poly in seg for v in poly[1::2]]
        if xs and (min(xs) >= width or min(ys) >= height or max(xs) <= 0 or max(ys) <= 0):
            return f"{where}: its polygons lie wholly outside its {width}x{height} image"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(size, list) or len(size) != 2 or not isinstance(counts, (str, list)):
            return f"{where}: segmentation is not an RLE {{size: [H, W], counts}}"
        if [int(v) if _number(v) else v for v in size] != [height, width]:
            return f"{where}: an RLE of size {size} does not match the image ({height}x{width})"
        return None
    return f"{where}: segmentation is a {type(seg).__name__}, not a polygon list or an RLE"


# ------------------------------------------------------------------------------------------------- jobs


@dataclass
class Split:
    """One split to prepare: its annotation file and the folder its images' file_names are relative to."""

    name: str
    json: Path
    images: Path
    unlabelled: bool = False


def coco_categories(data: dict[str, Any], path: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """((original id, name) in increasing id, reasons for skipped category entries)."""
    cats, problems, seen = [], [], set()
    for c in data["categories"]:
        why = category_problem(c)
        if why:
            problems.append(why)
            continue
        if c["id"] in seen:
            raise UserError(f"{path}: category id {c['id']} is listed twice — the file is damaged; fix its categories")
        seen.add(c["id"])
        cats.append((c["id"], c["name"].strip()))
    if not cats:
        raise UserError(f"{path} has no usable categories (each needs an integer id and a name)")
    return sorted(cats), problems


def coco_jobs(
    split: Split, data: dict[str, Any], cat_map: dict[int, int], skipped_cats: set[Any], rel_to: Path, path: Path
) -> tuple[list[ImageJob], list[ImageResult]]:
    """One ImageJob per usable image of a split, carrying its usable annotations (file order) with
    contiguous category ids; and an ImageResult with the reason for each entry left out.

    file_name in the prepared format is relative to `rel_to` (the dataset's "source"); the stem keeps the
    path below the image folder, so `a/x.jpg` and `b/x.jpg` get different label PNGs."""
    skipped: list[ImageResult] = []

    def skip(file: str, reason: str) -> None:
        skipped.append(ImageResult(split.name, file, "", skipped=reason))

    images: dict[Any, dict[str, Any]] = {}
    for im in data["images"]:
        why = image_problem(im)
        if why is None and im["id"] in images:
            why = f"image id {im['id']!r} is listed twice ({images[im['id']]['file_name']} and {im['file_name']})"
        if why:
            skip(f"{path.name}: image", why)
            continue
        images[im["id"]] = im
    listed = {im.get("id") for im in data["images"] if isinstance(im, dict) and isinstance(im.get("id"), (int, str))}
    per_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for a in data["annotations"]:
        if isinstance(a, dict) and not all(_hashable(a.get(k)) for k in ("id", "image_id", "category_id")):
            skip(f"{path.name}: annotation", f"annotation {str(a.get('id'))[:40]}: an id that is a list or an object")
            continue
        image = images.get(a.get("image_id")) if isinstance(a, dict) else None
        if isinstance(a, dict) and a.get("category_id") in skipped_cats:
            skip(f"{path.name}: annotation {a.get('id')!r}", f"its category {a.get('category_id')} was skipped")
            continue
        if isinstance(a, dict) and a.get("category_id") not in cat_map:
            raise UserError(
                f"{path}: annotation {a.get('id')} has category_id {a.get('category_id')}, which is not in "
                f"its categories — the file is damaged; fix or download it again"
            )
        if isinstance(a, dict) and image is None and a.get("image_id") not in listed:
            raise UserError(
                f"{path}: annotation {a.get('id')} refers to image_id {a.get('image_id')}, which is not in "
                f"its images — the file is damaged; fix or download it again"
            )
        if image is None:
            continue  # its image was skipped above, with the reason
        why = annotation_problem(a, image["height"], image["width"])
        if why:
            skip(f"{image['file_name']}", why)
            continue
        per_image[a["image_id"]].append(
            {
                "id": a.get("id"),
                "segmentation": a.get("segmentation"),
                "bbox": a.get("bbox"),
                "category_id": cat_map[a["category_id"]],
                "iscrowd": a.get("iscrowd", 0),
            }
        )
    jobs: list[Any] = []
    stems: dict[str, Any] = {}
    for im in images.values():
        file = split.images / im["file_name"]
        stem = Path(im["file_name"]).with_suffix("").as_posix()
        if stem.lower() in stems:
            raise UserError(
                f"{path}: images {stems[stem.lower()]} and {im['file_name']} would write the same label "
                f"file {stem}.png — rename one of them"
            )
        stems[stem.lower()] = im["file_name"]
        payload = {
            "image": str(file),
            "height": int(im["height"]),
            "width": int(im["width"]),
            "coco_id": im["id"],
            "anns": per_image.get(im["id"], []),
        }
        jobs.append(ImageJob(split.name, file.relative_to(rel_to).as_posix(), stem, payload))
    return jobs, skipped


def coco2017_splits(src: Path, image_info: bool = False) -> list[Split]:
    """The splits of a COCO 2017 tree (SRC/annotations/instances_<split>2017.json + SRC/<split>2017/);
    none is an error unless an image-info file gives a split (`image_info`)."""
    ann_dir = src / "annotations"
    found = [s for s in COCO_SPLITS if (ann_dir / f"instances_{s}2017.json").is_file()]
    if not found and not image_info:
        raise UserError(
            f"{src} has no annotations/instances_train2017.json or annotations/instances_val2017.json — "
            f"give the COCO root (extract annotations_trainval2017.zip into it), or give your own files "
            f"with --train-json/--train-images"
        )
    for s in found:
        if not (src / f"{s}2017").is_dir():
            raise UserError(
                f"{src / f'{s}2017'} is missing but annotations/instances_{s}2017.json is there — "
                f"extract {s}2017.zip into {src}"
            )
    return [Split(s, ann_dir / f"instances_{s}2017.json", src / f"{s}2017") for s in found]


def custom_splits(
    train_json: Path | None, train_images: Path | None, val_json: Path | None, val_images: Path | None
) -> list[Split]:
    """Splits given as (annotation file, image folder) pairs; each file needs its folder."""
    splits = []
    for name, js, im in (("train", train_json, train_images), ("val", val_json, val_images)):
        if js is None and im is None:
            continue
        if js is None or im is None:
            raise UserError(
                f"--{name}-json and --{name}-images go together: give both (the annotation file and the "
                "folder its file_names are relative to)"
            )
        js, im = Path(js).expanduser(), Path(im).expanduser()
        if not js.is_file():
            raise UserError(f"--{name}-json {js}: no such file — give a COCO-format annotation JSON")
        if not im.is_dir():
            raise UserError(f"--{name}-images {im}: no such folder — give the folder holding the images")
        splits.append(Split(name, js.resolve(), im.resolve()))
    if not any(s.name == "train" for s in splits):
        raise UserError("give --train-json FILE and --train-images DIR (and --val-json/--val-images for a val split)")
    return splits


def image_info_splits(files: list[Path], images: str | Path | None, src: Path | None, taken: list[str]) -> list[Split]:
    """Unlabelled splits of image-info files; their images are in `images` (default SRC/test2017, where
    COCO's test-dev and test-challenge images are)."""
    if images is None:
        if src is None:
            raise UserError("--image-info with your own files needs --image-info-images DIR (the folder of its images)")
        images = src / "test2017"
    images = Path(images).expanduser()
    if not images.is_dir():
        raise UserError(
            f"{images}: no such folder — extract test2017.zip there, or give the folder with --image-info-images"
        )
    splits: list[Split] = []
    for f in files:
        f = Path(f).expanduser()
        if not f.is_file():
            raise UserError(
                f"--image-info {f}: no such file — give a COCO image-info JSON (image_info_test-dev2017.json)"
            )
        name = image_info_split(f)
        if name in taken or name in [s.name for s in splits]:
            raise UserError(f"--image-info {f} would be split {name!r}, which another file already gives")
        splits.append(Split(name, f.resolve(), images.resolve(), unlabelled=True))
    return splits


def prepare_coco(
    src: str | Path | None,
    out: str | Path,
    *,
    workers: int | None = None,
    strict: bool = False,
    force: bool = False,
    train_json: str | Path | None = None,
    train_images: str | Path | None = None,
    val_json: str | Path | None = None,
    val_images: str | Path | None = None,
    quiet: bool = False,
    image_info: Sequence[str | Path] | None = None,
    image_info_images: str | Path | None = None,
) -> dict:
    """Write the prepared dataset (module docstring) to `out`; returns run_prepare's summary.

    Either `src`, a COCO 2017 root (dataset name "coco"), or `train_json` + `train_images` [+ `val_json` +
    `val_images`], any COCO-format files (dataset name "custom"; "source" is the deepest folder holding
    both image folders). The categories (id + name) must be the same in every split. `image_info`: COCO
    image-info files, each an unlabelled split (module docstring) whose images are in `image_info_images`
    (default SRC/test2017)."""
    custom = any(v is not None for v in (train_json, train_images, val_json, val_images))
    if custom and src is not None:
        raise UserError("give either a COCO 2017 root or --train-json/--train-images, not both")
    if custom:
        splits = custom_splits(
            *(Path(v) if v is not None else None for v in (train_json, train_images, val_json, val_images))
        )
        if image_info:
            splits += image_info_splits(list(map(Path, image_info)), image_info_images, None, [s.name for s in splits])
        source = Path(os.path.commonpath([str(s.images) for s in splits]))
    else:
        if src is None:
            raise UserError("give the COCO 2017 root, or your own files with --train-json FILE --train-images DIR")
        src = Path(src).expanduser()
        if not src.is_dir():
            raise UserError(f"{src}: no such folder — give the COCO root holding annotations/ and train2017/, val2017/")
        source = src.resolve()
        splits = coco2017_splits(source, image_info=bool(image_info))
        if image_info:
            infos = image_info_splits(list(map(Path, image_info)), image_info_images, source, [s.name for s in splits])
            if any(source not in [s.images, *s.images.parents] for s in infos):
                raise UserError(
                    f"--image-info-images must lie inside the COCO root {source} (file names are relative to it)"
                )
            splits += infos

    jobs: list[ImageJob] = []
    skipped: list[ImageResult] = []
    categories: list[tuple[int, str]] | None = None
    for split in splits:
        data = load_image_info(split.json) if split.unlabelled else load_instances(split.json)
        cats, problems = coco_categories(data, split.json)
        if categories is None:
            categories = cats
        elif cats != categories:
            raise UserError(
                f"{split.json} has other categories than {splits[0].json} ({len(cats)} vs {len(categories)}, "
                "or other ids or names) — every split must use the same categories"
            )
        skipped += [ImageResult(split.name, f"{split.json.name}: category", "", skipped=why) for why in problems]
        skipped_cats = {c.get("id") for c in data["categories"] if isinstance(c, dict) and category_problem(c)}
        cat_map = {cid: i + 1 for i, (cid, _) in enumerate(cats)}
        split_jobs, split_skipped = coco_jobs(split, data, cat_map, skipped_cats, source, split.json)
        if split.unlabelled:
            for j in split_jobs:
                j.payload.update(unlabelled=True, extra={"coco_id": j.payload["coco_id"]})
        jobs += split_jobs
        skipped += split_skipped
        del data  # the train file is large; keep only what the jobs carry

    if categories is None:
        raise UserError("no split to prepare: give the COCO root or --train-json/--train-images")
    refuse_out_inside(out, [source] + [s.json.parent for s in splits if custom])
    out = check_out_dir(out, force)
    names = [n for _, n in categories]
    meta = DatasetMeta(
        name="custom" if custom else "coco",
        source=str(source),
        splits=[s.name for s in splits],
        det_classes=names,
        seg_classes=["background", *names],
        palette=voc_colormap(len(names) + 1),
        det_category_ids=[cid for cid, _ in categories],
        unlabelled=[s.name for s in splits if s.unlabelled],
    )
    return run_prepare(
        out, meta, jobs, prepare_coco_image, workers=workers, strict=strict, pre_skipped=skipped, quiet=quiet
    )
