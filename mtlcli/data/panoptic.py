"""Panoptic ground truth of a prepared dataset, and panoptic files in COCO panoptic format.

    DATA/<split>/panoptic.json         {"annotations": [{image_id, file_name: "<stem>.png", segments_info:
                                       [{id, category_id, iscrowd, area, bbox}]}], "categories": [{id,
                                       name, isthing}], "images": [...]} — COCO panoptic format
    DATA/<split>/panoptic/<stem>.png   RGB, segment id = R + 256 G + 65536 B (0 = void)

A split that keeps these files (COCO panoptic data: `mtl prepare coco-panoptic`; the synthetic city) is
scored against them. Any other prepared split with things and stuff gets its panoptic ground truth
derived from what it has (`derive_ground_truth`): every instance of a thing class is a segment (crowd
ones iscrowd = 1), every stuff class of the semantic map outside the instances is one segment, ignore
pixels and thing pixels no instance covers are void.

Category ids: the dataset's own (`dataset.json` "panoptic_category_ids", one per seg class, kept from a
COCO panoptic source), else seg class index + 1. Which seg classes are things: `thing_classes` in
dataset.json, else the seg classes that are also det classes.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.data.prepared import DatasetMeta
from mtlcli.errors import UserError
from mtlcli.ops.panoptic import det_to_seg, id2rgb, rgb2id, thing_indices

# derive_ground_truth's inputs but meta: semantic [H, W] or None, instance masks, det labels, crowd flags
DeriveArgs = tuple[np.ndarray | None, list[np.ndarray], list[int], list[int]]


def panoptic_json_path(root: str | Path, split: str) -> Path:
    return Path(root) / split / "panoptic.json"


def panoptic_png_path(root: str | Path, split: str, stem: str) -> Path:
    return Path(root) / split / "panoptic" / f"{stem}.png"


def category_ids(meta: DatasetMeta) -> list[int]:
    """The panoptic category id of each seg class: the recorded ones, Cityscapes' labelIds for Cityscapes
    data (what createPanopticImgs and the official evaluation use), else 1..C."""
    ids = list(getattr(meta, "panoptic_category_ids", None) or [])
    if len(ids) == len(meta.seg_classes):
        return [int(i) for i in ids]
    if meta.name == "cityscapes":
        from cityscapesscripts.helpers.labels import name2label

        if all(n in name2label for n in meta.seg_classes):
            return [int(name2label[n].id) for n in meta.seg_classes]
    return list(range(1, len(meta.seg_classes) + 1))


def categories(meta: DatasetMeta) -> list[dict[str, Any]]:
    """COCO panoptic categories [{id, name, isthing, color}] of the dataset's seg classes."""
    things = thing_indices(meta.seg_classes, meta.det_classes, getattr(meta, "thing_classes", None))
    palette = list(meta.palette) + [[0, 0, 0]] * len(meta.seg_classes)
    return [
        {"id": cid, "name": name, "isthing": int(i in things), "color": list(palette[i])}
        for i, (cid, name) in enumerate(zip(category_ids(meta), meta.seg_classes, strict=True))
    ]


def segments_to_coco(ids: np.ndarray, segments: list[dict[str, Any]], class_ids: list[int]) -> list[dict[str, Any]]:
    """segments_info in COCO panoptic form for segments [{id, class, isthing, ...}] of an id map."""
    out = []
    for s in segments:
        ys, xs = np.nonzero(ids == s["id"])
        if not len(ys):
            continue
        info = {
            "id": int(s["id"]),
            "category_id": int(class_ids[s["class"]]),
            "iscrowd": int(s.get("iscrowd", 0)),
            "area": int(len(ys)),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
        }
        for k in ("score", "inferred"):
            if k in s:
                info[k] = s[k]
        out.append(info)
    return out


