"""MOT15 (2DMOT2015) pedestrian boxes -> the prepared format (DESIGN.md §3), detection only.

Source layout:

    SRC/train/<sequence>/img1/000001.jpg ...
    SRC/train/<sequence>/gt/gt.txt          rows "frame,id,x,y,w,h,conf,x3d,y3d,z3d" (the last three -1)
    SRC/train/<sequence>/seqinfo.ini        optional (later MOT releases): imDir and imExt are honoured

One det class, "pedestrian"; no semantic maps (seg_classes is empty). gt.txt boxes are in 1-based pixel
coordinates: the box covers 0-based columns x - 1 .. x - 1 + w (exclusive end) and is clipped to the
image; fractional coordinates are rounded to whole pixels by the filled-box mask, whose tight extent is
the COCO bbox. Rows with conf == 0 are ignored. The filled boxes are the instance masks and feed the
distance-transform bins.

Split by time, as in the Ladder-DenseNet/SSD paper: in each sequence the last `val_fraction` of the frames
(rounded half up, counted over all frames of the sequence) go to `val`, the rest to `train`. Frames
without any ground-truth box are left out and listed among the skipped files (so `--strict` stops at
them). Image file names are relative to SRC, e.g. `train/TUD-Campus/img1/000001.jpg`; stems are
`<sequence>_<frame>`, and each image records `sequence` and `frame_id`.
"""

from __future__ import annotations

import configparser
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from mtlcli.data.cityscapes import DT_PALETTE, save_indexed_png  # one PNG writer for every reader
from mtlcli.data.prepared import (
    DatasetMeta,
    ImageJob,
    ImageResult,
    SkipImage,
    check_out_dir,
    dt_path,
    encode_instance,
    run_prepare,
)
from mtlcli.data.targets import box_mask
from mtlcli.data.voc import box_dt_bins, read_image_size, refuse_out_inside
from mtlcli.errors import UserError

MOT_CLASSES = ["pedestrian"]


def read_gt(path: Path, problems: dict[int, list[tuple[int, str]]] | None = None) -> dict[int, list[list[float]]]:
    """gt.txt -> {frame: [[x0, y0, x1, y1], ...]} in 0-based pixel-edge coordinates (x1, y1 exclusive),
    rows with conf == 0 dropped. A malformed row is a UserError naming the line. A box that cannot be an
    object (a negative width or height, a coordinate that is not finite) is left out, and
    `problems[frame]` (when given) gets (line number, why) for it, to be named in the prepare summary."""
    boxes: dict[int, list[list[float]]] = defaultdict(list)
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            frame, _, x, y, w, h, conf = (float(v) for v in line.split(",")[:7])
        except ValueError:
            raise UserError(
                f"{path} line {lineno}: expected 'frame,id,x,y,w,h,conf,...' numbers, got {line.strip()[:60]!r} "
                f"— fix or remove the line"
            ) from None
        if conf == 0:
            continue
        why = None
        if not all(math.isfinite(v) for v in (frame, x, y, w, h)):
            why = "a coordinate that is not a finite number"
        elif w < 0 or h < 0:
            why = f"negative {'width' if w < 0 else 'height'} {w if w < 0 else h:g}"
        if why is not None:
            if problems is not None and math.isfinite(frame):
                problems.setdefault(int(frame), []).append((lineno, why))
            continue
        boxes[int(frame)].append([x - 1, y - 1, x - 1 + w, y - 1 + h])
    return boxes


def prepare_mot15_image(job: ImageJob, out: Path) -> ImageResult:
    """Per-image work (runs in a worker). payload: image (absolute path), boxes ([[x0, y0, x1, y1]] as
    read_gt gives them), sequence, frame."""
    p = job.payload
    h, w = read_image_size(p["image"], p.get("verify", False))
    annotations: list[dict[str, Any]] = []
    boxes = []
    for box in p["boxes"]:
        mask = box_mask(box, (h, w))
        if mask.any():
            annotations.append(encode_instance(mask, 1, 0))
            boxes.append(box)
    if not annotations:
        raise SkipImage("no ground truth: every gt.txt box of this frame lies outside the image")
    save_indexed_png(dt_path(out, job.split, job.stem), box_dt_bins(boxes, (h, w)), DT_PALETTE)
    return ImageResult(
        job.split,
        job.file_name,
        job.stem,
        height=h,
        width=w,
        annotations=annotations,
        extra={"sequence": p["sequence"], "frame_id": p["frame"]},
    )


