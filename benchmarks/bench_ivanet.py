"""IvaNet against its detection-only and segmentation-only variants: the FPS column of the paper's
Table 1 (papers/ivanet.txt), plus parameters and FLOPs.

The paper (GTX 1070 Ti, 300 / 512): IvaNet 32.5 / 24.5 FPS, IvaNet_det 36.5 / 25.5, IvaNet_seg 44.6 /
31.5, i.e. the segmentation head adds 12% / 4% to the detection-only model. Our goal: at most 15% at
300 and 10% at 512.

All variants (ResNet-50, no weights, VOC class counts) are built per input size and timed in one
process in alternation (A B C A B C ...), batch 1, so that machine noise falls on all of them alike.
Two latencies per model: the network alone (`model.network(batch)`) and the full predict path on a
VOC-sized image (resize, normalise, network, box decoding + NMS at confidence 0.01, segmentation
scores back at the image size). Untrained weights put every class near 1/21 > 0.01, so NMS sees the
maximum number of candidates: the full path's post-processing is an upper bound. Ratios are of medians.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_ivanet.py --iterations 5
    .venv/bin/python benchmarks/bench_ivanet.py --sizes 300 512 --variants joint det seg noltd blitznet --device cuda
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mtlcli.engine.benchmark import Subject, environment, parse_size, run_benchmark
from mtlcli.models.ivanet import build_ivanet

VARIANTS = {
    "joint": ("IvaNet", {}),
    "det": ("IvaNet_det", {"seg_head": False}),
    "seg": ("IvaNet_seg", {"det_head": False}),
    "noltd": ("IvaNet_NO", {"topdown": "none"}),
    "blitznet": ("BlitzNet", {"topdown": "full"}),
}
GOALS = {300: 1.15, 512: 1.10}  # joint / det latency, at most


def subject(key: str, input_size: int, image_size: tuple[int, int], device: torch.device) -> Subject:
    label, kw = VARIANTS[key]
    torch.manual_seed(0)
    model = build_ivanet(input_size=input_size, **kw).to(device).eval()
    return Subject(
        f"{label}{input_size}",
        model,
        image_size,
        predict=lambda images: model(images),
        network=lambda batch: model.network(batch),
        prepare=lambda images: model.preprocess(images)[0],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 512], help="network input sides")
    parser.add_argument("--variants", nargs="+", default=["joint", "det", "seg"], choices=list(VARIANTS))
    parser.add_argument("--image-size", default="375x500", help="HxW of the input images (VOC-like)")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    image_size = parse_size(args.image_size)
    env = environment(device, None)
    print(
        f"device {env['device']}, threads {env['threads']}, torch {env['torch']}, batch 1, image "
        f"{image_size[0]}x{image_size[1]}, "
        f"{args.iterations} timed runs after {args.warmup} warm-up, medians"
    )

    all_rows = []
    for size in args.sizes:
        subjects = [subject(k, size, image_size, device) for k in args.variants]
        rows = run_benchmark(subjects, batch=1, device=device, iterations=args.iterations, warmup=args.warmup)
        all_rows += rows
        print(f"\ninput {size}x{size}")
        print(f"{'model':<14}{'params (M)':>11}{'GFLOPs':>9}{'network ms':>12}{'full ms':>10}{'FPS (full)':>11}")
        for r in rows:
            print(
                f"{r['name']:<14}{r['params'] / 1e6:>11.2f}{r['gflops']:>9.2f}{r['net_median_ms']:>12.1f}"
                f"{r['full_median_ms']:>10.1f}{1e3 / r['full_median_ms']:>11.2f}"
            )
        by = {r["name"]: r for r in rows}
        joint, det = by.get(f"IvaNet{size}"), by.get(f"IvaNet_det{size}")
        if joint and det:
            net = joint["net_median_ms"] / det["net_median_ms"]
            full = joint["full_median_ms"] / det["full_median_ms"]
            flops = joint["gflops"] / det["gflops"]
            goal = GOALS.get(size)
            verdict = "" if goal is None else f" (goal <= {goal:.2f}: {'met' if max(net, full) <= goal else 'NOT met'})"
            print(f"IvaNet / IvaNet_det: network {net:.3f}, full {full:.3f}, FLOPs {flops:.3f}{verdict}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": all_rows}, indent=2))


if __name__ == "__main__":
    main()
