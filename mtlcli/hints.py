"""The commands `mtl` suggests when something is missing or what to do next, built in one place so that
each works as printed (tests/cli/test_hints.py runs them from a fresh directory). Paths are shell-quoted.

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
        return [
            shlex.join(["mtl", "prepare", "synthetic", "--out", str(src)]),
            shlex.join(["mtl", "prepare", "cityscapes", str(src), "--out", str(root)]),
        ]
    source = _SOURCES.get(dataset, [f"{dataset.upper()}_ROOT"])
    return [shlex.join(["mtl", "prepare", dataset, *source, "--out", str(root)])]


def raw_source_command(root: str | Path) -> str | None:
    """Where `root` is a dataset as downloaded (or drawn by `mtl prepare synthetic`) rather than a prepared one:
    the `mtl prepare` command that prepares it into a sibling folder `ROOT-prepared` (prepare refuses an --out
    inside its source); None for anything else."""
    root = Path(root)
    out = str(root.with_name(root.name + "-prepared"))
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return shlex.join(["mtl", "prepare", "cityscapes", str(root), "--out", out])
    if (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir():  # one VOC year
        option = "--voc2007" if "2007" in root.name else "--voc2012"
        return shlex.join(["mtl", "prepare", "voc", option, str(root), "--out", out])
    if (root / "VOC2012").is_dir():  # a VOCdevkit
        extra = ["--voc2007", str(root / "VOC2007")] if (root / "VOC2007").is_dir() else []
        return shlex.join(["mtl", "prepare", "voc", "--voc2012", str(root / "VOC2012"), *extra, "--out", out])
    if (root / "annotations").is_dir() and any((root / "annotations").glob("instances_*.json")):
        return shlex.join(["mtl", "prepare", "coco", str(root), "--out", out])
    if (root / "train").is_dir() and any((root / "train").glob("*/gt/gt.txt")):
        return shlex.join(["mtl", "prepare", "mot15", str(root), "--out", out])
    return None


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


# The recipes a `next:` line suggests, best first, each with the --set overrides that fit it to the splits
# one `mtl prepare` makes (which depend on its sources and --split): `train_hint` prints the first that fits.
TRAIN_RECIPES: dict[str, list[tuple[str, list[str]]]] = {
    "synthetic": [("ivanet-tiny-synthetic", [])],
    "cityscapes": [("imtl-cityscapes", [])],
    # VOC07 + VOC12 (+ SBD): the papers' splits; VOC12 (+ SBD) alone has no VOC07 test split
    "voc": [
        ("ivanet300", []),
        ("maskrcnn-r50-voc", []),
        ("ivanet300", ["data.train_split=train_aug", "data.test_split="]),
        ("ivanet300", ["data.train_split=train", "data.test_split="]),
    ],
    "coco": [("ivanet300-coco", [])],
    "mot15": [("ssd300-mot15", [])],
}
OTHER_RECIPES = {
    "synthetic": (
        "datnet-tiny-synthetic, safpn-ejhead-tiny-synthetic, imtl-tiny-synthetic, ladderdensenet-tiny-synthetic"
    ),
    "cityscapes": "ladderdensenet-cityscapes, densenet32x-cityscapes, dilated8x-densenet-cityscapes: segmentation only",
    "voc": "ivanet512, datnet-light-r50-voc, fasterrcnn-r50-voc",
    "coco": "datnet-light-r50-coco, safpn-ejhead-r50-coco, maskrcnn-r50-coco",
}


def train_hint(kind: str, out: str | Path) -> str | None:
    """The `next:` line after preparing `out`: `mtl train --recipe R --data OUT [--set ...]` with the first of
    TRAIN_RECIPES[kind] whose train, val (and test) splits `out` has; else the first whose train (and test)
    split it has, trained without evaluation (as `custom_train_hint`). None where no recipe fits (no train
    split prepared)."""
    from mtlcli.data.prepared import DatasetMeta
    from mtlcli.recipes import load_recipe

    splits = DatasetMeta.load(Path(out)).splits
    fitting = []
    for name, sets in TRAIN_RECIPES[kind]:
        data = load_recipe(name, sets, check_model=False)["data"]
        if data["train_split"] in splits and (not data["test_split"] or data["test_split"] in splits):
            fitting.append((data["val_split"] in splits, name, sets, data["val_split"]))
    if not fitting:
        return None
    has_val, name, sets, val_split = max(fitting, key=lambda f: f[0])  # the first with its val split, if any
    if not has_val:
        sets = [*sets, "eval.metrics=[]", "eval.best_metric="]
    cmd = ["mtl", "train", "--recipe", name, "--data", str(out), *(a for s in sets for a in ("--set", s))]
    notes = [f"or {OTHER_RECIPES[kind]}"] if kind in OTHER_RECIPES else []
    notes += [] if has_val else [f"no {val_split} split, so no evaluation"]
    return f"next: {shlex.join(cmd)}" + (f"   ({'; '.join(notes)})" if notes else "")


def custom_train_hint(data: str | Path, has_val: bool) -> str:
    """The `next:` line of `mtl prepare coco --train-json ...`: a *-custom recipe on the prepared data; without
    a val split, training without evaluation (the recipes evaluate on "val")."""
    cmd = ["mtl", "train", "--recipe", "ivanet-custom", "--data", str(data)]
    if not has_val:
        cmd += ["--set", "eval.metrics=[]", "--set", "eval.best_metric="]
    others = "or datnet-custom, safpn-custom, ladderdensenet-custom, imtl-custom"
    return f"next: {shlex.join(cmd)}   ({others}" + ("; no val split, so no evaluation)" if not has_val else ")")


def eval_hint(run_dir: str | Path, recipe: dict) -> str:
    """The end of `mtl train`: how to evaluate the run — `mtl eval --run RUN` where the recipe names metrics and
    its dataset has the val split, else why there is nothing to run as it stands."""
    from mtlcli.data.prepared import DatasetMeta
    from mtlcli.errors import UserError
    from mtlcli.recipes import data_root

    if not recipe["eval"]["metrics"]:
        return "the recipe names no [eval] metrics: evaluate with mtl eval --run RUN --metric NAME ..."
    root, split = data_root(recipe), recipe["data"]["val_split"]
    try:
        splits = DatasetMeta.load(root).splits
    except UserError:  # moved or removed meanwhile: `mtl eval` names what is missing
        splits = [split]
    if split not in splits:
        return f"{root} has no {split} split to evaluate on: mtl eval --run RUN --data DATA with one"
    return f"evaluate with `{shlex.join(['mtl', 'eval', '--run', str(run_dir)])}`"


def resume_command(run_dir: str | Path, *extra: str) -> str:
    """The command that continues the run in `run_dir` from its last.pt (its own recipe.toml)."""
    return shlex.join(["mtl", "train", "--resume", "--out", str(run_dir), *extra])


def quickstart_next(run_dir: str | Path, recipe: str, data: str | Path, viz_out: str | Path) -> str:
    """The quickstart's last line: evaluate its run, draw more of its predictions (beside the quickstart's
    own overlays, not over them), train the recipe with the default settings."""
    commands = [
        ["mtl", "eval", "--run", str(run_dir)],
        ["mtl", "viz", "predictions", "--run", str(run_dir), "--num", "16", "--out", str(viz_out)],
        ["mtl", "train", "--recipe", recipe, "--data", str(data)],
    ]
    return "next: " + "   |   ".join(shlex.join(c) for c in commands)
