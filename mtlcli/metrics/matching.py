"""Which image of a prepared split each saved prediction belongs to (`mtl eval --predictions`).

What `mtl predict` and `mtl eval --save-predictions` write is read as written:

    images.json       {"images": [{id, file_name, height, width, name}]}: every image predicted, even one
                      without detections; `name` is the name of its per-image files (semantic/<name>.png,
                      `mtlcli.data.prepared.output_name`)
    detections.json   COCO results, each with the `image_id` of its images.json entry and its `file_name`

The rules, in order:
1. A prediction's `image_id` is the split's (for data prepared from COCO-format files, the source file's own
   id, as `--save-predictions` and `mtl predict --data` write it).
2. A `file_name` it carries must name the same image. Where the ids disagree with the file names but the
   file names name images of the split, the ids are not the split's (`mtl predict` on plain files numbers
   them 1..N): every prediction is matched by its file name instead, and a note says so. A file name is
   matched as the split's file name exactly, else as a path ending in it, else by its base name where only
   one image of the split has it.
3. images.json lists what was predicted, so it must cover the split exactly: an image of the split it lacks,
   or an image it names that the split does not have, is refused with the counts and an example. Without
   images.json (COCO results from elsewhere) an image without detections is indistinguishable from one not
   predicted: the count of images without detections is reported as a note.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlcli.data.prepared import image_stem
from mtlcli.errors import UserError


def _norm(file_name: str) -> str:
    return str(file_name).replace("\\", "/").strip("/")


class FileNames:
    """The split's images by file name: exact relative name, a path ending in it, or a unique base name."""

    def __init__(self, images: list[dict[str, Any]]) -> None:
        self.exact = {_norm(im["file_name"]): im["id"] for im in images}
        self.base: dict[str, list[int]] = defaultdict(list)
        for im in images:
            self.base[_norm(im["file_name"]).rsplit("/", 1)[-1]].append(im["id"])

    def find(self, file_name: Any) -> int | None:
        if not isinstance(file_name, str) or not file_name:
            return None
        parts = _norm(file_name).split("/")
        for k in range(len(parts)):  # the longest tail of the path that is a file name of the split
            hit = self.exact.get("/".join(parts[k:]))
            if hit is not None:
                return hit
        ids = self.base.get(parts[-1], [])
        return ids[0] if len(ids) == 1 else None


@dataclass
class ImageMatch:
    """Prediction image id -> the split's image id; the per-image file name of each matched split image;
    whether an images.json said which images were predicted; notes for the user."""

    to_split: dict[Any, int]
    names: dict[int, str] = field(default_factory=dict)
    listed: bool = False
    notes: list[str] = field(default_factory=list)


def images_json(predictions: Path) -> Path | None:
    """The images.json that `mtl predict` / `--save-predictions` wrote beside the predictions, if any."""
    folder = predictions if predictions.is_dir() else predictions.parent
    if predictions.is_file() and predictions.name != "detections.json":
        return None  # a results file of its own: a neighbouring images.json need not belong to it
    path = folder / "images.json"
    return path if path.is_file() else None


def read_images_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}) — write it again with `mtl predict`") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(f'{path} holds no "images" list; it is what `mtl predict` writes: {{"images": [...]}}')
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not _is_id(im.get("id")):
            raise UserError(f"{path}: images[{i}] needs an id (and a file_name)")
    return images


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _example(gt: Any, image_id: int) -> str:
    return str(gt.coco.imgs[image_id]["file_name"])


