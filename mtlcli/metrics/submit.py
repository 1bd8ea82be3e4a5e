"""The files each evaluation server takes, written from a model's outputs (`mtl eval --submit DIR`).

    COCO (datasets prepared from COCO-format files; the source's own image and category ids):
      DIR/bbox/detections_<testset>_<name>_results.json   [{image_id, category_id, bbox [x, y, w, h], score}]
      DIR/bbox/detections_<testset>_<name>_results.zip    that JSON alone, at the root of the zip
      DIR/segm/detections_<testset>_<name>_results.json   + "segmentation" (RLE), where the model gives masks
      DIR/segm/detections_<testset>_<name>_results.zip
      <testset> = <split>2017 for COCO 2017 (test-dev2017, val2017), the split's name for other files;
      the bbox and segm results are two uploads to the server (one IoU type each).
    Cityscapes (the 19 trainId classes; instance classes by name):
      DIR/pixel/<city>_<seq>_<frame>_leftImg8bit_labelIds.png    uint8 labelIds (trainIds mapped back with
                                                                 cityscapesscripts' label table)
      DIR/instance/<city>_<seq>_<frame>_leftImg8bit_pred.txt     "masks/<file>.png <labelId> <score>" per line
      DIR/instance/masks/<...>_<k>.png                           uint8 binary mask (255 on the instance)
      DIR/pixel.zip, DIR/instance.zip                            the folders' files, paths relative to them
    PASCAL VOC (the devkit's result layout; the testset is `test` for test splits, else the split's name):
      DIR/results/VOC<year>/Segmentation/comp6_<testset>_cls/<image>.png   palette PNG, VOC colour map,
                                                                           class indices 0..20
      DIR/results/VOC<year>/Main/comp4_det_<testset>_<class>.txt           "<image> <score> <xmin> <ymin>
                                                                           <xmax> <ymax>", 1-based pixels
      DIR/results.tar.gz                                                   the results/ folder
      comp6 / comp4: the competitions "trained on any data" (the papers train on SBD or COCO too). For
      VOC2012 test, the segmentation files cover ImageSets/Segmentation/test.txt and the detection files
      ImageSets/Main/test.txt (each image's `voc_sets`).

Inferred (the servers' rules, not the papers'): at most 100 detections per image, the highest scoring
(COCO's evaluation reads 100); a pixel without a prediction (255) is written as background / labelId 0
("unlabeled", which the Cityscapes evaluation ignores); a mask is the model's mask above 0.5.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.data.prepared import IGNORE_INDEX, DatasetMeta
from mtlcli.errors import UserError

MAX_DETECTIONS = 100
IdMaps = tuple[dict[int, Any], dict[int, int]]  # (prepared image id -> source id, 1..K -> source category id)


def server_of(meta: DatasetMeta) -> str:
    """ "coco", "cityscapes" or "voc": which server's files a prepared dataset's predictions go to."""
    if meta.name in ("coco", "custom"):
        return "coco"
    if meta.name in ("cityscapes", "voc"):
        return meta.name
    raise UserError(
        f"--submit writes the COCO, Cityscapes and PASCAL VOC servers' files; {meta.name} has no evaluation "
        "server here — use --save-predictions DIR for the predictions themselves"
    )


def top_detections(output: dict[str, Any], limit: int = MAX_DETECTIONS) -> dict[str, Any]:
    """The model's output with at most `limit` detections, the highest scoring (boxes, scores, labels, masks)."""
    if "boxes" not in output or len(output["scores"]) <= limit:
        return output
    keep = output["scores"].argsort(descending=True)[:limit]
    return {**output, **{k: output[k][keep] for k in ("boxes", "scores", "labels", "masks") if k in output}}


