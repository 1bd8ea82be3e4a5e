"""PASCAL VOC 2007/2012 (+ SBD) -> the prepared format (DESIGN.md §3), with the papers' splits.

Source layouts (each option accepts the year folder or the `VOCdevkit` that holds it; `--sbd` accepts
`benchmark_RELEASE/dataset` or `benchmark_RELEASE`):

    VOCdevkit/VOC2012/{JPEGImages, Annotations, SegmentationClass,
                       ImageSets/Main/trainval.txt, ImageSets/Segmentation/{train,val}.txt}
    VOCdevkit/VOC2007/{JPEGImages, Annotations, ImageSets/Main/{trainval,test}.txt}
    benchmark_RELEASE/dataset/{img, cls/<name>.mat, train.txt, val.txt}

Splits written (dataset.json lists them in this order; test and val are the evaluation splits):
    trainval          VOC2007 trainval ∪ VOC2012 Main trainval (whichever years are given; 16,551 images
                      with both): DATNet / Mask R-CNN / Faster R-CNN on VOC (papers/datnet.txt §4.4),
                      evaluated on `test`. Boxes from the XMLs and no extra annotation: the semantic map
                      is painted from the same boxes (`paint_boxes`: larger boxes first, difficult ones
                      as ignore), as the DT bins and the boxes-as-masks are. It contains VOC2012 seg val,
                      so it must not be evaluated on `val` (the overlap report shows it; `mtl train`
                      refuses it).
    trainval07_aug12  (with --voc2007 and --sbd) VOC2007 trainval ∪ VOC2012 train_aug (15,593 images
                      with the full sets): IvaNet / BlitzNet (papers/ivanet.txt §4.2), evaluated on
                      `test` (detection) and `val` (segmentation). Boxes from the XMLs; the pixel labels
                      of train_aug; VOC2007 images have none (all-ignore).
    train             VOC2012 seg train (1464 images), boxes from the XMLs.
    train_aug         (with --sbd) (SBD train ∪ SBD val ∪ VOC2012 seg train) minus VOC2012 seg val
                      (10,582 images); label = VOC2012 SegmentationClass PNG where one exists, else SBD
                      `cls/<name>.mat`.
    test              (with --voc2007 holding ImageSets/Main/test.txt) VOC2007 test, boxes only.
    val               VOC2012 seg val (1449 images): labels and boxes from the XMLs.
    test2012          (where VOC2012 holds ImageSets/Main/test.txt or ImageSets/Segmentation/test.txt, as the
                      extracted VOC2012test.tar does) the VOC2012 test images, unlabelled (the evaluation
                      server keeps the labels): Main test ∪ Segmentation test, each image's `voc_sets` saying
                      which lists hold it ("main", "segmentation"); `mtl eval --submit` writes the server's
                      files for them.

No training split holds an image of an evaluation split it is meant for (trainval: test;
trainval07_aug12: test and val; train, train_aug: val). VOC2012 ships some VOC2007 images again under
`2007_<name>`: where such a file is byte-identical to VOC2007's `<name>`, or (a re-encoded copy) has
VOC2007's name mapping and the same pixel size, both count as one image (`same_as` in instances.json);
a copy that would put an evaluation image into a training split is kept out of it, and a training split
that lists both files keeps one (the one with pixel labels, else VOC2007's), each listed under "kept out
of training splits" in the summary. The summary says how many were matched by bytes and by name, and
warns when a VOC07 + VOC12 prepare removes none. The summary and
dataset.json report the images shared by every training and evaluation split (`mtlcli.data.overlap`).

Boxes: VOC XML coordinates are 1-based and inclusive, so the object covers 0-based pixel columns
xmin - 1 .. xmax - 1. We fill exactly those pixels (box_mask of [xmin - 1, ymin - 1, xmax, ymax], an
exclusive end), which gives the COCO bbox [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1].
Difficult objects get iscrowd = 1 and stay out of the distance-transform target.

`dataset.json` "source" is the common parent of the given folders' parents (for a single
`VOCdevkit/VOC2012` that is `VOCdevkit`), so file names read like `VOC2012/JPEGImages/2008_000001.jpg`.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mtlcli.data.cityscapes import DT_PALETTE, save_indexed_png  # one PNG writer for every reader
from mtlcli.data.prepared import (
    DatasetMeta,
    ImageJob,
    ImageResult,
    SkipImage,
    check_out_dir,
    dt_path,
    encode_instance,
    prepare_unlabelled_image,
    run_prepare,
    semantic_path,
)
from mtlcli.data.targets import IGNORE_INDEX, box_mask
from mtlcli.data.voc_copies import copy_counts, one_copy_each, report_copies, voc2007_copies
from mtlcli.errors import UserError

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
VOC_SEG_CLASSES = ["background", *VOC_CLASSES]


def voc_colormap(n: int = 256) -> list[list[int]]:
    """The standard PASCAL VOC colour map: entry i spreads the bits of i over R, G, B (high bits first).

    Entries are distinct for every i < 256, which also makes it a good deterministic palette for
    datasets with more classes (COCO)."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


