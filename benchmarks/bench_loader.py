"""The training data path against its decode floor, per recipe, at Cityscapes resolution.

Draws a synthetic city (`generate_synthetic`, default 1024x2048 like Cityscapes) and prepares it with
`prepare_cityscapes`, then for every recipe on Cityscapes, COCO or VOC (or those named with --recipes)
reads that dataset through the recipe's training data path: its augmentation options and the dense
targets its model's loss reads (`mtlcli.data.dataset.loss_targets`, or `data.targets`). Recipes whose
data path is the same (augmentation options, targets, label map) are timed once and share a row group.

For each data path, in one process (one torch thread) and alternating image by image over --rounds:

  * floor      read + decode the image (torchvision.io) and the label PNGs the recipe needs
               (semantic and/or dt): what no loader can avoid;
  * dataset[i] `PreparedDataset(..., targets, compact=True)[i]` with the recipe's training transforms,
               each sample seeded as the training loop seeds it (`SeededSamples`).

Printed: ms per image (medians), images/s per core, and dataset[i] / floor as the median of the
per-image ratios of back-to-back pairs, which holds up on a shared machine.
Goal (issue 19): dataset[i] <= 1.3x the floor for every Cityscapes/COCO/VOC recipe.

`--loader` instead measures the whole training loader (`mtlcli.engine.data.make_loader`: sampler,
per-sample seeding, transforms, collate, and the copy between processes) with each of --workers
DataLoader worker counts (0 = in the main process) and each --cache setting (`data.cache`; "ram" is
filled before the workers start and its fill is not timed), after a warm-up batch, over
--loader-images images, alternating the settings over --rounds, beside the decode floor measured in
the same rounds. Printed per setting: images/s, and the cost per image per loading process
(max(workers, 1) / images/s) against the floor: 1.00x means every loading core decodes at the
floor's rate and nothing else costs; below 1 the cache skips decoding. On a machine with fewer free
cores than workers the per-process cost rises: read it on a quiet machine.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_loader.py --rounds 3
    .venv/bin/python benchmarks/bench_loader.py --recipes ivanet300 imtl-cityscapes --size 512 1024 --json out.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_loader.py --loader --recipes ladderdensenet-cityscapes \
        maskrcnn-r50-coco --workers 0 1 2 --cache none ram --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

DATASETS = ("cityscapes", "coco", "voc")


def make_data(folder: Path, images: int, size: tuple[int, int]) -> Path:
    from mtlcli.data.cityscapes import prepare_cityscapes
    from mtlcli.data.synthetic import generate_synthetic

    source = generate_synthetic(folder / "source", train=images, val=1, size=size, seed=0, quiet=True)
    out = folder / "data"
    prepare_cityscapes(source, out, quiet=True, workers=1)
    return out


def recipe_targets(recipe: dict) -> frozenset[str]:
    """The dense targets the recipe's training loader decodes (the model built on the meta device: no
    weights are allocated or initialised)."""
    from mtlcli.engine.data import training_targets
    from mtlcli.models import build_from_recipe

    model_table = dict(recipe["model"])
    try:
        with torch.device("meta"):
            model = build_from_recipe(model_table, load_weights=False)
    except Exception:  # a builder that needs real tensors at init
        model = build_from_recipe(model_table, load_weights=False)
    return training_targets(recipe, model)


def data_path(recipe: dict, targets: frozenset[str]) -> tuple:
    from mtlcli.recipes import DATA_KEYS

    data = recipe["data"]
    options = {k: v for k, v in data.items() if k not in DATA_KEYS and k != "targets"}
    return (
        data["augmentation"],
        json.dumps(options, sort_keys=True),
        tuple(sorted(targets)),
        json.dumps(data["label_map"], sort_keys=True),
    )


def floor_cost(ds, index: int, targets: frozenset[str]) -> float:
    from torchvision.io import ImageReadMode, decode_image, decode_png, read_file

    from mtlcli.data.prepared import dt_path, semantic_path

    info = ds.image_info(index)
    stem = info.get("stem") or Path(info["file_name"]).stem
    t0 = time.perf_counter()
    decode_image(read_file(str(ds.source / info["file_name"])), mode=ImageReadMode.RGB)
    if "semantic" in targets:
        decode_png(read_file(str(semantic_path(ds.root, ds.split, stem))))
    if "dt" in targets:  # 2-bit palette PNGs: PIL (libpng via torchvision leaves them packed)
        from mtlcli.data.prepared import read_label_png

        read_label_png(dt_path(ds.root, ds.split, stem))
    return time.perf_counter() - t0


def dataset_for(data: Path, recipe: dict, targets: frozenset[str]):
    """The recipe's training dataset on `data`: its transforms and targets, compact (uint8) samples."""
    from mtlcli.data.dataset import PreparedDataset
    from mtlcli.data.transforms import build_transforms
    from mtlcli.recipes import DATA_KEYS

    d = recipe["data"]
    options = {k: v for k, v in d.items() if k not in DATA_KEYS}
    tf = build_transforms(d["augmentation"], True, **options)
    try:
        return PreparedDataset(
            data, "train", transforms=tf, label_map=d["label_map"] or None, targets=targets, compact=True
        )
    except Exception:  # a label map naming another dataset's classes
        return PreparedDataset(data, "train", transforms=tf, targets=targets, compact=True)


