"""Cityscapes -> the prepared format (`mtl prepare cityscapes SRC --out DATA`, DESIGN.md §3).

Reads the official layout

    SRC/leftImg8bit/<split>/<city>/<prefix>_leftImg8bit.png
    SRC/gtFine/<split>/<city>/<prefix>_gtFine_polygons.json       polygons (the official PNGs are drawn from them)
    SRC/gtFine/<split>/<city>/<prefix>_gtFine_labelIds.png        uint8 labelIds          } used where the
    SRC/gtFine/<split>/<city>/<prefix>_gtFine_instanceIds.png     uint16 labelId*1000+k   } JSON is absent

and writes, per image, the 19-class trainId map, the distance-transform bins and COCO annotations
(RLE masks, tight boxes; group regions such as "cargroup" are iscrowd = 1). Where the JSON exists it
is the source: one pass over its objects draws, with Pillow as json2labelImg / json2instanceImg draw
them, an 8-bit trainId map and an 8-bit map of which instance object is on top (tests check both
against the official PNGs); drawing is several times cheaper than decoding the 16-bit instanceIds PNG.
Work per instance is confined to the instance's region (RLE, exact distance transform), so an image
costs two 8-bit rasterisations, the per-instance distance transforms and two PNG writes (measured
split: `benchmarks/bench_prepare.py`). Nothing under SRC is written.

The `test` split (leftImg8bit/test: the images of the Cityscapes server, whose gtFine/test files are
placeholders without usable labels) is prepared unlabelled: its images are listed (with their city) and
no ground truth is read; dataset.json names it under "unlabelled". It is prepared by default where
leftImg8bit/test exists.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mtlcli.data.prepared import (
    IGNORE_INDEX,
    DatasetMeta,
    ImageJob,
    ImageResult,
    SkipImage,
    check_out_dir,
    dt_path,
    prepare_unlabelled_image,
    read_label_png,
    run_prepare,
    semantic_path,
)
from mtlcli.data.targets import CITYSCAPES_DET_CLASSES, cityscapes_tables, train_ids_from_label_ids
from mtlcli.errors import UserError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
POLYGON_SUFFIX = "_gtFine_polygons.json"
DEFAULT_SPLITS = ("train", "val", "test")
UNLABELLED_SPLITS = ("test",)  # the server's images: gtFine/test holds no usable labels
DT_THRESHOLDS = (0.2, 0.4)
DT_PALETTE = [[0, 0, 0], [64, 64, 64], [150, 150, 150], [255, 255, 255]]
# bins 0..len(DT_THRESHOLDS) + 1 fit a 2-bit PNG: half the write time of an 8-bit one, same values read back
DT_BITS = next(b for b in (1, 2, 4, 8) if len(DT_THRESHOLDS) + 1 < 1 << b)
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


def _read_polygons(path: Path) -> dict[str, Any]:
    try:
        annotation = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SkipImage(f"{path.name} is not valid JSON ({exc})") from None
    if not isinstance(annotation, dict) or not {"imgHeight", "imgWidth", "objects"} <= annotation.keys():
        raise SkipImage(f"{path.name} lacks imgHeight/imgWidth/objects — not a Cityscapes polygon file")
    if not isinstance(annotation["objects"], list) or not all(isinstance(obj, dict) for obj in annotation["objects"]):
        raise SkipImage(
            f'{path.name}: \'objects\' must be a list of {{"label": ..., "polygon": [[x, y], ...]}} objects'
        )
    bad = unknown_labels(annotation)
    if bad:
        raise SkipImage(
            f"{path.name}: label {bad[0]!r} is not in the Cityscapes label table "
            "(cityscapesscripts.helpers.labels); fix or delete that object"
        )
    return annotation


def drop_bad_polygons(annotation: dict[str, Any]) -> list[tuple[str, str]]:
    """Remove from `annotation["objects"]` every object whose polygon has a coordinate that is a number but
    not finite (NaN, as Python's json writes it, or infinity: drawn anywhere); returns (what, why) for each,
    to be named in the prepare summary (`ImageResult.dropped`). A vertex that is no pair of numbers at all
    leaves the file malformed (the image is skipped with that reason)."""
    kept, dropped = [], []
    for k, obj in enumerate(annotation["objects"]):
        polygon = obj.get("polygon")
        bad = None
        for i, p in enumerate(polygon if isinstance(polygon, list) else []):
            values = p if isinstance(p, (list, tuple)) else []
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                bad = f"polygon vertex {i} is ({', '.join(map(str, values))}), not two finite numbers"
                break
        if bad is None:
            kept.append(obj)
        elif not obj.get("deleted"):
            dropped.append((f"object {k} ({obj.get('label')})", f"{bad}: object left out"))
    annotation["objects"] = kept
    return dropped


@lru_cache(maxsize=1)
def _keep_freed_memory() -> None:
    """Let this process reuse freed image-sized buffers instead of handing them back to the kernel.

    Every image allocates and frees the same few 1-16 MB arrays (label maps, crops, feature
    transforms). glibc serves blocks that large with mmap, or trims them off the heap, so each image
    touches fresh pages, and a first touch costs a page fault: ~10 µs per 4 KiB page in the VM we
    measured, where this saved 10-20% of the CPU time per 1024x2048 image. These are the
    thresholds glibc adopts by itself once it has freed a 32 MB block; setting them only skips its
    warm-up and stops it from falling back. A no-op outside glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's ceiling for its dynamic threshold on 64-bit
    mallopt(m_trim_threshold, 64 << 20)  # twice that, as glibc sets it


@lru_cache(maxsize=1)
def _instance_tables() -> tuple[np.ndarray, np.ndarray]:
    """LUTs over every uint16 instanceIds value: (trainId uint8, det category uint8 with 0 = none).

    An instanceIds pixel holds labelId * 1000 + k for an instance and the plain labelId elsewhere
    (groups included): json2instanceImg and json2labelImg draw the same polygons in the same order,
    so the class part of instanceIds is exactly labelIds."""
    _, _, lut, det = cityscapes_tables()
    values = np.arange(65536)
    label = np.where(values >= 1000, values // 1000, values)
    valid = label < 256
    train = np.where(valid, lut[np.where(valid, label, 0)], IGNORE_INDEX).astype(np.uint8)
    category = np.zeros(65536, dtype=np.uint8)
    for label_id, cat in det.items():
        category[label == label_id] = cat
    return train, category


Region = tuple[slice, slice]


def _grown(y0: float, y1: float, x0: float, x1: float, shape: tuple[int, int]) -> Region:
    """Rows y0..y1 and columns x0..x1 (inclusive, possibly fractional) grown by one pixel, clipped."""
    h, w = shape
    return (
        slice(max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 2, h)),
        slice(max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 2, w)),
    )