def read_seqinfo(seq: Path) -> tuple[str, str]:
    """(image folder name, image extension) from seqinfo.ini, MOT15's img1 / .jpg where there is none."""
    ini = seq / "seqinfo.ini"
    if not ini.is_file():
        return "img1", ".jpg"
    parser = configparser.ConfigParser()
    try:
        parser.read(ini)
        section = parser["Sequence"]
        return section.get("imDir", "img1"), section.get("imExt", ".jpg")
    except (configparser.Error, KeyError) as exc:
        raise UserError(f"{ini} is not a valid seqinfo.ini ({exc}) — fix it or remove it (MOT15 needs none)") from None


def sequence_jobs(src: Path, seq: Path, val_fraction: float) -> tuple[list[ImageJob], list[ImageResult]]:
    """Jobs for the frames of one sequence (train, then the last val_fraction as val) and the frames
    skipped for lack of ground truth."""
    im_dir, im_ext = read_seqinfo(seq)
    img_dir = seq / im_dir
    if not img_dir.is_dir():
        raise UserError(f"{img_dir} is missing — each MOT15 sequence needs its frames in {im_dir}/")
    gt_file = seq / "gt" / "gt.txt"
    if not gt_file.is_file():
        raise UserError(f"{gt_file} is missing — prepare the MOT15 train sequences, which carry ground truth")
    frames = []
    for f in img_dir.iterdir():
        if f.suffix.lower() == im_ext.lower():
            if not f.stem.isdigit():
                raise UserError(f"{f}: MOT frames are named by number (000001{im_ext}); rename or remove this file")
            frames.append((int(f.stem), f))
    if not frames:
        raise UserError(f"{img_dir} holds no {im_ext} frames — extract the MOT15 images into it")
    frames.sort()
    problems: dict[int, list[tuple[int, str]]] = {}
    boxes = read_gt(gt_file, problems)
    n_val = math.floor(len(frames) * val_fraction + 0.5)
    jobs, skipped = [], []
    for i, (frame, path) in enumerate(frames):
        split = "train" if i < len(frames) - n_val else "val"
        file_name = path.relative_to(src).as_posix()
        stem = f"{seq.name}_{path.stem}"
        gt_name = gt_file.relative_to(src).as_posix()
        skipped += [  # boxes left out of this frame, named in the summary (refused under --strict)
            ImageResult(split, f"{gt_name} line {line} (frame {frame})", stem, skipped=f"{why}: box left out")
            for line, why in problems.get(frame, [])
        ]
        if not boxes.get(frame):
            skipped.append(
                ImageResult(
                    split, file_name, stem, skipped="no ground truth: no gt.txt row (with conf != 0) for this frame"
                )
            )
            continue
        jobs.append(
            ImageJob(
                split,
                file_name,
                stem,
                {"image": str(path), "boxes": boxes[frame], "sequence": seq.name, "frame": frame},
            )
        )
    return jobs, skipped


def prepare_mot15(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.2,
    workers: int | None = None,
    strict: bool = False,
    force: bool = False,
    verify: bool = False,
) -> dict:
    """Write the prepared MOT15 dataset (module docstring) to `out`; returns run_prepare's summary.
    `verify`: decode every image fully (default: header and end-of-stream checks only)."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise UserError(f"{src}: no such folder — give the MOT15 root that holds train/<sequence>/")
    src = src.resolve()
    if not 0 <= val_fraction < 1:
        raise UserError(
            f"val_fraction {val_fraction} is outside [0, 1) — give the share of each sequence's frames kept for val, "
            "e.g. 0.2"
        )
    train = src / "train"
    if not train.is_dir():
        raise UserError(
            f"{src} has no train/ folder — give the MOT15 root (2DMOT2015/) holding train/<sequence>/img1 and gt/gt.txt"
        )
    seqs = sorted(p for p in train.iterdir() if p.is_dir())
    if not seqs:
        raise UserError(f"{train} holds no sequence folders — extract the MOT15 train sequences into it")
    jobs: list[ImageJob] = []
    skipped: list[ImageResult] = []
    for seq in seqs:
        j, s = sequence_jobs(src, seq, val_fraction)
        jobs += j
        skipped += s

    refuse_out_inside(out, [src])
    out = check_out_dir(out, force)
    splits = ["train", "val"] if val_fraction > 0 else ["train"]
    meta = DatasetMeta(
        name="mot15", source=str(src), splits=splits, det_classes=list(MOT_CLASSES), seg_classes=[], palette=[]
    )
    from mtlcli.data.integrity import mark_verify

    mark_verify(jobs, verify)
    return run_prepare(out, meta, jobs, prepare_mot15_image, workers=workers, strict=strict, pre_skipped=skipped)
