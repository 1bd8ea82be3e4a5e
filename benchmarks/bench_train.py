"""Training throughput and the share of step time spent waiting for data, by DataLoader worker count.

Makes a synthetic city (`generate_synthetic` + `prepare_cityscapes`) in a temporary folder, then trains
a family's tiny recipe (default `ladderdensenet-tiny-synthetic`) with the real `train()` for a few
iterations per run, once per worker count, alternating the worker counts over several rounds on the
same data so that machine noise hits every setting alike. Per run the figures come from its
metrics.jsonl: images/s and data-wait share of each logged window after the first (warm-up); the table
shows medians over all such windows of all rounds.

Goal: data wait under 5% of step time with the default worker count (train.workers = 2).

`--compare maskrcnn ssd` instead times training steps side by side (forward + loss + backward, one
batch, same weights, same random seed before every step, alternating the order each round, medians):
our Mask R-CNN (`build_maskrcnn`) against torchvision's `maskrcnn_resnet50_fpn`, our SSD300
(`build_ssd300_vgg16`) against torchvision's `ssd300_vgg16`, both from scratch (ordinary batch norm,
everything trained), the torchvision model loaded with our state dict. Goal: ours <= 1.05x.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py --workers 0 2 --rounds 3
    .venv/bin/python benchmarks/bench_train.py --device cuda --images 64 --size 256 512 --batch 8 --amp bf16
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py --compare maskrcnn ssd --rounds 5
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


def step_pairs(which: str, args: argparse.Namespace) -> dict:
    """(ours, torchvision's) training step of one family, timed alternately; returns the figures."""
    import time

    import torchvision

    from mtlcli.engine.benchmark import random_images, random_targets

    device = torch.device(args.device)
    torch.manual_seed(0)
    if which == "maskrcnn":
        from mtlcli.models.rcnn import build_maskrcnn

        size = args.rcnn_size
        ours = build_maskrcnn(num_det_classes=80, min_size=min(size), max_size=max(size))
        theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=81, min_size=min(size), max_size=max(size))
        theirs.load_state_dict(ours.state_dict())
        images = random_images(args.compare_batch, tuple(size), device)
        keys_theirs = ("boxes", "labels", "masks")
    else:
        from mtlcli.models.ivanet import build_ssd300_vgg16

        ours = build_ssd300_vgg16(num_det_classes=20)
        theirs = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
        # same architecture, different names (body/det_head vs backbone/head): copy by position
        theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values())))
        images = random_images(args.compare_batch, (300, 300), device)
        keys_theirs = ("boxes", "labels")
    targets = random_targets(images, 20, 21)
    for t in targets:
        t.pop("semantic"), t.pop("dt")
    subjects = {"ours": (ours.to(device).train(), targets),
                "torchvision": (theirs.to(device).train(), [{k: t[k] for k in keys_theirs} for t in targets])}

    def step(model, tgts) -> tuple[float, float]:
        torch.manual_seed(1)  # the same proposal / negative sampling for both
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses = model(images, tgts)
        loss = sum(losses.values())
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, loss.item()

    times: dict[str, list[float]] = {k: [] for k in subjects}
    loss: dict[str, float] = {}
    for name, (model, tgts) in subjects.items():  # warm-up
        _, loss[name] = step(model, tgts)
    order = list(subjects)
    ratios = []
    for r in range(args.rounds):
        pair = {}
        for name in order[r % 2:] + order[:r % 2]:
            model, tgts = subjects[name]
            pair[name], _ = step(model, tgts)
            times[name].append(pair[name])
        ratios.append(pair["ours"] / pair["torchvision"])
    return {"ours_s": statistics.median(times["ours"]), "torchvision_s": statistics.median(times["torchvision"]),
            "ratio": statistics.median(ratios), "loss_ours": loss["ours"], "loss_torchvision": loss["torchvision"],
            "rounds": args.rounds}


def compare(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    figures = {which: step_pairs(which, args) for which in args.compare}
    table = Table(title=f"Training step (forward + loss + backward), batch {args.compare_batch}, {args.device}, "
                        f"{torch.get_num_threads()} torch thread(s), medians of {args.rounds} alternating rounds")
    for column in ("model", "input", "ours s", "torchvision s", "ours / torchvision", "first loss ours / tv"):
        table.add_column(column, justify="right")
    for which, f in figures.items():
        size = "x".join(map(str, args.rcnn_size)) if which == "maskrcnn" else "300x300"
        ok = "green" if f["ratio"] <= 1.05 else "red"
        table.add_row(which, size, f"{f['ours_s']:.3f}", f"{f['torchvision_s']:.3f}", f"[{ok}]{f['ratio']:.3f}x[/{ok}]",
                      f"{f['loss_ours']:.3f} / {f['loss_torchvision']:.3f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "compare": figures},
                                        indent=2))


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
    parser.add_argument("--compare", nargs="+", choices=["maskrcnn", "ssd"],
                        help="time our training step against torchvision's instead")
    parser.add_argument("--compare-batch", type=int, default=2)
    parser.add_argument("--rcnn-size", type=int, nargs=2, default=[384, 640], metavar=("H", "W"),
                        help="Mask R-CNN input (and its min_size / max_size)")
    args = parser.parse_args()
    if args.compare:
        return compare(args)

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
