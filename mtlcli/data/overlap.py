"""Train/evaluation overlap: which images a training split shares with an evaluation split.

An image is identified by its source file: the `file_name` of its COCO `images` entry (relative to the
dataset's source root, the same for every split of one prepared dataset), or its `same_as` entry where
a reader found that the file is a copy of another one (VOC2012's `2007_*` images that VOC2007 also ships,
byte-identical or matched by name and pixel size, see `mtlcli.data.voc_copies`).

    report = overlap_report({"train": images, "val": images}, eval_splits=["val"])
    # {"train": {"val": {"images": 0}}}

`mtl prepare` writes this report into the summary and `dataset.json` ("overlap") for every pair of a
training and an evaluation split; `mtl train` calls `check_no_overlap` once before training and refuses
a recipe whose train split shares images with its evaluation split(s) (`data.val_split`, and
`data.test_split` when set) unless the recipe says `data.allow_overlap = true`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mtlcli.errors import UserError

EVAL_PREFIXES = ("val", "test")


def image_key(image: Mapping[str, Any]) -> str:
    """The identity of one COCO `images` entry: `same_as` where the reader set it, else `file_name`."""
    return str(image.get("same_as") or image["file_name"])


def default_eval_splits(splits: Iterable[str]) -> list[str]:
    """Evaluation splits by name: `val`, `test` and names starting with them (`val2017`, `test_dev`)."""
    return [s for s in splits if s.startswith(EVAL_PREFIXES)]


def shared_images(
    train_images: Iterable[Mapping[str, Any]], eval_images: Iterable[Mapping[str, Any]]
) -> tuple[int, str | None]:
    """(number of evaluation images whose identity is also in the training images, the first of them)."""
    train = {image_key(im) for im in train_images}
    shared = sorted(im["file_name"] for im in eval_images if image_key(im) in train)
    return len(shared), (shared[0] if shared else None)


def overlap_report(
    images: Mapping[str, Sequence[Mapping[str, Any]]], eval_splits: Iterable[str] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """{train split: {eval split: {"images": shared count, "example": a shared file (when any)}}}.

    `images` maps every split to its COCO `images` entries; splits not in `eval_splits` (default:
    `default_eval_splits`) are the training splits."""
    evals = list(default_eval_splits(images) if eval_splits is None else eval_splits)
    report: dict[str, dict[str, dict[str, Any]]] = {}
    for train in (s for s in images if s not in evals):
        report[train] = {}
        for ev in evals:
            n, example = shared_images(images[train], images[ev])
            report[train][ev] = {"images": n, **({"example": example} if example else {})}
    return report


def print_overlap(report: Mapping[str, Mapping[str, Mapping[str, Any]]], console=None) -> None:
    """The report as a rich table: one row per training split, one column per evaluation split."""
    from rich.console import Console
    from rich.table import Table

    if not report:
        return
    console = console or Console()
    evals = list(next(iter(report.values())))
    if not evals:
        return
    table = Table(title="train/eval overlap", caption="images shared, by source file")
    table.add_column("train split")
    for ev in evals:
        table.add_column(ev, justify="right")
    for train, row in report.items():
        table.add_row(train, *[(f"[red]{row[ev]['images']}[/]" if row[ev]["images"] else "0") for ev in evals])
    console.print(table)
    for train, row in report.items():
        for ev, cell in row.items():
            if cell["images"]:
                console.print(
                    f"  {train} shares {cell['images']} image(s) with {ev}, e.g. {cell['example']}: "
                    f"do not evaluate on {ev} a model trained on {train}"
                )


def split_images(root: str | Path, split: str) -> list[dict[str, Any]]:
    """The COCO `images` entries of a prepared split (UserError when its instances.json is unreadable)."""
    path = Path(root) / split / "instances.json"
    try:
        return json.loads(path.read_text())["images"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is missing or not a COCO instances file ({type(exc).__name__}) — prepare the dataset again"
        ) from None


def _images_of(dataset: Any, root: Path, split: str) -> list[dict[str, Any]]:
    coco = getattr(dataset, "coco", None)
    if coco is not None and getattr(dataset, "split", None) == split:
        return list(coco.dataset["images"])  # already in memory: no second read of a large instances.json
    return split_images(root, split)


def check_no_overlap(recipe: Mapping[str, Any], train_ds: Any, val_ds: Any = None) -> dict[str, int]:
    """Refuse to train when the recipe's train split shares images with its evaluation split(s).

    Evaluation splits: `data.val_split`, `data.test_split` and `eval.select_split` (the held-out split
    best.pt is selected on; when set). `data.allow_overlap = true`
    turns the refusal off (a deliberate experiment). Returns {evaluation split: shared images}."""
    from mtlcli.data.meta import DatasetMeta

    data = recipe["data"]
    root = Path(train_ds.root)
    meta = DatasetMeta.load(root)
    train_split = data["train_split"]
    select = (recipe.get("eval") or {}).get("select_split", "")  # where best.pt is selected, if not val_split
    select = "" if select == "none" else select
    evals = list(dict.fromkeys(s for s in (data["val_split"], data.get("test_split", ""), select) if s))
    if data.get("test_split") and data["test_split"] not in meta.splits:
        raise UserError(
            f"data.test_split {data['test_split']!r} is not a split of {root} (it has {', '.join(meta.splits)}) — "
            f"prepare the dataset with that split or set --set data.test_split=''"
        )
    evals = [s for s in evals if s in meta.splits]  # a val_split that no metric reads may be absent
    train_images = _images_of(train_ds, root, train_split)
    counts: dict[str, int] = {}
    for split in evals:
        if split == train_split:
            n, example = len(train_images), (train_images[0]["file_name"] if train_images else None)
        else:
            n, example = shared_images(train_images, _images_of(val_ds, root, split))
        counts[split] = n
        if n and not data.get("allow_overlap", False):
            key = "data.val_split" if split == data["val_split"] else "data.test_split"
            key = (
                "eval.select_split" if split == select and split not in (data["val_split"], data["test_split"]) else key
            )
            raise UserError(
                f"data.train_split {train_split!r} shares {n} image(s) with {key} {split!r} of {root} "
                f"(e.g. {example}): the scores would be measured on training images — choose a train split without "
                f"them (`mtl prepare` lists the overlap of every split pair), or pass --set data.allow_overlap=true "
                f"if this is deliberate"
            )
    return counts
