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
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_png, read_file
from torchvision.transforms.v2 import functional as F

from mtlcli.data.cache import RamCache, cache_keys
from mtlcli.data.images import ImageError, decode_rgb_tensor
from mtlcli.data.integrity import png_chunks_intact
from mtlcli.data.prepared import IGNORE_INDEX, DatasetMeta, dt_path, instances_path, read_label_png, semantic_path
from mtlcli.errors import UserError

# torchvision 0.29 flags its image codecs as deprecated in favour of TorchCodec (not a dependency here);
# they are the fastest decoders available to this project, so the per-call warning is silenced.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)

Sample = tuple[tv_tensors.Image, dict[str, Any]]
# The targets that cost decoding work (boxes, labels and crowd flags are read from the JSON, always).
DENSE_TARGETS = ("masks", "semantic", "dt")
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
        raise UserError(
            f"label_map.{key} names {', '.join(map(repr, unknown))}, which the dataset does not have; "
            f"its {key} classes are: {', '.join(classes)}"
        )
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
        det_ids = {
            k: det_classes.index(det_map[name]) + 1
            for k, name in enumerate(meta.det_classes, start=1)
            if name in det_map
        }

    seg_map = _mapping(label_map, "seg", meta.seg_classes, "ignored (255)")
    if seg_map is None:
        return LabelMap(det_classes, list(meta.seg_classes), [list(c) for c in meta.palette], det_ids, None)
    seg_classes = list(dict.fromkeys(seg_map.values()))
    if len(seg_classes) > IGNORE_INDEX:
        raise UserError(
            f"the seg label map has {len(seg_classes)} classes; a mapped dataset holds at most {IGNORE_INDEX} "
            f"(0..{IGNORE_INDEX - 1}, {IGNORE_INDEX} = ignore) — merge more classes"
        )
    # a wide dataset (uint16 maps, 65535 = ignore) maps every stored value; its ignore value stays ignored
    lut = torch.full((65536 if meta.ignore_index > IGNORE_INDEX else 256,), IGNORE_INDEX, dtype=torch.int64)
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
      semantic tv_tensors.Mask int64 [H, W], indices into `ds.seg_classes`, `ds.meta.ignore_index` = ignore:
               255, or 65535 for a dataset of more than 255 seg classes (uint16 maps) without a seg
               label map (all ignore when the split has no semantic PNG for the image)
      dt       tv_tensors.Mask int64 [H, W], distance-transform bins 0..len(dt_thresholds)+1 (all 0 when
               the split has no dt PNG for the image)
      image_id int (the COCO image id);  stem str;  orig_size (H, W) of the source image
    `transforms(image, target)`, when given, is applied last (on uint8 image and maps).

    `targets` names the dense targets to decode, a subset of `DENSE_TARGETS` = (masks, semantic, dt);
    None (the default) decodes all three, a training loader passes what the model's loss reads
    (`loss_targets`), so that e.g. a segmentation network never pays for instance masks. Boxes, labels
    and crowd flags come from the JSON and are always there. `compact=True` keeps the image uint8 (0..255)
    and `semantic` / `dt` uint8, 4-8x less to copy between loader processes and to the device; the
    training loop converts the image on the device (`mtlcli.engine.data.to_device`). With `ds.ram` set
    (`mtlcli.data.cache.fill_ram_cache`) the image and the dense maps are copied from memory instead of
    decoded from their files: the same tensors, then the same transforms.

    `label_map` merges or drops classes: `{"seg": {src: dst}, "det": {src: dst}}` (see
    `resolve_label_map`). `ds.meta`, `ds.det_classes`, `ds.seg_classes`, `ds.palette` and `ds.coco`
    all describe the mapped classes.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Transform | None = None,
        label_map: Mapping[str, Any] | None = None,
        targets: Iterable[str] | None = None,
        compact: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.targets = check_targets(targets)
        self.compact = compact
        source_meta = DatasetMeta.load(self.root)
        source_meta.check_split(self.root, split)
        self.source = Path(source_meta.source)
        if not self.source.is_dir():
            raise UserError(
                f"{self.source}: the image source of {self.root} is missing (images are read from there, "
                "never copied) — put it back or prepare the dataset again"
            )
        self.label_map = resolve_label_map(source_meta, label_map)
        self.meta = dataclasses.replace(
            source_meta,
            det_classes=self.label_map.det_classes,
            seg_classes=self.label_map.seg_classes,
            palette=self.label_map.palette,
            # a seg label map gives uint8 classes with 255 = ignore, also from a wide (uint16) dataset
            ignore_index=IGNORE_INDEX if self.label_map.seg_lut is not None else source_meta.ignore_index,
        )
        # pycocotools COCO of the split with the mapped category ids (1..K in `det_classes` order)
        self.coco = _quiet_coco(self._load_instances())
        self.ids: list[int] = [img["id"] for img in self.coco.dataset["images"]]
        lut = self.label_map.seg_lut
        self._seg_lut_u8 = lut.to(torch.uint8) if lut is not None else None
        self.ram: RamCache | None = None  # decoded pixels in memory (data.cache = "ram"; mtlcli.data.cache)

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
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError) as exc:
            raise UserError(
                f"{path} is not a COCO instances file ({type(exc).__name__}: {exc}) — prepare the dataset again"
            ) from None
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

    def check_label_files(self) -> None:
        """Refuse (one UserError line) a split whose semantic label files, written by `mtl prepare`, are not
        all there: images marked `"semantic": true` in instances.json (every image of a Cityscapes-layout
        dataset, which prepare always labels) without their PNG. An image prepare gave no label stays an
        all-ignore target (DESIGN.md §3)."""
        always = self.meta.name == "cityscapes" and self.split not in getattr(self.meta, "unlabelled", [])
        missing = [
            path
            for info in self.coco.dataset["images"]
            if info.get("semantic") or always
            for path in [semantic_path(self.root, self.split, info.get("stem") or Path(info["file_name"]).stem)]
            if not path.is_file()
        ]
        if missing:
            raise UserError(
                f"{missing[0]} is missing ({len(missing)} of the {len(self.ids)} images of split {self.split!r} lack "
                "the semantic label file prepare wrote) — prepare the dataset again (mtl prepare ... --force)"
            )

    def image_info(self, index: int) -> dict[str, Any]:
        """The COCO `images` entry of sample `index` (id, file_name, height, width, stem, ...)."""
        return self.coco.imgs[self.ids[index]]

    def read_image(self, info: dict[str, Any], dtype: torch.dtype | None = None) -> tv_tensors.Image:
        """The image of a COCO `images` entry as RGB [3, H, W]: float32 in 0..1 (or `dtype`; uint8 keeps 0..255).

        Decoded by `mtlcli.data.images.decode_rgb_tensor` (torchvision.io's libjpeg-turbo / libpng where they
        can, PIL for exotic modes; EXIF orientation applied, 16-bit images scaled to 8 bits).
        """
        path = self.source / info["file_name"]
        try:
            image = decode_rgb_tensor(read_file(str(path)), path)  # the one reader (`mtlcli.data.images`)
        except (RuntimeError, OSError, ImageError) as exc:  # missing, truncated or not an image
            raise UserError(f"{exc} — restore the file or prepare the dataset again without it") from None
        h, w = info.get("height") or image.shape[-2], info.get("width") or image.shape[-1]
        if tuple(image.shape[-2:]) != (h, w):
            raise UserError(
                f"{path} is {image.shape[-2]}x{image.shape[-1]} but instances.json says {h}x{w} — the "
                "source changed since `mtl prepare`; prepare the dataset again"
            )
        dtype = dtype or torch.float32
        return tv_tensors.Image(image if dtype == torch.uint8 else F.to_dtype(image, dtype, scale=True))

    def _read_map(self, path: Path, shape: tuple[int, int], what: str) -> torch.Tensor | None:
        """A uint8 label PNG as uint8 [H, W] (torchvision.io; 16-bit or palette files through PIL)."""
        if not path.is_file():
            return None
        try:
            data = read_file(str(path))
            # IHDR: bit depth at byte 24, colour type at 25. libpng hands palette maps of 1/2/4 bits (the dt
            # maps) to torchvision still packed: only 8-bit grey (0) or palette (3) maps take this path.
            if data.numel() < 26 or int(data[24]) != 8 or int(data[25]) not in (0, 3):
                raise RuntimeError("not an 8-bit one-channel PNG")
            if not png_chunks_intact(data):  # damaged: PIL raises where libpng would crash the process
                raise RuntimeError("damaged PNG")
            array = decode_png(data, mode=ImageReadMode.UNCHANGED)[0]
        except RuntimeError:
            try:
                stored = read_label_png(path)
                # 16-bit maps (more than 255 seg classes, 65535 = ignore): int64, values as stored
                array = torch.from_numpy(stored.astype(np.int64) if stored.dtype != np.uint8 else stored)
            except (OSError, ValueError, SyntaxError) as exc:
                raise UserError(f"{path}: cannot read {what} PNG ({exc}) — prepare the dataset again") from None
        if tuple(array.shape) != tuple(shape):
            raise UserError(f"{path} is {tuple(array.shape)} but its image is {shape} — prepare the dataset again")
        return array

    def _masks(self, anns: list[dict[str, Any]], h: int, w: int) -> torch.Tensor:
        masks = torch.zeros((len(anns), h, w), dtype=torch.uint8)
        for i, ann in enumerate(anns):
            seg = ann.get("segmentation")
            if isinstance(seg, dict) and isinstance(seg.get("counts"), str) and list(seg.get("size", ())) == [h, w]:
                decode_rle_into(seg["counts"], masks[i].numpy())
            else:  # polygons or uncompressed RLE: pycocotools
                from pycocotools import mask as mask_utils

                masks[i] = torch.from_numpy(mask_utils.decode(self.coco.annToRLE(ann)))
        return masks

    def decode(self, index: int) -> dict[str, torch.Tensor]:
        """The pixels of sample `index` as decoded from its files, before any transform: "image" uint8
        [3, H, W] and, among `targets`, "semantic" (label map applied; all 255 without a PNG) and "dt"
        (all 0 without a PNG), uint8 [H, W]. What `data.cache = "ram"` keeps (`mtlcli.data.cache`)."""
        info = self.image_info(index)
        image = self.read_image(info, torch.uint8).as_subclass(torch.Tensor)
        h, w = image.shape[-2:]
        stem = info.get("stem") or Path(info["file_name"]).stem
        out = {"image": image}
        if "semantic" in self.targets:
            semantic = self._read_map(semantic_path(self.root, self.split, stem), (h, w), "semantic")
            if semantic is None:
                wide = self.meta.ignore_index > IGNORE_INDEX
                semantic = torch.full((h, w), self.meta.ignore_index, dtype=torch.int64 if wide else torch.uint8)
            elif self._seg_lut_u8 is not None:  # the label map's seg_lut as uint8
                # np.take on uint8 indices: 3.7 ms per 1024x2048 map against 11.8 ms for fancy indexing
                semantic = (
                    self._seg_lut_u8[semantic.long()]
                    if semantic.dtype != torch.uint8
                    else torch.from_numpy(np.take(self._seg_lut_u8.numpy(), semantic.numpy()))
                )
            out["semantic"] = semantic
        if "dt" in self.targets:
            dt = self._read_map(dt_path(self.root, self.split, stem), (h, w), "dt")
            out["dt"] = dt if dt is not None else torch.zeros((h, w), dtype=torch.uint8)
        return out

    def __getitem__(self, index: int) -> Sample:
        info = self.image_info(index)
        wanted = self.targets
        dense = cache_keys(wanted)
        pixels = self.ram.get(index, dense) if self.ram is not None else None
        if pixels is None:
            pixels = self.decode(index)
        image = tv_tensors.Image(pixels["image"])
        h, w = image.shape[-2:]
        stem = info.get("stem") or Path(info["file_name"]).stem
        anns = self.coco.imgToAnns.get(info["id"], [])

        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO [x, y, w, h] -> [x1, y1, x2, y2]
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
        }
        if "masks" in wanted:
            target["masks"] = tv_tensors.Mask(self._masks(anns, h, w))
        for key in dense:
            target[key] = tv_tensors.Mask(pixels[key])
        target.update({"image_id": int(info["id"]), "stem": stem, "orig_size": (int(h), int(w))})
        if self.transforms is not None:
            # the compact (training) form leaves a colour jitter to the device, with the float conversion
            defer = {"defer_color": True} if self.compact and getattr(self.transforms, "defers_color", False) else {}
            image, target = self.transforms(image, target, **defer)
        # The transforms work on uint8 (8-bit sources); the contract's types are restored last.
        if not self.compact:
            image = tv_tensors.Image(F.to_dtype(image.as_subclass(torch.Tensor), torch.float32, scale=True))
            for key in ("semantic", "dt"):
                if key in target:
                    target[key] = tv_tensors.Mask(target[key].as_subclass(torch.Tensor).to(torch.int64))
        return image, target


