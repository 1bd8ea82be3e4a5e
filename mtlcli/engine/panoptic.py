"""Panoptic predictions inside `mtl eval` and the API: the merge of `mtlcli.ops.panoptic` applied to a
model's eval output (DESIGN.md §4), scored against the split's panoptic ground truth and written in COCO
panoptic format (docs/panoptic.md).

    DIR/panoptic.json          {"annotations": [{image_id, file_name, segments_info: [{id, category_id,
                               iscrowd, area, bbox, score?, inferred?}]}], "categories": [...]}
    DIR/panoptic/<stem>.png    RGB, segment id = R + 256 G + 65536 B (0 = void)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlcli.data.panoptic import DeriveArgs, PanopticTruth, categories, category_ids, segments_to_coco
from mtlcli.ops.panoptic import det_to_seg, id2rgb, merge_panoptic, thing_indices

SETTINGS = {"panoptic_score": 0.5, "panoptic_overlap": 0.5, "panoptic_stuff_area": 4096}


def merge_settings(recipe: dict[str, Any] | None) -> dict[str, Any]:
    """The merge's keyword arguments from a recipe's [eval] table (Panoptic FPN's defaults)."""
    ev = {**SETTINGS, **((recipe or {}).get("eval") or {})}
    return {
        "score_threshold": float(ev["panoptic_score"]),
        "overlap_threshold": float(ev["panoptic_overlap"]),
        "stuff_area": int(ev["panoptic_stuff_area"]),
    }


class PanopticMaker:
    """Turns eval outputs into panoptic id maps and segments with a dataset's category ids."""

    def __init__(self, det_classes, seg_classes, thing_classes=None, class_ids=None, settings=None) -> None:
        self.label_to_class = det_to_seg(det_classes, seg_classes)
        self.things = thing_indices(seg_classes, det_classes, thing_classes)
        class_ids = list(class_ids or [])
        self.class_ids = class_ids if len(class_ids) == len(seg_classes) else list(range(1, len(seg_classes) + 1))
        self.settings = settings or merge_settings(None)

    def __call__(
        self, output: dict[str, torch.Tensor], semantic: torch.Tensor | None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(ids [H, W] uint32, COCO segments_info) of one image; `semantic` [H, W] the argmax of sem_seg."""
        if semantic is None and "sem_seg" in output:
            semantic = output["sem_seg"].argmax(0)
        empty = torch.zeros(0)
        masks = output.get("masks")
        id_map, segs = merge_panoptic(
            semantic,
            output.get("boxes", empty.reshape(0, 4)),
            output.get("scores", empty),
            output.get("labels", empty.long()),
            masks[:, 0] if masks is not None and masks.ndim == 4 else masks,
            label_to_class=self.label_to_class,
            thing_classes=self.things,
            **self.settings,
        )
        ids = id_map.cpu().numpy().astype(np.uint32)
        return ids, segments_to_coco(ids, segs, self.class_ids)


class PanopticWriter:
    """DIR/panoptic.json + DIR/panoptic/<stem>.png while a model runs over a split."""

    def __init__(self, out_dir: str | Path, meta: Any) -> None:
        self.out = Path(out_dir)
        self.annotations: list[dict[str, Any]] = []
        self.categories = categories(meta)

    def add(self, stem: str, image_id: Any, ids: np.ndarray, segments: list[dict[str, Any]]) -> None:
        from mtlcli.safety import atomic_write_bytes

        target = self.out / "panoptic" / f"{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(id2rgb(ids)).save(buf, format="PNG")
        atomic_write_bytes(target, buf.getvalue())
        self.annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments})

    def close(self) -> None:
        from mtlcli.data.prepared import atomic_write_text

        if self.annotations:
            data = {"annotations": self.annotations, "categories": self.categories}
            atomic_write_text(self.out / "panoptic.json", json.dumps(data))


class PanopticStep:
    """`--metric pq` and the panoptic files of `--save-predictions` inside `mtlcli.engine.evaluate`."""

    def __init__(self, dataset: Any, metric: Any | None, save_to: Path | None, settings=None) -> None:
        meta = dataset.meta
        self.maker = PanopticMaker(meta.det_classes, meta.seg_classes, meta.thing_classes, category_ids(meta), settings)
        self.metric = metric
        self.truth = PanopticTruth(dataset.root, dataset.split, meta) if metric is not None else None
        self.writer = PanopticWriter(save_to, meta) if save_to is not None else None
        self.meta = meta

    def __call__(self, output: dict[str, Any], semantic: torch.Tensor | None, target: dict[str, Any]) -> None:
        ids, segs = self.maker(output, semantic)
        stem = str(target["stem"])
        if self.writer is not None:
            self.writer.add(stem, int(target["image_id"]), ids, segs)
        if self.metric is None or self.truth is None:
            return

        def derive() -> DeriveArgs:
            sem = target.get("semantic")
            sem = None if sem is None else torch.as_tensor(sem).cpu().numpy()
            masks = [m.astype(bool) for m in torch.as_tensor(target["masks"]).cpu().numpy()]
            return sem, masks, target["labels"].tolist(), target["iscrowd"].tolist()

        gt = self.truth.get(stem, derive)
        if gt is not None:
            self.metric.update(gt[0], gt[1], ids, segs, where=f"image {stem}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def panoptic_categories(model: Any) -> list[dict[str, Any]]:
    """COCO panoptic categories [{id, name, isthing}] of a `Predictor`'s seg classes."""
    maker = PanopticMaker(
        model.det_classes, model.seg_classes, model.card.get("thing_classes"), model.card.get("panoptic_category_ids")
    )
    return [
        {"id": cid, "name": n, "isthing": int(i in maker.things)}
        for i, (cid, n) in enumerate(zip(maker.class_ids, model.seg_classes, strict=True))
    ]
