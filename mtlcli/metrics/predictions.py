"""Saved predictions: reading and checking them, evaluating them, and writing them.

Formats (what `mtl eval --save-predictions DIR` writes and `mtl eval --predictions` reads):

    DIR/detections.json         COCO results [{image_id, category_id, bbox [x, y, w, h], score,
                                segmentation? (RLE)}] with the prepared split's image ids, ids 1..K; for
                                data prepared from COCO-format files, the source file's own image and
                                category ids (`source_id_maps`), ready for the COCO evaluation server
    DIR/semantic/<stem>.png     uint8 class indices of the dataset (255 = no prediction)
    DIR/labelIds/<stem>.png     Cityscapes labelIds (datasets whose classes are Cityscapes trainIds);
                                the official cityscapesscripts evaluation accepts this folder

`--predictions` may also name the JSON file itself, or a folder of `<stem>.png` files directly.
Boxes are in the original image's pixel frame; every problem is a UserError naming the file or id.
"""

from __future__ import annotations

import io
import json
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.data.prepared import (
    IGNORE_INDEX,
    DatasetMeta,
    image_stem,
    instances_path,
    output_path,
    save_png,
    semantic_path,
)
from mtlcli.errors import UserError
from mtlcli.metrics import DETECTION_METRICS, build_metric, check_metric_names


@dataclass
class GroundTruth:
    """A prepared split's ground truth for metrics: `meta`, `coco` (pycocotools COCO) and the root."""

    root: Path
    split: str
    meta: DatasetMeta
    coco: Any

    @classmethod
    def load(cls, root: str | Path, split: str) -> GroundTruth:
        import contextlib

        from pycocotools.coco import COCO

        root = Path(root)
        meta = DatasetMeta.load(root)
        meta.check_split(root, split)
        meta.check_labelled(root, split)
        path = instances_path(root, split)
        if not path.is_file():
            raise UserError(f"{path} is missing — prepare the dataset again with mtl prepare (`mtl prepare --help`)")
        coco = COCO()
        try:
            coco.dataset = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise UserError(f"{path} is not valid JSON ({exc}) — prepare the dataset again") from None
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return cls(root, split, meta, coco)

    def images(self) -> list[dict[str, Any]]:
        return [self.coco.imgs[i] for i in sorted(self.coco.imgs)]


def source_id_maps(
    meta: DatasetMeta, images: list[dict[str, Any]], identity_labels: bool = True
) -> tuple[dict[int, Any], dict[int, int]] | None:
    """(prepared image id -> the source's image id, contiguous category id -> the source's category id)
    for datasets prepared from COCO-format files (dataset.json `det_category_ids`, images' `coco_id`), so
    that saved results use the ids of the original annotation file; None for other datasets."""
    ids = list(getattr(meta, "det_category_ids", None) or [])
    if not identity_labels or len(ids) != len(meta.det_classes) or not images or "coco_id" not in images[0]:
        return None
    return {im["id"]: im["coco_id"] for im in images}, {k: int(c) for k, c in enumerate(ids, start=1)}


def read_png(path: Path) -> np.ndarray:
    """A label PNG as an array: grayscale files through torchvision's libpng decoder (several times
    faster than PIL on 2-megapixel maps), palette and other files through PIL (palette indices kept)."""
    data = path.read_bytes()
    try:
        # IHDR: bit depth at byte 24, colour type at byte 25 (0 = grayscale)
        if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[25] == 0 and data[24] in (8, 16):
            fast = _decode_gray_png(data)
            if fast is not None:
                return fast
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise UserError(f"{path} has {img.mode} pixels; write single-channel class indices (mode L or P)")
            return np.array(img)
    except UserError:
        raise
    except Exception as exc:  # a truncated or corrupt file from either decoder
        raise UserError(f"{path} is not a readable PNG ({exc}) — write it again") from None