def derive_ground_truth(
    semantic: np.ndarray | None,
    masks: list[np.ndarray],
    labels: list[int],
    iscrowd: list[int],
    meta: DatasetMeta,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image's panoptic ground truth from its prepared targets: semantic [H, W] class indices (or
    None), instance masks [H, W] bool with det labels 1..K and crowd flags. Returns (ids [H, W] uint32,
    COCO segments_info with the dataset's category ids)."""
    to_class = det_to_seg(meta.det_classes, meta.seg_classes)
    things = thing_indices(meta.seg_classes, meta.det_classes, getattr(meta, "thing_classes", None))
    class_ids = category_ids(meta)
    shape = semantic.shape if semantic is not None else (masks[0].shape if masks else (0, 0))
    ids = np.zeros(shape, np.uint32)
    segments: list[dict[str, Any]] = []
    for mask, label, crowd in zip(masks, labels, iscrowd, strict=True):
        cls = to_class.get(int(label))
        if cls is None:
            continue
        free = mask & (ids == 0)
        if not free.any():
            continue
        sid = len(segments) + 1
        ids[free] = sid
        segments.append({"id": sid, "class": cls, "isthing": True, "iscrowd": int(bool(crowd))})
    if semantic is not None:
        for cls in np.unique(semantic).tolist():
            if cls >= len(meta.seg_classes) or cls in things:
                continue
            region = (semantic == cls) & (ids == 0)
            if region.any():
                sid = len(segments) + 1
                ids[region] = sid
                segments.append({"id": sid, "class": cls, "isthing": False})
    return ids, segments_to_coco(ids, segments, class_ids)


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """A COCO panoptic PNG as [H, W] uint32 segment ids (libpng through torchvision, else PIL)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the panoptic PNG ({exc.strerror})") from None
    # IHDR colour type 2 (RGB) or 6 (RGBA), 8 bits: the fast decoder
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[24] == 8 and data[25] in (2, 6):
        ids = _decode_png_ids(data)
        if ids is not None:
            return ids
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.array(img.convert("RGB") if img.mode == "P" else img)
    except Exception as exc:
        raise UserError(f"{path} is not a readable PNG ({exc}) — write it again") from None
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise UserError(f"{path} is not an RGB panoptic PNG (segment id = R + 256 G + 65536 B); write it with id2rgb")
    return rgb2id(rgb)


def _decode_png_ids(data: bytes) -> np.ndarray | None:
    """Segment ids of an 8-bit RGB(A) PNG through torchvision's libpng decoder; None: let PIL read it.

    libpng writes the pixels interleaved ([C, H, W] is a view of an [H, W, C] buffer), so the ids come in
    one pass without plane copies or multiplies: read as little-endian uint32, the 4 bytes from a pixel's
    R are R + 256 G + 65536 B + 2^24 (the next byte), and the top byte is masked off (in place for RGBA;
    RGB pixels are 3 bytes apart, read unaligned, the last one by hand)."""
    from mtlcli.data.integrity import png_chunks_intact

    if not png_chunks_intact(data):
        return None
    try:
        import warnings

        import torch
        from torchvision.io import ImageReadMode, decode_png
    except ImportError:
        return None
    warnings.filterwarnings(
        "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
    )
    try:
        t = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    except RuntimeError:
        return None
    c, h, w = t.shape
    hwc = t.permute(1, 2, 0)
    if c not in (3, 4) or not hwc.is_contiguous() or sys.byteorder != "little":
        return rgb2id(t.numpy(), channels_first=True)
    pixels = hwc.numpy()
    if c == 4:
        ids = pixels.view(np.uint32).reshape(h, w)
    else:
        ids = np.empty((h, w), np.uint32)
        flat = ids.reshape(-1)
        flat[:-1] = np.ndarray((h * w - 1,), np.uint32, pixels, 0, (3,))  # pixel k: bytes 3k .. 3k + 3
        flat[-1] = rgb2id(pixels[-1:, -1])[0]
    np.bitwise_and(ids, np.uint32(0xFFFFFF), out=ids)
    return ids


class PanopticTruth:
    """A split's panoptic ground truth: its kept files, else derived from the prepared targets."""

    def __init__(self, root: str | Path, split: str, meta: DatasetMeta) -> None:
        self.root, self.split, self.meta = Path(root), split, meta
        path = panoptic_json_path(root, split)
        self.by_stem: dict[str, dict[str, Any]] | None = None
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UserError(f"{path} is not valid JSON ({exc}) — prepare the dataset again") from None
            self.categories = data["categories"]
            # the file name is "<stem>.png", the stem possibly with folders ("a/x")
            self.by_stem = {a["file_name"].rsplit(".", 1)[0]: a for a in data["annotations"]}
        else:
            self.categories = categories(meta)
            if not any(c["isthing"] == 0 for c in self.categories) and not meta.det_classes:
                raise UserError(f"{root} has neither things nor stuff classes; pq cannot be computed")
        self.kept = self.by_stem is not None

    def get(self, stem: str, derive: Callable[[], DeriveArgs]) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
        """(ids [H, W] uint32, segments_info) of one image; `derive()` -> the `derive_ground_truth`
        arguments when the split keeps no files. None: the kept files have no entry for this image."""
        if self.by_stem is not None:
            ann = self.by_stem.get(stem)
            if ann is None:
                return None
            return read_panoptic_png(self.root / self.split / "panoptic" / ann["file_name"]), ann["segments_info"]
        return derive_ground_truth(*derive(), self.meta)


def write_ground_truth(root: str | Path, split: str, images: list[dict[str, Any]], annotations, meta) -> int:
    """Write DATA/<split>/panoptic.json + panoptic/<stem>.png derived from the prepared targets of
    `images` (COCO image dicts with stem, height, width) and `annotations` (COCO instances with RLE);
    semantic maps are read from DATA/<split>/semantic. Returns the number of images written."""
    from pycocotools import mask as mask_utils

    from mtlcli.data.prepared import atomic_write_text, read_label_png, semantic_path

    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in annotations:
        by_image.setdefault(a["image_id"], []).append(a)
    out_anns = []
    folder = Path(root) / split / "panoptic"
    folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for img in images:
        stem = img.get("stem") or Path(img["file_name"]).stem
        sem_file = semantic_path(root, split, stem)
        semantic = read_label_png(sem_file) if sem_file.is_file() else None
        anns = by_image.get(img["id"], [])
        masks = [mask_utils.decode(a["segmentation"]).astype(bool) for a in anns]
        if semantic is None and not masks:
            continue
        ids, segs = derive_ground_truth(
            semantic, masks, [a["category_id"] for a in anns], [a.get("iscrowd", 0) for a in anns], meta
        )
        Image.fromarray(id2rgb(ids)).save(folder / f"{stem}.png")
        out_anns.append({"image_id": img["id"], "file_name": f"{stem}.png", "segments_info": segs})
    data = {"images": images, "annotations": out_anns, "categories": categories(meta)}
    atomic_write_text(panoptic_json_path(root, split), json.dumps(data))
    return len(out_anns)
