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
from typing import TYPE_CHECKING

import typer

from mtlcli.engine.anchors import DEFAULT_INPUT_SIZE, compute_anchors
from mtlcli.errors import UserError

if TYPE_CHECKING:
    pass


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