def _decode_gray_png(data: bytes) -> np.ndarray | None:
    from mtlcli.data.integrity import png_chunks_intact

    if not png_chunks_intact(data):  # damaged: PIL raises where libpng would crash the process
        return None
    try:
        import warnings

        import torch
        from torchvision.io import ImageReadMode, decode_png
    except ImportError:  # torchvision without its image codecs
        return None
    # torchvision 0.29 deprecates its image codecs in favour of torchcodec; libpng is still the fastest
    # PNG reader we have, and PIL is the fallback once it is gone
    warnings.filterwarnings(
        "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
    )
    return decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)[0].numpy()


# ----------------------------------------------------------------------------------------- detections
def read_results(path: Path) -> list[dict[str, Any]]:
    """The COCO results list of a JSON file; not a non-empty list is a UserError."""
    try:
        results = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(
            f"{path} is not valid JSON ({exc}) — write COCO results [{{image_id, category_id, bbox, score}}]"
        ) from None
    if not isinstance(results, list):
        raise UserError(
            f"{path} holds a {type(results).__name__}; COCO results are a list [{{image_id, category_id, bbox, score}}]"
        )
    if not results:
        raise UserError(f"{path} holds no detections — nothing to evaluate")
    return results


def load_detections(
    path: Path, gt: GroundTruth, need_masks: bool = False, match: Any = None, results: list | None = None
) -> list[dict[str, Any]]:
    """Read and check a COCO results JSON against the split: ids, boxes, scores, masks. `match` (an
    `mtlcli.metrics.matching.ImageMatch`) maps the file's image ids to the split's (by default matched
    here by `match_images`); the results come back with the split's own image and category ids."""
    from mtlcli.metrics.matching import match_images

    results = read_results(path) if results is None else results
    num_classes = len(gt.meta.det_classes)
    maps = source_id_maps(gt.meta, gt.images())
    match = match or match_images(gt, Path(path), results, maps[0] if maps else None)
    to_cat = {v: k for k, v in maps[1].items()} if maps is not None else None
    mapped = []
    for i, r in enumerate(results):
        if isinstance(r, dict) and "image_id" in r and "category_id" in r:
            image_id = r["image_id"]
            hashable = isinstance(image_id, (int, str)) and not isinstance(image_id, bool)
            if not hashable or image_id not in match.to_split:
                raise UserError(
                    f"{path}: entry {i}: image_id {image_id!r} is not in split {gt.split!r} of {gt.root}"
                    + (" nor in the images.json beside it" if match.listed else "")
                    + " — use the ids of its instances.json"
                )
            cat = r["category_id"]
            if to_cat is not None and isinstance(cat, int):  # the source's category ids: back to ours
                cat = to_cat.get(cat, f"{cat} (source id)")
            r = {**r, "image_id": match.to_split[image_id], "category_id": cat}
        mapped.append(r)
    results = mapped
    for i, r in enumerate(results):
        where = f"{path}: entry {i}"
        if not isinstance(r, dict) or any(k not in r for k in ("image_id", "category_id", "bbox", "score")):
            raise UserError(f"{where} needs image_id, category_id, bbox and score")
        image_id, cat = r["image_id"], r["category_id"]
        if not isinstance(image_id, int) or image_id not in gt.coco.imgs:
            raise UserError(
                f"{where}: image_id {image_id!r} is not in {gt.root} split {gt.split!r} — use the ids of its "
                "instances.json"
            )
        if not isinstance(cat, int) or not 1 <= cat <= num_classes:
            raise UserError(
                f"{where}: category_id {cat!r} is out of range; valid ids are 1..{num_classes} "
                f"({', '.join(gt.meta.det_classes[:3])}, ...)"
            )
        box = r["bbox"]
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
            or box[2] < 0
            or box[3] < 0
        ):
            raise UserError(f"{where}: bbox {box!r} is not [x, y, w, h] with w, h >= 0")
        if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"]):
            raise UserError(f"{where}: score {r['score']!r} is not a number")
        seg = r.get("segmentation")
        if seg is None:
            if need_masks:
                raise UserError(
                    f"{where} (image_id {image_id}) has no segmentation; coco-segm needs an RLE mask per detection"
                )
            continue
        img = gt.coco.imgs[image_id]
        if isinstance(seg, dict):
            if list(seg.get("size", [])) != [img["height"], img["width"]] or "counts" not in seg:
                raise UserError(
                    f"{where}: segmentation size {seg.get('size')} does not match image_id {image_id} "
                    f"({img['height']}x{img['width']}); encode masks in the original image frame"
                )
        elif not isinstance(seg, list):
            raise UserError(f"{where}: segmentation is neither RLE nor polygons")
    return results


