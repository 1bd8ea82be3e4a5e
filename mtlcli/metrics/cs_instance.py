"""`--metric cs-inst`: the Cityscapes instance-segmentation AP, computed by cityscapesscripts'
`evalInstanceLevelSemanticLabeling` itself.

The official script reads, per image, the ground truth `gtFine/<split>/<city>/<id>_gtFine_instanceIds.png`
(its instances, groups and void regions) and a prediction text file of lines `<mask PNG> <labelId>
<score>`. This metric keeps the COCO results of the split (RLE masks, as for coco-segm), writes them in
that format into a temporary folder, and runs the official `evaluateImgLists` on them against the
instanceIds PNGs of the prepared dataset's source (Cityscapes or the synthetic city; the prepared
image's `file_name` is `leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`). Headline: AP averaged over
IoU 0.5:0.95 and the 8 classes ("allAp"); details: AP50 and per-class AP / AP50.

Two shims make the official module run under numpy 2.4 (`official_module()`, numpy itself left alone):
it calls `np.in1d`, which numpy removed — it gets a numpy namespace of its own where `in1d` is `np.isin`;
its debug dump `matches.json` fails on numpy scalars — it is written with them as Python numbers. It
writes that dump into the working directory: the call runs inside the temporary folder.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.errors import UserError


def official_module():
    try:
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as ev
        from cityscapesscripts.helpers.labels import name2label
    except ImportError:  # pragma: no cover - a dependency
        raise UserError("cs-inst needs cityscapesscripts: pip install cityscapesscripts") from None
    if not hasattr(ev.np, "in1d"):
        shim = types.ModuleType("numpy_with_in1d")
        shim.__dict__.update(np.__dict__)
        shim.in1d = lambda a, b, invert=False: np.isin(np.asarray(a).ravel(), b, invert=invert)
        ev.np = shim
    if not getattr(ev.writeDict2JSON, "mtl_compat", False):
        # its debug dump of the matches (json.dumps with default=o.__dict__) fails on numpy 2's scalars
        def write_dict(data: Any, file_name: str) -> None:
            import json

            with open(file_name, "w") as f:
                f.write(json.dumps(data, default=lambda o: o.item() if hasattr(o, "item") else o.__dict__))

        write_dict.mtl_compat = True
        ev.writeDict2JSON = write_dict
    return ev, name2label


def gt_instance_file(source: Path, file_name: str) -> Path:
    """The instanceIds PNG of a prepared Cityscapes image (`leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`)."""
    rel = file_name.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "_gtFine_instanceIds.png")
    return source / rel


class CityscapesInstanceMetric:
    """Cityscapes instance AP through the official script; `update(results)` with COCO results with masks."""

    kind = "detection"

    def __init__(self, dataset: Any) -> None:
        ev, name2label = official_module()
        meta = dataset.meta
        unknown = [n for n in meta.det_classes if n not in name2label or not name2label[n].hasInstances]
        if unknown or meta.name not in ("cityscapes",):
            why = f"has classes {', '.join(unknown)} that are not" if unknown else "is not"
            raise UserError(
                f"cs-inst scores Cityscapes data (prepared by `mtl prepare cityscapes`); {meta.name!r} {why} "
                "Cityscapes — use coco-segm"
            )
        self.label_ids = {k: name2label[n].id for k, n in enumerate(meta.det_classes, start=1)}
        self.source = Path(meta.source)
        self.images = {im["id"]: im for im in dataset.coco.dataset["images"]}
        for im in self.images.values():
            if not gt_instance_file(self.source, im["file_name"]).is_file():
                raise UserError(
                    f"cs-inst needs the ground-truth {gt_instance_file(self.source, im['file_name'])} of the "
                    "prepared dataset's source; it is missing — put the Cityscapes source back"
                )
        self.results: list[dict[str, Any]] = []

    def update(self, results: list[dict[str, Any]]) -> None:
        self.results.extend(results)

    def sync(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self.results)
            self.results = [r for part in gathered for r in part]

    def compute(self) -> dict[str, Any]:
        from PIL import Image
        from pycocotools import mask as mask_utils

        ev, _ = official_module()
        by_image: dict[int, list[dict[str, Any]]] = {}
        for r in self.results:
            by_image.setdefault(r["image_id"], []).append(r)
        with tempfile.TemporaryDirectory(prefix="mtl-cs-inst-") as tmp:
            root = Path(tmp).resolve()
            preds, gts = [], []
            for image_id, im in sorted(self.images.items()):
                base = Path(im["file_name"]).name.replace("_leftImg8bit.png", "")
                lines = []
                for k, r in enumerate(by_image.get(image_id, [])):
                    if "segmentation" not in r:
                        raise UserError("cs-inst needs instance masks; the model or the results file has none")
                    m = mask_utils.decode(r["segmentation"]).astype(np.uint8) * 255
                    name = f"{base}_{k}.png"
                    Image.fromarray(m).save(root / name)
                    lines.append(f"{name} {self.label_ids[r['category_id']]} {float(r['score'])}\n")
                txt = root / f"{base}_pred.txt"
                txt.write_text("".join(lines))
                preds.append(str(txt))
                gts.append(str(gt_instance_file(self.source, im["file_name"])))
            args = copy.copy(ev.args)
            args.predictionPath = str(root)
            args.predictionWalk = None
            args.gtInstancesFile = str(root / "gtInstances.json")  # never the package's cached file
            args.exportFile = str(root / "result.json")
            args.JSONOutput = False
            args.quiet = True
            args.csv = False
            here = os.getcwd()
            try:
                os.chdir(root)  # the script writes matches.json into the working directory
                with contextlib.redirect_stdout(io.StringIO()):
                    res = ev.evaluateImgLists(preds, gts, args)
            finally:
                os.chdir(here)
        avg = res["averages"]
        classes = list(avg["classes"])
        return {
            "value": float(avg["allAp"]),
            "details": {
                "ap": float(avg["allAp"]),
                "ap50": float(avg["allAp50%"]),
                "classes": classes,
                "class_ap": [float(avg["classes"][c]["ap"]) for c in classes],
                "class_ap50": [float(avg["classes"][c]["ap50%"]) for c in classes],
                "rule": "cityscapesscripts evalInstanceLevelSemanticLabeling (AP over IoU 0.5:0.95, AP50)",
            },
        }
