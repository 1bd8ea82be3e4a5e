"""The commands `mtl` suggests when something is missing, built in one place so that each works as printed
(tests/cli/test_hints.py runs them from a fresh directory).

`prepare_commands(dataset, root)` lists the commands that make a prepared dataset at `root`: the synthetic
city is drawn into a separate source folder first (`mtl prepare cityscapes` refuses an --out inside its
source), real datasets name their source with the option `mtl prepare <dataset>` takes.
"""

from __future__ import annotations

import shlex
from pathlib import Path

# the source argument(s) each `mtl prepare` subcommand takes, as a user fills them in
_SOURCES = {
    "cityscapes": ["CITYSCAPES_ROOT"],
    "coco": ["COCO_ROOT"],
    "mot15": ["2DMOT2015_ROOT"],
    "voc": ["--voc2012", "VOCdevkit/VOC2012", "--voc2007", "VOCdevkit/VOC2007", "--sbd", "benchmark_RELEASE/dataset"],
}


def synthetic_source(root: str | Path) -> Path:
    """Where the hints draw the synthetic city whose prepared dataset goes to `root`: a sibling folder."""
    root = Path(root)
    return root.with_name(root.name + "-src")


def prepare_commands(dataset: str, root: str | Path) -> list[str]:
    """Shell command lines that create the prepared dataset `root` for a recipe's `dataset`."""
    root = Path(root)
    if dataset == "synthetic":
        src = synthetic_source(root)
        return [shlex.join(["mtl", "prepare", "synthetic", "--out", str(src)]),
                shlex.join(["mtl", "prepare", "cityscapes", str(src), "--out", str(root)])]
    source = _SOURCES.get(dataset, [f"{dataset.upper()}_ROOT"])
    return [shlex.join(["mtl", "prepare", dataset, *source, "--out", str(root)])]


def prepare_hint(dataset: str, root: str | Path) -> str:
    """`cmd` (or `cmd1` and then `cmd2`), for a "run ... first" message."""
    return " and then ".join(f"`{c}`" for c in prepare_commands(dataset, root))


def after_synthetic(src: str | Path, default_root: str | Path) -> str:
    """The command that prepares a freshly drawn synthetic city `src`: into `default_root` (where recipes
    look) unless that lies inside `src`, else into a sibling folder (then train with --data)."""
    src, root = Path(src), Path(default_root)
    inside = root.resolve() == src.resolve() or src.resolve() in root.resolve().parents
    if inside:
        root = src.with_name(src.name + "-prepared")
    cmd = shlex.join(["mtl", "prepare", "cityscapes", str(src), "--out", str(root)])
    return cmd + (f"   (then train with --data {shlex.quote(str(root))})" if inside else "")
