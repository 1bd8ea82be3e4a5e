"""COCO panoptic format -> the prepared format with things and stuff (DESIGN.md §3, docs/panoptic.md).

    mtl prepare coco-panoptic --json F --png-dir D --images D [--val-json F --val-png-dir D --val-images D]

F is a COCO panoptic JSON ({"images", "annotations": [{image_id, file_name, segments_info: [{id,
category_id, iscrowd, area, bbox}]}], "categories": [{id, name, isthing}]}: COCO panoptic 2017, CVAT's and
Label Studio's exports, cityscapesscripts' `createPanopticImgs` output), D the folder of its RGB PNGs
(segment id = R + 256 G + 65536 B, 0 = void), the images folder holding the images by their `file_name`
(or below it, e.g. Cityscapes' leftImg8bit/val/<city>/).

The prepared dataset:
- seg classes: every category, things and stuff, in the file's order; `thing_classes` the isthing ones,
  `panoptic_category_ids` their ids; the semantic map gives every segment (crowd included) its class,
  void pixels 255 (ignore);
- det classes: the thing categories, contiguous 1..K (`det_category_ids` keep their ids); instances: one per
  thing segment, RLE mask + tight box, iscrowd as the segment says; DT bins from the non-crowd ones;
- the panoptic ground truth itself: `<split>/panoptic.json` (image ids of the prepared split, the source's
  segments_info) + `<split>/panoptic/<stem>.png` (the source PNG's bytes), so PQ is scored against the
  source's own segments.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.data.cityscapes import DT_PALETTE, save_indexed_png
from mtlcli.data.panoptic import panoptic_json_path, panoptic_png_path, read_panoptic_png
from mtlcli.data.prepared import (
    DatasetMeta,
    ImageJob,
    ImageResult,
    SkipImage,
    atomic_write_text,
    check_out_dir,
    dt_path,
    encode_instance,
    instances_path,
    run_prepare,
    semantic_path,
)
from mtlcli.data.targets import dt_bins
from mtlcli.data.voc import read_image_size, refuse_out_inside, voc_colormap
from mtlcli.errors import UserError

PNG_PALETTE = voc_colormap(256)


@dataclass
class PanopticSplit:
    name: str
    json: Path
    png_dir: Path
    images: Path


def load_panoptic(path: Path) -> dict[str, Any]:
    """A COCO panoptic JSON checked for what the reader uses; UserError naming what is missing."""
    if not path.is_file():
        raise UserError(f"{path}: no such file — give the COCO panoptic JSON (annotations with segments_info)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}) — give a COCO panoptic JSON") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise UserError(f"{path} has no {key!r} list — it is not a COCO panoptic JSON")
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c or "isthing" not in c:
            raise UserError(
                f"{path}: category {c!r} needs id, name and isthing — COCO panoptic categories say which are things"
            )
    for a in data["annotations"]:
        if not isinstance(a, dict) or not all(k in a for k in ("image_id", "file_name", "segments_info")):
            raise UserError(f"{path}: an annotation lacks image_id, file_name or segments_info")
    return data


def prepare_panoptic_image(job: ImageJob, out: Path) -> ImageResult:
    """Per-image work (runs in a worker). payload: image, png (absolute paths), segments, seg_index
    {category id: seg class}, det_label {category id: 1..K}."""
    p = job.payload
    h, w = read_image_size(p["image"])
    try:
        ids = read_panoptic_png(p["png"])
    except UserError as exc:
        raise SkipImage(str(exc)) from None
    if ids.shape != (h, w):
        raise SkipImage(f"its panoptic PNG is {ids.shape[1]}x{ids.shape[0]} but the image {w}x{h}")
    semantic = np.full((h, w), 255, np.uint8)
    annotations, dt_masks = [], []
    present = set(np.unique(ids).tolist())
    for s in p["segments"]:
        sid, cat = int(s["id"]), int(s["category_id"])
        if cat not in p["seg_index"]:
            raise SkipImage(f"segment {sid} has category_id {cat}, which the file's categories do not list")
        if sid not in present:
            continue
        mask = ids == sid
        semantic[mask] = p["seg_index"][cat]
        if cat in p["det_label"]:
            crowd = int(bool(s.get("iscrowd", 0)))
            annotations.append(encode_instance(mask, p["det_label"][cat], crowd))
            if not crowd:
                dt_masks.append(mask)
    save_indexed_png(semantic_path(out, job.split, job.stem), semantic, PNG_PALETTE)
    save_indexed_png(dt_path(out, job.split, job.stem), dt_bins(dt_masks, (h, w)), DT_PALETTE)
    target = panoptic_png_path(out, job.split, job.stem)
    target.parent.mkdir(parents=True, exist_ok=True)
    from mtlcli.safety import atomic_write_bytes

    atomic_write_bytes(target, Path(p["png"]).read_bytes())
    return ImageResult(job.split, job.file_name, job.stem, height=h, width=w, annotations=annotations)


def _find_image(images: Path, file_name: str, index: dict[str, Path] | None) -> tuple[Path | None, dict | None]:
    direct = images / file_name
    if direct.is_file():
        return direct, index
    if index is None:  # Cityscapes keeps images in city folders below the split folder
        index = {}
        for f in images.rglob("*"):
            if f.is_file():
                index.setdefault(f.name, f)
    name = Path(file_name).name
    # createPanopticImgs names the image "<id>_gtFine_leftImg8bit.png"; the file is "<id>_leftImg8bit.png"
    return index.get(name) or index.get(name.replace("_gtFine_leftImg8bit", "_leftImg8bit")), index


def prepare_coco_panoptic(
    splits: list[PanopticSplit],
    out: str | Path,
    *,
    workers: int | None = None,
    strict: bool = False,
    force: bool = False,
    quiet: bool = False,
    name: str = "custom-panoptic",
) -> dict[str, Any]:
    """Write the prepared dataset (module docstring) to `out`; returns run_prepare's summary."""
    for s in splits:
        for path, opt in ((s.png_dir, "png-dir"), (s.images, "images")):
            if not path.is_dir():
                raise UserError(f"--{'' if s.name == 'train' else s.name + '-'}{opt} {path}: no such folder")
    if not splits:
        raise ValueError("prepare_coco_panoptic needs at least one split")
    categories: list[tuple[int, str, int]] | None = None
    jobs: list[ImageJob] = []
    skipped: list[ImageResult] = []
    source = Path(os.path.commonpath([str(s.images.resolve()) for s in splits]))
    per_split_segments: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for split in splits:
        data = load_panoptic(split.json)
        cats = [(int(c["id"]), str(c["name"]), int(c["isthing"])) for c in data["categories"]]
        if categories is None:
            categories = cats
        elif cats != categories:
            raise UserError(f"{split.json} has other categories than {splits[0].json} — every split must use the same")
        seg_index = {cid: k for k, (cid, _, _) in enumerate(cats)}
        det_label = {cid: k for k, cid in enumerate((c for c, _, t in cats if t == 1), start=1)}
        images = {im["id"]: im for im in data["images"]}
        index = None
        per_split_segments[split.name] = {}
        for ann in data["annotations"]:
            im = images.get(ann["image_id"])
            file_name = im["file_name"] if im else ann["file_name"]
            image, index = _find_image(split.images, file_name, index)
            if image is None:
                skipped.append(
                    ImageResult(split.name, file_name, "", skipped=f"no image {file_name} in {split.images}")
                )
                continue
            png = split.png_dir / ann["file_name"]
            if not png.is_file():
                skipped.append(ImageResult(split.name, file_name, "", skipped=f"no panoptic PNG {png}"))
                continue
            rel = image.resolve().relative_to(source)
            stem = rel.with_suffix("").as_posix()
            jobs.append(
                ImageJob(
                    split.name,
                    rel.as_posix(),
                    stem,
                    {
                        "image": str(image),
                        "png": str(png),
                        "segments": ann["segments_info"],
                        "seg_index": seg_index,
                        "det_label": det_label,
                    },
                )
            )
            per_split_segments[split.name][stem] = ann["segments_info"]
    assert categories is not None  # set by the first split
    if len(categories) > 255:
        raise UserError(f"{splits[0].json} has {len(categories)} categories; the prepared format holds up to 255")
    refuse_out_inside(out, [source] + [s.png_dir for s in splits] + [s.json.parent for s in splits])
    out = check_out_dir(out, force)
    names = [n for _, n, _ in categories]
    things = [n for _, n, t in categories if t == 1]
    meta = DatasetMeta(
        name=name,
        source=str(source),
        splits=[s.name for s in splits],
        det_classes=things,
        seg_classes=names,
        palette=voc_colormap(len(names)),
        det_category_ids=[cid for cid, _, t in categories if t == 1],
        thing_classes=things,
        panoptic_category_ids=[cid for cid, _, _ in categories],
    )
    summary = run_prepare(
        out, meta, jobs, prepare_panoptic_image, workers=workers, strict=strict, pre_skipped=skipped, quiet=quiet
    )
    cat_json = [{"id": cid, "name": n, "isthing": t} for cid, n, t in categories]
    for split_name in meta.splits:  # the panoptic ground truth with the prepared split's image ids
        images = json.loads(instances_path(out, split_name).read_text())["images"]
        anns = [
            {
                "image_id": im["id"],
                "file_name": f"{im['stem']}.png",
                "segments_info": per_split_segments[split_name][im["stem"]],
            }
            for im in images
        ]
        data = {"images": images, "annotations": anns, "categories": cat_json}
        atomic_write_text(panoptic_json_path(out, split_name), json.dumps(data))
    return summary