def match_images(
    gt: Any,
    predictions: Path,
    results: list[dict[str, Any]] | None,
    source_ids: dict[int, Any] | None = None,
) -> ImageMatch:
    """Match the predicted images to the split `gt` (`mtlcli.metrics.predictions.GroundTruth`) by the rules
    above. `results`: the COCO results already read (None where there is no detections.json);
    `source_ids`: prepared id -> the source's image id for COCO-format data (`source_id_maps`)."""
    listing = images_json(predictions)
    where = str(listing) if listing is not None else str(predictions)
    if listing is not None:
        listed = read_images_json(listing)
        entries = [(im["id"], im.get("file_name"), im.get("name")) for im in listed]
    else:
        seen: dict[Any, tuple[Any, Any, Any]] = {}
        for r in results or []:
            if isinstance(r, dict) and _is_id(r.get("image_id")):
                seen.setdefault(r["image_id"], (r["image_id"], r.get("file_name"), None))
        entries = list(seen.values())
    if results:  # each detection's file_name must agree with its image's
        files = {pid: fn for pid, fn, _ in entries}
        for i, r in enumerate(results):
            if (
                isinstance(r, dict)
                and r.get("file_name") is not None
                and _is_id(r.get("image_id"))
                and r["image_id"] in files
            ):
                listed_name = files[r["image_id"]]
                if listed_name is not None and _norm(listed_name) != _norm(r["file_name"]):
                    raise UserError(
                        f"{predictions}: detection {i} (image_id {r['image_id']}) names {r['file_name']}, but image_id "
                        f"{r['image_id']} is {listed_name} in {where} — the ids and file names do not belong together"
                    )
    ids = {v: k for k, v in source_ids.items()} if source_ids else {i: i for i in gt.coco.imgs}
    names = FileNames(gt.images())
    by_id = {pid: ids.get(pid) for pid, _, _ in entries}
    by_name = {pid: names.find(fn) for pid, fn, _ in entries if fn is not None}
    unknown_names = [fn for pid, fn, _ in entries if fn is not None and by_name[pid] is None]
    if unknown_names:
        raise UserError(
            f"{where} names {len(unknown_names)} image(s) that split {gt.split!r} of {gt.root} does not have "
            f"(e.g. {unknown_names[0]}) — predict that split (`mtl predict --run RUN --data {gt.root} "
            f"--split {gt.split}`) or evaluate the split these images belong to"
        )
    matched = {pid: hit for pid, hit in by_name.items() if hit is not None}  # every name matched (checked above)
    disagree = [pid for pid, hit in matched.items() if by_id[pid] != hit]
    match = ImageMatch({}, listed=listing is not None)
    if not disagree:
        match.to_split = {pid: i for pid, i in by_id.items() if i is not None}
        bad = [pid for pid, i in by_id.items() if i is None]
        if bad:
            raise UserError(
                f"{where}: {len(bad)} of {len(by_id)} image ids are not in split {gt.split!r} of {gt.root} "
                f"(e.g. image_id {bad[0]!r}) — use the ids of its instances.json, or give each prediction its file_name"
            )
    else:
        nameless = [pid for pid, fn, _ in entries if fn is None]
        pid = disagree[0]
        if nameless:
            raise UserError(
                f"{where}: image_id {pid!r} is named {dict((p, f) for p, f, _ in entries)[pid]}, which is "
                f"{_example(gt, matched[pid])} (image_id {matched[pid]}) in split {gt.split!r}, and "
                f"{len(nameless)} prediction(s) carry no file_name — the ids are not the split's; give every "
                "prediction its file_name or the split's ids"
            )
        match.to_split = dict(matched)
        match.notes.append(
            f"the image ids of {where} are not those of split {gt.split!r} ({len(disagree)} of {len(entries)} "
            f"differ, e.g. image_id {pid!r} is {_example(gt, matched[pid])}, image_id {matched[pid]} there): "
            "matched by file name"
        )
    taken: dict[int, Any] = {}
    for pid, i in match.to_split.items():
        if i in taken:
            raise UserError(
                f"{where}: image ids {taken[i]!r} and {pid!r} are the same image {_example(gt, i)} of split "
                f"{gt.split!r} — predict each image once"
            )
        taken[i] = pid
    for pid, _, name in entries:
        i = match.to_split[pid]
        match.names[i] = str(name) if name else image_stem(gt.coco.imgs[i])
    missing = [i for i in sorted(gt.coco.imgs) if i not in taken]
    if missing and match.listed:
        raise UserError(
            f"{where} covers {len(taken)} of the {len(gt.coco.imgs)} images of split {gt.split!r} "
            f"({len(missing)} not predicted, e.g. {_example(gt, missing[0])}) — predict the whole split "
            f"(`mtl predict --run RUN --data {gt.root} --split {gt.split}`)"
        )
    if missing and results is not None:
        match.notes.append(
            f"{len(missing)} of the {len(gt.coco.imgs)} images of split {gt.split!r} have no detections in "
            f"{predictions} (e.g. {_example(gt, missing[0])}); they count as missed — write images.json (as "
            "`mtl predict` does) to have the coverage checked"
        )
    return match
