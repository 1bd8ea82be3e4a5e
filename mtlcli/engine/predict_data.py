"""`mtl predict --data DATA [--split val]` and `--coco-json F`: predictions keyed to a dataset's own images.

With `--data`, the images are those of a prepared split, decoded as `mtl eval` decodes them
(`PreparedDataset.read_image`), each written under the split's image id (the source file's own id for data
prepared from COCO-format files, as `mtl eval --save-predictions` writes it), its file name as in the
split's instances.json, and its files under the split's name for it (`mtlcli.data.prepared.image_stem`):
what `mtl eval --predictions OUT --data DATA --split SPLIT` reads back with the numbers of `mtl eval --run`.

With plain files, `--coco-json F` (a COCO instances or image-list JSON) gives each file the id of the JSON
image of the same file name (the JSON's file name exactly, else a path ending in it, else the only image of
that base name); a file the JSON does not name is a UserError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mtlcli.errors import UserError


class SplitImages(torch.utils.data.Dataset):
    """(index, uint8 [3, H, W] or None, error text) per image of a prepared split, decoded by its reader."""

    def __init__(self, dataset: Any, infos: list[dict[str, Any]]) -> None:
        self.dataset, self.infos = dataset, infos

    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, i: int):
        try:
            image = self.dataset.read_image(self.infos[i], dtype=torch.uint8)
        except UserError as exc:
            return i, None, str(exc)
        return i, image.as_subclass(torch.Tensor), ""


def split_sources(model: Any, root: str | Path, split: str | None) -> tuple[list[Any], SplitImages]:
    """The images of split `split` (default: the model's recipe's val_split, else "val") of the prepared
    dataset `root` as `Source`s carrying their COCO image entry, and the loader dataset that decodes them.
    A dataset of other classes than the model's is a UserError (`check_label_set`)."""
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.data.prepared import image_stem
    from mtlcli.engine.compat import check_label_set
    from mtlcli.engine.predict import Source
    from mtlcli.metrics.predictions import source_id_maps

    recipe = getattr(model, "recipe", {}) or {}
    split = split or recipe.get("data", {}).get("val_split") or "val"
    label_map = recipe.get("data", {}).get("label_map") or None
    dataset = PreparedDataset(root, split, label_map=label_map)
    check_label_set(
        {"det_classes": model.det_classes, "seg_classes": model.seg_classes},
        recipe.get("model", {}),
        dataset,
        checkpoint=model.checkpoint or "the model",
        data=root,
        action="predict",
    )
    if len(dataset) == 0:
        raise UserError(f"split {split!r} of {root} has no images — nothing to predict")
    infos = [dataset.image_info(i) for i in range(len(dataset))]
    maps = source_id_maps(dataset.meta, dataset.coco.dataset["images"])
    ids = maps[0] if maps else {}
    sources = []
    for info in infos:
        image = {"id": ids.get(info["id"], info["id"]), "file_name": info["file_name"]}
        sources.append(Source(dataset.source / info["file_name"], Path(image_stem(info)), image=image))
    return sources, SplitImages(dataset, infos)


def coco_json_ids(sources: list[Any], path: str | Path) -> None:
    """Give each image `Source` the id and file name of the image of the COCO JSON `path` it is (matched by
    file name, `mtlcli.metrics.matching.FileNames`); a file the JSON does not name is a UserError."""
    from mtlcli.metrics.matching import FileNames

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--coco-json {path} does not exist — give the COCO annotation file of these images") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--coco-json {path} is not a readable JSON file ({exc})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(
        isinstance(im, dict) and isinstance(im.get("file_name"), str) and "id" in im for im in images
    ):
        raise UserError(f'--coco-json {path} has no COCO "images" list of {{id, file_name}} entries')
    index = FileNames(images)
    by_id = {im["id"]: im for im in images}
    unknown: list[Path] = []
    taken: dict[Any, Path] = {}
    for source in sources:
        if source.is_video:
            continue
        hit = index.find(source.path.as_posix())
        if hit is None:
            unknown.append(source.path)
            continue
        if hit in taken:
            raise UserError(f"--coco-json {path}: {taken[hit]} and {source.path} are both its image {hit!r}")
        taken[hit] = source.path
        source.image = {"id": hit, "file_name": by_id[hit]["file_name"]}
    if unknown:
        count = sum(not s.is_video for s in sources)
        raise UserError(
            f"--coco-json {path} names {count - len(unknown)} of the {count} images given ({len(unknown)} not in it, "
            f"e.g. {unknown[0]}) — give the images of that file, or drop --coco-json"
        )