def check_targets(targets: Iterable[str] | None) -> frozenset[str]:
    """The dense targets to decode: None = all of `DENSE_TARGETS`; unknown names are a UserError.
    ("boxes" / "labels" are accepted and ignored: they are always there.)"""
    if targets is None:
        return frozenset(DENSE_TARGETS)
    if isinstance(targets, str):
        targets = [targets]
    names = set(targets) - {"boxes", "labels"}
    unknown = sorted(names - set(DENSE_TARGETS))
    if unknown:
        raise UserError(
            f"unknown target(s) {', '.join(unknown)} in data.targets; valid: {', '.join(DENSE_TARGETS)} "
            "(boxes and labels are always loaded)"
        )
    return frozenset(names)


def loss_targets(model: torch.nn.Module) -> frozenset[str]:
    """The dense targets (`DENSE_TARGETS` subset) that `model`'s training loss reads.

    A model may declare them as an attribute `loss_targets` (names); otherwise the family decides:
    a two-stage detector reads instance masks when it has a mask head that does not train on filled
    boxes, plus the dense maps of its auxiliary heads (DATNet: `dt` / `semantic` where the head
    exists); a single-shot model reads `semantic` where it has a segmentation head; LadderDenseNet and
    the interdependent MTL model read `semantic`. An unknown model gets everything (safe, slower).
    """
    model = getattr(model, "module", model)  # DDP
    declared = getattr(model, "loss_targets", None)
    if declared is not None:
        return check_targets(declared)
    from mtlcli.models.rcnn import TwoStageDetector

    if isinstance(model, TwoStageDetector):
        keys = set()
        if model.has_masks and not model.boxes_as_masks:
            keys.add("masks")
        heads = getattr(model, "dense_heads", None)
        if heads is not None:  # DATNet: a dense key only where its head exists ("seg" reads "semantic")
            keys |= {"semantic" if name == "seg" else name for name in heads}
        else:
            keys |= set(model.dense_keys)
        return check_targets(keys)
    if hasattr(model, "seg_head") and hasattr(model, "det_head"):  # SSDMultiTask (IvaNet, BlitzNet, SSD300)
        return frozenset({"semantic"} if model.seg_head is not None else set())
    from mtlcli.models.imtl import InterdependentMTL
    from mtlcli.models.ladder import LadderDenseNet

    if isinstance(model, (LadderDenseNet, InterdependentMTL)):
        return frozenset({"semantic"})
    return frozenset(DENSE_TARGETS)


