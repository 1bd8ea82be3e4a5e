"""Training throughput and the share of step time spent waiting for data, by loader workers and data.cache.

Makes a synthetic city (`generate_synthetic` + `prepare_cityscapes`) in a temporary folder, then trains
a family's tiny recipe (default `ladderdensenet-tiny-synthetic`) with the real `train()` for a few
iterations per run, once per (worker count, data.cache) setting, alternating the settings over several
rounds on the same data so that machine noise hits every setting alike. Per run the figures come from
its metrics.jsonl: images/s and data-wait share (time blocked on the next batch / window wall time) of
each logged window after the first (warm-up); the table shows medians over all such windows of all
rounds, and the whole-run share: every window's wait plus the cache fill over the run's wall time
(start-up excluded, the fill included).

`--quickstart` is the `mtl quickstart` training: ivanet-tiny-synthetic on 300 images of 256x512, batch
8, main-process loading (workers 0), with and without `data.cache = "ram"`. Goal: data wait under 5%.

`--compare maskrcnn ssd` instead times training steps side by side (forward + loss + backward, one
batch, same weights, same random seed before every step, alternating the order each round): our Mask
R-CNN (`build_maskrcnn`) against torchvision's `maskrcnn_resnet50_fpn`, our SSD300
(`build_ssd300_vgg16`) against torchvision's `ssd300_vgg16`, both from scratch (ordinary batch norm,
everything trained), the torchvision model loaded with our state dict. Printed: the median of the
paired ratios (each round's ours / torchvision, back to back) with their range, the ratio of the
medians, and the median paired ratio of process CPU time. `--ops` adds a load-independent check: one
profiled step each, counting aten ops and FLOPs. Goal: ours <= 1.05x.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py --workers 0 2 --rounds 3
    .venv/bin/python benchmarks/bench_train.py --quickstart
    .venv/bin/python benchmarks/bench_train.py --device cuda --images 64 --size 256 512 --batch 8 --amp bf16
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py --compare maskrcnn ssd --rounds 9 --ops
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def prepare(folder: Path, images: int, size: tuple[int, int]) -> Path:
    from mtlcli.data.cityscapes import prepare_cityscapes
    from mtlcli.data.synthetic import generate_synthetic

    source = generate_synthetic(folder / "source", train=images, val=2, size=size, seed=0, quiet=True)
    out = folder / "data"
    prepare_cityscapes(source, out, quiet=True)
    return out


def one_run(recipe_name: str, data: Path, run_dir: Path, workers: int, cache: str, args: argparse.Namespace) -> dict:
    """Train once; returns {"windows": logged windows after the first, "share": whole-run data share}."""
    import mtlcli.engine.train as engine
    from mtlcli.recipes import load_recipe

    overrides = [
        f"data.root={data}",
        f"train.workers={workers}",
        f"train.iterations={args.iterations}",
        f"train.log_interval={args.log_interval}",
        f"train.batch_size={args.batch}",
        f"train.amp={args.amp}",
        f"train.checkpoint_interval={args.iterations}",
        "eval.metrics=[]",
        'eval.best_metric=""',
        f"data.cache={cache}",
    ]
    recipe = load_recipe(recipe_name, overrides)
    fill = []
    fill_cache = engine.ram_cache

    def timed_fill(*a, **kw):
        t0 = time.perf_counter()
        out = fill_cache(*a, **kw)
        fill.append(time.perf_counter() - t0)
        return out

    engine.ram_cache = timed_fill
    try:
        engine.train(recipe, run_dir, device=args.device, progress=False)
    finally:
        engine.ram_cache = fill_cache
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r["type"] == "train"]
    wall = wait = 0.0
    previous = 0
    for r in records:  # each window's wall time from its images/s, its wait from the share
        elapsed = (r["iteration"] - previous) * args.batch / r["images_per_s"]
        wall, wait, previous = wall + elapsed, wait + r["data_wait"] * elapsed, r["iteration"]
    filled = sum(fill)
    return {"windows": records[1:], "share": (wait + filled) / (wall + filled), "fill_s": filled}  # [0]: start-up


def subjects(which: str, args: argparse.Namespace) -> tuple[dict, list]:
    """{"ours": (model, targets), "torchvision": (model, targets)} with the same weights, and the images."""
    import torchvision

    from mtlcli.engine.benchmark import random_images, random_targets

    device = torch.device(args.device)
    torch.manual_seed(0)
    if which == "maskrcnn":
        from mtlcli.models.rcnn import build_maskrcnn

        size = args.rcnn_size
        ours = build_maskrcnn(num_det_classes=80, min_size=min(size), max_size=max(size))
        theirs = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=81, min_size=min(size), max_size=max(size)
        )
        theirs.load_state_dict(ours.state_dict())
        images = random_images(args.compare_batch, tuple(size), device)
        keys_theirs = ("boxes", "labels", "masks")
    else:
        from mtlcli.models.ivanet import build_ssd300_vgg16

        ours = build_ssd300_vgg16(num_det_classes=20)
        theirs = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
        # same architecture, different names (body/det_head vs backbone/head): copy by position
        theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values(), strict=True)))
        images = random_images(args.compare_batch, (300, 300), device)
        keys_theirs = ("boxes", "labels")
    targets = random_targets(images, 20, 21)
    for t in targets:
        t.pop("semantic"), t.pop("dt")
    return {
        "ours": (ours.to(device).train(), targets),
        "torchvision": (theirs.to(device).train(), [{k: t[k] for k in keys_theirs} for t in targets]),
    }, images


def make_step(images: list, device: torch.device):
    def step(model, tgts) -> tuple[float, float, float]:
        """(wall s, process CPU s, loss) of one forward + loss + backward."""
        torch.manual_seed(1)  # the same proposal / negative sampling for both
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        losses = model(images, tgts)
        loss = sum(losses.values())
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0, loss.item()

    return step


def step_pairs(which: str, args: argparse.Namespace) -> dict:
    """(ours, torchvision's) training step of one family, timed alternately; returns the figures."""
    models, images = subjects(which, args)
    step = make_step(images, torch.device(args.device))
    times: dict[str, list[float]] = {k: [] for k in models}
    loss: dict[str, float] = {}
    for name, (model, tgts) in models.items():  # warm-up
        _, _, loss[name] = step(model, tgts)
    order = list(models)
    ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        wall, cpu = {}, {}
        for name in order[r % 2 :] + order[: r % 2]:
            model, tgts = models[name]
            wall[name], cpu[name], _ = step(model, tgts)
            times[name].append(wall[name])
        ratios.append(wall["ours"] / wall["torchvision"])
        cpu_ratios.append(cpu["ours"] / cpu["torchvision"])
    figures = {
        "ours_s": statistics.median(times["ours"]),
        "torchvision_s": statistics.median(times["torchvision"]),
        "paired_ratio": statistics.median(ratios),
        "paired_min": min(ratios),
        "paired_max": max(ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
        "loss_ours": loss["ours"],
        "loss_torchvision": loss["torchvision"],
        "rounds": args.rounds,
        "ratios": ratios,
    }
    figures["ratio_of_medians"] = figures["ours_s"] / figures["torchvision_s"]
    if args.ops:
        figures["ops"] = op_counts(models, step)
    return figures


def op_counts(models: dict, step) -> dict:
    """One profiled step each: aten op calls, FLOPs (convolutions and matrix products) and the op calls
    (name, input shapes) that one side makes and the other does not. Independent of machine load."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    calls, flops = {}, {}
    for name, (model, tgts) in models.items():
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
            step(model, tgts)
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        calls[name] = Counter((e.name, str(e.input_shapes)) for e in events)
        flops[name] = sum(e.flops or 0 for e in events)
    only_ours, only_theirs = calls["ours"] - calls["torchvision"], calls["torchvision"] - calls["ours"]
    return {
        "calls_ours": sum(calls["ours"].values()),
        "calls_torchvision": sum(calls["torchvision"].values()),
        "gflops_ours": flops["ours"] / 1e9,
        "gflops_torchvision": flops["torchvision"] / 1e9,
        "only_ours": sum(only_ours.values()),
        "only_torchvision": sum(only_theirs.values()),
        "largest_only_ours": sorted(
            ({"op": k[0], "shapes": k[1], "calls": v} for k, v in only_ours.items()),
            key=lambda d: -_elements(d["shapes"]),
        )[:5],
    }


def _elements(shapes: str) -> int:
    """The largest input's element count in a profiler shapes string such as '[[4, 384, 640], []]'."""
    import ast

    largest = 0
    for shape in ast.literal_eval(shapes):
        n = 1
        for s in shape if isinstance(shape, list) else []:
            n *= s if isinstance(s, int) else 1
        largest = max(largest, n if shape else 0)
    return largest


def compare(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    figures = {which: step_pairs(which, args) for which in args.compare}
    table = Table(
        title=f"Training step (forward + loss + backward), batch {args.compare_batch}, {args.device}, "
        f"{torch.get_num_threads()} torch thread(s), {args.rounds} alternating rounds after a warm-up"
    )
    for column in (
        "model",
        "input",
        "ours s (median)",
        "torchvision s (median)",
        "ratio of medians",
        "median of paired ratios",
        "paired range",
        "CPU time, median paired",
        "first loss ours / tv",
    ):
        table.add_column(column, justify="right")
    for which, f in figures.items():
        size = "x".join(map(str, args.rcnn_size)) if which == "maskrcnn" else "300x300"
        ok = "green" if f["paired_ratio"] <= 1.05 else "red"
        table.add_row(
            which,
            size,
            f"{f['ours_s']:.3f}",
            f"{f['torchvision_s']:.3f}",
            f"{f['ratio_of_medians']:.3f}x",
            f"[{ok}]{f['paired_ratio']:.3f}x[/{ok}]",
            f"{f['paired_min']:.3f}-{f['paired_max']:.3f}",
            f"{f['cpu_ratio']:.3f}x",
            f"{f['loss_ours']:.4f} / {f['loss_torchvision']:.4f}",
        )
    console = Console(width=200)
    console.print(table)
    if args.ops:
        ops = Table(title="One profiled step each (load-independent): aten op calls and FLOPs")
        for column in (
            "model",
            "aten calls ours",
            "aten calls tv",
            "GFLOP ours",
            "GFLOP tv",
            "calls only ours",
            "calls only tv",
            "largest inputs among ours only",
        ):
            ops.add_column(column, justify="left" if column.startswith("largest") else "right")
        for which, f in figures.items():
            o = f["ops"]
            largest = "; ".join(f"{d['op']} {d['shapes']} x{d['calls']}" for d in o["largest_only_ours"][:3])
            ops.add_row(
                which,
                str(o["calls_ours"]),
                str(o["calls_torchvision"]),
                f"{o['gflops_ours']:.3f}",
                f"{o['gflops_torchvision']:.3f}",
                str(o["only_ours"]),
                str(o["only_torchvision"]),
                largest,
            )
        console.print(ops)
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "compare": figures}, indent=2)
        )


