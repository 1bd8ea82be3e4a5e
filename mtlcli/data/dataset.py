"""Read a prepared dataset (DESIGN.md §3) as `(image, target)` pairs of torchvision `tv_tensors`.

    ds = PreparedDataset(DATA, "train", transforms=build_transforms("ssd", train=True), label_map=None)
    image, target = ds[0]

Everything spatial in a sample is a `tv_tensors` type, so that `torchvision.transforms.v2` moves the
image, boxes, instance masks, semantic map and distance-transform map together. An optional label map
merges or drops classes; `ds.coco` is the split's ground truth as pycocotools sees it after that map,
so `COCOeval` can score predictions whose labels follow `ds.det_classes`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from mtlcli.data.prepared import IGNORE_INDEX, DatasetMeta, dt_path, instances_path, read_label_png, semantic_path
from mtlcli.errors import UserError

Sample = tuple[tv_tensors.Image, dict[str, Any]]
Transform = Callable[[tv_tensors.Image, dict[str, Any]], Sample]


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """A resolved label map: the new class lists and the lookups from source ids to new ids.

    `det_ids[k]` is the new category id (1..K') of source category k (1..K), absent when dropped;
    `seg_lut` [256] int64 maps source class indices to new ones (IGNORE_INDEX where unlisted).
    """

    det_classes: list[str]
    seg_classes: list[str]
    palette: list[list[int]]
    det_ids: dict[int, int]
    seg_lut: torch.Tensor | None


def _mapping(label_map: Mapping[str, Any], key: str, classes: list[str], unlisted: str) -> dict[str, str] | None:
    table = label_map.get(key)
    if not table:  # absent or empty: the classes stay as they are
        return None
    if not isinstance(table, Mapping):
        raise UserError(f"label_map.{key} must be a table of source class -> new class, got {table!r}")
    unknown = [src for src in table if src not in classes]
    if unknown:
        raise UserError(f"label_map.{key} names {', '.join(map(repr, unknown))}, which the dataset does not have; "
                        f"its {key} classes are: {', '.join(classes)}")
    bad = [src for src, dst in table.items() if not isinstance(dst, str) or not dst]
    if bad:
        raise UserError(f"label_map.{key}.{bad[0]} must be a non-empty class name (unlisted classes are {unlisted})")
    return dict(table)


def resolve_label_map(meta: DatasetMeta, label_map: Mapping[str, Any] | None) -> LabelMap:
    """Resolve `{"seg": {src: dst}, "det": {src: dst}}` against a dataset's classes.

    New class lists follow the first appearance of each new name among the mapping's values. Unlisted
    seg classes become IGNORE_INDEX, unlisted det classes are dropped. A new seg class takes the palette
    colour of its first source class. A missing or empty table leaves that task unchanged.
    """
    label_map = label_map or {}
    if not isinstance(label_map, Mapping):
        raise UserError(f"label_map must be a table with 'seg' and/or 'det' entries, got {label_map!r}")
    extra = sorted(set(label_map) - {"seg", "det"})
    if extra:
        raise UserError(f"label_map has unknown entries {', '.join(extra)}; only 'seg' and 'det' are allowed")

    det_map = _mapping(label_map, "det", meta.det_classes, "dropped")
    if det_map is None:
        det_classes = list(meta.det_classes)
        det_ids = {k: k for k in range(1, len(det_classes) + 1)}
    else:
        det_classes = list(dict.fromkeys(det_map.values()))
        det_ids = {k: det_classes.index(det_map[name]) + 1
                   for k, name in enumerate(meta.det_classes, start=1) if name in det_map}

    seg_map = _mapping(label_map, "seg", meta.seg_classes, "ignored (255)")
    if seg_map is None:
        return LabelMap(det_classes, list(meta.seg_classes), [list(c) for c in meta.palette], det_ids, None)
    seg_classes = list(dict.fromkeys(seg_map.values()))
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    palette: list[list[int] | None] = [None] * len(seg_classes)
    for k, name in enumerate(meta.seg_classes):
        if name in seg_map:
            new = seg_classes.index(seg_map[name])
            lut[k] = new
            if palette[new] is None:
                palette[new] = list(meta.palette[k]) if k < len(meta.palette) else [0, 0, 0]
    return LabelMap(det_classes, seg_classes, palette, det_ids, lut)  # type: ignore[arg-type]


def _quiet_coco(dataset: dict[str, Any]):
    """A pycocotools COCO from an in-memory dict, without its progress prints on stdout."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class PreparedDataset(torch.utils.data.Dataset):
    """One split of a prepared dataset.

    `ds[i]` returns `(image, target)`:
      image    tv_tensors.Image float32 [3, H, W], RGB in 0..1, read from `meta.source / file_name`
      boxes    tv_tensors.BoundingBoxes XYXY float32 [N, 4] in pixels of that image (x2 = x + w, so a box
               covers pixels x..x2-1), canvas_size (H, W)
      labels   int64 [N], 1..K in `ds.det_classes` order;  iscrowd int64 [N] (1 = crowd/group/difficult)
      masks    tv_tensors.Mask uint8 [N, H, W] (0/1), decoded from the RLE in instances.json
      semantic tv_tensors.Mask int64 [H, W], indices into `ds.seg_classes`, 255 = ignore (all 255 when
               the split has no semantic PNG for the image)
      dt       tv_tensors.Mask int64 [H, W], distance-transform bins 0..len(dt_thresholds)+1 (all 0 when
               the split has no dt PNG for the image)
      image_id int (the COCO image id);  stem str;  orig_size (H, W) of the source image
    `transforms(image, target)`, when given, is applied last.

    `label_map` merges or drops classes: `{"seg": {src: dst}, "det": {src: dst}}` (see
    `resolve_label_map`). `ds.meta`, `ds.det_classes`, `ds.seg_classes`, `ds.palette` and `ds.coco`
    all describe the mapped classes.
    """

    def __init__(self, root: str | Path, split: str, transforms: Transform | None = None,
                 label_map: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        source_meta = DatasetMeta.load(self.root)
        source_meta.check_split(self.root, split)
        self.source = Path(source_meta.source)
        if not self.source.is_dir():
            raise UserError(f"{self.source}: the image source of {self.root} is missing (images are read from there, "
                            "never copied) — put it back or prepare the dataset again")
        self.label_map = resolve_label_map(source_meta, label_map)
        self.meta = dataclasses.replace(source_meta, det_classes=self.label_map.det_classes,
                                        seg_classes=self.label_map.seg_classes, palette=self.label_map.palette)
        # pycocotools COCO of the split with the mapped category ids (1..K in `det_classes` order)
        self.coco = _quiet_coco(self._load_instances())
        self.ids: list[int] = [img["id"] for img in self.coco.dataset["images"]]

    @property
    def det_classes(self) -> list[str]:
        return self.meta.det_classes

    @property
    def seg_classes(self) -> list[str]:
        return self.meta.seg_classes

    @property
    def palette(self) -> list[list[int]]:
        return self.meta.palette

    def _load_instances(self) -> dict[str, Any]:
        path = instances_path(self.root, self.split)
        if not path.is_file():
            raise UserError(f"{path} is missing — prepare the dataset again")
        try:
            data = json.loads(path.read_text())
            images, anns = data["images"], data["annotations"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a COCO instances file ({type(exc).__name__}: {exc}) — prepare the dataset again") from None
        ids = self.label_map.det_ids
        mapped = []
        for ann in anns:
            new_id = ids.get(ann["category_id"])
            if new_id is not None:  # classes left out of a det label map are dropped with their crowd regions
                mapped.append({**ann, "category_id": new_id})
        categories = [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(self.det_classes, start=1)]
        return {"info": data.get("info", {}), "images": images, "annotations": mapped, "categories": categories}

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, index: int) -> dict[str, Any]:
        """The COCO `images` entry of sample `index` (id, file_name, height, width, stem, ...)."""
        return self.coco.imgs[self.ids[index]]

    def read_image(self, info: dict[str, Any]) -> tv_tensors.Image:
        path = self.source / info["file_name"]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:  # missing, truncated or not an image
            raise UserError(f"{path}: cannot read image ({type(exc).__name__}: {exc}) — restore the file or prepare "
                            "the dataset again without it") from None
        h, w = info.get("height") or rgb.height, info.get("width") or rgb.width
        if (rgb.height, rgb.width) != (h, w):
            raise UserError(f"{path} is {rgb.height}x{rgb.width} but instances.json says {h}x{w} — the source changed "
                            "since `mtl prepare`; prepare the dataset again")
        return tv_tensors.Image(F.to_dtype(F.pil_to_tensor(rgb), torch.float32, scale=True))

    def _read_map(self, path: Path, shape: tuple[int, int], what: str) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            array = read_label_png(path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise UserError(f"{path}: cannot read {what} PNG ({exc}) — prepare the dataset again") from None
        if array.shape != shape:
            raise UserError(f"{path} is {array.shape} but its image is {shape} — prepare the dataset again")
        return torch.from_numpy(array.astype(np.int64))

    def __getitem__(self, index: int) -> Sample:
        info = self.image_info(index)
        image = self.read_image(info)
        h, w = image.shape[-2:]
        stem = info.get("stem") or Path(info["file_name"]).stem
        anns = self.coco.imgToAnns.get(info["id"], [])

        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO [x, y, w, h] -> [x1, y1, x2, y2]
        if anns:
            from pycocotools import mask as mask_utils

            # one mask at a time: decoding all at once gives [H, W, N] whose copy to [N, H, W] costs more
            masks = torch.from_numpy(np.stack([mask_utils.decode(self.coco.annToRLE(a)) for a in anns]))
        else:
            masks = torch.zeros((0, h, w), dtype=torch.uint8)

        semantic = self._read_map(semantic_path(self.root, self.split, stem), (h, w), "semantic")
        if semantic is None:
            semantic = torch.full((h, w), IGNORE_INDEX, dtype=torch.int64)
        elif self.label_map.seg_lut is not None:
            semantic = self.label_map.seg_lut[semantic]
        dt = self._read_map(dt_path(self.root, self.split, stem), (h, w), "dt")
        if dt is None:
            dt = torch.zeros((h, w), dtype=torch.int64)

        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(masks),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "semantic": tv_tensors.Mask(semantic),
            "dt": tv_tensors.Mask(dt),
            "image_id": int(info["id"]),
            "stem": stem,
            "orig_size": (int(h), int(w)),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate(batch: list[Sample]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """DataLoader collate: images and targets stay lists (sizes differ), as the models expect."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