def output_to_results(output: dict[str, Any], image_id: int, with_masks: bool) -> list[dict[str, Any]]:
    """One image's model output (DESIGN.md §4: boxes [N, 4] xyxy pixels, scores [N], labels [N] 1..K,
    masks [N, 1, H, W] 0..1) as COCO results; masks thresholded at 0.5 and RLE-encoded."""
    if "boxes" not in output:
        return []
    boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
    scores = output["scores"].detach().float().cpu().numpy().reshape(-1)
    labels = output["labels"].detach().cpu().numpy().reshape(-1)
    rles = None
    if with_masks and "masks" in output and len(boxes):
        from pycocotools import mask as mask_utils

        masks = (output["masks"].detach()[:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    results = []
    for k in range(len(boxes)):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        r = {
            "image_id": int(image_id),
            "category_id": int(labels[k]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(scores[k]),
        }
        if rles is not None:
            r["segmentation"] = {"size": [int(s) for s in rles[k]["size"]], "counts": rles[k]["counts"].decode("ascii")}
        results.append(r)
    return results


# ----------------------------------------------------------------------------------------- semantic
def semantic_dir(predictions: Path, cityscapes_ids: bool) -> Path | None:
    """The folder of PNG predictions inside `predictions` (see the module docstring), or None."""
    if not predictions.is_dir():
        return None
    for sub in (("labelIds",) if cityscapes_ids else ()) + ("semantic",):
        if (predictions / sub).is_dir():
            return predictions / sub
    return predictions if any(predictions.glob("*.png")) else None


class PredictionReader:
    """Checks and maps one prediction PNG to class indices [H, W] uint8 (255 = void)."""

    def __init__(self, meta: DatasetMeta, cityscapes_ids: bool) -> None:
        self.num_classes = len(meta.seg_classes)
        self.cityscapes_ids = cityscapes_ids
        if cityscapes_ids:
            from mtlcli.metrics.segmentation import cityscapes_label_ids, cityscapes_label_luts

            self.lut, _ = cityscapes_label_luts(meta.seg_classes)
            self.max_id = max(cityscapes_label_ids())
            if (self.lut == IGNORE_INDEX).all():
                raise UserError(
                    f"--cityscapes-ids: none of the dataset's classes ({', '.join(meta.seg_classes[:4])}, ...) is a "
                    "Cityscapes class"
                )

    def __call__(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        pred = read_png(path)
        if pred.ndim != 2:
            raise UserError(f"{path} has {pred.shape[-1]} channels; write single-channel class indices")
        if pred.shape != tuple(shape):
            raise UserError(
                f"{path} is {pred.shape[1]}x{pred.shape[0]} (WxH) but its ground truth is {shape[1]}x{shape[0]}; "
                f"write predictions in the original image size"
            )
        top = int(pred.max()) if pred.size else 0
        if self.cityscapes_ids:
            if top > self.max_id:
                raise UserError(
                    f"{path} holds value {top}, which is no Cityscapes labelId (0..{self.max_id}); drop "
                    "--cityscapes-ids for class indices"
                )
            return np.take(self.lut, pred)  # several times faster than self.lut[pred] on uint8 maps
        if top >= self.num_classes:
            counts = np.bincount(pred.ravel().astype(np.int64), minlength=256)
            bad = [v for v in np.nonzero(counts)[0].tolist() if v >= self.num_classes and v != IGNORE_INDEX]
            if bad:
                raise UserError(
                    f"{path} holds value {bad[0]}, outside the {self.num_classes} classes 0..{self.num_classes - 1} "
                    f"(255 = no prediction); pass --cityscapes-ids for Cityscapes labelIds"
                )
        return pred.astype(np.uint8, copy=False)


def semantic_pairs(
    gt: GroundTruth, pred_dir: Path, reader: PredictionReader, workers: int = 2, names: dict[int, str] | None = None
) -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    """(image, prediction [H, W] uint8, ground truth [H, W] uint8, their `joint_histogram`) for every
    image of the split that has a semantic label PNG, in image-id order.

    An image's prediction is `pred_dir/<name>.png` (`mtlcli.data.prepared.output_path`; `names`: split image
    id -> name, from `mtlcli.metrics.matching`, by default the image's stem), else the one PNG anywhere below
    `pred_dir` with that base name. A missing prediction, or a PNG that names no image of the split, is a
    UserError with the counts and an example.

    Files are decoded and counted in a small thread pool (libpng, zlib and numpy's bincount release
    the GIL), so on two cores two images are in flight at once."""
    names = names or {}
    found = {p.resolve() for p in pred_dir.rglob("*.png")}
    by_base: dict[str, list[Path]] = {}
    for p in found:
        by_base.setdefault(p.name, []).append(p)
    jobs, missing, used = [], [], set()
    for img in gt.images():
        stem = image_stem(img)
        gt_path = semantic_path(gt.root, gt.split, stem)
        name = names.get(img["id"], stem)
        pred_path = output_path(pred_dir, name).resolve()
        if pred_path not in found:
            alike = by_base.get(pred_path.name) or by_base.get(output_path(pred_dir, stem).name) or []
            pred_path = alike[0] if len(alike) == 1 else pred_path
        if pred_path in found:
            used.add(pred_path)
        if not gt_path.is_file():
            continue  # the split has no semantic label for this image
        if pred_path not in found:
            missing.append((img, name))
            continue
        jobs.append((img, pred_path, gt_path))
    if missing:
        img, name = missing[0]
        raise UserError(
            f"{pred_dir} has no prediction for {len(missing)} of the {len(missing) + len(jobs)} labelled images of "
            f"split {gt.split!r} (e.g. {name}.png for {img['file_name']}, image_id {img['id']}) — predict the whole "
            f"split (`mtl predict --run RUN --data {gt.root} --split {gt.split}`)"
        )
    extra = sorted(found - used)
    if extra:
        raise UserError(
            f"{pred_dir} holds {len(extra)} PNG(s) that name no image of split {gt.split!r} of {gt.root} "
            f"(e.g. {extra[0].relative_to(pred_dir.resolve())}) — evaluate the split they were predicted for"
        )
    if not jobs:
        raise UserError(f"split {gt.split!r} of {gt.root} has no semantic label PNGs; miou cannot be computed there")

    from mtlcli.metrics.segmentation import joint_histogram

    def load(job: tuple[dict[str, Any], Path, Path]) -> tuple[dict[str, Any], np.ndarray, np.ndarray, Any]:
        img, pred_path, gt_path = job
        target = read_png(gt_path)
        if target.dtype != np.uint8:
            raise UserError(f"{gt_path} is not an 8-bit label map — prepare the dataset again")
        pred = reader(pred_path, target.shape)
        return img, pred, target, joint_histogram(pred, target)

    if workers <= 1:
        yield from map(load, jobs)
        return
    # a bounded window of images in flight: pool.map would decode the whole split into memory
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(load, job))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def rle_counts(rle: dict[str, Any]) -> np.ndarray:
    """The run lengths [R] int64 of a COCO RLE (alternating 0s and 1s, column-major, starting with 0s).

    Compressed counts are COCO's LEB128-like string (pycocotools `rleFrString`): 5 bits per character
    offset by 48, bit 0x20 = more characters follow, bit 0x10 of the last = negative; from the third
    count on, each is stored as the difference to the count two before."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return np.asarray(counts, dtype=np.int64)
    data = counts.encode("ascii") if isinstance(counts, str) else counts
    out: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return np.asarray(out, dtype=np.int64)


def instance_hits(
    gt: GroundTruth, image_id: int, class_index: dict[int, int], pred: np.ndarray
) -> tuple[list[int], list[int], list[int]]:
    """For each non-crowd instance of one image: (semantic class index, pixels of it predicted as that
    class, its size in pixels). The instance's pixels are read from its RLE runs directly: decoding
    every mask at full size would cost more than the whole confusion matrix."""
    H = pred.shape[0]
    classes, tps, sizes = [], [], []
    for a in gt.coco.imgToAnns.get(image_id, []):
        if a.get("iscrowd", 0) or a["category_id"] not in class_index:
            continue
        runs = rle_counts(gt.coco.annToRLE(a))
        ends = np.cumsum(runs)
        starts, lengths = (ends - runs)[1::2], runs[1::2]  # runs of 1s are the odd ones
        total = int(lengths.sum())
        # column-major pixel indices of every pixel of the instance
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        idx = np.repeat(starts, lengths) + offsets
        c = class_index[a["category_id"]]
        classes.append(c)
        rows, cols = np.divmod(idx, H)[::-1]
        tps.append(int(np.count_nonzero(np.take(pred, rows * pred.shape[1] + cols) == c)))
        sizes.append(total)
    return classes, tps, sizes


def det_to_seg_index(meta: DatasetMeta) -> dict[int, int]:
    """Detection category id -> semantic class index, matched by class name."""
    seg = {n: i for i, n in enumerate(meta.seg_classes)}
    return {k + 1: seg[n] for k, n in enumerate(meta.det_classes) if n in seg}


# ----------------------------------------------------------------------------------------- evaluation
def evaluate_predictions(
    root: str | Path,
    split: str,
    predictions: str | Path,
    metrics: list[str] | None = None,
    *,
    cityscapes_ids: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate saved predictions against a prepared split.

    Returns {"metrics": {name: headline float}, "details": {name: dict}} as `evaluate()` does. Without
    `metrics`, everything the files allow: miou for PNGs, coco-bbox (and coco-segm with masks) for JSON.
    """
    predictions = Path(predictions)
    if not predictions.exists():
        raise UserError(f"--predictions {predictions}: no such file or folder")
    gt = GroundTruth.load(root, split)
    found = predictions if predictions.is_file() else (predictions / "detections.json")
    det_file = found if found.is_file() else None
    if predictions.is_file() and predictions.suffix.lower() != ".json":
        raise UserError(f"--predictions {predictions} is neither a COCO results .json file nor a folder of PNGs")
    sem_dir = semantic_dir(predictions, cityscapes_ids)
    from mtlcli.metrics.matching import match_images

    # one matching of the predicted images to the split's, for the JSON and the PNGs alike
    raw = read_results(det_file) if det_file else None
    maps = source_id_maps(gt.meta, gt.images())
    match = match_images(gt, predictions, raw, maps[0] if maps else None)

    names = check_metric_names(metrics or [])
    if not names:
        detections = load_detections(det_file, gt, match=match, results=raw) if det_file else []
        names = (["miou"] if sem_dir else []) + (["coco-bbox"] if det_file else [])
        names += ["coco-segm"] if any("segmentation" in r for r in detections) else []
        names += ["pq"] if predictions.is_dir() and (predictions / "panoptic.json").is_file() else []
        if not names:
            raise UserError(
                f"--predictions {predictions} holds neither detections.json nor PNG files — nothing to evaluate"
            )
    out: dict[str, Any] = {"metrics": {}, "details": {}}
    if match.notes:
        out["notes"] = match.notes
    if "miou" in names:
        if sem_dir is None:
            raise UserError(
                f"--metric miou needs PNG predictions; {predictions} holds none (expected <stem>.png files)"
            )
        metric = build_metric("miou", gt)
        reader = PredictionReader(gt.meta, cityscapes_ids)
        class_index = det_to_seg_index(gt.meta)
        from rich.progress import Progress

        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("miou", total=None)
            for img, pred, target, hist in semantic_pairs(gt, sem_dir, reader, names=match.names):
                metric.update(pred, target, histogram=hist)
                if metric.instance_sizes:
                    metric.add_instances(*instance_hits(gt, img["id"], class_index, pred))
                bar.advance(task)
        res = metric.compute()
        out["metrics"]["miou"], out["details"]["miou"] = res["value"], res["details"]
    if "pq" in names:
        from mtlcli.metrics.panoptic import evaluate_panoptic_files

        res = evaluate_panoptic_files(gt, predictions, progress)
        out["metrics"]["pq"], out["details"]["pq"] = res["value"], res["details"]
    det_names = [n for n in names if n in DETECTION_METRICS]
    if det_names:
        if det_file is None:
            raise UserError(
                f"--metric {det_names[0]} needs COCO results; {predictions} is no .json file and holds no "
                "detections.json"
            )
        need = "coco-segm" in det_names or "cs-inst" in det_names
        detections = load_detections(det_file, gt, need_masks=need, match=match, results=raw)
        for name in det_names:
            metric = build_metric(name, gt)
            metric.update(detections)
            res = metric.compute()
            out["metrics"][name], out["details"][name] = res["value"], res["details"]
    return out


# ----------------------------------------------------------------------------------------- writing
class PredictionWriter:
    """Writes predictions in the formats above while a model runs over a split."""

    def __init__(
        self,
        out_dir: str | Path,
        meta: DatasetMeta,
        force: bool = False,
        id_maps: tuple[dict[int, Any], dict[int, int]] | None = None,
    ) -> None:
        from mtlcli.metrics.segmentation import cityscapes_label_luts
        from mtlcli.safety import refuse_protected_output

        self.out = Path(out_dir)
        refuse_protected_output(self.out, "--save-predictions")  # never over ground truth, even with force
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--save-predictions {self.out} exists and is not a folder; choose another path")
        if self.out.is_dir() and any(self.out.iterdir()) and not force:
            raise UserError(
                f"--save-predictions {self.out} is not empty; choose another folder or pass --force to overwrite"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        lut_in, lut_out = cityscapes_label_luts(meta.seg_classes)
        # labelIds only where every class of the dataset is a Cityscapes class
        mapped = set(np.nonzero(lut_in != IGNORE_INDEX)[0].tolist())
        self.label_ids = lut_out if meta.seg_classes and len(mapped) == len(meta.seg_classes) else None
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.id_maps = id_maps  # detections.json gets the source's image and category ids

    def add(
        self, stem: str, semantic: np.ndarray | None, results: list[dict[str, Any]], image: dict | None = None
    ) -> None:
        """One image: class-index map [H, W] uint8 (or None) and its COCO results; `image` (its COCO
        images entry: id, file_name, height, width) is listed in images.json and named in every result."""
        if image is not None:
            self.images.append(
                {k: image[k] for k in ("id", "file_name", "height", "width") if k in image} | {"name": stem}
            )
            results = [{**r, "file_name": image["file_name"]} for r in results]
        self.results.extend(results)
        if semantic is not None:
            save_png(output_path(self.out / "semantic", stem), semantic.astype(np.uint8))
            if self.label_ids is not None:
                save_png(output_path(self.out / "labelIds", stem), self.label_ids[semantic])

    def close(self, write_detections: bool) -> None:
        from mtlcli.data.prepared import atomic_write_text

        images_map, cats = self.id_maps if self.id_maps is not None else ({}, {})
        if write_detections:
            results = [
                {
                    **r,
                    "image_id": images_map.get(r["image_id"], r["image_id"]),
                    "category_id": cats.get(r["category_id"], r["category_id"]),
                }
                for r in self.results
            ]
            atomic_write_text(self.out / "detections.json", json.dumps(results))
        if self.images:  # what was predicted, for `mtl eval --predictions` to check the coverage
            images = [{**im, "id": images_map.get(im["id"], im["id"])} for im in self.images]
            atomic_write_text(self.out / "images.json", json.dumps({"images": images}, indent=1))