def _numpy(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


class Submission(ABC):
    """Collects one split's outputs and writes the server's files into a folder built beside `out`; `close`
    moves each file into `out` (renamed into place: no half-written file under its final name)."""

    def __init__(self, out: str | Path, meta: DatasetMeta, split: str, images: list[dict[str, Any]], name: str):
        self.out = Path(out)
        self.meta, self.split, self.name = meta, split, name
        self.images = {im["id"]: im for im in images}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # a fresh hidden folder beside `out` (same file system: the files are renamed into place)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))

    @abstractmethod
    def add(self, image_id: int, output: dict[str, Any]) -> None:
        """One image's model output (DESIGN.md §4, in the image's pixel frame) for prepared image `image_id`."""

    @abstractmethod
    def finish(self) -> list[Path]:
        """Write the collected files under self.tmp; returns their paths there."""

    def close(self) -> list[Path]:
        written = self.finish()
        self.out.mkdir(parents=True, exist_ok=True)
        final = []
        for path in written:
            target = self.out / path.relative_to(self.tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            final.append(target)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _zip(self, folder: Path, archive: Path, files: list[Path]) -> Path:
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for f in files:
                z.write(f, f.relative_to(folder).as_posix())
        return archive


# ----------------------------------------------------------------------------------------------- COCO
def coco_testset(meta: DatasetMeta, split: str) -> str:
    """The <testset> of COCO's file names: `test-dev` -> `test-dev2017` for COCO 2017, else the split."""
    return f"{split}2017" if meta.name == "coco" and not split.endswith("2017") else split


class CocoSubmission(Submission):
    def __init__(
        self,
        out: str | Path,
        meta: DatasetMeta,
        split: str,
        images: list[dict[str, Any]],
        name: str,
        id_maps: IdMaps | None,
    ) -> None:
        if id_maps is None:
            raise UserError(
                f"the split {split!r} does not keep the source's image and category ids (prepare it again with this "
                "mtl; a recipe's label_map changes the classes, and the server needs the original ones)"
            )
        super().__init__(out, meta, split, images, name)
        self.image_ids, self.category_ids = id_maps
        self.bbox: list[dict[str, Any]] = []
        self.segm: list[dict[str, Any]] = []

    def add(self, image_id: int, output: dict[str, Any]) -> None:
        from mtlcli.metrics.predictions import output_to_results

        output = top_detections(output)
        for r in output_to_results(output, image_id, with_masks="masks" in output):
            r = {
                **r,
                "image_id": self.image_ids[r["image_id"]],
                "category_id": self.category_ids[r["category_id"]],
                "bbox": [round(v, 2) for v in r["bbox"]],  # COCO asks for ~0.1 px: smaller files
                "score": round(r["score"], 5),
            }
            seg = r.pop("segmentation", None)
            self.bbox.append(r)
            if seg is not None:
                self.segm.append({**r, "segmentation": seg})

    def finish(self) -> list[Path]:
        written = []
        stem = f"detections_{coco_testset(self.meta, self.split)}_{self.name}_results"
        for kind, results in (("bbox", self.bbox), ("segm", self.segm)):
            if kind == "segm" and not results:
                continue
            folder = self.tmp / kind
            folder.mkdir()
            path = folder / f"{stem}.json"
            path.write_text(json.dumps(results))
            written += [path, self._zip(folder, folder / f"{stem}.zip", [path])]
        return written


# ------------------------------------------------------------------------------------------ Cityscapes
class CityscapesSubmission(Submission):
    def __init__(self, out: str | Path, meta: DatasetMeta, split: str, images: list[dict[str, Any]], name: str) -> None:
        from cityscapesscripts.helpers.labels import name2label

        from mtlcli.metrics.segmentation import cityscapes_label_luts

        to_index, to_label_id = cityscapes_label_luts(meta.seg_classes)
        if len(set(to_index.tolist()) - {IGNORE_INDEX}) != len(meta.seg_classes):
            raise UserError(
                f"the dataset's seg classes ({', '.join(meta.seg_classes[:3])}, ...) are not Cityscapes classes: "
                "the Cityscapes server reads labelIds of its own classes"
            )
        super().__init__(out, meta, split, images, name)
        self.to_label_id = to_label_id  # 255 (no prediction) -> 0 "unlabeled"
        self.det_label_ids = {k: name2label[n].id for k, n in enumerate(meta.det_classes, start=1) if n in name2label}
        self.pixel: list[Path] = []
        self.instance: list[Path] = []

    def add(self, image_id: int, output: dict[str, Any]) -> None:
        from PIL import Image

        image = self.images[image_id]
        stem = image.get("stem") or Path(image["file_name"]).stem
        if "sem_seg" in output:
            index = output["sem_seg"].argmax(0).to("cpu").numpy().astype(np.uint8)
            path = self.tmp / "pixel" / f"{stem}_labelIds.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(self.to_label_id[index]).save(path)
            self.pixel.append(path)
        if "masks" in output and "boxes" in output:
            output = top_detections(output)
            folder = self.tmp / "instance"
            (folder / "masks").mkdir(parents=True, exist_ok=True)
            masks = _numpy(output["masks"]).reshape(-1, *_numpy(output["masks"]).shape[-2:]) > 0.5
            lines = []
            for k, (mask, label, score) in enumerate(
                zip(masks, output["labels"].tolist(), _numpy(output["scores"]).tolist(), strict=True)
            ):
                if label not in self.det_label_ids or not mask.any():
                    continue
                rel = f"masks/{stem}_{k}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(folder / rel)
                self.instance.append(folder / rel)
                lines.append(f"{rel} {self.det_label_ids[label]} {score:.6f}\n")
            path = folder / f"{stem}_pred.txt"
            path.write_text("".join(lines))
            self.instance.append(path)

    def finish(self) -> list[Path]:
        written = []
        for kind, files in (("pixel", self.pixel), ("instance", self.instance)):
            if files:
                written += [*files, self._zip(self.tmp / kind, self.tmp / f"{kind}.zip", files)]
        return written


# ----------------------------------------------------------------------------------------- PASCAL VOC
class VocSubmission(Submission):
    def __init__(
        self,
        out: str | Path,
        meta: DatasetMeta,
        split: str,
        images: list[dict[str, Any]],
        name: str,
        semantic: bool = True,
    ) -> None:
        super().__init__(out, meta, split, images, name)
        self.semantic = semantic  # a labelled split with pixel labels (seg val): a segmentation test set
        years = {"VOC2007" if "VOC2007/" in im["file_name"] else "VOC2012" for im in images}
        self.year = "VOC2007" if years == {"VOC2007"} else "VOC2012"
        self.testset = "test" if split.startswith("test") else split
        self.lines: dict[str, list[str]] = {c: [] for c in meta.det_classes}
        self.seg: list[Path] = []
        self.any_det = False

    def _in(self, image: dict[str, Any], task: str) -> bool:
        """Whether the image belongs to the task's test set: its `voc_sets` (VOC2012 test), else every image
        for detection and, where the split has pixel labels, for segmentation."""
        if "voc_sets" in image:
            return task in image["voc_sets"]
        return task == "main" or self.semantic

    def add(self, image_id: int, output: dict[str, Any]) -> None:
        from mtlcli.data.cityscapes import save_indexed_png
        from mtlcli.data.voc import VOC_PALETTE

        image = self.images[image_id]
        stem = image.get("stem") or Path(image["file_name"]).stem
        if "sem_seg" in output and self._in(image, "segmentation"):
            index = output["sem_seg"].argmax(0).to("cpu").numpy().astype(np.uint8)
            index[index >= len(self.meta.seg_classes)] = 0
            path = self.tmp / "results" / self.year / "Segmentation" / f"comp6_{self.testset}_cls" / f"{stem}.png"
            save_indexed_png(path, index, VOC_PALETTE)
            self.seg.append(path)
        if "boxes" in output and self._in(image, "main"):
            self.any_det = True
            h, w = image["height"], image["width"]
            for (x1, y1, x2, y2), score, label in zip(
                _numpy(output["boxes"]).tolist(),
                _numpy(output["scores"]).tolist(),
                output["labels"].tolist(),
                strict=True,
            ):
                # pixel-edge xyxy (a box covers columns x1 .. x2 - 1) -> the devkit's 1-based inclusive pixels
                xmin, ymin = min(max(x1 + 1, 1.0), w), min(max(y1 + 1, 1.0), h)
                xmax, ymax = min(max(x2, xmin), w), min(max(y2, ymin), h)
                cls = self.meta.det_classes[int(label) - 1]
                self.lines[cls].append(f"{stem} {score:.6f} {xmin:.1f} {ymin:.1f} {xmax:.1f} {ymax:.1f}\n")

    def finish(self) -> list[Path]:
        written = list(self.seg)
        if self.any_det:
            folder = self.tmp / "results" / self.year / "Main"
            folder.mkdir(parents=True, exist_ok=True)
            for cls, lines in self.lines.items():
                path = folder / f"comp4_det_{self.testset}_{cls}.txt"
                path.write_text("".join(lines))
                written.append(path)
        archive = self.tmp / "results.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for f in written:
                tar.add(f, f.relative_to(self.tmp).as_posix())
        return [*written, archive]


def open_submission(
    out: str | Path,
    meta: DatasetMeta,
    split: str,
    images: list[dict[str, Any]],
    name: str,
    id_maps: IdMaps | None = None,
    semantic: bool = True,
) -> Submission:
    """The writer for `meta`'s server (`server_of`); `id_maps` = `source_id_maps(...)` for COCO; `semantic`:
    the split has pixel labels (VOC: whether a labelled split is a segmentation set)."""
    server = server_of(meta)
    if server == "coco":
        return CocoSubmission(out, meta, split, images, name, id_maps)
    if server == "cityscapes":
        return CityscapesSubmission(out, meta, split, images, name)
    return VocSubmission(out, meta, split, images, name, semantic=semantic)


def check_name(name: str) -> str:
    """An algorithm name for the servers' file names: letters, digits, '-' and '.' (no '_', which COCO's
    file name uses as its separator, no space, no path)."""
    ok = name and all(c.isalnum() or c in "-." for c in name) and not name.startswith(".")
    if not ok:
        raise UserError(
            f"--submit-name {name!r}: use letters, digits, '-' or '.' (it goes into the servers' file names)"
        )
    return name