def measure(data: Path, recipe: dict, targets: frozenset[str], args: argparse.Namespace) -> dict:
    from mtlcli.engine.data import SeededSamples

    ds = dataset_for(data, recipe, targets)
    seeded = SeededSamples(ds, 0)
    seeded[(0, 0)]  # warm-up (imports, allocator)
    floor, item, ratios = [], [], []
    position = 0
    for _ in range(args.rounds):
        for i in range(len(ds)):
            f = floor_cost(ds, i, targets)
            t0 = time.perf_counter()
            seeded[(position, i)]
            g = time.perf_counter() - t0
            position += 1
            floor.append(f)
            item.append(g)
            ratios.append(g / f)
    return {
        "floor_ms": 1000 * statistics.median(floor),
        "item_ms": 1000 * statistics.median(item),
        "ratio": statistics.median(ratios),
        "samples": len(ratios),
    }


def loader_rate(ds, workers: int, args: argparse.Namespace) -> float:
    """Images/s of the training loader over `ds` with `workers` processes, after a warm-up batch."""
    from mtlcli.data.dataset import collate
    from mtlcli.engine.data import make_loader
    from mtlcli.engine.distributed import DistInfo

    loader = make_loader(ds, micro_batch=args.batch, workers=workers, seed=0, info=DistInfo(), start=0, collate=collate)
    next(loader)  # workers started and warm
    n, t0 = 0, time.perf_counter()
    while n < args.loader_images:
        images, _ = next(loader)
        n += len(images)
    elapsed = time.perf_counter() - t0
    del loader  # stops the workers
    return n / elapsed


def measure_loader(data: Path, recipe: dict, targets: frozenset[str], args: argparse.Namespace) -> dict:
    from mtlcli.data.cache import fill_ram_cache
    from mtlcli.engine.limits import available_bytes

    datasets = {"none": dataset_for(data, recipe, targets)}
    if "ram" in args.cache:
        datasets["ram"] = dataset_for(data, recipe, targets)
        datasets["ram"].ram = fill_ram_cache(datasets["ram"], available_bytes(torch.device("cpu")), note=print)
    settings = [(w, c) for c in args.cache for w in args.workers]
    rates: dict[tuple[int, str], list[float]] = {s: [] for s in settings}
    floor = []
    plain = datasets["none"]
    for r in range(args.rounds):
        floor += [floor_cost(plain, i, targets) for i in range(len(plain))]
        for w, c in settings[r % len(settings) :] + settings[: r % len(settings)]:  # rotate the order
            rates[(w, c)].append(loader_rate(datasets[c], w, args))
    floor_s = statistics.median(floor)
    rows = []
    for (w, c), values in rates.items():
        rate = statistics.median(values)
        per_process = max(w, 1) / rate
        rows.append(
            {
                "workers": w,
                "cache": c,
                "images_per_s": rate,
                "ms_per_image_per_process": 1000 * per_process,
                "cost_vs_floor": per_process / floor_s,
            }
        )
    return {"floor_ms": 1000 * floor_s, "rows": rows}