def _draw_polygons(annotation: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, Region, list[int]]]]:
    """Rasterise a polygon annotation as json2labelImg / json2instanceImg do, in one pass over the objects.

    Returns (trainIds uint8 [H, W] (255 = ignore), object map [H, W] (uint8, or int32 past 255 objects),
    objects): the object map holds k >= 1 where the k-th object of an instance class (det classes,
    groups included) is on top and 0 elsewhere; objects lists (instanceIds value, region, [k, ...]) in
    increasing value, value numbered exactly as json2instanceImg numbers it, region the polygons' extent
    grown by one pixel. Both maps are 8-bit draws where possible: Pillow fills an 8-bit image with
    memset, a 32-bit one pixel by pixel, and the same polygon covers the same pixels in either mode."""
    from cityscapesscripts.helpers.labels import name2label

    train_lut, category = _instance_tables()
    h, w = int(annotation["imgHeight"]), int(annotation["imgWidth"])
    todo = []  # (polygon, trainId, instanceIds value)
    counters: dict[str, int] = {}
    for obj in annotation["objects"]:
        if obj.get("deleted"):
            continue
        name = str(obj["label"])
        group = name not in name2label and name.endswith("group")
        label = name2label[name[: -len("group")] if group else name]
        value = label.id
        if label.hasInstances and not group:
            value = label.id * 1000 + counters.get(label.name, 0)
            counters[label.name] = counters.get(label.name, 0) + 1
        if value < 0:  # e.g. license plate: never drawn
            continue
        todo.append(([(p[0], p[1]) for p in obj["polygon"]], int(train_lut[value]), value))
    n_objects = sum(1 for _, _, v in todo if category[v])
    semantic = Image.new("L", (w, h), IGNORE_INDEX)
    objects_img = Image.new("L" if n_objects < 256 else "I", (w, h), 0)
    draw_semantic, draw_objects = ImageDraw.Draw(semantic), ImageDraw.Draw(objects_img)
    extents: dict[int, tuple[float, float, float, float]] = {}
    members: dict[int, list[int]] = {}
    k = 0
    for polygon, train_id, value in todo:
        draw_semantic.polygon(polygon, fill=train_id)
        if category[value]:
            k += 1
            draw_objects.polygon(polygon, fill=k)
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            old = extents.setdefault(value, (min(ys), max(ys), min(xs), max(xs)))
            extents[value] = (min(old[0], min(ys)), max(old[1], max(ys)), min(old[2], min(xs)), max(old[3], max(xs)))
            members.setdefault(value, []).append(k)
        else:
            draw_objects.polygon(polygon, fill=0)  # hides the instances drawn before it
    objects = []
    for value in sorted(extents):
        region = _grown(*extents[value], (h, w))
        if region[0].start < region[0].stop and region[1].start < region[1].stop:
            objects.append((value, region, members[value]))
    return np.asarray(semantic), np.asarray(objects_img), objects