def rle_counts(counts: str | bytes) -> np.ndarray:
    """The run lengths [n] int64 of a compressed COCO RLE string (pycocotools' `rleFrString`, vectorised)."""
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero((c & 0x20) == 0)  # the last character of each number
    starts = np.concatenate(([0], ends[:-1] + 1))
    k = ends - starts + 1  # characters per number
    shift = 5 * (np.arange(c.size) - np.repeat(starts, k))
    x = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    x = np.where(negative, x | (-1 << (5 * k)), x)
    # counts[m] += counts[m - 2] for m > 2: running sums over the odd and the even (from 2) positions
    out = x.copy()
    out[1::2] = np.cumsum(x[1::2])
    out[2::2] = np.cumsum(x[2::2])
    return out


def decode_rle_into(counts: str | bytes, out: np.ndarray) -> None:
    """Decode a compressed COCO RLE into the zero-filled uint8 array `out` [H, W], touching only the
    columns that hold foreground (RLE runs go down columns): the cost follows the instance's extent,
    not the image's, which is what makes masks cheap on 2048x1024 frames."""
    h, w = out.shape
    runs = rle_counts(counts)
    bounds = np.concatenate(([0], np.cumsum(runs)))
    ones = np.flatnonzero(runs[1::2]) * 2 + 1  # foreground runs (odd positions) of nonzero length
    if ones.size == 0:
        return
    lo = int(bounds[ones[0]]) // h * h  # first and past-the-last foreground column, in flat units
    hi = min(-(-int(bounds[ones[-1] + 1]) // h) * h, h * w)
    lengths = np.diff(np.clip(bounds, lo, hi))
    flat = np.repeat((np.arange(runs.size) & 1).astype(np.uint8), lengths)
    out[:, lo // h : hi // h] = flat.reshape(-1, h).T


def collate(batch: list[Sample]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """DataLoader collate: images and targets stay lists (sizes differ), as the models expect."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)