def print_loader(groups: dict, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Training loader vs decode floor, {args.size[0]}x{args.size[1]} synthetic city, batch "
        f"{args.batch}, {args.loader_images} images per run after a warm-up batch, medians of "
        f"{args.rounds} rounds, 1 torch thread per process"
    )
    for column in (
        "recipes",
        "targets",
        "workers",
        "data.cache",
        "loader img/s",
        "floor img/s (1 core)",
        "ms per image per loading process",
        "floor ms",
        "per-process cost / floor",
    ):
        table.add_column(column, justify="left" if column in ("recipes", "targets", "data.cache") else "right")
    for group in groups.values():
        f = group["figures"]
        names = ", ".join(group["names"][:3]) + (f" +{len(group['names']) - 3}" if len(group["names"]) > 3 else "")
        for k, row in enumerate(f["rows"]):
            table.add_row(
                names if k == 0 else "",
                (", ".join(sorted(group["targets"])) or "boxes") if k == 0 else "",
                str(row["workers"]),
                row["cache"],
                f"{row['images_per_s']:.1f}",
                f"{1000 / f['floor_ms']:.1f}",
                f"{row['ms_per_image_per_process']:.1f}",
                f"{f['floor_ms']:.1f}",
                f"{row['cost_vs_floor']:.2f}x",
            )
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", help="default: every recipe on cityscapes, coco or voc")
    parser.add_argument("--images", type=int, default=4, help="synthetic training images")
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loader", action="store_true", help="measure the whole training loader instead")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="with --loader: DataLoader worker counts to compare (0 = main process)",
    )
    parser.add_argument(
        "--cache",
        nargs="+",
        default=["none"],
        choices=["none", "ram"],
        help="with --loader: data.cache settings to compare",
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--loader-images", type=int, default=32, help="with --loader: images per timed run")
    parser.add_argument("--goal", type=float, default=1.3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from rich.console import Console
    from rich.table import Table

    from mtlcli.recipes import available_recipes, load_recipe

    names = args.recipes or available_recipes()
    groups: dict[tuple, dict] = {}
    for name in names:
        recipe = load_recipe(name)
        if not args.recipes and recipe["data"]["dataset"] not in DATASETS:
            continue
        targets = recipe_targets(recipe)
        key = data_path(recipe, targets)
        groups.setdefault(key, {"recipe": recipe, "targets": targets, "names": []})["names"].append(name)

    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp), args.images, tuple(args.size))
        for group in groups.values():
            group["figures"] = (measure_loader if args.loader else measure)(
                data, group["recipe"], group["targets"], args
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "groups": [
                        {
                            "recipes": g["names"],
                            "augmentation": g["recipe"]["data"]["augmentation"],
                            "targets": sorted(g["targets"]),
                            **g["figures"],
                        }
                        for g in groups.values()
                    ],
                },
                indent=2,
            )
        )
    if args.loader:
        return print_loader(groups, args)

    table = Table(
        title=f"Training data path vs decode floor, {args.size[0]}x{args.size[1]} synthetic city, "
        f"1 torch thread, medians of {args.rounds} alternating rounds x {args.images} images"
    )
    for column in (
        "recipes",
        "augmentation",
        "targets",
        "floor ms",
        "dataset[i] ms",
        "img/s/core",
        "floor img/s/core",
        "dataset[i] / floor",
    ):
        table.add_column(column, justify="left" if column in ("recipes", "augmentation", "targets") else "right")
    for group in groups.values():
        f = group["figures"]
        ok = "green" if f["ratio"] <= args.goal else "red"
        table.add_row(
            ", ".join(group["names"][:3]) + (f" +{len(group['names']) - 3}" if len(group["names"]) > 3 else ""),
            group["recipe"]["data"]["augmentation"],
            ", ".join(group["targets"]) or "boxes",
            f"{f['floor_ms']:.1f}",
            f"{f['item_ms']:.1f}",
            f"{1000 / f['item_ms']:.1f}",
            f"{1000 / f['floor_ms']:.1f}",
            f"[{ok}]{f['ratio']:.2f}x[/{ok}]",
        )
    Console(width=200).print(table)
    worst = max(g["figures"]["ratio"] for g in groups.values())
    print(f"worst dataset[i] / floor: {worst:.2f}x (goal <= {args.goal}x)")


if __name__ == "__main__":
    main()