def _png_objects(instance_ids: np.ndarray) -> list[tuple[int, Region, list[int]]]:
    """(value, region grown by one pixel, [value]) of every instance-class value of an instanceIds map."""
    category = _instance_tables()[1]
    found = ndimage.find_objects(instance_ids)
    return [
        (v, _grown(sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1, instance_ids.shape), [v])
        for v, sl in enumerate(found, start=1)
        if sl is not None and category[v]
    ]


def encode_crop(
    crop: np.ndarray, origin: tuple[int, int], shape: tuple[int, int], category_id: int, iscrowd: int
) -> dict[str, Any]:
    """`encode_instance` for a mask known to lie inside a crop: the same COCO annotation (RLE over the
    full [H, W] image, column-major; tight bbox; area) computed in time proportional to the crop.

    crop: bool [h, w] at pixel (y0, x0) = origin of an image of `shape` (H, W)."""
    from pycocotools import mask as mask_utils

    height, width = shape
    y0, x0 = origin
    h, w = crop.shape
    # runs in column-major order: walking the crop column by column with a zero above and below each
    # column, a run starts or ends wherever two consecutive entries differ
    padded = np.zeros((w, h + 2), dtype=bool)
    padded[:, 1:-1] = crop.T
    flat = padded.ravel()
    col, row = np.divmod(np.flatnonzero(flat[1:] != flat[:-1]), h + 2)
    edges = (x0 + col) * height + (y0 + row)  # pixel index in the image's column-major order, increasing
    # a run that ends at the bottom of a column and one that starts at the top of the next are one run
    if y0 == 0 and h == height:
        repeated = np.flatnonzero(edges[1:] == edges[:-1])
        edges = np.delete(edges, np.r_[repeated, repeated + 1])
    counts = np.diff(np.r_[0, edges, height * width]).tolist()
    if counts[-1] == 0 and len(counts) > 1:  # the mask reaches the last pixel: no trailing run of zeros
        counts.pop()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = float(mask_utils.area(rle))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"category_id": int(category_id), "bbox": bbox, "area": area, "iscrowd": int(iscrowd), "segmentation": rle}


def _first_above(m2: int, t: float) -> int:
    """The least squared distance d2 >= 1 whose normalised distance sqrt(d2) / sqrt(m2), computed in
    float64 exactly as `distance_transform_edt(...) / max` computes it, exceeds t (m2 + 1 if none).
    That float expression never decreases with d2, so one integer threshold reproduces it bit for bit."""
    root = np.sqrt(np.float64(m2))

    def above(d2: int) -> bool:
        return bool(np.sqrt(np.float64(d2)) / root > t)

    k = min(max(int(t * t * m2), 1), m2 + 1)
    while k > 1 and above(k - 1):
        k -= 1
    while k <= m2 and not above(k):
        k += 1
    return k


