"""Training throughput and the share of step time spent waiting for data, by DataLoader worker count.

Makes a synthetic city (`generate_synthetic` + `prepare_cityscapes`) in a temporary folder, then trains
a family's tiny recipe (default `ladderdensenet-tiny-synthetic`) with the real `train()` for a few
iterations per run, once per worker count, alternating the worker counts over several rounds on the
same data so that machine noise hits every setting alike. Per run the figures come from its
metrics.jsonl: images/s and data-wait share of each logged window after the first (warm-up); the table
shows medians over all such windows of all rounds.

Goal: data wait under 10% of step time with the default worker count (train.workers = 2).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py --workers 0 2 --rounds 3
    .venv/bin/python benchmarks/bench_train.py --device cuda --images 64 --size 256 512 --batch 8 --amp bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch


def prepare(folder: Path, images: int, size: tuple[int, int]) -> Path:
    from mtlcli.data.cityscapes import prepare_cityscapes
    from mtlcli.data.synthetic import generate_synthetic

    source = generate_synthetic(folder / "source", train=images, val=2, size=size, seed=0, quiet=True)
    out = folder / "data"
    prepare_cityscapes(source, out, quiet=True)
    return out


def one_run(recipe_name: str, data: Path, run_dir: Path, workers: int, args: argparse.Namespace) -> list[dict]:
    from mtlcli.engine.train import train
    from mtlcli.recipes import load_recipe

    overrides = [
        f"data.root={data}", f"train.workers={workers}", f"train.iterations={args.iterations}",
        f"train.log_interval={args.log_interval}", f"train.batch_size={args.batch}", f"train.amp={args.amp}",
        f"train.checkpoint_interval={args.iterations}", "eval.metrics=[]", 'eval.best_metric=""',
    ]
    recipe = load_recipe(recipe_name, overrides)
    train(recipe, run_dir, device=args.device, progress=False)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "train"][1:]  # the first window includes start-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="ladderdensenet-tiny-synthetic")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=16, help="synthetic training images")
    parser.add_argument("--size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"))
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    windows: dict[int, list[dict]] = {w: [] for w in args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(Path(tmp), args.images, tuple(args.size))
        for r in range(args.rounds):
            for w in args.workers:
                windows[w] += one_run(args.recipe, data, Path(tmp) / f"run-{r}-{w}", w, args)

    figures = {}
    for w, recs in windows.items():
        figures[w] = {
            "images_per_s": statistics.median(x["images_per_s"] for x in recs),
            "data_wait": statistics.median(x["data_wait"] for x in recs),
            "windows": len(recs),
        }
    base = figures[args.workers[0]]["images_per_s"]
    table = Table(title=f"{args.recipe} on {args.device}, batch {args.batch}, {args.size[0]}x{args.size[1]} images, "
                        f"{torch.get_num_threads()} torch thread(s)")
    for column in ("workers", "images/s (median)", f"vs {args.workers[0]} workers", "data wait (median)", "windows"):
        table.add_column(column, justify="right")
    for w, f in figures.items():
        table.add_row(str(w), f"{f['images_per_s']:.1f}", f"{f['images_per_s'] / base:.2f}x",
                      f"{100 * f['data_wait']:.1f}%", str(f["windows"]))
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
