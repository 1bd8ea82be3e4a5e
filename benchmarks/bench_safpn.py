"""Mask R-CNN R50-FPN, +SA-FPN, +EJ-Head and both: latency, parameters and FLOPs side by side.

The paper's claim (papers/safpn-ejhead.txt, Table 2, COCO val, R50): SA-FPN +0.6 box / +0.5 mask AP,
EJ-Head +1.0 / +0.7, both +1.7 / +1.4 (+1.6 / +1.4 on test-dev, Table 1) over Mask R-CNN, at a modest
cost. Accuracy needs COCO training; this script measures the cost. The four models (80 classes, no
weights) are built in one process and timed in alternation (A B C D A B C D ...) at 800x1333: the
network alone (backbone, neck, RPN, RoI heads on a preprocessed batch) and the full predict path
(resize, normalise, network, NMS, mask pasting), medians over --iterations; with --train also one
training step (forward + backward, batch 1, four random objects), where Interleaving does its work.
The score threshold is 0 so that the untrained heads keep their full 100 detections per image and all
four models pool and paste the same number of RoIs (the table shows the counts). The joint path's
cost grows with the RoI count: Boundary Refinement runs two 3x3 convs at 14x14 on every proposal.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_safpn.py --iterations 3
    .venv/bin/python benchmarks/bench_safpn.py --iterations 20 --train --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from mtlcli.engine.benchmark import Subject, environment, parse_size, random_targets, run_benchmark
from mtlcli.models.rcnn import build_maskrcnn
from mtlcli.models.safpn import build_safpn

# name -> (builder, keyword arguments, the paper's box / mask AP gain over Mask R-CNN, Table 2)
VARIANTS = {
    "Mask R-CNN": (build_maskrcnn, {}, (0.0, 0.0)),
    "+SA-FPN": (build_safpn, dict(neck="safpn", ej_head=False), (0.6, 0.5)),
    "+EJ-Head": (build_safpn, dict(neck="td", ej_head=True), (1.0, 0.7)),
    "+SA-FPN +EJ-Head": (build_safpn, dict(neck="safpn", ej_head=True), (1.7, 1.4)),
}


def subject(name: str, size: tuple[int, int], device: torch.device, train: bool) -> Subject:
    builder, kwargs, _ = VARIANTS[name]
    torch.manual_seed(0)
    model: nn.Module = (
        builder(num_det_classes=80, min_size=min(size), max_size=max(size), box_score_thresh=0.0, **kwargs)
        .to(device)
        .eval()
    )
    train_step = None
    if train:
        targets = random_targets([torch.zeros(3, *size)], num_det=80, num_seg=1)
        targets = [
            {k: v.to(device) for k, v in t.items() if k in ("boxes", "labels", "masks", "iscrowd")} for t in targets
        ]

        def train_step(images: list[torch.Tensor]) -> None:
            model.zero_grad(set_to_none=True)
            sum(model(images, targets).values()).backward()

    return Subject(
        name,
        model,
        size,
        predict=lambda images: model(images),
        network=lambda batch: model.network(batch),
        prepare=lambda images: model.preprocess(images)[0],
        train_step=train_step,
        kind="mtl",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="800x1333", help="HxW input size (the paper: 1333x800)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--train", action="store_true", help="also time a training step (batch 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="write all rows to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)
    size = parse_size(args.size)

    env = environment(device, None)
    print(f"# {env}; {args.iterations} alternating iterations after {args.warmup} warm-up")
    subjects = [subject(name, size, device, args.train) for name in VARIANTS]
    rows = run_benchmark(subjects, device=device, iterations=args.iterations, warmup=args.warmup, train=args.train)
    base = rows[0]
    with torch.inference_mode():  # what the heads worked on (the same input as the timings)
        image = [torch.rand(3, *size, generator=torch.Generator().manual_seed(0)).to(device)]
        for row, s in zip(rows, subjects, strict=True):
            (out,) = s.predict(image)
            row["proposals"], row["detections"] = len(out["proposals"]), len(out["boxes"])

    header = (
        f"{'model':<18} {'RoIs':>5} {'dets':>5} {'params M':>9} {'GFLOPs':>8} "
        f"{'net ms':>9} {'full ms':>9} {'net x':>6} {'full x':>6}"
    )
    header += f" {'train ms':>9} {'train x':>7}" if args.train else ""
    print(f"\n{size[0]}x{size[1]}, medians\n{header}   paper: box / mask AP")
    for row in rows:
        gain = VARIANTS[row["name"]][2]
        line = (
            f"{row['name']:<18} {row['proposals']:>5} {row['detections']:>5} {row['params'] / 1e6:>9.2f} "
            f"{row['gflops']:>8.1f} {row['net_median_ms']:>9.0f} "
            f"{row['full_median_ms']:>9.0f} {row['net_median_ms'] / base['net_median_ms']:>6.2f} "
            f"{row['full_median_ms'] / base['full_median_ms']:>6.2f}"
        )
        if args.train:
            line += f" {row['train_median_ms']:>9.0f} {row['train_median_ms'] / base['train_median_ms']:>7.2f}"
        print(f"{line}   {'baseline' if row is base else f'+{gain[0]:.1f} / +{gain[1]:.1f}'}")
    both = rows[-1]
    print(
        f"\nSA-FPN + EJ-Head vs Mask R-CNN: {both['params'] / base['params']:.2f}x parameters, "
        f"{both['gflops'] / base['gflops']:.2f}x FLOPs, {both['net_median_ms'] / base['net_median_ms']:.2f}x network "
        f"time for the paper's +1.7 box / +1.4 mask AP (COCO val, Table 2)"
    )
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "size": list(size), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