def _dt_bins_crop(crop: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Distance-transform bins uint8 [h, w] of one instance (bool crop [h, w], grown by one pixel
    around the mask; the image border is not a boundary): targets.dt_bins' rule, 0 off the mask,
    1 + the number of thresholds below distance / max distance on it; max over instances = bins of
    the max. Exact squared distances (int32, from scipy's feature transform, the same integers its
    float distances are the square roots of) compared with integer thresholds: no float arrays."""
    if crop.all():  # no background in reach: the distance is constant, 1 after normalisation
        return np.full(crop.shape, 1 + sum(1.0 > t for t in thresholds), dtype=np.uint8)
    nearest = ndimage.distance_transform_edt(crop, return_distances=False, return_indices=True)
    dy, dx = nearest  # row / column of each pixel's nearest background pixel
    dy -= np.arange(crop.shape[0], dtype=np.int32)[:, None]
    dx -= np.arange(crop.shape[1], dtype=np.int32)
    dy *= dy
    dx *= dx
    d2 = np.add(dy, dx, out=dy)
    m2 = int(d2.max())
    bins = np.greater(d2, 0).view(np.uint8)
    for t in thresholds:
        bins += d2 >= _first_above(m2, t)
    return bins


def save_indexed_png(path: Path, array: np.ndarray, palette: Sequence[Sequence[int]], bits: int = 8) -> None:
    """A uint8 label map as a palette PNG: the stored values are the class indices (numpy reads them
    back unchanged) and image viewers show the class colours. Palette PNGs are written without PNG's
    per-row filter search, about three times faster than greyscale for label maps.

    bits: 8, or 1 / 2 / 4 for a map whose values are all below 2**bits, packed that many to a bit
    depth (Pillow still reads uint8 values): zlib then has 8 / bits times fewer bytes to compress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits < 8 and array.max(initial=0) >= 1 << bits:
        raise ValueError(f"a {bits}-bit PNG holds values below {1 << bits}, the map has {array.max()}")
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    img.putpalette(table.ravel().tolist())  # "L" -> "P", same pixel values
    from mtlcli.safety import atomic_save_image

    # zlib Z_RLE: as fast, half the size on label maps; atomic: a killed prepare leaves no half PNG
    atomic_save_image(path, img, compress_level=1, compress_type=3, bits=bits)


def _read_pngs(root: Path, gt: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(trainIds uint8 [H, W], instanceIds [H, W]) from the official labelIds / instanceIds PNGs."""
    label_ids = read_label_png(root / gt["label_ids"])
    instance_ids = read_label_png(root / gt["instance_ids"])
    if label_ids.ndim != 2 or label_ids.dtype != np.uint8:
        raise SkipImage(f"{Path(gt['label_ids']).name} is not an 8-bit single-channel labelIds PNG")
    name = Path(gt["instance_ids"]).name
    if instance_ids.ndim != 2 or instance_ids.dtype.kind not in "ui":
        raise SkipImage(f"{name} is not a 16-bit single-channel instanceIds PNG")
    if instance_ids.dtype.itemsize < 2:
        # an 8-bit export cannot hold labelId * 1000 + k: every instance would be lost without a word
        raise SkipImage(
            f"{name} is an 8-bit PNG; Cityscapes instanceIds are 16-bit (labelId * 1000 + k) — "
            "export them as 16-bit PNGs (cityscapesscripts' csCreateInstanceImgs)"
        )
    if label_ids.shape != instance_ids.shape:
        raise SkipImage(
            f"labelIds is {label_ids.shape[0]}x{label_ids.shape[1]} but instanceIds is "
            f"{instance_ids.shape[0]}x{instance_ids.shape[1]}"
        )
    class_part = np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids)
    if instance_ids.min() < 0 or not np.array_equal(class_part, label_ids):
        bad = int(np.count_nonzero(class_part != label_ids))
        raise SkipImage(
            f"{name}: {bad} pixel value(s) cannot be instance ids of its labelIds (a pixel holds "
            "labelId * 1000 + k or the plain labelId) — export the instanceIds again"
        )
    return train_ids_from_label_ids(label_ids), instance_ids


def _image_size(path: Path, verify: bool = False) -> tuple[int, int]:
    """(width, height) of an image, from its header; a truncated file is an OSError.

    Only the header and the last bytes are read (`mtlcli.data.integrity.check_image`): a download or
    copy cut short lacks the closing IEND chunk. With `verify` (prepare --verify) the pixels are
    decoded too, which finds damage inside a complete file; without it such damage surfaces in
    training, where the file is named and skipped. The size is the one mtl reads
    (`mtlcli.data.images.image_size`: upright after EXIF orientation; a decompression bomb is an
    ImageError, a ValueError that skips the file with its reason)."""
    from mtlcli.data.images import image_size
    from mtlcli.data.integrity import check_image

    check_image(path, verify)
    h, w = image_size(path)
    return w, h


def prepare_image(job: ImageJob, out: Path) -> ImageResult:
    """Prepare one Cityscapes image: write semantic/<stem>.png (trainIds, 255 = ignore) and
    dt/<stem>.png (bins 0..3), and return its COCO annotations (RLE, tight xywh boxes, crowd flags).

    Ground truth: the polygon JSON when present, rasterised as the official scripts do (the official
    PNGs are made from it, and drawing them again is several times cheaper than decoding them), else
    `*_gtFine_labelIds.png` + `*_gtFine_instanceIds.png` (16-bit). Per-file problems raise SkipImage
    (or OSError from Pillow for a corrupt PNG)."""
    if job.payload.get("unlabelled"):
        return prepare_unlabelled_image(job, out)
    _keep_freed_memory()
    root = Path(job.payload["root"])
    width, height = _image_size(root / job.file_name, job.payload.get("verify", False))
    gt = job.payload["gt"]
    category = _instance_tables()[1]
    if "polygons" in gt:
        path = root / gt["polygons"]
        annotation = _read_polygons(path)
        dropped = drop_bad_polygons(annotation)
        try:
            semantic, object_map, objects = _draw_polygons(annotation)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SkipImage(f"{path.name}: malformed polygon ({type(exc).__name__}: {exc})") from None
    else:
        semantic, object_map = _read_pngs(root, gt)
        objects = _png_objects(object_map)
        dropped = []
    if semantic.shape != (height, width):
        raise SkipImage(f"ground truth is {semantic.shape[0]}x{semantic.shape[1]} but the image is {height}x{width}")

    annotations = []
    dt = np.zeros((height, width), dtype=np.uint8)
    for value, region, members in objects:
        crop = object_map[region] == members[0] if len(members) == 1 else np.isin(object_map[region], members)
        if not crop.any():  # drawn but entirely hidden behind later objects
            continue
        iscrowd = int(value < 1000)
        annotations.append(
            encode_crop(crop, (region[0].start, region[1].start), (height, width), category[value], iscrowd)
        )
        if not iscrowd:
            np.maximum(dt[region], _dt_bins_crop(crop, DT_THRESHOLDS), out=dt[region])
    save_indexed_png(semantic_path(out, job.split, job.stem), semantic, cityscapes_tables()[1])
    save_indexed_png(dt_path(out, job.split, job.stem), dt, DT_PALETTE, bits=DT_BITS)
    return ImageResult(
        job.split,
        job.file_name,
        job.stem,
        height,
        width,
        annotations,
        extra={"city": job.payload["city"]},
        dropped=[(f"{Path(gt['polygons']).name} {what}", why) for what, why in dropped],
    )


def find_images(src: Path, splits: Sequence[str] | None) -> tuple[list[str], list[ImageJob], list[ImageResult]]:
    """Scan SRC: (splits, jobs for images with ground truth, skipped results for the others).
    Layout problems (missing folders, no images at all) are UserErrors."""
    img_root, gt_root = src / "leftImg8bit", src / "gtFine"
    if not src.is_dir():
        raise UserError(f"{src}: no such folder — give the Cityscapes root that holds leftImg8bit/ and gtFine/")
    test_only = splits is not None and all(s in UNLABELLED_SPLITS for s in splits)  # gtFine is not read
    for folder in (img_root,) if test_only else (img_root, gt_root):
        if not folder.is_dir():
            found = ", ".join(sorted(p.name for p in src.iterdir() if p.is_dir())[:8]) or "nothing"
            raise UserError(
                f"{src} has no {folder.name}/ folder (found: {found}) — SRC must be the Cityscapes root "
                f"holding leftImg8bit/ and gtFine/ (layout {LAYOUT})"
            )
    if splits is None:
        splits = [s for s in DEFAULT_SPLITS if (img_root / s).is_dir()]
        if not splits:
            found = ", ".join(sorted(p.name for p in img_root.iterdir() if p.is_dir())) or "nothing"
            raise UserError(f"{img_root} has no train/ or val/ folder (found: {found}) — expected {LAYOUT}")
    for split in splits:
        if not (img_root / split).is_dir():
            raise UserError(f"{img_root / split} does not exist — choose --split among the folders in {img_root}")
        if not (gt_root / split).is_dir() and split not in UNLABELLED_SPLITS:
            raise UserError(f"{gt_root / split} does not exist: split {split!r} has images but no gtFine annotations")

    jobs, skipped = [], []
    for split in splits:
        for path in sorted((img_root / split).glob("*/*.png")):
            city = path.parent.name
            rel = path.relative_to(src).as_posix()
            stem = path.stem
            if not path.name.endswith(IMAGE_SUFFIX):
                skipped.append(
                    ImageResult(
                        split, rel, stem, skipped=f"not a Cityscapes image name (<city>_<seq>_<frame>{IMAGE_SUFFIX})"
                    )
                )
                continue
            if split in UNLABELLED_SPLITS:
                payload = {"image": str(path), "city": city, "unlabelled": True, "extra": {"city": city}}
                jobs.append(ImageJob(split, rel, stem, payload))
                continue
            prefix = path.name[: -len(IMAGE_SUFFIX)]
            gt_dir = gt_root / split / city
            gt = {}
            for key, suffix in (
                ("label_ids", LABEL_SUFFIX),
                ("instance_ids", INSTANCE_SUFFIX),
                ("polygons", POLYGON_SUFFIX),
            ):
                if (gt_dir / (prefix + suffix)).is_file():
                    gt[key] = (gt_dir / (prefix + suffix)).relative_to(src).as_posix()
            if not ("polygons" in gt or ("label_ids" in gt and "instance_ids" in gt)):
                have = ", ".join(Path(v).name for v in gt.values()) or "nothing"
                skipped.append(
                    ImageResult(
                        split,
                        rel,
                        stem,
                        skipped=f"no ground truth: expected {prefix}{POLYGON_SUFFIX} or "
                        f"{prefix}{LABEL_SUFFIX} + {prefix}{INSTANCE_SUFFIX} in {gt_dir} (found {have})",
                    )
                )
                continue
            jobs.append(ImageJob(split, rel, stem, {"root": str(src), "gt": gt, "city": city}))
    if not jobs and not skipped:
        raise UserError(f"no images under {img_root}/{{{','.join(splits)}}}/<city>/ — expected {LAYOUT}")
    return list(splits), jobs, skipped


def cityscapes_meta(source: Path, splits: list[str]) -> DatasetMeta:
    names, palette, _, _ = cityscapes_tables()
    return DatasetMeta(
        name="cityscapes",
        source=str(source),
        splits=splits,
        det_classes=list(CITYSCAPES_DET_CLASSES),
        seg_classes=names,
        palette=palette,
        unlabelled=[s for s in splits if s in UNLABELLED_SPLITS],
    )


def prepare_cityscapes(
    src: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    strict: bool = False,
    force: bool = False,
    splits: Sequence[str] | None = None,
    quiet: bool = False,
    verify: bool = False,
) -> dict[str, Any]:
    """Prepare a Cityscapes tree (or the synthetic city) into `out`; returns run_prepare's summary
    {"name", "splits": {split: {"images", "instances", "crowd", "skipped"}}, "skipped": [{"file", "reason"}]}.

    workers: processes (default: all cores). strict: stop with a UserError at the first problem file
    instead of skipping it. force: allow a non-empty `out`. splits: default train and val. verify: decode
    every image fully (default: header and end-of-stream checks only).
    """
    src = Path(src).expanduser().resolve()
    split_list, jobs, skipped = find_images(src, splits)
    if strict and skipped:
        first = skipped[0]
        raise UserError(
            f"{first.file_name}: {first.skipped} (--strict stops at the first problem; drop --strict to skip such "
            "files)"
        )
    out = check_out_dir(out, force, source=src)
    from mtlcli.data.integrity import mark_verify

    mark_verify(jobs, verify)
    summary = run_prepare(
        out,
        cityscapes_meta(src, split_list),
        jobs,
        prepare_image,
        workers=workers,
        strict=strict,
        pre_skipped=skipped,
        quiet=quiet,
    )
    if not any(s["images"] for s in summary["splits"].values()):
        raise UserError(
            f"none of the {len(summary['skipped'])} images could be prepared (reasons in the table above; "
            f"first: {summary['skipped'][0]['reason']}) — check {src}"
        )
    return summary
