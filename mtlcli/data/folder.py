"""A plain folder of hand-made scene labels -> the prepared format (`mtl prepare folder SRC`).

    SRC/images/<name>.jpg|png       the images (sub-folders allowed)
    SRC/masks/<name>.png            one class-index PNG per image (value k = class k of the list, 255 = ignore)
    SRC/classes.txt                 one class per line in index order; things marked ", thing"
                                    (`road`, `car, thing`) — or SRC/classes.json:
                                    [{"name": "road", "isthing": false}, {"name": "car", "isthing": true}]
    SRC/instances.json              optional COCO instances of the thing classes (category names = class names)

or the same layout in SRC/train/ and SRC/val/ for two splits. Seg classes are the listed classes (things
and stuff), det classes the things. Instances come from instances.json where it is given, else from the
connected components (8-connectivity, scipy.ndimage.label) of each thing class's pixels in the mask —
one instance per blob, so touching objects of one class become one instance; the summary says which.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.data.cityscapes import DT_PALETTE, save_indexed_png
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
    semantic_path,
)
from mtlcli.data.targets import dt_bins
from mtlcli.data.voc import read_image_size, refuse_out_inside, voc_colormap
from mtlcli.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PNG_PALETTE = voc_colormap(256)


def read_classes(src: Path) -> list[tuple[str, bool]]:
    """[(name, isthing)] from SRC/classes.json or SRC/classes.txt; UserError saying what to write."""
    js, txt = src / "classes.json", src / "classes.txt"
    if js.is_file():
        try:
            data = json.loads(js.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{js} is not valid JSON ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(c, dict) and c.get("name") for c in data):
            raise UserError(f'{js} must be a list [{{"name": "road", "isthing": false}}, ...]')
        classes = [(str(c["name"]), bool(c.get("isthing", False))) for c in data]
    elif txt.is_file():
        classes = []
        for line in txt.read_text().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, _, kind = (p.strip() for p in line.partition(","))
            if kind not in ("", "thing", "stuff"):
                raise UserError(f"{txt}: {line!r} — write one class per line, `name` or `name, thing`")
            classes.append((name, kind == "thing"))
    else:
        raise UserError(f"{src} has neither classes.txt nor classes.json — list the classes, things marked `, thing`")
    names = [n for n, _ in classes]
    if not classes or len(set(names)) != len(names) or len(classes) > 255:
        raise UserError(f"{src}: the class list must name 1..255 distinct classes (got {len(names)})")
    return classes


def prepare_folder_image(job: ImageJob, out: Path) -> ImageResult:
    """payload: image, mask (paths), classes [(name, isthing)], anns (COCO anns of this image, det labels)
    or None (connected components)."""
    from scipy import ndimage

    p = job.payload
    h, w = read_image_size(p["image"])
    mask = read_label_png(p["mask"])
    if mask.ndim != 2 or mask.shape != (h, w):
        raise SkipImage(f"its mask {p['mask']} is not a {w}x{h} single-channel class-index PNG")
    n = len(p["classes"])
    bad = np.unique(mask[(mask >= n) & (mask != 255)])
    if len(bad):
        raise SkipImage(f"its mask holds value {int(bad[0])}, outside the {n} classes (255 = ignore)")
    semantic = mask.astype(np.uint8)
    det_label: dict[int, int] = {}
    for k, (_, thing) in enumerate(p["classes"]):
        if thing:
            det_label[k] = len(det_label) + 1
    annotations, dt_masks = [], []
    if p["anns"] is None:
        for cls, label in det_label.items():
            blobs, count = ndimage.label(semantic == cls, structure=np.ones((3, 3), bool))
            for b in range(1, count + 1):
                m = blobs == b
                annotations.append(encode_instance(m, label, 0))
                dt_masks.append(m)
    else:
        from mtlcli.data.coco import annotation_mask

        for a in p["anns"]:
            m = annotation_mask(a.get("segmentation"), a.get("bbox", [0, 0, 0, 0]), h, w)
            if m.any():
                crowd = int(bool(a.get("iscrowd", 0)))
                annotations.append(encode_instance(m, a["category_id"], crowd))
                if not crowd:
                    dt_masks.append(m)
    save_indexed_png(semantic_path(out, job.split, job.stem), semantic, PNG_PALETTE)
    save_indexed_png(dt_path(out, job.split, job.stem), dt_bins(dt_masks, (h, w)), DT_PALETTE)
    return ImageResult(job.split, job.file_name, job.stem, height=h, width=w, annotations=annotations)


def _split_jobs(
    name: str, root: Path, source: Path, classes, skipped: list[ImageResult]
) -> tuple[list[ImageJob], bool]:
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise UserError(f"{root} needs images/ and masks/ folders (one class-index PNG per image)")
    anns_by_file = None
    inst = root / "instances.json"
    if inst.is_file():
        from mtlcli.data.coco import load_instances

        data = load_instances(inst)
        thing_names = [n for n, t in classes if t]
        cat = {}
        for c in data["categories"]:
            if c.get("name") not in thing_names:
                raise UserError(f"{inst}: category {c.get('name')!r} is not a thing class of the class list")
            cat[c["id"]] = thing_names.index(c["name"]) + 1
        by_image: dict[Any, list] = {}
        for a in data["annotations"]:
            by_image.setdefault(a["image_id"], []).append({**a, "category_id": cat[a["category_id"]]})
        anns_by_file = {im["file_name"]: by_image.get(im["id"], []) for im in data["images"]}
    jobs = []
    for f in sorted(images.rglob("*")):
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rel = f.relative_to(images)
        m = masks / rel.with_suffix(".png")
        file_name = f.resolve().relative_to(source).as_posix()
        if not m.is_file():
            skipped.append(ImageResult(name, file_name, "", skipped=f"no mask {m}"))
            continue
        anns = None if anns_by_file is None else anns_by_file.get(rel.as_posix(), [])
        payload = {"image": str(f), "mask": str(m), "classes": classes, "anns": anns}
        jobs.append(ImageJob(name, file_name, rel.with_suffix("").as_posix(), payload))
    return jobs, anns_by_file is None


def prepare_folder(
    src: str | Path, out: str | Path, *, workers: int | None = None, strict: bool = False, force: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Write the prepared dataset (module docstring) to `out`; returns run_prepare's summary with
    "instances_from": "instances.json" or "connected components"."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise UserError(f"{src}: no such folder — give the folder holding images/, masks/ and classes.txt")
    source = src.resolve()
    classes = read_classes(src)
    roots = [(s, src / s) for s in ("train", "val") if (src / s).is_dir()] or [("train", src)]
    jobs: list[ImageJob] = []
    skipped: list[ImageResult] = []
    components = False
    for name, root in roots:
        split_jobs, cc = _split_jobs(name, root, source, classes, skipped)
        jobs += split_jobs
        components = components or cc
    if not jobs:
        raise UserError(f"{src}: no image with a mask found under images/ — nothing to prepare")
    refuse_out_inside(out, [source])
    out = check_out_dir(out, force)
    names = [n for n, _ in classes]
    things = [n for n, t in classes if t]
    meta = DatasetMeta(
        name="folder",
        source=str(source),
        splits=[n for n, _ in roots],
        det_classes=things,
        seg_classes=names,
        palette=voc_colormap(len(names)),
        thing_classes=things,
    )
    summary = run_prepare(
        out, meta, jobs, prepare_folder_image, workers=workers, strict=strict, pre_skipped=skipped, quiet=quiet
    )
    summary["instances_from"] = "connected components" if components else "instances.json"
    return summary