QUICKSTART = {
    "recipe": "ivanet-tiny-synthetic",
    "images": 300,
    "size": [256, 512],
    "batch": 8,
    "workers": [0],
    "cache": ["none", "ram"],
    "iterations": 60,
    "log_interval": 10,
    "rounds": 2,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="ladderdensenet-tiny-synthetic")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts to compare")
    parser.add_argument(
        "--cache",
        nargs="+",
        default=["none"],
        choices=["none", "ram"],
        help="data.cache settings to compare (each with every worker count)",
    )
    parser.add_argument(
        "--quickstart",
        action="store_true",
        help="the quickstart's training: "
        + ", ".join(f"{k}={v}" for k, v in QUICKSTART.items())
        + " (options given explicitly win)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=16, help="synthetic training images")
    parser.add_argument("--size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"))
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--compare", nargs="+", choices=["maskrcnn", "ssd"], help="time our training step against torchvision's instead"
    )
    parser.add_argument("--compare-batch", type=int, default=2)
    parser.add_argument("--ops", action="store_true", help="with --compare: also count aten ops and FLOPs per step")
    parser.add_argument(
        "--rcnn-size",
        type=int,
        nargs=2,
        default=[384, 640],
        metavar=("H", "W"),
        help="Mask R-CNN input (and its min_size / max_size)",
    )
    args = parser.parse_args()
    if args.quickstart:
        parser.set_defaults(**QUICKSTART)
        args = parser.parse_args()
    if args.compare:
        if args.rounds < 5:
            parser.error("--compare needs --rounds >= 5 for a median of paired ratios worth reading")
        return compare(args)

    from rich.console import Console
    from rich.table import Table

    settings = [(w, c) for c in args.cache for w in args.workers]
    runs: dict[tuple[int, str], list[dict]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(Path(tmp), args.images, tuple(args.size))
        for r in range(args.rounds):
            for w, c in settings[r % len(settings) :] + settings[: r % len(settings)]:  # rotate the order
                runs[(w, c)].append(one_run(args.recipe, data, Path(tmp) / f"run-{r}-{w}-{c}", w, c, args))

    figures = {}
    for (w, c), results in runs.items():
        windows = [x for run in results for x in run["windows"]]
        figures[f"{w}/{c}"] = {
            "workers": w,
            "cache": c,
            "images_per_s": statistics.median(x["images_per_s"] for x in windows),
            "data_wait": statistics.median(x["data_wait"] for x in windows),
            "run_share": statistics.median(run["share"] for run in results),
            "fill_s": statistics.median(run["fill_s"] for run in results),
            "windows": len(windows),
        }
    base = figures[f"{settings[0][0]}/{settings[0][1]}"]["images_per_s"]
    table = Table(
        title=f"{args.recipe} on {args.device}, batch {args.batch}, {args.images} images of "
        f"{args.size[0]}x{args.size[1]}, {args.iterations} iterations x {args.rounds} rounds, "
        f"{torch.get_num_threads()} torch thread(s)"
    )
    for column in (
        "workers",
        "data.cache",
        "images/s (median)",
        f"vs {settings[0][0]} workers / {settings[0][1]}",
        "data wait (median window)",
        "data wait (whole run, fill included)",
        "cache fill s",
        "windows",
    ):
        table.add_column(column, justify="right")
    for f in figures.values():
        ok = "green" if f["data_wait"] < 0.05 else "red"
        table.add_row(
            str(f["workers"]),
            f["cache"],
            f"{f['images_per_s']:.1f}",
            f"{f['images_per_s'] / base:.2f}x",
            f"[{ok}]{100 * f['data_wait']:.1f}%[/{ok}]",
            f"{100 * f['run_share']:.1f}%",
            f"{f['fill_s']:.1f}" if f["cache"] == "ram" else "-",
            str(f["windows"]),
        )
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "figures": figures}, indent=2)
        )


if __name__ == "__main__":
    main()
