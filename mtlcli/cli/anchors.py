"""`mtl anchors`: anchor shapes by k-means (1 - IoU) over a prepared split's boxes (YOLOv2; the
interdependent multi-task network's nine anchors, three per trident branch).

    mtl anchors --data DATA --split train --k 9 [--seed S] [--recipe NAME] [--input-size HxW] [--out FILE]

Boxes are read from DATA/<split>/instances.json (crowd regions left out) and scaled into the network's
input frame (--input-size, else the recipe's [model] input_size, else 384x768), since the model resizes
every image to that frame before its anchors meet the boxes. With --recipe, its [data.label_map] det
table decides which boxes count (unlisted classes are dropped, as in training).

The anchors are printed as a table and as a TOML line to paste into a recipe's [model] table; --out
writes them as JSON ({"anchors": [[w, h], ...], "input_size": [H, W], ...}), a file that a recipe's
`anchors = "FILE"` (or `--set model.anchors=FILE`) reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mtlcli.errors import UserError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_INPUT_SIZE = (384, 768)


def split_boxes(data: Path, split: str, label_map: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Non-crowd boxes of a prepared split as (wh [N, 2] in source pixels, image sizes [N, 2] as (H, W)).

    `label_map` is a recipe's [data.label_map]; its `det` table keeps only the listed classes.
    """
    import numpy as np

    from mtlcli.data.dataset import resolve_label_map
    from mtlcli.data.prepared import DatasetMeta, instances_path

    meta = DatasetMeta.load(data)
    meta.check_split(data, split)
    keep = set(resolve_label_map(meta, label_map).det_ids)
    path = instances_path(data, split)
    if not path.is_file():
        raise UserError(f"{path} is missing — prepare the dataset again with mtl prepare (`mtl prepare --help`)")
    try:
        coco = json.loads(path.read_text())
        sizes = {img["id"]: (img["height"], img["width"]) for img in coco["images"]}
        rows = [
            (a["bbox"][2], a["bbox"][3], *sizes[a["image_id"]])
            for a in coco["annotations"]
            if not a.get("iscrowd", 0) and a["category_id"] in keep
        ]
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError, IndexError) as exc:
        raise UserError(
            f"{path} is not a valid COCO instances file ({type(exc).__name__}: {exc}) — prepare the dataset again"
        ) from None
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
    arr = arr[(arr[:, 0] > 0) & (arr[:, 1] > 0)]
    return arr[:, :2], arr[:, 2:]


def compute_anchors(
    data: Path,
    split: str = "train",
    k: int = 9,
    *,
    seed: int = 0,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    label_map: dict | None = None,
) -> dict[str, Any]:
    """k-means anchors of a split in the network frame `input_size` (H, W).

    Returns {"anchors": [[w, h], ...] sorted by area, "input_size": [H, W], "k", "seed", "split",
    "num_boxes", "mean_iou"} (mean IoU of each box with its best anchor, 0..1).
    """
    import numpy as np

    from mtlcli.ops.kmeans import kmeans_anchors

    wh, sizes = split_boxes(data, split, label_map)
    if len(wh) < k:
        raise UserError(
            f"{data}/{split} has {len(wh)} usable boxes, fewer than --k {k}; use a smaller --k or a larger split"
        )
    h, w = input_size
    scaled = wh * np.stack([w / sizes[:, 1], h / sizes[:, 0]], axis=1)
    anchors, mean_iou = kmeans_anchors(scaled, k, seed=seed)
    return {
        "anchors": [[round(float(a), 2), round(float(b), 2)] for a, b in anchors],
        "input_size": [h, w],
        "k": k,
        "seed": seed,
        "split": split,
        "data": str(Path(data).resolve()),
        "num_boxes": int(len(wh)),
        "mean_iou": round(mean_iou, 4),
    }


def register(app: typer.Typer) -> None:
    @app.command("anchors")
    def anchors(
        data: Path = typer.Option(..., "--data", help="Prepared dataset root (from `mtl prepare`)."),
        split: str = typer.Option("train", help="Split whose boxes are clustered."),
        k: int = typer.Option(9, "--k", min=1, help="Number of anchors (9: three per trident branch)."),
        seed: int = typer.Option(0, help="Seed of the k-means++ initialisation (same seed, same anchors)."),
        recipe: str | None = typer.Option(None, help="Recipe whose det label map and model input_size apply."),
        input_size: str | None = typer.Option(
            None, "--input-size", help="Network input HxW (default: the recipe's, else 384x768)."
        ),
        out: Path | None = typer.Option(
            None, "--out", "-o", metavar="FILE", help="Write the anchors as JSON to this file."
        ),
        force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the anchors line, no table."),
    ) -> None:
        """Cluster a split's box shapes into anchors (k-means, 1 - IoU), sorted by area."""
        from rich.console import Console
        from rich.table import Table

        if out is not None:
            from mtlcli.safety import refuse_protected_output

            refuse_protected_output(out, "--out")
        if out is not None and out.exists() and not force:
            raise UserError(f"--out {out} exists; choose another file or pass --force")
        label_map, size = None, DEFAULT_INPUT_SIZE
        if recipe is not None:
            from mtlcli.recipes import load_recipe

            r = load_recipe(recipe)
            label_map = r["data"]["label_map"] or None
            model_size = r["model"].get("input_size")
            if model_size is not None:
                size = (
                    (model_size, model_size)
                    if isinstance(model_size, int)
                    else (int(model_size[0]), int(model_size[1]))
                )
        if input_size is not None:
            from mtlcli.engine.benchmark import parse_size

            size = parse_size(input_size)
        result = compute_anchors(data, split, k, seed=seed, input_size=size, label_map=label_map)

        console = Console(quiet=quiet)
        table = Table(title=f"{k} anchors of {data}/{split} in the {size[0]}x{size[1]} (HxW) network frame")
        for col in ("#", "branch", "width", "height", "area"):
            table.add_column(col, justify="right")
        per_branch = k // 3 if k % 3 == 0 else None
        for i, (aw, ah) in enumerate(result["anchors"]):
            branch = f"dilation {i // per_branch + 1}" if per_branch else "-"
            table.add_row(str(i), branch, f"{aw:.1f}", f"{ah:.1f}", f"{aw * ah:.0f}")
        console.print(table)
        console.print(f"{result['num_boxes']} boxes, mean IoU with the best anchor {result['mean_iou']:.3f}")
        snippet = "anchors = [" + ", ".join(f"[{aw:g}, {ah:g}]" for aw, ah in result["anchors"]) + "]"
        print(snippet)
        if out is not None:
            from mtlcli.safety import atomic_write_text

            atomic_write_text(out, json.dumps(result, indent=2) + "\n")
            print(f"wrote {out} — train with: --set model.anchors={out}")  # plain print: no wrapping