VOC_PALETTE = voc_colormap(len(VOC_SEG_CLASSES))


# --------------------------------------------------------------------------- box targets


def pixel_box(box_xyxy: list[float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixels `targets.box_mask` fills for a box: (x0, y0, x1, y1) rounded and clipped, ends exclusive."""
    h, w = shape
    x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
    return max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)


def box_dt_bins(
    boxes: list[list[float]], shape: tuple[int, int], thresholds: tuple[float, ...] = (0.2, 0.4)
) -> np.ndarray:
    """`targets.dt_bins` of filled boxes [H, W] uint8, in closed form instead of one EDT per box.

    Inside an axis-aligned rectangle the nearest background pixel lies straight across one of its
    sides, so the Euclidean distance is min(x - x0 + 1, x1 - x, y - y0 + 1, y1 - y) over the sides that
    do not touch the image border (the border is not a boundary); a box covering the whole image is
    all ones. Same values as the EDT (integers, normalised per box by their maximum) at a fraction of
    the cost: VOC and MOT15 preparation spend most of their time here otherwise."""
    h, w = shape
    d = np.zeros(shape, dtype=np.float64)
    for box in boxes:
        x0, y0, x1, y1 = pixel_box(box, shape)
        if x1 <= x0 or y1 <= y0:
            continue
        far = float(h + w)  # larger than any distance inside the image: a side on the border never wins
        xs = np.arange(x0, x1, dtype=np.float64)
        ys = np.arange(y0, y1, dtype=np.float64)
        dx, dy = np.full_like(xs, far), np.full_like(ys, far)
        if x0 > 0:
            np.minimum(dx, xs - x0 + 1, out=dx)
        if x1 < w:
            np.minimum(dx, x1 - xs, out=dx)
        if y0 > 0:
            np.minimum(dy, ys - y0 + 1, out=dy)
        if y1 < h:
            np.minimum(dy, y1 - ys, out=dy)
        dist = np.minimum(dy[:, None], dx[None, :])
        if dist.max() >= far:  # every side on the border: the whole image is the instance
            dist = np.ones_like(dist)
        else:
            dist /= dist.max()
        np.maximum(d[y0:y1, x0:x1], dist, out=d[y0:y1, x0:x1])
    bins = np.zeros(shape, dtype=np.uint8)
    bins[d > 0] = 1
    for k, t in enumerate(thresholds, start=2):
        bins[d > t] = k
    return bins


def paint_boxes(
    objects: list[tuple[int, list[float], bool]], shape: tuple[int, int], *, difficult: int = IGNORE_INDEX
) -> np.ndarray:
    """A semantic map [H, W] uint8 painted from filled boxes: 0 = background, the box's class index
    (1..20) inside it, larger boxes first so that a smaller box lying on a larger one stays visible
    (DESIGN.md §3; papers/datnet.txt §4.4 uses the boxes "rather than making use of extra annotation").

    objects: (class index 1..20, box [x0, y0, x1, y1] as `parse_voc_xml` gives, difficult). Inferred
    (the paper is silent): a difficult object is painted with `difficult` (default the ignore index
    255, as its box is left out of the detector's positives); the fill is the pixels `box_mask` fills."""
    sem = np.zeros(shape, dtype=np.uint8)
    boxes = [(pixel_box(box, shape), cls, diff) for cls, box, diff in objects]
    for (x0, y0, x1, y1), cls, diff in sorted(
        boxes, key=lambda b: -max(b[0][2] - b[0][0], 0) * max(b[0][3] - b[0][1], 0)
    ):
        if x1 > x0 and y1 > y0:
            sem[y0:y1, x0:x1] = difficult if diff else cls
    return sem


# --------------------------------------------------------------------------- reading one image


def read_image_size(path: str | Path, verify: bool = False) -> tuple[int, int]:
    """(H, W) of an image file as mtl reads it (`mtlcli.data.images.image_size`: upright after its EXIF
    orientation; more pixels than a decompression-bomb limit are skipped) whose header parses and whose
    stream ends as it should (a truncated file is skipped); `verify` decodes it fully as well
    (`mtlcli.data.integrity.check_image`)."""
    from mtlcli.data.images import ImageError, image_size
    from mtlcli.data.integrity import check_image

    if not os.path.isfile(path):
        raise SkipImage(f"image file {path} is missing")
    try:
        check_image(path, verify)
        return image_size(path)
    except ImageError as exc:
        raise SkipImage(str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise SkipImage(f"corrupt image {path} ({exc})") from None


def parse_voc_xml(path: str | Path) -> list[tuple[str, list[float], bool]]:
    """Objects of a VOC XML file as (class name, box, difficult).

    The box is [x0, y0, x1, y1] in 0-based pixel-edge coordinates of the image: x0 = xmin - 1,
    x1 = xmax (so the object covers columns x0 .. x1 - 1, i.e. xmax - xmin + 1 pixels)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise SkipImage(f"unreadable XML {path} ({exc})") from None
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in VOC_CLASSES:
            raise SkipImage(f"{path}: unknown class {name!r} (VOC has {', '.join(VOC_CLASSES)})")
        bnd = obj.find("bndbox")  # direct child only: <part> elements carry their own boxes
        try:
            # no <bndbox> (None.findtext: AttributeError) or a missing/bad number (TypeError/ValueError)
            xmin, ymin, xmax, ymax = (float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, ValueError):
            raise SkipImage(f"{path}: object {name!r} has no valid <bndbox>") from None
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
        objects.append((name, [xmin - 1, ymin - 1, xmax, ymax], difficult))
    return objects


def box_problem(box: list[float], shape: tuple[int, int]) -> str | None:
    """Why a box [x0, y0, x1, y1] (`parse_voc_xml`'s frame, 1-based XML values in the message) cannot be an
    object, or None: a coordinate that is not finite, or an inverted box (xmin > xmax, ymin > ymax)."""
    if not all(math.isfinite(v) for v in box):
        return f"its box {[v for v in box]} has a coordinate that is not a finite number"
    x0, y0, x1, y1 = box
    if x0 + 1 > x1:
        return f"its box is inverted (xmin {x0 + 1:g} > xmax {x1:g})"
    if y0 + 1 > y1:
        return f"its box is inverted (ymin {y0 + 1:g} > ymax {y1:g})"
    return None


def read_voc_label_png(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A VOC SegmentationClass PNG (palette indices 0..20, 255 = boundary/ignore) as uint8 [H, W]."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise SkipImage(f"{path} is a {img.mode} PNG; VOC labels are palette (class index) PNGs")
            label = np.array(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise SkipImage(f"unreadable label PNG {path} ({exc})") from None
    return _check_label(label, shape, path)


def read_sbd_mat(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """SBD `cls/<name>.mat` -> uint8 [H, W] class indices 0..20 from the struct `GTcls.Segmentation`."""
    from scipy.io import loadmat

    try:
        seg = loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
        label = np.asarray(seg)
    except Exception as exc:  # scipy raises MatReadError/ValueError/TypeError/KeyError/AttributeError
        raise SkipImage(
            f"unreadable .mat {path} ({type(exc).__name__}: {exc}); expected a struct GTcls with field Segmentation"
        ) from None
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise SkipImage(f"{path}: GTcls.Segmentation is not a 2-D integer array")
    return _check_label(label, shape, path)


def _check_label(label: np.ndarray, shape: tuple[int, int], path: str | Path) -> np.ndarray:
    if label.shape != tuple(shape):
        raise SkipImage(f"{path}: label is {label.shape[0]}x{label.shape[1]} but the image is {shape[0]}x{shape[1]}")
    bad = ((label > len(VOC_CLASSES)) & (label != IGNORE_INDEX)) | (label < 0)
    if bad.any():
        raise SkipImage(f"{path}: label value {int(label[bad][0])} is not a VOC class index (0..20, 255 = ignore)")
    return label.astype(np.uint8)


def prepare_voc_image(job: ImageJob, out: Path) -> ImageResult:
    """Per-image work (runs in a worker): boxes from the XML, semantic map from the PNG or .mat, DT bins.

    payload: image (absolute path), xml (path or None), png / mat (label path or None),
    need_boxes (detection split: an image without XML is skipped), need_seg (segmentation split:
    an image without a label is skipped), boxes_semantic (the semantic map is painted from the boxes,
    `paint_boxes`), same_as (the file this image is a byte-identical copy of, kept in instances.json)."""
    p = job.payload
    if p.get("unlabelled"):
        return prepare_unlabelled_image(job, out)
    h, w = read_image_size(p["image"], p.get("verify", False))
    annotations: list[dict[str, Any]] = []
    dt_boxes = []
    objects = []
    dropped: list[tuple[str, str]] = []
    if p.get("xml"):
        for k, (name, box, difficult) in enumerate(parse_voc_xml(p["xml"])):
            why = box_problem(box, (h, w))
            mask = box_mask(box, (h, w)) if why is None else np.zeros((h, w), bool)
            if why is None and not mask.any():
                why = f"its box lies outside the {w}x{h} image"
            if why is not None:  # nothing to learn from: left out, and named in the summary
                dropped.append((f"{Path(p['xml']).name} object {k} ({name})", f"{why}: object left out"))
                continue
            annotations.append(encode_instance(mask, VOC_CLASSES.index(name) + 1, int(difficult)))
            objects.append((VOC_CLASSES.index(name) + 1, box, difficult))
            if not difficult:
                dt_boxes.append(box)
    elif p.get("need_boxes"):
        raise SkipImage("no ground truth: Annotations/<name>.xml is missing")

    label = None
    if p.get("boxes_semantic"):
        label = paint_boxes(objects, (h, w))
    elif p.get("png"):
        label = read_voc_label_png(p["png"], (h, w))
    elif p.get("mat"):
        label = read_sbd_mat(p["mat"], (h, w))
    elif p.get("need_seg"):
        raise SkipImage("no ground truth: neither SegmentationClass/<name>.png nor SBD cls/<name>.mat exists")
    if label is not None:
        save_indexed_png(semantic_path(out, job.split, job.stem), label, VOC_PALETTE)
    save_indexed_png(dt_path(out, job.split, job.stem), box_dt_bins(dt_boxes, (h, w)), DT_PALETTE)
    extra = {"same_as": p["same_as"]} if p.get("same_as") else {}
    return ImageResult(
        job.split, job.file_name, job.stem, height=h, width=w, annotations=annotations, extra=extra, dropped=dropped
    )


# --------------------------------------------------------------------------- source layout


def find_voc_year(path: str | Path, year: str, option: str) -> Path:
    """The `VOC<year>` folder given either itself or the `VOCdevkit` holding it; UserError otherwise."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(
            f"{option} {path}: no such folder — give the VOCdevkit/VOC{year} folder of the extracted VOC{year} tarball"
        )
    for cand in (path, path / f"VOC{year}"):
        if all((cand / d).is_dir() for d in ("JPEGImages", "Annotations", "ImageSets")):
            return cand.resolve()
    raise UserError(
        f"{option} {path} is not a VOC{year} folder (expected JPEGImages/, Annotations/ and ImageSets/ "
        f"in it or in its VOC{year}/) — give the VOCdevkit/VOC{year} folder"
    )


def find_sbd(path: str | Path) -> Path:
    """SBD's `dataset` folder, given itself or `benchmark_RELEASE`; UserError otherwise."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"--sbd {path}: no such folder — give benchmark_RELEASE/dataset of the extracted SBD tarball")
    for cand in (path, path / "dataset"):
        if (cand / "cls").is_dir() and (cand / "train.txt").is_file() and (cand / "val.txt").is_file():
            return cand.resolve()
    raise UserError(
        f"--sbd {path} is not an SBD folder (expected cls/, train.txt and val.txt in it or in its dataset/) "
        f"— give benchmark_RELEASE/dataset"
    )


def read_list(path: Path, option: str) -> list[str]:
    """Image names of an ImageSets-style list (first token per line)."""
    if not path.is_file():
        raise UserError(f"{path} is missing — {option} must hold the complete {path.parent.name} image lists")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _listing(folder: Path, suffix: str) -> set[str]:
    """Stems of the files with `suffix` in folder (one listdir instead of thousands of stat calls)."""
    if not folder.is_dir():
        return set()
    return {n[: -len(suffix)] for n in os.listdir(folder) if n.endswith(suffix)}


def refuse_out_inside(out: str | Path, sources: list[Path]) -> None:
    """--out must lie outside every source folder: the source is never written."""
    o = Path(out).expanduser().resolve()
    for src in sources:
        if o == src or src in o.parents:
            raise UserError(
                f"--out {o} lies inside the source {src}; choose a folder outside it (the source is never written)"
            )


# Evaluation splits each training split is meant for: a copy of one of their images is kept out of it.
EVALUATED_ON = {"trainval": ("test",), "trainval07_aug12": ("test", "val"), "train": ("val",), "train_aug": ("val",)}


def prepare_voc(
    out: str | Path,
    *,
    voc2012: str | Path,
    voc2007: str | Path | None = None,
    sbd: str | Path | None = None,
    workers: int | None = None,
    strict: bool = False,
    force: bool = False,
    verify: bool = False,
) -> dict:
    """Write the prepared VOC dataset (splits in the module docstring) to `out`; returns run_prepare's summary.
    `verify`: decode every image fully (default: header and end-of-stream checks only)."""
    v12 = find_voc_year(voc2012, "2012", "--voc2012")
    v07 = find_voc_year(voc2007, "2007", "--voc2007") if voc2007 is not None else None
    sb = find_sbd(sbd) if sbd is not None else None
    roots = [r for r in (v12, v07, sb) if r is not None]
    source = Path(os.path.commonpath([str(r.parent) for r in roots]))

    seg_train = read_list(v12 / "ImageSets" / "Segmentation" / "train.txt", "--voc2012")
    seg_val = read_list(v12 / "ImageSets" / "Segmentation" / "val.txt", "--voc2012")
    main07 = read_list(v07 / "ImageSets" / "Main" / "trainval.txt", "--voc2007") if v07 else []
    main12 = read_list(v12 / "ImageSets" / "Main" / "trainval.txt", "--voc2012")
    test_list = v07 / "ImageSets" / "Main" / "test.txt" if v07 else None
    test07 = read_list(test_list, "--voc2007") if test_list is not None and test_list.is_file() else None
    test12 = voc2012_test(v12)

    # one listing per folder; the per-image function re-checks existence where it matters
    jpgs = {v: _listing(v / "JPEGImages", ".jpg") for v in roots if v is not sb}
    xmls = {v: _listing(v / "Annotations", ".xml") for v in roots if v is not sb}
    pngs = _listing(v12 / "SegmentationClass", ".png")
    mats = _listing(sb / "cls", ".mat") if sb else set()
    sbd_imgs = _listing(sb / "img", ".jpg") if sb else set()

    seg_val_set = set(seg_val)
    if sb:
        train_aug = sorted(
            (set(read_list(sb / "train.txt", "--sbd")) | set(read_list(sb / "val.txt", "--sbd")) | set(seg_train))
            - seg_val_set
        )
    else:
        train_aug = []

    def rel(p: Path) -> str:
        return p.relative_to(source).as_posix()

    def label_of(name: str) -> dict[str, Any]:
        if name in pngs:
            return {"png": str(v12 / "SegmentationClass" / f"{name}.png")}
        if name in mats and sb is not None:  # (mats is empty without SBD)
            return {"mat": str(sb / "cls" / f"{name}.mat")}
        return {}

    def image_of(year_dir: Path, name: str) -> Path:
        if year_dir == v12 and name not in jpgs[v12] and name in sbd_imgs and sb is not None:  # only in SBD
            return sb / "img" / f"{name}.jpg"
        return year_dir / "JPEGImages" / f"{name}.jpg"

    names12 = set(main12) | set(seg_train) | set(seg_val) | set(train_aug)
    copies = voc2007_copies(v12, v07, names12, lambda n: image_of(v12, n)) if v07 else {}

    def identity(year_dir: Path, name: str) -> str:
        """The image's source file, or the VOC2007 file a VOC2012 `2007_*` image is a copy of."""
        return rel(copies[name][0]) if year_dir == v12 and name in copies else rel(image_of(year_dir, name))

    def job(split: str, year_dir: Path, name: str, **payload: Any) -> ImageJob:
        image = image_of(year_dir, name)
        xml = year_dir / "Annotations" / f"{name}.xml" if name in xmls[year_dir] else None
        if year_dir == v12 and name in copies:
            payload["same_as"] = rel(copies[name][0])
        return ImageJob(split, rel(image), name, {"image": str(image), "xml": str(xml) if xml else None, **payload})

    # split -> [(year folder, image name, payload)], in the order of dataset.json's "splits"
    members: dict[str, list[tuple[Path, str, dict[str, Any]]]] = {}
    det = {"need_boxes": True}
    members["trainval"] = [
        (v, n, {**det, "boxes_semantic": True}) for v, names in ((v07, main07), (v12, main12)) if v for n in names
    ]
    if test07 is not None and v07 is not None:  # (test07 comes from VOC2007)
        members["test"] = [(v07, n, det) for n in test07]
    members["train"] = [(v12, n, {"need_seg": True, **label_of(n)}) for n in seg_train]
    members["val"] = [(v12, n, {"need_seg": True, **label_of(n)}) for n in seg_val]
    if sb:
        members["train_aug"] = [(v12, n, {"need_seg": True, **label_of(n)}) for n in train_aug]
        if v07:
            members["trainval07_aug12"] = [(v07, n, det) for n in main07] + [
                (v12, n, {**det, "need_seg": True, **label_of(n)}) for n in train_aug
            ]

    if test12:
        members["test2012"] = [
            (v12, n, {"unlabelled": True, "extra": {"voc_sets": sets}}) for n, sets in test12.items()
        ]

    jobs: list[ImageJob] = []
    pre_skipped: list[ImageResult] = []
    excluded: list[dict[str, str]] = []
    for split, entries in members.items():
        held_out = {
            identity(v, n): (ev, rel(image_of(v, n)))
            for ev in EVALUATED_ON.get(split, ())
            for v, n, _ in members.get(ev, [])
        }
        seen: dict[str, str] = {}
        keeper = one_copy_each([e for e in entries if identity(e[0], e[1]) not in held_out], identity)
        for year_dir, name, payload in entries:
            j = job(split, year_dir, name, **payload)
            if name in seen:  # VOC2007 and VOC2012 names never collide; a hand-made copy might
                pre_skipped.append(
                    ImageResult(
                        split, j.file_name, name, skipped=f"duplicate image name (already taken from {seen[name]})"
                    )
                )
                continue
            hit = held_out.get(identity(year_dir, name))
            if hit is not None:
                excluded.append(
                    {
                        "split": split,
                        "file": j.file_name,
                        "reason": f"same image as {hit[1]} of the evaluation split {hit[0]}",
                    }
                )
                continue
            kept = keeper[identity(year_dir, name)]
            if kept[:2] != (year_dir, name):  # a VOC07 image and its VOC12 `2007_*` copy: train on it once
                excluded.append(
                    {
                        "split": split,
                        "file": j.file_name,
                        "reason": f"same image as {rel(image_of(kept[0], kept[1]))}, kept once in this split",
                    }
                )
                continue
            seen[name] = j.file_name
            jobs.append(j)

    refuse_out_inside(out, roots)
    out = check_out_dir(out, force)
    meta = DatasetMeta(
        name="voc",
        source=str(source),
        splits=list(members),
        det_classes=list(VOC_CLASSES),
        seg_classes=list(VOC_SEG_CLASSES),
        palette=VOC_PALETTE,
        unlabelled=["test2012"] if test12 else [],
    )
    from mtlcli.data.integrity import mark_verify

    mark_verify(jobs, verify)
    summary = run_prepare(
        out,
        meta,
        jobs,
        prepare_voc_image,
        workers=workers,
        strict=strict,
        pre_skipped=pre_skipped,
        eval_splits=[s for s in ("test", "val", "test2012") if s in members],
        excluded=excluded,
    )
    if v07:
        summary["voc2007_copies"] = {**copy_counts(copies, names12), "removed": len(excluded)}
        report_copies(summary["voc2007_copies"])
    return summary


def voc2012_test(v12: Path) -> dict[str, list[str]]:
    """The VOC2012 test images (ImageSets/Main/test.txt, then Segmentation/test.txt) -> the lists holding
    each ("main", "segmentation"); empty where VOC2012test.tar was not extracted into the folder."""
    sets: dict[str, list[str]] = {}
    for task, folder in (("main", "Main"), ("segmentation", "Segmentation")):
        path = v12 / "ImageSets" / folder / "test.txt"
        if path.is_file():
            for name in read_list(path, "--voc2012"):
                sets.setdefault(name, []).append(task)
    return sets
